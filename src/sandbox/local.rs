//! The `local` backend, for machines without Docker. The server re-executes its own binary as
//! `autoresearch-mcp sandbox-exec` inside fresh network, PID, mount, IPC, UTS and cgroup namespaces
//! (plus a user namespace when not root), handing it the job on stdin (never on the command line,
//! which the job could read as PID 1's). That helper brings up loopback (the only interface: no
//! route out), names the host `sandbox`, mounts a private `/proc`, and forks the namespace's init, which forks the job with a cleared
//! environment, rlimits and dangerous capabilities dropped. When the job's main process exits, or the
//! helper is killed (timeout, cancel, server death: each parent sets PDEATHSIG), the init dies and the
//! kernel kills everything left in the PID namespace, daemons that called setsid included.
//!
//! The job sees a minimal root ([`super::root`]): only the paths its phase needs. Its cgroup
//! ([`super::cgroup`]) limits memory, pids and CPU and is how a timeout kills every process.
//! The job itself runs under the seccomp deny list ([`super::seccomp`]), with `no_new_privs`, and,
//! except the build (whose cargo target dir is the user's), as uid/gid nobody.
//! Landlock ([`super::landlock`]) repeats the file-system allowlist as a second layer.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use seccompiler::BpfProgram;

use super::cgroup::Cgroup;
use super::{BoxFuture, Job, JobEnd, JobOutcome, Sandbox};

/// How much of a job's output is kept in memory for the tail.
pub(super) const TAIL_KEEP: usize = 64 * 1024;

pub struct LocalSandbox {
    /// The `autoresearch-mcp` binary that implements `sandbox-exec`.
    helper: PathBuf,
    /// Where jobs' cgroups go on cgroup v2 (None: `autoresearch/` at the root); see [`Cgroup::create_in`].
    cgroup_parent: Option<PathBuf>,
}

impl LocalSandbox {
    pub fn new(helper: PathBuf) -> Self {
        Self { helper, cgroup_parent: None }
    }

    /// Jobs' cgroups under `parent` on cgroup v2 (the `slurm` backend's node side: inside Slurm's job).
    pub fn with_cgroup_parent(mut self, parent: Option<PathBuf>) -> Self {
        self.cgroup_parent = parent;
        self
    }

    /// Uses the running executable as the helper (the normal case: the server is autoresearch-mcp).
    pub fn from_current_exe() -> Result<Self> {
        Ok(Self::new(std::env::current_exe().context("locate the server's own executable")?))
    }
}

impl Sandbox for LocalSandbox {
    fn name(&self) -> &'static str {
        "local"
    }

    fn check(&self) -> Result<()> {
        Cgroup::detect()?;
        // Try the real thing: the helper must start in new namespaces.
        let status = namespaced_command(&self.helper, vec![])
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => bail!("namespaced probe exited with {s}"),
            Err(e) => bail!(
                "cannot create network/PID/mount namespaces ({e}); run the server as root, or enable \
                 unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
            ),
        }
    }

    fn execute<'a>(&'a self, job: &'a Job, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<JobOutcome>> {
        Box::pin(self.run_job(job, cancel))
    }
}

