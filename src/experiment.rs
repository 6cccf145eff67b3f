//! One experiment: build the trainer → train on the training split → embed the shuffled validation
//! images → embed the shuffled validation texts → score here, outside any sandbox. Each phase is a
//! sandboxed job with its own time limit; whatever happens inside is an outcome, recorded, never a
//! server crash.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data::{self, Prepared};
use crate::dataset::Layout;
use crate::fsutil::{read_capped, sha256_hex};
use crate::ledger::{Fingerprint, PhaseTimes, Reported, RunStatus};
use crate::paths::Paths;
use crate::pyenv::PyEnv;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::{Job, JobEnd, JobOutcome, Sandbox};
use crate::score::{self, Metrics};
use crate::untrusted::fenced_tail;

pub use crate::toolchain::Toolchain;

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

/// Everything needed to run phases; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    pub paths: Paths,
    pub config: Config,
    pub pyenv: PyEnv,
    pub toolchain: Toolchain,
    pub sandbox: Arc<dyn Sandbox>,
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
        match self.config.experiment.device.as_str() {
            "auto" if Path::new("/dev/nvidia0").exists() => "cuda".into(),
            "auto" => "cpu".into(),
            d => d.into(),
        }
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
        if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
            full.push(("CUDA_VISIBLE_DEVICES".into(), v));
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
        }
    }

    /// `cargo build --release --offline --locked --bin <bin>` of the trainer, in the sandbox. On
    /// success the binary is copied to `dir/<bin>`, which is what the phases run.
    ///
    /// The target dir may be shared by several workspaces (tests, demos): builds hold a lock on it
    /// from build to copy, so no other build can swap the binary in between, and train.rs is touched
    /// first, so cargo never reuses a `train` built from another workspace's older train.rs.
    async fn build(&self, bin: &str, dir: &Path, cancel: &CancellationToken) -> Result<(JobOutcome, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let target = self.target_dir();
        std::fs::create_dir_all(&target)?;
        let lock = std::fs::File::create(target.join(".autoresearch-build.lock"))?;
        let lock = tokio::task::spawn_blocking(move || fs2::FileExt::lock_exclusive(&lock).map(|_| lock))
            .await?
            .context("lock the trainer's build directory")?;
        // Cargo judges a path package fresh by mtimes, so a harness compiled from another workspace's
        // (older or newer) sources can look fresh here. The target dir remembers which harness it last
        // built; when this one differs, its files are touched and cargo recompiles them.
        let stamp = target.join(".autoresearch-harness");
        let harness = self.harness_hash()?;
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(harness.as_str()) {
            let now = std::time::SystemTime::now();
            for f in self.harness_files()? {
                let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&f);
                file.and_then(|h| h.set_modified(now)).with_context(|| format!("touch {}", f.display()))?;
            }
        }
        if bin == "train" {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.paths.train_rs())
                .context("open train.rs")?;
            f.set_modified(std::time::SystemTime::now()).context("touch train.rs")?;
        }
        let tc = &self.toolchain;
        let env = vec![
            (
                "PATH".into(),
                format!(
                    "{}:{}:/usr/local/bin:/usr/bin:/bin",
                    self.pyenv.bin().display(),
                    tc.sysroot.join("bin").display()
                ),
            ),
            ("CARGO_HOME".into(), tc.cargo_home.display().to_string()),
            ("CARGO_TARGET_DIR".into(), self.target_dir().display().to_string()),
            ("CARGO_TERM_COLOR".into(), "never".into()),
            ("LIBTORCH_USE_PYTORCH".into(), "1".into()),
        ];
        let args = ["build", "--release", "--offline", "--locked", "--bin", bin, "--manifest-path"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.paths.trainer().join("Cargo.toml").display().to_string()])
            .collect();
        let timeout = Duration::from_secs(self.config.experiment.build_timeout_seconds);
        // Reads: the trainer's sources, the toolchain's sysroot, the locked crates (not CARGO_HOME: see
        // crate::toolchain), the Python environment (torch-sys asks its python where libtorch is, and
        // that python's own installation). Writes: the target dir, handed to the build's user.
        let mut read_only = vec![self.paths.trainer(), tc.sysroot.clone(), self.pyenv.dir.clone()];
        let view = tc.registry_view(&self.paths.trainer().join("Cargo.lock"))?;
        ensure_readable(&view)?;
        read_only.extend(view);
        read_only.extend(self.pyenv.python_prefix());
        let mut job = self.job("build", tc.cargo.clone(), args, env, dir, (timeout, 8 << 30));
        job.read_only = read_only;
        job.writable.push(target.clone());
        let outcome = self.sandbox.run(&job, cancel).await?;
        // Into a folder the build could not write, so nothing it planted can redirect the copy.
        let bin_dir = dir.with_file_name("bin");
        let copy = bin_dir.join(bin);
        if outcome.success() {
            std::fs::write(&stamp, &harness).context("stamp the trainer's build directory")?;
            let _ = std::fs::remove_dir_all(&bin_dir);
            std::fs::create_dir_all(&bin_dir)?;
            std::fs::copy(target.join("release").join(bin), &copy).with_context(|| format!("copy the built {bin}"))?;
        }
        drop(lock);
        Ok((outcome, copy))
    }

    /// The environment of a phase of `train`; with [`Runner::phase_mounts`] its read-only inputs.
    fn run_env(&self, phase: &str, data: &Path, out: &Path, seed: u64) -> Result<Vec<(String, String)>> {
        let torch_lib = self.pyenv.torch_lib().map(|p| p.display().to_string()).unwrap_or_default();
        let (image, text) = self.towers()?;
        let mut env = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LD_LIBRARY_PATH".into(), torch_lib),
            ("TORCH_CPP_LOG_LEVEL".into(), "ERROR".into()),
            ("AR_PHASE".into(), phase.into()),
            ("AR_PROFILE".into(), self.config.experiment.profile.as_str().into()),
            ("AR_DATA".into(), data.display().to_string()),
            ("AR_OUT".into(), out.display().to_string()),
            ("AR_BUDGET_S".into(), self.config.budget_seconds().to_string()),
            ("AR_SEED".into(), seed.to_string()),
            ("AR_DEVICE".into(), self.config.experiment.device.as_str().into()),
        ];
        env.extend(image.map(|p| ("AR_IMAGE_TOWER".into(), p.display().to_string())));
        env.extend(text.map(|p| ("AR_TEXT_TOWER".into(), p.display().to_string())));
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

    /// The prepared data of an experiment, building it on first use: one cache for the fixed split, or
    /// one per fold when `experiment.folds` cross-validates.
    pub async fn ensure_data(
        &self,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Vec<Prepared>> {
        let tokenizer = self.tokenizer()?;
        let layout = Layout::resolve(&self.dataset(), &self.config.data)?;
        let key = crate::dataset::cache_key(&layout, self.config.experiment.profile.as_str(), &tokenizer)?;
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
        let bin = match prepare {
            Some(b) => b.clone(),
            None => {
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
    /// train.rs snapshot.
    pub async fn experiment(
        &self,
        run_dir: &Path,
        data: &[Prepared],
        seeds: &[u64],
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Outcome {
        let start = Instant::now();
        let mut o = Outcome {
            status: RunStatus::Ok,
            metrics: None,
            reported: Reported::default(),
            phases: PhaseTimes::default(),
            overran: false,
            message: None,
        };
        let result = self.phases(run_dir, data, seeds, cancel, phase, &mut o).await;
        if let Err(e) = result {
            // Errors here are the server's (cannot spawn, cannot write): the run did not happen properly.
            o.status = if cancel.is_cancelled() { RunStatus::Cancelled } else { RunStatus::Crashed };
            o.message = Some(format!("the server could not complete the run: {e:#}"));
        }
        o.phases.total = start.elapsed().as_secs_f64();
        o
    }

    async fn phases(
        &self,
        run_dir: &Path,
        data: &[Prepared],
        seeds: &[u64],
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
        o: &mut Outcome,
    ) -> Result<()> {
        // 1. Build.
        let _ = phase.send("building the trainer".into());
        let (build, trainer) = self.build("train", &run_dir.join("build"), cancel).await?;
        o.phases.build = Some(build.wall.as_secs_f64());
        if let Some(stop) = stopped(&build, RunStatus::BuildFailed) {
            o.status = stop;
            o.message = Some(match build.end {
                JobEnd::Exited(_) => format!(
                    "build failed: train.rs does not compile. Fix the error below with edit_train (or revert), then run again.\n{}",
                    fenced_tail("compiler output", &build.tail)
                ),
                _ => format!("build {}", build.describe()),
            });
            return Ok(());
        }

        // 2 to 5, for each seed on each prepared split (fold).
        let mut per_seed = vec![];
        for (si, &seed) in seeds.iter().enumerate() {
            let mut per_fold = vec![];
            for (fi, fold) in data.iter().enumerate() {
                let (mut dir, mut label) = (run_dir.to_path_buf(), vec![]);
                if seeds.len() > 1 {
                    dir.push(format!("seed-{seed}"));
                    label.push(format!("seed {seed}, {}/{}", si + 1, seeds.len()));
                }
                if data.len() > 1 {
                    dir.push(format!("fold-{}", fi + 1));
                    label.push(format!("fold {}/{}", fi + 1, data.len()));
                }
                let label = if label.is_empty() { String::new() } else { format!(" ({})", label.join(", ")) };
                std::fs::create_dir_all(&dir)?;
                match self.trial(&dir, &trainer, fold, seed, &label, cancel, phase, o).await? {
                    Some(m) => per_fold.push(m),
                    None => return Ok(()), // o.status and o.message say why
                }
            }
            per_seed.push(Metrics::over_folds(&per_fold));
        }
        o.metrics = Some(Metrics::over_seeds(&per_seed));
        Ok(())
    }

    /// Train on `data`'s training split, embed its validation halves, score. `None` when the trial
    /// stopped (the status and message are in `o`). Phase times add up over folds.
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
        o: &mut Outcome,
    ) -> Result<Option<Metrics>> {
        let trainer = trainer.to_path_buf();
        // 2. Train on the training split only.
        let _ = phase.send(format!("training{label}"));
        let out = run_dir.join("train");
        std::fs::create_dir_all(&out)?;
        let budget = self.config.budget_seconds();
        let limit = Duration::from_secs(budget + self.config.experiment.grace_seconds);
        // The training split only: validation and test are not in the job's file system.
        let read_only = self.phase_mounts(&[&trainer, &data.train_file()])?;
        let env = self.run_env("train", &data.train_file(), &out, seed)?;
        let mut job = self.job("train", trainer.clone(), vec![], env, &out, (limit, 4 << 30));
        job.read_only = read_only;
        let spawned = unix_now();
        let train = self.sandbox.run(&job, cancel).await?;
        add(&mut o.phases.train, train.wall.as_secs_f64());
        o.overran |= train.end == JobEnd::TimedOut || train.wall.as_secs_f64() > budget as f64 + 15.0;
        let summary = read_train_summary(&out);
        o.reported = summary.as_ref().map(reported).unwrap_or_default();
        if let Some(split) =
            summary.as_ref().and_then(|v| TrainSplit::from_summary(v, spawned, train.wall.as_secs_f64()))
        {
            add(&mut o.phases.train_startup, split.startup);
            add(&mut o.phases.train_loop, split.r#loop);
            add(&mut o.phases.train_exit, split.exit);
            add(&mut o.phases.sandbox_start, split.sandbox_start);
            if let Some(d) = split.data_load {
                add(&mut o.phases.data_load, d);
            }
        }
        if let Some(stop) = stopped(&train, RunStatus::Crashed) {
            o.status = stop;
            o.message = Some(match train.end {
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
            });
            return Ok(None);
        }
        let ckpt = out.join("checkpoint.safetensors");
        if std::fs::symlink_metadata(&ckpt).map(|m| !m.file_type().is_file()).unwrap_or(true) {
            o.status = RunStatus::Crashed;
            o.message = Some(
                "train.rs exited without writing checkpoint.safetensors (a regular file) through the harness".into(),
            );
            return Ok(None);
        }

        // 3 to 5. Embed each half of a fresh deal of validation in its own process, score here.
        let eval =
            self.evaluate(&trainer, &data.val_file(), data.val_n, &ckpt, run_dir, seed, label, cancel, phase).await?;
        add(&mut o.phases.embed_images, eval.embed_images);
        add(&mut o.phases.embed_texts, eval.embed_texts);
        add(&mut o.phases.score, eval.score);
        match eval.result {
            Ok(m) => Ok(Some(m)),
            Err((status, message)) => {
                o.status = status;
                o.message = Some(message);
                Ok(None)
            }
        }
    }
}

/// What the two embed phases and the score of one evaluation gave, with their times in seconds.
pub(crate) struct Evaluation {
    pub embed_images: f64,
    pub embed_texts: f64,
    pub score: f64,
    /// The metrics, or why there are none (the status to record and the agent's message).
    pub result: std::result::Result<Metrics, (RunStatus, String)>,
}

impl Runner {
    /// Embeds the evaluation split `split` (`n` pairs) with `trainer` and the checkpoint `ckpt`, and
    /// scores it here. The split is dealt anew into two halves in fresh secret orders; images and texts
    /// are embedded by two sandboxed processes, one after the other, that share nothing they could
    /// signal through: the texts phase gets its own copy of the binary and the checkpoint, and every
    /// page of what both read (libtorch, the towers) is made resident before it starts
    /// (`sandbox::pagecache`). The halves and copies are removed afterwards. Also used by `report --test`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn evaluate(
        &self,
        trainer: &Path,
        split: &Path,
        n: usize,
        ckpt: &Path,
        run_dir: &Path,
        seed: u64,
        label: &str,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Evaluation> {
        let mut eval = Evaluation {
            embed_images: 0.0,
            embed_texts: 0.0,
            score: 0.0,
            result: Err((RunStatus::Crashed, String::new())),
        };
        // Outside both phases' writable folders; removed when the evaluation ends, however it ends.
        let private = run_dir.join("evaluation");
        let _ = std::fs::remove_dir_all(&private);
        let _cleanup = RemoveOnDrop(private.clone());
        let halves = data::deal_halves(split, n, &private.join("halves"))?;
        let copies = private.join("embed-texts");
        std::fs::create_dir_all(&copies)?;
        let (texts_trainer, texts_ckpt) = (copies.join("train"), copies.join("checkpoint.safetensors"));
        std::fs::copy(trainer, &texts_trainer).context("copy the trainer for embed-texts")?;
        std::fs::copy(ckpt, &texts_ckpt).context("copy the checkpoint for embed-texts")?;
        // What both phases read, mounted in each and reset between them: computed once.
        let shared = self.embed_shared()?;
        let mut files = vec![];
        let phases = [
            ("embed-images", trainer, halves.images.as_path(), ckpt),
            ("embed-texts", texts_trainer.as_path(), halves.texts.as_path(), texts_ckpt.as_path()),
        ];
        for (name, trainer, input, ckpt) in phases {
            let _ = phase.send(format!("embedding ({name}){label}"));
            let dir = run_dir.join(name);
            let _ = std::fs::remove_dir_all(&dir);
            let job = self.embed_job(name, trainer, input, ckpt, &shared, &dir, seed)?;
            let r = if name == "embed-images" {
                // Whatever it left in the page cache must not reach embed-texts.
                crate::sandbox::pagecache::run_then_reset(self.sandbox.as_ref(), &job, &shared, cancel).await?
            } else {
                self.sandbox.run(&job, cancel).await?
            };
            let secs = r.wall.as_secs_f64();
            *(if name == "embed-images" { &mut eval.embed_images } else { &mut eval.embed_texts }) = secs;
            if let Some(stop) = stopped(&r, RunStatus::Crashed) {
                // Only the status: embed output could carry validation data.
                let message = format!(
                    "{name}{label} {}; its output is withheld (it may contain evaluation data). Check encode_image/encode_text in train.rs.",
                    r.describe()
                );
                eval.result = Err((stop, message));
                return Ok(eval);
            }
            files.push(dir.join("embeddings.safetensors"));
        }

        let _ = phase.send(format!("scoring{label}"));
        let t = Instant::now();
        let scored = (|| -> Result<Metrics> {
            let img = score::load_embeddings(&files[0], "image", n)?.unshuffle(&halves.pairing.image_order);
            let txt = score::load_embeddings(&files[1], "text", n)?.unshuffle(&halves.pairing.text_order);
            Ok(score::score(&img, &txt)?)
        })();
        eval.score = t.elapsed().as_secs_f64();
        eval.result = scored.map_err(|e| {
            let message = format!("the embeddings{label} cannot be scored: {e:#}. This counts as a crash.");
            (RunStatus::InvalidOutput, message)
        });
        Ok(eval)
    }
}

/// Removes a folder when dropped (the evaluation's private inputs, whatever path the code takes).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Runner {
    /// The sandboxed job of an embed phase (`embed-images` or `embed-texts`) in `dir` (created): `trainer`
    /// embeds `input`, one shuffled half of an evaluation split, with the checkpoint `ckpt`. It mounts
    /// those and `shared` ([`Runner::embed_shared`]) and nothing else: never the other half, never the
    /// pairing.
    #[allow(clippy::too_many_arguments)]
    fn embed_job(
        &self,
        name: &str,
        trainer: &Path,
        input: &Path,
        ckpt: &Path,
        shared: &[PathBuf],
        dir: &Path,
        seed: u64,
    ) -> Result<Job> {
        std::fs::create_dir_all(dir)?;
        let mut env = self.run_env(name, input, dir, seed)?;
        env.push(("AR_CHECKPOINT".into(), ckpt.display().to_string()));
        let t = Duration::from_secs(self.config.experiment.embed_timeout_seconds);
        let mut job = self.job(name, trainer.to_path_buf(), vec![], env, dir, (t, 1 << 30));
        // Not the host's /usr nor the Python environment: only what the two embed phases must share,
        // which is reset between them (sandbox::pagecache).
        job.host_system = false;
        job.read_only = [trainer, input, ckpt].iter().map(|p| p.to_path_buf()).collect();
        job.read_only.extend(shared.iter().cloned());
        Ok(job)
    }

    /// What both embed phases read: libtorch's runtime view and the pretrained towers.
    fn embed_shared(&self) -> Result<Vec<PathBuf>> {
        let mut shared = crate::sandbox::pagecache::runtime_view(&self.pyenv.torch_lib()?)?;
        let (image, text) = self.towers()?;
        shared.extend(image);
        shared.extend(text);
        Ok(shared)
    }
}

/// [`crate::toolchain::make_readable`] once per server for each registry view (a walk of ~20k files).
fn ensure_readable(view: &[PathBuf]) -> Result<()> {
    static DONE: std::sync::Mutex<Vec<Vec<PathBuf>>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap();
    if !done.iter().any(|v| v == view) {
        crate::toolchain::make_readable(view)?;
        done.push(view.to_vec());
    }
    Ok(())
}

/// Adds `secs` to a phase time that may not have started.
fn add(slot: &mut Option<f64>, secs: f64) {
    *slot = Some(slot.unwrap_or(0.0) + secs);
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

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The train phase's wall time split at the landmarks of the harness's timeline (train_summary.json,
/// `eclip_harness::timeline`), with the server's clock at both ends: spawn to first step, the loop,
/// and the rest. Written by the trainer, so clamped into the server-measured wall time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainSplit {
    /// Spawn to the first step.
    pub startup: f64,
    /// Spawn to the harness's start (sandbox set-up, exec, libtorch loaded).
    pub sandbox_start: f64,
    /// Loading the prepared split onto the device.
    pub data_load: Option<f64>,
    /// First step to the end of the last.
    pub r#loop: f64,
    /// Checkpoint, summary, exit.
    pub exit: f64,
}

impl TrainSplit {
    /// From a parsed train_summary.json ([`read_train_summary`]); `None` without a usable timeline.
    pub(crate) fn from_summary(summary: &serde_json::Value, spawned_unix: f64, wall: f64) -> Option<TrainSplit> {
        let t = summary.get("timeline")?;
        let num = |k: &str| t.get(k).and_then(|x| x.as_f64()).filter(|x| x.is_finite() && *x >= 0.0);
        Self::from_marks(
            num("started_unix")? - spawned_unix,
            num("data_loaded_s"),
            num("first_step_s")?,
            num("loop_end_s")?,
            wall,
        )
    }

    /// `started` is the process's harness start relative to the spawn; the marks are relative to it.
    fn from_marks(started: f64, data: Option<f64>, first: f64, end: f64, wall: f64) -> Option<TrainSplit> {
        let clamp = |x: f64| x.clamp(0.0, wall);
        let startup = clamp(started.max(0.0) + first);
        let r#loop = clamp(end - first).min(wall - startup);
        (end >= first).then(|| TrainSplit {
            startup,
            sandbox_start: started.clamp(0.0, startup),
            data_load: data.map(|d| d.min(first)),
            r#loop,
            exit: (wall - startup - r#loop).max(0.0),
        })
    }
}

/// The train phase's `train_summary.json` in `out`, parsed; `None` when missing or unreadable (then
/// nothing is reported).
pub(crate) fn read_train_summary(out: &Path) -> Option<serde_json::Value> {
    let bytes = read_capped(&out.join("train_summary.json"), 64 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the trainer's summary says about itself.
fn reported(v: &serde_json::Value) -> Reported {
    Reported {
        steps: v.get("steps").and_then(|x| x.as_u64()),
        final_loss: v.get("final_loss").and_then(|x| x.as_f64()),
        peak_memory_bytes: v.get("peak_memory_bytes").and_then(|x| x.as_u64()),
        device: v
            .get("device")
            .and_then(|x| x.as_str())
            .map(|s| s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ':').take(16).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_split_adds_up_to_the_wall_time_and_clamps_what_the_trainer_wrote() {
        // Harness up 0.5 s after the spawn, data at 1 s, first step at 2 s, loop end at 12 s; exit at 13 s.
        let s = TrainSplit::from_marks(0.5, Some(1.0), 2.0, 12.0, 13.0).unwrap();
        assert_eq!((s.startup, s.sandbox_start, s.data_load, s.r#loop), (2.5, 0.5, Some(1.0), 10.0));
        assert!((s.exit - 0.5).abs() < 1e-9);
        // A clock skew or a lying trainer cannot make a part negative or longer than the phase.
        let s = TrainSplit::from_marks(-3.0, Some(50.0), 2.0, 500.0, 13.0).unwrap();
        assert_eq!((s.startup, s.sandbox_start, s.data_load, s.r#loop, s.exit), (2.0, 0.0, Some(2.0), 11.0, 0.0));
        assert_eq!(TrainSplit::from_marks(0.1, None, 5.0, 4.0, 13.0), None, "loop end before first step");
    }

    #[test]
    fn train_split_reads_the_summary_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_summary.json");
        let t0 = 1_700_000_000.0;
        let json = serde_json::json!({"steps": 3, "timeline": {"started_unix": t0 + 0.25, "data_loaded_s": 0.5,
            "first_step_s": 1.0, "loop_end_s": 4.0}});
        std::fs::write(&path, json.to_string()).unwrap();
        let summary = read_train_summary(dir.path()).unwrap();
        let s = TrainSplit::from_summary(&summary, t0, 5.0).unwrap();
        assert_eq!((s.startup, s.data_load, s.r#loop, s.exit), (1.25, Some(0.5), 3.0, 0.75));
        assert_eq!(reported(&summary).steps, Some(3));
        std::fs::write(&path, r#"{"steps": 3}"#).unwrap();
        let summary = read_train_summary(dir.path()).unwrap();
        assert_eq!(TrainSplit::from_summary(&summary, t0, 5.0), None, "an older trainer without a timeline");
    }
}
