//! Where code that `train.rs` can influence runs: the build, the training and the two embed phases.
//! One interface, sibling backends: `local` (namespaces), `docker`, and `none` (no isolation at all,
//! for `unsandboxed-experiment` only). A job's failure (non-zero exit, timeout, cancel) is an outcome,
//! never an error; an error means the sandbox itself could not be set up, and then nothing ran.

pub mod cgroup;
pub mod docker;
pub mod gpus;
pub mod landlock;
pub mod local;
pub mod none;
pub mod pagecache;
pub mod quota;
pub mod root;
pub mod seccomp;
pub mod slurm;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio_util::sync::CancellationToken;

/// One process to run isolated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// `build`, `train`, `embed-images`, `embed-texts`, `prepare`: for logs and messages.
    pub phase: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment: nothing of the server's own environment is inherited.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The job's scratch directory (its private TMPDIR and HOME live inside).
    pub scratch: PathBuf,
    pub timeout: Duration,
    /// Where stdout and stderr go, capped at `log_cap` bytes on disk.
    pub log: PathBuf,
    pub log_cap: u64,
    /// RLIMIT_FSIZE: largest file the job may write.
    pub max_file_bytes: u64,
    /// Whether the host's system paths ([`root::SYSTEM_READ_ONLY`]: `/usr`, `/lib`, …) are bound
    /// read-only; when not, `read_only` must hold every file the program needs (the embed phases:
    /// [`pagecache::runtime_view`]).
    pub host_system: bool,
    /// What the job may read (besides system libraries): files or folders, bound read-only.
    pub read_only: Vec<PathBuf>,
    /// What the job may write: folders bound read-write (the scratch dir is always one).
    pub writable: Vec<PathBuf>,
    /// Memory (swap included), pids and CPU limits of the job's cgroup.
    pub limits: cgroup::Limits,
    /// Run as uid/gid nobody (when the server is root); its writable folders are handed to it.
    pub unprivileged: bool,
    /// Most bytes the job may add to its writable folders (0 = no quota): see [`quota`].
    pub disk_quota_bytes: u64,
    /// The NVIDIA GPUs the job may use ([`gpus`]): their device nodes only, and CUDA told which.
    #[serde(default)]
    pub gpus: gpus::Gpus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "code")]
pub enum JobEnd {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled,
    /// Killed for writing more than its disk quota; what it wrote was removed.
    QuotaExceeded,
    /// Its Slurm job ended without finishing: node failure, preemption, boot failure, or cancelled
    /// by someone other than this server. Never a success, whatever the job printed.
    Lost,
}

#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub end: JobEnd,
    pub wall: Duration,
    /// The last bytes the job printed (uncleaned: see [`crate::untrusted`] before showing them).
    pub tail: Vec<u8>,
    pub log_truncated: bool,
    /// Peak memory of the whole job as its cgroup measured it.
    pub peak_memory_bytes: Option<u64>,
    /// The kernel killed a process of the job for exceeding the memory limit.
    pub oom_killed: bool,
}

impl JobOutcome {
    pub fn success(&self) -> bool {
        self.end == JobEnd::Exited(0)
    }
    pub fn describe(&self) -> String {
        match self.end {
            _ if self.oom_killed => "killed for exceeding its memory limit".into(),
            JobEnd::Exited(c) => format!("exited with status {c}"),
            JobEnd::Signaled(s) => format!("killed by signal {s}"),
            JobEnd::TimedOut => format!("killed after its {} s limit", self.wall.as_secs()),
            JobEnd::Cancelled => "cancelled".into(),
            JobEnd::QuotaExceeded => "killed: disk quota exceeded (what it wrote was removed)".into(),
            JobEnd::Lost => "lost: its Slurm job ended before it finished (node failure, preemption, boot failure, \
                             or cancelled outside the server); nothing it produced is used"
                .into(),
        }
    }
}

