//! The `docker` backend (bollard). Each job is one fresh container: no network (`network_mode
//! none` + `network_disabled`), every capability dropped, `no-new-privileges`, a read-only root,
//! private tmpfs `/tmp` (exec allowed: compilers and CUDA caches need it) and `/dev/shm`, memory =
//! memory+swap limit, pids and CPU limits, core dumps off and RLIMIT_FSIZE, uid/gid nobody for
//! unprivileged jobs (uid 0 without capabilities otherwise), and exactly the job's environment.
//!
//! The job's files come from bind mounts at the same absolute paths: the host's system paths
//! ([`super::root::SYSTEM_READ_ONLY`]) unless the image says it brings its own (label
//! `autoresearch.host-system=image`, set by `docker/Dockerfile`), then the job's read-only and
//! writable paths. Never the Docker socket, `/run` or `/var/run`: a job path that is or contains
//! one of them is refused.
//!
//! Containers are labelled `autoresearch-mcp=1` and `autoresearch-mcp.server-pid=<pid>`: [`reap`]
//! removes those of servers that are gone. A timeout or cancel kills and removes the container;
//! it is always removed at the end.
//!
//! Engines as old as API 1.41 (Debian's docker.io 20.10) work: the client negotiates its version
//! on first use.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountBindOptions, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::gpus::Gpus;
use super::local::{LogSink, NOBODY};
use super::root::SYSTEM_READ_ONLY;
use super::{BoxFuture, Job, JobEnd, JobOutcome, Sandbox};

/// The offline test image `scripts/docker-engine.sh` builds (an empty root); named in config.
pub use crate::config::DEFAULT_DOCKER_IMAGE as DEFAULT_IMAGE;
/// Label on every container this server creates.
pub const LABEL: &str = "autoresearch-mcp";
/// Label holding the pid of the server that created the container.
pub const LABEL_PID: &str = "autoresearch-mcp.server-pid";
/// Image label: `image` means the image brings its own system files (no host system binds).
pub const LABEL_HOST_SYSTEM: &str = "autoresearch.host-system";

/// How long engine calls that should be instant (ping, inspect, create) may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DockerSandbox {
    image: String,
    /// Connected and version-negotiated on first use (negotiation needs the runtime).
    docker: OnceCell<Docker>,
}

impl DockerSandbox {
    /// Cheap: no engine call is made until [`Sandbox::check`] or the first run.
    pub fn new(image: String) -> Result<Self> {
        if image.trim().is_empty() {
            bail!("sandbox.docker_image is empty");
        }
        Ok(Self { image, docker: OnceCell::new() })
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    /// The engine client, version negotiated (so API 1.41 engines work).
    pub async fn client(&self) -> Result<&Docker> {
        self.docker.get_or_try_init(connect).await
    }

    /// Removes containers left by servers that are gone; returns how many.
    pub async fn reap_orphans(&self) -> Result<usize> {
        reap(self.client().await?).await
    }

    /// Engine reachable and image present, as an actionable message.
    pub async fn check_async(&self) -> Result<()> {
        let docker = self.client().await?;
        probe(docker, &self.image).await
    }
}

/// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and negotiates the API version.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults().context("connect to the Docker engine")?;
    let docker = tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
        .await
        .context("the Docker engine did not answer in time")?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the Docker engine ({e}); start it (scripts/docker-engine.sh) or use sandbox.backend = \"local\""
            )
        })?;
    Ok(docker)
}

async fn probe(docker: &Docker, image: &str) -> Result<()> {
    tokio::time::timeout(API_TIMEOUT, docker.ping())
        .await
        .context("the Docker engine did not answer in time")?
        .map_err(|e| anyhow::anyhow!("the Docker engine does not answer ({e}); start it (scripts/docker-engine.sh)"))?;
    match tokio::time::timeout(API_TIMEOUT, docker.inspect_image(image)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!(
            "Docker image {image:?} is missing ({e}); build it: scripts/docker-engine.sh makes the test image \
             {DEFAULT_IMAGE}, docker/README.md the GPU one, then set sandbox.docker_image"
        ),
        Err(_) => bail!("the Docker engine did not answer in time"),
    }
}

/// Removes every container labelled [`LABEL`] whose server pid is no longer alive (or unreadable).
/// Returns how many were removed.
pub async fn reap(docker: &Docker) -> Result<usize> {
    let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", vec![format!("{LABEL}=1")])]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
        .await
        .context("list containers")?;
    let mut removed = 0;
    for c in list {
        let Some(id) = c.id else { continue };
        let pid = c.labels.as_ref().and_then(|l| l.get(LABEL_PID)).and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|p| p > 0 && unsafe { libc::kill(p, 0) } == 0);
        if !alive && remove(docker, &id).await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).v(true).build())).await
}