impl LocalSandbox {
    async fn run_job(&self, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
        super::prepare_scratch(job)?;
        let spec = serde_json::to_string(job)?;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name =
            format!("{}-{}-{}", job.phase, std::process::id(), SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let cgroup = Cgroup::create_in(self.cgroup_parent.as_deref(), &name, &job.limits)
            .map_err(|e| anyhow::anyhow!("refusing to run {} without resource limits: {e:#}", job.phase))?;
        let procs = cgroup.procs_files().iter().map(|p| super::root::cstr(p)).collect::<Result<Vec<_>>>()?;
        let mut cmd = tokio::process::Command::from(namespaced_command(&self.helper, procs));
        cmd.arg("sandbox-exec").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "refusing to run {} unisolated: cannot create namespaces ({e}); run as root or enable \
                 unprivileged user namespaces",
                job.phase
            )
        })?;
        // The job spec goes through a pipe: the helper reads it to EOF before anything else.
        let mut stdin = child.stdin.take().context("stdin")?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, spec.as_bytes()).await.context("hand the job to the helper")?;
        drop(stdin);
        let sink = Arc::new(Mutex::new(LogSink::create(&job.log, job.log_cap)?));
        let readers = [
            spawn_reader(child.stdout.take().context("stdout")?, sink.clone()),
            spawn_reader(child.stderr.take().context("stderr")?, sink.clone()),
        ];
        let end = tokio::select! {
            status = child.wait() => {
                let status = status.context("wait for sandbox helper")?;
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(c), _) if c >= 128 => JobEnd::Signaled(c - 128),
                    (Some(c), _) => JobEnd::Exited(c),
                    (None, Some(s)) => JobEnd::Signaled(s),
                    _ => JobEnd::Exited(-1),
                }
            }
            _ = tokio::time::sleep(job.timeout) => JobEnd::TimedOut,
            _ = cancel.cancelled() => JobEnd::Cancelled,
        };
        if matches!(end, JobEnd::TimedOut | JobEnd::Cancelled) {
            // Kill every process of the job through its cgroup, and the helper (whose death also
            // takes the namespace's init, and with it every process left, through PDEATHSIG).
            cgroup.kill();
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let peak_memory_bytes = cgroup.peak_memory();
        let oom_killed = cgroup.oom_killed();
        drop(cgroup);
        let wall = start.elapsed();
        for r in readers {
            // Pipes close when the namespace is gone; do not wait forever on a stuck reader.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), r).await;
        }
        Ok(sink.lock().unwrap().finish(end, wall, peak_memory_bytes, oom_killed))
    }
}

/// The namespaces every job gets: no network, its own PIDs and mounts, no SysV/POSIX IPC objects
/// shared with the host or another job (they vanish with the namespace), its own host name, and
/// its own cgroup as `/` (it joins the cgroup before unsharing).
pub const NAMESPACES: libc::c_int = libc::CLONE_NEWNET
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP;

/// The namespaces of [`NAMESPACES`], by name (for `doctor`).
pub const NAMESPACE_NAMES: &str = "network, PID, mount, IPC, UTS, cgroup";

/// A command for the helper that will start in new namespaces: the `unshare` happens in the forked
/// child just before exec, so the server itself never changes namespace.
/// Before exec, the child joins the job's cgroup (`cgroup_procs`), so all it starts is counted.
fn namespaced_command(helper: &std::path::Path, cgroup_procs: Vec<CString>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(helper);
    // What the job sees as PID 1's command line: no host path.
    cmd.arg0("autoresearch-sandbox");
    cmd.env_clear();
    let uid = unsafe { libc::geteuid() };
    let gid = unsafe { libc::getegid() };
    // SAFETY: only async-signal-safe libc calls on stack buffers between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The helper dies with the thread that spawned it (a tokio worker, alive as long as the server).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for procs in &cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if uid != 0 {
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                write_proc(b"/proc/self/setgroups\0", b"deny");
                let mut buf = [0u8; 48];
                let n = id_map(&mut buf, uid);
                write_proc(b"/proc/self/uid_map\0", &buf[..n]);
                let n = id_map(&mut buf, gid);
                write_proc(b"/proc/self/gid_map\0", &buf[..n]);
            }
            if libc::unshare(NAMESPACES) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Formats "0 <id> 1" into `buf` without allocating.
fn id_map(buf: &mut [u8; 48], id: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = id;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf[0] = b'0';
    buf[1] = b' ';
    for i in 0..n {
        buf[2 + i] = digits[n - 1 - i];
    }
    buf[2 + n] = b' ';
    buf[3 + n] = b'1';
    4 + n
}

unsafe fn write_proc(path: &[u8], data: &[u8]) {
    unsafe {
        let fd = libc::open(path.as_ptr() as *const libc::c_char, libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, data.as_ptr() as *const libc::c_void, data.len());
            libc::close(fd);
        }
    }
}

