//! The `slurm` sandbox backend on a real single-node Slurm (`scripts/slurm.sh`: Debian's
//! slurm-wlm and munge, two fake `gpu` gres): jobs driven directly (outputs come back, two `gpu:1`
//! jobs at once on different devices, cancel, timeout), then through the server (escape cases,
//! a scored experiment, a server SIGKILLed mid-run). Each test is skipped, with a SKIPPED line,
//! only when the script cannot start Slurm here (set AUTORESEARCH_SLURM_SETUP=0 not to run it).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use autoresearch_mcp::config::SlurmConfig;
use autoresearch_mcp::sandbox::cgroup::Limits;
use autoresearch_mcp::sandbox::slurm::{Owner, SlurmSandbox, squeue};
use autoresearch_mcp::sandbox::{Job, JobEnd, JobOutcome, Sandbox};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::escape::{Arena, in_train, report};

/// Whether Slurm answers, after running the setup script once.
fn cluster() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            if std::env::var("AUTORESEARCH_SLURM_SETUP").as_deref() == Ok("0") {
                return match std::process::Command::new("sinfo").arg("-h").output() {
                    Ok(o) if o.status.success() => Ok(()),
                    _ => Err("sinfo does not answer and AUTORESEARCH_SLURM_SETUP=0".into()),
                };
            }
            let script = repo_root().join("scripts/slurm.sh");
            match std::process::Command::new("bash").arg(&script).status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("{} exited with {s}", script.display())),
                Err(e) => Err(format!("cannot run {}: {e}", script.display())),
            }
        })
        .clone()
}

async fn up(test: &str) -> bool {
    match tokio::task::spawn_blocking(cluster).await.unwrap() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPED slurm::{test}: Slurm could not be started here: {e}");
            false
        }
    }
}

/// A job's folders on the "login node", and a shared directory.
struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    scratch: PathBuf,
    shared: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("ar-slurm-").tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let scratch = root.join("run/train");
        let shared = root.join("shared");
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        Dirs { _tmp: tmp, root, scratch, shared }
    }

    fn sandbox(&self, gres: &str) -> SlurmSandbox {
        let cfg = SlurmConfig {
            shared_dir: self.shared.clone(),
            gres: gres.into(),
            memory_gib: 1,
            poll_seconds: 0.3,
            ..Default::default()
        };
        SlurmSandbox::with_helper(cfg, bin()).unwrap()
    }

    /// `/bin/sh -c script` in the train phase (one that goes to Slurm), as nobody.
    fn job(&self, script: &str) -> Job {
        Job {
            phase: "train".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: self.scratch.clone(),
            scratch: self.scratch.clone(),
            timeout: Duration::from_secs(60),
            log: self.root.join("run/train.log"),
            log_cap: 1 << 20,
            max_file_bytes: 64 << 20,
            host_system: true,
            read_only: vec![],
            writable: vec![self.scratch.clone()],
            limits: Limits { memory_bytes: 512 << 20, pids: 64, cpus: 0.0 },
            unprivileged: true,
            disk_quota_bytes: 0,
            gpus: Default::default(),
        }
    }
}

fn tail(o: &JobOutcome) -> String {
    String::from_utf8_lossy(&o.tail).into_owned()
}

/// Slurm jobs of server `pid` that have not ended.
async fn live_jobs_of(pid: u32) -> Vec<(u64, String)> {
    live_jobs(|c| Owner::parse(c).is_some_and(|o| o.pid == pid as i32)).await
}

/// Slurm jobs whose comment `mine` accepts that have not ended.
async fn live_jobs(mine: impl Fn(&str) -> bool) -> Vec<(u64, String)> {
    squeue(&[])
        .await
        .unwrap()
        .into_iter()
        .filter(|j| mine(&j.comment()))
        .map(|j| (j.job_id, j.state()))
        .filter(|(_, s)| matches!(s.as_str(), "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"))
        .collect()
}

