//! The `none` backend: **no isolation at all.** A job runs as a plain child process of the server, with
//! the invoking user's rights, file system and network; its `read_only`, `writable`, resource limits and
//! `unprivileged` are ignored. What it keeps from the other backends: the cleared environment (only
//! the job's `env`), its working folder, the log (capped) and tail, the time limit and the cancel, and
//! the whole-tree kill: the job leads its own process group, killed as a group at the limit, on cancel
//! and when it exits (whatever it left running ends with it; a daemon that calls `setsid` escapes, as
//! it would from any unsandboxed program).
//!
//! Only `unsandboxed-experiment` uses it (benchmark and GPU machines without the sandbox's
//! prerequisites); `serve`, `run` and every MCP tool never do.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::local::LogSink;
use super::{BoxFuture, Job, JobEnd, JobOutcome, Sandbox};
use crate::child::{GroupChild, GroupEnd};

/// Runs jobs unisolated. `echo`: also copy the job's output to the server's stderr as it comes.
pub struct NoSandbox {
    pub echo: bool,
}

impl Sandbox for NoSandbox {
    fn name(&self) -> &'static str {
        "none"
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn isolates(&self) -> bool {
        false
    }

    fn execute<'a>(&'a self, job: &'a Job, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<JobOutcome>> {
        Box::pin(self.run_job(job, cancel))
    }
}

impl NoSandbox {
    async fn run_job(&self, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
        // The job's private TMPDIR and HOME, as the sandboxes make them (never handed to another user).
        for d in [job.scratch.join("tmp"), job.scratch.join("home")] {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
        let mut cmd = tokio::process::Command::new(&job.program);
        cmd.args(&job.args)
            .env_clear()
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&job.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = GroupChild::spawn(cmd, &format!("{} ({})", job.program.display(), job.phase))?;
        let sink = Arc::new(Mutex::new(LogSink::create(&job.log, job.log_cap)?));
        let out = child.inner().stdout.take().context("stdout")?;
        let err = child.inner().stderr.take().context("stderr")?;
        let readers = [self.reader(out, sink.clone()), self.reader(err, sink.clone())];
        let end = match child.wait(Some(job.timeout), cancel).await? {
            GroupEnd::Exited(status) => match crate::child::code(status) {
                c if status.code().is_none() => JobEnd::Signaled(c - 128),
                c => JobEnd::Exited(c),
            },
            GroupEnd::TimedOut => JobEnd::TimedOut,
            GroupEnd::Cancelled => JobEnd::Cancelled,
        };
        let wall = start.elapsed();
        for r in readers {
            // The group is dead, so the pipes are closed; a daemon that escaped it may hold them.
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        Ok(sink.lock().unwrap().finish(end, wall, None, false))
    }

    /// Copies a pipe into the log (and to stderr when echoing).
    fn reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
        &self,
        r: R,
        sink: Arc<Mutex<LogSink>>,
    ) -> tokio::task::JoinHandle<()> {
        if !self.echo {
            return super::local::spawn_reader(r, sink);
        }
        let mut r = r;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sink.lock().unwrap().push(&buf[..n]);
                        let _ = std::io::Write::write_all(&mut std::io::stderr(), &buf[..n]);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &std::path::Path, script: &str, timeout: Duration) -> Job {
        Job {
            phase: "test".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: dir.to_path_buf(),
            scratch: dir.to_path_buf(),
            timeout,
            log: dir.join("job.log"),
            log_cap: 1 << 20,
            max_file_bytes: 1 << 20,
            host_system: true,
            read_only: vec![],
            writable: vec![],
            limits: super::super::cgroup::Limits { memory_bytes: 0, pids: 0, cpus: 0.0 },
            unprivileged: false,
            disk_quota_bytes: 0,
            gpus: Default::default(),
        }
    }

    /// Whether `pid` is a live process (a zombie waiting for its reaper counts as dead).
    fn alive(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
        matches!(state, Some(s) if s != "Z" && s != "X")
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_and_exits_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sb = NoSandbox { echo: false };
        let cancel = CancellationToken::new();
        let ok = sb.run(&job(dir.path(), "echo hello; exit 3", Duration::from_secs(10)), &cancel).await.unwrap();
        assert_eq!(ok.end, JobEnd::Exited(3));
        assert!(String::from_utf8_lossy(&ok.tail).contains("hello"));
        // A grandchild in the background, then the job hangs: both must be gone after the timeout.
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display());
        let r = sb.run(&job(dir.path(), &script, Duration::from_millis(500)), &cancel).await.unwrap();
        assert_eq!(r.end, JobEnd::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(pid), "the grandchild {pid} outlived the job");
    }
}
