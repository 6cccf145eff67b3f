//! `autoresearch-mcp doctor`: what works on this machine and what to fix. Each check runs the real
//! thing where it can (a job through the sandbox, torch inside it) rather than guessing.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::experiment::Toolchain;
use crate::pyenv::PyEnv;
use crate::sandbox::cgroup::{Cgroup, Limits};
use crate::sandbox::docker::{DEFAULT_IMAGE, DockerSandbox};
use crate::sandbox::local::LocalSandbox;
use crate::sandbox::{Job, Sandbox};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn check(name: &'static str, r: anyhow::Result<String>, fail: Level) -> Check {
    match r {
        Ok(detail) => Check { name, level: Level::Ok, detail },
        Err(e) => Check { name, level: fail, detail: format!("{e:#}") },
    }
}

/// Runs every check for the workspace at `root`.
pub async fn run(root: &Path) -> Vec<Check> {
    let mut out = vec![];
    let config = Config::load(&root.join("autoresearch.toml"));
    out.push(check(
        "config",
        config
            .as_ref()
            .map(|c| format!("backend {}, profile {}", c.sandbox.backend, c.experiment.profile.as_str()))
            .map_err(|e| anyhow::anyhow!("{e:#}")),
        Level::Fail,
    ));
    let id = nix::unistd::geteuid();
    out.push(Check {
        name: "user",
        level: if id.is_root() { Level::Ok } else { Level::Warn },
        detail: if id.is_root() {
            "root: namespaces, cgroups and uid nobody for jobs are available".into()
        } else {
            format!("uid {id}: the local sandbox needs unprivileged user namespaces and a delegated cgroup; run as root if runs are refused")
        },
    });
    out.push(check("cgroups", Cgroup::detect().map(|v| format!("cgroup {v}")), Level::Fail));
    let pyenv = PyEnv::locate(root);
    out.push(check(
        "python env",
        pyenv
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|p| Ok(format!("{} (torch {})", p.dir.display(), p.torch_version()?))),
        Level::Fail,
    ));
    let toolchain = Toolchain::detect();
    out.push(check(
        "rust toolchain",
        toolchain
            .as_ref()
            .map(|t| format!("{} (CARGO_HOME {})", t.cargo.display(), t.cargo_home.display()))
            .map_err(|e| anyhow::anyhow!("{e:#}")),
        Level::Fail,
    ));
    if let Ok(t) = &toolchain {
        let view = t.registry_view(&root.join("trainer/Cargo.lock"));
        out.push(check(
            "build: CARGO_HOME view",
            view.map(|v| {
                let crates = v.iter().filter(|p| p.extension().is_some_and(|e| e == "crate")).count();
                format!(
                    "{} paths of {} (the {crates} locked crates' sources, archives and index entries), not its root \
                     (credentials.toml, config.toml); toolchain {} read-only; the build runs as nobody",
                    v.len(),
                    t.cargo_home.display(),
                    t.sysroot.display()
                )
            }),
            Level::Fail,
        ));
    }
    if let Ok(c) = &config {
        let gib = |g: u64| if g == 0 { "none".to_string() } else { format!("{g} GiB") };
        out.push(Check {
            name: "disk quota",
            level: if c.sandbox.disk_quota_gib == 0 { Level::Warn } else { Level::Ok },
            detail: format!(
                "train/embed phases {}, build and data preparation {} (what a job adds to its folders, measured \
                 every 0.25 s; at most {} files); over it the run is killed and its files removed",
                gib(c.sandbox.disk_quota_gib),
                gib(c.sandbox.build_disk_quota_gib),
                crate::sandbox::quota::MAX_ENTRIES
            ),
        });
    }
    if let Ok(p) = &pyenv {
        out.push(check(
            "embed phases' view",
            p.torch_lib().and_then(|lib| crate::sandbox::pagecache::runtime_view(&lib)).map(|v| {
                format!(
                    "{} files (libtorch, the libraries it loads, the loader's files), no /usr or Python environment; \
                     every page of them made resident between embed-images and embed-texts",
                    v.len()
                )
            }),
            Level::Fail,
        ));
    }
    match LocalSandbox::from_current_exe() {
        Ok(local) => {
            out.push(check(
                "local sandbox: namespaces",
                local.check().map(|_| format!("{} namespaces", crate::sandbox::local::NAMESPACE_NAMES)),
                Level::Fail,
            ));
            if let Ok(p) = &pyenv {
                out.push(sandbox_probe(&local, p).await);
            }
        }
        Err(e) => out.push(Check { name: "local sandbox", level: Level::Fail, detail: format!("{e:#}") }),
    }
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) answers the kernel's ABI version.
    let abi = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    out.push(Check {
        name: "landlock",
        level: if abi > 0 { Level::Ok } else { Level::Warn },
        detail: if abi > 0 {
            format!("ABI {abi}: the file-system allowlist is enforced twice (minimal root + Landlock)")
        } else {
            "not available in this kernel: the minimal root alone enforces the file-system allowlist".into()
        },
    });
    let image = config.as_ref().map(|c| c.sandbox.docker_image.clone()).unwrap_or_else(|_| DEFAULT_IMAGE.into());
    let docker = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        DockerSandbox::new(image.clone())?.check()?;
        Ok(format!("engine reachable, image {image} present"))
    })
    .await
    .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
    out.push(check("docker backend", docker, Level::Warn));
    if let Ok(c) = config.as_ref()
        && c.sandbox.backend == crate::config::Backend::Slurm
    {
        let slurm = c.slurm.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let shared = slurm.shared_dir.display().to_string();
            crate::sandbox::slurm::SlurmSandbox::new(slurm)?.check()?;
            Ok(format!("squeue --json answers; shared dir {shared} writable (docs/slurm.md)"))
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
        out.push(check("slurm backend", r, Level::Fail));
    }
    out.extend(claude_checks(root, config.as_ref().ok()));
    out.push(Check {
        name: "gpu",
        level: if Path::new("/dev/nvidia0").exists() { Level::Ok } else { Level::Warn },
        detail: if Path::new("/dev/nvidia0").exists() {
            "NVIDIA device present (see the sandbox probe for CUDA inside the sandbox)".into()
        } else {
            "no NVIDIA device: experiments run on CPU (profile cpu or tests)".into()
        },
    });
    if root.join(".autoresearch").is_dir() {
        out.extend(state_checks(root));
    }
    out
}

