//! `sandboxed-experiment` and `unsandboxed-experiment`: one whole experiment with the trainer's prebuilt
//! binaries (a GPU bundle's, scripts/gpu-bundle.sh), for benchmark and GPU machines that have no Rust
//! toolchain. It is the server's own pipeline ([`Runner`]) with [`Trainer::Prebuilt`]: the same `AR_*`
//! environment, data preparation and finishing, evaluation and scoring. What is its own: finding
//! libtorch and the tokenizer without a workspace, the device check, and the summary it prints.
//!
//! - `sandboxed-experiment` runs the phases in the `local` sandbox ([`LocalSandbox`]: own namespaces,
//!   cgroup, Landlock, seccomp; only the job's paths and the GPU's device nodes): the GPU check of the
//!   whole isolation path (scripts/gpu-check.sh). It needs root and cgroups, as `serve` does.
//! - `unsandboxed-experiment` runs them as plain child processes ([`NoSandbox`]). **There is no sandbox
//!   there**: train.rs runs with the invoking user's rights, file system and network. It exists so that
//!   the trainer as built can be measured on machines that lack the sandbox's prerequisites.
//!
//! Both are CLI subcommands only; no MCP tool can reach them.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Device, Profile};
use crate::experiment::{Runner, Trainer};
use crate::fsutil::write_atomic;
use crate::ledger::{PhaseTimes, Reported, RunStatus};
use crate::paths::Paths;
use crate::pyenv::PyEnv;
use crate::sandbox::Sandbox;
use crate::sandbox::local::LocalSandbox;
use crate::sandbox::none::NoSandbox;
use crate::score::Metrics;

/// The libtorch the trainer is built against (tch =0.24.0, see docs/gpu.md).
const TORCH_SERIES: &str = "2.11.";
/// Limit of each embed phase (the full-size model on a slow GPU takes minutes).
const EMBED_TIMEOUT_SECONDS: u64 = 900;

const BANNER: &str = "UNSANDBOXED: train.rs runs as a plain child process with your user's rights, files and network";

/// Where the phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The `local` sandbox backend (`sandboxed-experiment`).
    Local,
    /// Plain child processes (`unsandboxed-experiment`).
    None,
}