/// Job output: the first `cap` bytes go to the log file, the last [`TAIL_KEEP`] stay in memory.
pub(super) struct LogSink {
    file: std::fs::File,
    written: u64,
    cap: u64,
    pub(super) truncated: bool,
    pub(super) tail: VecDeque<u8>,
}

impl LogSink {
    pub(super) fn create(path: &std::path::Path, cap: u64) -> Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { file, written: 0, cap, truncated: false, tail: VecDeque::with_capacity(TAIL_KEEP) })
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.written) as usize;
        if room > 0 {
            let n = room.min(bytes.len());
            if self.file.write_all(&bytes[..n]).is_ok() {
                self.written += n as u64;
            }
        }
        if bytes.len() > room && !self.truncated {
            self.truncated = true;
            let _ = self.file.write_all(b"\n[log truncated here: over the byte cap]\n");
        }
        for &b in bytes.iter().rev().take(TAIL_KEEP).collect::<Vec<_>>().iter().rev() {
            if self.tail.len() == TAIL_KEEP {
                self.tail.pop_front();
            }
            self.tail.push_back(*b);
        }
    }

    /// Flushes the log and makes the job's outcome from what was captured.
    pub(super) fn finish(
        &mut self,
        end: JobEnd,
        wall: Duration,
        peak_memory_bytes: Option<u64>,
        oom_killed: bool,
    ) -> JobOutcome {
        let _ = self.file.flush();
        let tail = self.tail.iter().copied().collect();
        JobOutcome { end, wall, tail, log_truncated: self.truncated, peak_memory_bytes, oom_killed }
    }
}

pub(super) fn spawn_reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    sink: Arc<Mutex<LogSink>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().push(&buf[..n]),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Inside the namespaces: `autoresearch-mcp sandbox-exec <job json>`
// ---------------------------------------------------------------------------------------------

/// Capabilities removed from the job even when it runs as root: they would let it leave its
/// namespaces (setns, mount, unshare), reconfigure the network, trace or reach raw devices.
const DROPPED_CAPS: &[u32] = &[
    2,  // CAP_DAC_READ_SEARCH (open_by_handle_at)
    12, // CAP_NET_ADMIN
    13, // CAP_NET_RAW
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    18, // CAP_SYS_CHROOT
    19, // CAP_SYS_PTRACE
    21, // CAP_SYS_ADMIN
    22, // CAP_SYS_BOOT
    25, // CAP_SYS_TIME
    27, // CAP_MKNOD
    38, // CAP_PERFMON
    39, // CAP_BPF
];

/// Largest job spec the helper reads from stdin.
const MAX_SPEC: u64 = 16 << 20;

/// Entry point of the helper: the job spec arrives on stdin. Returns the exit code to exit with.
pub fn exec_main() -> i32 {
    let spec = (|| -> Result<String> {
        let mut spec = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), MAX_SPEC), &mut spec)
            .context("read the job spec from stdin")?;
        // The job's stdin is /dev/null, as before.
        let null = std::fs::File::open("/dev/null").context("open /dev/null")?;
        nix::unistd::dup2_stdin(&null).context("stdin from /dev/null")?;
        Ok(spec)
    })();
    match spec.and_then(|s| exec_inner(&s)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sandbox: {e:#}");
            125
        }
    }
}

