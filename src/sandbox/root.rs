//! The job's file system: a fresh tmpfs root holding only bind mounts of what the phase needs
//! (system libraries and toolchain read-only, the phase's inputs read-only, its output writable),
//! a private `/tmp` and `/dev/shm`, a handful of device nodes and, mounted later by the namespace's
//! init, its own `/proc`. After `pivot_root` nothing else of the host exists for the job: no
//! `$HOME`, no `.git` or `.autoresearch/`, no other split, no `/run` (Docker's socket) or `/var`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::Job;

/// System paths every phase may read: the dynamic linker's view, the compiler alternatives, users.
pub const SYSTEM_READ_ONLY: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    // CPU topology, read by libtorch's cpuinfo.
    "/sys/devices/system/cpu",
];

/// Device nodes bound into the root; the NVIDIA nodes of the job's GPUs are added ([`super::gpus`]).
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// Builds the root next to the job's scratch dir and pivots into it. Runs in the helper, inside
/// the new mount namespace (mounts already private).
pub fn enter(job: &Job) -> Result<()> {
    let parent = job.scratch.parent().context("scratch dir has no parent")?;
    let root = parent.join(format!(".root-{}", job.phase));
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    mount(Some("tmpfs"), &root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755,size=16m"))
        .context("mount the root tmpfs")?;

    // Private tmpfs first: binds of host paths below /tmp then land on top of them.
    for (dir, opts) in [("tmp", "mode=1777"), ("dev/shm", "mode=1777")] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p)?;
        mount(Some("tmpfs"), &p, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts))
            .with_context(|| format!("mount /{dir}"))?;
    }
    let system: &[&str] = if job.host_system { SYSTEM_READ_ONLY } else { &[] };
    let mut binds: Vec<(PathBuf, bool)> = system.iter().map(|p| (PathBuf::from(p), false)).collect();
    binds.extend(job.read_only.iter().map(|p| (p.clone(), false)));
    binds.extend(job.writable.iter().map(|p| (p.clone(), true)));
    // Parents before children, so a writable dir inside a read-only one is mounted over it.
    binds.sort_by_key(|(p, _)| p.components().count());
    for (path, writable) in &binds {
        bind(path, &root, *writable).with_context(|| format!("bind {} into the sandbox", path.display()))?;
    }
    let mut devices: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    devices.extend(super::gpus::device_nodes(Path::new("/dev"), &job.gpus));
    for d in devices {
        bind(&d, &root, true).with_context(|| format!("bind {}", d.display()))?;
    }
    std::fs::create_dir_all(root.join("proc"))?;

    let old = root.join(".old");
    std::fs::create_dir_all(&old)?;
    nix::unistd::pivot_root(&root, &old).context("pivot_root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    umount2("/.old", MntFlags::MNT_DETACH).context("detach the host's root")?;
    std::fs::remove_dir("/.old").context("remove /.old")?;
    // The root itself is read-only; only bound writable paths and the tmpfs mounts take writes.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, None::<&str>)
        .context("make the root read-only")?;
    Ok(())
}

/// Mirrors `src` at the same absolute path under `root`. Missing paths are skipped; a symlink is
/// recreated as a symlink (its target must be bound separately).
fn bind(src: &Path, root: &Path, writable: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(src) else { return Ok(()) };
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p)?;
    }
    if meta.file_type().is_symlink() {
        if std::fs::symlink_metadata(&dst).is_err() {
            std::os::unix::fs::symlink(std::fs::read_link(src)?, &dst)?;
        }
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&dst)?;
    } else if std::fs::symlink_metadata(&dst).is_err() {
        std::fs::File::create(&dst)?;
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(src), &dst, None::<&str>, flags, None::<&str>)?;
    let mut re = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
    if !writable {
        re |= MsFlags::MS_RDONLY;
    }
    if !src.starts_with("/dev") {
        re |= MsFlags::MS_NODEV;
    }
    mount(None::<&str>, &dst, None::<&str>, re, None::<&str>)?;
    Ok(())
}

/// `path` as a C string (for the async-signal-safe parts of the sandbox).
pub fn cstr(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}