/// Arguments of `autoresearch-mcp sandboxed-experiment` and `unsandboxed-experiment`.
#[derive(Debug, Clone, Args)]
pub struct PrebuiltArgs {
    /// Folder holding the trainer's release binaries `train` and `prepare` (trainer/target/release).
    #[arg(long)]
    pub trainer_bin: PathBuf,
    /// ODVG dataset folder (train.jsonl, val.jsonl, images/), e.g. from `autoresearch-mcp synth`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Harness profile: tests, cpu or gpu (the full-size model: ViT-S/16 at 224 px, DistilBERT-size text).
    #[arg(long, default_value = "cpu")]
    pub profile: Profile,
    /// The tokenizer.json `prepare` uses. Default: the text tower's, else the workspace Python
    /// environment's all-MiniLM-L6-v2 tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// `auto` (CUDA when libtorch sees it), `cpu` or `cuda` (an error when there is no CUDA device).
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Training budget in seconds (AR_BUDGET_S); default: the profile's (tests 60, cpu/gpu 300).
    /// train is killed at budget + grace (the configuration's default, 30 s).
    #[arg(long)]
    pub budget: Option<u64>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Pretrained timm ViT (`model.safetensors` or its folder), as AR_IMAGE_TOWER.
    #[arg(long)]
    pub image_tower: Option<PathBuf>,
    /// Pretrained Hugging Face BERT/DistilBERT folder, as AR_TEXT_TOWER (its tokenizer.json is the default tokenizer).
    #[arg(long)]
    pub text_tower: Option<PathBuf>,
    /// torch's `lib/` folder (libtorch 2.11). Default: asked from `$PYTHON`, else the workspace's
    /// Python environment (scripts/python-env.sh), else `python3`.
    #[arg(long)]
    pub torch_lib: Option<PathBuf>,
    /// Working folder: prepared data (`.autoresearch/data/`, cached per dataset, profile and tokenizer)
    /// and one folder per run (`runs/`) with every phase's log, checkpoint and embeddings.
    #[arg(long)]
    pub work: PathBuf,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The result of one experiment with prebuilt binaries.
#[derive(Debug, Clone, Serialize)]
pub struct PrebuiltSummary {
    pub sandboxed: bool,
    pub profile: String,
    pub device_requested: String,
    pub dataset: PathBuf,
    pub train_n: usize,
    pub val_n: usize,
    pub budget_seconds: u64,
    pub seed: u64,
    pub torch_lib: PathBuf,
    pub torch_version: String,
    pub run_dir: PathBuf,
    pub metrics: Metrics,
    /// What `train_summary.json` said (reported by the trainer, not measured here).
    pub reported: Reported,
    /// Seconds each phase took, measured here; `prepare` only when the data was not cached.
    pub phases: PhaseTimes,
}

/// The CLI body: runs the experiment, prints the summary, writes `--json`.
pub async fn main(workspace: &Path, args: PrebuiltArgs, isolation: Isolation) -> Result<ExitCode> {
    if isolation == Isolation::None {
        eprintln!("!! {BANNER}.");
        eprintln!("!! For benchmark machines only; `serve`, `run` and every MCP tool always use the sandbox.");
    }
    let cancel = CancellationToken::new();
    crate::shutdown::cancel_on_signal(&cancel, |_| eprintln!("interrupted: stopping the phase in flight"));
    let summary = run(workspace, &args, isolation, &cancel).await?;
    print!("{}", render(&summary));
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&summary)?.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The backend of `isolation`, checked: a machine that cannot sandbox is told what is missing.
fn sandbox(isolation: Isolation) -> Result<Arc<dyn Sandbox>> {
    Ok(match isolation {
        Isolation::None => Arc::new(NoSandbox { echo: true }),
        Isolation::Local => {
            let local = LocalSandbox::from_current_exe()?;
            local.check().context(
                "the local sandbox cannot run here (it needs root, cgroups and namespaces, as `serve` does); \
                 `unsandboxed-experiment` runs the same experiment without isolation",
            )?;
            Arc::new(local)
        }
    })
}

/// Checks the arguments, then runs prepare (unless cached) → train → embed-images → embed-texts →
/// score through the server's [`Runner`] on the backend of `isolation`.
pub async fn run(
    workspace: &Path,
    args: &PrebuiltArgs,
    isolation: Isolation,
    cancel: &CancellationToken,
) -> Result<PrebuiltSummary> {
    let profile = args.profile;
    let abs =
        |p: &Path| -> Result<PathBuf> { p.canonicalize().with_context(|| format!("{} does not exist", p.display())) };
    let bin = abs(&args.trainer_bin)?;
    for b in ["train", "prepare"].map(|b| bin.join(b)) {
        if !b.is_file() {
            bail!(
                "{} is missing: --trainer-bin must hold the trainer's release binaries `train` and `prepare` \
                 (cd trainer && cargo build --release --bins, or scripts/gpu-bundle.sh)",
                b.display()
            );
        }
    }
    let dataset = abs(&args.dataset)?;
    let image_tower = args.image_tower.as_deref().map(abs).transpose()?;
    let text_tower = args.text_tower.as_deref().map(abs).transpose()?;
    if let Some(t) = &text_tower
        && (!t.join("config.json").is_file() || !t.join("model.safetensors").is_file())
    {
        bail!("--text-tower {} is not a Hugging Face folder with config.json and model.safetensors", t.display());
    }
    let (torch_lib, torch_version) = locate_torch(workspace, args.torch_lib.as_deref())?;
    check_device(args.device)?;
    let tokenizer = abs(&tokenizer(workspace, args.tokenizer.as_deref(), text_tower.as_deref())?)?;
    std::fs::create_dir_all(&args.work).with_context(|| format!("create {}", args.work.display()))?;
    let work = abs(&args.work)?;

    // The server's configuration, with this command's choices; paths are absolute.
    let mut config = Config::default();
    let e = &mut config.experiment;
    (e.profile, e.device, e.seed) = (profile, args.device, args.seed);
    e.budget_seconds = args.budget.unwrap_or_else(|| profile.default_budget_seconds());
    e.embed_timeout_seconds = EMBED_TIMEOUT_SECONDS;
    (config.data.dataset, config.data.tokenizer) = (dataset.clone(), tokenizer);
    config.model.image_tower = image_tower.unwrap_or_default();
    config.model.text_tower = text_tower.unwrap_or_default();
    // No quota: nothing is isolated, and what the jobs write is the user's own business.
    (config.sandbox.disk_quota_gib, config.sandbox.build_disk_quota_gib) = (0, 0);
    let budget = config.budget_seconds();
    let runner = Runner {
        paths: Paths::new(&work),
        config,
        pyenv: PyEnv::with_torch_lib(torch_lib.clone()),
        trainer: Trainer::Prebuilt(bin),
        sandbox: sandbox(isolation)?,
    };
    eprintln!(
        "profile {} | device {} | budget {budget} s | libtorch {torch_version} ({}) | dataset {}",
        profile.as_str(),
        args.device,
        torch_lib.display(),
        dataset.display()
    );

    let (phase, mut phase_rx) = tokio::sync::watch::channel(String::new());
    let progress = tokio::spawn(async move {
        while phase_rx.changed().await.is_ok() {
            eprintln!("== {}", *phase_rx.borrow_and_update());
        }
    });
    let cached = runner.data_ready()?;
    let t = Instant::now();
    let data = runner.ensure_data(cancel, &phase).await;
    let prepare = (!cached).then(|| t.elapsed().as_secs_f64());
    let data = data.context("preparing the data")?;
    if cached {
        eprintln!("prepared data: cached in {}", data[0].dir.display());
    }
    let run_dir = work.join("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S%.3f").to_string());
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    let mut outcome = runner.experiment(&run_dir, &data, &[args.seed], cancel, &phase).await;
    progress.abort();
    outcome.phases.prepare = prepare;
    if outcome.status != RunStatus::Ok {
        bail!(
            "the experiment ended {:?}: {}\nlogs: {}",
            outcome.status,
            outcome.message.as_deref().unwrap_or(""),
            run_dir.display()
        );
    }
    let metrics = outcome.metrics.context("an ok run without metrics")?;
    if outcome.reported.device.as_deref() == Some("cpu")
        && Path::new("/dev/nvidia0").exists()
        && args.device == Device::Auto
    {
        eprintln!(
            "warning: this machine has an NVIDIA device but the trainer ran on the CPU: is the torch in {} a CUDA build?",
            torch_lib.display()
        );
    }
    Ok(PrebuiltSummary {
        sandboxed: isolation == Isolation::Local,
        profile: profile.as_str().into(),
        device_requested: args.device.to_string(),
        dataset,
        train_n: data[0].train_n,
        val_n: data[0].val_n,
        budget_seconds: budget,
        seed: args.seed,
        torch_lib,
        torch_version,
        run_dir,
        metrics,
        reported: outcome.reported,
        phases: outcome.phases,
    })
}

