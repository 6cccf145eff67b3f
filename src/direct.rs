//! `unsandboxed-experiment`: one whole experiment with the trainer's binaries run as plain child
//! processes, for benchmark and GPU machines that lack the sandbox's prerequisites (root, cgroups,
//! namespaces, Docker) or a Rust toolchain.
//!
//! **There is no sandbox here.** `train.rs` runs with the invoking user's rights, file system and
//! network. The command exists so that the trainer as built can be measured at full size; it is a CLI
//! subcommand only and no MCP tool can reach it. Everything else is the server's own path: the same
//! `AR_*` environment (`trainer/CONTRACT.md`) in an otherwise cleared environment, the same data
//! finishing (validation split shuffled into two files, the pairing kept here: [`data::finish`]) and
//! the same scoring ([`score`]). The phase wall times are measured here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::config::Profile;
use crate::data;
use crate::dataset::{Layout, cache_key, prepare_split_args};
use crate::fsutil::write_atomic;
use crate::pyenv::PyEnv;
use crate::score::{self, Metrics};

/// The libtorch the trainer is built against (tch =0.24.0, see shared/GPU.md).
const TORCH_SERIES: &str = "2.11.";
/// Time past the training budget before the train phase is killed (as the server's default grace).
const GRACE_SECONDS: u64 = 30;
/// Limit of each embed phase and of `prepare`.
const EMBED_TIMEOUT: Duration = Duration::from_secs(900);
const PREPARE_TIMEOUT: Duration = Duration::from_secs(3600);

const BANNER: &str = "UNSANDBOXED: train.rs runs as a plain child process with your user's rights, files and network";

/// Arguments of `autoresearch-mcp unsandboxed-experiment`.
#[derive(Debug, Clone, Args)]
pub struct DirectArgs {
    /// Folder holding the trainer's release binaries `train` and `prepare` (trainer/target/release).
    #[arg(long)]
    pub trainer_bin: PathBuf,
    /// ODVG dataset folder (train.jsonl, val.jsonl, images/), e.g. from `autoresearch-mcp synth`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Harness profile: tests, cpu or gpu (the full-size model: ViT-S/16 at 224 px, DistilBERT-size text).
    #[arg(long, default_value = "cpu")]
    pub profile: String,
    /// The tokenizer.json `prepare` uses. Default: the text tower's, else the workspace Python
    /// environment's all-MiniLM-L6-v2 tokenizer.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// `auto` (CUDA when libtorch sees it), `cpu` or `cuda` (an error when there is no CUDA device).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training budget in seconds (AR_BUDGET_S); default: the profile's (tests 60, cpu/gpu 300).
    /// train is killed at budget + 30 s.
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
    /// Working folder: prepared data (cached per dataset, profile and tokenizer) and one folder per run
    /// with every phase's log, checkpoint and embeddings.
    #[arg(long)]
    pub work: PathBuf,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Seconds each phase took, measured here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectPhases {
    /// `None` when the prepared data came from the cache.
    pub prepare: Option<f64>,
    pub finish: Option<f64>,
    pub train: f64,
    pub embed_images: f64,
    pub embed_texts: f64,
    pub score: f64,
    pub total: f64,
    /// `train` split at the trainer harness's landmarks (start-up, data load, loop, exit), when reported.
    pub train_split: Option<crate::experiment::TrainSplit>,
}

/// What `train_summary.json` said (as reported by the trainer, not measured here).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrainReported {
    pub steps: Option<u64>,
    pub final_loss: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub device: Option<String>,
    pub train_seconds: Option<f64>,
    pub steps_per_second: Option<f64>,
}

/// The result of one unsandboxed experiment.
#[derive(Debug, Clone, Serialize)]
pub struct DirectSummary {
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
    pub reported: TrainReported,
    pub phases: DirectPhases,
}

