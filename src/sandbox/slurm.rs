//! The `slurm` backend: the phases `train.rs` runs in (train, embed-images, embed-texts) become
//! Slurm jobs; everything else (the build, data preparation, `doctor`'s probe) runs in the local
//! sandbox on the server's machine, as with the `local` backend.
//!
//! A job's files travel through `slurm.shared_dir`, a directory the server and the compute nodes see
//! at the same path. Per job, the server makes `<shared_dir>/jobs/<host>-<pid>-<n>-<phase>/`:
//! `files/<absolute path>` holds the job's inputs (hard links where the file system allows, else
//! copies; paths under `slurm.node_paths`, the system paths and any Python environment are the
//! node's own and are not copied) and copies of its writable folders; `spec.json` the job. The batch
//! script runs `autoresearch-mcp sandbox-job spec.json` (a copy of this server's binary, also in
//! the shared directory) on the node, which, in a private mount namespace, binds each staged path
//! back at its original path and runs the job through the **local** sandbox there: the same
//! namespaces, minimal root, Landlock, seccomp, uid nobody, disk quota and timeout as on the
//! server; memory is the smaller of the sandbox's and Slurm's (`--mem`), GPUs those Slurm gave the
//! job (its devices cgroup, and `CUDA_VISIBLE_DEVICES` as Slurm sets it). It writes the outcome to
//! `result.json` and the job's log to `job.log` beside the spec.
//!
//! The server submits with `sbatch --parsable` and follows the job with `squeue --json` (never the
//! human output): COMPLETED gives the sandbox's own outcome; TIMEOUT and DEADLINE a timeout; a
//! cancel from the server is `scancel`; NODE_FAIL, PREEMPTED, BOOT_FAIL or a cancel by anyone else
//! end the job [`JobEnd::Lost`], which no run can turn into a result. The writable folders' regular
//! files and folders are then copied back (never a symlink, FIFO or device the job made), the log
//! too, and the job's folder is removed. Scoring stays in the server.
//!
//! Each job's `--comment` says `autoresearch-mcp host=<host> pid=<server pid> ...`: a starting
//! server cancels the jobs, and removes the folders, of servers on its host that are gone
//! ([`SlurmSandbox::reap_orphans`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::local::{LocalSandbox, TAIL_KEEP};
use super::{BoxFuture, Job, JobEnd, JobOutcome, Sandbox};
use crate::config::SlurmConfig;

/// The phases that run on the cluster; every other phase runs here.
pub const REMOTE_PHASES: &[&str] = &["train", "embed-images", "embed-texts"];
/// What every job's `--comment` starts with.
pub const COMMENT_TAG: &str = "autoresearch-mcp";
/// How long Slurm's own commands may take before the server gives up on one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a job may stay in a terminal-less state after `scancel` before it is reported lost.
const CANCEL_WAIT: Duration = Duration::from_secs(120);
/// How long Slurm may not answer `squeue` before the job is given up as lost (and cancelled).
const UNANSWERED_LIMIT: Duration = Duration::from_secs(300);
/// Slurm's own time limit is a backstop past the sandbox's: this much longer.
const SLURM_TIME_MARGIN_MIN: u64 = 2;

pub struct SlurmSandbox {
    cfg: SlurmConfig,
    /// The build, data preparation and probes run here.
    local: LocalSandbox,
    /// The `autoresearch-mcp` binary.
    helper: PathBuf,
    /// This server's binary, copied into the shared directory once.
    staged_exe: OnceCell<PathBuf>,
}

/// What the server hands the node: the job (its paths as on the server), and which of them are
/// staged under `files`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeSpec {
    pub job: Job,
    pub files: PathBuf,
    pub mounts: Vec<PathBuf>,
}

/// What the node hands back in `result.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeResult {
    /// The sandbox could not be set up on the node (nothing ran).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub end: Option<JobEnd>,
    #[serde(default)]
    pub wall_ms: u64,
    #[serde(default)]
    pub log_truncated: bool,
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    #[serde(default)]
    pub oom_killed: bool,
}

impl SlurmSandbox {
    /// Cheap: no Slurm command runs until [`Sandbox::check`] or the first job.
    pub fn new(cfg: SlurmConfig) -> Result<Self> {
        Self::with_helper(cfg, std::env::current_exe().context("locate the server's own executable")?)
    }

