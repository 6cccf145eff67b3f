//! The `docker` sandbox backend, driven directly with hand-built jobs (no server): isolation
//! (network, host files, writes, the Docker socket, environment), limits (memory, pids, time),
//! cancellation, and that no container is ever left behind.
//!
//! Needs a Docker engine and the test image: `scripts/docker-engine.sh` makes both (it is run
//! once here when the engine does not answer; set AUTORESEARCH_DOCKER_SETUP=0 to not). Each test
//! is skipped, with the reason printed, only when no engine can be started at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use autoresearch_mcp::sandbox::cgroup::Limits;
use autoresearch_mcp::sandbox::docker::{DEFAULT_IMAGE, DockerSandbox, LABEL, LABEL_PID, reap};
use autoresearch_mcp::sandbox::{Job, JobEnd, JobOutcome, Sandbox};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, ListContainersOptionsBuilder};
use tokio_util::sync::CancellationToken;

use crate::common::repo_root;

/// Whether an engine answers, after running the setup script once if it did not.
pub fn engine() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let sb = DockerSandbox::new(DEFAULT_IMAGE.into()).unwrap();
            if sb.check().is_ok() {
                return Ok(());
            }
            if std::env::var("AUTORESEARCH_DOCKER_SETUP").as_deref() == Ok("0") {
                return Err(format!("{:#}", sb.check().unwrap_err()));
            }
            let script = repo_root().join("scripts/docker-engine.sh");
            match std::process::Command::new("bash").arg(&script).status() {
                Ok(s) if s.success() => {}
                Ok(s) => return Err(format!("{} exited with {s}", script.display())),
                Err(e) => return Err(format!("cannot run {}: {e}", script.display())),
            }
            sb.check().map_err(|e| format!("{e:#}"))
        })
        .clone()
}

/// The sandbox, or None (reason printed) when no engine can be started here.
fn sandbox(test: &str) -> Option<DockerSandbox> {
    match engine() {
        Ok(()) => Some(DockerSandbox::new(DEFAULT_IMAGE.into()).unwrap()),
        Err(e) => {
            eprintln!("SKIPPED docker::{test}: no Docker engine could be started: {e}");
            None
        }
    }
}

/// A job's folders: `scratch` (writable) and, beside it, its log and an unbound `secret`.
struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    scratch: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("ar-docker-").tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let scratch = root.join("run");
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(root.join("secret"), "HOST-SECRET-NEXT-TO-SCRATCH").unwrap();
        Dirs { _tmp: tmp, root, scratch }
    }

    /// `/bin/sh -c script` as an unprivileged job with small limits; `phase` labels its container.
    fn job(&self, phase: &str, script: &str) -> Job {
        Job {
            phase: phase.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("HOME".into(), self.scratch.join("home").display().to_string()),
                ("TMPDIR".into(), self.scratch.join("tmp").display().to_string()),
                ("AR_MARK".into(), "docker-test".into()),
            ],
            cwd: self.scratch.clone(),
            scratch: self.scratch.clone(),
            timeout: Duration::from_secs(60),
            log: self.root.join("run.log"),
            log_cap: 1 << 20,
            max_file_bytes: 64 << 20,
            host_system: true,
            read_only: vec![],
            writable: vec![self.scratch.clone()],
            limits: Limits { memory_bytes: 256 << 20, pids: 64, cpus: 1.0 },
            unprivileged: true,
            disk_quota_bytes: 0,
            gpus: Default::default(),
        }
    }
}

fn tail(o: &JobOutcome) -> String {
    String::from_utf8_lossy(&o.tail).into_owned()
}

