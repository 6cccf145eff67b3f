//! File helpers with the safety rules of the trust boundary: files that hostile code could have
//! touched are opened with `O_NOFOLLOW`, must be regular files and are read under a size cap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Reads a regular file without following a symlink at its last component, refusing files over `cap`.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {} (symlinks are refused)", path.display()))?;
    let meta = file.metadata().with_context(|| format!("stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if meta.len() > cap {
        bail!("{} is {} bytes, over the cap of {cap}", path.display(), meta.len());
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut buf).with_context(|| format!("read {}", path.display()))?;
    if buf.len() as u64 > cap {
        bail!("{} grew over the cap of {cap} bytes while being read", path.display());
    }
    Ok(buf)
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename over, fsync of
/// the folder. A symlink planted at `path` is replaced, never followed. On any failure the temp file
/// is removed and the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename onto {}", path.display()))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", path.display())));
    }
    // The rename itself survives a power cut only once the folder is synced.
    let _ = fsync_dir(dir);
    Ok(())
}

/// fsyncs a folder (so that a file created or renamed in it survives a power cut).
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether a process with this pid is running (a zombie, dead but not yet reaped, is not).
pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// The state letter and start time (clock ticks after boot) of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.chars().next()?, fields.get(19)?.parse().ok()?))
}

/// This process's identity for lock files: its pid and start time, so that a later process that
/// got the same pid is not taken for it.
pub fn process_identity() -> String {
    let pid = std::process::id();
    format!("{pid} {}", proc_stat(pid).map(|s| s.1).unwrap_or(0))
}

/// Whether the process a [`process_identity`] names is still running.
pub fn identity_alive(identity: &str) -> bool {
    let mut it = identity.split_whitespace();
    let (Some(pid), start) =
        (it.next().and_then(|p| p.parse::<u32>().ok()), it.next().and_then(|s| s.parse::<u64>().ok()))
    else {
        return false;
    };
    match (proc_stat(pid), start) {
        (Some(('Z' | 'X', _)), _) => false,
        (Some((_, now)), Some(start)) => now == start,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The pid in a temp file's name (`.name.tmp-<pid>`, `name.tmp-<pid>`), if it is one.
pub fn temp_file_pid(name: &str) -> Option<u32> {
    let (_, pid) = name.rsplit_once(".tmp-")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the temp files (`*.tmp-<pid>`) in `dir` left by processes that are gone (or by an earlier
/// process that had this one's pid: nothing of ours is in flight at start). Returns what it removed.
pub fn clean_stale_temps(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut removed = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else { return removed };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = temp_file_pid(&name) else { continue };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if (pid == std::process::id() || !pid_alive(pid)) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// The stale temp files [`clean_stale_temps`] would remove, without removing them (for doctor).
pub fn stale_temps(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| temp_file_pid(&e.file_name().to_string_lossy()).is_some_and(|p| !pid_alive(p)))
        .map(|e| e.path())
        .collect()
}

/// Whether an error (anywhere in its chain) is the disk being full (ENOSPC) or a quota (EDQUOT).
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    })
}

/// Reserves `len` bytes of disk from `offset` on in `file` without changing its size
/// (`fallocate(FALLOC_FL_KEEP_SIZE)`), so that appends up to there cannot fail for lack of space.
/// Where the file system cannot reserve, the free space is checked instead.
pub fn reserve(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset as i64, len as i64) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            let st = nix::sys::statvfs::fstatvfs(file).map_err(std::io::Error::from)?;
            if (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64) < len {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }
        _ => Err(e),
    }
}

/// Opens `path` for appending (creating it), refusing symlinks.
pub fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("open {} for append", path.display()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Free bytes on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// One line for a description or message: no control characters, at most `max` characters.
pub fn one_line(s: &str, max: usize) -> std::result::Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("description is empty".into());
    }
    if let Some(c) = t.chars().find(|c| c.is_control()) {
        return Err(format!("description contains a control character (U+{:04X}); use one plain line", c as u32));
    }
    if t.chars().count() > max {
        return Err(format!("description is longer than {max} characters; shorten it"));
    }
    Ok(t.to_string())
}

/// Takes an exclusive advisory lock on `path` (created if missing) and writes `who` into it, so that a
/// refused contender can say who holds it. `Err(holder)` when another process holds the lock: the
/// holder's `who` line. The lock lasts as long as the returned file is open.
pub fn lock_exclusive(path: &Path, who: &str) -> Result<std::result::Result<File, String>> {
    use fs2::FileExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    if f.try_lock_exclusive().is_err() {
        return Ok(Err(std::fs::read_to_string(path).unwrap_or_default().trim().to_string()));
    }
    f.set_len(0)?;
    writeln!(f, "{who}")?;
    Ok(Ok(f))
}
