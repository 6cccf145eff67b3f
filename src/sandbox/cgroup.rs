//! A cgroup per job: memory (swap included), pids and CPU limits, a peak-memory reading, and a kill
//! that reaches every process of the job. The development and CI machines mount cgroup v1
//! (memory, pids, cpu, freezer controllers); GPU machines mount v2 (with `cgroup.kill`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU cores' worth of time (0 = no limit).
    pub cpus: f64,
}

#[derive(Debug)]
pub struct Cgroup {
    v2: bool,
    /// One directory (v2) or one per controller (v1: memory, pids, cpu, freezer).
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

impl Cgroup {
    /// Which cgroup version this machine offers, if any is usable.
    pub fn detect() -> Result<&'static str> {
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            Ok("v2")
        } else if Path::new(ROOT).join("memory/cgroup.procs").exists() && Path::new(ROOT).join("pids").exists() {
            Ok("v1")
        } else {
            bail!("no usable cgroup hierarchy under {ROOT} (need v2, or v1 with memory and pids controllers)")
        }
    }

    /// Creates `autoresearch/<name>` with the limits.
    pub fn create(name: &str, limits: &Limits) -> Result<Self> {
        Self::create_in(None, name, limits)
    }

    /// Like [`Cgroup::create`]; on v2 with `parent` (a cgroup directory holding no process), the
    /// job's cgroup is `<parent>/autoresearch-<name>` instead, so whatever the parent's ancestors
    /// impose (a Slurm job's memory and its device program) still holds for the job.
    pub fn create_in(parent: Option<&Path>, name: &str, limits: &Limits) -> Result<Self> {
        let v2 = Self::detect()? == "v2";
        let cg = if v2 {
            let (parent, name) = match parent {
                Some(p) => (p.to_path_buf(), format!("autoresearch-{name}")),
                None => {
                    let p = Path::new(ROOT).join("autoresearch");
                    std::fs::create_dir_all(&p).context("create the autoresearch cgroup (run as root)")?;
                    let _ = write(&Path::new(ROOT).join("cgroup.subtree_control"), "+memory +pids +cpu");
                    (p, name.to_string())
                }
            };
            let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("create the cgroup {}", dir.display()))?;
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            if limits.cpus > 0.0 {
                let _ = write(&dir.join("cpu.max"), &format!("{} 100000", (limits.cpus * 100_000.0) as u64));
            }
            Cgroup { v2, dirs: vec![dir] }
        } else {
            let mut dirs = vec![];
            for ctl in ["memory", "pids", "cpu", "freezer"] {
                let base = Path::new(ROOT).join(ctl);
                if !base.exists() {
                    if matches!(ctl, "memory" | "pids") {
                        bail!("cgroup v1 controller {ctl} is not mounted");
                    }
                    continue;
                }
                let dir = base.join("autoresearch").join(name);
                std::fs::create_dir_all(&dir).with_context(|| format!("create {} (run as root)", dir.display()))?;
                dirs.push(dir);
            }
            let cg = Cgroup { v2, dirs };
            let mem = cg.dir("memory").context("memory cgroup")?;
            write(&mem.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
            // Swap counts too where swap accounting exists.
            let _ = write(&mem.join("memory.memsw.limit_in_bytes"), &limits.memory_bytes.to_string());
            write(&cg.dir("pids").context("pids cgroup")?.join("pids.max"), &limits.pids.to_string())?;
            if let (Some(cpu), true) = (cg.dir("cpu"), limits.cpus > 0.0) {
                let _ = write(&cpu.join("cpu.cfs_period_us"), "100000");
                let _ = write(&cpu.join("cpu.cfs_quota_us"), &((limits.cpus * 100_000.0) as u64).to_string());
            }
            cg
        };
        Ok(cg)
    }

    fn dir(&self, controller: &str) -> Option<&PathBuf> {
        if self.v2 {
            self.dirs.first()
        } else {
            self.dirs.iter().find(|d| d.starts_with(Path::new(ROOT).join(controller)))
        }
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dirs.first() else { return vec![] };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kills every process in the cgroup: `cgroup.kill` on v2; on v1 freeze, SIGKILL each, thaw.
    pub fn kill(&self) {
        if self.v2 {
            let _ = write(&self.dirs[0].join("cgroup.kill"), "1");
            return;
        }
        let freezer = self.dir("freezer").cloned();
        if let Some(f) = &freezer {
            let _ = write(&f.join("freezer.state"), "FROZEN");
        }
        for _ in 0..3 {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            if let Some(f) = &freezer {
                let _ = write(&f.join("freezer.state"), "THAWED");
            }
            if self.pids().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak memory of the job, as the kernel measured it.
    pub fn peak_memory(&self) -> Option<u64> {
        let (dir, file) = if self.v2 {
            (self.dir("memory")?, "memory.peak")
        } else {
            (self.dir("memory")?, "memory.max_usage_in_bytes")
        };
        std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Whether the job hit the memory limit (an OOM kill happened).
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dir("memory") else { return false };
        if self.v2 {
            std::fs::read_to_string(dir.join("memory.events"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0"))
        } else {
            std::fs::read_to_string(dir.join("memory.oom_control"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0"))
        }
    }
}

/// Removes job cgroups whose server (the pid in their name, `<phase>-<pid>-<n>`) is gone, killing
/// anything still in them: what a server that was SIGKILLed leaves behind. Returns how many.
pub fn reap_orphans() -> usize {
    let mut reaped = 0;
    let v2 = matches!(Cgroup::detect(), Ok("v2"));
    let controllers: &[&str] = if v2 { &[""] } else { &["memory", "pids", "cpu", "freezer"] };
    let mut names = std::collections::BTreeSet::new();
    for ctl in controllers {
        for e in std::fs::read_dir(Path::new(ROOT).join(ctl).join("autoresearch")).into_iter().flatten().flatten() {
            names.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    for name in names {
        let Some(pid) = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dirs = controllers
            .iter()
            .map(|c| Path::new(ROOT).join(c).join("autoresearch").join(&name))
            .filter(|d| d.exists())
            .collect();
        drop(Cgroup { v2, dirs });
        reaped += 1;
    }
    reaped
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill();
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