/// Creates the job's private TMPDIR and HOME inside its scratch dir and, for a job that runs as
/// nobody under a root server, hands it its writable folders (fresh ones, made by the server).
pub fn prepare_scratch(job: &Job) -> anyhow::Result<()> {
    use anyhow::Context;
    let private = [job.scratch.join("tmp"), job.scratch.join("home")];
    for d in &private {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    if job.unprivileged && nix::unistd::geteuid().is_root() {
        for d in job.writable.iter().chain(&private) {
            hand_over(d).with_context(|| format!("hand {} to nobody", d.display()))?;
        }
    }
    Ok(())
}

/// Makes `dir` and everything in it nobody's (a shared folder such as the build's target dir may
/// hold files a root build left), touching only what is not already.
fn hand_over(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.uid() != local::NOBODY || meta.gid() != local::NOBODY {
            std::os::unix::fs::lchown(&p, Some(local::NOBODY), Some(local::NOBODY))?;
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p)?.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Sandbox: Send + Sync {
    fn name(&self) -> &'static str;
    /// Checks that isolation can be established here; the message says what is missing.
    fn check(&self) -> anyhow::Result<()>;
    /// Whether jobs are isolated from the host and each other. Only the `none` backend says no; with
    /// it, the measures that keep one phase from signalling the next (the page-cache reset) are skipped.
    fn isolates(&self) -> bool {
        true
    }
    /// Runs the job as this backend does; callers use [`Sandbox::run`], which adds the disk quota.
    fn execute<'a>(&'a self, job: &'a Job, cancel: &'a CancellationToken) -> BoxFuture<'a, anyhow::Result<JobOutcome>>;
    /// Runs the job with its disk quota enforced ([`quota::enforce`]).
    fn run<'a>(&'a self, job: &'a Job, cancel: &'a CancellationToken) -> BoxFuture<'a, anyhow::Result<JobOutcome>> {
        Box::pin(quota::enforce(self, job, cancel))
    }
}

/// The backend `autoresearch.toml` names, the one place it is chosen (`serve`, `run`, `report --test`).
/// With `reap`, containers and Slurm jobs a server that died left behind are removed in the
/// background (the docker and slurm backends; the local one's leftovers are reaped per run by their
/// cgroups).
pub fn configured(full: &crate::config::Config, reap: bool) -> anyhow::Result<std::sync::Arc<dyn Sandbox>> {
    use crate::config::Backend;
    let config = &full.sandbox;
    Ok(match config.backend {
        Backend::Slurm => {
            let slurm = std::sync::Arc::new(slurm::SlurmSandbox::new(full.slurm.clone())?);
            let s = slurm.clone();
            reap_in_background(reap, "cancelled Slurm jobs", "Slurm jobs", async move { s.reap_orphans().await });
            slurm
        }
        Backend::Local => std::sync::Arc::new(local::LocalSandbox::from_current_exe()?),
        Backend::Docker => {
            let docker = std::sync::Arc::new(docker::DockerSandbox::new(config.docker_image.clone())?);
            let d = docker.clone();
            reap_in_background(reap, "removed containers", "containers", async move { d.reap_orphans().await });
            docker
        }
    })
}

/// With `reap` and a runtime to run on, `sweep` (a backend's `reap_orphans`: how many it removed)
/// runs in the background and says what it did (`done`) or could not look for (`what`).
fn reap_in_background(
    reap: bool,
    done: &'static str,
    what: &'static str,
    sweep: impl Future<Output = anyhow::Result<usize>> + Send + 'static,
) {
    if let (true, Ok(rt)) = (reap, tokio::runtime::Handle::try_current()) {
        rt.spawn(async move {
            match sweep.await {
                Ok(n) if n > 0 => tracing::warn!(n, "{done} left by a server that died"),
                Ok(_) => {}
                Err(e) => tracing::warn!("could not look for orphan {what}: {e:#}"),
            }
        });
    }
}
