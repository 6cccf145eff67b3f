//! The train phase's checkpoint: every VarStore variable by its path name
//! (e.g. `image_encoder.backbone.blocks.0.attn.qkv.weight`), plus the vocabulary size under
//! [`VOCAB_SIZE_KEY`] so that the embed phases rebuild the text tower without the tokenizer.

use crate::context::Context;
use anyhow::{Context as _, Result};
use tch::{nn::VarStore, Tensor};

/// File name of the checkpoint in `AR_OUT`.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Key of the vocabulary size (i64, shape (1,)) in a checkpoint; not a variable name.
pub const VOCAB_SIZE_KEY: &str = "harness.vocab_size";

/// Writes `AR_OUT/checkpoint.safetensors` (f32 or whatever kind the variables have, on the CPU).
pub fn save(ctx: &Context, vs: &VarStore, vocab_size: i64) -> Result<()> {
    let path = ctx.out.join(CHECKPOINT_FILE);
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.push((VOCAB_SIZE_KEY.to_string(), Tensor::from_slice(&[vocab_size])));
    Tensor::write_safetensors(&named, &path).with_context(|| format!("writing {}", path.display()))
}

/// Loads `AR_CHECKPOINT` into `vs` (every variable of `vs` must be in the file).
pub fn load(ctx: &Context, vs: &mut VarStore) -> Result<()> {
    let path = ctx.checkpoint.as_ref().context("AR_CHECKPOINT is not set")?;
    // Copying into variables that require grad is only allowed outside autograd.
    tch::no_grad(|| vs.read_safetensors(path))
        .with_context(|| format!("loading checkpoint {}", path.display()))
}
