//! train.rs — the one file the agent edits.
//!
//! eCLIP (CLIP + expert heatmap attention) on ODVG data: a ViT image tower, a DistilBERT-style text
//! tower, a heatmap processor, a learnable temperature; symmetric CLIP loss plus the expert loss.
//! It starts as the reference's `autoresearch/train.py` *before* optimisation, flaws included, so that
//! the loop can find what the original author found.
//!
//! The fixed harness is the library `eclip_harness` (data, heatmaps, budget, checkpoint, embedding,
//! summary); this file may use only its public API. Phases (AR_PHASE): `train` trains and saves a
//! checkpoint; `embed-images` / `embed-texts` rebuild the model, load the checkpoint and embed through
//! the harness (only encode_image / encode_text, no heatmap at eval, like the reference).

use anyhow::{bail, Result};
use eclip_harness::{checkpoint, embed, summary, Context, Phase, Profile, TrainData};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};

// ---------------------------------------------------------------------------
// Hyperparameters (the reference's baseline, train.py before optimisation)
// ---------------------------------------------------------------------------
const PROJ_DIM: i64 = 128; // shared embedding width (reference final: 512)
const BATCH_SIZE: i64 = 48; // images per contrastive batch (reference final: 64)
const LEARNING_RATE: f64 = 3e-4; // peak LR (reference final: 2e-4)
const WEIGHT_DECAY: f64 = 1e-4; // AdamW, one group: every parameter, log_temperature too
const MAX_STEPS: u64 = 400; // optimiser steps (reference final: 800)
const WARMUP_STEPS: u64 = 40; // linear warmup, then cosine to 0 at MAX_STEPS (10%; reference final: 160)
const GRAD_CLIP: f64 = 1.0; // max global grad norm
const LOG_EVERY: u64 = MAX_STEPS / 10; // progress line every ~10% of the steps

// eCLIP expert settings
const EXPERT_PROB: f64 = 0.3; // probability of an expert batch each step (reference final: 0.8)
const MIXUP_ALPHA: f64 = 0.3; // lam ~ Beta(a, a) mixes image and masked embeddings
const AUX_LOSS_WEIGHT: f64 = 0.1; // weight of the expert loss
const HEATMAP_HEADS: i64 = 4; // heads of the heatmap processor's attention

// Temperature (used as a logit *multiplier*, initialised at 1/0.07 = 14.3)
const INIT_TEMPERATURE: f64 = 0.07;
const MIN_TEMPERATURE: f64 = 0.01; // clamp bounds of the multiplier, as the reference had them:
const MAX_TEMPERATURE: f64 = 2.0; // 14.3 clamped to 2.0 passes no gradient (reference fix: 100)

// Towers (timm vit_small_patch16_224 and distilbert-base-uncased conventions)
const VISION_LN_EPS: f64 = 1e-6; // timm ViT LayerNorm eps
const TEXT_LN_EPS: f64 = 1e-12; // DistilBERT LayerNorm eps
const TEXT_DROPOUT: f64 = 0.1; // DistilBERT dropout and attention dropout (train mode only)
const MAX_POSITIONS: i64 = 512; // DistilBERT position embeddings
const INIT_STD: f64 = 0.02; // normal init of tower weights (timm / BERT)

// What the profile (eclip_harness::Profile, AR_PROFILE) overrides: the image side and patch size,
// ViT depth/width/heads/MLP, text tower depth/width/heads/FFN, and the caption and snippet lengths
// (fixed by `prepare`). tests: 32 px, 2+2 layers of width 64; cpu: 64 px, 4+4 layers of width 128;
// gpu: the reference's 224 px ViT-S/16 + DistilBERT-size text tower, 128/64 tokens.
// The vocabulary size comes from the prepared data (train) or the checkpoint (embed).
// Measured on 2 CPU cores, 400 steps of batch 48 on a 200-image fixture: tests 15.6 s, cpu 157 s;
// gpu on CPU: ~38 s a step (88M parameters), so gpu is for CUDA only.

