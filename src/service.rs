//! What the six tools do. Each public method is one tool: it checks the contract's refusals, does
//! the work through [`workspace`](crate::workspace), [`experiment`](crate::experiment) and
//! [`ledger`](crate::ledger), and writes exactly one audit record, whatever the outcome.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, AuditRecord, Head, Outcome, PROTOCOL_TOOL, RecordKind};
use crate::config::Config;
use crate::durable::Repair;
use crate::edit::{self, EditError};
use crate::experiment::{Runner, Toolchain};
use crate::fsutil::{free_bytes, is_disk_full, one_line, open_append, sha256_hex, write_atomic};
use crate::ledger::{self, Event, Fingerprint, Ledger, Run, RunStatus};
use crate::noise;
use crate::paths::Paths;
use crate::pyenv::PyEnv;
use crate::run_limits::RunLimits;
use crate::sandbox::Sandbox;
use crate::sandbox::local::LocalSandbox;
use crate::score::{Metrics, agent_delta, round_rank};
use crate::workspace::{CommitError, Workspace, WorkspaceState};

/// Longest description accepted for a run or commit.
pub const MAX_DESCRIPTION: usize = 200;
/// Most seeds one run_experiment may repeat over.
pub const MAX_SEEDS: u32 = 5;
/// Longest scratchpad entry accepted.
pub const MAX_SCRATCHPAD_ENTRY: usize = 8 * 1024;

