//! The embed phases: the model's encoder over `AR_DATA` in fixed batches under no-grad, written as
//! `AR_OUT/embeddings.safetensors` (one tensor `embeddings`, f32 `(N,D)`, row i = input row i).
//!
//! Images are normalised here exactly as in training ([`crate::normalize_images`]). The batch size is
//! the profile's and the order is the file's, so the harness, not `train.rs`, fixes what one forward
//! pass sees. Embeddings are written as the encoder returns them; the server L2-normalises and scores.

use crate::context::{Context, Phase};
use crate::data::read_tensors;
use crate::normalize_images;
use anyhow::{bail, Context as _, Result};
use std::time::Instant;
use tch::{Kind, Tensor};

/// File name of the embeddings in `AR_OUT`.
pub const EMBEDDINGS_FILE: &str = "embeddings.safetensors";

fn run_batches(ctx: &Context, n: i64, mut f: impl FnMut(i64, i64) -> Result<Tensor>) -> Result<Tensor> {
    let batch = ctx.profile.embed_batch.max(1);
    let started = Instant::now();
    let mut parts = Vec::new();
    tch::no_grad(|| -> Result<()> {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let e = f(start, len)?;
            if e.dim() != 2 || e.size()[0] != len {
                bail!(
                    "the encoder returned shape {:?} for a batch of {len} rows (expected ({len}, D))",
                    e.size()
                );
            }
            parts.push(e.to_kind(Kind::Float).to_device(tch::Device::Cpu));
            start += len;
        }
        Ok(())
    })?;
    let out = Tensor::cat(&parts, 0).contiguous();
    let bad = out.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    eprintln!("embedded {n} rows in {:.1}s, shape {:?}", started.elapsed().as_secs_f64(), out.size());
    if bad > 0 {
        eprintln!(
            "warning: {bad} non-finite values in the embeddings (the server scores this run as crashed)"
        );
    }
    Ok(out)
}

fn write(ctx: &Context, embeddings: &Tensor) -> Result<()> {
    let path = ctx.out.join(EMBEDDINGS_FILE);
    Tensor::write_safetensors(&[("embeddings", embeddings)], &path)
        .with_context(|| format!("writing {}", path.display()))
}

/// `embed-images`: `encode(images)` with `images` `(B,3,S,S)` f32 normalised on the device, returning
/// `(B,D)`; writes `embeddings.safetensors`.
pub fn images(ctx: &Context, mut encode: impl FnMut(&Tensor) -> Tensor) -> Result<()> {
    if ctx.phase != Phase::EmbedImages {
        bail!("embed::images called in phase {:?}", ctx.phase);
    }
    let mut m = read_tensors(&ctx.data)?;
    let images = m.remove("images").context("the data file has no tensor \"images\"")?;
    if images.kind() != Kind::Uint8 || images.dim() != 4 {
        bail!("images is {:?} {:?}, expected u8 (N,3,S,S)", images.kind(), images.size());
    }
    let n = images.size()[0];
    let out = run_batches(ctx, n, |start, len| {
        let x = normalize_images(&images.narrow(0, start, len).to_device(ctx.device));
        Ok(encode(&x))
    })?;
    write(ctx, &out)
}

/// `embed-texts`: `encode(ids, mask)` with `(B,Lc)` i64 tensors on the device, returning `(B,D)`;
/// writes `embeddings.safetensors`.
pub fn texts(ctx: &Context, mut encode: impl FnMut(&Tensor, &Tensor) -> Tensor) -> Result<()> {
    if ctx.phase != Phase::EmbedTexts {
        bail!("embed::texts called in phase {:?}", ctx.phase);
    }
    let mut m = read_tensors(&ctx.data)?;
    let ids = m.remove("caption_ids").context("the data file has no tensor \"caption_ids\"")?;
    let mask = m.remove("caption_mask").context("the data file has no tensor \"caption_mask\"")?;
    if ids.dim() != 2 || ids.size() != mask.size() {
        bail!("caption_ids {:?} and caption_mask {:?} must be (N,L) alike", ids.size(), mask.size());
    }
    let (ids, mask) = (ids.to_kind(Kind::Int64), mask.to_kind(Kind::Int64));
    let n = ids.size()[0];
    let out = run_batches(ctx, n, |start, len| {
        let i = ids.narrow(0, start, len).to_device(ctx.device);
        let m = mask.narrow(0, start, len).to_device(ctx.device);
        Ok(encode(&i, &m))
    })?;
    write(ctx, &out)
}
