//! Pretrained towers: where they come from (`AR_IMAGE_TOWER`, `AR_TEXT_TOWER`), their sizes, loading
//! them into the model's VarStore with errors that name every missing or mismatched tensor, and WiSE-FT.
//!
//! - Image tower: a timm ViT's `model.safetensors` (a file, or a folder holding it and optionally timm's
//!   `config.json` with `architecture`). Sizes are read from the tensor shapes; the head count from the
//!   architecture name, else width / 64 (every timm ViT has 64-wide heads).
//! - Text tower: a Hugging Face folder with `config.json` (`model_type` `bert` or `distilbert`) and
//!   `model.safetensors`; its `tokenizer.json` is the one `prepare` should use. Prefixed checkpoints
//!   (`bert.`, `distilbert.` from *ForMaskedLM saves) load too; heads and poolers are reported unused.

use super::text::{TextArch, TextConfig};
use super::vit::VitConfig;
use crate::context::Context;
use crate::safetensors_header::read_header;
use crate::weights;
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Tensor;

/// The weights file of a tower given as a file or a folder.
fn weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// The name prefix in front of `suffix` in a file's tensor names (`""`, `"bert."`, `"module."`).
fn prefix_of(names: impl IntoIterator<Item = String>, suffix: &str, file: &Path) -> Result<String> {
    names.into_iter().find_map(|n| n.strip_suffix(suffix).map(String::from)).with_context(|| {
        format!("{} has no tensor named *{suffix}: is it the right kind of model?", file.display())
    })
}

fn shape_of(header: &serde_json::Map<String, Value>, name: &str, file: &Path) -> Result<Vec<i64>> {
    header
        .get(name)
        .and_then(|e| e.get("shape"))
        .and_then(|s| s.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
        .with_context(|| format!("{} has no tensor {name}", file.display()))
}

/// Heads of timm's ViT family by architecture name.
fn vit_heads(architecture: &str) -> Option<i64> {
    let a = architecture.trim_start_matches("timm/");
    [("vit_tiny", 3), ("vit_small", 6), ("vit_base", 12), ("vit_large", 16), ("vit_huge", 16)]
        .iter()
        .find(|(p, _)| a.starts_with(p))
        .map(|(_, h)| *h)
}

/// Sizes of the timm ViT at `path` (file or folder), read from its header and optional config.json.
pub fn vit_config(path: &Path) -> Result<VitConfig> {
    let file = weights_file(path);
    let header = read_header(&file).with_context(|| format!("reading the image tower {}", file.display()))?;
    let p = prefix_of(header.keys().cloned(), "patch_embed.proj.weight", &file)?;
    let patch = shape_of(&header, &format!("{p}patch_embed.proj.weight"), &file)?; // (D, 3, P, P)
    let pos = shape_of(&header, &format!("{p}pos_embed"), &file)?; // (1, 1+N, D)
    let fc1 = shape_of(&header, &format!("{p}blocks.0.mlp.fc1.weight"), &file)?; // (M, D)
    if patch.len() != 4 || pos.len() != 3 || fc1.len() != 2 {
        bail!("{}: unexpected shapes patch_embed {patch:?}, pos_embed {pos:?}", file.display());
    }
    let (width, patch_size) = (patch[0], patch[2]);
    let grid = ((pos[1] - 1) as f64).sqrt().round() as i64;
    if grid * grid != pos[1] - 1 {
        bail!("{}: pos_embed {pos:?} is not one class token plus a square grid of patches", file.display());
    }
    let layers =
        (0..).take_while(|i| header.contains_key(&format!("{p}blocks.{i}.norm1.weight"))).count() as i64;
    let architecture = path
        .is_dir()
        .then(|| std::fs::read_to_string(path.join("config.json")).ok())
        .flatten()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.get("architecture").and_then(|a| a.as_str()).map(String::from));
    let heads = architecture.as_deref().and_then(vit_heads).unwrap_or(width / 64).max(1);
    Ok(VitConfig { image_size: grid * patch_size, patch_size, layers, width, heads, mlp: fc1[0] })
}

