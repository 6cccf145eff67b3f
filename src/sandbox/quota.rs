//! The disk quota of a job: what it writes into its writable folders (its scratch dir and outputs;
//! for the build, the growth of the cargo target dir) is measured every [`POLL`] while it runs, and a
//! job past its quota is killed like a timeout, its end recorded as [`JobEnd::QuotaExceeded`], and
//! what it wrote removed. Each file is also capped by RLIMIT_FSIZE, so one write cannot overshoot by
//! more than a file; the private `/tmp` and `/dev/shm` are memory, counted by the memory limit.
//!
//! Measured, not enforced by the file system: no quota support is needed from the host's disk, and
//! the same code serves every backend (the job's folders are host folders in all of them).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::{Job, JobEnd, JobOutcome, Sandbox};

/// How often a running job's folders are measured.
const POLL: Duration = Duration::from_millis(250);

/// Most files and folders a job may create, whatever their size (each costs an inode and a walk).
pub const MAX_ENTRIES: u64 = 200_000;

/// Space and entries in a set of folders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (a sparse file counts what it really takes).
    pub bytes: u64,
    pub entries: u64,
}

/// Measures `dirs`, without following symlinks; stops counting once past `stop_at` entries.
pub fn usage(dirs: &[PathBuf], stop_at: u64) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            u.bytes += meta.blocks() * 512;
            u.entries += 1;
            if u.entries > stop_at {
                return u;
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    u
}

/// Runs `job` on `sandbox` with its disk quota (`job.disk_quota_bytes`, 0 = none) enforced.
pub async fn enforce<S: Sandbox + ?Sized>(sandbox: &S, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
    if job.disk_quota_bytes == 0 {
        return sandbox.execute(job, cancel).await;
    }
    let started = SystemTime::now();
    let dirs = job.writable.clone();
    // The build's target dir starts full: only growth counts.
    let base = tokio::task::spawn_blocking({
        let dirs = dirs.clone();
        move || usage(&dirs, u64::MAX)
    })
    .await?;
    let stop = cancel.child_token();
    let watcher = tokio::spawn({
        let (stop, dirs, quota) = (stop.clone(), dirs.clone(), job.disk_quota_bytes);
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let dirs = dirs.clone();
                let now = tokio::task::spawn_blocking(move || usage(&dirs, base.entries + MAX_ENTRIES)).await.ok()?;
                let grown = Usage {
                    bytes: now.bytes.saturating_sub(base.bytes),
                    entries: now.entries.saturating_sub(base.entries),
                };
                if grown.bytes > quota || grown.entries > MAX_ENTRIES {
                    stop.cancel();
                    return Some(grown);
                }
            }
        }
    });
    let result = sandbox.execute(job, &stop).await;
    stop.cancel();
    let over = watcher.await.ok().flatten();
    let mut outcome = result?;
    if let Some(grown) = over
        && !cancel.is_cancelled()
    {
        outcome.end = JobEnd::QuotaExceeded;
        tracing::warn!(phase = %job.phase, ?grown, quota = job.disk_quota_bytes, "disk quota exceeded");
        let (scratch, others): (Vec<PathBuf>, Vec<PathBuf>) = dirs.into_iter().partition(|d| *d == job.scratch);
        tokio::task::spawn_blocking(move || {
            scratch.iter().for_each(|d| clear(d));
            others.iter().for_each(|d| remove_written_since(d, started));
        })
        .await?;
    }
    Ok(outcome)
}

/// Removes everything inside `dir`, keeping `dir`.
fn clear(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// Removes the files under `dir` modified at or after `since` (a shared folder such as the target
/// dir, where older files are other builds' and stay).
fn remove_written_since(dir: &Path, since: SystemTime) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.modified().is_ok_and(|m| m >= since) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_bytes_and_entries_and_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 1 << 20]).unwrap();
        // A sparse file: 1 GiB long, almost nothing allocated.
        std::fs::File::create(dir.path().join("sparse")).unwrap().set_len(1 << 30).unwrap();
        let u = usage(&[dir.path().to_path_buf()], u64::MAX);
        assert_eq!(u.entries, 3);
        assert!(u.bytes >= 1 << 20 && u.bytes < 2 << 20, "{u:?}");
        assert_eq!(usage(&[dir.path().to_path_buf()], 1).entries, 2, "stops once past the cap");
    }

    #[test]
    fn only_files_written_since_the_start_are_removed_from_a_shared_folder() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        std::fs::write(&old, b"kept").unwrap();
        let t = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(t).unwrap();
        let start = SystemTime::now() - Duration::from_secs(1);
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/new"), b"gone").unwrap();
        remove_written_since(dir.path(), start);
        assert!(old.exists() && !dir.path().join("d/new").exists());
        clear(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