/// The CLI body: runs the experiment, prints the summary, writes `--json`.
pub async fn main(workspace: &Path, args: DirectArgs) -> Result<ExitCode> {
    eprintln!("!! {BANNER}.");
    eprintln!("!! For benchmark machines only; `serve`, `run` and every MCP tool always use the sandbox.");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    crate::shutdown::on_signal(move |_| {
        eprintln!("interrupted: stopping the phase in flight");
        flag.store(true, Ordering::SeqCst);
    });
    let (ws, json) = (workspace.to_path_buf(), args.json.clone());
    let summary = tokio::task::spawn_blocking(move || run(&ws, &args, &stop)).await??;
    print!("{}", render(&summary));
    if let Some(path) = &json {
        write_atomic(path, serde_json::to_string_pretty(&summary)?.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs prepare (unless cached) → finish → train → embed-images → embed-texts → score.
pub fn run(workspace: &Path, args: &DirectArgs, stop: &AtomicBool) -> Result<DirectSummary> {
    let started = Instant::now();
    let profile: Profile = serde_json::from_value(serde_json::Value::String(args.profile.clone()))
        .map_err(|_| anyhow::anyhow!("--profile {:?}: use tests, cpu or gpu", args.profile))?;
    if !matches!(args.device.as_str(), "auto" | "cpu" | "cuda") {
        bail!("--device {:?}: use auto, cpu or cuda", args.device);
    }
    let abs =
        |p: &Path| -> Result<PathBuf> { p.canonicalize().with_context(|| format!("{} does not exist", p.display())) };
    let bin = abs(&args.trainer_bin)?;
    let (train_bin, prepare_bin) = (bin.join("train"), bin.join("prepare"));
    for b in [&train_bin, &prepare_bin] {
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
    check_device(&args.device)?;
    let tokenizer = abs(&tokenizer(workspace, args.tokenizer.as_deref(), text_tower.as_deref())?)?;
    std::fs::create_dir_all(&args.work).with_context(|| format!("create {}", args.work.display()))?;
    let work = abs(&args.work)?;
    let budget = args.budget.unwrap_or_else(|| profile.default_budget_seconds());
    eprintln!(
        "profile {} | device {} | budget {budget} s | libtorch {torch_version} ({}) | dataset {}",
        profile.as_str(),
        args.device,
        torch_lib.display(),
        dataset.display()
    );

    let base_env = |phase_dir: &Path| -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LD_LIBRARY_PATH".into(), torch_lib.display().to_string()),
            ("TORCH_CPP_LOG_LEVEL".into(), "ERROR".into()),
            ("HOME".into(), phase_dir.display().to_string()),
            ("TMPDIR".into(), phase_dir.join("tmp").display().to_string()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
            env.push(("CUDA_VISIBLE_DEVICES".into(), v));
        }
        env
    };
    let mut phases = DirectPhases::default();

    // Data: the server's cache layout and finishing.
    let layout = Layout::resolve(&dataset, &crate::config::DataConfig::default())?;
    let cache = work.join("prepared").join(cache_key(&layout, profile.as_str(), &tokenizer)?);
    let prepared = match data::load_ready(&cache) {
        Some(p) => {
            eprintln!("prepared data: cached in {}", cache.display());
            p
        }
        None => {
            let _ = std::fs::remove_dir_all(&cache);
            let out = cache.join("prepared");
            let pdir = cache.join("work");
            std::fs::create_dir_all(&out)?;
            std::fs::create_dir_all(pdir.join("tmp"))?;
            let mut args = vec![
                "--profile".into(),
                profile.as_str().into(),
                "--tokenizer".into(),
                tokenizer.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ];
            args.extend(prepare_split_args(&layout.splits(), &layout));
            let t = Instant::now();
            let log = cache.join("prepare.log");
            let p = Phase { name: "prepare", program: &prepare_bin, args: &args, env: base_env(&pdir), dir: &pdir };
            p.run(&log, PREPARE_TIMEOUT, stop)?;
            phases.prepare = Some(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let ready = data::finish(&cache)?;
            phases.finish = Some(t.elapsed().as_secs_f64());
            ready
        }
    };

    let run_dir = work.join("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S%.3f").to_string());
    let phase_env = |name: &str, input: &Path, out: &Path| -> Vec<(String, String)> {
        let mut env = base_env(out);
        env.extend([
            ("AR_PHASE".into(), name.into()),
            ("AR_PROFILE".into(), profile.as_str().into()),
            ("AR_DATA".into(), input.display().to_string()),
            ("AR_OUT".into(), out.display().to_string()),
            ("AR_BUDGET_S".into(), budget.to_string()),
            ("AR_SEED".into(), args.seed.to_string()),
            ("AR_DEVICE".into(), args.device.clone()),
        ]);
        env.extend(image_tower.as_ref().map(|p| ("AR_IMAGE_TOWER".into(), p.display().to_string())));
        env.extend(text_tower.as_ref().map(|p| ("AR_TEXT_TOWER".into(), p.display().to_string())));
        env
    };

    // Train on the training split.
    let out = run_dir.join("train");
    std::fs::create_dir_all(out.join("tmp"))?;
    let env = phase_env("train", &prepared.train_file(), &out);
    let p = Phase { name: "train", program: &train_bin, args: &[], env, dir: &out };
    let spawned = crate::experiment::unix_now();
    phases.train = p.run(&run_dir.join("train.log"), Duration::from_secs(budget + GRACE_SECONDS), stop)?;
    let summary = crate::experiment::read_train_summary(&out);
    let reported = summary.as_ref().map(train_reported).unwrap_or_default();
    phases.train_split =
        summary.as_ref().and_then(|v| crate::experiment::TrainSplit::from_summary(v, spawned, phases.train));
    let ckpt = out.join("checkpoint.safetensors");
    if !ckpt.is_file() {
        bail!("train exited without writing {}: see {}", ckpt.display(), run_dir.join("train.log").display());
    }

    // Embed each half of a fresh deal of validation in its own process.
    let halves = data::deal_halves(&prepared.val_file(), prepared.val_n, &run_dir.join("halves"))?;
    let mut files = vec![];
    for (name, input) in [("embed-images", halves.images.clone()), ("embed-texts", halves.texts.clone())] {
        let dir = run_dir.join(name);
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut env = phase_env(name, &input, &dir);
        env.push(("AR_CHECKPOINT".into(), ckpt.display().to_string()));
        let p = Phase { name, program: &train_bin, args: &[], env, dir: &dir };
        let secs = p.run(&run_dir.join(format!("{name}.log")), EMBED_TIMEOUT, stop)?;
        if name == "embed-images" {
            phases.embed_images = secs;
        } else {
            phases.embed_texts = secs;
        }
        files.push(dir.join("embeddings.safetensors"));
    }

    // Score with the server's scoring, against the pairing only this process knows.
    let t = Instant::now();
    let metrics = score_files(&halves, prepared.val_n, &files)?;
    let _ = std::fs::remove_dir_all(run_dir.join("halves"));
    phases.score = t.elapsed().as_secs_f64();
    phases.total = started.elapsed().as_secs_f64();
    if reported.device.as_deref() == Some("cpu") && Path::new("/dev/nvidia0").exists() && args.device == "auto" {
        eprintln!(
            "warning: this machine has an NVIDIA device but the trainer ran on the CPU: is the torch in {} a CUDA build?",
            torch_lib.display()
        );
    }
    Ok(DirectSummary {
        sandboxed: false,
        profile: profile.as_str().into(),
        device_requested: args.device.clone(),
        dataset,
        train_n: prepared.train_n,
        val_n: prepared.val_n,
        budget_seconds: budget,
        seed: args.seed,
        torch_lib,
        torch_version,
        run_dir,
        metrics,
        reported,
        phases,
    })
}

fn score_files(halves: &data::Halves, n: usize, files: &[PathBuf]) -> Result<Metrics> {
    let pairing = &halves.pairing;
    let img = score::load_embeddings(&files[0], "image", n)?.unshuffle(&pairing.image_order);
    let txt = score::load_embeddings(&files[1], "text", n)?.unshuffle(&pairing.text_order);
    score::score(&img, &txt).context("the embeddings cannot be scored")
}

/// The summary as printed: metrics against random, what train reported, the phase times.
pub fn render(s: &DirectSummary) -> String {
    let m = &s.metrics;
    let r = &s.reported;
    let opt = |v: Option<f64>, prec: usize| v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "n/a".into());
    let mem = r.peak_memory_bytes.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64));
    let ph = &s.phases;
    let prep = match (ph.prepare, ph.finish) {
        (Some(p), Some(f)) => format!("prepare {p:.1} | finish {f:.1}"),
        _ => "prepare cached".into(),
    };
    let mut o = String::new();
    o.push_str(&format!("== unsandboxed experiment ({BANNER})\n"));
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
        "train (reported by train): {} steps | final loss {} | {} steps/s over the whole phase | peak memory {}\n",
        r.steps.map(|x| x.to_string()).unwrap_or_else(|| "n/a".into()),
        opt(r.final_loss, 4),
        opt(r.steps_per_second, 2),
        mem.unwrap_or_else(|| "n/a".into())
    ));
    o.push_str(&format!(
        "phases (s, measured here): {prep} | train {:.1} | embed-images {:.1} | embed-texts {:.1} | score {:.2} | total {:.1}\n",
        ph.train, ph.embed_images, ph.embed_texts, ph.score, ph.total
    ));
    if let Some(t) = &ph.train_split {
        o.push_str(&format!(
            "not training (s): {:.1} of {:.1} | train start-up {:.2} (process start {:.2}, data load {}) | after the last step {:.2} | loop {:.1}\n",
            ph.total - t.r#loop,
            ph.total,
            t.startup,
            t.sandbox_start,
            opt(t.data_load, 2),
            t.exit,
            t.r#loop
        ));
    }
    o.push_str(&format!("logs, checkpoint, embeddings: {}\n", s.run_dir.display()));
    o
}

