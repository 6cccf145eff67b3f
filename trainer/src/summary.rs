//! `AR_OUT/train_summary.json`:
//! `{"steps","final_loss","peak_memory_bytes","device","train_seconds","steps_per_second","budget_cut","timeline"}`
//! (`timeline`: [`crate::timeline::Timeline`]).
//!
//! Nothing here changes the score; the server records it beside the run. Peak memory is the process's
//! maximum resident set on the CPU (`getrusage`). On CUDA, tch 0.24 exposes no caching-allocator
//! statistics, so a harness thread samples the device's memory in use (`cudaMemGetInfo`, every 20 ms)
//! from the start of the phase: the peak includes the CUDA context and the allocator's cache, like
//! `nvidia-smi` and `torch.cuda.max_memory_reserved()` plus the context.

use crate::context::Context;
use anyhow::{Context as _, Result};
use serde::Serialize;

/// File name of the summary in `AR_OUT`.
pub const SUMMARY_FILE: &str = "train_summary.json";

/// The train phase's summary.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Summary {
    /// Optimiser steps done.
    pub steps: u64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Peak memory in bytes, where known.
    pub peak_memory_bytes: Option<u64>,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Wall-clock seconds of the phase so far.
    pub train_seconds: f64,
    /// `steps / train_seconds` (data loading and model building included).
    pub steps_per_second: f64,
    /// The loop found the budget spent ([`crate::Context::time_is_up`] or `time_left` said so): training
    /// stopped at the budget, before train.rs's own schedule ended.
    pub budget_cut: bool,
    /// When the phase loaded its data, began its first step and ended its loop.
    pub timeline: crate::timeline::Timeline,
}

/// Maximum resident set size of this process in bytes.
pub fn max_rss_bytes() -> Option<u64> {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (rc == 0).then(|| usage.ru_maxrss as u64 * 1024) // Linux reports KiB
}

/// Peak memory of the run on its device (see the module docs).
pub fn peak_memory_bytes(ctx: &Context) -> Option<u64> {
    match ctx.device {
        tch::Device::Cpu => max_rss_bytes(),
        _ => crate::cuda_memory::peak(),
    }
}

/// Writes `train_summary.json` and returns what it wrote.
pub fn write(ctx: &Context, steps: u64, final_loss: f64) -> Result<Summary> {
    let s = Summary {
        steps,
        final_loss,
        peak_memory_bytes: peak_memory_bytes(ctx),
        device: ctx.device_name().to_string(),
        train_seconds: ctx.elapsed_s(),
        steps_per_second: steps as f64 / ctx.elapsed_s().max(1e-9),
        budget_cut: crate::timeline::snapshot().budget_spent_s.is_some(),
        timeline: crate::timeline::snapshot(),
    };
    let path = ctx.out.join(SUMMARY_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&s)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(s)
}
