//! Reading safetensors weights with errors that name what is wrong: a truncated file names the first
//! tensor whose bytes are missing; loading into a VarStore names every missing tensor and every shape
//! mismatch, never a silent random init.
//!
//! Used for the train phase's checkpoint ([`crate::checkpoint`]) and for pretrained towers
//! ([`crate::towers::pretrained`]), whose files may come from anywhere (timm, Hugging Face, a copy that
//! was interrupted).

use crate::safetensors_header::read_header;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// How many names an error lists before it says "and N more".
const LIST_AT_MOST: usize = 12;

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Checks the header of `path` against the file's length: every tensor's byte range must lie inside the
/// file and match its dtype and shape. Names the first tensor that does not.
pub fn check_file(path: &Path) -> Result<()> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    let header = read_header(path).with_context(|| {
        format!(
            "{} is not a safetensors file, or it is truncated inside its header ({len} bytes)",
            path.display()
        )
    })?;
    // The data section starts after the 8-byte length and the header as stored.
    let stored_header = {
        use std::io::Read;
        let mut n = [0u8; 8];
        std::fs::File::open(path)?.read_exact(&mut n)?;
        u64::from_le_bytes(n)
    };
    let data_len = len.saturating_sub(8 + stored_header);
    let mut entries: Vec<(&String, u64, u64, u64)> = Vec::new();
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        if offsets.len() != 2 || offsets[0] > offsets[1] {
            bail!("{}: tensor {name:?} has malformed data_offsets {offsets:?}", path.display());
        }
        let elt = dtype_bytes(dtype)
            .with_context(|| format!("{}: tensor {name:?} has unsupported dtype {dtype}", path.display()))?;
        let want = shape.iter().product::<u64>() * elt;
        if offsets[1] - offsets[0] != want {
            bail!(
                "{}: tensor {name:?} ({dtype} {shape:?}) should take {want} bytes but its offsets give {}",
                path.display(),
                offsets[1] - offsets[0]
            );
        }
        entries.push((name, offsets[0], offsets[1], want));
    }
    entries.sort_by_key(|e| e.1);
    if let Some((name, begin, end, _)) = entries.iter().find(|e| e.2 > data_len) {
        bail!(
            "{} is truncated: tensor {name:?} needs data bytes {begin}..{end} but the file holds only {data_len} \
             (the file is {len} bytes; was a copy or a save interrupted?)",
            path.display()
        );
    }
    Ok(())
}

/// Reads every tensor of a safetensors file onto the CPU after [`check_file`].
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    check_file(path)?;
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

/// Lists names, at most [`LIST_AT_MOST`] of them.
fn list(names: &[String]) -> String {
    let mut s = names.iter().take(LIST_AT_MOST).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > LIST_AT_MOST {
        s.push_str(&format!(", and {} more", names.len() - LIST_AT_MOST));
    }
    s
}

/// What [`load_into`] did.
#[derive(Debug, Default)]
pub struct Loaded {
    /// VarStore variable name -> the tensor it was loaded from (CPU, the file's values).
    pub tensors: Vec<(String, Tensor)>,
    /// Source tensors no variable asked for (e.g. a classifier head, BERT's pooler).
    pub unused: Vec<String>,
}

/// Copies the variables of `vs` whose names start with `var_prefix` from `source`, where variable
/// `var_prefix + rest` reads source tensor `source_prefix + rest`. Every such variable must be present
/// with the same shape; the error names all that are not. Values are converted to the variable's kind.
pub fn load_into(
    vs: &VarStore,
    var_prefix: &str,
    source: &BTreeMap<String, Tensor>,
    source_prefix: &str,
    what: &str,
) -> Result<Loaded> {
    let vars: HashMap<String, Tensor> = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(var_prefix)).collect();
    names.sort();
    if names.is_empty() {
        bail!("the model has no variables under {var_prefix:?} to load {what} into");
    }
    let (mut missing, mut mismatched, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let key = format!("{source_prefix}{}", &name[var_prefix.len()..]);
        let var = &vars[name];
        match source.get(&key) {
            None => missing.push(key),
            Some(t) if t.size() != var.size() => {
                mismatched.push(format!("{key} (file {:?}, model {:?})", t.size(), var.size()))
            }
            Some(t) => loaded.push((name.clone(), key, t)),
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        let mut msg = format!("{what} does not fit the model:");
        if !missing.is_empty() {
            msg.push_str(&format!("\n  missing {} tensor(s): {}", missing.len(), list(&missing)));
        }
        if !mismatched.is_empty() {
            msg.push_str(&format!(
                "\n  wrong shape for {} tensor(s): {}",
                mismatched.len(),
                list(&mismatched)
            ));
        }
        bail!(msg);
    }
    let used: std::collections::HashSet<&str> = loaded.iter().map(|(_, k, _)| k.as_str()).collect();
    let unused = source
        .keys()
        .filter(|k| k.starts_with(source_prefix) && !used.contains(k.as_str()))
        .cloned()
        .collect();
    let mut tensors = Vec::with_capacity(loaded.len());
    tch::no_grad(|| -> Result<()> {
        for (name, key, t) in loaded {
            let mut var = vars[&name].shallow_clone();
            var.f_copy_(&t.to_kind(var.kind())).with_context(|| format!("copying {key} into {name}"))?;
            tensors.push((name, t.shallow_clone()));
        }
        Ok(())
    })?;
    Ok(Loaded { tensors, unused })
}

