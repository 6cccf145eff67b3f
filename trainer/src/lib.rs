//! `eclip_harness`: the fixed harness of the eCLIP trainer.
//!
//! The trainer package follows the autoresearch split: this library is fixed (like the reference's
//! `prepare.py`), and `src/train.rs` is the one file the agent edits (like `train.py`). `train.rs` is
//! a binary of this package, so the compiler enforces that it uses only the public API below.
//! The interface with the server (environment, files, tensor names) is `trainer/CONTRACT.md`.
//!
//! # Layout
//! - [`context`]: the `AR_*` environment of a phase ([`Context`]: phase, profile, paths, budget, seed,
//!   device); seeds libtorch.
//! - [`profile`]: the harness-owned sizes of the `tests`, `cpu` and `gpu` profiles ([`Profile`]).
//! - [`odvg`]: parsing ODVG JSONL annotations, skipping bad entries with a reason.
//! - [`prepare`]: the prepare pipeline (ODVG + images + tokenizer.json -> safetensors per split).
//! - [`data`]: a prepared split on the device; batch sampling; expert batches with heatmap + snippet.
//! - [`heatmap`]: Gaussian heatmaps from normalised boxes, as the reference's `bbox_to_heatmap`.
//! - [`embed`]: the embed phases (fixed batches, no-grad, `embeddings.safetensors`).
//! - [`checkpoint`]: saving and loading the VarStore, with the vocabulary size beside it.
//! - [`towers`]: the timm ViT and Hugging Face BERT/DistilBERT towers, pretrained loading, WiSE-FT.
//! - [`layers`]: linear/conv/norm builders with PyTorch's and timm's inits, attention head reshapes.
//! - [`weights`]: safetensors reading and loading with errors that name tensors.
//! - [`optim`]: AdamW over one flat buffer (a few kernels a step, not ~10 per variable).
//! - [`precision`]: bf16 autocast on CUDA.
//! - [`step_check`]: the `step-check` phase's fixed batch and gradient dump (parity with PyTorch).
//! - [`summary`]: `train_summary.json` (steps, final loss, peak memory, device, seconds, timeline).
//! - [`cuda_memory`]: the CUDA device's peak memory in use, sampled from a background thread.
//! - [`vocab`]: the keys under which a split and a checkpoint record the vocabulary size.
//! - [`timeline`]: when the train phase loaded its data, began its first step and ended its loop.
//! - [`safetensors_header`]: reading single small tensors without loading a whole file.

pub mod checkpoint;
pub mod context;
pub mod cuda_memory;
pub mod data;
pub mod embed;
pub mod heatmap;
pub mod layers;
pub mod odvg;
pub mod optim;
pub mod precision;
pub mod prepare;
pub mod profile;
pub mod safetensors_header;
pub mod step_check;
pub mod summary;
pub mod timeline;
pub mod towers;
pub mod vocab;
pub mod weights;

pub use context::{Context, Phase};
pub use data::{Batch, ExpertBatch, Sampler, TrainData};
pub use profile::Profile;

/// ImageNet mean and std: the reference normalises with these (although the augreg ViT weights expect
/// 0.5/0.5); images are stored as u8 and normalised on the device when a batch is drawn.
pub const IMAGE_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGE_MEAN`].
pub const IMAGE_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Converts u8 images `(B,3,S,S)` to normalised f32 on their device, as the reference's
/// `ToTensor()` + `Normalize(ImageNet mean, std)`.
pub fn normalize_images(images: &tch::Tensor) -> tch::Tensor {
    let device = images.device();
    let mean =
        tch::Tensor::from_slice(&IMAGE_MEAN).to_kind(tch::Kind::Float).to_device(device).view([1, 3, 1, 1]);
    let std =
        tch::Tensor::from_slice(&IMAGE_STD).to_kind(tch::Kind::Float).to_device(device).view([1, 3, 1, 1]);
    (images.to_kind(tch::Kind::Float) / 255.0 - mean) / std
}
