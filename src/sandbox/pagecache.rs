//! The page cache between two jobs that must not talk (the two embed phases: one holds the images,
//! the other the texts of a validation split). Jobs run one after the other, but a file both can read
//! (libtorch, a system library, the binary) keeps in the page cache which of its pages the first job
//! touched or evicted, and the second can read that back (`mincore`, `RWF_NOWAIT`, fault counts, or
//! just the time a read takes). So after the first job is gone, every file it opened is evicted from
//! the page cache: whatever pattern it left is reset to one that does not depend on it.
//!
//! Which files: every open on the filesystems the job can read is seen through fanotify (a
//! filesystem-wide mark, root only) while the job runs; any way to touch a file's pages needs an
//! open file (io_uring and file handles are denied by seccomp), so that set covers what the job
//! could have changed. Files opened by others meanwhile are evicted too (harmless). Without root, or
//! if more files were opened than are kept track of, the fallbacks are coarser and say so.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::root::SYSTEM_READ_ONLY;
use super::{Job, JobOutcome, Sandbox};

/// Most distinct files kept open for eviction; past it the whole page cache is dropped instead.
const MAX_FILES: usize = 1 << 16;

/// How the page cache was reset after a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    /// Every file opened on the watched filesystems during the job was evicted.
    Evicted { files: usize },
    /// The job opened too many files to track: the whole page cache was dropped.
    DroppedAll,
    /// No fanotify here (not root): the job's own read-only inputs were evicted; system files not.
    InputsOnly { files: usize },
}

/// Runs `job` on `sandbox`, then resets the page cache of every file it could have signalled through.
pub async fn run_then_evict(sandbox: &dyn Sandbox, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
    let watch = Watch::start(&watched_paths(job));
    let outcome = sandbox.run(job, cancel).await;
    let inputs = job.read_only.clone();
    let reset = tokio::task::spawn_blocking(move || match watch {
        Ok(w) => w.evict(),
        Err(e) => {
            tracing::debug!("fanotify unavailable ({e:#}): evicting the job's inputs only");
            Ok(Reset::InputsOnly { files: evict_tree(&inputs) })
        }
    })
    .await
    .context("page-cache reset")?
    .context("reset the page cache after the job")?;
    tracing::debug!(phase = %job.phase, ?reset, "page cache reset");
    outcome
}

/// The paths whose filesystems are watched: everything the job can read that has a page cache.
fn watched_paths(job: &Job) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = SYSTEM_READ_ONLY.iter().map(PathBuf::from).collect();
    paths.extend(job.read_only.iter().cloned());
    paths.push(job.program.clone());
    paths.retain(|p| !["/proc", "/sys", "/dev"].iter().any(|v| p.starts_with(v)) && p.exists());
    paths
}

/// A fanotify group marking whole filesystems, drained by a thread that keeps one descriptor per
/// distinct regular file opened.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Opened>>,
}

#[derive(Default)]
struct Opened {
    files: Vec<OwnedFd>,
    seen: HashSet<(u64, u64)>,
    overflow: bool,
}

impl Watch {
    /// Marks the filesystems holding `paths`; fails without CAP_SYS_ADMIN or fanotify.
    pub fn start(paths: &[PathBuf]) -> Result<Watch> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_UNLIMITED_QUEUE;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain system call; the descriptor is owned below.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("fanotify_init (needs root)");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let group = unsafe { OwnedFd::from_raw_fd(fd) };
        for p in paths {
            mark(&group, p).with_context(|| format!("watch the filesystem of {}", p.display()))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pagecache-watch".into())
            .spawn(move || drain(&group, &flag))
            .context("start the fanotify reader")?;
        Ok(Watch { stop, thread })
    }

    /// Stops watching (after the job is gone) and evicts every file seen.
    pub fn evict(self) -> Result<Reset> {
        self.stop.store(true, Ordering::SeqCst);
        let opened = self.thread.join().map_err(|_| anyhow::anyhow!("the fanotify reader panicked"))??;
        if opened.overflow {
            drop_all_caches()?;
            return Ok(Reset::DroppedAll);
        }
        for f in &opened.files {
            // SAFETY: a valid descriptor; DONTNEED only drops clean, unmapped pages.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        Ok(Reset::Evicted { files: opened.files.len() })
    }
}

fn mark(group: &OwnedFd, path: &Path) -> Result<()> {
    let c = super::root::cstr(path)?;
    let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
    for mask in [libc::FAN_OPEN | libc::FAN_OPEN_EXEC, libc::FAN_OPEN] {
        // SAFETY: valid descriptor and NUL-terminated path.
        if unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, mask, libc::AT_FDCWD, c.as_ptr()) } == 0 {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error().into())
}

