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
use eclip_harness::layers::{layer_norm, merge_heads, patch_conv, patch_tokens, split_heads, torch_linear};
use eclip_harness::optim::FlatAdamW;
use eclip_harness::towers::{self, Pretrained, TextConfig, TextTower, VisionTransformer, VitConfig};
use eclip_harness::{
    checkpoint, embed, precision, step_check, summary, Batch, Context, ExpertBatch, Phase, TrainData,
};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

// ---------------------------------------------------------------------------
// Hyperparameters (the reference's baseline, train.py before optimisation)
// ---------------------------------------------------------------------------
const PROJ_DIM: i64 = 128; // shared embedding width
const BATCH_SIZE: i64 = 48; // images per contrastive batch
const LEARNING_RATE: f64 = 3e-4; // peak LR
const WEIGHT_DECAY: f64 = 1e-4; // AdamW, one group: every parameter, log_temperature too
const MAX_STEPS: u64 = 400; // optimiser steps
const WARMUP_STEPS: u64 = 40; // linear warmup, then cosine to 0 at MAX_STEPS
const GRAD_CLIP: f64 = 1.0; // max global grad norm
const BF16_AUTOCAST: bool = true; // CUDA only: matmuls in bf16, weights fp32 (the reference trained in fp32)
const LOG_EVERY: u64 = MAX_STEPS / 10; // progress line every ~10% of the steps

// eCLIP expert settings
const EXPERT_PROB: f64 = 0.3; // probability of an expert batch each step
const MIXUP_ALPHA: f64 = 0.3; // lam ~ Beta(a, a) mixes image and masked embeddings
const AUX_LOSS_WEIGHT: f64 = 0.1; // weight of the expert loss
const HEATMAP_HEADS: i64 = 4; // heads of the heatmap processor's attention

// Temperature (used as a logit *multiplier*, initialised at 1/0.07 = 14.3)
const INIT_TEMPERATURE: f64 = 0.07;
const MIN_TEMPERATURE: f64 = 0.01; // lower clamp bound of the multiplier
const MAX_TEMPERATURE: f64 = 2.0; // upper clamp bound of the multiplier

// WiSE-FT after training: pretrained towers become alpha*pretrained + (1-alpha)*finetuned;
// randomly initialised towers are left alone whatever the value.
const WISE_FT_ALPHA: f64 = 0.0; // alpha (0 = off)

// The towers are library code, as timm and transformers are for the reference: eclip_harness::towers.
// Their sizes come from the pretrained weights when the run has them (AR_IMAGE_TOWER: a timm ViT;
// AR_TEXT_TOWER: a Hugging Face BERT/DistilBERT folder), else from the profile (eclip_harness::Profile):
// tests: 32 px, 2+2 layers of width 64; cpu: 64 px, 4+4 layers of width 128; gpu: the reference's
// 224 px ViT-S/16 + a DistilBERT-size text tower, 128/64 tokens. The vocabulary size comes from the
// prepared data (train) or the checkpoint (other phases).
// Measured on 2 CPU cores, 400 steps of batch 48 on a 200-image fixture: tests 15.6 s, cpu 157 s;
// gpu on CPU: ~38 s a step (88M parameters), so gpu is for CUDA only.

/// Model sizes: the constants above plus the towers' sizes.
#[derive(Debug, Clone)]
struct Config {
    proj_dim: i64,
    patch_size: i64, // of the heatmap processor's convolutions
    vision: VitConfig,
    text: TextConfig,
}

impl Config {
    fn new(ctx: &Context, vocab_size: i64) -> Result<Config> {
        Ok(Config {
            proj_dim: PROJ_DIM,
            patch_size: ctx.profile.patch_size,
            vision: towers::vision_config(ctx)?,
            text: towers::text_config(ctx, vocab_size)?,
        })
    }
}

// ---------------------------------------------------------------------------
// Encoders: a tower and a linear projection to PROJ_DIM
// ---------------------------------------------------------------------------
#[derive(Debug)]
struct ImageEncoder {
    backbone: VisionTransformer, // timm names under image_encoder.backbone
    projector: nn::Linear,
}

impl ImageEncoder {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        Self {
            backbone: VisionTransformer::new(&p / "backbone", &cfg.vision),
            projector: torch_linear(&p / "projector", cfg.vision.width, cfg.proj_dim),
        }
    }

    fn forward(&self, images: &Tensor) -> Tensor {
        self.projector.forward(&self.backbone.forward(images)) // pooled CLS -> (B, PROJ_DIM)
    }
}

#[derive(Debug)]
struct TextEncoder {
    backbone: TextTower, // Hugging Face names under text_encoder.backbone
    projector: nn::Linear,
}

impl TextEncoder {
    fn new(p: nn::Path, cfg: &Config) -> Self {
        Self {
            backbone: TextTower::new(&p / "backbone", &cfg.text),
            projector: torch_linear(&p / "projector", cfg.text.width, cfg.proj_dim),
        }
    }