fn train_reported(v: &serde_json::Value) -> TrainReported {
    TrainReported {
        steps: v.get("steps").and_then(|x| x.as_u64()),
        final_loss: v.get("final_loss").and_then(|x| x.as_f64()),
        peak_memory_bytes: v.get("peak_memory_bytes").and_then(|x| x.as_u64()),
        device: v.get("device").and_then(|x| x.as_str()).map(|s| s.chars().take(16).collect()),
        train_seconds: v.get("train_seconds").and_then(|x| x.as_f64()),
        steps_per_second: v.get("steps_per_second").and_then(|x| x.as_f64()),
    }
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

fn check_device(device: &str) -> Result<()> {
    if device == "cuda" && !Path::new("/dev/nvidia0").exists() && !Path::new("/dev/nvidiactl").exists() {
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

/// One phase: a plain child process in its own process group, its output teed to a log file and to
/// stderr, killed (the whole group) at its time limit or on SIGINT/SIGTERM.
struct Phase<'a> {
    name: &'a str,
    program: &'a Path,
    args: &'a [String],
    env: Vec<(String, String)>,
    dir: &'a Path,
}

impl Phase<'_> {
    /// Runs to completion; an error unless it exits 0. Returns its wall time in seconds.
    fn run(&self, log: &Path, limit: Duration, stop: &AtomicBool) -> Result<f64> {
        let name = self.name;
        eprintln!("== {name}");
        let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let started = Instant::now();
        let mut child = Command::new(self.program)
            .args(self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", self.program.display()))?;
        let pgid = child.id() as i32;
        let pumps: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let (file, tag) = (file.clone(), name.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(|l| l.ok()) {
                    let line = String::from_utf8_lossy(&line);
                    eprintln!("[{tag}] {line}");
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                }
            })
        })
        .collect();
        // The group is killed while the child is still unreaped (a zombie keeps its pid and group id
        // taken), so the kill can never reach a reused id; that also ends anything it left behind.
        let kill = || unsafe {
            // SAFETY: plain kill(2) on the child's own process group.
            libc::kill(-pgid, libc::SIGKILL);
        };
        let mut failure = None;
        loop {
            if exited_unreaped(pgid) {
                break;
            }
            if stop.load(Ordering::SeqCst) {
                failure = Some(format!("{name} interrupted"));
                break;
            }
            if started.elapsed() > limit {
                failure =
                    Some(format!("{name} killed at its time limit of {} s (log: {})", limit.as_secs(), log.display()));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let secs = started.elapsed().as_secs_f64();
        kill();
        let status = child.wait()?;
        for p in pumps {
            let _ = p.join();
        }
        if let Some(why) = failure {
            bail!(why);
        }
        if !status.success() {
            bail!("{name} failed ({status}) after {secs:.1} s; its output is above and in {}", log.display());
        }
        Ok(secs)
    }
}

/// Whether the child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited_unreaped(pid: i32) -> bool {
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into the siginfo_t we own; the pid is our own child.
    let rc = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // With WNOHANG and no state change, waitid returns 0 and leaves si_pid zero.
    rc != 0 || unsafe { info.si_pid() } != 0
}
