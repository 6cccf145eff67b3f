//! The prepared tensor cache and the private validation pairing.
//!
//! `prepare` (a fixed harness binary of the trainer, run in the sandbox) turns an ODVG dataset into
//! safetensors once per (dataset, profile, tokenizer) and, when cross-validating, once per fold. For
//! every evaluation the server deals the validation split anew into two files, images and texts, each
//! in its own fresh secret row order ([`deal_halves`]); the orders stay in the server's memory. The
//! test split is prepared but never handed to any phase of the loop.

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
    /// The validation split, never mounted as it is: each evaluation deals it anew ([`deal_halves`]).
    pub fn val_file(&self) -> PathBuf {
        self.prepared_dir().join("val.safetensors")
    }
}

/// Loads a finished cache, if `dir` holds one.
pub fn load_ready(dir: &Path) -> Option<Prepared> {
    let bytes = std::fs::read(dir.join("ready.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// After `prepare` has written `dir/prepared/`: check and hash the splits and mark the folder ready.
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
    if val_n < 2 {
        bail!("the validation split has {val_n} usable pairs: too few to rank");
    }
    let mut h = Sha256::new();
    h.update(sha256_hex(&train));
    h.update(sha256_hex(&val));
    let ready = Prepared { dir: dir.to_path_buf(), hash: hex::encode(h.finalize())[..16].to_string(), val_n, train_n };
    write_atomic(&dir.join("ready.json"), serde_json::to_string_pretty(&ready)?.as_bytes())?;
    Ok(ready)
}

/// One evaluation's inputs: the two halves of a split, each in its own secret row order.
#[derive(Debug)]
pub struct Halves {
    pub images: PathBuf,
    pub texts: PathBuf,
    /// Known only to the server: never written where a job could read it.
    pub pairing: Pairing,
}

/// Deals the prepared `split` file (validation or test) into `dir/images.safetensors` and
/// `dir/texts.safetensors`, each in a fresh random row order: a new draw for every run, seed and
/// fold, so the score of one run says nothing about the rows of the next. `n` is the number of pairs
/// the split must hold.
pub fn deal_halves(split: &Path, n: usize, dir: &Path) -> Result<Halves> {
    let bytes = read_capped(split, MAX_SPLIT_BYTES).with_context(|| format!("read {}", split.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parse {}", split.display()))?;
    for key in ["images", "caption_ids", "caption_mask"] {
        let rows = rows(&st, key)?;
        if rows != n {
            bail!("{}: `{key}` has {rows} rows, expected {n}", split.display());
        }
    }
    let mut rng = rand::rng();
    let mut image_order: Vec<usize> = (0..n).collect();
    image_order.shuffle(&mut rng);
    let mut text_order: Vec<usize> = (0..n).collect();
    text_order.shuffle(&mut rng);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let (images, texts) = (dir.join("images.safetensors"), dir.join("texts.safetensors"));
    write_shuffled(&st, &["images"], &image_order, &images)?;
    write_shuffled(&st, &["caption_ids", "caption_mask"], &text_order, &texts)?;
    Ok(Halves { images, texts, pairing: Pairing { image_order, text_order } })
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