impl Sandbox for DockerSandbox {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// Blocking (a few engine round trips): runs on its own thread with its own small runtime, so
    /// it works from synchronous code and from inside any tokio runtime alike.
    fn check(&self) -> Result<()> {
        let image = self.image.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("start a runtime for the Docker check")?;
                rt.block_on(async {
                    let docker = connect().await?;
                    probe(&docker, &image).await
                })
            })
            .join()
            .unwrap_or_else(|_| bail!("the Docker check panicked"))
        })
    }

    fn execute<'a>(&'a self, job: &'a Job, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<JobOutcome>> {
        Box::pin(self.run_job(job, cancel))
    }
}

/// Paths no job may see, nor any parent of them: the engine's socket lives there.
const FORBIDDEN: &[&str] = &["/run", "/var/run", "/proc", "/dev", "/var/lib/docker", "/var/lib/containerd"];

/// Refuses job paths that would expose the host (its root, `/run`, the Docker socket, ...).
fn check_job_path(p: &Path) -> Result<()> {
    if !p.is_absolute() {
        bail!("job path {} is not absolute", p.display());
    }
    let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    for cand in [p, real.as_path()] {
        if cand == Path::new("/") {
            bail!("refusing to bind the host's root into the sandbox");
        }
        for f in FORBIDDEN {
            let f = Path::new(f);
            if cand.starts_with(f) || f.starts_with(cand) {
                bail!("refusing to bind {} into the sandbox (it is or contains {})", p.display(), f.display());
            }
        }
    }
    Ok(())
}

