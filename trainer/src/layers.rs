//! Small building blocks with PyTorch's, timm's and BERT's initialisations, shared by the towers
//! ([`crate::towers`]) and by `train.rs`.

use tch::nn;
use tch::Tensor;

/// Normal init std of tower weights (timm ViT and BERT/DistilBERT `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// `nn.Linear` with PyTorch's default init (uniform +-1/sqrt(fan_in)).
pub fn torch_linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let b = 1.0 / (i as f64).sqrt();
    let u = nn::Init::Uniform { lo: -b, up: b };
    nn::linear(p, i, o, nn::LinearConfig { ws_init: u, bs_init: Some(u), bias: true })
}

/// Linear with the timm/BERT init: normal(0, 0.02) weights, zero bias.
pub fn normal_linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let ws_init = nn::Init::Randn { mean: 0.0, stdev: INIT_STD };
    nn::linear(p, i, o, nn::LinearConfig { ws_init, bs_init: Some(nn::Init::Const(0.0)), bias: true })
}

/// `nn.Conv2d(i, o, k, stride=k)` with PyTorch's default init: a patch embedding.
pub fn patch_conv(p: nn::Path, i: i64, o: i64, k: i64) -> nn::Conv2D {
    let b = 1.0 / ((i * k * k) as f64).sqrt();
    let u = nn::Init::Uniform { lo: -b, up: b };
    nn::conv2d(p, i, o, k, nn::ConvConfig { stride: k, ws_init: u, bs_init: u, ..Default::default() })
}

/// `nn.LayerNorm(d, eps)` (weight 1, bias 0).
pub fn layer_norm(p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps, ..Default::default() })
}

/// (B, L, H*Dh) -> (B, H, L, Dh)
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, l, d) = x.size3().unwrap();
    x.view([b, l, heads, d / heads]).transpose(1, 2)
}

/// (B, H, L, Dh) -> (B, L, H*Dh)
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, l, dh) = x.size4().unwrap();
    x.transpose(1, 2).contiguous().view([b, l, h * dh])
}

/// Patches of a (B, C, S, S) map through a patch convolution, as tokens (B, N, D).
pub fn patch_tokens(conv: &nn::Conv2D, x: &Tensor) -> Tensor {
    use tch::nn::Module;
    conv.forward(x).flatten(2, -1).transpose(1, 2)
}