/// The workspace's state: lines of the ledger and the audit log that are not records (file and
/// line), torn lines set aside (`*.torn`), the repairs recorded in the audit log, the audit chain,
/// git (HEAD, locks, the branch against the ledger's kept lines) and stale temp files.
pub fn state_checks(root: &Path) -> Vec<Check> {
    use crate::durable::{read_torn, torn_path};
    let paths = crate::paths::Paths::new(root);
    let mut out = vec![];
    if !paths.state().is_dir() {
        out.push(Check {
            name: "workspace state",
            level: Level::Warn,
            detail: format!("{} is not an autoresearch workspace (no .autoresearch/)", root.display()),
        });
        return out;
    }
    let problems_detail = |n: usize, what: &str, problems: &[crate::durable::LineProblem]| {
        let mut d = format!("{n} {what}");
        for p in problems {
            d.push_str(&format!("; {p}"));
        }
        d
    };
    let ledger = crate::ledger::Ledger::open(&paths.ledger());
    match &ledger {
        Ok(l) => out.push(Check {
            name: "ledger",
            level: if l.problems().is_empty() { Level::Ok } else { Level::Warn },
            detail: problems_detail(l.events().len(), "events", l.problems()),
        }),
        Err(e) => out.push(Check { name: "ledger", level: Level::Fail, detail: format!("{e:#}") }),
    }
    match crate::audit::read_all_checked(&paths.audit()) {
        Ok((recs, problems)) => out.push(Check {
            name: "audit log",
            level: if problems.is_empty() { Level::Ok } else { Level::Warn },
            detail: problems_detail(recs.len(), "records", &problems),
        }),
        Err(e) => out.push(Check { name: "audit log", level: Level::Fail, detail: format!("{e:#}") }),
    }
    let verified = crate::service::recorded_heads(&paths).and_then(|h| crate::audit::verify(&paths.audit(), &h));
    match verified {
        Ok(v) => {
            out.push(Check {
                name: "audit chain",
                level: if v.ok() { Level::Ok } else { Level::Fail },
                detail: match &v.first_bad {
                    None => format!(
                        "{} lines verify (`audit verify`){}",
                        v.lines,
                        v.notes.iter().map(|n| format!("; {n}")).collect::<String>()
                    ),
                    Some((line, why)) => format!("fails at line {line}: {why}"),
                },
            });
            out.push(Check {
                name: "repairs",
                level: if v.repairs.is_empty() { Level::Ok } else { Level::Warn },
                detail: if v.repairs.is_empty() {
                    "none: the server never had to set its state right".into()
                } else {
                    let mut d = format!("{} recorded in the audit log", v.repairs.len());
                    for (line, what) in &v.repairs {
                        d.push_str(&format!("; line {line}: {what}"));
                    }
                    d
                },
            });
        }
        Err(e) => out.push(Check { name: "audit chain", level: Level::Fail, detail: format!("{e:#}") }),
    }
    let mut torn = vec![];
    for file in [paths.ledger(), paths.audit()] {
        let t = torn_path(&file);
        let entries = read_torn(&t);
        if let Some(last) = entries.last() {
            torn.push(format!(
                "{}: {} fragment(s) set aside, the latest {} bytes from line {} on {} (sha256 {})",
                paths.relative(&t).display(),
                entries.len(),
                last.bytes,
                last.line,
                last.at.format("%Y-%m-%d %H:%M:%S UTC"),
                &last.sha256[..16]
            ));
        }
    }
    out.push(Check {
        name: "torn lines set aside",
        level: if torn.is_empty() { Level::Ok } else { Level::Warn },
        detail: if torn.is_empty() { "none".into() } else { torn.join("; ") },
    });
    out.push(git_check(&paths, ledger.as_ref().ok()));
    let stale: Vec<String> = [paths.state(), paths.reverts(), paths.root.clone(), paths.trainer().join("src")]
        .iter()
        .flat_map(|d| crate::fsutil::stale_temps(d))
        .map(|p| paths.relative(&p).display().to_string())
        .collect();
    out.push(Check {
        name: "temp files",
        level: if stale.is_empty() { Level::Ok } else { Level::Warn },
        detail: if stale.is_empty() {
            "no temp file of a dead process".into()
        } else {
            format!("left by processes that died (the next server start removes them): {}", stale.join(", "))
        },
    });
    out
}