/// Model sizes: the constants above plus the profile's sizes.
#[derive(Debug, Clone)]
struct Config {
    proj_dim: i64,
    patch_size: i64,
    image_size: i64,
    vision_layers: i64,
    vision_width: i64,
    vision_heads: i64,
    vision_mlp: i64,
    vocab_size: i64,
    text_layers: i64,
    text_width: i64,
    text_heads: i64,
    text_mlp: i64,
}

impl Config {
    fn new(p: &Profile, vocab_size: i64) -> Config {
        Config {
            proj_dim: PROJ_DIM,
            patch_size: p.patch_size,
            image_size: p.image_size,
            vision_layers: p.vision_layers,
            vision_width: p.vision_width,
            vision_heads: p.vision_heads,
            vision_mlp: p.vision_mlp,
            vocab_size,
            text_layers: p.text_layers,
            text_width: p.text_width,
            text_heads: p.text_heads,
            text_mlp: p.text_mlp,
        }
    }
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------
/// nn.Linear with PyTorch's default init (uniform +-1/sqrt(fan_in)).
fn torch_linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let b = 1.0 / (i as f64).sqrt();
    let u = nn::Init::Uniform { lo: -b, up: b };
    nn::linear(p, i, o, nn::LinearConfig { ws_init: u, bs_init: Some(u), bias: true })
}

/// Linear with the timm/BERT init: normal(0, 0.02) weights, zero bias.
fn normal_linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let ws_init = nn::Init::Randn { mean: 0.0, stdev: INIT_STD };
    nn::linear(p, i, o, nn::LinearConfig { ws_init, bs_init: Some(nn::Init::Const(0.0)), bias: true })
}

/// nn.Conv2d(i, o, k, stride k) with PyTorch's default init: a patch embedding.
fn patch_conv(p: nn::Path, i: i64, o: i64, k: i64) -> nn::Conv2D {
    let b = 1.0 / ((i * k * k) as f64).sqrt();
    let u = nn::Init::Uniform { lo: -b, up: b };
    nn::conv2d(p, i, o, k, nn::ConvConfig { stride: k, ws_init: u, bs_init: u, ..Default::default() })
}

fn layer_norm(p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps, ..Default::default() })
}

/// (B, L, H*Dh) -> (B, H, L, Dh)
fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, l, d) = x.size3().unwrap();
    x.view([b, l, heads, d / heads]).transpose(1, 2)
}

/// (B, H, L, Dh) -> (B, L, H*Dh)
fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, l, dh) = x.size4().unwrap();
    x.transpose(1, 2).contiguous().view([b, l, h * dh])
}

// ---------------------------------------------------------------------------
// Image tower: ViT (timm VisionTransformer names under image_encoder.backbone)
// ---------------------------------------------------------------------------
#[derive(Debug)]
struct VitAttention {
    qkv: nn::Linear,
    proj: nn::Linear,
    heads: i64,
}

impl VitAttention {
    fn new(p: nn::Path, d: i64, heads: i64) -> Self {
        Self { qkv: normal_linear(&p / "qkv", d, 3 * d), proj: normal_linear(&p / "proj", d, d), heads }
    }

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
struct VitBlock {
    norm1: nn::LayerNorm,
    attn: VitAttention,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl VitBlock {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let d = cfg.vision_width;
        Self {
            norm1: layer_norm(&p / "norm1", d, VISION_LN_EPS),
            attn: VitAttention::new(&p / "attn", d, cfg.vision_heads),
            norm2: layer_norm(&p / "norm2", d, VISION_LN_EPS),
            fc1: normal_linear(&p / "mlp" / "fc1", d, cfg.vision_mlp),
            fc2: normal_linear(&p / "mlp" / "fc2", cfg.vision_mlp, d),
        }
    }

    /// Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x)).
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x));
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        x + h
    }
}

#[derive(Debug)]
struct VisionTransformer {
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<VitBlock>,
    norm: nn::LayerNorm,
}