// ------------------------------------------------------------------------------------------------
// Arguments: their doc comments are the schema descriptions the agent reads.
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EditCommand {
    /// Show the file with line numbers (optionally only `view_range`).
    View,
    /// Replace `old_str`, which must occur exactly once, by `new_str`.
    StrReplace,
    /// Insert `new_str` as new lines after line `insert_line` (0 = top of file).
    Insert,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EditTrainArgs {
    /// `view`, `str_replace` or `insert`.
    pub command: EditCommand,
    /// The file to edit. Only `trainer/src/train.rs` is editable; it is also the default.
    #[serde(default)]
    pub path: Option<String>,
    /// For `view`: [first, last] line, 1-based and inclusive; last = -1 means the end of the file.
    #[serde(default)]
    pub view_range: Option<Vec<i64>>,
    /// For `str_replace`: the exact text to replace, whitespace included; it must match exactly once.
    #[serde(default)]
    pub old_str: Option<String>,
    /// For `str_replace`: the replacement. For `insert`: the lines to insert.
    #[serde(default)]
    pub new_str: Option<String>,
    /// For `insert`: the line after which `new_str` goes (0 inserts at the top).
    #[serde(default)]
    pub insert_line: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunExperimentArgs {
    /// One line saying what this experiment tests (the hypothesis), e.g. "LR 3e-4 -> 1e-4".
    pub description: String,
    /// Train this train.rs over this many seeds (1-5, default 1; each takes a full budget) and score
    /// the mean ± sd. Repeating the unmodified baseline measures the noise floor.
    #[serde(default)]
    pub seeds: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ReadMetricsArgs {
    /// Only the last N runs (default: all).
    #[serde(default)]
    pub last: Option<usize>,
    /// Only runs with this status (ok, build_failed, crashed, timeout, invalid_output, cancelled, abandoned).
    #[serde(default)]
    pub status: Option<RunStatus>,
    /// Only runs that were kept (committed).
    #[serde(default)]
    pub kept_only: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommitArgs {
    /// One line describing the kept change; it goes into the commit message after the metric and delta.
    pub description: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RevertArgs {
    /// Optional one-line reason, recorded in the ledger with the discarded diff.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ScratchpadArgs {
    /// The note to append (markdown; tabs and newlines allowed, no other control characters; at most 8 KB).
    pub entry: String,
}

// ------------------------------------------------------------------------------------------------
// Results
// ------------------------------------------------------------------------------------------------

/// A tool's answer: text for the agent, optional structured content, and how the audit log files it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub structured: Option<Value>,
    pub outcome: Outcome,
    pub run_id: Option<String>,
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Self {
        Self { text: text.into(), structured: None, outcome: Outcome::Ok, run_id: None }
    }
    pub fn refused(text: impl Into<String>) -> Self {
        Self { text: text.into(), structured: None, outcome: Outcome::Refused, run_id: None }
    }
    pub fn error(text: impl Into<String>) -> Self {
        Self { text: text.into(), structured: None, outcome: Outcome::Error, run_id: None }
    }
    pub fn is_error(&self) -> bool {
        self.outcome != Outcome::Ok
    }
}

/// One row of `read_metrics` (and the structured result of `run_experiment`): the agent's view of a
/// run, its metrics at the agent's resolution ([`Metrics::for_agent`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunRow {
    pub id: String,
    pub number: usize,
    /// First 12 hex digits of the SHA-256 of the train.rs that ran.
    pub train_hash: String,
    pub status: RunStatus,
    pub metrics: Option<Metrics>,
    pub kept: bool,
    pub overran: bool,
    /// Server-measured seconds, all phases.
    pub duration_s: f64,
    /// Server-measured seconds per phase (build, train, embed, score).
    pub phases: ledger::PhaseTimes,
    pub description: String,
    /// The earlier run with identical train.rs and fingerprint, if this was a repeat.
    pub repeat_of: Option<String>,
    /// Steps, loss and peak memory as train.rs reported them (not verified).
    pub reported: ledger::Reported,
    /// Short id of the fingerprint (runs compare only within one).
    pub fingerprint: String,
    /// Standard deviation of the mean rank over the run's seeds (when it repeated over seeds).
    pub mean_rank_sd: Option<f64>,
    /// Independent samples behind the mean rank (seeds; 1 for a single training).
    pub samples: usize,
    /// Mean rank minus the best kept result of its fingerprint (negative is better; read_metrics only).
    pub delta_vs_best_kept: Option<f64>,
    /// What the comparison with the best kept result and the noise floor found.
    pub flags: Vec<noise::Flag>,
}

impl From<&Run> for RunRow {
    fn from(r: &Run) -> Self {
        let metrics = r.metrics.as_ref().map(Metrics::for_agent);
        RunRow {
            id: r.id.clone(),
            number: r.number,
            train_hash: r.train_hash[..12.min(r.train_hash.len())].into(),
            status: r.status,
            kept: r.kept,
            overran: r.overran,
            duration_s: r.phases.total,
            phases: r.phases.clone(),
            description: r.description.clone(),
            repeat_of: r.repeat_of.clone(),
            reported: r.reported.clone(),
            fingerprint: r.fingerprint.short(),
            mean_rank_sd: metrics.as_ref().and_then(|m| noise::sd(&m.seeds)).map(round_rank),
            samples: metrics.as_ref().map(|m| m.samples().len()).unwrap_or(0),
            metrics,
            delta_vs_best_kept: None,
            flags: vec![],
        }
    }
}

/// The structured content of `read_metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MetricsView {
    pub runs: Vec<RunRow>,
    pub total_runs: usize,
    /// Lowest mean rank among kept runs of the current fingerprint.
    pub best_kept: Option<RunRow>,
    /// Best run of the unmodified train.rs of the current fingerprint.
    pub baseline: Option<RunRow>,
    /// Standard deviation of the baseline's mean rank across seeds and repeats of the current
    /// fingerprint, when at least two samples exist: improvements under twice this are flagged.
    pub noise_floor: Option<f64>,
    /// Samples behind the noise floor.
    pub noise_floor_samples: usize,
    /// The run in progress, if any.
    pub in_flight: Option<String>,
}

// ------------------------------------------------------------------------------------------------
// The service
// ------------------------------------------------------------------------------------------------

pub struct Service {
    pub paths: Paths,
    pub config: Config,
    state: WorkspaceState,
    ws: Mutex<Workspace>,
    ledger: Mutex<Ledger>,
    audit: AuditLog,
    runner: Mutex<Option<Runner>>,
    sandbox: Arc<dyn Sandbox>,
    /// The id of the run in flight: one at a time.
    in_flight: Mutex<Option<String>>,
    /// Cancelled when the server shuts down: a run in flight stops and is recorded as cancelled.
    pub shutdown: CancellationToken,
    /// The deadline and experiment budget a supervisor set (`serve --deadline --max-runs`).
    limits: RunLimits,
    /// The one-server lock (taken again if `.autoresearch/` is deleted under the server).
    lock: Mutex<File>,
    /// Calls answered "disk full" without an audit record since the last record: how many, the
    /// first and last time, and why; recorded as soon as the log has room again.
    unrecorded: Mutex<Option<Unrecorded>>,
}

/// Calls refused unrecorded: how many, the first and last time, the reason.
type Unrecorded = (u64, chrono::DateTime<Utc>, chrono::DateTime<Utc>, String);

/// Bytes reserved in the ledger before a call that writes one line of it (a line is under 4 KiB).
const LEDGER_LINE_RESERVE: u64 = 16 * 1024;
/// An audit record's size beyond its arguments (times, hashes, a reason of at most 300 characters).
const RECORD_OVERHEAD: u64 = 4 * 1024;

impl Service {
    /// Opens a workspace for serving: takes the one-server lock, loads state, marks runs a crashed
    /// server left behind as abandoned.
    pub fn open(root: &std::path::Path, sandbox: Option<Arc<dyn Sandbox>>) -> Result<Self> {
        let root = root.canonicalize().with_context(|| format!("workspace {}", root.display()))?;
        let paths = Paths::new(&root);
        let ws = Workspace::open(&root)?;
        let state = ws.state()?;
        let lock = take_lock(&paths)?;
        let config = Config::load(&paths.config())?;
        std::fs::create_dir_all(paths.runs()).with_context(|| format!("create {}", paths.runs().display()))?;
        // Temp files of processes that died mid-write (this server's own pid included: a dead
        // process may have had it).
        for dir in temp_dirs(&paths) {
            for p in crate::fsutil::clean_stale_temps(&dir) {
                tracing::warn!("removed {}, a temp file left by a process that died", p.display());
            }
        }
        let stale_locks = ws.clear_stale_locks(&state.branch);
        let audit = AuditLog::open(&paths.audit(), &paths.audit_head())
            .with_context(|| format!("open the audit log {}", paths.audit().display()))?;
        for p in stale_locks {
            audit.append_repair(&Repair::StaleGitLock { path: paths.relative(&p).display().to_string() })?;
        }
        let mut ledger = Ledger::open_for_append(&paths.ledger())
            .with_context(|| format!("open the ledger {}", paths.ledger().display()))?;
        for r in ledger.take_repairs() {
            audit.append_repair(&r)?;
        }
        reconcile(&ws, &state, &mut ledger, &audit)?;
        let reaped = crate::sandbox::cgroup::reap_orphans();
        if reaped > 0 {
            tracing::warn!(reaped, "removed job cgroups left by a server that died");
        }
        for run_id in ledger.unfinished() {
            tracing::warn!(run_id, "marking a run left by a previous server as abandoned");
            ledger.append(Event::Finished {
                run_id,
                at: Utc::now(),
                status: RunStatus::Abandoned,
                metrics: None,
                reported: Default::default(),
                phases: Box::default(),
                overran: false,
                message: Some("the server stopped during this run".into()),
                audit: audit.head(),
            })?;
        }
        let sandbox: Arc<dyn Sandbox> = match sandbox {
            Some(s) => s,
            None if config.sandbox.backend == crate::config::Backend::Docker => {
                let docker = Arc::new(crate::sandbox::docker::DockerSandbox::new(config.sandbox.docker_image.clone())?);
                // Containers left by a server that died: removed in the background (needs the engine).
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let d = docker.clone();
                    rt.spawn(async move {
                        match d.reap_orphans().await {
                            Ok(n) if n > 0 => tracing::warn!(n, "removed containers left by a server that died"),
                            Ok(_) => {}
                            Err(e) => tracing::warn!("could not look for orphan containers: {e:#}"),
                        }
                    });
                }
                docker
            }
            None => Arc::new(LocalSandbox::from_current_exe()?),
        };
        Ok(Self {
            paths,
            config,
            state,
            ws: Mutex::new(ws),
            ledger: Mutex::new(ledger),
            audit,
            runner: Mutex::new(None),
            sandbox,
            in_flight: Mutex::new(None),
            shutdown: CancellationToken::new(),
            limits: RunLimits::default(),
            lock: Mutex::new(lock),
            unrecorded: Mutex::new(None),
        })
    }

    /// No new run past `limits`' deadline or once the ledger holds its number of runs.
    pub fn with_limits(mut self, limits: RunLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn instructions(&self) -> String {
        std::fs::read_to_string(self.paths.program_md())
            .unwrap_or_else(|_| "Run the autoresearch loop on trainer/src/train.rs with the six tools.".into())
    }

    fn train_hash(&self) -> Option<String> {
        self.ws.lock().unwrap().read_train().ok().map(|b| sha256_hex(&b))
    }

    /// The id of the run in flight, if any.
    pub fn run_in_flight(&self) -> Option<String> {
        self.in_flight.lock().unwrap().clone()
    }

    /// Runs `f` and writes its audit record; nothing runs when the record could not be written.
    fn audited(&self, tool: &str, via: &str, args: Value, ledger_lines: u64, f: impl FnOnce() -> Reply) -> Reply {
        let start = Instant::now();
        if let Some(refusal) = self.preflight(&args, ledger_lines) {
            return refusal;
        }
        let before = self.train_hash();
        let reply = f();
        self.record(tool, via, args, reply, before, start)
    }

    /// Before a call acts: puts back state files deleted under the server, then reserves room for
    /// the call's audit record (and `ledger_lines` ledger lines). `Some(reply)` when there is no
    /// room: the call must do nothing and answer that (it cannot be recorded either).
    fn preflight(&self, args: &Value, ledger_lines: u64) -> Option<Reply> {
        self.ensure_state();
        let need = serde_json::to_string(args).map(|a| a.len() as u64).unwrap_or(0) + RECORD_OVERHEAD;
        let failed = match self.audit.reserve(need) {
            Err(e) => Some(("the audit record", e)),
            Ok(()) if ledger_lines > 0 => self
                .ledger
                .lock()
                .unwrap()
                .reserve(ledger_lines * LEDGER_LINE_RESERVE)
                .err()
                .map(|e| ("the ledger line", e)),
            Ok(()) => None,
        };
        let Some((what, e)) = failed else {
            self.record_unrecorded();
            return None;
        };
        let text = if is_disk_full(&e) {
            format!(
                "disk full: {what} could not be written ({}); nothing was done. Ask the operator to free space on the disk of {}, then call again.",
                e.root_cause(),
                self.paths.state().display()
            )
        } else {
            format!("{what} could not be written ({e:#}); nothing was done")
        };
        tracing::error!("a call was refused unrecorded: {text}");
        let now = Utc::now();
        let mut u = self.unrecorded.lock().unwrap();
        *u = Some(match u.take() {
            Some((n, first, _, _)) => (n + 1, first, now, first_line(&text)),
            None => (1, now, now, first_line(&text)),
        });
        Some(Reply::error(text))
    }

    /// Records the calls refused unrecorded (a full disk) once the log has room again.
    fn record_unrecorded(&self) {
        let Some((calls, first, last, reason)) = self.unrecorded.lock().unwrap().take() else { return };
        let r = Repair::UnrecordedCalls { calls, first: first.to_rfc3339(), last: last.to_rfc3339(), reason };
        if let Err(e) = self.audit.append_repair(&r) {
            tracing::error!("cannot write the audit log: {e:#}");
        }
    }

    /// Puts back what was deleted under the server: the audit log and the ledger (from the open
    /// files: every acknowledged line), workspace.json (from memory) and the one-server lock.
    fn ensure_state(&self) {
        let mut repairs = vec![];
        if let Err(e) = self.audit.ensure_in_place() {
            tracing::error!("cannot restore the audit log: {e:#}");
        }
        {
            let mut ledger = self.ledger.lock().unwrap();
            if let Err(e) = ledger.ensure_in_place() {
                tracing::error!("cannot restore the ledger: {e:#}");
            }
            repairs.extend(ledger.take_repairs());
        }
        let ws_state = self.paths.workspace_state();
        if !ws_state.exists() {
            let json = serde_json::to_string_pretty(&self.state).unwrap_or_default();
            match write_atomic(&ws_state, json.as_bytes()) {
                Ok(()) => repairs.push(Repair::Restored {
                    file: "workspace.json".into(),
                    bytes: json.len() as u64,
                    replaced: None,
                }),
                Err(e) => tracing::error!("cannot restore {}: {e:#}", ws_state.display()),
            }
        }
        if !self.paths.lock().exists() {
            match take_lock(&self.paths) {
                Ok(f) => {
                    *self.lock.lock().unwrap() = f;
                    repairs.push(Repair::Restored { file: "lock".into(), bytes: 0, replaced: None });
                }
                Err(e) => tracing::error!("cannot take the workspace lock again: {e:#}"),
            }
        }
        for r in repairs {
            if let Err(e) = self.audit.append_repair(&r) {
                tracing::error!("cannot write the audit log: {e:#}");
            }
        }
    }

    /// Writes the call's audit record. If that fails after the call acted, the call is answered as
    /// an error that says so (space was reserved beforehand, so only an I/O error gets here).
    fn record(
        &self,
        tool: &str,
        via: &str,
        args: Value,
        reply: Reply,
        before: Option<String>,
        start: Instant,
    ) -> Reply {
        let rec = AuditRecord {
            ts: Utc::now(),
            kind: RecordKind::ToolCall,
            tool: tool.into(),
            via: via.into(),
            args,
            outcome: reply.outcome,
            reason: (reply.outcome != Outcome::Ok).then(|| first_line(&reply.text)),
            duration_ms: start.elapsed().as_secs_f64() * 1e3,
            run_id: reply.run_id.clone(),
            train_hash_before: before,
            train_hash_after: self.train_hash(),
            prev: String::new(),
        };
        match self.audit.append(rec) {
            Ok(_) => reply,
            Err(e) => {
                tracing::error!("cannot write the audit log: {e:#}");
                let mut r = reply;
                r.text = format!(
                    "{}\n\nerror: this call's audit record could not be written ({e:#}); what the call did above is done",
                    r.text.trim_end()
                );
                r.outcome = Outcome::Error;
                r
            }
        }
    }

    /// Writes the audit record of a message the transport refused before it reached a tool
    /// ([`RecordKind::Protocol`]): the error it was answered with is the reason, what was received
    /// (method, id, size, the start of the line) the arguments.
    pub fn record_protocol_refusal(&self, r: &crate::transport::Refusal) {
        let rec = AuditRecord {
            ts: Utc::now(),
            kind: RecordKind::Protocol,
            tool: PROTOCOL_TOOL.into(),
            via: "mcp".into(),
            args: r.args(),
            outcome: Outcome::Refused,
            reason: Some(r.reason()),
            duration_ms: r.took.as_secs_f64() * 1e3,
            run_id: None,
            train_hash_before: None,
            train_hash_after: None,
            prev: String::new(),
        };
        if let Err(e) = self.audit.append(rec) {
            tracing::error!("cannot write the audit log: {e:#}");
        }
    }

    /// A refusal when HEAD is not on the experiment branch (the user switched branches).
    fn off_branch(&self, ws: &Workspace) -> Option<Reply> {
        ws.check_head(&self.state.branch).err().map(|why| {
            Reply::refused(format!(
                "refused: {why}; nothing was changed. Check the experiment branch out again (`git checkout {}`), then retry.",
                self.state.branch
            ))
        })
    }

    // -------------------------------------------------------------------------------- edit_train

    pub fn edit_train(&self, args: EditTrainArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("edit_train", via, json, 0, || self.edit_inner(&args))
    }

    fn edit_inner(&self, a: &EditTrainArgs) -> Reply {
        if let Some(p) = a.path.as_deref()
            && !matches!(p, "trainer/src/train.rs" | "train.rs" | "src/train.rs" | "./trainer/src/train.rs")
        {
            return Reply::refused(format!(
                "refused: only trainer/src/train.rs can be edited, not {p:?}. The harness, data and server are fixed."
            ));
        }
        if a.command != EditCommand::View
            && let Some(id) = self.run_in_flight()
        {
            return Reply::refused(format!("refused: run {id} is in flight; edit after it finishes"));
        }
        let ws = self.ws.lock().unwrap();
        if a.command != EditCommand::View
            && let Some(r) = self.off_branch(&ws)
        {
            return r;
        }
        let text = match ws.read_train().map(String::from_utf8) {
            Err(e) => {
                return Reply::refused(format!(
                    "refused: cannot read train.rs safely: {e:#}. `revert` restores the kept version."
                ));
            }
            Ok(Err(e)) => {
                return Reply::refused(format!(
                    "refused: train.rs is not valid UTF-8 (at byte {}); `revert` restores the kept version",
                    e.utf8_error().valid_up_to()
                ));
            }
            Ok(Ok(t)) => t,
        };
        let edit_err = |e: EditError| Reply::refused(format!("refused: {e}"));
        let new = match a.command {
            EditCommand::View => {
                let range = match a.view_range.as_deref() {
                    None => None,
                    Some([s, e]) => Some((*s, *e)),
                    Some(_) => return Reply::refused("refused: view_range must be [first, last]"),
                };
                return match edit::view(&text, range) {
                    Ok(v) => Reply::ok(v),
                    Err(e) => edit_err(e),
                };
            }
            EditCommand::StrReplace => {
                let (Some(old), Some(new)) = (a.old_str.as_deref(), a.new_str.as_deref()) else {
                    return Reply::refused("refused: str_replace needs old_str and new_str");
                };
                edit::str_replace(&text, old, new)
            }
            EditCommand::Insert => {
                let (Some(line), Some(new)) = (a.insert_line, a.new_str.as_deref()) else {
                    return Reply::refused("refused: insert needs insert_line and new_str");
                };
                edit::insert(&text, line, new)
            }
        };
        let new = match new {
            Ok(n) => n,
            Err(e) => return edit_err(e),
        };
        if let Err(e) = ws.write_train(&new) {
            return Reply::error(format!("could not write train.rs, it is unchanged: {e:#}"));
        }
        let kept = ws.kept_train().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let diff = edit::unified_diff(&kept, &new);
        Reply::ok(format!(
            "edited train.rs ({} lines). Diff against the last kept commit:\n{}",
            new.lines().count(),
            if diff.is_empty() { "(none: identical to the kept version)\n".into() } else { diff }
        ))
    }

    // -------------------------------------------------------------------------------- run_experiment

    fn runner(&self) -> Result<Runner> {
        let mut slot = self.runner.lock().unwrap();
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Runner {
            paths: self.paths.clone(),
            config: self.config.clone(),
            pyenv: PyEnv::locate(&self.paths.root)?,
            toolchain: Toolchain::detect()?,
            sandbox: self.sandbox.clone(),
        };
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Runs one experiment. `cancel` is the request's token; `phase` receives progress labels.
    pub async fn run_experiment(
        &self,
        args: RunExperimentArgs,
        via: &str,
        cancel: CancellationToken,
        phase: watch::Sender<String>,
    ) -> Reply {
        let start = Instant::now();
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        // Room for the call's record and the run's two ledger lines, or nothing runs.
        if let Some(refusal) = self.preflight(&json, 2) {
            return refusal;
        }
        let before = self.train_hash();
        let reply = self.run_inner(&args, cancel, &phase).await;
        self.record("run_experiment", via, json, reply, before, start)
    }

    async fn run_inner(
        &self,
        args: &RunExperimentArgs,
        request_cancel: CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Reply {
        let description = match one_line(&args.description, MAX_DESCRIPTION) {
            Ok(d) => d,
            Err(e) => return Reply::refused(format!("refused: {e}")),
        };
        let n_seeds = args.seeds.unwrap_or(1);
        if !(1..=MAX_SEEDS).contains(&n_seeds) {
            return Reply::refused(format!("refused: seeds = {n_seeds}: use 1 to {MAX_SEEDS}"));
        }
        let runs = self.ledger.lock().unwrap().runs().len();
        if let Some(why) = self.limits.refusal(runs, Utc::now()) {
            return Reply::refused(why);
        }
        // Claim the single run slot before anything else.
        let cancel = CancellationToken::new();
        let run_id = {
            let mut slot = self.in_flight.lock().unwrap();
            if let Some(id) = slot.as_ref() {
                return Reply::refused(format!("refused: run {id} is already in flight; one run at a time"));
            }
            let mut n = self.ledger.lock().unwrap().next_run_number();
            // A run whose ledger line is unreadable still holds its number through its folder.
            while self.paths.run_dir(&format!("r{n:04}")).exists() {
                n += 1;
            }
            let id = format!("r{n:04}");
            *slot = Some(id.clone());
            id
        };
        let _release = SlotGuard(&self.in_flight);
        // Either the client's cancellation or server shutdown stops the run.
        let watcher = {
            let (c, rc, sd) = (cancel.clone(), request_cancel.clone(), self.shutdown.clone());
            tokio::spawn(async move {
                tokio::select! { _ = rc.cancelled() => c.cancel(), _ = sd.cancelled() => c.cancel(), _ = c.cancelled() => {} }
            })
        };
        let mut reply = self.run_claimed(&run_id, &description, n_seeds, &cancel, phase).await;
        watcher.abort();
        reply.run_id = Some(run_id);
        reply
    }

    async fn run_claimed(
        &self,
        run_id: &str,
        description: &str,
        n_seeds: u32,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Reply {
        let setup_started = Instant::now();
        if let Some(r) = self.off_branch(&self.ws.lock().unwrap()) {
            return r;
        }
        match free_bytes(&self.paths.root) {
            Ok(b) if b < self.config.experiment.min_free_gib << 30 => {
                return Reply::refused(format!(
                    "refused: only {:.1} GiB free on the workspace's disk (need {} GiB); ask the operator to free space",
                    b as f64 / (1u64 << 30) as f64,
                    self.config.experiment.min_free_gib
                ));
            }
            _ => {}
        }
        let runner = match self.runner() {
            Ok(r) => r,
            Err(e) => return Reply::error(format!("the server cannot run experiments here: {e:#}")),
        };
        if let Err(e) = runner.sandbox.check() {
            return Reply::refused(format!(
                "refused: the {} sandbox cannot isolate a run here: {e:#}",
                runner.sandbox.name()
            ));
        }
        // Snapshot train.rs; edits are refused from now until the run ends.
        let (snapshot, kept) = {
            let ws = self.ws.lock().unwrap();
            match (ws.read_train(), ws.kept_train()) {
                (Ok(s), Ok(k)) => (s, k),
                (Err(e), _) | (_, Err(e)) => return Reply::refused(format!("refused: cannot read train.rs: {e:#}")),
            }
        };
        let data = match runner.ensure_data(cancel, phase).await {
            Ok(d) => d,
            Err(e) => {
                return Reply::error(format!(
                    "data preparation failed (not a problem of train.rs; tell the operator): {e:#}"
                ));
            }
        };
        let fingerprint = match runner.fingerprint(&data) {
            Ok(f) => f,
            Err(e) => return Reply::error(format!("cannot fingerprint the run: {e:#}")),
        };
        let train_hash = sha256_hex(&snapshot);
        let run_dir = self.paths.run_dir(run_id);
        let diff = edit::unified_diff(&String::from_utf8_lossy(&kept), &String::from_utf8_lossy(&snapshot));
        let setup = (|| -> Result<()> {
            std::fs::create_dir_all(&run_dir)?;
            write_atomic(&run_dir.join("train.rs"), &snapshot)?;
            write_atomic(&run_dir.join("diff.patch"), diff.as_bytes())?;
            Ok(())
        })();
        if let Err(e) = setup {
            return Reply::error(format!("cannot create the run folder: {e:#}"));
        }
        let repeat_of = self
            .ledger
            .lock()
            .unwrap()
            .runs()
            .iter()
            .rev()
            .find(|r| r.train_hash == train_hash && r.fingerprint == fingerprint && r.status == RunStatus::Ok)
            .map(|r| r.id.clone());
        let seed = self.config.experiment.seed;
        if let Err(e) = self.ledger.lock().unwrap().append(Event::Started {
            run_id: run_id.into(),
            at: Utc::now(),
            train_hash: train_hash.clone(),
            description: description.into(),
            fingerprint: fingerprint.clone(),
            seed,
            repeat_of: repeat_of.clone(),
            audit: self.audit.head(),
        }) {
            return Reply::error(format!("cannot write the ledger: {e:#}"));
        }

        let seeds: Vec<u64> = (0..n_seeds as u64).map(|i| seed.wrapping_add(i)).collect();
        let setup = setup_started.elapsed().as_secs_f64();
        let mut outcome = runner.experiment(&run_dir, &data, &seeds, cancel, phase).await;
        outcome.phases.setup = Some(setup);

        if let Some(m) = &outcome.metrics {
            let _ = write_atomic(
                &run_dir.join("metrics.json"),
                serde_json::to_string_pretty(m).unwrap_or_default().as_bytes(),
            );
        }
        let finished = Event::Finished {
            run_id: run_id.into(),
            at: Utc::now(),
            status: outcome.status,
            metrics: outcome.metrics.clone(),
            reported: outcome.reported.clone(),
            phases: Box::new(outcome.phases.clone()),
            overran: outcome.overran,
            message: outcome.message.as_deref().map(first_line),
            audit: self.audit.head(),
        };
        let mut ledger = self.ledger.lock().unwrap();
        if let Err(e) = ledger.append(finished) {
            return Reply::error(format!("cannot write the ledger: {e:#}"));
        }
        let runs = ledger.runs();
        drop(ledger);
        let this = runs.iter().find(|r| r.id == run_id).cloned();
        let reference = ledger::reference_run(
            &runs.iter().filter(|r| r.id != run_id).cloned().collect::<Vec<_>>(),
            &fingerprint,
            &self.state.baseline_train_hash,
        )
        .cloned();
        let mut text = summarize_run(run_id, &outcome, reference.as_ref(), &fingerprint);
        if let Some(m) = &outcome.metrics {
            let (best, floor) = self.comparison(&runs, &fingerprint, run_id);
            for f in noise::flags(m, best, floor) {
                text.push_str(&format!("warning: {}\n", explain_for_agent(f, m, best, floor)));
            }
        }
        if let Some(r) = &repeat_of {
            text.push_str(&format!(
                "\nnote: train.rs is identical to run {r} (same fingerprint): this is a repeat, not a new experiment.\n"
            ));
        }
        let mut reply = if outcome.status == RunStatus::Ok { Reply::ok(text) } else { Reply::error(text) };
        reply.structured = this.as_ref().map(|r| json!(RunRow::from(r)));
        reply
    }

    // -------------------------------------------------------------------------------- read_metrics

    pub fn read_metrics(&self, args: ReadMetricsArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("read_metrics", via, json, 0, || {
            let view = self.metrics_view(&args);
            let mut r = Reply::ok(render_view(&view));
            r.structured = serde_json::to_value(&view).ok();
            r
        })
    }

    pub fn metrics_view(&self, args: &ReadMetricsArgs) -> MetricsView {
        let runs = self.ledger.lock().unwrap().runs();
        MetricsView { in_flight: self.run_in_flight(), ..metrics_view(&runs, &self.state.baseline_train_hash, args) }
    }

    /// The best kept mean rank and the noise floor of fingerprint `fp`, leaving out run `except`.
    fn comparison(&self, runs: &[Run], fp: &Fingerprint, except: &str) -> (Option<f64>, Option<f64>) {
        let same: Vec<&Run> = runs
            .iter()
            .filter(|r| &r.fingerprint == fp && r.status == RunStatus::Ok && !r.overran && r.id != except)
            .collect();
        let best = same.iter().filter(|r| r.kept).filter_map(|r| r.mean_rank()).min_by(f64::total_cmp);
        let all: Vec<&Run> =
            runs.iter().filter(|r| &r.fingerprint == fp && r.status == RunStatus::Ok && !r.overran).collect();
        (best, noise::noise_floor(&all, &self.state.baseline_train_hash).map(|f| f.0))
    }

    // -------------------------------------------------------------------------------- commit

    pub fn commit(&self, args: CommitArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("commit", via, json, 1, || self.commit_inner(&args))
    }

    fn commit_inner(&self, args: &CommitArgs) -> Reply {
        let description = match one_line(&args.description, MAX_DESCRIPTION) {
            Ok(d) => d,
            Err(e) => return Reply::refused(format!("refused: {e}")),
        };
        if let Some(id) = self.run_in_flight() {
            return Reply::refused(format!("refused: run {id} is in flight; commit after it finishes"));
        }
        let ws = self.ws.lock().unwrap();
        if let Some(r) = self.off_branch(&ws) {
            return r;
        }
        let branch = &self.state.branch;
        let (current, (parent, kept)) = match (ws.read_train(), ws.kept_at(branch)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return Reply::refused(format!("refused: cannot read train.rs: {e:#}")),
        };
        if current == kept {
            return Reply::refused("refused: train.rs is identical to the last kept commit; nothing to commit");
        }
        let hash = sha256_hex(&current);
        let mut ledger = self.ledger.lock().unwrap();
        let runs = ledger.runs();
        let Some(latest_fp) = runs.last().map(|r| r.fingerprint.clone()) else {
            return Reply::refused("refused: no run has been recorded yet; run_experiment first");
        };
        let candidates: Vec<&Run> =
            runs.iter().filter(|r| r.train_hash == hash && r.fingerprint == latest_fp).collect();
        let Some(run) =
            candidates.iter().filter(|r| r.status == RunStatus::Ok && !r.overran).min_by(|a, b| cmp_rank(a, b))
        else {
            let why = if candidates.iter().any(|r| r.overran) {
                "its only successful runs overran the time budget"
            } else if candidates.is_empty() {
                "this exact train.rs has never been run (edits after the last run count)"
            } else {
                "none of its runs succeeded"
            };
            return Reply::refused(format!(
                "refused: cannot commit this train.rs: {why}. run_experiment first, or revert."
            ));
        };
        let m = run.metrics.clone().expect("ok runs have metrics");
        let others: Vec<Run> = runs.iter().filter(|r| r.id != run.id).cloned().collect();
        let reference = ledger::reference_run(&others, &latest_fp, &self.state.baseline_train_hash);
        let (best, floor) = self.comparison(&runs, &latest_fp, &run.id);
        let flags = noise::flags(&m, best, floor);
        let mut trailers = String::new();
        if let Some(f) = floor {
            trailers.push_str(&format!("Noise-Floor: {:.2}\n", round_rank(f)));
        }
        if !flags.is_empty() {
            let names: Vec<String> =
                flags.iter().filter_map(|f| serde_json::to_value(f).ok()?.as_str().map(String::from)).collect();
            trailers.push_str(&format!("Flags: {}\n", names.join(", ")));
        }
        let head = self.audit.head();
        let message = format!(
            "exp {}: {} | {description}\n\nRun: {}\nTrain-Hash: {hash}\nFingerprint: {}\n{trailers}Audit-Head: {}\nAudit-Lines: {}\n",
            run.id,
            commit_headline(&m, reference),
            run.id,
            latest_fp.short(),
            head.hash,
            head.lines
        );
        let commit = match ws.commit_on(branch, parent, &current, &message) {
            Ok(c) => c,
            Err(CommitError::Refused(why)) => {
                return Reply::refused(format!(
                    "refused: {why}. Nothing was committed and the ledger is unchanged; commit again once that is resolved."
                ));
            }
            Err(CommitError::Failed(why)) => {
                return Reply::error(format!(
                    "git commit failed before the branch moved: {why}. Nothing was committed and the ledger is unchanged."
                ));
            }
        };
        let run_id = run.id.clone();
        if let Err(e) = ledger.append(Event::Kept {
            run_id: run_id.clone(),
            at: Utc::now(),
            commit: commit.clone(),
            train_hash: hash,
            audit: head,
        }) {
            return Reply::error(format!(
                "committed {commit} on {branch}, but its ledger line could not be written: {e:#}. The next server start adds it (it reconciles the branch with the ledger)."
            ));
        }
        let mut text =
            format!("kept run {run_id} as commit {}:\n{}\n", &commit[..10], message.lines().next().unwrap_or(""));
        for f in &flags {
            text.push_str(&format!("warning: {}\n", explain_for_agent(*f, &m, best, floor)));
        }
        let mut r = Reply::ok(text);
        r.run_id = Some(run_id);
        r
    }

    // -------------------------------------------------------------------------------- revert

    pub fn revert(&self, args: RevertArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("revert", via, json, 1, || self.revert_inner(&args))
    }

    fn revert_inner(&self, args: &RevertArgs) -> Reply {
        if let Some(r) = &args.reason
            && let Err(e) = one_line(r, MAX_DESCRIPTION)
        {
            return Reply::refused(format!("refused: reason: {e}"));
        }
        if let Some(id) = self.run_in_flight() {
            return Reply::refused(format!("refused: run {id} is in flight; revert after it finishes"));
        }
        let ws = self.ws.lock().unwrap();
        if let Some(r) = self.off_branch(&ws) {
            return r;
        }
        let kept = match ws.kept_at(&self.state.branch) {
            Ok((_, k)) => k,
            Err(e) => return Reply::error(format!("cannot read the kept train.rs: {e:#}")),
        };
        // An unreadable train.rs (symlink, too big, not UTF-8) is exactly what revert is for.
        let current = ws.read_train().unwrap_or_default();
        if current == kept {
            return Reply::ok("train.rs already equals the last kept commit; nothing to revert");
        }
        let diff = edit::unified_diff(&String::from_utf8_lossy(&kept), &String::from_utf8_lossy(&current));
        let hash = sha256_hex(&current);
        let file = self.paths.reverts().join(format!("{}-{}.diff", Utc::now().format("%Y%m%dT%H%M%S%.3f"), &hash[..8]));
        let saved = std::fs::create_dir_all(self.paths.reverts())
            .map_err(anyhow::Error::from)
            .and_then(|_| write_atomic(&file, diff.as_bytes()));
        if let Err(e) = saved {
            return Reply::error(format!("cannot save the discarded diff, nothing reverted: {e:#}"));
        }
        // The kept bytes are renamed over whatever sits at the path (a planted symlink is replaced,
        // not followed), so train.rs never goes missing, even if the server dies here. Only a
        // folder must go first.
        if std::fs::symlink_metadata(self.paths.train_rs()).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(self.paths.train_rs());
        }
        if let Err(e) = write_atomic(&self.paths.train_rs(), &kept) {
            return Reply::error(format!("cannot restore train.rs: {e:#}"));
        }
        let ev = Event::Reverted {
            at: Utc::now(),
            train_hash: hash,
            diff_file: self.paths.relative(&file).to_path_buf(),
            audit: self.audit.head(),
        };
        if let Err(e) = self.ledger.lock().unwrap().append(ev) {
            return Reply::error(format!("reverted, but cannot write the ledger: {e:#}"));
        }
        Reply::ok(format!(
            "reverted train.rs to the last kept commit; the discarded diff ({} lines) is kept in the ledger",
            diff.lines().count()
        ))
    }

    // -------------------------------------------------------------------------------- append_scratchpad

    pub fn append_scratchpad(&self, args: ScratchpadArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("append_scratchpad", via, json, 0, || {
            let entry = args.entry.trim_end();
            if entry.trim().is_empty() {
                return Reply::refused("refused: the entry is empty");
            }
            if entry.len() > MAX_SCRATCHPAD_ENTRY {
                return Reply::refused(format!(
                    "refused: the entry is {} bytes, over the {MAX_SCRATCHPAD_ENTRY}-byte cap; split or shorten it",
                    entry.len()
                ));
            }
            if let Some(c) = entry.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t') {
                return Reply::refused(format!(
                    "refused: the entry contains a control character (U+{:04X}); use plain text",
                    c as u32
                ));
            }
            let block = format!("\n## {}\n{}\n", Utc::now().format("%Y-%m-%d %H:%M:%S UTC"), entry);
            let res = open_append(&self.paths.scratchpad()).and_then(|mut f| {
                let len = f.metadata()?.len();
                let written = f.write_all(block.as_bytes()).and_then(|_| f.sync_data());
                if let Err(e) = written {
                    // Never half an entry: cut back to where it was.
                    let _ = f.set_len(len);
                    return Err(e.into());
                }
                Ok(())
            });
            match res {
                Ok(()) => Reply::ok(format!("appended {} bytes to scratchpad.md", block.len())),
                Err(e) => Reply::error(format!("cannot append to scratchpad.md, it is unchanged: {e:#}")),
            }
        })
    }
}

/// Folders where a process that died mid-write can have left a temp file (`*.tmp-<pid>`).
fn temp_dirs(paths: &Paths) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![
        paths.state(),
        paths.reverts(),
        paths.root.clone(),
        paths.train_rs().parent().map(|p| p.to_path_buf()).unwrap_or_default(),
    ];
    if let Ok(rd) = std::fs::read_dir(paths.runs()) {
        dirs.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    dirs
}

/// A trailer (`Key: value`) of a commit message.
fn trailer(msg: &str, key: &str) -> Option<String> {
    msg.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// Makes the ledger agree with the experiment branch: a commit the server made (it has `Run:` and
/// `Train-Hash:` trailers) that has no `kept` line — a crash between the two — gets it, with a
/// repair record in the audit log. A kept line whose commit is not on the branch is reported.
fn reconcile(ws: &Workspace, state: &WorkspaceState, ledger: &mut Ledger, audit: &AuditLog) -> Result<()> {
    let kept: std::collections::BTreeSet<String> = ledger
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Kept { commit, .. } => Some(commit.clone()),
            _ => None,
        })
        .collect();
    let commits = ws.branch_commits_since(&state.branch, &state.baseline_commit)?;
    for (id, at, msg) in &commits {
        if kept.contains(id) {
            continue;
        }
        let (Some(run_id), Some(train_hash)) = (trailer(msg, "Run:"), trailer(msg, "Train-Hash:")) else {
            tracing::warn!(
                "commit {} on {} was not made by autoresearch-mcp (no Run:/Train-Hash: trailers); the ledger does not count it",
                &id[..10],
                state.branch
            );
            continue;
        };
        audit.append_repair(&Repair::Reconciled { commit: id.clone(), run_id: run_id.clone() })?;
        ledger.append(Event::Kept { run_id, at: *at, commit: id.clone(), train_hash, audit: audit.head() })?;
    }
    let on_branch: std::collections::BTreeSet<&String> = commits.iter().map(|c| &c.0).collect();
    for k in kept.iter().filter(|k| !on_branch.contains(k)) {
        tracing::warn!(
            "runs.jsonl keeps commit {}, which is not on {} (the branch was reset or rewritten)",
            &k[..10.min(k.len())],
            state.branch
        );
    }
    Ok(())
}

/// Heads recorded outside the audit log: the sidecar, every ledger line, every commit trailer.
pub fn recorded_heads(paths: &Paths) -> Result<Vec<(String, Head)>> {
    let mut heads = vec![];
    if let Some(h) = crate::audit::read_head_sidecar(&paths.audit_head())? {
        heads.push(("audit.head".to_string(), h));
    }
    let ledger = Ledger::open(&paths.ledger())?;
    for (line, ev) in ledger.numbered_events() {
        heads.push((format!("runs.jsonl line {line}"), ev.audit_head().clone()));
    }
    if let Ok(ws) = Workspace::open(&paths.root)
        && let Ok(state) = ws.state()
    {
        for (id, msg) in ws.commit_messages_since(&state.baseline_commit).unwrap_or_default() {
            let get = |k: &str| msg.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
            if let (Some(hash), Some(lines)) = (get("Audit-Head:"), get("Audit-Lines:"))
                && let Ok(lines) = lines.parse()
            {
                heads.push((format!("commit {}", &id[..10]), Head { hash, lines }));
            }
        }
    }
    Ok(heads)
}

struct SlotGuard<'a>(&'a Mutex<Option<String>>);
impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = None;
    }
}