/// The summary as printed: metrics against random, what train reported, the phase times.
pub fn render(s: &PrebuiltSummary) -> String {
    let m = &s.metrics;
    let r = &s.reported;
    let opt = |v: Option<f64>, prec: usize| v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "n/a".into());
    let mem = r.peak_memory_bytes.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64));
    let ph = &s.phases;
    let prep = ph.prepare.map(|p| format!("prepare {p:.1}")).unwrap_or_else(|| "prepare cached".into());
    let secs = |v: Option<f64>| v.unwrap_or(0.0);
    // The whole command: preparing the data and the experiment.
    let total = ph.total + secs(ph.prepare);
    let steps_per_s = r.steps.zip(ph.train).filter(|(_, t)| *t > 0.0).map(|(n, t)| n as f64 / t);
    let mut o = String::new();
    if s.sandboxed {
        o.push_str(&format!(
            "== sandboxed experiment (local backend: {} namespaces, cgroup, Landlock, seccomp)\n",
            crate::sandbox::local::NAMESPACE_NAMES
        ));
    } else {
        o.push_str(&format!("== unsandboxed experiment ({BANNER})\n"));
    }
    o.push_str(&format!(
        "profile {} | device {} (requested {}) | libtorch {} | train {} / val {} | budget {} s | seed {}\n",
        s.profile,
        r.device.as_deref().unwrap_or("unknown"),
        s.device_requested,
        s.torch_version,
        s.train_n,
        s.val_n,
        s.budget_seconds,
        s.seed
    ));
    o.push_str(&format!(
        "mean rank     {:.2}  (random {:.1}; {:.1}% of random)   median {:.1}\n",
        m.mean_rank,
        m.random_mean_rank,
        100.0 * m.mean_rank / m.random_mean_rank.max(1e-9),
        m.median_rank
    ));
    o.push_str(&format!(
        "image->text   mean rank {:.2}  R@1 {:.1}  R@5 {:.1}  R@10 {:.1}\n",
        m.i2t_mean_rank, m.i2t_r1, m.i2t_r5, m.i2t_r10
    ));
    o.push_str(&format!(
        "text->image   mean rank {:.2}  R@1 {:.1}  R@5 {:.1}  R@10 {:.1}\n",
        m.t2i_mean_rank, m.t2i_r1, m.t2i_r5, m.t2i_r10
    ));
    o.push_str(&format!(
        "train (reported by train): {} steps | final loss {} | {} steps/s over the train phase | peak memory {}\n",
        r.steps.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into()),
        opt(r.final_loss, 4),
        opt(steps_per_s, 2),
        mem.unwrap_or_else(|| "n/a".into())
    ));
    o.push_str(&format!(
        "phases (s, measured here): {prep} | train {:.1} | embed-images {:.1} | embed-texts {:.1} | score {:.2} | total {:.1}\n",
        secs(ph.train),
        secs(ph.embed_images),
        secs(ph.embed_texts),
        secs(ph.score),
        total
    ));
    if let (Some(startup), Some(l), Some(exit)) = (ph.train_startup, ph.train_loop, ph.train_exit) {
        o.push_str(&format!(
            "not training (s): {:.1} of {total:.1} | train start-up {startup:.2} (process start {}, data load {}) | after the last step {exit:.2} | loop {l:.1}\n",
            total - l,
            opt(ph.sandbox_start, 2),
            opt(ph.data_load, 2),
        ));
    }
    o.push_str(&format!("logs, checkpoint, embeddings: {}\n", s.run_dir.display()));
    o
}