impl VisionTransformer {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let d = cfg.vision_width;
        let n = (cfg.image_size / cfg.patch_size).pow(2);
        Self {
            patch_embed: patch_conv(&p / "patch_embed" / "proj", 3, d, cfg.patch_size),
            cls_token: p.var("cls_token", &[1, 1, d], nn::Init::Randn { mean: 0.0, stdev: 1e-6 }),
            pos_embed: p.var("pos_embed", &[1, n + 1, d], nn::Init::Randn { mean: 0.0, stdev: INIT_STD }),
            blocks: (0..cfg.vision_layers).map(|i| VitBlock::new(&p / "blocks" / i, cfg)).collect(),
            norm: layer_norm(&p / "norm", d, VISION_LN_EPS),
        }
    }

    /// (B, 3, S, S) -> pooled CLS (B, D)
    fn forward(&self, images: &Tensor) -> Tensor {
        let x = self.patch_embed.forward(images).flatten(2, -1).transpose(1, 2); // (B, N, D)
        let b = x.size()[0];
        let cls = self.cls_token.expand([b, -1, -1], false);
        let mut x = Tensor::cat(&[cls, x], 1) + &self.pos_embed; // (B, 1+N, D)
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.norm.forward(&x).select(1, 0)
    }
}

#[derive(Debug)]
struct ImageEncoder {
    backbone: VisionTransformer,
    projector: nn::Linear,
}

impl ImageEncoder {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        Self {
            backbone: VisionTransformer::new(&p / "backbone", cfg),
            projector: torch_linear(&p / "projector", cfg.vision_width, cfg.proj_dim),
        }
    }

    fn forward(&self, images: &Tensor) -> Tensor {
        self.projector.forward(&self.backbone.forward(images)) // (B, PROJ_DIM)
    }
}

// ---------------------------------------------------------------------------
// Text tower: DistilBERT (HF DistilBertModel names under text_encoder.backbone)
// ---------------------------------------------------------------------------
#[derive(Debug)]
struct TextAttention {
    q_lin: nn::Linear,
    k_lin: nn::Linear,
    v_lin: nn::Linear,
    out_lin: nn::Linear,
    heads: i64,
}

impl TextAttention {
    fn new(p: nn::Path, d: i64, heads: i64) -> Self {
        Self {
            q_lin: normal_linear(&p / "q_lin", d, d),
            k_lin: normal_linear(&p / "k_lin", d, d),
            v_lin: normal_linear(&p / "v_lin", d, d),
            out_lin: normal_linear(&p / "out_lin", d, d),
            heads,
        }
    }

    /// `keep`: (B, 1, 1, L) bool, true for real tokens.
    fn forward_t(&self, x: &Tensor, keep: &Tensor, train: bool) -> Tensor {
        let q = split_heads(&self.q_lin.forward(x), self.heads);
        let k = split_heads(&self.k_lin.forward(x), self.heads);
        let v = split_heads(&self.v_lin.forward(x), self.heads);
        let p = if train { TEXT_DROPOUT } else { 0.0 };
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(keep), p, false, None, false);
        self.out_lin.forward(&merge_heads(&o))
    }
}

#[derive(Debug)]
struct TextLayer {
    attention: TextAttention,
    sa_layer_norm: nn::LayerNorm,
    lin1: nn::Linear,
    lin2: nn::Linear,
    output_layer_norm: nn::LayerNorm,
}

impl TextLayer {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let d = cfg.text_width;
        Self {
            attention: TextAttention::new(&p / "attention", d, cfg.text_heads),
            sa_layer_norm: layer_norm(&p / "sa_layer_norm", d, TEXT_LN_EPS),
            lin1: normal_linear(&p / "ffn" / "lin1", d, cfg.text_mlp),
            lin2: normal_linear(&p / "ffn" / "lin2", cfg.text_mlp, d),
            output_layer_norm: layer_norm(&p / "output_layer_norm", d, TEXT_LN_EPS),
        }
    }

    /// Post-norm: norm(x + attn(x)), then norm(h + ffn(h)).
    fn forward_t(&self, x: &Tensor, keep: &Tensor, train: bool) -> Tensor {
        let h = self.sa_layer_norm.forward(&(self.attention.forward_t(x, keep, train) + x));
        let f = self.lin2.forward(&self.lin1.forward(&h).gelu("none")).dropout(TEXT_DROPOUT, train);
        self.output_layer_norm.forward(&(f + h))
    }
}

#[derive(Debug)]
struct DistilBert {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
    layers: Vec<TextLayer>,
}

