//! The two pretrained-capable towers of eCLIP and how a run gets their sizes and weights.
//!
//! Like the reference's `timm.create_model` and `AutoModel.from_pretrained`, these are library code:
//! `train.rs` builds them, projects their features and decides what to train.
//! - [`vit`]: timm `VisionTransformer` (image tower).
//! - [`text`]: Hugging Face BERT / DistilBERT (text tower).
//! - [`pretrained`]: sizes from pretrained files, loading them with named errors, WiSE-FT.

pub mod pretrained;
pub mod text;
pub mod vit;

pub use pretrained::Pretrained;
pub use text::{TextArch, TextConfig, TextTower};
pub use vit::{VisionTransformer, VitConfig};

use crate::context::Context;
use anyhow::{bail, Result};

/// The image tower's sizes for this run: the pretrained ViT's (`AR_IMAGE_TOWER`) or the profile's.
pub fn vision_config(ctx: &Context) -> Result<VitConfig> {
    let Some(path) = &ctx.image_tower else {
        return Ok(VitConfig::from_profile(&ctx.profile));
    };
    let cfg = pretrained::vit_config(path)?;
    if cfg.image_size != ctx.profile.image_size {
        bail!(
            "the image tower {} takes {} px images ({}x{} patches of {} px) but profile {} stores {} px images; \
             use a profile with that image size",
            path.display(),
            cfg.image_size,
            cfg.image_size / cfg.patch_size,
            cfg.image_size / cfg.patch_size,
            cfg.patch_size,
            ctx.profile.name,
            ctx.profile.image_size
        );
    }
    Ok(cfg)
}

/// The text tower's sizes for this run: the pretrained model's (`AR_TEXT_TOWER`) or the profile's
/// DistilBERT over `vocab_size` tokens (the tokenizer's, recorded by `prepare`).
pub fn text_config(ctx: &Context, vocab_size: i64) -> Result<TextConfig> {
    let Some(dir) = &ctx.text_tower else {
        return Ok(TextConfig::from_profile(&ctx.profile, vocab_size));
    };
    let cfg = pretrained::text_config(dir)?;
    if vocab_size > cfg.vocab_size {
        bail!(
            "the tokenizer has {vocab_size} tokens but the text tower {} embeds only {}: prepare the data with \
             the tower's own tokenizer.json",
            dir.display(),
            cfg.vocab_size
        );
    }
    if ctx.profile.caption_len > cfg.max_positions {
        bail!(
            "captions of {} tokens exceed the text tower's {} positions",
            ctx.profile.caption_len,
            cfg.max_positions
        );
    }
    Ok(cfg)
}
