//! The image tower: timm's `VisionTransformer` (`vit_small_patch16_224` and kin) with timm's parameter
//! names, so that timm weights load as they are: `cls_token`, `pos_embed`, `patch_embed.proj`,
//! `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`.
//!
//! The forward pass is timm's with `num_classes=0, global_pool='token'`: patch embedding, class token,
//! position embedding, pre-norm blocks, final norm, the class token's features. No dropout (timm's
//! defaults for these models are 0).

use crate::layers::{
    layer_norm, merge_heads, normal_linear, patch_conv, patch_tokens, split_heads, INIT_STD,
};
use crate::profile::Profile;
use tch::nn::{self, Module};
use tch::Tensor;

/// timm ViT LayerNorm eps.
pub const VIT_LN_EPS: f64 = 1e-6;

/// Sizes of a ViT.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// Side of the square input images.
    pub image_size: i64,
    /// Patch side (16 for ViT-S/16).
    pub patch_size: i64,
    /// Blocks (ViT-S: 12).
    pub layers: i64,
    /// Width (ViT-S: 384).
    pub width: i64,
    /// Attention heads (ViT-S: 6).
    pub heads: i64,
    /// MLP hidden size (ViT-S: 1536).
    pub mlp: i64,
}

impl VitConfig {
    /// The profile's ViT (randomly initialised unless pretrained weights are given).
    pub fn from_profile(p: &Profile) -> VitConfig {
        VitConfig {
            image_size: p.image_size,
            patch_size: p.patch_size,
            layers: p.vision_layers,
            width: p.vision_width,
            heads: p.vision_heads,
            mlp: p.vision_mlp,
        }
    }

    /// Patches per image.
    pub fn patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }
}

#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let qkv = self.qkv.forward(x).chunk(3, -1); // 3 x (B, L, D)
        let (q, k, v) = (
            split_heads(&qkv[0], self.heads),
            split_heads(&qkv[1], self.heads),
            split_heads(&qkv[2], self.heads),
        );
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        self.proj.forward(&merge_heads(&o))
    }
}

#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Block {
    fn new(p: nn::Path, cfg: &VitConfig) -> Block {
        let d = cfg.width;
        let a = &p / "attn";
        Block {
            norm1: layer_norm(&p / "norm1", d, VIT_LN_EPS),
            attn: Attention {
                qkv: normal_linear(&a / "qkv", d, 3 * d),
                proj: normal_linear(&a / "proj", d, d),
                heads: cfg.heads,
            },
            norm2: layer_norm(&p / "norm2", d, VIT_LN_EPS),
            fc1: normal_linear(&p / "mlp" / "fc1", d, cfg.mlp),
            fc2: normal_linear(&p / "mlp" / "fc2", cfg.mlp, d),
        }
    }

    /// Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x)) with exact GELU.
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x));
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + h
    }
}

/// timm `VisionTransformer(num_classes=0, global_pool='token')`.
#[derive(Debug)]
pub struct VisionTransformer {
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    /// The sizes it was built with.
    pub config: VitConfig,
}

impl VisionTransformer {
    /// Builds the tower under `p` with timm's initialisation.
    pub fn new(p: nn::Path, cfg: &VitConfig) -> VisionTransformer {
        let d = cfg.width;
        VisionTransformer {
            patch_embed: patch_conv(&p / "patch_embed" / "proj", 3, d, cfg.patch_size),
            cls_token: p.var("cls_token", &[1, 1, d], nn::Init::Randn { mean: 0.0, stdev: 1e-6 }),
            pos_embed: p.var(
                "pos_embed",
                &[1, cfg.patches() + 1, d],
                nn::Init::Randn { mean: 0.0, stdev: INIT_STD },
            ),
            blocks: (0..cfg.layers).map(|i| Block::new(&p / "blocks" / i, cfg)).collect(),
            norm: layer_norm(&p / "norm", d, VIT_LN_EPS),
            config: cfg.clone(),
        }
    }

    /// (B, 3, S, S) normalised images -> the class token's features (B, width).
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let x = patch_tokens(&self.patch_embed, images); // (B, N, D)
        let b = x.size()[0];
        let cls = self.cls_token.expand([b, -1, -1], false).to_kind(x.kind());
        let mut x = Tensor::cat(&[cls, x], 1) + &self.pos_embed; // (B, 1+N, D)
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.norm.forward(&x).select(1, 0)
    }
}
