//! One experiment: build the trainer → train on the training split → embed the shuffled validation
//! images → embed the shuffled validation texts → score here, outside any sandbox. Each phase is a
//! job of the runner's [`Sandbox`] backend (`local`, `docker`, or `none` for `unsandboxed-experiment`)
//! with its own time limit; whatever happens inside is an outcome, recorded, never a server crash.
//!
//! Each phase returns what it produced ([`Stop`] when the run ends there); [`Runner::experiment`] adds
//! them up into the [`Outcome`]. The rules live here once: the trainer's environment
//! ([`contract::TrainerEnv`]), the overrun rule ([`overran`]), the scoring of the halves
//! ([`crate::score::score_halves`], in [`evaluate`]), the ledger row that ends a run ([`Outcome::finished_event`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data::{self, Prepared};
use crate::dataset::Layout;
use crate::fsutil::sha256_hex;
use crate::ledger::{Fingerprint, PhaseTimes, Reported, RunStatus};
use crate::paths::Paths;
use crate::pyenv::PyEnv;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::gpus::{self, Gpus};
use crate::sandbox::{Job, JobEnd, JobOutcome, Sandbox};
use crate::score::Metrics;
use crate::untrusted::fenced_tail;

pub use crate::toolchain::Toolchain;

mod build;
pub mod contract;
mod evaluate;
pub mod train_summary;

use contract::{TrainPhase, TrainerEnv};
pub use evaluate::Evaluation;
pub use train_summary::TrainSplit;
use train_summary::{read_train_summary, reported, unix_now};

/// What an experiment produced, for the ledger and for the agent.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: RunStatus,
    pub metrics: Option<Metrics>,
    pub reported: Reported,
    pub phases: PhaseTimes,
    pub overran: bool,
    /// What the agent should read: the cause and what to do, with any program output fenced.
    pub message: Option<String>,
}

impl Outcome {
    /// A run the server never finished (it stopped or died during it), found at the next start.
    pub fn abandoned() -> Outcome {
        Outcome {
            status: RunStatus::Abandoned,
            metrics: None,
            reported: Reported::default(),
            phases: PhaseTimes::default(),
            overran: false,
            message: Some("the server stopped during this run".into()),
        }
    }

    /// The ledger's `finished` row of run `run_id`: the one way a run's end is recorded. The message
    /// is cut to its first line (the agent's reply has the whole of it).
    pub fn finished_event(&self, run_id: &str, audit: crate::audit::Head) -> crate::ledger::Event {
        let first_line = |m: &String| m.lines().next().unwrap_or("").chars().take(300).collect();
        crate::ledger::Event::Finished {
            run_id: run_id.into(),
            at: chrono::Utc::now(),
            status: self.status,
            metrics: self.metrics.clone(),
            reported: self.reported.clone(),
            phases: Box::new(self.phases.clone()),
            overran: self.overran,
            message: self.message.as_ref().map(first_line),
            audit,
        }
    }
}

/// Everything needed to run phases; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    pub paths: Paths,
    pub config: Config,
    pub pyenv: PyEnv,
    pub trainer: Trainer,
    pub sandbox: Arc<dyn Sandbox>,
}

/// Where the trainer's binaries (`train`, `prepare`) come from.
#[derive(Clone)]
pub enum Trainer {
    /// Built from the workspace's sources in the sandbox, for every run (the server's path).
    Build(Toolchain),
    /// Already built, in this folder (`unsandboxed-experiment --trainer-bin`: no toolchain needed).
    Prebuilt(PathBuf),
}

impl Runner {
    pub fn target_dir(&self) -> PathBuf {
        let t = &self.config.sandbox.trainer_target_dir;
        if t.as_os_str().is_empty() { self.paths.trainer().join("target") } else { self.paths.root.join(t) }
    }

    pub fn dataset(&self) -> PathBuf {
        self.paths.root.join(&self.config.data.dataset)
    }