#[tokio::test]
async fn a_job_runs_through_slurm_and_its_outputs_come_back() {
    if !up("outputs").await {
        return;
    }
    let d = Dirs::new();
    let input = d.root.join("inputs/data.txt");
    std::fs::create_dir_all(input.parent().unwrap()).unwrap();
    std::fs::write(&input, "INPUT-DATA").unwrap();
    let mut job = d.job(&format!(
        "cat {}; echo; echo uid=$(id -u) host=$(hostname) job=${{SLURM_JOB_ID:-none}}; \
         mkdir sub && echo checkpoint > sub/ckpt && echo result > out.txt; \
         echo x > {} 2>/dev/null && echo INPUT-WRITTEN; exit 4",
        input.display(),
        input.display()
    ));
    job.read_only.push(input.clone());
    let sb = d.sandbox("");
    let o = sb.run(&job, &CancellationToken::new()).await.unwrap();
    let t = tail(&o);
    assert_eq!(o.end, JobEnd::Exited(4), "{t}");
    assert!(t.contains("INPUT-DATA") && t.contains("uid=65534 host=sandbox"), "{t}");
    assert!(!t.contains("INPUT-WRITTEN") && std::fs::read_to_string(&input).unwrap() == "INPUT-DATA", "{t}");
    assert!(t.contains("job=none"), "Slurm's environment does not reach the job: {t}");
    assert_eq!(std::fs::read_to_string(d.scratch.join("out.txt")).unwrap(), "result\n");
    assert_eq!(std::fs::read_to_string(d.scratch.join("sub/ckpt")).unwrap(), "checkpoint\n");
    assert!(std::fs::read_to_string(&job.log).unwrap().contains("INPUT-DATA"), "the log came back");
    assert!(t.contains("slurm: job ") && t.contains(" ended COMPLETED"), "{t}");
    let left: Vec<_> = std::fs::read_dir(d.shared.join("jobs")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "job folders left in the shared dir: {left:?}");
    // Phases that are not train/embed stay on this machine.
    let mut build = d.job("echo local=${SLURM_JOB_ID:-none}");
    build.phase = "build".into();
    let o = sb.run(&build, &CancellationToken::new()).await.unwrap();
    assert!(o.success() && tail(&o).contains("local=none") && !tail(&o).contains("slurm: job"), "{}", tail(&o));
}

#[tokio::test]
async fn two_gpu_jobs_at_once_get_different_devices() {
    if !up("gpus").await {
        return;
    }
    let (a, b) = (Dirs::new(), Dirs::new());
    let script = |mark: &str| {
        format!(
            ": {mark}; echo start=$(date +%s.%N); echo gpus=$SLURM_JOB_GPUS cvd=${{CUDA_VISIBLE_DEVICES-unset}}; sleep 4; echo end=$(date +%s.%N)"
        )
    };
    let marks = [format!("AR-GPU-A-{}", std::process::id()), format!("AR-GPU-B-{}", std::process::id())];
    let (sa, sb) = (a.sandbox("gpu:1"), b.sandbox("gpu:1"));
    let (ja, jb) = (a.job(&script(&marks[0])), b.job(&script(&marks[1])));
    let (ca, cb) = (CancellationToken::new(), CancellationToken::new());
    // While both run: the devices each job's processes may open, as the host's cgroup says.
    let devices = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen: [Option<String>; 2] = [None, None];
        while seen.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, m) in marks.iter().enumerate() {
                if seen[i].is_none() {
                    seen[i] = processes_mentioning(m).into_iter().find_map(|(pid, _)| allowed_devices(pid));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    };
    let (oa, ob, seen) = tokio::join!(sa.run(&ja, &ca), sb.run(&jb, &cb), devices);
    let (ta, tb) = (tail(&oa.unwrap()), tail(&ob.unwrap()));
    let conf = std::fs::read_to_string("/etc/slurm/slurm.conf").unwrap_or_default();
    if conf.contains("TaskPlugin=task/cgroup") {
        let [Some(da), Some(db)] = seen else { panic!("the jobs' device cgroups were not found: {seen:?}") };
        // Each may open exactly one of the two fake GPUs, not the same one.
        let open = |d: &str| {
            d.lines().filter(|l| l.contains("No such device")).map(|l| l[..1].to_string()).collect::<Vec<_>>()
        };
        let denied = |d: &str| d.lines().filter(|l| l.contains("not permitted")).count();
        assert!(open(&da).len() == 1 && open(&db).len() == 1 && open(&da) != open(&db), "{da}\n---\n{db}");
        assert!(denied(&da) == 1 && denied(&db) == 1, "{da}\n---\n{db}");
    } else {
        eprintln!("slurm::gpus: devices cgroup not checked: Slurm runs without task/cgroup here");
    }
    let field = |t: &str, k: &str| -> String {
        t.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {t}"))
            .to_string()
    };
    let (ga, gb) = (field(&ta, "gpus"), field(&tb, "gpus"));
    assert!(!ga.is_empty() && !gb.is_empty() && ga != gb, "different devices: {ga:?} vs {gb:?}\n{ta}\n{tb}");
    assert_ne!(field(&ta, "cvd"), "unset", "CUDA_VISIBLE_DEVICES as Slurm sets it: {ta}");
    let num = |t: &str, k: &str| field(t, k).parse::<f64>().unwrap();
    let overlap = num(&ta, "end").min(num(&tb, "end")) - num(&ta, "start").max(num(&tb, "start"));
    assert!(overlap > 1.0, "the two jobs ran at the same time (overlap {overlap:.1} s)\n{ta}\n{tb}");
}

