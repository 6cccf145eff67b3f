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

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename over.
/// A symlink planted at `path` is replaced, never followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename onto {}", path.display()))?;
    Ok(())
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