/// Sizes of the Hugging Face BERT/DistilBERT in folder `dir` (its config.json).
pub fn text_config(dir: &Path) -> Result<TextConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {} (the text tower is a Hugging Face model folder)", path.display())
    })?;
    let c: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let int = |k: &str| {
        c.get(k).and_then(|v| v.as_i64()).with_context(|| format!("{} has no integer {k:?}", path.display()))
    };
    let float = |k: &str, default: f64| c.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
    let act = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("gelu").to_string();
    let model_type = c.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    let cfg = match model_type {
        "bert" => TextConfig {
            arch: TextArch::Bert,
            vocab_size: int("vocab_size")?,
            width: int("hidden_size")?,
            layers: int("num_hidden_layers")?,
            heads: int("num_attention_heads")?,
            mlp: int("intermediate_size")?,
            max_positions: int("max_position_embeddings")?,
            type_vocab_size: int("type_vocab_size").unwrap_or(2),
            ln_eps: float("layer_norm_eps", 1e-12),
            dropout: float("hidden_dropout_prob", 0.1),
            attention_dropout: float("attention_probs_dropout_prob", 0.1),
        },
        "distilbert" => TextConfig {
            arch: TextArch::DistilBert,
            vocab_size: int("vocab_size")?,
            width: int("dim")?,
            layers: int("n_layers")?,
            heads: int("n_heads")?,
            mlp: int("hidden_dim")?,
            max_positions: int("max_position_embeddings")?,
            type_vocab_size: 0,
            ln_eps: 1e-12,
            dropout: float("dropout", 0.1),
            attention_dropout: float("attention_dropout", 0.1),
        },
        other => bail!("{}: model_type {other:?} is not supported (bert or distilbert)", path.display()),
    };
    let activation = act(if cfg.arch == TextArch::Bert { "hidden_act" } else { "activation" });
    if activation != "gelu" {
        bail!("{}: activation {activation:?} is not supported (gelu)", path.display());
    }
    if c.get("position_embedding_type").and_then(|v| v.as_str()).is_some_and(|t| t != "absolute") {
        bail!("{}: only absolute position embeddings are supported", path.display());
    }
    Ok(cfg)
}

/// One tower loaded from pretrained weights: what WiSE-FT pulls back towards.
#[derive(Debug)]
struct Loaded {
    what: String,
    tensors: Vec<(String, Tensor)>,
}

/// The towers loaded pretrained in this run (none, one or both).
#[derive(Debug, Default)]
pub struct Pretrained {
    loaded: Vec<Loaded>,
}

impl Pretrained {
    /// Loads `AR_IMAGE_TOWER` into the variables under `image_prefix` (e.g. `"image_encoder.backbone."`)
    /// and `AR_TEXT_TOWER` under `text_prefix`, for those that are set. Prints what was loaded.
    pub fn load(ctx: &Context, vs: &VarStore, image_prefix: &str, text_prefix: &str) -> Result<Pretrained> {
        let image = ctx.image_tower.as_deref().map(|p| (p, image_prefix));
        let text = ctx.text_tower.as_deref().map(|p| (p, text_prefix));
        Pretrained::load_from(vs, image, text)
    }

    /// [`Pretrained::load`] from explicit (path, variable prefix) pairs: a timm ViT file or folder and a
    /// Hugging Face folder.
    pub fn load_from(
        vs: &VarStore,
        image: Option<(&Path, &str)>,
        text: Option<(&Path, &str)>,
    ) -> Result<Pretrained> {
        let mut loaded = Vec::new();
        if let Some((path, prefix)) = image {
            loaded.push(load_tower(
                vs,
                prefix,
                &weights_file(path),
                "patch_embed.proj.weight",
                "image tower",
            )?);
        }
        if let Some((dir, prefix)) = text {
            let file = dir.join("model.safetensors");
            loaded.push(load_tower(vs, prefix, &file, "embeddings.word_embeddings.weight", "text tower")?);
        }
        Ok(Pretrained { loaded })
    }

    /// Whether no tower was loaded pretrained.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }

