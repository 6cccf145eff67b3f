//! The `step-check` phase: one training step's loss and gradients on a fixed batch from fixed weights,
//! so that `train.rs` can be compared with the PyTorch port of the reference (`reference/`) tensor by
//! tensor. Dropout is off on both sides; the Beta draw of the expert mix is given (`lam`).
//!
//! `AR_DATA` holds f32 `images` (B,3,S,S) already normalised, i64 `caption_ids`/`caption_mask`, and for an
//! expert step also `expert_images`, `expert_heatmaps` (B,1,S,S), `expert_caption_ids`/`_mask`,
//! `snippet_ids`/`snippet_mask` and f64 `lam` (1,). `AR_CHECKPOINT` holds the initial weights.
//! Output: `AR_OUT/step.safetensors` with `loss` (1,) and `grad.<variable>` for every variable that got one.

use crate::context::Context;
use crate::data::{read_tensors, Batch, ExpertBatch};
use anyhow::{Context as _, Result};
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// File name of the output in `AR_OUT`.
pub const STEP_FILE: &str = "step.safetensors";

/// The fixed batch of a step check.
#[derive(Debug)]
pub struct StepInput {
    /// The contrastive batch.
    pub batch: Batch,
    /// The expert batch and its mixing weight, when the step has one.
    pub expert: Option<(ExpertBatch, f64)>,
}

fn take(m: &mut HashMap<String, Tensor>, key: &str, ctx: &Context) -> Result<Tensor> {
    let t = m.remove(key).with_context(|| format!("{} has no tensor {key:?}", ctx.data.display()))?;
    Ok(t.to_device(ctx.device))
}

/// Reads `AR_DATA`.
pub fn load(ctx: &Context) -> Result<StepInput> {
    let mut m = read_tensors(&ctx.data)?;
    let batch = Batch {
        images: take(&mut m, "images", ctx)?.to_kind(Kind::Float),
        caption_ids: take(&mut m, "caption_ids", ctx)?,
        caption_mask: take(&mut m, "caption_mask", ctx)?,
    };
    let expert = match m.remove("lam") {
        None => None,
        Some(lam) => {
            let b = batch.images.size()[0];
            let rows = Tensor::arange(b, (Kind::Int64, ctx.device));
            let eb = ExpertBatch {
                images: take(&mut m, "expert_images", ctx)?.to_kind(Kind::Float),
                caption_ids: take(&mut m, "expert_caption_ids", ctx)?,
                caption_mask: take(&mut m, "expert_caption_mask", ctx)?,
                heatmaps: take(&mut m, "expert_heatmaps", ctx)?.to_kind(Kind::Float),
                snippet_ids: take(&mut m, "snippet_ids", ctx)?,
                snippet_mask: take(&mut m, "snippet_mask", ctx)?,
                image_idx: rows.shallow_clone(),
                snippet_idx: rows,
            };
            Some((eb, lam.double_value(&[0])))
        }
    };
    Ok(StepInput { batch, expert })
}

/// Runs `loss.backward()` and writes the loss and every variable's gradient.
pub fn write(ctx: &Context, loss: &Tensor, vs: &VarStore) -> Result<()> {
    loss.backward();
    let mut out: Vec<(String, Tensor)> =
        vec![("loss".into(), loss.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu).reshape([1]))];
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in vars {
        let g = v.grad();
        if g.defined() {
            out.push((
                format!("grad.{name}"),
                g.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous(),
            ));
        }
    }
    let path = ctx.out.join(STEP_FILE);
    Tensor::write_safetensors(&out, &path).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "step-check: loss {:.6}, {} gradients -> {}",
        loss.double_value(&[]),
        out.len() - 1,
        path.display()
    );
    Ok(())
}