/// Reads events until told to stop, then once more to empty the queue.
fn drain(group: &OwnedFd, stop: &AtomicBool) -> Result<Opened> {
    let mut opened = Opened::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                if n == 0 || e.kind() == std::io::ErrorKind::WouldBlock {
                    break;
                }
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("read fanotify events: {e}");
            }
            parse_events(&buf[..n as usize], &mut opened);
        }
        if stopping {
            return Ok(opened);
        }
        let mut pfd = libc::pollfd { fd: group.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; wakes at least every 50 ms to check `stop`.
        unsafe { libc::poll(&mut pfd, 1, 50) };
    }
}

fn parse_events(mut bytes: &[u8], opened: &mut Opened) {
    let size = std::mem::size_of::<libc::fanotify_event_metadata>();
    while bytes.len() >= size {
        // SAFETY: at least one metadata struct's bytes; read unaligned.
        let meta: libc::fanotify_event_metadata = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
        let len = (meta.event_len as usize).max(size).min(bytes.len());
        bytes = &bytes[len..];
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            opened.overflow = true;
        }
        if meta.fd < 0 {
            continue;
        }
        // SAFETY: the kernel opened this descriptor for us; we own it now.
        let fd = unsafe { OwnedFd::from_raw_fd(meta.fd) };
        let Ok(st) = nix::sys::stat::fstat(&fd) else { continue };
        let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !regular || !opened.seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        if opened.files.len() >= MAX_FILES {
            opened.overflow = true;
            continue;
        }
        opened.files.push(fd);
    }
}

/// `echo 1 > /proc/sys/vm/drop_caches`: every clean, unmapped page of every file.
fn drop_all_caches() -> Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "1").context("drop the page cache (/proc/sys/vm/drop_caches)")
}

/// Evicts every regular file under `roots` (not following symlinks); returns how many.
fn evict_tree(roots: &[PathBuf]) -> usize {
    let mut count = 0;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else if meta.is_file()
            && let Ok(f) = std::fs::File::open(&p)
        {
            // SAFETY: a valid descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            count += 1;
        }
    }
    count
}

/// What `doctor` says about the reset on this machine.
pub fn describe() -> String {
    match Watch::start(&[PathBuf::from("/usr")]) {
        Ok(w) => {
            w.stop.store(true, Ordering::SeqCst);
            let _ = w.thread.join();
            "between the embed phases: every file the first opened is evicted (fanotify)".into()
        }
        Err(e) => format!(
            "no fanotify ({e:#}): only the embed phases' own inputs are evicted between them; system files \
             and libtorch could carry a signal (run as root)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `f` resident in the page cache, per `mincore`.
    fn resident(f: &std::fs::File, len: usize) -> usize {
        unsafe {
            let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
            assert_ne!(p, libc::MAP_FAILED);
            let pages = len.div_ceil(4096);
            let mut vec = vec![0u8; pages];
            assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0);
            libc::munmap(p, len);
            vec.iter().filter(|b| **b & 1 == 1).count()
        }
    }

    #[test]
    fn a_file_opened_while_watched_is_evicted_and_others_are_not() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: fanotify filesystem marks need root");
            return;
        }
        // On disk (not tmpfs, whose pages cannot be evicted), next to the build.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (a, b) = (dir.path().join("opened"), dir.path().join("untouched"));
        let len = 64 * 4096;
        for p in [&a, &b] {
            std::fs::write(p, vec![7u8; len]).unwrap();
            let f = std::fs::File::open(p).unwrap();
            f.sync_all().unwrap();
            let _ = std::fs::read(p).unwrap();
            assert_eq!(resident(&f, len), 64, "written pages start resident");
        }
        let watch = Watch::start(&[dir.path().to_path_buf()]).unwrap();
        let _ = std::fs::read(&a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let reset = watch.evict().unwrap();
        assert!(matches!(reset, Reset::Evicted { files } if files >= 1), "{reset:?}");
        assert_eq!(resident(&std::fs::File::open(&a).unwrap(), len), 0, "the opened file is evicted");
        assert_eq!(resident(&std::fs::File::open(&b).unwrap(), len), 64, "a file nobody opened stays");
    }
}