    /// The pretrained towers as (`AR_IMAGE_TOWER`, `AR_TEXT_TOWER`) paths, checked to exist.
    pub fn towers(&self) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
        let m = &self.config.model;
        let resolve = |p: &Path, what: &str| -> Result<Option<PathBuf>> {
            if p.as_os_str().is_empty() {
                return Ok(None);
            }
            let path = if p == Path::new("minilm") { self.pyenv.minilm_dir()? } else { self.paths.root.join(p) };
            if !path.exists() {
                bail!("model.{what} = {} does not exist (see autoresearch.toml)", path.display());
            }
            Ok(Some(path))
        };
        let (image, text) = (resolve(&m.image_tower, "image_tower")?, resolve(&m.text_tower, "text_tower")?);
        if let Some(t) = &text
            && (!t.join("config.json").is_file() || !t.join("model.safetensors").is_file())
        {
            bail!(
                "model.text_tower {} is not a Hugging Face folder with config.json and model.safetensors",
                t.display()
            );
        }
        Ok((image, text))
    }

    /// The `tokenizer.json` that `prepare` uses: `data.tokenizer`, else the text tower's, else MiniLM's.
    pub fn tokenizer(&self) -> Result<PathBuf> {
        if !self.config.data.tokenizer.as_os_str().is_empty() {
            return Ok(self.paths.root.join(&self.config.data.tokenizer));
        }
        match self.towers()?.1 {
            Some(dir) => {
                let t = dir.join("tokenizer.json");
                if !t.is_file() {
                    bail!("the text tower {} has no tokenizer.json; set data.tokenizer", dir.display());
                }
                Ok(t)
            }
            None => self.pyenv.minilm_tokenizer(),
        }
    }

    /// Identifies the pretrained towers for the fingerprint: file names, sizes and a hash of the first MiB
    /// (hashing whole checkpoints on every run would cost seconds).
    fn towers_id(&self) -> Result<String> {
        let (image, text) = self.towers()?;
        let mut parts = vec![];
        for (what, path) in [("image", image), ("text", text.map(|d| d.join("model.safetensors")))] {
            let Some(path) = path else { continue };
            let file = if path.is_dir() { path.join("model.safetensors") } else { path };
            let mut head = vec![0u8; 1 << 20];
            let n = std::io::Read::read(&mut std::fs::File::open(&file)?, &mut head)?;
            let len = std::fs::metadata(&file)?.len();
            parts.push(format!("{what}:{len}:{}", &sha256_hex(&head[..n])[..12]));
        }
        Ok(parts.join(","))
    }

    pub fn device(&self) -> String {
        use crate::config::Device;
        match self.config.experiment.device {
            Device::Auto if Path::new("/dev/nvidia0").exists() => Device::Cuda,
            Device::Auto => Device::Cpu,
            d => d,
        }
        .as_str()
        .into()
    }

    /// SHA-256 over every file of the fixed harness: the trainer package minus train.rs and build output.
    pub fn harness_hash(&self) -> Result<String> {
        let files = self.harness_files()?;
        let mut all = Vec::new();
        for f in &files {
            all.extend_from_slice(self.paths.relative(f).to_string_lossy().as_bytes());
            all.extend_from_slice(sha256_hex(&std::fs::read(f)?).as_bytes());
        }
        Ok(sha256_hex(&all)[..16].to_string())
    }

    /// The files of the fixed harness (the trainer package minus train.rs and build output), sorted.
    fn harness_files(&self) -> Result<Vec<PathBuf>> {
        let trainer = self.paths.trainer();
        let mut files = vec![];
        for name in ["Cargo.toml", "Cargo.lock", "build.rs"] {
            files.push(trainer.join(name));
        }
        let mut stack = vec![trainer.join("src")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p != self.paths.train_rs() {
                    files.push(p);
                }
            }
        }
        files.retain(|f| f.exists());
        files.sort();
        Ok(files)
    }

    /// The fingerprint of runs on `data` (one prepared cache, or one per fold).
    pub fn fingerprint(&self, data: &[Prepared]) -> Result<Fingerprint> {
        let hash = match data {
            [one] => one.hash.clone(),
            folds => {
                let joined: Vec<&str> = folds.iter().map(|p| p.hash.as_str()).collect();
                format!("cv{}-{}", folds.len(), &sha256_hex(joined.join(",").as_bytes())[..16])
            }
        };
        Ok(Fingerprint {
            harness: self.harness_hash()?,
            data: hash,
            val_n: data.iter().map(|p| p.val_n).sum(),
            budget_seconds: self.config.budget_seconds(),
            profile: self.config.experiment.profile.as_str().into(),
            device: self.device(),
            libtorch: self.pyenv.torch_version().unwrap_or_else(|_| "unknown".into()),
            towers: self.towers_id()?,
        })
    }

    /// A job in `dir` (its cwd and scratch); `limits` = (wall-clock limit, largest file it may write).
    fn job(
        &self,
        phase: &str,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: &Path,
        limits: (Duration, u64),
    ) -> Job {
        let (timeout, max_file) = limits;
        let sb = &self.config.sandbox;
        let mut full = vec![
            ("HOME".into(), dir.join("home").display().to_string()),
            ("TMPDIR".into(), dir.join("tmp").display().to_string()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        full.extend(env);
        // The build and data preparation need no GPU; the phases of train use the run's.
        let gpus = match phase {
            "build" | "prepare" => Gpus::none(),
            _ => Gpus::All,
        };
        match &gpus {
            Gpus::All => full.extend(std::env::var("CUDA_VISIBLE_DEVICES").map(|v| ("CUDA_VISIBLE_DEVICES".into(), v))),
            only => full.extend(gpus::cuda_env(Path::new("/proc/driver/nvidia/gpus"), only)),
        }
        Job {
            phase: phase.into(),
            program,
            args,
            env: full,
            cwd: dir.to_path_buf(),
            scratch: dir.to_path_buf(),
            timeout,
            // Outside the scratch dir: the job cannot touch its own log.
            log: dir.with_extension("log"),
            log_cap: sb.log_cap_bytes,
            max_file_bytes: max_file,
            host_system: true,
            read_only: vec![],
            writable: vec![dir.to_path_buf()],
            limits: Limits { memory_bytes: sb.memory_limit_gib << 30, pids: sb.pids_limit, cpus: sb.cpus },
            // Every phase, the build included (its target dir is handed to it), runs as nobody: it
            // cannot read a file of the host's that is not world-readable, even if one were mounted.
            unprivileged: true,
            // The phases train.rs runs in get the run quota; the build (the target dir's growth) and
            // the harness's data preparation the larger one.
            disk_quota_bytes: match phase {
                "build" | "prepare" => sb.build_disk_quota_gib,
                _ => sb.disk_quota_gib,
            } << 30,
            gpus,
        }
    }

    /// The environment of a phase of `train`: the process basics and the `AR_*` contract
    /// ([`TrainerEnv`]); with [`Runner::phase_mounts`] its read-only inputs.
    fn run_env(
        &self,
        phase: TrainPhase,
        data: &Path,
        out: &Path,
        checkpoint: Option<&Path>,
        seed: u64,
    ) -> Result<Vec<(String, String)>> {
        let torch_lib = self.pyenv.torch_lib().map(|p| p.display().to_string()).unwrap_or_default();
        let (image_tower, text_tower) = self.towers()?;
        let threads = self.config.torch_threads().to_string();
        let mut env = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LD_LIBRARY_PATH".into(), torch_lib),
            ("TORCH_CPP_LOG_LEVEL".into(), "ERROR".into()),
            // libtorch's intra-op threads (OpenMP and MKL read these at start).
            ("OMP_NUM_THREADS".into(), threads.clone()),
            ("MKL_NUM_THREADS".into(), threads),
        ];
        let contract = TrainerEnv {
            phase,
            profile: self.config.experiment.profile.as_str().into(),
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            checkpoint: checkpoint.map(Path::to_path_buf),
            budget_s: self.config.budget_seconds(),
            seed,
            device: self.config.experiment.device,
            image_tower,
            text_tower,
        };
        env.extend(contract.vars());
        Ok(env)
    }

    /// Read-only paths of every phase of `train`: the binary, its inputs, libtorch and the pretrained towers.
    fn phase_mounts(&self, inputs: &[&Path]) -> Result<Vec<PathBuf>> {
        let mut ro: Vec<PathBuf> = inputs.iter().map(|p| p.to_path_buf()).collect();
        ro.push(self.pyenv.dir.clone());
        let (image, text) = self.towers()?;
        ro.extend(image);
        ro.extend(text);
        Ok(ro)
    }

    /// The dataset's layout, the tokenizer and the name of their prepared cache for this profile.
    fn data_key(&self) -> Result<(Layout, PathBuf, String)> {
        let tokenizer = self.tokenizer()?;
        let layout = Layout::resolve(&self.dataset(), &self.config.data)?;
        let key = crate::dataset::cache_key(&layout, self.config.experiment.profile.as_str(), &tokenizer)?;
        Ok((layout, tokenizer, key))
    }

    /// Whether the fixed split's prepared data is ready (then [`Runner::ensure_data`] prepares nothing).
    pub fn data_ready(&self) -> Result<bool> {
        let (_, _, key) = self.data_key()?;
        Ok(data::load_ready(&self.paths.prepared().join(key)).is_some())
    }

    /// The prepared data of an experiment, building it on first use: one cache for the fixed split, or
    /// one per fold when `experiment.folds` cross-validates.
    pub async fn ensure_data(
        &self,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Vec<Prepared>> {
        let (layout, tokenizer, key) = self.data_key()?;
        let folds = self.config.experiment.folds as usize;
        if folds < 2 {
            let dir = self.paths.prepared().join(key);
            let mut prepare = None;
            return Ok(vec![
                self.prepare_into(&dir, &layout.splits(), &layout, &tokenizer, &mut prepare, cancel, phase).await?,
            ]);
        }
        let root = self.paths.prepared().join(format!("{key}-cv{folds}"));
        let dirs: Vec<PathBuf> = (1..=folds).map(|i| root.join(format!("fold-{i}"))).collect();
        if let Some(ready) = dirs.iter().map(|d| data::load_ready(d)).collect::<Option<Vec<_>>>() {
            return Ok(ready);
        }
        // The reference's protocol: seed 42 for the folds, whatever the experiment's seed.
        let files = crate::dataset::write_folds(&layout, folds, 42, &root.join("odvg"))?;
        let mut prepare = None;
        let mut out = vec![];
        for (i, (dir, (train, val))) in dirs.iter().zip(&files).enumerate() {
            let _ = phase.send(format!("preparing fold {}/{folds}", i + 1));
            let splits = [("train", train.as_path()), ("val", val.as_path())];
            out.push(self.prepare_into(dir, &splits, &layout, &tokenizer, &mut prepare, cancel, phase).await?);
        }
        Ok(out)
    }

    /// Prepares `splits` (name, JSONL) with `layout`'s images into the cache folder `dir`, unless it is
    /// ready. `prepare` is the prepare binary, built on first need.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_into(
        &self,
        dir: &Path,
        splits: &[(&str, &Path)],
        layout: &Layout,
        tokenizer: &Path,
        prepare: &mut Option<PathBuf>,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Prepared> {
        if let Some(p) = data::load_ready(dir) {
            return Ok(p);
        }
        let _ = phase.send("preparing data (first run with this dataset and profile)".into());
        let work = dir.join("work");
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(&work)?;
        let bin = match (prepare.as_ref(), &self.trainer) {
            (Some(b), _) => b.clone(),
            (None, Trainer::Prebuilt(dir)) => dir.join("prepare"),
            (None, Trainer::Build(_)) => {
                let (build, bin) = self.build("prepare", &work.join("build"), cancel).await?;
                if !build.success() {
                    bail!(
                        "building the trainer's prepare tool {}:\n{}",
                        build.describe(),
                        fenced_tail("build log", &build.tail)
                    );
                }
                prepare.insert(bin).clone()
            }
        };
        let out = dir.join("prepared");
        std::fs::create_dir_all(&out)?;
        let mut args = vec!["--profile".into(), self.config.experiment.profile.as_str().into()];
        args.extend(["--tokenizer".into(), tokenizer.display().to_string(), "--out".into(), out.display().to_string()]);
        args.extend(crate::dataset::prepare_split_args(splits, layout));
        let torch_lib = self.pyenv.torch_lib()?.display().to_string();
        let env = vec![("PATH".into(), "/usr/bin:/bin".into()), ("LD_LIBRARY_PATH".into(), torch_lib)];
        let pdir = work.join("prepare");
        std::fs::create_dir_all(&pdir)?;
        let mut read_only = vec![bin.clone(), layout.images.clone(), tokenizer.to_path_buf(), self.pyenv.dir.clone()];
        read_only.extend(splits.iter().map(|(_, f)| f.to_path_buf()));
        let mut job = self.job("prepare", bin, args, env, &pdir, (Duration::from_secs(3600), 32 << 30));
        job.read_only = read_only;
        job.writable.push(out.clone());
        let run = self.sandbox.run(&job, cancel).await?;
        if !run.success() {
            bail!(
                "preparing {} ({} layout) {}:\n{}",
                self.dataset().display(),
                layout.kind,
                run.describe(),
                fenced_tail("prepare log", &run.tail)
            );
        }
        data::finish(dir)
    }

    /// Build, then for each of `seeds` train, embed and score on each prepared split (one, or one per
    /// fold): the metrics are the mean over folds, then over seeds. `run_dir` exists and holds the
    /// train.rs snapshot. Whatever happens is in the outcome; phase times add up over trials.
    pub async fn experiment(
        &self,
        run_dir: &Path,
        data: &[Prepared],
        seeds: &[u64],
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Outcome {
        let start = Instant::now();
        let (mut phases, mut reported, mut overran) = (PhaseTimes::default(), Reported::default(), false);
        let end: Result<Result<Metrics, Stop>> = async {
            let _ = phase.send("building the trainer".into());
            let (build_secs, built) = self.build_trainer(run_dir, cancel).await?;
            phases.build = build_secs;
            let trainer = match built {
                Ok(t) => t,
                Err(stop) => return Ok(Err(stop)),
            };
            let mut per_seed = vec![];
            for (si, &seed) in seeds.iter().enumerate() {
                let mut per_fold = vec![];
                for (fi, fold) in data.iter().enumerate() {
                    let (dir, label) = trial_dir(run_dir, (si, seed, seeds.len()), (fi, data.len()));
                    std::fs::create_dir_all(&dir)?;
                    let trial = self.trial(&dir, &trainer, fold, seed, &label, cancel, phase).await?;
                    add_times(&mut phases, &trial.phases);
                    reported = trial.reported;
                    overran |= trial.overran;
                    match trial.result {
                        Ok(m) => per_fold.push(m),
                        Err(stop) => return Ok(Err(stop)),
                    }
                }
                per_seed.push(Metrics::over_folds(&per_fold));
            }
            Ok(Ok(Metrics::over_seeds(&per_seed)))
        }
        .await;
        let (status, metrics, message) = match end {
            Ok(Ok(m)) => (RunStatus::Ok, Some(m), None),
            Ok(Err(stop)) => (stop.status, None, Some(stop.message)),
            // The server's own errors (cannot spawn, cannot write): the run did not happen properly.
            Err(e) => {
                let status = if cancel.is_cancelled() { RunStatus::Cancelled } else { RunStatus::Crashed };
                (status, None, Some(format!("the server could not complete the run: {e:#}")))
            }
        };
        phases.total = start.elapsed().as_secs_f64();
        Outcome { status, metrics, reported, phases, overran, message }
    }

    /// The `train` binary the trials run: built in the sandbox (its wall time), or the prebuilt one.
    async fn build_trainer(
        &self,
        run_dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<(Option<f64>, Result<PathBuf, Stop>)> {
        if let Trainer::Prebuilt(bin) = &self.trainer {
            return Ok((None, Ok(bin.join("train"))));
        }
        let (build, trainer) = self.build("train", &run_dir.join("build"), cancel).await?;
        let secs = Some(build.wall.as_secs_f64());
        let Some(status) = stopped(&build, RunStatus::BuildFailed) else { return Ok((secs, Ok(trainer))) };
        let message = match build.end {
            JobEnd::Exited(_) => format!(
                "build failed: train.rs does not compile. Fix the error below with edit_train (or revert), then run again.\n{}",
                fenced_tail("compiler output", &build.tail)
            ),
            _ => format!("build {}", build.describe()),
        };
        Ok((secs, Err(Stop { status, message })))
    }

    /// Train on `data`'s training split, embed its validation halves, score. An error is the server's.
    #[allow(clippy::too_many_arguments)]
    async fn trial(
        &self,
        run_dir: &Path,
        trainer: &Path,
        data: &Prepared,
        seed: u64,
        label: &str,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Trial> {
        let trainer = trainer.to_path_buf();
        let mut t = Trial::default();
        // 2. Train on the training split only.
        let _ = phase.send(format!("training{label}"));
        let out = run_dir.join("train");
        std::fs::create_dir_all(&out)?;
        let budget = self.config.budget_seconds();
        let grace = self.config.experiment.grace_seconds;
        let limit = Duration::from_secs(budget + grace);
        // The training split only: validation and test are not in the job's file system.
        let read_only = self.phase_mounts(&[&trainer, &data.train_file()])?;
        let env = self.run_env(TrainPhase::Train, &data.train_file(), &out, None, seed)?;
        let mut job = self.job("train", trainer.clone(), vec![], env, &out, (limit, 4 << 30));
        job.read_only = read_only;
        let spawned = unix_now();
        let train = self.sandbox.run(&job, cancel).await?;
        t.phases.train = Some(train.wall.as_secs_f64());
        t.overran = overran(&train, budget, grace);
        let summary = read_train_summary(&out);
        t.reported = summary.as_ref().map(reported).unwrap_or_default();
        if let Some(split) =
            summary.as_ref().and_then(|v| TrainSplit::from_summary(v, spawned, train.wall.as_secs_f64()))
        {
            t.phases.train_startup = Some(split.startup);
            t.phases.train_loop = Some(split.r#loop);
            t.phases.train_exit = Some(split.exit);
            t.phases.sandbox_start = Some(split.sandbox_start);
            t.phases.data_load = split.data_load;
        }
        if let Some(status) = stopped(&train, RunStatus::Crashed) {
            let message = match train.end {
                JobEnd::TimedOut => format!(
                    "training was killed at {} s (budget {budget} s + grace): make train.rs stop within the harness budget (ctx.time_left()).\n{}",
                    limit.as_secs(),
                    fenced_tail("train log", &train.tail)
                ),
                JobEnd::Cancelled => format!("cancelled during training{label}"),
                _ => format!(
                    "training{label} crashed ({}). Read the log tail, fix train.rs or revert.\n{}",
                    train.describe(),
                    fenced_tail("train log", &train.tail)
                ),
            };
            t.result = Err(Stop { status, message });
            return Ok(t);
        }
        let ckpt = out.join("checkpoint.safetensors");
        if std::fs::symlink_metadata(&ckpt).map(|m| !m.file_type().is_file()).unwrap_or(true) {
            let message =
                "train.rs exited without writing checkpoint.safetensors (a regular file) through the harness".into();
            t.result = Err(Stop { status: RunStatus::Crashed, message });
            return Ok(t);
        }

        // 3 to 5. Embed each half of a fresh deal of validation in its own process, score here.
        let eval =
            self.evaluate(&trainer, &data.val_file(), data.val_n, &ckpt, run_dir, seed, label, cancel, phase).await?;
        t.phases.embed_images = Some(eval.embed_images);
        t.phases.embed_texts = Some(eval.embed_texts);
        t.phases.score = Some(eval.score);
        t.result = eval.result.map_err(|(status, message)| Stop { status, message });
        Ok(t)
    }
}

/// Why a run stopped without metrics: the status to record and what the agent should read.
#[derive(Debug, Clone)]
pub struct Stop {
    pub status: RunStatus,
    pub message: String,
}

/// What one trial (one seed on one prepared split) gave: its phase times, what the trainer reported,
/// whether it overran, and its metrics or why there are none.
struct Trial {
    phases: PhaseTimes,
    reported: Reported,
    overran: bool,
    result: Result<Metrics, Stop>,
}

impl Default for Trial {
    fn default() -> Self {
        let result = Err(Stop { status: RunStatus::Crashed, message: String::new() });
        Trial { phases: PhaseTimes::default(), reported: Reported::default(), overran: false, result }
    }
}

/// The folder of one trial and its label in progress and messages (`seed-S/fold-F` when repeated).
fn trial_dir(run_dir: &Path, (si, seed, seeds): (usize, u64, usize), (fi, folds): (usize, usize)) -> (PathBuf, String) {
    let (mut dir, mut label) = (run_dir.to_path_buf(), vec![]);
    if seeds > 1 {
        dir.push(format!("seed-{seed}"));
        label.push(format!("seed {seed}, {}/{seeds}", si + 1));
    }
    if folds > 1 {
        dir.push(format!("fold-{}", fi + 1));
        label.push(format!("fold {}/{folds}", fi + 1));
    }
    let label = if label.is_empty() { String::new() } else { format!(" ({})", label.join(", ")) };
    (dir, label)
}

/// The overrun rule: a train phase overran its budget when it was killed at its limit or ran past
/// budget + grace (`[experiment] grace_seconds`). A run that overran is never compared or committed.
pub fn overran(train: &JobOutcome, budget_seconds: u64, grace_seconds: u64) -> bool {
    train.end == JobEnd::TimedOut || train.wall.as_secs_f64() > (budget_seconds + grace_seconds) as f64
}

/// Adds a trial's phase times to the run's (folds and seeds add up).
fn add_times(run: &mut PhaseTimes, trial: &PhaseTimes) {
    let pairs = [
        (&mut run.train, trial.train),
        (&mut run.train_startup, trial.train_startup),
        (&mut run.train_loop, trial.train_loop),
        (&mut run.train_exit, trial.train_exit),
        (&mut run.sandbox_start, trial.sandbox_start),
        (&mut run.data_load, trial.data_load),
        (&mut run.embed_images, trial.embed_images),
        (&mut run.embed_texts, trial.embed_texts),
        (&mut run.score, trial.score),
    ];
    for (slot, secs) in pairs {
        if let Some(s) = secs {
            *slot = Some(slot.unwrap_or(0.0) + s);
        }
    }
}

/// The status to stop with, if the job did not succeed.
fn stopped(r: &JobOutcome, failed: RunStatus) -> Option<RunStatus> {
    match r.end {
        JobEnd::Exited(0) => None,
        JobEnd::Cancelled => Some(RunStatus::Cancelled),
        JobEnd::TimedOut => Some(RunStatus::Timeout),
        JobEnd::QuotaExceeded => Some(RunStatus::Crashed),
        _ => Some(failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(end: JobEnd, secs: u64) -> JobOutcome {
        let wall = Duration::from_secs(secs);
        JobOutcome { end, wall, tail: vec![], log_truncated: false, peak_memory_bytes: None, oom_killed: false }
    }

    #[test]
    fn a_train_phase_overran_when_killed_or_past_budget_plus_the_configured_grace() {
        assert!(!overran(&train(JobEnd::Exited(0), 75), 60, 30), "within the grace");
        assert!(overran(&train(JobEnd::Exited(0), 91), 60, 30), "past budget + grace");
        assert!(overran(&train(JobEnd::Exited(0), 66), 60, 5), "the grace is the configured one");
        assert!(overran(&train(JobEnd::TimedOut, 10), 60, 30), "killed at its limit");
    }

    #[test]
    fn trials_of_several_seeds_and_folds_get_their_own_folders_and_labels() {
        let root = Path::new("/r");
        assert_eq!(trial_dir(root, (0, 42, 1), (0, 1)), (PathBuf::from("/r"), String::new()));
        let (dir, label) = trial_dir(root, (1, 43, 2), (2, 3));
        assert_eq!(dir, PathBuf::from("/r/seed-43/fold-3"));
        assert_eq!(label, " (seed 43, 2/2, fold 3/3)");
    }
}