/// What opening each fake GPU gives a process in the same devices cgroup (v1) as `pid`, if that is
/// a Slurm job's: "0: ...No such device..." (allowed: no driver behind it) or "...not permitted".
fn allowed_devices(pid: u32) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg.lines().find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_string()))?;
    if !path.contains("job_") {
        return None;
    }
    let procs = std::ffi::CString::new(format!("/sys/fs/cgroup/devices{path}/cgroup.procs")).unwrap();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "for d in 0 1; do (exec 3</dev/argpu$d) 2>&1 | sed \"s/^/$d: /\"; done"]);
    // SAFETY: open/write/close only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
    let out = cmd.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn cancel_scancels_and_a_timeout_is_a_timeout() {
    if !up("cancel").await {
        return;
    }
    let d = Dirs::new();
    let sb = d.sandbox("");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(8)).await;
        c.cancel();
    });
    let started = Instant::now();
    let job = d.job("echo started; sleep 300");
    let log = job.log.clone();
    let watch = async {
        // The log on the server's side grows while the job runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("started") {
            assert!(Instant::now() < deadline, "the job's log never reached the server while it ran");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(!cancel.is_cancelled(), "the log came only at the end");
    };
    let (o, ()) = tokio::join!(sb.run(&job, &cancel), watch);
    let o = o.unwrap();
    assert_eq!(o.end, JobEnd::Cancelled, "{}", tail(&o));
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    let ws = format!("ws={}", d.scratch.display());
    assert!(live_jobs(|c| c.ends_with(&ws)).await.is_empty(), "the cancelled job is still queued or running");

    let e = Dirs::new();
    let mut job = e.job("echo sleeping; sleep 300");
    job.timeout = Duration::from_secs(3);
    let started = Instant::now();
    let o = e.sandbox("").run(&job, &CancellationToken::new()).await.unwrap();
    assert_eq!(o.end, JobEnd::TimedOut, "{}", tail(&o));
    assert!(tail(&o).contains("sleeping"), "{}", tail(&o));
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());

    // Cancelled by someone else (an administrator's scancel): lost, never a result.
    let f = Dirs::new();
    let ws = format!("ws={}", f.scratch.display());
    let job = f.job("echo working; sleep 300");
    let sb = f.sandbox("");
    let admin = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((id, _)) = live_jobs(|c| c.ends_with(&ws)).await.into_iter().find(|(_, s)| s == "RUNNING") {
                autoresearch_mcp::sandbox::slurm::scancel(id).await.unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "the job never ran");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let never = CancellationToken::new();
    let (o, ()) = tokio::join!(sb.run(&job, &never), admin);
    let o = o.unwrap();
    assert_eq!(o.end, JobEnd::Lost, "{}", tail(&o));
    assert!(!o.success() && o.describe().starts_with("lost:"), "{}", o.describe());
    assert!(tail(&o).contains("ended CANCELLED"), "{}", tail(&o));
}

