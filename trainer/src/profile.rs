//! The harness-owned sizes of each profile (`AR_PROFILE`).
//!
//! A profile scales image side, tower depth and width, and token lengths, so that the same `train.rs`
//! runs as a seconds-long test, a minutes-long CPU demo, or the reference's sizes on a GPU.
//! `train.rs` reads these sizes through [`Profile`] and documents which of its constants they override.

use anyhow::{bail, Result};

/// Sizes of one profile. `prepare` uses the data sizes (image side, token lengths); `train` uses all.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `tests`, `cpu` or `gpu`.
    pub name: &'static str,
    /// Side S of the square images stored by `prepare` (the reference resizes to 224x224).
    pub image_size: i64,
    /// Patch side of the ViT and of the heatmap processor's convolutions (16 in the reference).
    pub patch_size: i64,
    /// ViT depth (ViT-S: 12).
    pub vision_layers: i64,
    /// ViT width (ViT-S: 384).
    pub vision_width: i64,
    /// ViT attention heads (ViT-S: 6).
    pub vision_heads: i64,
    /// ViT MLP hidden size (ViT-S: 4 x 384).
    pub vision_mlp: i64,
    /// Text tower depth (DistilBERT: 6).
    pub text_layers: i64,
    /// Text tower width (DistilBERT: 768).
    pub text_width: i64,
    /// Text tower attention heads (DistilBERT: 12).
    pub text_heads: i64,
    /// Text tower feed-forward size (DistilBERT: 3072).
    pub text_mlp: i64,
    /// Tokens per caption, [CLS] and [SEP] included (the reference: 128).
    pub caption_len: i64,
    /// Tokens per snippet (the reference: 64).
    pub snippet_len: i64,
    /// Rows per forward pass in the embed phases.
    pub embed_batch: i64,
}

impl Profile {
    /// Tiny: 400 steps of batch 48 in about 20 s on 2 CPU cores (see `train.rs` for the measurement).
    pub fn tests() -> Profile {
        Profile {
            name: "tests",
            image_size: 32,
            patch_size: 8,
            vision_layers: 2,
            vision_width: 64,
            vision_heads: 2,
            vision_mlp: 256,
            text_layers: 2,
            text_width: 64,
            text_heads: 2,
            text_mlp: 256,
            caption_len: 32,
            snippet_len: 16,
            embed_batch: 64,
        }
    }

    /// A demo size: 400 steps of batch 48 in a few minutes on 2 CPU cores.
    pub fn cpu() -> Profile {
        Profile {
            name: "cpu",
            image_size: 64,
            patch_size: 8,
            vision_layers: 4,
            vision_width: 128,
            vision_heads: 4,
            vision_mlp: 512,
            text_layers: 4,
            text_width: 128,
            text_heads: 4,
            text_mlp: 512,
            caption_len: 64,
            snippet_len: 32,
            embed_batch: 64,
        }
    }

    /// The reference's sizes: 224 px, ViT-S/16, a DistilBERT-size text tower, 128/64 tokens.
    pub fn gpu() -> Profile {
        Profile {
            name: "gpu",
            image_size: 224,
            patch_size: 16,
            vision_layers: 12,
            vision_width: 384,
            vision_heads: 6,
            vision_mlp: 1536,
            text_layers: 6,
            text_width: 768,
            text_heads: 12,
            text_mlp: 3072,
            caption_len: 128,
            snippet_len: 64,
            embed_batch: 128,
        }
    }

    /// The profile called `name` (`tests`, `cpu` or `gpu`).
    pub fn by_name(name: &str) -> Result<Profile> {
        match name {
            "tests" => Ok(Profile::tests()),
            "cpu" => Ok(Profile::cpu()),
            "gpu" => Ok(Profile::gpu()),
            other => bail!("unknown profile {other:?} (expected tests, cpu or gpu)"),
        }
    }

    /// Patches per image side (`image_size / patch_size`).
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_divide_evenly() {
        for name in ["tests", "cpu", "gpu"] {
            let p = Profile::by_name(name).unwrap();
            assert_eq!(p.image_size % p.patch_size, 0, "{name}");
            assert_eq!(p.vision_width % p.vision_heads, 0, "{name}");
            assert_eq!(p.text_width % p.text_heads, 0, "{name}");
        }
        assert!(Profile::by_name("huge").is_err());
    }
}