/// HEAD on the experiment branch, no git lock held, every commit on the branch kept in the ledger
/// and every kept line's commit on the branch.
fn git_check(paths: &crate::paths::Paths, ledger: Option<&crate::ledger::Ledger>) -> Check {
    let r = (|| -> anyhow::Result<(Level, String)> {
        let ws = crate::workspace::Workspace::open(&paths.root)?;
        let bytes = std::fs::read(paths.workspace_state())?;
        let state: crate::workspace::WorkspaceState = serde_json::from_slice(&bytes)?;
        let mut level = Level::Ok;
        let mut said = vec![];
        if let Err(why) = ws.check_head(&state.branch) {
            level = Level::Fail;
            said.push(format!("{why}: the server refuses to change anything until it is checked out again"));
        }
        for lock in ws.git_locks(&state.branch) {
            level = level.max_with(Level::Warn);
            said.push(format!("{} exists: commits are refused while it does", lock.display()));
        }
        let commits = ws.branch_commits_since(&state.branch, &state.baseline_commit)?;
        let kept: Vec<String> = ledger
            .map(|l| {
                l.events()
                    .iter()
                    .filter_map(|e| match e {
                        crate::ledger::Event::Kept { commit, .. } => Some(commit.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&str> = commits.iter().filter(|c| !kept.contains(&c.0)).map(|c| &c.0[..10]).collect();
        if !missing.is_empty() {
            level = level.max_with(Level::Warn);
            said.push(format!(
                "commits on {} without a kept line: {} (the next server start adds those it made)",
                state.branch,
                missing.join(", ")
            ));
        }
        let gone: Vec<&str> =
            kept.iter().filter(|k| !commits.iter().any(|c| &c.0 == *k)).map(|k| &k[..10.min(k.len())]).collect();
        if !gone.is_empty() {
            level = Level::Fail;
            said.push(format!("kept commits not on {}: {} (the branch was reset)", state.branch, gone.join(", ")));
        }
        if said.is_empty() {
            said.push(format!(
                "HEAD on {}, no git lock, {} commit(s) on the branch and as many kept lines",
                state.branch,
                commits.len()
            ));
        }
        Ok((level, said.join("; ")))
    })();
    match r {
        Ok((level, detail)) => Check { name: "git", level, detail },
        Err(e) => Check { name: "git", level: Level::Fail, detail: format!("{e:#}") },
    }
}

impl Level {
    fn max_with(self, other: Level) -> Level {
        let rank = |l: Level| match l {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Fail => 2,
        };
        if rank(other) > rank(self) { other } else { self }
    }
}

/// The installed Claude Code against the tested version, and `.mcp.json`'s per-call timeout against
/// a run's hard limit.
fn claude_checks(root: &Path, config: Option<&Config>) -> Vec<Check> {
    let mut out = vec![];
    let version = crate::claude::locate(None, root).and_then(|bin| crate::claude::version(&bin).map(|v| (bin, v)));
    out.push(match version {
        Ok((bin, v)) if v == crate::claude::TESTED_VERSION => {
            Check { name: "claude code", level: Level::Ok, detail: format!("{v} (the tested version) at {}", bin.display()) }
        }
        Ok((bin, v)) => Check {
            name: "claude code",
            level: Level::Warn,
            detail: format!(
                "{v} at {}, but this project was tested with {} ({}): check the tool surface with the Claude Code tests",
                bin.display(),
                crate::claude::TESTED_VERSION,
                crate::claude::TESTED_WHEEL
            ),
        },
        Err(e) => Check { name: "claude code", level: Level::Warn, detail: format!("{e:#}") },
    });
    let mcp = root.join(".mcp.json");
    if let (Some(config), Ok(text)) = (config, std::fs::read_to_string(&mcp)) {
        let timeout = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["mcpServers"][crate::claude::SERVER_NAME]["timeout"].as_u64());
        let limit = crate::claude::run_hard_limit(config).as_millis() as u64;
        out.push(match timeout {
            Some(t) if t > limit => Check {
                name: ".mcp.json timeout",
                level: Level::Ok,
                detail: format!("{} s per call, above a run's hard limit of {} s", t / 1000, limit / 1000),
            },
            t => Check {
                name: ".mcp.json timeout",
                level: Level::Warn,
                detail: format!(
                    "{}: Claude Code would abort a long run_experiment; set mcpServers.autoresearch.timeout to {} (ms)",
                    t.map(|t| format!("{} s per call, under a run's hard limit of {} s", t / 1000, limit / 1000))
                        .unwrap_or("no per-server timeout".into()),
                    crate::claude::call_timeout_ms(config)
                ),
            },
        });
    }
    out
}

/// Runs python + torch inside a full sandbox job (minimal root, cgroup, seccomp, uid nobody, no
/// network) and reports what it sees: proof that jobs start here, and whether CUDA is visible.
async fn sandbox_probe(local: &LocalSandbox, pyenv: &PyEnv) -> Check {
    let dir = std::env::temp_dir().join(format!("autoresearch-doctor-{}", std::process::id()));
    let scratch = dir.join("probe");
    let _ = std::fs::create_dir_all(&scratch);
    // A listener on the host's loopback that the job must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok();
    let port = listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port()).unwrap_or(9);
    let code = format!(
        "import ctypes, socket, torch, os\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), 2); net = 'REACHABLE'\n\
         except OSError: net = 'unreachable'\n\
         ipc = 'denied' if ctypes.CDLL(None).shmget(0, 4096, 0o1600) < 0 else 'ALLOWED'\n\
         print(f'uid={{os.getuid()}} torch={{torch.__version__}} cuda={{torch.cuda.is_available()}} host-loopback={{net}} sysv-ipc={{ipc}} hostname={{os.uname().nodename}}')"
    );
    let mut read_only = vec![pyenv.dir.clone()];
    read_only.extend(pyenv.python_prefix());
    let job = Job {
        phase: "doctor".into(),
        program: pyenv.bin().join("python"),
        args: vec!["-c".into(), code],
        env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), scratch.join("home").display().to_string())],
        cwd: scratch.clone(),
        scratch: scratch.clone(),
        timeout: Duration::from_secs(120),
        log: dir.join("probe.log"),
        log_cap: 1 << 20,
        max_file_bytes: 1 << 30,
        host_system: true,
        read_only,
        writable: vec![scratch.clone()],
        limits: Limits { memory_bytes: 4 << 30, pids: 256, cpus: 0.0 },
        unprivileged: true,
        disk_quota_bytes: 1 << 30,
        gpus: Default::default(),
    };
    let r = local.run(&job, &CancellationToken::new()).await;
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Ok(o) if o.success() => {
            let line = String::from_utf8_lossy(&o.tail)
                .lines()
                .rev()
                .find(|l| l.starts_with("uid="))
                .unwrap_or("")
                .to_string();
            Check { name: "local sandbox: probe job", level: Level::Ok, detail: line }
        }
        Ok(o) => Check {
            name: "local sandbox: probe job",
            level: Level::Fail,
            detail: format!("{}: {}", o.describe(), String::from_utf8_lossy(&o.tail).trim()),
        },
        Err(e) => Check { name: "local sandbox: probe job", level: Level::Fail, detail: format!("{e:#}") },
    }
}

pub fn print(checks: &[Check]) -> bool {
    for c in checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("[{tag}] {:<28} {}", c.name, c.detail);
    }
    !checks.iter().any(|c| c.level == Level::Fail)
}