impl DistilBert {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let d = cfg.text_width;
        let e = &p / "embeddings";
        let init = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: INIT_STD },
            ..Default::default()
        };
        Self {
            word_embeddings: nn::embedding(&e / "word_embeddings", cfg.vocab_size, d, init),
            position_embeddings: nn::embedding(&e / "position_embeddings", MAX_POSITIONS, d, init),
            layer_norm: layer_norm(&e / "LayerNorm", d, TEXT_LN_EPS),
            layers: (0..cfg.text_layers)
                .map(|i| TextLayer::new(&p / "transformer" / "layer" / i, cfg))
                .collect(),
        }
    }

    /// ids, mask (B, L) -> last hidden state (B, L, D)
    fn forward_t(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let l = ids.size()[1];
        let pos = Tensor::arange(l, (Kind::Int64, ids.device())).unsqueeze(0); // (1, L)
        let x = self.word_embeddings.forward(ids) + self.position_embeddings.forward(&pos);
        let mut x = self.layer_norm.forward(&x).dropout(TEXT_DROPOUT, train);
        let keep = mask.ne(0).unsqueeze(1).unsqueeze(1); // (B, 1, 1, L)
        for layer in &self.layers {
            x = layer.forward_t(&x, &keep, train);
        }
        x
    }
}

#[derive(Debug)]
struct TextEncoder {
    backbone: DistilBert,
    projector: nn::Linear,
}

impl TextEncoder {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        Self {
            backbone: DistilBert::new(&p / "backbone", cfg),
            projector: torch_linear(&p / "projector", cfg.text_width, cfg.proj_dim),
        }
    }

    /// CLS of the last hidden state -> (B, PROJ_DIM)
    fn forward_t(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let cls = self.backbone.forward_t(ids, mask, train).select(1, 0);
        self.projector.forward(&cls)
    }
}

// ---------------------------------------------------------------------------
// HeatmapProcessor: heatmap patches attend to image patches (separate from the ViT)
// ---------------------------------------------------------------------------
#[derive(Debug)]
struct HeatmapProcessor {
    in_proj_weight: Tensor, // nn.MultiheadAttention(PROJ_DIM, 4, batch_first=True)
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    patch_embed: nn::Conv2D,
    heatmap_embed: nn::Conv2D,
    norm: nn::LayerNorm,
    heads: i64,
}

impl HeatmapProcessor {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        let d = cfg.proj_dim;
        let a = &p / "attention";
        let xavier = (6.0 / (d + 3 * d) as f64).sqrt();
        let out_proj = nn::linear(
            &a / "out_proj",
            d,
            d,
            nn::LinearConfig {
                ws_init: nn::Init::Uniform { lo: -1.0 / (d as f64).sqrt(), up: 1.0 / (d as f64).sqrt() },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Self {
            in_proj_weight: a.var(
                "in_proj_weight",
                &[3 * d, d],
                nn::Init::Uniform { lo: -xavier, up: xavier },
            ),
            in_proj_bias: a.zeros("in_proj_bias", &[3 * d]),
            out_proj,
            patch_embed: patch_conv(&p / "patch_embed", 3, d, cfg.patch_size),
            heatmap_embed: patch_conv(&p / "heatmap_embed", 1, d, cfg.patch_size),
            norm: layer_norm(&p / "norm", d, 1e-5),
            heads: HEATMAP_HEADS,
        }
    }

    /// images (B, 3, S, S), heatmaps (B, 1, S, S) -> (B, PROJ_DIM)
    fn forward(&self, images: &Tensor, heatmaps: &Tensor) -> Tensor {
        let img = self.patch_embed.forward(images).flatten(2, -1).transpose(1, 2); // (B, N, D)
        let heat = self.heatmap_embed.forward(heatmaps).flatten(2, -1).transpose(1, 2); // (B, N, D)
        let w = self.in_proj_weight.chunk(3, 0);
        let b = self.in_proj_bias.chunk(3, 0);
        // query = norm(heat), key = norm(img), value = img
        let q = self.norm.forward(&heat).linear(&w[0], Some(&b[0]));
        let k = self.norm.forward(&img).linear(&w[1], Some(&b[1]));
        let v = img.linear(&w[2], Some(&b[2]));
        let (q, k, v) =
            (split_heads(&q, self.heads), split_heads(&k, self.heads), split_heads(&v, self.heads));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        self.out_proj.forward(&merge_heads(&o)).mean_dim(1, false, Kind::Float) // global average pool
    }
}

// ---------------------------------------------------------------------------
// eCLIP model
// ---------------------------------------------------------------------------
#[derive(Debug)]
struct Eclip {
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    heatmap_processor: HeatmapProcessor,
    log_temperature: Tensor,
}

impl Eclip {
    fn new(p: &nn::Path, cfg: &Config) -> Self {
        Self {
            image_encoder: ImageEncoder::new(p / "image_encoder", cfg),
            text_encoder: TextEncoder::new(p / "text_encoder", cfg),
            heatmap_processor: HeatmapProcessor::new(p / "heatmap_processor", cfg),
            log_temperature: p.var("log_temperature", &[], nn::Init::Const((1.0 / INIT_TEMPERATURE).ln())),
        }
    }