fn take_lock(paths: &Paths) -> Result<File> {
    match crate::fsutil::lock_exclusive(&paths.lock(), &format!("pid {}", std::process::id()))? {
        Ok(f) => Ok(f),
        Err(holder) => bail!(
            "another autoresearch-mcp server is already serving {} (lock {}, {holder}); one server per workspace",
            paths.root.display(),
            paths.lock().display(),
        ),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

fn cmp_rank(a: &&Run, b: &&Run) -> std::cmp::Ordering {
    a.mean_rank().unwrap_or(f64::MAX).total_cmp(&b.mean_rank().unwrap_or(f64::MAX))
}

/// `mean_rank 12.35 (-1.65 vs r0002 14.00)`, the commit's headline. The agent sees it in the reply,
/// so it is at the agent's resolution (the ledger keeps the exact figures).
fn commit_headline(m: &Metrics, reference: Option<&Run>) -> String {
    let delta = reference
        .and_then(|r| {
            r.mean_rank().map(|b| format!("{:+.2} vs {} {:.2}", agent_delta(m.mean_rank, b), r.id, round_rank(b)))
        })
        .unwrap_or_else(|| "no reference".into());
    format!("mean_rank {} ({delta})", noise::mean_pm(&m.for_agent()))
}

/// A flag's sentence with the delta against the best kept result and the noise floor rounded as
/// the agent sees them (`m` exact: the delta is taken between the rounded values).
fn explain_for_agent(f: noise::Flag, m: &Metrics, best: Option<f64>, floor: Option<f64>) -> String {
    f.explain(best.map(|b| agent_delta(m.mean_rank, b)), floor.map(round_rank))
}

fn summarize_run(run_id: &str, o: &crate::experiment::Outcome, reference: Option<&Run>, fp: &Fingerprint) -> String {
    let mut t = String::new();
    let status = serde_json::to_value(o.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    match o.metrics.as_ref().map(Metrics::for_agent) {
        Some(m) => {
            t.push_str(&format!(
                "run {run_id} {status}: mean rank {} (random would be {:.1}, N = {})",
                noise::mean_pm(&m),
                m.random_mean_rank,
                m.n
            ));
            if m.folds.len() > 1 {
                let folds: Vec<String> = m.folds.iter().map(|f| format!("{f:.2}")).collect();
                t.push_str(&format!(
                    " = mean over {} folds [{}], sd {:.2}",
                    m.folds.len(),
                    folds.join(", "),
                    noise::sd(&m.folds).unwrap_or(0.0)
                ));
            }
            match reference.and_then(|r| r.mean_rank().map(|b| (r, b))) {
                Some((r, b)) => t.push_str(&format!(
                    ", delta {:+.2} vs {} {} ({:.2}); lower is better\n",
                    agent_delta(m.mean_rank, b),
                    if r.kept { "best kept" } else { "baseline" },
                    r.id,
                    round_rank(b)
                )),
                None => t.push_str(", no earlier comparable run\n"),
            }
            t.push_str(&format!(
                "median rank {:.1}; image->text R@1/5/10 {:.1}/{:.1}/{:.1}%; text->image R@1/5/10 {:.1}/{:.1}/{:.1}%\n",
                m.median_rank, m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10
            ));
        }
        None => t.push_str(&format!("run {run_id} {status}\n")),
    }
    let r = &o.reported;
    if r.steps.is_some() || r.final_loss.is_some() {
        t.push_str(&format!(
            "reported by train.rs (unverified): steps {}, final loss {}, peak memory {}\n",
            r.steps.map(|s| s.to_string()).unwrap_or("?".into()),
            r.final_loss.map(|l| format!("{l:.4}")).unwrap_or("?".into()),
            r.peak_memory_bytes.map(|b| format!("{:.2} GB", b as f64 / 1e9)).unwrap_or("?".into()),
        ));
    }
    let p = &o.phases;
    let f = |x: Option<f64>| x.map(|v| format!("{v:.1}s")).unwrap_or("-".into());
    t.push_str(&format!(
        "server-measured: build {}, train {}, embed {} + {}, score {}, total {:.1}s; fingerprint {} ({} profile, {}, budget {} s)\n",
        f(p.build), f(p.train), f(p.embed_images), f(p.embed_texts), f(p.score), p.total, fp.short(), fp.profile, fp.device, fp.budget_seconds
    ));
    if let (Some(overhead), Some(before), Some(after)) = (p.overhead(), p.to_first_step(), p.after_last_step()) {
        t.push_str(&format!(
            "not training: {overhead:.1}s of {:.1}s: {before:.1}s before the first step (setup {}, build {}, trainer start-up {}: sandbox and process {}, data load {}), {after:.1}s after the last (checkpoint and exit {}, embed, score)\n",
            p.total + p.setup.unwrap_or(0.0),
            f(p.setup), f(p.build), f(p.train_startup), f(p.sandbox_start), f(p.data_load), f(p.train_exit)
        ));
    }
    // Throughput from the reported step count over the server's own clock (process start to exit).
    if let (Some(steps), Some(secs)) = (o.reported.steps, p.train)
        && secs > 0.0
    {
        t.push_str(&format!("throughput: {:.2} steps/s over the train phase\n", steps as f64 / secs));
    }
    if o.overran {
        t.push_str("OVERRAN: training took longer than its budget; this run cannot be committed.\n");
    }
    if let Some(msg) = &o.message {
        t.push_str(msg);
        t.push('\n');
    }
    if o.status == RunStatus::Ok {
        t.push_str("Next: commit if this beats the best kept result, otherwise revert.\n");
    }
    t
}

/// The structured content of `read_metrics` over the ledger's `runs` (`in_flight` left empty), at
/// the agent's resolution.
pub fn metrics_view(runs: &[Run], baseline_hash: &str, args: &ReadMetricsArgs) -> MetricsView {
    let current_fp = runs.last().map(|r| r.fingerprint.clone());
    let mut view = MetricsView {
        runs: vec![],
        total_runs: runs.len(),
        best_kept: None,
        baseline: None,
        noise_floor: None,
        noise_floor_samples: 0,
        in_flight: None,
    };
    // The exact best and floor decide the flags; the agent sees them rounded.
    let (mut best, mut floor) = (None, None);
    if let Some(fp) = &current_fp {
        let same: Vec<&Run> =
            runs.iter().filter(|r| &r.fingerprint == fp && r.status == RunStatus::Ok && !r.overran).collect();
        let best_kept = same.iter().filter(|r| r.kept).min_by(|a, b| cmp_rank(a, b));
        best = best_kept.and_then(|r| r.mean_rank());
        view.best_kept = best_kept.map(|r| RunRow::from(*r));
        let base = same.iter().filter(|r| r.train_hash == baseline_hash);
        view.baseline = base.min_by(|a, b| cmp_rank(a, b)).map(|r| RunRow::from(*r));
        let measured = noise::noise_floor(&same, baseline_hash);
        floor = measured.map(|f| f.0);
        (view.noise_floor, view.noise_floor_samples) = (floor.map(round_rank), measured.map_or(0, |f| f.1));
    }
    view.runs = runs
        .iter()
        .filter(|r| args.status.is_none_or(|s| r.status == s))
        .filter(|r| !args.kept_only.unwrap_or(false) || r.kept)
        .map(|r| {
            let mut row = RunRow::from(r);
            if Some(&r.fingerprint) == current_fp.as_ref()
                && let Some(m) = &r.metrics
            {
                row.delta_vs_best_kept = best.map(|b| agent_delta(m.mean_rank, b));
                row.flags = noise::flags(m, best, floor);
            }
            row
        })
        .collect();
    if let Some(n) = args.last {
        let skip = view.runs.len().saturating_sub(n);
        view.runs.drain(..skip);
    }
    view
}

/// The text form of `read_metrics`.
pub fn render_view(v: &MetricsView) -> String {
    let mut t = String::new();
    let line = |r: &RunRow| {
        format!(
            "{} {:<14} {:>9} {:>6} {}{} {}\n",
            r.id,
            serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            r.metrics.as_ref().map(noise::mean_pm).unwrap_or("-".into()),
            format!("{:.0}s", r.duration_s),
            if r.kept { "kept " } else { "" },
            if r.overran { "OVERRAN " } else { "" },
            r.description,
        ) + &r
            .flags
            .iter()
            .map(|f| format!("      flag: {}\n", f.explain(r.delta_vs_best_kept, v.noise_floor)))
            .collect::<String>()
    };
    if let Some(b) = &v.baseline {
        t.push_str(&format!("baseline: {}", line(b)));
    }
    if let Some(b) = &v.best_kept {
        t.push_str(&format!("best kept: {}", line(b)));
    }
    match v.noise_floor {
        Some(n) => t.push_str(&format!(
            "noise floor: sd {n:.2} of the baseline over {} seeds/repeats; improvements under {:.2} are flagged\n",
            v.noise_floor_samples,
            noise::FLOORS * n
        )),
        None => t.push_str("noise floor: not measured (run the unmodified baseline with seeds: 3)\n"),
    }
    if let Some(f) = &v.in_flight {
        t.push_str(&format!("in flight: {f}\n"));
    }
    t.push_str(&format!(
        "{} of {} runs:\nid    status         mean_rank  time  description\n",
        v.runs.len(),
        v.total_runs
    ));
    for r in &v.runs {
        t.push_str(&line(r));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASELINE: &str = "baseline-hash";

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            harness: "h".into(),
            data: "d".into(),
            val_n: 333,
            budget_seconds: 60,
            profile: "tests".into(),
            device: "cpu".into(),
            libtorch: "2.11.0".into(),
            towers: String::new(),
        }
    }

    /// Metrics with many decimals everywhere, as the scorer produces them.
    fn exact(mean: f64, seeds: &[f64]) -> Metrics {
        crate::score::fixture(mean, seeds)
    }

    fn run(id: &str, train_hash: &str, m: Metrics, kept: bool) -> Run {
        Run {
            id: id.into(),
            number: id[1..].parse().unwrap(),
            started_at: Utc::now(),
            train_hash: train_hash.into(),
            description: "d".into(),
            status: RunStatus::Ok,
            metrics: Some(m),
            reported: Default::default(),
            phases: Default::default(),
            overran: false,
            kept,
            commit: None,
            repeat_of: None,
            seed: 42,
            message: None,
            fingerprint: fingerprint(),
        }
    }

    /// The most digits after a decimal point among the numbers written in `text`.
    fn max_decimals(text: &str) -> usize {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|tok| tok.trim_matches('.').split_once('.'))
            .map(|(_, frac)| frac.len())
            .max()
            .unwrap_or(0)
    }

    /// Baseline r0001 over two seeds, r0002 kept at 15.004, r0003 at 14.996: 0.008 better exactly,
    /// but both show as 15.00.
    fn ledger() -> Vec<Run> {
        vec![
            run("r0001", BASELINE, exact(20.12345678, &[20.0012345, 20.2456789]), false),
            run("r0002", "other", exact(15.004, &[]), true),
            run("r0003", "third", exact(14.996, &[]), false),
        ]
    }

    #[test]
    fn run_rows_carry_the_agents_resolution() {
        let row = RunRow::from(&ledger()[0]);
        let m = row.metrics.as_ref().unwrap();
        assert_eq!((m.mean_rank, m.i2t_r1, m.seeds.clone()), (20.12, 33.3, vec![20.0, 20.25]));
        assert_eq!(row.mean_rank_sd, Some(0.18), "the sd of the rounded seeds, rounded");
        let json = serde_json::to_string(&row).unwrap();
        assert!(max_decimals(&json) <= 2, "{json}");
    }

    #[test]
    fn read_metrics_shows_rounded_numbers_and_deltas_from_rounded_values() {
        let view = metrics_view(&ledger(), BASELINE, &ReadMetricsArgs::default());
        assert_eq!(view.best_kept.as_ref().unwrap().metrics.as_ref().unwrap().mean_rank, 15.0);
        assert_eq!(view.baseline.as_ref().unwrap().id, "r0001");
        // sd(20.0012345, 20.2456789) = 0.17284...
        assert_eq!((view.noise_floor, view.noise_floor_samples), (Some(0.17), 2));
        let r3 = &view.runs[2];
        assert_eq!(r3.delta_vs_best_kept, Some(0.0), "15.00 - 15.00, not the exact -0.008");
        assert_eq!(r3.flags, vec![noise::Flag::WithinNoiseFloor], "flags still see the exact improvement");
        assert_eq!(view.runs[0].delta_vs_best_kept, Some(5.12));
        let json = serde_json::to_string(&view).unwrap();
        assert!(max_decimals(&json) <= 2, "{json}");
        let text = render_view(&view);
        assert!(max_decimals(&text) <= 2, "{text}");
        assert!(text.contains("improvement (+0.00)") && text.contains("sd 0.17"), "{text}");
    }

    #[test]
    fn the_run_report_shows_rounded_numbers_and_deltas_from_rounded_values() {
        let o = crate::experiment::Outcome {
            status: RunStatus::Ok,
            metrics: Some(exact(12.345678, &[12.1111111, 12.5802469])),
            reported: Default::default(),
            phases: Default::default(),
            overran: false,
            message: None,
        };
        let reference = run("r0002", "other", exact(14.004999, &[]), true);
        let t = summarize_run("r0004", &o, Some(&reference), &fingerprint());
        assert!(t.contains("mean rank 12.35 ± 0.33 (n=2)"), "{t}");
        assert!(t.contains("[11.36, 13.33]"), "{t}");
        assert!(t.contains("delta -1.65 vs best kept r0002 (14.00)"), "{t}");
        assert!(t.contains("R@1/5/10 33.3/66.7/71.4%"), "{t}");
        assert!(max_decimals(&t) <= 2, "{t}");
    }

    #[test]
    fn the_commit_headline_is_what_the_agent_saw() {
        let reference = run("r0002", "other", exact(14.004999, &[]), true);
        let h = commit_headline(&exact(12.345678, &[]), Some(&reference));
        assert_eq!(h, "mean_rank 12.35 (-1.65 vs r0002 14.00)");
        assert_eq!(commit_headline(&exact(9.999, &[]), None), "mean_rank 10.00 (no reference)");
        let w = explain_for_agent(noise::Flag::WithinNoiseFloor, &exact(14.996, &[]), Some(15.004), Some(1.23456));
        assert!(w.contains("(+0.00)") && w.contains("sd 1.23 "), "{w}");
    }
}
