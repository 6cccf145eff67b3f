//! Landlock, a second layer under the minimal root: even if a bind mount were wrong, the job can
//! read and execute only the same allowlist and write only its writable folders and private tmpfs
//! mounts. Applied best-effort: a kernel without Landlock still gets the minimal root, and
//! `doctor` reports which it is.

use std::path::PathBuf;

use anyhow::Result;
use landlock::{ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, path_beneath_rules};

use super::Job;
use super::root::SYSTEM_READ_ONLY;

/// Restricts the calling thread (inside the minimal root, before exec). Returns whether the
/// kernel enforced the ruleset fully.
pub fn restrict(job: &Job) -> Result<RulesetStatus> {
    let abi = ABI::V5;
    let system: &[&str] = if job.host_system { SYSTEM_READ_ONLY } else { &[] };
    let mut read: Vec<PathBuf> = system.iter().map(PathBuf::from).collect();
    read.extend(job.read_only.iter().cloned());
    read.extend(["/proc", "/dev"].map(PathBuf::from));
    let mut write: Vec<PathBuf> = job.writable.clone();
    write.extend(["/tmp", "/dev/shm", "/dev/null", "/dev/full", "/dev/zero"].map(PathBuf::from));
    write.extend(
        std::fs::read_dir("/dev")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().starts_with("/dev/nvidia")),
    );
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&read, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(&write, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(status.ruleset)
}