    /// WiSE-FT (the reference, after training): every pretrained tower's weights become
    /// `alpha * pretrained + (1 - alpha) * finetuned`. Towers that were initialised randomly are left
    /// alone: there is nothing to pull them back to. `alpha = 0` does nothing.
    pub fn wise_ft(&self, vs: &VarStore, alpha: f64) -> Result<()> {
        if alpha == 0.0 {
            return Ok(());
        }
        if !(0.0..=1.0).contains(&alpha) {
            bail!("WiSE-FT alpha {alpha} is outside [0, 1]");
        }
        let vars = vs.variables();
        tch::no_grad(|| {
            for tower in &self.loaded {
                for (name, pre) in &tower.tensors {
                    let mut var = vars[name].shallow_clone();
                    let mixed =
                        pre.to_device(var.device()).to_kind(var.kind()) * alpha + &var * (1.0 - alpha);
                    var.copy_(&mixed);
                }
                println!(
                    "WiSE-FT: {} pulled {:.0}% back to its pretrained weights",
                    tower.what,
                    alpha * 100.0
                );
            }
        });
        Ok(())
    }
}

fn load_tower(vs: &VarStore, var_prefix: &str, file: &Path, anchor: &str, what: &str) -> Result<Loaded> {
    let source = weights::read(file).with_context(|| format!("loading the {what}"))?;
    let prefix = prefix_of(source.keys().cloned(), anchor, file)?;
    let loaded =
        weights::load_into(vs, var_prefix, &source, &prefix, &format!("the {what} {}", file.display()))?;
    let n: i64 = loaded.tensors.iter().map(|(_, t)| t.numel() as i64).sum();
    println!(
        "{what}: loaded {} tensors ({:.2}M values) from {}{}",
        loaded.tensors.len(),
        n as f64 / 1e6,
        file.display(),
        if loaded.unused.is_empty() {
            String::new()
        } else {
            format!("; unused: {}", weights::summarize(&loaded.unused))
        }
    );
    Ok(Loaded { what: what.to_string(), tensors: loaded.tensors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::towers::{TextConfig, TextTower, VisionTransformer, VitConfig};
    use crate::Profile;
    use tch::{Device, Kind};

    /// A small DistilBERT saved as a Hugging Face folder (config.json + model.safetensors) in `dir`.
    fn save_text_tower(dir: &Path, cfg: &TextConfig) {
        let vs = VarStore::new(Device::Cpu);
        let _t = TextTower::new(vs.root(), cfg);
        vs.save(dir.join("model.safetensors")).unwrap();
        let config = serde_json::json!({"model_type": "distilbert", "vocab_size": cfg.vocab_size, "dim": cfg.width,
            "n_layers": cfg.layers, "n_heads": cfg.heads, "hidden_dim": cfg.mlp, "max_position_embeddings": 512,
            "activation": "gelu"});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    }

    #[test]
    fn wise_ft_pulls_only_the_pretrained_tower_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::tests();
        let text_cfg = TextConfig::from_profile(&p, 50);
        save_text_tower(dir.path(), &text_cfg);
        assert_eq!(text_config(dir.path()).unwrap(), text_cfg);

        let vs = VarStore::new(Device::Cpu);
        let _vit = VisionTransformer::new(vs.root() / "image" / "backbone", &VitConfig::from_profile(&p));
        let _text = TextTower::new(vs.root() / "text" / "backbone", &text_cfg);
        let pre = Pretrained::load_from(&vs, None, Some((dir.path(), "text.backbone."))).unwrap();
        let before: std::collections::HashMap<String, Tensor> =
            vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect();
        // "Fine-tuning": every weight moves by +1.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_add_scalar_(1.0);
            }
        });
        pre.wise_ft(&vs, 0.1).unwrap();
        for (name, v) in vs.variables() {
            let delta = (&v - &before[&name]).mean(Kind::Float).double_value(&[]);
            let expect = if name.starts_with("text.") { 0.9 } else { 1.0 };
            assert!((delta - expect).abs() < 1e-5, "{name}: moved {delta}, expected {expect}");
        }
        assert!(pre.wise_ft(&vs, 1.5).is_err());
    }
}