fn bind(path: &Path, read_only: bool) -> Mount {
    let p = path.display().to_string();
    Mount {
        target: Some(p.clone()),
        source: Some(p),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            propagation: Some(bollard::models::MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl DockerSandbox {
    /// The container's configuration for `job`.
    async fn config(&self, docker: &Docker, job: &Job) -> Result<ContainerCreateBody> {
        let image = tokio::time::timeout(API_TIMEOUT, docker.inspect_image(&self.image))
            .await
            .context("the Docker engine did not answer in time")?
            .map_err(|e| anyhow::anyhow!("Docker image {:?} is missing ({e}); see docker/README.md", self.image))?;
        let own_system = image
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_HOST_SYSTEM))
            .is_some_and(|v| v == "image");

        let mut mounts: Vec<Mount> = Vec::new();
        if !own_system && job.host_system {
            for p in SYSTEM_READ_ONLY {
                let p = Path::new(p);
                // /sys is the container's own (read-only sysfs, CPU topology included).
                if p.starts_with("/sys") || std::fs::metadata(p).is_err() {
                    continue;
                }
                mounts.push(bind(p, true));
            }
        }
        for (paths, ro) in [(&job.read_only, true), (&job.writable, false)] {
            for p in paths {
                // /sys is the container's own (read-only sysfs, CPU topology included).
                if p.starts_with("/sys") {
                    continue;
                }
                check_job_path(p)?;
                if std::fs::metadata(p).is_err() {
                    continue;
                }
                mounts.push(bind(p, ro));
            }
        }
        // One mount per target (the engine refuses duplicates; the later, writable one wins).
        let mut seen = std::collections::HashSet::new();
        mounts.reverse();
        mounts.retain(|m| seen.insert(m.target.clone()));
        // Parents before children, so a writable dir inside a read-only one is mounted over it.
        mounts.sort_by_key(|m| Path::new(m.target.as_deref().unwrap_or("/")).components().count());

        let mem = i64::try_from(job.limits.memory_bytes).unwrap_or(i64::MAX);
        let fsize = i64::try_from(job.max_file_bytes).unwrap_or(i64::MAX);
        // GPU through the NVIDIA Container Toolkit: every GPU, or only the job's (by device minor, as
        // the toolkit numbers them). Untested here: no development machine has both a GPU and
        // Docker; the engine refuses the request when the toolkit is not installed.
        let host_gpus = super::gpus::host_gpus(Path::new("/dev"));
        let (count, device_ids) = match &job.gpus {
            Gpus::All => (Some(-1), None),
            Gpus::Only(list) => (None, Some(list.iter().map(u32::to_string).collect::<Vec<_>>())),
        };
        let device_requests = (!host_gpus.is_empty() && job.gpus != Gpus::none()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count,
                device_ids,
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        });
        let host = HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            privileged: Some(false),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), "rw,exec,nosuid,nodev,mode=1777".to_string())])),
            // Docker's own private /dev/shm tmpfs (ipc mode private), sized here; it counts
            // against the memory limit like any tmpfs page.
            ipc_mode: Some("private".into()),
            shm_size: (mem > 0).then_some((mem / 2).max(64 << 20)),
            memory: (mem > 0).then_some(mem),
            memory_swap: (mem > 0).then_some(mem),
            pids_limit: i64::try_from(job.limits.pids).ok().filter(|&p| p > 0),
            nano_cpus: (job.limits.cpus > 0.0).then_some((job.limits.cpus * 1e9) as i64),
            ulimits: Some(vec![
                ResourcesUlimits { name: Some("core".into()), soft: Some(0), hard: Some(0) },
                ResourcesUlimits { name: Some("fsize".into()), soft: Some(fsize), hard: Some(fsize) },
            ]),
            mounts: Some(mounts),
            device_requests,
            auto_remove: Some(false),
            ..Default::default()
        };
        // Docker adds HOSTNAME (and PATH when missing) to a container's environment: `env -i`
        // starts the program with exactly the job's.
        let mut cmd = vec!["/usr/bin/env".to_string(), "-i".to_string()];
        for (k, v) in &job.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                bail!("invalid environment variable name {k:?}");
            }
            cmd.push(format!("{k}={v}"));
        }
        let program = job.program.display().to_string();
        if program.contains('=') || program.starts_with('-') {
            bail!("program path {program:?} cannot be run through env");
        }
        cmd.push(program);
        cmd.extend(job.args.iter().cloned());
        let uid = if job.unprivileged { NOBODY } else { 0 };
        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            entrypoint: Some(vec![]),
            cmd: Some(cmd),
            env: Some(vec![]),
            user: Some(format!("{uid}:{uid}")),
            hostname: Some("sandbox".into()),
            working_dir: Some(job.cwd.display().to_string()),
            network_disabled: Some(true),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            labels: Some(HashMap::from([
                (LABEL.to_string(), "1".to_string()),
                (LABEL_PID.to_string(), std::process::id().to_string()),
                ("autoresearch-mcp.phase".to_string(), job.phase.clone()),
            ])),
            host_config: Some(host),
            ..Default::default()
        })
    }

    async fn run_job(&self, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
        let docker = self.client().await?;
        super::prepare_scratch(job)?;
        let config = self
            .config(docker, job)
            .await
            .map_err(|e| anyhow::anyhow!("refusing to run {} in Docker: {e:#}", job.phase))?;

        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "autoresearch-{}-{}-{}",
            job.phase.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let created = tokio::time::timeout(
            API_TIMEOUT,
            docker.create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), config),
        )
        .await
        .context("the Docker engine did not answer in time")?
        .with_context(|| format!("create the {} container from {}", job.phase, self.image))?;
        let id = created.id;
        // From here on the container exists: whatever happens, remove it.
        let result = self.supervise(docker, &id, job, cancel).await;
        let removed = remove(docker, &id).await;
        match (result, removed) {
            (Ok(o), Ok(())) => Ok(o),
            (Ok(o), Err(e)) => {
                tracing::warn!("remove container {id}: {e}");
                Ok(o)
            }
            (Err(e), _) => Err(e),
        }
    }

    async fn supervise(&self, docker: &Docker, id: &str, job: &Job, cancel: &CancellationToken) -> Result<JobOutcome> {
        let sink = Arc::new(Mutex::new(LogSink::create(&job.log, job.log_cap)?));
        // Attach before start, so no output is lost.
        let attach = docker
            .attach_container(
                id,
                Some(AttachContainerOptionsBuilder::new().stream(true).stdout(true).stderr(true).logs(true).build()),
            )
            .await
            .context("attach to the container")?;
        let reader = {
            let sink = sink.clone();
            let mut output = attach.output;
            tokio::spawn(async move {
                while let Some(Ok(chunk)) = output.next().await {
                    sink.lock().unwrap().push(chunk.as_ref());
                }
            })
        };
        let start = Instant::now();
        docker.start_container(id, None).await.with_context(|| format!("start the {} container", job.phase))?;
        let mut wait = docker.wait_container(id, None);
        let end = tokio::select! {
            // The wait's own result is not used (bollard turns non-zero exits into errors): the
            // state comes from inspect below.
            _ = wait.next() => None,
            _ = tokio::time::sleep(job.timeout) => Some(JobEnd::TimedOut),
            _ = cancel.cancelled() => Some(JobEnd::Cancelled),
        };
        if end.is_some() {
            let _ = docker.kill_container(id, Some(KillContainerOptionsBuilder::new().signal("KILL").build())).await;
            let _ = tokio::time::timeout(API_TIMEOUT, docker.wait_container(id, None).next()).await;
        }
        let wall = start.elapsed();
        let state = tokio::time::timeout(API_TIMEOUT, docker.inspect_container(id, None))
            .await
            .context("the Docker engine did not answer in time")?
            .context("inspect the container")?
            .state
            .unwrap_or_default();
        let end = end.unwrap_or(match state.exit_code {
            Some(c) if c >= 128 => JobEnd::Signaled((c - 128) as i32),
            Some(c) => JobEnd::Exited(c as i32),
            None => JobEnd::Exited(-1),
        });
        // The attach stream ends with the container; do not wait forever on a stuck one.
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        Ok(sink.lock().unwrap().finish(end, wall, None, state.oom_killed.unwrap_or(false)))
    }
}
