//! Test helpers: real workspaces (temp git repos with a copy of the trainer), real servers started
//! as child processes, and a real MCP client (rmcp) talking to them over stdio.

use std::path::PathBuf;
use std::sync::OnceLock;

use autoresearch_mcp::synth::{self, SynthSpec};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

/// Set in every test server's environment; the escape suite checks that train.rs cannot see it.
pub const CANARY: (&str, &str) = ("AUTORESEARCH_TEST_CANARY", "canary-5f3a9e");

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_autoresearch-mcp"))
}

/// The small synthetic dataset, generated once per test run into target/.
pub fn test_dataset() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo_root().join("target/test-data/synthetic-tests");
        synth::ensure(&out, &SynthSpec::tests()).expect("generate the test dataset");
        out
    })
    .clone()
}

/// A fresh workspace: a git repo holding the trainer, program.md and the setup scripts, initialised
/// on branch autoresearch/test, in the tests profile, sharing the repo's trainer build directory.
pub struct Ws {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Ws {
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// `extra` lines go into the [experiment] table of autoresearch.toml.
    pub fn with_config(extra: &str) -> Self {
        Self::with_train_config(extra, "baseline")
    }

    /// Like [`Ws::with_config`], with train.rs started from the named configuration (trainer/configs).
    pub fn with_train_config(extra: &str, config: &str) -> Self {
        Self::build(extra, config, &test_dataset())
    }

    /// A workspace on `dataset`, train.rs from configuration `config`, `extra` lines in [experiment].
    pub fn build(extra: &str, config: &str, dataset: &std::path::Path) -> Self {
        let dir = tempfile::Builder::new().prefix("arws-").tempdir().unwrap();
        let target = dir.path().join("ws");
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("-C").arg(repo_root()).arg("new-workspace").arg(&target);
        cmd.args(["--profile", "tests", "--tag", "test", "--config", config, "--dataset"]).arg(dataset);
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            cmd.args(["--experiment", line]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "new-workspace failed: {}", String::from_utf8_lossy(&out.stderr));
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ws { _dir: dir, root }
    }

    pub fn train_rs(&self) -> PathBuf {
        self.root.join("trainer/src/train.rs")
    }

    pub fn state(&self, rel: &str) -> PathBuf {
        self.root.join(".autoresearch").join(rel)
    }

    /// Starts `autoresearch-mcp serve` on this workspace and connects rmcp's client to it.
    pub async fn client(&self) -> Client {
        self.client_with(()).await
    }

    /// Like [`Ws::client`], with a client handler of the test's (e.g. one counting progress).
    pub async fn client_with<H: rmcp::ClientHandler>(&self, handler: H) -> Client<H> {
        let root = self.root.clone();
        let (transport, _stderr) = TokioChildProcess::builder(tokio::process::Command::new(bin()).configure(|cmd| {
            // A canary in the server's environment: no sandboxed phase may ever see it.
            cmd.arg("-C").arg(&root).arg("serve").env("RUST_LOG", "warn").env(CANARY.0, CANARY.1);
        }))
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the server");
        let pid = transport.id().expect("server pid");
        let service = handler.serve(transport).await.expect("MCP initialise");
        Client { service, pid }
    }

    /// `edit_train` arguments that raise the baseline's learning rate from 3e-4 to 1e-3: a real
    /// one-line change for tests that run and commit something other than the baseline.
    pub fn raise_lr_edit(&self) -> Value {
        let src = std::fs::read_to_string(self.train_rs()).unwrap();
        let lr = src.lines().find(|l| l.contains("const LEARNING_RATE")).unwrap().to_string();
        let new_lr = lr.replace("3e-4", "1e-3");
        assert_ne!(lr, new_lr, "baseline LR is 3e-4");
        serde_json::json!({"command": "str_replace", "old_str": lr, "new_str": new_lr})
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin()).arg("-C").arg(&self.root).args(args).output().unwrap()
    }
}

pub struct Client<H: rmcp::ClientHandler = ()> {
    pub service: RunningService<RoleClient, H>,
    pub pid: u32,
}

impl<H: rmcp::ClientHandler> Client<H> {
    pub async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let params =
            CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
        self.service.call_tool(params).await.unwrap_or_else(|e| panic!("{tool} call failed at the protocol level: {e}"))
    }
}

