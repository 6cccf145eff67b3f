//! A child process in its own process group, killed as a group: on a time limit, on cancel, and when
//! its handle is dropped. Used where the server runs a program that is *not* sandboxed (the setup
//! script `scripts/python-env.sh` and whatever it starts, pip included; the `none` backend's jobs), so
//! that stopping it never leaves a grandchild behind, re-parented to PID 1.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// How a group child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEnd {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// A spawned child that leads its own process group (`process_group(0)`).
pub struct GroupChild {
    child: tokio::process::Child,
    pgid: i32,
    reaped: bool,
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(mut cmd: tokio::process::Command, what: &str) -> Result<Self> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("start {what}"))?;
        let pgid = child.id().context("the child exited before it was seen")? as i32;
        Ok(Self { child, pgid, reaped: false })
    }

    pub fn inner(&mut self) -> &mut tokio::process::Child {
        &mut self.child
    }

    /// The process group's id (the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Waits for the leader to exit, for `limit` (None: no limit), or for `cancel`. The whole group is
    /// killed before this returns, whatever the end: what the leader left running ends with it.
    pub async fn wait(&mut self, limit: Option<Duration>, cancel: &CancellationToken) -> Result<GroupEnd> {
        let sleep = async {
            match limit {
                Some(l) => tokio::time::sleep(l).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            // `wait` reaps the leader. A pid cannot be reused while a process group of that id has
            // members, so the kill below reaches this group's leftovers or, when none, nothing.
            status = self.child.wait() => GroupEnd::Exited(status.context("wait for the child")?),
            _ = sleep => GroupEnd::TimedOut,
            _ = cancel.cancelled() => GroupEnd::Cancelled,
        };
        self.kill_group();
        if !matches!(end, GroupEnd::Exited(_)) {
            let _ = self.child.wait().await;
        }
        self.reaped = true;
        Ok(end)
    }

    /// SIGKILL to every process of the group.
    fn kill_group(&self) {
        // SAFETY: kill(2) on a process group this handle created.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        // A dropped wait (the caller's future cancelled) must not leave the group running.
        if !self.reaped {
            self.kill_group();
        }
    }
}

/// An exit status as the code a shell would show (128 + signal for a killed process).
pub fn code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
