//! What the six tools do. Each public method is one tool: it checks the contract's refusals, does
//! the work through [`workspace`](crate::workspace), [`experiment`](crate::experiment) and
//! [`ledger`](crate::ledger), and writes exactly one audit record, whatever the outcome.

mod args;
mod commit;
mod edit_train;
#[cfg(test)]
mod fixtures;
mod read_metrics;
mod revert;
mod run_experiment;
mod scratchpad;
mod startup;
mod view;

pub use args::*;
pub use startup::recorded_heads;
pub use view::{MetricsView, RunRow, metrics_view, render_view};

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, AuditRecord, Outcome, PROTOCOL_TOOL, RecordKind};
use crate::config::Config;
use crate::durable::Repair;
use crate::experiment::Runner;
use crate::fsutil::{is_disk_full, sha256_hex, write_atomic};
use crate::ledger::Ledger;
use crate::paths::Paths;
use crate::run_limits::RunLimits;
use crate::sandbox::Sandbox;
use crate::workspace::{Workspace, WorkspaceState};
use startup::{reconcile, temp_dirs};

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
            ledger.append(crate::experiment::Outcome::abandoned().finished_event(&run_id, audit.head()))?;
        }
        let sandbox: Arc<dyn Sandbox> = match sandbox {
            Some(s) => s,
            None => crate::sandbox::configured(&config, true)?,
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