    /// With `helper` as the `autoresearch-mcp` binary (its `sandbox-exec` here, `sandbox-job` on
    /// the node): for callers that are not that binary themselves, such as tests.
    pub fn with_helper(cfg: SlurmConfig, helper: PathBuf) -> Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, local: LocalSandbox::new(helper.clone()), helper, staged_exe: OnceCell::new() })
    }

    fn jobs_dir(&self) -> PathBuf {
        self.cfg.shared_dir.join("jobs")
    }

    /// This binary in the shared directory (named by its size and mtime, so a rebuilt server gets
    /// a fresh copy and a running job's copy is never overwritten).
    async fn exe(&self) -> Result<&PathBuf> {
        self.staged_exe
            .get_or_try_init(|| async {
                let exe = &self.helper;
                let meta = std::fs::metadata(exe).with_context(|| format!("stat {}", exe.display()))?;
                let dir = self.cfg.shared_dir.join("bin");
                std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
                let dst = dir.join(format!("autoresearch-mcp-{}-{}", meta.len(), meta.mtime()));
                if std::fs::metadata(&dst).map(|m| m.len()).ok() != Some(meta.len()) {
                    let tmp = dir.join(format!(".autoresearch-mcp-{}", std::process::id()));
                    let _ = std::fs::remove_file(&tmp);
                    if std::fs::hard_link(exe, &tmp).is_err() {
                        std::fs::copy(exe, &tmp)
                            .with_context(|| format!("copy the server's binary to {}", tmp.display()))?;
                    }
                    std::fs::rename(&tmp, &dst)?;
                }
                Ok(dst)
            })
            .await
    }

    /// Cancels the jobs left by servers of this host that are gone, and removes their job folders.
    /// Returns how many jobs were cancelled.
    pub async fn reap_orphans(&self) -> Result<usize> {
        let host = hostname();
        let jobs = squeue(&[]).await?;
        let mut cancelled = vec![];
        for j in jobs {
            let Some(owner) = Owner::parse(&j.comment()) else { continue };
            if owner.host != host || pid_alive(owner.pid) || j.terminal() {
                continue;
            }
            tracing::warn!(job = j.job_id, pid = owner.pid, "cancelling a Slurm job whose server is gone");
            if scancel(j.job_id).await.is_ok() {
                cancelled.push(j.job_id);
            }
        }
        // Their folders go once the jobs are over (a job being cancelled still writes its outcome).
        let deadline = Instant::now() + CANCEL_WAIT;
        while !cancelled.is_empty() && Instant::now() < deadline {
            let live = squeue(&[]).await.unwrap_or_default();
            if !live.iter().any(|j| cancelled.contains(&j.job_id) && !j.terminal()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for e in std::fs::read_dir(self.jobs_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{host}-")) else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
            if !pid_alive(pid) {
                for _ in 0..5 {
                    if std::fs::remove_dir_all(e.path()).is_ok() || !e.path().exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Ok(cancelled.len())
    }

    async fn run_remote(&self, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}-{}",
            hostname(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            job.phase.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        let dir = self.jobs_dir().join(&name);
        let exe = self.exe().await?.clone();
        let _cleanup = RemoveOnDrop(dir.clone());
        let staged = {
            let (job, dir, node_paths) = (job.clone(), dir.clone(), self.cfg.node_paths.clone());
            tokio::task::spawn_blocking(move || stage(&job, &dir, &node_paths)).await??
        };
        let spec_path = dir.join("spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&staged)?).context("write the job spec")?;
        let script = dir.join("batch.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nexec {} sandbox-job {}\n", shell_quote(&exe), shell_quote(&spec_path)),
        )?;
        let args = self.sbatch_args(job, &dir, &name);
        let start = Instant::now();
        let id = sbatch(&args, &script).await.with_context(|| format!("submit the {} phase to Slurm", job.phase))?;
        tracing::info!(job = id, phase = %job.phase, "submitted to Slurm");
        // Dropped unfinished (the caller went away): the job must not outlive its run.
        let mut guard = CancelOnDrop(Some(id));
        let mut unanswered_since: Option<Instant> = None;

        let poll = Duration::from_secs_f64(self.cfg.poll_seconds);
        // The run's log grows on the server while the job runs (`tail -f` works as with `local`).
        std::fs::write(&job.log, b"").with_context(|| format!("create {}", job.log.display()))?;
        let mut log_done = 0u64;
        let mut running_since: Option<Instant> = None;
        let mut ours: Option<(JobEnd, Instant)> = None; // what we cancelled it for, and when
        let state = loop {
            if ours.is_none() {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let _ = scancel(id).await;
                        ours = Some((JobEnd::Cancelled, Instant::now()));
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
            } else {
                tokio::time::sleep(poll).await;
            }
            let state = match squeue(&["--states=all", "-j", &id.to_string()]).await {
                Ok(jobs) => jobs.into_iter().find(|j| j.job_id == id).map(|j| j.state()),
                // A job Slurm no longer knows (purged, or the controller lost it).
                Err(e) if format!("{e:#}").contains("Invalid job id") => Some("VANISHED".to_string()),
                Err(e) => {
                    tracing::warn!(job = id, "squeue failed, trying again: {e:#}");
                    if unanswered_since.get_or_insert_with(Instant::now).elapsed() > UNANSWERED_LIMIT {
                        let _ = scancel(id).await;
                        Some("UNREACHABLE".to_string())
                    } else {
                        None
                    }
                }
            };
            if state.is_some() {
                unanswered_since = None;
            }
            follow_log(&dir.join("job.log"), &job.log, &mut log_done);
            let Some(state) = state else { continue };
            if is_terminal(&state) {
                break state;
            }
            if state == "RUNNING" && running_since.is_none() {
                running_since = Some(Instant::now());
            }
            // The sandbox on the node enforces the job's limit; this is the backstop if it cannot.
            if let (Some(t), None) = (running_since, &ours)
                && t.elapsed() > job.timeout + Duration::from_secs(60)
            {
                let _ = scancel(id).await;
                ours = Some((JobEnd::TimedOut, Instant::now()));
            }
            if let Some((_, at)) = ours
                && at.elapsed() > CANCEL_WAIT
            {
                break "VANISHED".to_string();
            }
        };
        guard.0 = None;
        let wall = start.elapsed();
        // NFS and friends may show the result a moment after the job ended.
        let mut result = read_result(&dir);
        for _ in 0..10 {
            if result.is_some() || state != "COMPLETED" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            result = read_result(&dir);
        }
        let mut note = format!("slurm: job {id} ended {state}\n");
        let end = match (&ours, state.as_str(), &result) {
            (Some((why, _)), _, _) => *why,
            (None, _, Some(NodeResult { error: Some(e), .. })) => {
                bail!("the Slurm job {id} could not start the sandbox on its node: {e}")
            }
            (None, "COMPLETED", Some(NodeResult { end: Some(end), .. })) => *end,
            (None, "TIMEOUT" | "DEADLINE", _) => JobEnd::TimedOut,
            (None, "OUT_OF_MEMORY", _) => JobEnd::Signaled(9),
            (None, "FAILED", None) => {
                let out = std::fs::read_to_string(dir.join("slurm.out")).unwrap_or_default();
                let tail: String = out.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("the Slurm job {id} failed before its sandbox started; its output:\n{tail}")
            }
            (None, _, _) => {
                note.push_str(
                    "slurm: the job did not finish (node failure, preemption, or cancelled outside the server)\n",
                );
                JobEnd::Lost
            }
        };
        // Outputs and log come back (the job ran on copies).
        let back = {
            let (job, dir) = (job.clone(), dir.clone());
            tokio::task::spawn_blocking(move || bring_back(&job, &dir)).await?
        };
        if let Err(e) = back {
            tracing::warn!(job = id, "copying the job's outputs back failed: {e:#}");
            bail!("the Slurm job {id}'s outputs could not be copied back from {}: {e:#}", dir.display());
        }
        let mut tail = read_tail(&job.log);
        if end != JobEnd::Exited(0) {
            tail.extend_from_slice(note.as_bytes());
        }
        let r = result.unwrap_or(NodeResult {
            error: None,
            end: None,
            wall_ms: 0,
            log_truncated: false,
            peak_memory_bytes: None,
            oom_killed: false,
        });
        Ok(JobOutcome {
            end,
            // The job's own running time when the node measured it; else submit to end.
            wall: if r.wall_ms > 0 && matches!(end, JobEnd::Exited(_) | JobEnd::Signaled(_)) {
                Duration::from_millis(r.wall_ms)
            } else {
                wall
            },
            tail,
            log_truncated: r.log_truncated,
            peak_memory_bytes: r.peak_memory_bytes,
            oom_killed: r.oom_killed || state == "OUT_OF_MEMORY",
        })
    }

    fn sbatch_args(&self, job: &Job, dir: &Path, name: &str) -> Vec<String> {
        let c = &self.cfg;
        let minutes = if c.time_minutes > 0 {
            c.time_minutes
        } else {
            job.timeout.as_secs().div_ceil(60) + SLURM_TIME_MARGIN_MIN
        };
        let mem_mib = if c.memory_gib > 0 { c.memory_gib << 10 } else { (job.limits.memory_bytes >> 20).max(64) };
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=autoresearch-{}", job.phase),
            format!("--comment={}", Owner::comment(job, name)),
            format!("--output={}", dir.join("slurm.out").display()),
            format!("--chdir={}", dir.display()),
            "--export=NONE".into(),
            "--no-requeue".into(),
            "--nodes=1".into(),
            "--ntasks=1".into(),
            format!("--cpus-per-task={}", c.cpus),
            format!("--mem={mem_mib}M"),
            format!("--time={minutes}"),
        ];
        if !c.partition.is_empty() {
            args.push(format!("--partition={}", c.partition));
        }
        if !c.account.is_empty() {
            args.push(format!("--account={}", c.account));
        }
        if !c.gres.is_empty() {
            args.push(format!("--gres={}", c.gres));
        }
        args
    }
}

impl Sandbox for SlurmSandbox {
    fn name(&self) -> &'static str {
        "slurm"
    }

    /// The local sandbox works here (the build runs here), Slurm answers, the shared dir is writable.
    fn check(&self) -> Result<()> {
        self.local.check()?;
        let probe = self.cfg.shared_dir.join(format!(".probe-{}", std::process::id()));
        std::fs::create_dir_all(&self.cfg.shared_dir)
            .and_then(|_| std::fs::write(&probe, b"ok"))
            .with_context(|| format!("slurm.shared_dir {} is not writable", self.cfg.shared_dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let out = std::process::Command::new("squeue")
            .args(["--json", "--states=all", "-j", "1"])
            .output()
            .context("run squeue (is Slurm's client installed? scripts/slurm.sh sets up a single-node one)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        if !text.contains("\"jobs\"") && !err.contains("Invalid job id") {
            bail!("Slurm does not answer `squeue --json`: {}", err.trim());
        }
        Ok(())
    }

    fn execute<'a>(&'a self, job: &'a Job, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<JobOutcome>> {
        if REMOTE_PHASES.contains(&job.phase.as_str()) {
            Box::pin(self.run_remote(job, cancel))
        } else {
            self.local.execute(job, cancel)
        }
    }
}

/// Whose job it is, from its `--comment` (`ws=`, last, is the workspace, or the job's scratch
/// dir outside one).
#[derive(Debug, PartialEq)]
pub struct Owner {
    pub host: String,
    pub pid: i32,
}

impl Owner {
    fn comment(job: &Job, name: &str) -> String {
        let ws = job
            .scratch
            .ancestors()
            .find(|a| a.join(".autoresearch").is_dir())
            .unwrap_or(&job.scratch)
            .display()
            .to_string();
        format!("{COMMENT_TAG} host={} pid={} dir={name} ws={ws}", hostname(), std::process::id())
    }

    pub fn parse(comment: &str) -> Option<Self> {
        let rest = comment.strip_prefix(COMMENT_TAG)?.strip_prefix(' ')?;
        let mut host = None;
        let mut pid = None;
        for w in rest.split(' ') {
            if let Some(h) = w.strip_prefix("host=") {
                host = Some(h.to_string());
            } else if let Some(p) = w.strip_prefix("pid=") {
                pid = p.parse().ok();
            }
        }
        Some(Self { host: host?, pid: pid? })
    }
}

fn hostname() -> String {
    // The kernel's node name: what `hostname` prints, without another nix feature.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether process `pid` runs. A zombie does not: a SIGKILLed server stays one until its parent
/// reaps it, and its jobs must be cancelled meanwhile.
fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may itself hold any byte.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    pid > 0 && state != Some("Z") && state != Some("X")
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `scancel`s the job when dropped while still holding its id.
struct CancelOnDrop(Option<u64>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            let _ = std::process::Command::new("scancel")
                .arg(id.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("AUTORESEARCH_SLURM_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slurm's commands (JSON and --parsable only)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct SqueueOut {
    #[serde(default)]
    jobs: Vec<SqueueJob>,
}

/// One job of `squeue --json`. Its field types moved between Slurm releases (a state is a string in
/// 22.05, a list from 23.02; a comment a string or an object), so they are read loosely.
#[derive(Debug, Deserialize)]
pub struct SqueueJob {
    pub job_id: u64,
    #[serde(default)]
    job_state: serde_json::Value,
    #[serde(default)]
    comment: serde_json::Value,
}

impl SqueueJob {
    pub fn state(&self) -> String {
        match &self.job_state {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(a) => a.first().and_then(|v| v.as_str()).unwrap_or("UNKNOWN").to_string(),
            _ => "UNKNOWN".into(),
        }
    }
    pub fn comment(&self) -> String {
        match &self.comment {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o.get("job").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            _ => String::new(),
        }
    }
    fn terminal(&self) -> bool {
        is_terminal(&self.state())
    }
}

fn is_terminal(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "RESIZING"
            | "STAGE_OUT"
            | "SIGNALING"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "SPECIAL_EXIT"
            | "STOPPED"
            | "UNKNOWN"
    )
}

async fn slurm_cmd(program: &str, args: &[String]) -> Result<String> {
    let out = tokio::time::timeout(
        CALL_TIMEOUT,
        tokio::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{program} did not answer in {} s", CALL_TIMEOUT.as_secs()))?
    .with_context(|| format!("run {program} (is Slurm's client installed?)"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `squeue --json` with `args`: the jobs it lists.
pub async fn squeue(args: &[&str]) -> Result<Vec<SqueueJob>> {
    let mut a = vec!["--json".to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    let out = slurm_cmd("squeue", &a).await?;
    let parsed: SqueueOut = serde_json::from_str(&out).context("parse squeue --json")?;
    Ok(parsed.jobs)
}

async fn sbatch(args: &[String], script: &Path) -> Result<u64> {
    let mut a = args.to_vec();
    a.push(script.display().to_string());
    let out = slurm_cmd("sbatch", &a).await?;
    // --parsable: "<id>" or "<id>;<cluster>".
    let id = out.trim().split(';').next().unwrap_or_default();
    id.parse().with_context(|| format!("sbatch --parsable printed {:?}, not a job id", out.trim()))
}

pub async fn scancel(id: u64) -> Result<()> {
    slurm_cmd("scancel", &[id.to_string()]).await.map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Staging: server side
// ---------------------------------------------------------------------------------------------

/// Whether the node provides `p` itself (not copied per job): system paths, `node_paths`, devices,
/// and anything inside a Python environment (a folder with `pyvenv.cfg`, e.g. libtorch's).
fn node_provided(p: &Path, node_paths: &[PathBuf]) -> bool {
    super::root::SYSTEM_READ_ONLY.iter().any(|s| p.starts_with(s))
        || ["/dev", "/proc", "/sys"].iter().any(|s| p.starts_with(s))
        || node_paths.iter().any(|n| p.starts_with(n))
        || p.ancestors().any(|a| a.join("pyvenv.cfg").is_file())
}

/// Copies (or links) the job's files into `dir/files` and returns the node's spec.
fn stage(job: &Job, dir: &Path, node_paths: &[PathBuf]) -> Result<NodeSpec> {
    let files = dir.join("files");
    std::fs::create_dir_all(&files).with_context(|| format!("create {}", files.display()))?;
    // The staged validation halves and checkpoints are no one else's business on a shared file
    // system. (The job reaches its files through bind mounts, which this mode does not stop.)
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restrict {}", dir.display()))?;
    let under = |p: &Path| files.join(p.strip_prefix("/").unwrap_or(p));
    let mut mounts = vec![];
    let mut read_only: Vec<PathBuf> = job.read_only.clone();
    read_only.push(job.program.clone());
    for p in read_only {
        if node_provided(&p, node_paths) || mounts.iter().any(|m: &PathBuf| p.starts_with(m)) {
            continue;
        }
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        copy_tree(&p, &under(&p), true).with_context(|| format!("stage {}", p.display()))?;
        mounts.push(p);
    }
    // Writable folders are copies (a link would let the job change the server's file).
    let mut writable = job.writable.clone();
    if !writable.contains(&job.scratch) {
        writable.push(job.scratch.clone());
    }
    for p in writable {
        let dst = under(&p);
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst)?;
        copy_tree(&p, &dst, false).with_context(|| format!("stage {}", p.display()))?;
        if !mounts.contains(&p) {
            mounts.push(p);
        }
    }
    let mut node_job = job.clone();
    node_job.log = dir.join("job.log");
    Ok(NodeSpec { job: node_job, files, mounts })
}

/// Mirrors `src` at `dst`: folders, regular files (hard links when `link` and possible, else
/// copies), symlinks as symlinks; FIFOs, sockets and devices are left out.
fn copy_tree(src: &Path, dst: &Path, link: bool) -> Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if ft.is_symlink() {
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        std::fs::create_dir_all(dst)?;
        std::fs::set_permissions(dst, meta.permissions())?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()), link)?;
        }
    } else if ft.is_file() {
        let _ = std::fs::remove_file(dst);
        if !(link && std::fs::hard_link(src, dst).is_ok()) {
            std::fs::copy(src, dst)?;
        }
    }
    Ok(())
}

/// Copies the staged writable folders' regular files and folders back to the server's, and the log.
fn bring_back(job: &Job, dir: &Path) -> Result<()> {
    let files = dir.join("files");
    let mut writable = job.writable.clone();
    if !writable.contains(&job.scratch) {
        writable.push(job.scratch.clone());
    }
    for p in &writable {
        let staged = files.join(p.strip_prefix("/").unwrap_or(p));
        copy_back(&staged, p)?;
    }
    let log = dir.join("job.log");
    if log.is_file() {
        std::fs::copy(&log, &job.log).with_context(|| format!("copy the job's log to {}", job.log.display()))?;
    } else {
        std::fs::write(&job.log, b"")?;
    }
    Ok(())
}

/// Regular files and folders only, never following a link; a file the job replaced by something
/// else is removed on the server's side rather than followed.
fn copy_back(staged: &Path, dst: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(staged) else { return Ok(()) };
    std::fs::create_dir_all(dst)?;
    for e in rd.flatten() {
        let (src, to) = (e.path(), dst.join(e.file_name()));
        let Ok(ft) = e.file_type() else { continue };
        let existing = std::fs::symlink_metadata(&to).ok();
        if ft.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                std::fs::remove_file(&to)?;
            }
            copy_back(&src, &to)?;
        } else if ft.is_file() {
            if let Some(m) = existing {
                if m.is_dir() {
                    std::fs::remove_dir_all(&to)?;
                } else {
                    std::fs::remove_file(&to)?;
                }
            }
            std::fs::copy(&src, &to).with_context(|| format!("copy back {}", to.display()))?;
        }
    }
    Ok(())
}

/// Appends what the node added to its log since `done` bytes to the server's copy.
fn follow_log(staged: &Path, log: &Path, done: &mut u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Ok(mut f) = std::fs::File::open(staged) else { return };
    if f.metadata().map(|m| m.len()).unwrap_or(0) <= *done || f.seek(SeekFrom::Start(*done)).is_err() {
        return;
    }
    let mut buf = vec![];
    let Ok(n) = f.read_to_end(&mut buf) else { return };
    if let Ok(mut out) = std::fs::OpenOptions::new().append(true).open(log)
        && out.write_all(&buf).is_ok()
    {
        *done += n as u64;
    }
}

fn read_result(dir: &Path) -> Option<NodeResult> {
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).ok()?).ok()
}

fn read_tail(log: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_KEEP as u64)));
    let mut buf = vec![];
    let _ = f.read_to_end(&mut buf);
    buf
}