fn exec_inner(spec: &str) -> Result<i32> {
    let job: Job = serde_json::from_str(spec).context("parse job spec")?;
    loopback_up().context("bring up loopback in the new network namespace")?;
    // SAFETY: a valid buffer and its length.
    if unsafe { libc::sethostname(b"sandbox".as_ptr() as *const libc::c_char, 7) } != 0 {
        return Err(std::io::Error::last_os_error()).context("name the sandbox's UTS namespace");
    }
    // Mounts made below must not leak back to the host.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make mounts private")?;
    super::root::enter(&job).context("build the job's minimal root")?;
    let program = CString::new(job.program.as_os_str().as_bytes())?;
    let mut argv = vec![program.clone()];
    for a in &job.args {
        argv.push(CString::new(a.as_str())?);
    }
    let envp: Vec<CString> = job.env.iter().map(|(k, v)| CString::new(format!("{k}={v}"))).collect::<Result<_, _>>()?;
    let cwd = CString::new(job.cwd.as_os_str().as_bytes())?;
    let filters = super::seccomp::programs()?;
    // The helper holds the write end of this pipe: when it dies, the read end sees HUP. This
    // closes the race where the helper dies before PID 1 has set its death signal.
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;

    // SAFETY: the helper is single-threaded (no runtime is started for sandbox-exec).
    match unsafe { nix::unistd::fork() }.context("fork the namespace's init")? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(alive_r);
            let code = wait_code(child);
            drop(alive_w);
            Ok(code)
        }
        nix::unistd::ForkResult::Child => {
            // PID 1 of the new namespace.
            drop(alive_w);
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut pfd =
                    libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&alive_r), events: libc::POLLIN, revents: 0 };
                if libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & libc::POLLHUP != 0 {
                    libc::_exit(125);
                }
            }
            drop(alive_r);
            let _ = nix::mount::mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            );
            let code = match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => {
                    exec_job(&job, &program, &argv, &envp, &cwd, &filters);
                }
                Ok(nix::unistd::ForkResult::Parent { child }) => reap_until(child),
                Err(e) => {
                    eprintln!("sandbox: fork the job: {e}");
                    125
                }
            };
            // Exiting as PID 1 makes the kernel kill every process left in the namespace.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The uid and gid unprivileged jobs run as (nobody).
pub const NOBODY: u32 = 65534;

fn exec_job(
    job: &Job,
    program: &CString,
    argv: &[CString],
    envp: &[CString],
    cwd: &CString,
    filters: &[BpfProgram],
) -> ! {
    unsafe {
        libc::setsid();
        let core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &core);
        let fsize = libc::rlimit { rlim_cur: job.max_file_bytes, rlim_max: job.max_file_bytes };
        libc::setrlimit(libc::RLIMIT_FSIZE, &fsize);
        if let Err(e) = drop_caps() {
            eprintln!("sandbox: drop capabilities: {e}");
            libc::_exit(125);
        }
        if job.unprivileged && libc::geteuid() == 0 {
            // Losing uid 0 also clears every remaining capability.
            let groups: [libc::gid_t; 0] = [];
            if libc::setgroups(0, groups.as_ptr()) != 0 || libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                eprintln!("sandbox: drop to uid {NOBODY}: {}", std::io::Error::last_os_error());
                libc::_exit(125);
            }
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if let Err(e) = super::landlock::restrict(job) {
            eprintln!("sandbox: landlock: {e:#}");
            libc::_exit(125);
        }
        if let Err(e) = super::seccomp::install(filters) {
            eprintln!("sandbox: {e:#}");
            libc::_exit(125);
        }
        if libc::chdir(cwd.as_ptr()) != 0 {
            eprintln!("sandbox: chdir {}: {}", job.cwd.display(), std::io::Error::last_os_error());
            libc::_exit(125);
        }
        let _ = nix::unistd::execve(program, argv, envp).map_err(|e| {
            eprintln!("sandbox: exec {}: {e}", job.program.display());
        });
        libc::_exit(127)
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn drop_caps() -> std::io::Result<()> {
    const V3: u32 = 0x2008_0522;
    unsafe {
        for &cap in DROPPED_CAPS {
            // EINVAL for capabilities this kernel does not know: nothing to drop.
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        let mut hdr = CapHeader { version: V3, pid: 0 };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for &cap in DROPPED_CAPS {
            let (i, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
            data[i].effective &= !bit;
            data[i].permitted &= !bit;
            data[i].inheritable &= !bit;
        }
        if libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// As the namespace's init: reap every child until the job itself exits; return its exit code.
fn reap_until(job: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == job => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == job => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn wait_code(child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn loopback_up() -> Result<()> {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            let r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req);
            libc::close(fd);
            if r != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        Err(e.into())
    }
}
