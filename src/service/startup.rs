//! What a server does on start: stale temp files, reconciling the ledger with the branch, and the
//! audit heads recorded outside the log (checked by `verify` and `doctor`).

use anyhow::Result;

use crate::audit::{AuditLog, Head};
use crate::durable::Repair;
use crate::ledger::{Event, Ledger};
use crate::paths::Paths;
use crate::workspace::{Workspace, WorkspaceState};

/// Folders where a process that died mid-write can have left a temp file (`*.tmp-<pid>`).
pub(super) fn temp_dirs(paths: &Paths) -> Vec<std::path::PathBuf> {
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
pub(super) fn reconcile(ws: &Workspace, state: &WorkspaceState, ledger: &mut Ledger, audit: &AuditLog) -> Result<()> {
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
        let reason = trailer(msg, "Kept-Reason:");
        ledger.append(Event::Kept { run_id, at: *at, commit: id.clone(), train_hash, reason, audit: audit.head() })?;
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