/// Loads every variable of `vs` from `path` by its own name (a checkpoint): errors name missing tensors,
/// wrong shapes and truncation. Returns the file's tensors that are not variables.
pub fn load_all(vs: &VarStore, path: &Path, what: &str) -> Result<Vec<String>> {
    let source = read(path)?;
    let loaded = load_into(vs, "", &source, "", &format!("{what} {}", path.display()))?;
    Ok(loaded.unused)
}

/// Short form of [`list`] for log lines.
pub fn summarize(names: &[String]) -> String {
    list(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    /// A VarStore with two variables, saved to `dir/w.safetensors`.
    fn saved(dir: &Path) -> (VarStore, std::path::PathBuf) {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _w = (&root / "enc").var("weight", &[4, 3], nn::Init::Randn { mean: 0.0, stdev: 1.0 });
        let _b = (&root / "enc" / "norm").var("bias", &[4], nn::Init::Const(0.5));
        let path = dir.join("w.safetensors");
        vs.save(&path).unwrap();
        (vs, path)
    }

    fn fresh(shape_w: &[i64]) -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _w = (&root / "enc").var("weight", shape_w, nn::Init::Const(0.0));
        let _b = (&root / "enc" / "norm").var("bias", &[4], nn::Init::Const(0.0));
        vs
    }

    #[test]
    fn loads_every_variable_and_reports_extras() {
        let dir = tempfile::tempdir().unwrap();
        let (src, path) = saved(dir.path());
        let dst = fresh(&[4, 3]);
        assert!(load_all(&dst, &path, "the checkpoint").unwrap().is_empty());
        let (a, b) = (&src.variables()["enc.weight"], &dst.variables()["enc.weight"]);
        assert!(a.allclose(b, 0.0, 0.0, false));
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let only_w = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
        Tensor::write_safetensors(&[("enc.weight", &only_w)], &path).unwrap();
        let err = load_all(&fresh(&[4, 3]), &path, "the checkpoint").unwrap_err().to_string();
        assert!(err.contains("missing 1 tensor(s): enc.norm.bias"), "{err}");
    }

    #[test]
    fn a_wrong_shape_is_named_with_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let (_src, path) = saved(dir.path());
        let err = load_all(&fresh(&[3, 4]), &path, "the checkpoint").unwrap_err().to_string();
        assert!(err.contains("wrong shape for 1 tensor(s): enc.weight (file [4, 3], model [3, 4])"), "{err}");
    }

    #[test]
    fn a_truncated_file_names_the_first_tensor_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (_src, path) = saved(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        // Cut into the last tensor's data (the file's tensors are stored in name order).
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = load_all(&fresh(&[4, 3]), &path, "the checkpoint").unwrap_err().to_string();
        assert!(err.contains("is truncated: tensor \"enc.weight\""), "{err}");
        // Cut inside the header.
        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = format!("{:#}", load_all(&fresh(&[4, 3]), &path, "the checkpoint").unwrap_err());
        assert!(err.contains("truncated inside its header"), "{err}");
    }

    #[test]
    fn a_prefix_maps_variables_to_source_names() {
        let vs = VarStore::new(Device::Cpu);
        let _w =
            (vs.root() / "text" / "backbone" / "embeddings").var("weight", &[2, 2], nn::Init::Const(0.0));
        let mut source = BTreeMap::new();
        source.insert("bert.embeddings.weight".to_string(), Tensor::ones([2, 2], (Kind::Float, Device::Cpu)));
        source.insert("bert.pooler.weight".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu)));
        source.insert("cls.head".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu)));
        let loaded = load_into(&vs, "text.backbone.", &source, "bert.", "the text tower").unwrap();
        assert_eq!(loaded.unused, vec!["bert.pooler.weight".to_string()]);
        assert_eq!(vs.variables()["text.backbone.embeddings.weight"].sum(Kind::Float).double_value(&[]), 4.0);
    }
}
