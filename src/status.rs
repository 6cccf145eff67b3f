//! `autoresearch-mcp status`: at any time, what is running (the supervisor, Claude Code, the server,
//! the run in flight and its phase), the best result so far and the last runs. Reads only files:
//! the ledger, the supervisor's state file, the lock files' pids checked against `/proc`.

use std::fmt::Write as _;

use anyhow::Result;
use chrono::{DateTime, Local, Utc};

use crate::ledger::{Ledger, Run, RunStatus};
use crate::paths::Paths;
use crate::supervisor::{self, SupervisorState};
use crate::workspace::Workspace;

/// The status report as text.
pub fn render(paths: &Paths) -> Result<String> {
    let now = Utc::now();
    let mut t = String::new();
    let ws = Workspace::open(&paths.root)?.state()?;
    writeln!(t, "workspace   {} (branch {})", paths.root.display(), ws.branch)?;

    let sup: Option<SupervisorState> =
        std::fs::read(supervisor::state_path(paths)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    match &sup {
        Some(s) if s.phase != "stopped" && supervisor::process_alive(s.pid, "saturday") => {
            writeln!(
                t,
                "supervisor  running (pid {}) since {}, deadline {} ({}); session {}{}: {} since {}",
                s.pid,
                local(s.started_at),
                local(s.deadline),
                until(s.deadline, now),
                s.session,
                s.claude_pid.map(|p| format!(" (Claude Code pid {p})")).unwrap_or_default(),
                s.phase,
                local(s.phase_since)
            )?;
            if let Some(m) = s.max_experiments {
                writeln!(t, "            experiment budget {m}, counted from run {}", s.runs_at_start + 1)?;
            }
        }
        Some(s) if s.phase == "stopped" => writeln!(
            t,
            "supervisor  not running: stopped {} after {} session(s): {}",
            local(s.phase_since),
            s.session,
            s.stop_reason.as_deref().unwrap_or("?")
        )?,
        Some(s) => writeln!(
            t,
            "supervisor  not running: pid {} died while {} (since {})",
            s.pid,
            s.phase,
            local(s.phase_since)
        )?,
        None => writeln!(t, "supervisor  not running (no `saturday` has run here)")?,
    }

    let server = supervisor::server_pid(paths);
    match server {
        Some(pid) => writeln!(t, "server      serving (pid {pid})")?,
        None => writeln!(t, "server      not running")?,
    }

    let runs = Ledger::open(&paths.ledger())?.runs();
    match runs.iter().rev().find(|r| r.status == RunStatus::Running) {
        Some(r) if server.is_some() => writeln!(
            t,
            "running     {} \"{}\": {} ({} since it started)",
            r.id,
            r.description,
            phase(paths, r),
            elapsed(r.started_at, now)
        )?,
        Some(r) => writeln!(t, "running     nothing ({} was left unfinished by a server that stopped)", r.id)?,
        None => writeln!(t, "running     no experiment")?,
    }

    let standings = crate::ledger::Standings::current(&runs, &ws.baseline_train_hash);
    match standings.best {
        Some(b) => writeln!(t, "best        {} ({})", row(b), standings.seeds_label(b))?,
        None => writeln!(t, "best        no successful run yet")?,
    }
    if let Some(k) = standings.kept.filter(|k| standings.best.is_some_and(|b| b.train_hash != k.train_hash)) {
        writeln!(t, "kept        {} ({}; results are compared with it)", row(k), standings.seeds_label(k))?;
    }
    writeln!(t, "runs        {} in the ledger; the last ones:", runs.len())?;
    for r in runs.iter().rev().take(8).rev() {
        writeln!(t, "  {}", row(r))?;
    }
    let sessions: Vec<_> = std::fs::read_dir(supervisor::sessions_dir(paths))
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl")).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    if let Some(last) = sessions.iter().max() {
        writeln!(t, "sessions    {} transcript(s); latest {}", sessions.len(), paths.relative(last).display())?;
    }
    Ok(t)
}

fn row(r: &Run) -> String {
    let status = r.status.to_string();
    format!(
        "{} {:<14} {:>9} {:>6} {}{}\"{}\"",
        r.id,
        status,
        r.mean_rank().map(|m| format!("{m:.2}")).unwrap_or("-".into()),
        if r.phases.total > 0.0 { format!("{:.0}s", r.phases.total) } else { "".into() },
        match (r.kept, &r.kept_reason) {
            (true, Some(_)) => "kept with reason ",
            (true, None) => "kept ",
            _ => "",
        },
        if r.overran { "OVERRAN " } else { "" },
        r.description
    )
}

/// The phase of a run in flight, from the folders its phases create in the run dir.
fn phase(paths: &Paths, r: &Run) -> &'static str {
    let dir = paths.run_dir(&r.id);
    let has = |name: &str| {
        dir.join(name).exists()
            || std::fs::read_dir(&dir).map(|d| d.flatten().any(|e| e.path().join(name).exists())).unwrap_or(false)
    };
    if has("embed-texts") {
        "embedding texts"
    } else if has("embed-images") {
        "embedding images"
    } else if has("train") {
        "training"
    } else {
        "preparing and building"
    }
}

fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - since).num_seconds().max(0);
    format!("{}m{:02}s", s / 60, s % 60)
}

fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let m = (t - now).num_minutes();
    if m >= 0 { format!("in {m} min") } else { format!("{} min ago", -m) }
}
