//! The page cache between the two embed phases (one holds the images, the other the texts of an
//! evaluation split; no code may hold both). They run one after the other, but a file both can read
//! keeps in the page cache which of its pages the first touched or evicted, and the second can read
//! that back (`mincore`, `RWF_NOWAIT`, fault counts, or the time a read takes).
//!
//! So the two phases share as little as possible and the rest is reset in between:
//! - each gets its own copy of the binary, the checkpoint and its input (see `Runner::evaluate`);
//! - neither sees the host's `/usr` or the Python environment: their file system holds only the
//!   [`runtime_view`] (the dynamic loader's cache, libtorch and every library it loads or may load,
//!   the GPU driver's libraries) and the pretrained towers;
//! - after the first phase is gone, every page of every file of that shared set is made resident
//!   ([`make_resident`]): a state that does not depend on what the first phase did.
//!
//! Resetting to "all resident" rather than "all evicted" keeps the second phase from loading
//! libtorch from disk. What is left (the order of pages on the kernel's LRU lists, visible only under
//! memory pressure, and the dentry and inode caches, visible only by timing) is in the README.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::{Job, JobOutcome, Sandbox};

/// Files that configure the dynamic loader and name users; with the libraries, what a binary needs.
const LOADER_FILES: &[&str] =
    &["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"];

/// Where GPU drivers keep their user-space libraries (libcuda, libnvidia-*), dlopened at run time.
const DRIVER_DIRS: &[&str] =
    &["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib"];

/// Runs `job` (the first embed phase) on `sandbox`, then resets the page cache of every file it
/// could read and the next phase can read too: `shared`.
pub async fn run_then_reset(
    sandbox: &dyn Sandbox,
    job: &Job,
    shared: &[PathBuf],
    cancel: &CancellationToken,
) -> Result<JobOutcome> {
    let outcome = sandbox.run(job, cancel).await?;
    let files = shared.to_vec();
    let pages = tokio::task::spawn_blocking(move || make_resident(&files)).await??;
    tracing::debug!(phase = %job.phase, pages, "page cache reset: every shared page resident");
    Ok(outcome)
}

/// The files an embed phase needs besides its own inputs and the towers, for libtorch in
/// `torch_lib`: every library of `torch_lib`, the libraries they load (as `ldd` resolves them, with
/// their symlinks' targets), every library of the NVIDIA wheels beside torch (cuDNN and cuBLAS dlopen
/// theirs by name), the GPU driver's libraries, the loader's files and the CPU topology. Computed
/// once per `torch_lib`.
pub fn runtime_view(torch_lib: &Path) -> Result<Vec<PathBuf>> {
    /// Views already computed, by libtorch folder.
    type Views = Vec<(PathBuf, Vec<PathBuf>)>;
    static CACHE: OnceLock<Mutex<Views>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, v)) = cache.lock().unwrap().iter().find(|(k, _)| k == torch_lib) {
        return Ok(v.clone());
    }
    let is_lib = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".so"));
    let mut files: Vec<PathBuf> = list_files(torch_lib).into_iter().filter(is_lib).collect();
    let libs = files.clone();
    let out = std::process::Command::new("ldd")
        .args(&libs)
        .env("LD_LIBRARY_PATH", torch_lib)
        .output()
        .context("run ldd on libtorch (Debian/Ubuntu: package libc-bin)")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "\tlibfoo.so.1 => /path/libfoo.so.1 (0x…)" or "\t/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line.split("=>").nth(1).unwrap_or(line).split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(lexically_normal(Path::new(path)));
        }
    }
    if let Some(site) = torch_lib.parent().and_then(Path::parent) {
        // Their libraries only (`nvidia/<package>/lib/…`), not the headers.
        let nvidia = site.join("nvidia");
        let in_lib =
            |p: &PathBuf| p.strip_prefix(&nvidia).is_ok_and(|r| r.components().any(|c| c.as_os_str() == "lib"));
        files.extend(list_files(&nvidia).into_iter().filter(in_lib));
    }
    for dir in DRIVER_DIRS {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libcuda") || name.starts_with("libnvidia") || name.starts_with("libnvcuvid") {
                files.push(e.path());
            }
        }
    }
    files.extend(LOADER_FILES.iter().map(PathBuf::from));
    // The docker backend starts the program through `env -i` (exactly the job's environment).
    files.push("/usr/bin/env".into());
    files.push("/sys/devices/system/cpu".into());
    // A symlink is recreated in the job's root as it is: its target, as written, must be there too.
    let mut links: Vec<PathBuf> = files.iter().filter(|p| p.is_symlink()).cloned().collect();
    for _ in 0..8 {
        let targets: Vec<PathBuf> = links
            .iter()
            .filter_map(|l| std::fs::read_link(l).ok().map(|t| l.parent().unwrap_or(Path::new("/")).join(t)))
            .collect();
        files.extend(targets.iter().cloned());
        links = targets.into_iter().filter(|t| t.is_symlink()).collect();
    }
    files.retain(|p| p.exists());
    files.sort();
    files.dedup();
    cache.lock().unwrap().push((torch_lib.to_path_buf(), files.clone()));
    Ok(files)
}

