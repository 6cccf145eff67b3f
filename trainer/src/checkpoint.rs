//! The train phase's checkpoint: every VarStore variable by its path name
//! (e.g. `image_encoder.backbone.blocks.0.attn.qkv.weight`), plus the vocabulary size under
//! [`VOCAB_SIZE_KEY`] so that the embed phases rebuild the text tower without the tokenizer.

use crate::context::Context;
use anyhow::{Context as _, Result};
use tch::{nn::VarStore, Tensor};

/// File name of the checkpoint in `AR_OUT`.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Key of the vocabulary size in a checkpoint (defined with the split's in [`crate::vocab`]).
pub use crate::vocab::CHECKPOINT_KEY as VOCAB_SIZE_KEY;

/// Writes `AR_OUT/checkpoint.safetensors` (f32 or whatever kind the variables have, on the CPU).
pub fn save(ctx: &Context, vs: &VarStore, vocab_size: i64) -> Result<()> {
    crate::timeline::loop_end();
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

/// Loads `AR_CHECKPOINT` into `vs`: every variable of `vs` must be in the file with its shape; the error
/// names each missing tensor, each wrong shape, or the first tensor a truncated file lacks.
pub fn load(ctx: &Context, vs: &mut VarStore) -> Result<()> {
    let path = ctx.checkpoint.as_ref().context("AR_CHECKPOINT is not set")?;
    let unused = crate::weights::load_all(vs, path, "the checkpoint")?;
    let unused: Vec<String> = unused.into_iter().filter(|n| !n.starts_with("harness.")).collect();
    if !unused.is_empty() {
        eprintln!("checkpoint: tensors the model does not use: {}", crate::weights::summarize(&unused));
    }
    Ok(())
}