/// A workspace whose train and embed phases run on Slurm, its shared directory beside it.
fn slurm_workspace() -> Ws {
    let ws = Arena::workspace("backend = \"slurm\"\n");
    let shared = ws.root.parent().unwrap().join("slurm-shared");
    std::fs::create_dir_all(&shared).unwrap();
    let toml = ws.root.join("autoresearch.toml");
    let mut cfg = std::fs::read_to_string(&toml).unwrap();
    // No gres: two_gpu_jobs_at_once_get_different_devices needs both fake GPUs free at once.
    cfg.push_str(&format!("\n[slurm]\nshared_dir = {:?}\npoll_seconds = 0.5\n", shared.display().to_string()));
    std::fs::write(&toml, cfg).unwrap();
    ws
}

fn shared_of(ws: &Ws) -> PathBuf {
    ws.root.parent().unwrap().join("slurm-shared")
}

/// The escape cases loopback, write_outside and read_secret in one attack, and fake_metrics (a whole
/// tests-profile experiment through Slurm, scored by the server).
#[tokio::test(flavor = "multi_thread")]
async fn escapes_fail_and_an_experiment_is_scored_through_slurm() {
    if !up("escapes").await {
        return;
    }
    let _slot = experiment_slot().await;
    let a = Arena::with(slurm_workspace(), false).await;
    let tag = std::process::id();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let home = PathBuf::from(std::env::var("HOME").unwrap_or("/root".into()));
    let secret = home.join(format!(".ar-slurm-secret-{tag}"));
    std::fs::write(&secret, "TOPSECRET-SLURM").unwrap();
    let writes = [
        a.ws.root.join(format!("escape-{tag}.txt")),
        home.join(format!(".escape-slurm-{tag}")),
        shared_of(&a.ws).join(format!("escape-{tag}.txt")),
    ];
    let reads = [secret.clone(), a.ws.state("runs.jsonl"), a.ws.root.join("autoresearch.toml")];
    let q = |ps: &[PathBuf]| ps.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", ");
    let (t, status) = a
        .attack(&in_train(&format!(
            "let lo = std::net::TcpStream::connect_timeout(&\"127.0.0.1:{port}\".parse().unwrap(), std::time::Duration::from_secs(2)).map(|_| \"CONNECTED\").unwrap_or(\"refused\"); \
             let w = [{w}].iter().map(|p| format!(\"{{p}}={{}}\", if std::fs::write(p, b\"x\").is_ok() {{ \"WROTE\" }} else {{ \"denied\" }})).collect::<Vec<_>>().join(\" \"); \
             let r = [{r}].iter().map(|p| format!(\"{{p}}={{}}\", match std::fs::read(p) {{ Ok(b) => format!(\"READ {{}}\", b.len()), Err(_) => \"denied\".into() }})).collect::<Vec<_>>().join(\" \"); \
             format!(\"loopback={{lo}} {{w}} {{r}} slurm={{:?}}\", std::env::var(\"SLURM_JOB_ID\").ok())",
            w = q(&writes),
            r = q(&reads),
        )))
        .await;
    let rep = report(&t);
    assert_eq!(status, "crashed", "{t}");
    assert!(rep.contains("loopback=refused"), "{rep}");
    assert!(listener.accept().is_err(), "the host's loopback listener saw a connection");
    assert!(!rep.contains("WROTE") && !rep.contains("READ ") && rep.contains("slurm=None"), "{rep}");
    for p in &writes {
        assert!(!p.exists(), "{} was written on the host", p.display());
    }
    assert!(!t.contains("TOPSECRET-SLURM"), "{t}");
    std::fs::remove_file(&secret).unwrap();
    assert!(live_jobs_of(a.client.pid).await.is_empty());

    // fake_metrics: the run is ok, the recorded score the server's.
    crate::escape::fake_metrics_do_not_reach_the_ledger(&a).await;
    assert!(live_jobs_of(a.client.pid).await.is_empty());
    let left: Vec<_> = std::fs::read_dir(shared_of(&a.ws).join("jobs")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "job folders left: {left:?}");
}