/// The text of a tool result.
pub fn text(r: &CallToolResult) -> String {
    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

pub fn is_error(r: &CallToolResult) -> bool {
    r.is_error.unwrap_or(false)
}

/// Audit records as JSON values.
pub fn audit_lines(ws: &Ws) -> Vec<Value> {
    std::fs::read_to_string(ws.state("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Processes whose command line or environment mentions `needle` (scanning /proc), excluding this test process.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) || String::from_utf8_lossy(&env).contains(needle) {
            found.push((pid, cmd));
        }
    }
    found
}

/// A client that counts progress notifications.
#[derive(Clone, Default)]
pub struct ProgressCounter(pub std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl rmcp::ClientHandler for ProgressCounter {
    async fn on_progress(
        &self,
        _params: rmcp::model::ProgressNotificationParam,
        _cx: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How many experiments the tests run at once: one per core, at most four. Each trainer runs on one
/// libtorch thread (the tests profile) and builds take turns on the shared build directory's lock, so
/// on the 2-core CI machine two experiments keep both cores busy without slowing each other much.
static EXPERIMENTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4))
});

/// A slot to run experiments in; held for the test's life.
pub async fn experiment_slot() -> tokio::sync::SemaphorePermit<'static> {
    EXPERIMENTS.acquire().await.expect("the experiment semaphore is never closed")
}

/// The torch libraries of the project's Python environment (for running a trainer binary outside the sandbox).
pub fn torch_lib() -> PathBuf {
    let out = std::process::Command::new("bash").arg(repo_root().join("scripts/python-env.sh")).output().unwrap();
    let env = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lib = env.join("lib");
    for e in std::fs::read_dir(&lib).unwrap().flatten() {
        let p = e.path().join("site-packages/torch/lib");
        if p.is_dir() {
            return p;
        }
    }
    panic!("no torch/lib under {}", lib.display())
}

/// Metrics of a run at `mean_rank`, every other figure fixed: for ledgers written by a test.
pub fn metrics_at(mean_rank: f64) -> autoresearch_mcp::score::Metrics {
    autoresearch_mcp::score::Metrics {
        mean_rank,
        median_rank: mean_rank,
        i2t_mean_rank: mean_rank,
        t2i_mean_rank: mean_rank,
        i2t_r1: 10.0,
        i2t_r5: 30.0,
        i2t_r10: 45.0,
        t2i_r1: 10.0,
        t2i_r5: 30.0,
        t2i_r10: 45.0,
        n: 256,
        random_mean_rank: 127.5,
        folds: vec![],
        seeds: vec![],
    }
}

/// Appends one finished, successful run of the train.rs with SHA-256 `hash`.
pub fn seed_ok_run(
    ledger: &mut autoresearch_mcp::ledger::Ledger,
    id: &str,
    hash: &str,
    description: &str,
    mean_rank: f64,
) {
    use autoresearch_mcp::audit::{GENESIS, Head};
    use autoresearch_mcp::ledger::{Event, Fingerprint, PhaseTimes, Reported, RunStatus};
    use chrono::Utc;
    let head = || Head { hash: GENESIS.into(), lines: 0 };
    let fingerprint = Fingerprint {
        harness: "a".repeat(64),
        data: "b".repeat(64),
        val_n: 256,
        budget_seconds: 60,
        profile: "tests".into(),
        device: "cpu".into(),
        libtorch: "2.11.0".into(),
        towers: String::new(),
    };
    let started = Event::Started {
        run_id: id.into(),
        at: Utc::now(),
        train_hash: hash.into(),
        description: description.into(),
        fingerprint,
        seed: 42,
        repeat_of: None,
        audit: head(),
    };
    let finished = Event::Finished {
        run_id: id.into(),
        at: Utc::now(),
        status: RunStatus::Ok,
        metrics: Some(metrics_at(mean_rank)),
        reported: Reported::default(),
        phases: Box::new(PhaseTimes { total: 70.0, ..Default::default() }),
        overran: false,
        message: None,
        audit: head(),
    };
    ledger.append(started).unwrap();
    ledger.append(finished).unwrap();
}

/// `src` (a train.rs) with `code` as the first statement of `fn main`.
pub fn insert_at_main_start(src: &str, code: &str) -> String {
    let i = src.find("fn main").expect("train.rs has fn main");
    let brace = i + src[i..].find('{').unwrap();
    format!("{}{{\n    {code}\n{}", &src[..brace], &src[brace + 1..])
}