    /// The logit multiplier: clamp(exp(log_temperature), MIN, MAX).
    fn temperature(&self) -> Tensor {
        self.log_temperature.exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)
    }

    fn encode_image(&self, images: &Tensor) -> Tensor {
        self.image_encoder.forward(images)
    }

    fn encode_text(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.text_encoder.forward_t(ids, mask, train)
    }

    fn encode_masked_image(&self, images: &Tensor, heatmaps: &Tensor) -> Tensor {
        self.heatmap_processor.forward(images, heatmaps)
    }
}

/// L2-normalise the rows.
fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12)
}

// ---------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------
/// Symmetric CLIP loss: (CE(i2t) + CE(t2i)) / 2 over logits = img @ txt.T * scale.
fn contrastive_loss(img: &Tensor, txt: &Tensor, scale: &Tensor) -> Tensor {
    let logits = img.matmul(&txt.tr()) * scale; // (B, B)
    let labels = Tensor::arange(logits.size()[0], (Kind::Int64, logits.device()));
    (logits.cross_entropy_for_logits(&labels) + logits.tr().cross_entropy_for_logits(&labels)) / 2.0
}

/// lam ~ Beta(a, a) from two Gamma(a) draws of libtorch's seeded CPU generator.
fn sample_beta(a: f64) -> f64 {
    let g = Tensor::from_slice(&[a, a]).internal_standard_gamma();
    let (x, y) = (g.double_value(&[0]), g.double_value(&[1]));
    if x + y > 0.0 {
        x / (x + y)
    } else {
        0.5 // both draws underflowed
    }
}

/// Expert loss: mixed = normalize(lam*img + (1-lam)*masked); (CE(mixed, snippet) + CE(masked, txt)) / 2.
fn expert_loss(img: &Tensor, masked: &Tensor, txt: &Tensor, snippet: &Tensor, scale: &Tensor) -> Tensor {
    let lam = if MIXUP_ALPHA > 0.0 { sample_beta(MIXUP_ALPHA) } else { 0.5 };
    let mixed = normalize(&(img * lam + masked * (1.0 - lam)));
    let loss_mixed = contrastive_loss(&mixed, snippet, scale);
    let loss_masked = contrastive_loss(masked, txt, scale);
    (loss_mixed + loss_masked) / 2.0
}