/// SIGKILL the server while its train phase runs on Slurm: the next server cancels the job and
/// records the run abandoned.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_servers_job_is_cancelled_and_its_run_abandoned() {
    if !up("sigkill").await {
        return;
    }
    let _slot = experiment_slot().await;
    let ws = slurm_workspace();
    // Training that lasts (until budget + grace, 70 s): the job is surely running when the server dies.
    let toml = ws.root.join("autoresearch.toml");
    let cfg = std::fs::read_to_string(&toml).unwrap();
    let cfg: Vec<String> = cfg
        .lines()
        .map(
            |l| if l.trim_start().starts_with("budget_seconds") { "budget_seconds = 60".into() } else { l.to_string() },
        )
        .collect();
    assert!(cfg.iter().any(|l| l == "budget_seconds = 60"), "{cfg:?}");
    std::fs::write(&toml, cfg.join("\n") + "\n").unwrap();
    let src = std::fs::read_to_string(ws.train_rs()).unwrap();
    let sleeper = "if std::env::var(\"AR_PHASE\").as_deref() == Ok(\"train\") { std::thread::sleep(std::time::Duration::from_secs(600)); }";
    std::fs::write(ws.train_rs(), insert_at_main_start(&src, sleeper)).unwrap();
    let client = ws.client().await;
    let pid = client.pid;
    let params = rmcp::model::CallToolRequestParams::new("run_experiment".to_string())
        .with_arguments(json!({"description": "killed"}).as_object().cloned().unwrap());
    // The request stays in flight until the server is killed: dropping it would send a cancellation,
    // and the server would cancel the job itself, leaving nothing to reap.
    let mut call = Box::pin(client.service.call_tool(params));
    let job = tokio::select! {
        r = &mut call => panic!("the run ended before its Slurm job was seen: {r:?}"),
        id = async {
            let deadline = Instant::now() + Duration::from_secs(400);
            loop {
                if let Some((id, _)) = live_jobs_of(pid).await.into_iter().find(|(_, s)| s == "RUNNING") {
                    break id;
                }
                assert!(Instant::now() < deadline, "no Slurm job of server {pid} started");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        } => id,
    };
    // RUNNING is set at allocation, a moment before slurmd launches the batch script; a job cancelled in
    // between is recorded COMPLETED ("already killed, do not launch"). Let it launch first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(call);
    drop(client);
    let again = ws.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !live_jobs_of(pid).await.is_empty() {
        assert!(Instant::now() < deadline, "job {job} of the killed server {pid} is still queued or running");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The loop above saw it end within a minute of the restart, long before its own limit (budget 60 s
    // + grace 30 s after launch): the reaper's scancel ended it. sandbox-job answers scancel's SIGTERM
    // by stopping the phase and exiting, which Slurm records CANCELLED or, when the script's exit comes
    // first, COMPLETED.
    let state = squeue(&["--states=all", "-j", &job.to_string()]).await.unwrap()[0].state();
    assert!(["CANCELLED", "COMPLETED"].contains(&state.as_str()), "job {job}: {state}");
    let ev = std::fs::read_to_string(ws.state("runs.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(ev.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "abandoned", "{last}");
    for _ in 0..150 {
        if std::fs::read_dir(shared_of(&ws).join("jobs")).map(|d| d.count() == 0).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<_> =
        std::fs::read_dir(shared_of(&ws).join("jobs")).into_iter().flatten().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the killed server's job folders are removed: {left:?}");
    let m = again.call("read_metrics", json!({"last": 1})).await;
    assert!(!is_error(&m), "{}", text(&m));

    // The next run's train job cancelled by someone else (an administrator, a preemption): the run
    // ends crashed, saying the job was lost, never ok.
    let pid = again.pid;
    let params = rmcp::model::CallToolRequestParams::new("run_experiment".to_string())
        .with_arguments(json!({"description": "lost"}).as_object().cloned().unwrap());
    let admin = async {
        let deadline = Instant::now() + Duration::from_secs(400);
        loop {
            if let Some((id, _)) = live_jobs_of(pid).await.into_iter().find(|(_, s)| s == "RUNNING") {
                autoresearch_mcp::sandbox::slurm::scancel(id).await.unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "no Slurm job of server {pid} started");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (r, ()) = tokio::join!(again.service.call_tool(params), admin);
    let r = r.unwrap();
    let status = r.structured_content.as_ref().map(|s| s["status"].clone());
    assert_eq!(status, Some(json!("crashed")), "{}", text(&r));
    assert!(text(&r).contains("lost: its Slurm job ended before it finished"), "{}", text(&r));
}