// ---------------------------------------------------------------------------------------------
// On the compute node: `autoresearch-mcp sandbox-job <spec.json>`
// ---------------------------------------------------------------------------------------------

/// Entry point on the node; returns the process's exit code. The outcome goes to `result.json`
/// beside the spec (0: the sandbox ran, whatever the job did; 1: it could not be set up).
pub fn job_main(spec_path: &Path) -> i32 {
    let dir = spec_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let result = node_run(spec_path).unwrap_or_else(|e| {
        eprintln!("sandbox-job: {e:#}");
        NodeResult {
            error: Some(format!("{e:#}")),
            end: None,
            wall_ms: 0,
            log_truncated: false,
            peak_memory_bytes: None,
            oom_killed: false,
        }
    });
    let failed = result.error.is_some();
    let tmp = dir.join("result.json.tmp");
    let written = serde_json::to_vec(&result)
        .map_err(anyhow::Error::from)
        .and_then(|b| std::fs::write(&tmp, b).map_err(Into::into))
        .and_then(|_| std::fs::rename(&tmp, dir.join("result.json")).map_err(Into::into));
    if let Err(e) = written {
        eprintln!("sandbox-job: write result.json: {e:#}");
        return 1;
    }
    i32::from(failed)
}

fn node_run(spec_path: &Path) -> Result<NodeResult> {
    let spec: NodeSpec = serde_json::from_slice(&std::fs::read(spec_path).context("read the job spec")?)
        .context("parse the job spec")?;
    bind_staged(&spec).context("bind the staged files at their paths")?;
    let mut job = spec.job;
    // GPUs and memory as Slurm granted them. The server's choice of GPUs (its own machine's) means
    // nothing here: with GPUs from Slurm the job gets the node's NVIDIA nodes, of which Slurm's
    // devices cgroup lets it open only its own, and CUDA_VISIBLE_DEVICES as Slurm set it; without
    // any, no GPU node at all.
    job.env.retain(|(k, _)| !matches!(k.as_str(), "CUDA_VISIBLE_DEVICES" | "CUDA_DEVICE_ORDER" | "SLURM_JOB_GPUS"));
    let slurm_gpus = std::env::var("SLURM_JOB_GPUS").ok().filter(|g| !g.trim().is_empty());
    job.gpus = if slurm_gpus.is_some() { super::gpus::Gpus::All } else { super::gpus::Gpus::none() };
    for k in ["CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"] {
        if let Ok(v) = std::env::var(k) {
            job.env.push((k.into(), v));
        }
    }
    if let Some(mib) = std::env::var("SLURM_MEM_PER_NODE").ok().and_then(|v| v.parse::<u64>().ok()) {
        job.limits.memory_bytes = job.limits.memory_bytes.min(mib << 20);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start a runtime")?;
    let parent = slurm_cgroup_parent()?;
    rt.block_on(async {
        let local = LocalSandbox::from_current_exe()?.with_cgroup_parent(parent);
        let cancel = CancellationToken::new();
        // scancel sends SIGTERM first: stop the job through its cgroup and report it cancelled.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let c = cancel.clone();
        tokio::spawn(async move {
            term.recv().await;
            c.cancel();
        });
        let out = local.run(&job, &cancel).await?;
        Ok(NodeResult {
            error: None,
            end: Some(out.end),
            wall_ms: out.wall.as_millis() as u64,
            log_truncated: out.log_truncated,
            peak_memory_bytes: out.peak_memory_bytes,
            oom_killed: out.oom_killed,
        })
    })
}

/// On cgroup v2, the folder of this process's own cgroup's parent (Slurm's `.../job_<id>/step_batch/
/// user`): the job's cgroup goes beside this process's, inside Slurm's job, so the device program and
/// memory limit Slurm attached there still hold for it (on v2 a cgroup at the root would escape them).
/// None on v1, where the job keeps Slurm's devices cgroup (the sandbox moves it only in memory, pids,
/// cpu and freezer).
fn slurm_cgroup_parent() -> Result<Option<PathBuf>> {
    if super::cgroup::Cgroup::detect()? != "v2" {
        return Ok(None);
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).context("no v2 entry in /proc/self/cgroup")?;
    let parent = Path::new(path).parent().filter(|p| *p != Path::new("/")).with_context(|| {
        format!("this job's cgroup {path} is at the root: Slurm's cgroup/v2 plugin is not confining it; refusing to run outside it")
    })?;
    Ok(Some(Path::new("/sys/fs/cgroup").join(parent.strip_prefix("/").unwrap_or(parent))))
}

/// In a private mount namespace (this process is still single-threaded), binds each staged path
/// over its original path, so the job and the local sandbox see the server's paths.
fn bind_staged(spec: &NodeSpec) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare the mount namespace (run as root)")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("make mounts private")?;
    let mut mounts = spec.mounts.clone();
    mounts.sort_by_key(|p| p.components().count());
    for target in &mounts {
        let src = spec.files.join(target.strip_prefix("/").unwrap_or(target));
        let Ok(meta) = std::fs::symlink_metadata(&src) else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
        } else if std::fs::symlink_metadata(target).is_err() {
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::File::create(target).with_context(|| format!("create {}", target.display()))?;
        }
        mount(Some(&src), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .with_context(|| format!("bind {} at {}", src.display(), target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_comments_and_nothing_else() {
        assert_eq!(
            Owner::parse("autoresearch-mcp host=vm pid=42 dir=vm-42-0-train ws=/a b"),
            Some(Owner { host: "vm".into(), pid: 42 })
        );
        assert_eq!(Owner::parse("someone else's job host=vm pid=42"), None);
        assert_eq!(Owner::parse("autoresearch-mcp host=vm"), None);
        assert_eq!(Owner::parse(""), None);
    }

    #[test]
    fn squeue_json_of_old_and_new_slurm_is_read() {
        let old = r#"{"jobs":[{"job_id":7,"job_state":"COMPLETED","comment":"autoresearch-mcp host=h pid=1"}]}"#;
        let new = r#"{"jobs":[{"job_id":8,"job_state":["NODE_FAIL"],"comment":{"job":"x"}}]}"#;
        let a: SqueueOut = serde_json::from_str(old).unwrap();
        let b: SqueueOut = serde_json::from_str(new).unwrap();
        assert_eq!(
            (a.jobs[0].state(), a.jobs[0].comment()),
            ("COMPLETED".into(), "autoresearch-mcp host=h pid=1".into())
        );
        assert_eq!((b.jobs[0].state(), b.jobs[0].comment()), ("NODE_FAIL".into(), "x".into()));
        assert!(
            is_terminal("NODE_FAIL") && is_terminal("PREEMPTED") && !is_terminal("PENDING") && !is_terminal("RUNNING")
        );
    }

    #[test]
    fn staging_links_inputs_copies_outputs_and_brings_back_only_files() {
        let t = tempfile::tempdir().unwrap();
        let input = t.path().join("in/data.bin");
        let out = t.path().join("run/train");
        std::fs::create_dir_all(input.parent().unwrap()).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(&input, b"data").unwrap();
        let job = Job {
            phase: "train".into(),
            program: "/bin/sh".into(),
            args: vec![],
            env: vec![],
            cwd: out.clone(),
            scratch: out.clone(),
            timeout: Duration::from_secs(5),
            log: t.path().join("run/train.log"),
            log_cap: 1 << 20,
            max_file_bytes: 1 << 20,
            host_system: true,
            read_only: vec![input.clone(), "/usr/lib".into()],
            writable: vec![out.clone()],
            limits: super::super::cgroup::Limits { memory_bytes: 1 << 30, pids: 64, cpus: 0.0 },
            unprivileged: true,
            disk_quota_bytes: 0,
            gpus: Default::default(),
        };
        let dir = t.path().join("shared/jobs/x");
        let spec = stage(&job, &dir, &[]).unwrap();
        assert_eq!(spec.mounts, vec![input.clone(), out.clone()], "system paths are the node's own");
        let staged_in = spec.files.join(input.strip_prefix("/").unwrap());
        assert_eq!(std::fs::metadata(&staged_in).unwrap().ino(), std::fs::metadata(&input).unwrap().ino());
        assert_eq!(spec.job.log, dir.join("job.log"));
        // What the job leaves in its staged folder: a file, a folder, a symlink and a FIFO.
        let staged_out = spec.files.join(out.strip_prefix("/").unwrap());
        std::fs::write(staged_out.join("checkpoint"), b"ckpt").unwrap();
        std::fs::create_dir_all(staged_out.join("sub")).unwrap();
        std::fs::write(staged_out.join("sub/x"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", staged_out.join("link")).unwrap();
        nix::unistd::mkfifo(&staged_out.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(dir.join("job.log"), b"hello\n").unwrap();
        bring_back(&job, &dir).unwrap();
        assert_eq!(std::fs::read(out.join("checkpoint")).unwrap(), b"ckpt");
        assert_eq!(std::fs::read(out.join("sub/x")).unwrap(), b"x");
        assert!(
            std::fs::symlink_metadata(out.join("link")).is_err()
                && std::fs::symlink_metadata(out.join("fifo")).is_err()
        );
        assert_eq!(read_tail(&job.log), b"hello\n");
    }
}