/// LambdaLR: linear warmup, then cosine to 0 at MAX_STEPS.
fn lr_lambda(step: u64) -> f64 {
    if step < WARMUP_STEPS {
        return step as f64 / WARMUP_STEPS.max(1) as f64;
    }
    let progress = (step - WARMUP_STEPS) as f64 / (MAX_STEPS - WARMUP_STEPS).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

// ---------------------------------------------------------------------------
// Training loop
// ---------------------------------------------------------------------------
fn train(ctx: &Context) -> Result<()> {
    let data = TrainData::load(&ctx.data, ctx.device)?;
    let cfg = Config::new(&ctx.profile, data.vocab_size);
    let vs = nn::VarStore::new(ctx.device);
    let model = Eclip::new(&vs.root(), &cfg);
    let n_params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    println!(
        "device {} | profile {} | {} images | {:.2}M params | proj {PROJ_DIM} bs {BATCH_SIZE} lr {LEARNING_RATE} steps {MAX_STEPS} | budget {:.0}s",
        ctx.device_name(),
        ctx.profile.name,
        data.len(),
        n_params as f64 / 1e6,
        ctx.budget.as_secs_f64()
    );
    let mut opt = nn::AdamW { wd: WEIGHT_DECAY, ..Default::default() }.build(&vs, LEARNING_RATE)?;
    let mut sampler = data.sampler(BATCH_SIZE);
    let mut expert_sampler = data.expert_sampler(BATCH_SIZE);
    let started = std::time::Instant::now();
    let (mut steps, mut final_loss) = (0u64, f64::NAN);

    for step in 1..=MAX_STEPS {
        if ctx.time_is_up() {
            println!("budget spent: stopping after {steps} steps");
            break;
        }
        // LambdaLR semantics: the optimiser step of loop step s uses lr_lambda(s - 1).
        opt.set_lr(LEARNING_RATE * lr_lambda(step - 1));

        let batch = data.batch(&sampler.next_rows());
        let img = normalize(&model.encode_image(&batch.images)); // (B, D)
        let txt = normalize(&model.encode_text(&batch.caption_ids, &batch.caption_mask, true)); // (B, D)
        let scale = model.temperature();
        let mut loss = contrastive_loss(&img, &txt, &scale);

        // Expert batch (probabilistic)
        if Tensor::rand([1], (Kind::Double, tch::Device::Cpu)).double_value(&[0]) < EXPERT_PROB {
            let eb = data.expert_batch(&expert_sampler.next_rows());
            let e_img = normalize(&model.encode_image(&eb.images));
            let e_txt = normalize(&model.encode_text(&eb.caption_ids, &eb.caption_mask, true));
            let e_masked = normalize(&model.encode_masked_image(&eb.images, &eb.heatmaps));
            let e_snippet = normalize(&model.encode_text(&eb.snippet_ids, &eb.snippet_mask, true));
            loss += expert_loss(&e_img, &e_masked, &e_txt, &e_snippet, &scale) * AUX_LOSS_WEIGHT;
        }

        let l = loss.double_value(&[]);
        if !l.is_finite() {
            bail!("loss is {l} at step {step}: stopping"); // fail fast, before the weights are touched
        }
        opt.zero_grad();
        loss.backward();
        opt.clip_grad_norm(GRAD_CLIP);
        opt.step();
        (steps, final_loss) = (step, l);
        if step == 1 || step % LOG_EVERY.max(1) == 0 || step == MAX_STEPS {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "step {step:>5}/{MAX_STEPS} | loss {l:.4} | scale {:.4} | lr {:.2e} | {:.2} steps/s | {secs:.1}s",
                scale.double_value(&[]),
                LEARNING_RATE * lr_lambda(step - 1),
                step as f64 / secs.max(1e-9),
            );
        }
    }

    checkpoint::save(ctx, &vs, cfg.vocab_size)?;
    let s = summary::write(ctx, steps, final_loss)?;
    println!("done: {} steps, final loss {:.4}, {:.1}s", s.steps, s.final_loss, s.train_seconds);
    Ok(())
}

// ---------------------------------------------------------------------------
// Embedding phases (the harness fixes batches and order; no heatmap at eval)
// ---------------------------------------------------------------------------
fn load_model(ctx: &Context) -> Result<(nn::VarStore, Eclip)> {
    let cfg = Config::new(&ctx.profile, ctx.vocab_size()?);
    let mut vs = nn::VarStore::new(ctx.device);
    let model = Eclip::new(&vs.root(), &cfg);
    checkpoint::load(ctx, &mut vs)?;
    Ok((vs, model))
}

fn main() -> Result<()> {
    let ctx = Context::from_env()?;
    match ctx.phase {
        Phase::Train => train(&ctx),
        Phase::EmbedImages => {
            let (_vs, model) = load_model(&ctx)?;
            embed::images(&ctx, |images| model.encode_image(images))
        }
        Phase::EmbedTexts => {
            let (_vs, model) = load_model(&ctx)?;
            embed::texts(&ctx, |ids, mask| model.encode_text(ids, mask, false))
        }
    }
}