/// `path` without `.` and `..` components (ldd prints RUNPATH-relative paths such as
/// `torch/lib/../../nvidia/…`), resolved by text: the same file must have one name in the view.
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Regular files and symlinks under `dir`, recursively (not following links).
fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}

/// Makes every page of every regular file in `paths` (folders walked, symlinks not followed)
/// resident in the page cache, reading only what is missing. Returns the pages that had to be read.
pub fn make_resident(paths: &[PathBuf]) -> Result<u64> {
    let mut read = 0;
    let mut stack: Vec<PathBuf> =
        paths.iter().filter(|p| !p.starts_with("/sys") && !p.starts_with("/proc")).cloned().collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else if meta.is_file() && meta.len() > 0 {
            read += fill(&p, meta.len()).with_context(|| format!("read {} into the page cache", p.display()))?;
        }
    }
    Ok(read)
}

const PAGE: u64 = 4096;

/// Reads the pages of `path` (`len` bytes) that `mincore` says are not resident; returns how many.
fn fill(path: &Path, len: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let missing = missing_pages(&f, len)?;
    let mut buf = vec![0u8; 256 * PAGE as usize];
    let mut i = 0;
    while i < missing.len() {
        // One read per run of consecutive missing pages, in chunks of the buffer's size.
        let start = missing[i];
        let mut end = start + 1;
        while i + 1 < missing.len() && missing[i + 1] == end && end - start < 256 {
            i += 1;
            end += 1;
        }
        i += 1;
        let off = start * PAGE;
        let n = ((end - start) * PAGE).min(len - off) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
    }
    Ok(missing.len() as u64)
}

/// Indices of the pages of `f` not in the page cache.
fn missing_pages(f: &std::fs::File, len: u64) -> Result<Vec<u64>> {
    let pages = len.div_ceil(PAGE) as usize;
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped before returning; mincore
    // only reports on it.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len as usize, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        let mut vec = vec![0u8; pages];
        let r = libc::mincore(p, len as usize, vec.as_mut_ptr());
        let e = std::io::Error::last_os_error();
        libc::munmap(p, len as usize);
        if r != 0 {
            return Err(e).context("mincore");
        }
        Ok(vec.iter().enumerate().filter(|(_, b)| **b & 1 == 0).map(|(i, _)| i as u64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicted_pages_come_back_and_resident_files_cost_nothing() {
        // On disk, not tmpfs (whose pages cannot be evicted).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("lib.so");
        let len = 64 * PAGE;
        std::fs::write(&path, vec![7u8; len as usize]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // A pattern as a job could leave it: everything evicted, then every other page read back.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
        }
        for page in (0..64).step_by(2) {
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut [0u8; 1], page * PAGE).unwrap();
        }
        let before = missing_pages(&f, len).unwrap().len();
        assert!(before > 0, "the pattern took (no page evicted)");
        assert_eq!(make_resident(&[dir.path().to_path_buf()]).unwrap(), before as u64);
        assert!(missing_pages(&f, len).unwrap().is_empty(), "every page resident");
        assert_eq!(make_resident(&[path]).unwrap(), 0, "nothing to read the second time");
    }

    #[test]
    fn paths_are_normalised_by_text() {
        assert_eq!(lexically_normal(Path::new("/a/torch/lib/../../nvidia/./x.so")), Path::new("/a/nvidia/x.so"));
    }

    #[test]
    fn the_runtime_view_holds_libtorchs_libraries_and_not_the_rest_of_the_system() {
        let Ok(env) = crate::pyenv::PyEnv::locate(Path::new(env!("CARGO_MANIFEST_DIR"))) else {
            eprintln!("SKIPPED: no Python environment");
            return;
        };
        let view = runtime_view(&env.torch_lib().unwrap()).unwrap();
        let names: Vec<String> = view.iter().map(|p| p.display().to_string()).collect();
        for want in ["libtorch_cpu.so", "libc10.so", "libstdc++.so.6", "libc.so.6", "ld.so.cache"] {
            assert!(names.iter().any(|n| n.ends_with(want)), "{want} missing from {names:?}");
        }
        let wrong: Vec<&String> =
            names.iter().filter(|n| n.ends_with("/python3") || n.ends_with(".h") || n.contains("numpy")).collect();
        assert!(wrong.is_empty(), "not part of the runtime: {wrong:?}");
        assert!(!names.iter().any(|n| n.contains("/../")), "one name per file: {names:?}");
    }
}