/// torch's `lib/` and its version, checked: libtorch 2.11 with the CUDA libraries the binaries link.
fn locate_torch(workspace: &Path, explicit: Option<&Path>) -> Result<(PathBuf, String)> {
    let lib = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let python = std::env::var_os("PYTHON").map(PathBuf::from);
            let project_env = workspace.join("scripts/python-env.sh");
            if python.is_none() && project_env.is_file() {
                PyEnv::locate(workspace)?.torch_lib()?
            } else {
                torch_lib_from_python(&python.unwrap_or_else(|| "python3".into()))?
            }
        }
    };
    if !lib.join("libtorch.so").is_file() {
        bail!(
            "{} has no libtorch.so: pass torch's lib/ folder (python3 -c 'import torch,os; print(os.path.dirname(torch.__file__))')/lib",
            lib.display()
        );
    }
    if !lib.join("libtorch_cuda.so").is_file() {
        bail!(
            "{} has no libtorch_cuda.so (a CPU-only torch build?). The trainer binaries link it: install the default \
             PyPI wheel, `pip install torch==2.11.0` (a CUDA build that also runs on CPU)",
            lib.display()
        );
    }
    let version_py = lib.parent().map(|d| d.join("version.py")).unwrap_or_default();
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("__version__ = ").map(|s| s.trim().trim_matches(['\'', '"']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    if !version.starts_with(TORCH_SERIES) {
        bail!(
            "torch {version} at {}: the trainer is built with tch 0.24 against libtorch 2.11 and will not load another \
             version. Install it with `pip install torch==2.11.0` (or point --torch-lib / PYTHON at one that has it)",
            lib.display()
        );
    }
    Ok((lib, version))
}

fn torch_lib_from_python(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run {}: install Python 3 with torch==2.11.0, or set PYTHON=/path/to/python, or pass --torch-lib",
                python.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim();
        bail!(
            "{} cannot import torch ({last}): `{} -m pip install torch==2.11.0`, or set PYTHON / pass --torch-lib",
            python.display(),
            python.display()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib"))
}

fn check_device(device: Device) -> Result<()> {
    if device == Device::Cuda && !Path::new("/dev/nvidia0").exists() && !Path::new("/dev/nvidiactl").exists() {
        bail!(
            "--device cuda, but this machine shows no NVIDIA device (/dev/nvidia0): no GPU or no driver. \
             Use --device cpu (or auto), or run on a GPU machine"
        );
    }
    Ok(())
}

fn tokenizer(workspace: &Path, explicit: Option<&Path>, text_tower: Option<&Path>) -> Result<PathBuf> {
    if let Some(t) = explicit {
        return Ok(t.to_path_buf());
    }
    if let Some(dir) = text_tower {
        let t = dir.join("tokenizer.json");
        if !t.is_file() {
            bail!("the text tower {} has no tokenizer.json; pass --tokenizer", dir.display());
        }
        return Ok(t);
    }
    if workspace.join("scripts/python-env.sh").is_file() {
        return PyEnv::locate(workspace)?.minilm_tokenizer();
    }
    bail!("pass --tokenizer FILE (a tokenizer.json, e.g. all-MiniLM-L6-v2's; scripts/gpu-bundle.sh ships one)")
}