    /// CLS of the last hidden state -> (B, PROJ_DIM)
    fn forward_t(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        self.projector.forward(&self.backbone.cls_t(ids, mask, train))
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
        let img = patch_tokens(&self.patch_embed, images); // (B, N, D)
        let heat = patch_tokens(&self.heatmap_embed, heatmaps); // (B, N, D)
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
fn expert_loss(
    img: &Tensor,
    masked: &Tensor,
    txt: &Tensor,
    snippet: &Tensor,
    scale: &Tensor,
    lam: f64,
) -> Tensor {
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

/// The loss of one step: CLIP loss on `batch`, plus the weighted expert loss when the step has an expert
/// batch (drawn with probability EXPERT_PROB) with its mixing weight `lam`. Dropout only when `train`.
fn step_loss(model: &Eclip, batch: &Batch, expert: Option<(&ExpertBatch, f64)>, train: bool) -> Tensor {
    let img = normalize(&model.encode_image(&batch.images)); // (B, D)
    let txt = normalize(&model.encode_text(&batch.caption_ids, &batch.caption_mask, train)); // (B, D)
    let scale = model.temperature();
    let mut loss = contrastive_loss(&img, &txt, &scale);
    if let Some((eb, lam)) = expert {
        let e_img = normalize(&model.encode_image(&eb.images));
        let e_txt = normalize(&model.encode_text(&eb.caption_ids, &eb.caption_mask, train));
        let e_masked = normalize(&model.encode_masked_image(&eb.images, &eb.heatmaps));
        let e_snippet = normalize(&model.encode_text(&eb.snippet_ids, &eb.snippet_mask, train));
        loss += expert_loss(&e_img, &e_masked, &e_txt, &e_snippet, &scale, lam) * AUX_LOSS_WEIGHT;
    }
    loss
}

// ---------------------------------------------------------------------------
// Training loop
// ---------------------------------------------------------------------------
fn train(ctx: &Context) -> Result<()> {
    let data = TrainData::load(&ctx.data, ctx.device)?;
    let cfg = Config::new(ctx, data.vocab_size)?;
    let vs = nn::VarStore::new(ctx.device);
    let model = Eclip::new(&vs.root(), &cfg);
    let pretrained = Pretrained::load(ctx, &vs, "image_encoder.backbone.", "text_encoder.backbone.")?;
    let n_params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    println!(
        "device {} | profile {} | {} images | {:.2}M params | proj {PROJ_DIM} bs {BATCH_SIZE} lr {LEARNING_RATE} steps {MAX_STEPS} | budget {:.0}s",
        ctx.device_name(),
        ctx.profile.name,
        data.len(),
        n_params as f64 / 1e6,
        ctx.budget.as_secs_f64()
    );
    // AdamW over one flat buffer of all trainable variables: a few kernels a step (eclip_harness::optim).
    let mut opt = FlatAdamW::new(&vs, LEARNING_RATE, WEIGHT_DECAY)?;
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
        // Expert batch (probabilistic), with lam ~ Beta(MIXUP_ALPHA, MIXUP_ALPHA)
        let expert = (Tensor::rand([1], (Kind::Double, tch::Device::Cpu)).double_value(&[0]) < EXPERT_PROB)
            .then(|| {
                let lam = if MIXUP_ALPHA > 0.0 { sample_beta(MIXUP_ALPHA) } else { 0.5 };
                (data.expert_batch(&expert_sampler.next_rows()), lam)
            });
        let loss = precision::autocast_bf16(ctx.device, BF16_AUTOCAST, || {
            step_loss(&model, &batch, expert.as_ref().map(|(eb, lam)| (eb, *lam)), true)
        });

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
                model.temperature().double_value(&[]),
                LEARNING_RATE * lr_lambda(step - 1),
                step as f64 / secs.max(1e-9),
            );
        }
    }

    pretrained.wise_ft(&vs, WISE_FT_ALPHA)?;
    checkpoint::save(ctx, &vs, cfg.text.vocab_size)?;
    let s = summary::write(ctx, steps, final_loss)?;
    println!(
        "done: {} steps, final loss {:.4}, {:.1}s, {:.2} steps/s, peak memory {}",
        s.steps,
        s.final_loss,
        s.train_seconds,
        s.steps_per_second,
        s.peak_memory_bytes
            .map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or("n/a".into())
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Other phases: embedding (the harness fixes batches and order; no heatmap at eval) and the step check
// ---------------------------------------------------------------------------
fn load_model(ctx: &Context) -> Result<(nn::VarStore, Eclip)> {
    let cfg = Config::new(ctx, ctx.vocab_size()?)?;
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
            embed::images(&ctx, |images| {
                precision::autocast_bf16(ctx.device, BF16_AUTOCAST, || model.encode_image(images))
            })
        }
        Phase::EmbedTexts => {
            let (_vs, model) = load_model(&ctx)?;
            embed::texts(&ctx, |ids, mask| {
                precision::autocast_bf16(ctx.device, BF16_AUTOCAST, || model.encode_text(ids, mask, false))
            })
        }
        Phase::StepCheck => {
            let (vs, model) = load_model(&ctx)?;
            let input = step_check::load(&ctx)?;
            let loss =
                step_loss(&model, &input.batch, input.expert.as_ref().map(|(eb, lam)| (eb, *lam)), false);
            step_check::write(&ctx, &loss, &vs)
        }
    }
}
