//! The prepared tensor cache and the private validation pairing.
//!
//! `prepare` (a fixed harness binary of the trainer, run in the sandbox) turns an ODVG dataset into
//! safetensors once per (dataset, profile, tokenizer) and, when cross-validating, once per fold. The server then writes the validation split as two files,
//! images and texts, each in its own secret random row order, and keeps the orders in `private/`,
//! which no phase is given. The test split is prepared but never handed to any phase of the loop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::seq::SliceRandom;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{read_capped, sha256_hex, write_atomic};

/// Largest prepared split the server reads back (the GPU profile's validation split is ~170 MB).
pub(crate) const MAX_SPLIT_BYTES: u64 = 16 << 30;

/// Which original item sits at each row of the shuffled validation files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pairing {
    /// `image_order[a]` = original index of the image at row a of `val_images.safetensors`.
    pub image_order: Vec<usize>,
    pub text_order: Vec<usize>,
}

/// A ready cache folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    pub dir: PathBuf,
    /// SHA-256 over the training split and the validation split (the fingerprint's `data`).
    pub hash: String,
    pub val_n: usize,
    pub train_n: usize,
}

impl Prepared {
    pub fn prepared_dir(&self) -> PathBuf {
        self.dir.join("prepared")
    }
    pub fn train_file(&self) -> PathBuf {
        self.prepared_dir().join("train.safetensors")
    }
    pub fn val_images(&self) -> PathBuf {
        self.dir.join("phase/val_images.safetensors")
    }
    pub fn val_texts(&self) -> PathBuf {
        self.dir.join("phase/val_texts.safetensors")
    }
    pub fn pairing(&self) -> Result<Pairing> {
        let p = self.dir.join("private/pairing.json");
        serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("read {}", p.display()))?)
            .context("parse pairing.json")
    }
}

/// Loads a finished cache, if `dir` holds one.
pub fn load_ready(dir: &Path) -> Option<Prepared> {
    let bytes = std::fs::read(dir.join("ready.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// After `prepare` has written `dir/prepared/`: hash the splits, shuffle validation into two files,
/// store the pairing, and mark the folder ready.
pub fn finish(dir: &Path) -> Result<Prepared> {
    let prepared = dir.join("prepared");
    let train = read_capped(&prepared.join("train.safetensors"), MAX_SPLIT_BYTES)
        .context("prepare did not write train.safetensors")?;
    let val = read_capped(&prepared.join("val.safetensors"), MAX_SPLIT_BYTES)
        .context("prepare did not write val.safetensors")?;
    let train_n = rows(&SafeTensors::deserialize(&train)?, "images")?;
    let st = SafeTensors::deserialize(&val).context("parse val.safetensors")?;
    let val_n = rows(&st, "images")?;
    for key in ["caption_ids", "caption_mask"] {
        if rows(&st, key)? != val_n {
            bail!("val.safetensors: {key} has a different number of rows than images");
        }
    }
    let pairing = write_halves(dir, "val", &st)?;
    write_atomic(&dir.join("private/pairing.json"), serde_json::to_string(&pairing)?.as_bytes())?;
    let mut h = Sha256::new();
    h.update(sha256_hex(&train));
    h.update(sha256_hex(&val));
    let ready = Prepared { dir: dir.to_path_buf(), hash: hex::encode(h.finalize())[..16].to_string(), val_n, train_n };
    write_atomic(&dir.join("ready.json"), serde_json::to_string_pretty(&ready)?.as_bytes())?;
    Ok(ready)
}

/// Writes the prepared `split` (`st`, already checked to have as many captions as images) as two files,
/// `dir/phase/<split>_images.safetensors` and `dir/phase/<split>_texts.safetensors`, each in its own
/// secret random row order; returns the orders, which the caller keeps in `dir/private/`.
pub(crate) fn write_halves(dir: &Path, split: &str, st: &SafeTensors) -> Result<Pairing> {
    let n = rows(st, "images")?;
    let mut rng = rand::rng();
    let mut image_order: Vec<usize> = (0..n).collect();
    image_order.shuffle(&mut rng);
    let mut text_order: Vec<usize> = (0..n).collect();
    text_order.shuffle(&mut rng);
    std::fs::create_dir_all(dir.join("phase"))?;
    std::fs::create_dir_all(dir.join("private"))?;
    write_shuffled(st, &["images"], &image_order, &dir.join(format!("phase/{split}_images.safetensors")))?;
    let texts = dir.join(format!("phase/{split}_texts.safetensors"));
    write_shuffled(st, &["caption_ids", "caption_mask"], &text_order, &texts)?;
    Ok(Pairing { image_order, text_order })
}

pub(crate) fn rows(st: &SafeTensors, key: &str) -> Result<usize> {
    let t = st.tensor(key).with_context(|| format!("prepared split has no `{key}`"))?;
    t.shape().first().copied().with_context(|| format!("`{key}` is a scalar"))
}

/// Writes `keys` of `st` with rows permuted: row a of the output is row `order[a]` of the input.
fn write_shuffled(st: &SafeTensors, keys: &[&str], order: &[usize], out: &Path) -> Result<()> {
    let mut owned: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = Vec::new();
    for key in keys {
        let t = st.tensor(key)?;
        let n = t.shape()[0];
        let row = t.data().len() / n.max(1);
        let mut data = Vec::with_capacity(t.data().len());
        for &src in order {
            data.extend_from_slice(&t.data()[src * row..(src + 1) * row]);
        }
        owned.push((key.to_string(), data, t.dtype(), t.shape().to_vec()));
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(k, d, dt, s)| Ok((k.clone(), TensorView::new(*dt, s.clone(), d)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None)?;
    write_atomic(out, &bytes)
}
