//! The environment of one phase of `train` (`AR_*`, see CONTRACT.md) as a [`Context`].
//!
//! The server sets these variables in an otherwise empty environment. Building the context also seeds
//! libtorch (CPU and CUDA generators), so every random draw of a phase follows `AR_SEED`.

use crate::profile::Profile;
use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::Device;

/// Which phase of `train` this process runs (`AR_PHASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Train on the prepared split `AR_DATA`; write a checkpoint and a summary.
    Train,
    /// Embed the images of `AR_DATA` with the checkpoint `AR_CHECKPOINT`.
    EmbedImages,
    /// Embed the captions of `AR_DATA` with the checkpoint `AR_CHECKPOINT`.
    EmbedTexts,
    /// One training step's loss and gradients on the fixed batch `AR_DATA` from the weights
    /// `AR_CHECKPOINT`, dropout off (the parity check against the PyTorch reference; see
    /// [`crate::step_check`]).
    StepCheck,
}

impl Phase {
    fn parse(s: &str) -> Result<Phase> {
        match s {
            "train" => Ok(Phase::Train),
            "embed-images" => Ok(Phase::EmbedImages),
            "embed-texts" => Ok(Phase::EmbedTexts),
            "step-check" => Ok(Phase::StepCheck),
            other => {
                bail!("unknown AR_PHASE {other:?} (expected train, embed-images, embed-texts or step-check)")
            }
        }
    }
}

/// Budget used when `AR_BUDGET_S` is unset (autoresearch's 300 s).
pub const DEFAULT_BUDGET_S: f64 = 300.0;
/// Seed used when `AR_SEED` is unset (the reference's `SEED = 42`).
pub const DEFAULT_SEED: u64 = 42;

/// Everything a phase knows about its run.
#[derive(Debug, Clone)]
pub struct Context {
    /// The phase to run.
    pub phase: Phase,
    /// The profile's sizes.
    pub profile: Profile,
    /// The one data file of this phase.
    pub data: PathBuf,
    /// The only writable directory.
    pub out: PathBuf,
    /// The train phase's checkpoint (embed phases only).
    pub checkpoint: Option<PathBuf>,
    /// The wall-clock training budget.
    pub budget: Duration,
    /// When the context was built (the phase's start).
    pub start: Instant,
    /// `start + budget`.
    pub deadline: Instant,
    /// The seed (already applied to libtorch).
    pub seed: u64,
    /// Where tensors live: CUDA if asked for or (`auto`) available, else CPU.
    pub device: Device,
    /// Pretrained image tower (`AR_IMAGE_TOWER`): a timm ViT `model.safetensors` or its folder.
    pub image_tower: Option<PathBuf>,
    /// Pretrained text tower (`AR_TEXT_TOWER`): a Hugging Face BERT/DistilBERT folder.
    pub text_tower: Option<PathBuf>,
}

fn var(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {name}")),
    }
}

fn required(name: &str) -> Result<String> {
    var(name)?.with_context(|| format!("{name} is not set (see trainer/CONTRACT.md)"))
}

/// Resolves `AR_DEVICE` (`auto`, `cpu`, `cuda`).
pub fn device_from_str(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("AR_DEVICE=cuda but libtorch sees no CUDA device");
            }
            Ok(Device::Cuda(0))
        }
        other => bail!("unknown AR_DEVICE {other:?} (expected auto, cpu or cuda)"),
    }
}

impl Context {
    /// Reads the `AR_*` environment, creates `AR_OUT` if needed and seeds libtorch.
    pub fn from_env() -> Result<Context> {
        let phase = Phase::parse(&required("AR_PHASE")?)?;
        let profile = Profile::by_name(&required("AR_PROFILE")?)?;
        let data = PathBuf::from(required("AR_DATA")?);
        let out = PathBuf::from(required("AR_OUT")?);
        let checkpoint = var("AR_CHECKPOINT")?.map(PathBuf::from);
        if phase != Phase::Train && checkpoint.is_none() {
            bail!("AR_CHECKPOINT is not set (the embed and step-check phases need a checkpoint)");
        }
        let budget_s = match var("AR_BUDGET_S")? {
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && *b >= 0.0)
                .with_context(|| format!("AR_BUDGET_S {s:?} is not a number of seconds"))?,
            None => DEFAULT_BUDGET_S,
        };
        let seed = match var("AR_SEED")? {
            Some(s) => s.parse::<u64>().with_context(|| format!("AR_SEED {s:?} is not an integer"))?,
            None => DEFAULT_SEED,
        };
        let device = device_from_str(var("AR_DEVICE")?.as_deref().unwrap_or("auto"))?;
        let image_tower = var("AR_IMAGE_TOWER")?.map(PathBuf::from);
        let text_tower = var("AR_TEXT_TOWER")?.map(PathBuf::from);
        for (name, p) in [("AR_IMAGE_TOWER", &image_tower), ("AR_TEXT_TOWER", &text_tower)] {
            if let Some(p) = p {
                if !p.exists() {
                    bail!("{name} {} does not exist", p.display());
                }
            }
        }
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        crate::timeline::start();
        let start = Instant::now();
        let budget = Duration::from_secs_f64(budget_s);
        let ctx = Context {
            phase,
            profile,
            data,
            out,
            checkpoint,
            budget,
            start,
            deadline: start + budget,
            seed,
            device,
            image_tower,
            text_tower,
        };
        ctx.seed_all();
        if ctx.device.is_cuda() {
            crate::cuda_memory::start();
        }
        Ok(ctx)
    }

    /// Seeds libtorch's generators (CPU and every CUDA device) with [`Context::seed`].
    pub fn seed_all(&self) {
        // The seed is reinterpreted bit for bit: any u64 is a valid seed.
        tch::manual_seed(self.seed as i64);
        if tch::Cuda::is_available() {
            tch::Cuda::manual_seed_all(self.seed);
        }
    }

    /// Time until the budget is spent (zero once it is).
    pub fn time_left(&self) -> Duration {
        crate::timeline::first_step();
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            crate::timeline::budget_spent();
        }
        left
    }

    /// Whether the budget is spent.
    pub fn time_is_up(&self) -> bool {
        crate::timeline::first_step();
        let up = Instant::now() >= self.deadline;
        if up {
            crate::timeline::budget_spent();
        }
        up
    }

    /// Seconds since the phase started.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The vocabulary size recorded by `prepare` (train) or by the checkpoint (other phases):
    /// the text tower is built from it without the tokenizer, which is not mounted.
    pub fn vocab_size(&self) -> Result<i64> {
        let (file, key) = match self.phase {
            Phase::Train => (&self.data, crate::vocab::SPLIT_KEY),
            _ => (self.checkpoint.as_ref().expect("checked in from_env"), crate::vocab::CHECKPOINT_KEY),
        };
        crate::safetensors_header::read_i64_scalar(file, key)
            .with_context(|| format!("reading the vocabulary size from {}", file.display()))
    }

    /// `"cpu"` or `"cuda"`, for logs and the summary.
    pub fn device_name(&self) -> &'static str {
        match self.device {
            Device::Cuda(_) => "cuda",
            _ => "cpu",
        }
    }
}