/// Containers of this test process with the given phase label (all states).
async fn containers(sb: &DockerSandbox, phase: &str) -> Vec<String> {
    let docker = sb.client().await.unwrap();
    let filters: HashMap<&str, Vec<String>> = HashMap::from([(
        "label",
        vec![
            format!("{LABEL}=1"),
            format!("{LABEL_PID}={}", std::process::id()),
            format!("autoresearch-mcp.phase={phase}"),
        ],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
        .await
        .unwrap();
    list.into_iter().filter_map(|c| c.id).collect()
}

async fn run(sb: &DockerSandbox, job: &Job) -> JobOutcome {
    let o = sb.run(job, &CancellationToken::new()).await.unwrap();
    assert!(containers(sb, &job.phase).await.is_empty(), "container of {} left behind", job.phase);
    o
}

#[tokio::test]
async fn runs_with_exactly_the_jobs_environment_as_nobody() {
    let Some(sb) = sandbox("env") else { return };
    let d = Dirs::new();
    let job = d.job("t-env", "env | sort; echo uid=$(id -u) gid=$(id -g); pwd; echo out; echo err >&2; exit 3");
    let o = run(&sb, &job).await;
    let t = tail(&o);
    assert_eq!(o.end, JobEnd::Exited(3), "{t}");
    // stdout and stderr interleave in no fixed order: keep the `env` lines.
    let env: Vec<&str> = t.lines().filter(|l| l.contains('=') && !l.starts_with("uid=")).collect();
    let mut want: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // The shell itself exports PWD.
    want.push(format!("PWD={}", d.scratch.display()));
    want.sort();
    assert_eq!(env, want, "the environment is the job's, nothing else (no HOSTNAME): {t}");
    assert!(t.contains("uid=65534 gid=65534"), "{t}");
    assert!(t.contains(&format!("{}\n", d.scratch.display())), "cwd is the job's: {t}");
    assert!(t.contains("out\n") && t.contains("err\n"), "stdout and stderr captured: {t}");
    let log = std::fs::read_to_string(&job.log).unwrap();
    assert!(log.contains("AR_MARK=docker-test") && log.contains("err"), "{log}");
}

#[tokio::test]
async fn privileged_job_is_root_without_capabilities() {
    let Some(sb) = sandbox("root") else { return };
    let d = Dirs::new();
    let mut job =
        d.job("t-root", "id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status");
    job.unprivileged = false;
    let o = run(&sb, &job).await;
    let t = tail(&o);
    assert!(o.success(), "{t}");
    assert!(t.starts_with("0\n"), "{t}");
    for cap in ["CapEff", "CapPrm", "CapBnd"] {
        assert!(t.contains(&format!("{cap}:\t0000000000000000")), "{cap} not empty: {t}");
    }
    assert!(t.contains("NoNewPrivs:\t1"), "{t}");
}

#[tokio::test]
async fn no_network_not_even_to_host_loopback() {
    let Some(sb) = sandbox("net") else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let d = Dirs::new();
    let script = format!(
        "ls /sys/class/net; for h in 127.0.0.1 172.17.0.1 10.0.0.1; do \
         if timeout 3 bash -c \"exec 3<>/dev/tcp/$h/{port}\" 2>/dev/null; then echo CONNECTED $h; else echo refused $h; fi; done"
    );
    let o = run(&sb, &d.job("t-net", &script)).await;
    let t = tail(&o);
    assert!(o.success(), "{t}");
    assert!(!t.contains("CONNECTED"), "reached the network: {t}");
    assert_eq!(t.lines().next(), Some("lo"), "only loopback: {t}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the host listener saw a connection");
}

#[tokio::test]
async fn host_files_outside_the_allowlist_are_absent() {
    let Some(sb) = sandbox("files") else { return };
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let secret = home.join(format!(".ar-docker-secret-{}", std::process::id()));
    std::fs::write(&secret, "HOST-SECRET-IN-HOME").unwrap();
    let d = Dirs::new();
    let script = format!(
        "cat {} {} 2>&1; ls -a {} 2>&1; ls /var /run /etc 2>&1; cat /etc/shadow 2>&1; echo done",
        secret.display(),
        d.root.join("secret").display(),
        home.display()
    );
    let o = run(&sb, &d.job("t-files", &script)).await;
    let _ = std::fs::remove_file(&secret);
    let t = tail(&o);
    assert!(t.contains("done"), "{t}");
    assert!(!t.contains("HOST-SECRET"), "read a host secret: {t}");
    let name = secret.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!t.lines().any(|l| l == name), "listed the host's home: {t}");
    assert!(!t.contains("docker.sock"), "{t}");
}

#[tokio::test]
async fn docker_socket_is_absent_and_cannot_be_bound() {
    let Some(sb) = sandbox("socket") else { return };
    let d = Dirs::new();
    let o = run(
        &sb,
        &d.job(
            "t-sock",
            "for s in /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock; do \
             test -e $s && echo PRESENT $s; done; echo checked",
        ),
    )
    .await;
    let t = tail(&o);
    assert!(t.contains("checked") && !t.contains("PRESENT"), "{t}");
    for bad in ["/var/run", "/run", "/var", "/", "/var/run/docker.sock"] {
        let mut job = d.job("t-sock-refused", "true");
        job.read_only = vec![bad.into()];
        let r = sb.run(&job, &CancellationToken::new()).await;
        assert!(r.is_err(), "binding {bad} must be refused");
    }
    assert!(containers(&sb, "t-sock-refused").await.is_empty());
}

#[tokio::test]
async fn writes_only_to_writable_paths() {
    let Some(sb) = sandbox("writes") else { return };
    let d = Dirs::new();
    let ro = d.root.join("inputs");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("data"), "input").unwrap();
    let script = format!(
        "for f in /usr/evil /etc/evil /evil /bin/evil {ro}/evil {ro}/data; do \
         if echo x >> $f 2>/dev/null; then echo WROTE $f; fi; done; \
         cat {ro}/data; echo; echo ok > {s}/out && echo scratch-ok; echo t > /tmp/t && echo tmp-ok; \
         echo s > /dev/shm/s && echo shm-ok; cp /bin/true /tmp/x && /tmp/x && echo tmp-exec-ok",
        ro = ro.display(),
        s = d.scratch.display()
    );
    let mut job = d.job("t-writes", &script);
    job.read_only = vec![ro.clone()];
    let o = run(&sb, &job).await;
    let t = tail(&o);
    assert!(!t.contains("WROTE"), "{t}");
    for ok in ["input", "scratch-ok", "tmp-ok", "shm-ok", "tmp-exec-ok"] {
        assert!(t.contains(ok), "{ok}: {t}");
    }
    assert_eq!(std::fs::read_to_string(d.scratch.join("out")).unwrap(), "ok\n");
    assert_eq!(std::fs::read_to_string(ro.join("data")).unwrap(), "input");
    assert!(!Path::new("/evil").exists() && !Path::new("/usr/evil").exists());
}

#[tokio::test]
async fn file_size_limit_applies() {
    let Some(sb) = sandbox("fsize") else { return };
    let d = Dirs::new();
    let mut job = d.job("t-fsize", &format!("head -c 2000000 /dev/zero > {}/big; echo rc=$?", d.scratch.display()));
    job.max_file_bytes = 1 << 20;
    let o = run(&sb, &job).await;
    let t = tail(&o);
    let size = std::fs::metadata(d.scratch.join("big")).map(|m| m.len()).unwrap_or(0);
    assert!(size <= 1 << 20, "wrote {size} bytes: {t}");
}

#[tokio::test]
async fn memory_limit_kills_with_oom() {
    let Some(sb) = sandbox("oom") else { return };
    let d = Dirs::new();
    let mut job = d.job("t-oom", "exec /usr/bin/python3 -c \"b = b'x' * (512 << 20); print('ALLOCATED', len(b))\"");
    job.limits.memory_bytes = 64 << 20;
    let o = run(&sb, &job).await;
    let t = tail(&o);
    assert!(!t.contains("ALLOCATED"), "{t}");
    assert!(o.oom_killed, "oom_killed not reported: {:?} {t}", o.end);
    assert_eq!(o.describe(), "killed for exceeding its memory limit");
}

#[tokio::test]
async fn pids_limit_stops_fork_bombs() {
    let Some(sb) = sandbox("pids") else { return };
    let d = Dirs::new();
    let mut job = d.job("t-pids", "n=0; for i in $(seq 60); do sleep 5 & n=$((n+1)); done 2>&1; echo forked $n; kill $(jobs -p) 2>/dev/null; true");
    job.limits.pids = 16;
    job.timeout = Duration::from_secs(30);
    let o = run(&sb, &job).await;
    let t = tail(&o);
    assert!(t.to_lowercase().contains("fork"), "no fork failure under a 16-pid limit: {t}");
}

#[tokio::test]
async fn timeout_kills_and_removes() {
    let Some(sb) = sandbox("timeout") else { return };
    let d = Dirs::new();
    let mut job = d.job("t-timeout", "echo started; sleep 1000");
    job.timeout = Duration::from_secs(2);
    let t0 = std::time::Instant::now();
    let o = run(&sb, &job).await;
    assert_eq!(o.end, JobEnd::TimedOut);
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    assert!(tail(&o).contains("started"));
}

#[tokio::test]
async fn cancel_kills_and_removes() {
    let Some(sb) = sandbox("cancel") else { return };
    let d = Dirs::new();
    let job = d.job("t-cancel", "echo started; sleep 1000");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.cancel();
    });
    let t0 = std::time::Instant::now();
    let o = sb.run(&job, &cancel).await.unwrap();
    assert_eq!(o.end, JobEnd::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(containers(&sb, "t-cancel").await.is_empty(), "container left after cancel");
}

#[tokio::test]
async fn log_is_capped() {
    let Some(sb) = sandbox("logcap") else { return };
    let d = Dirs::new();
    let mut job = d.job("t-logcap", "head -c 300000 /dev/zero | tr '\\0' a; echo; echo THE-END");
    job.log_cap = 10_000;
    let o = run(&sb, &job).await;
    assert!(o.log_truncated);
    assert!(tail(&o).contains("THE-END"));
    assert!(std::fs::metadata(&job.log).unwrap().len() < 11_000);
}

#[tokio::test]
async fn reap_removes_containers_of_dead_servers() {
    let Some(sb) = sandbox("reap") else { return };
    let docker = sb.client().await.unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let body = ContainerCreateBody {
        image: Some(DEFAULT_IMAGE.into()),
        cmd: Some(vec!["/nothing".into()]),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(LABEL.to_string(), "1".to_string()), (LABEL_PID.to_string(), dead.to_string())])),
        ..Default::default()
    };
    let name = format!("autoresearch-reap-test-{}", std::process::id());
    let id =
        docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body).await.unwrap().id;
    let n = reap(docker).await.unwrap();
    assert!(n >= 1);
    assert!(docker.inspect_container(&id, None).await.is_err(), "orphan container still there");
}
