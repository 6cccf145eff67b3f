//! `autoresearch-mcp saturday`: leaves Claude Code running the loop, unattended, until a deadline.
//!
//! The supervisor starts Claude Code headless in the strict profile (only the six tools, see
//! [`claude::strict_args`]); `program.md` reaches the model once, as the server's MCP instructions, and
//! the prompt just says to follow them ([`FOLLOW_THE_INSTRUCTIONS`]). It saves each session's stream-json
//! transcript under `.autoresearch/sessions/`, and starts it again with a resume prompt whenever it
//! stops early. API errors (overloaded, rate limits, 5xx) back off exponentially; an authentication
//! error stops everything. The server it registers is started with the deadline and the experiment
//! budget ([`crate::run_limits::RunLimits`]), so it refuses new runs past them. At the deadline a run in flight is let
//! finish within its hard limit; then Claude Code gets SIGINT (it SIGINTs the server, which cancels
//! whatever is left), SIGKILL after a grace, and any server or job left over is stopped too.
//! One supervisor per workspace (`flock` on `.autoresearch/supervisor.lock`); its state is in
//! `.autoresearch/supervisor.json` for `autoresearch-mcp status`.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Local, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::claude;
use crate::config::Config;
use crate::fsutil::write_atomic;
use crate::ledger::{self, Ledger, Run, RunStatus};
use crate::paths::Paths;
use crate::score::round_rank;
use crate::workspace::{Workspace, WorkspaceState};

// ------------------------------------------------------------------------------------------------
// Options and the deadline
// ------------------------------------------------------------------------------------------------

pub struct Options {
    pub deadline: DateTime<Utc>,
    pub max_experiments: Option<usize>,
    pub max_turns: Option<u32>,
    pub notify: Option<String>,
    pub claude: Option<PathBuf>,
    /// First back-off after an API error or a session that ended quickly; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long Claude Code and the server get after SIGINT before SIGKILL.
    pub grace: Duration,
}

/// `--until` (RFC 3339, or HH:MM: the next such local time) or `--for` (e.g. `8h`, `90m`, `1h30m`).
pub fn parse_deadline(until: Option<&str>, for_: Option<&str>, now: DateTime<Local>) -> Result<DateTime<Utc>> {
    let deadline = match (until, for_) {
        (Some(u), None) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(u) {
                t.with_timezone(&Utc)
            } else if let Ok(t) = NaiveTime::parse_from_str(u, "%H:%M") {
                let mut day = now.date_naive();
                loop {
                    let candidate = Local.from_local_datetime(&day.and_time(t)).earliest();
                    if let Some(c) = candidate.filter(|c| *c > now) {
                        break c.with_timezone(&Utc);
                    }
                    day = day.succ_opt().context("date overflow")?;
                }
            } else {
                bail!(
                    "--until {u:?}: use RFC 3339 (2026-11-28T22:00:00+01:00) or HH:MM (22:00, the next such local time)"
                );
            }
        }
        (None, Some(f)) => {
            now.with_timezone(&Utc) + chrono::Duration::from_std(crate::duration::parse(f).context("--for")?)?
        }
        _ => bail!("give exactly one of --until TIME and --for DURATION"),
    };
    if deadline <= now.with_timezone(&Utc) {
        bail!("the deadline {} is not in the future", deadline.with_timezone(&Local).to_rfc3339());
    }
    Ok(deadline)
}

// ------------------------------------------------------------------------------------------------
// State shown by `status`
// ------------------------------------------------------------------------------------------------

/// `.autoresearch/supervisor.json`, rewritten on every change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorState {
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub max_experiments: Option<usize>,
    /// Runs in the ledger when the supervisor started (the budget counts from here).
    pub runs_at_start: usize,
    pub claude: String,
    pub claude_version: String,
    /// Sessions started so far.
    pub session: usize,
    pub claude_pid: Option<u32>,
    /// `running`, `backing off`, `waiting for <run> to finish`, `stopping`, `stopped`.
    pub phase: String,
    pub phase_since: DateTime<Utc>,
    pub transcript: Option<String>,
    pub last_exit: Option<String>,
    pub stop_reason: Option<String>,
}

pub fn state_path(paths: &Paths) -> PathBuf {
    paths.state().join("supervisor.json")
}

pub fn lock_path(paths: &Paths) -> PathBuf {
    paths.state().join("supervisor.lock")
}

pub fn sessions_dir(paths: &Paths) -> PathBuf {
    paths.state().join("sessions")
}

/// Whether `pid` is a live process (not a zombie) whose command line contains `needle`.
pub fn process_alive(pid: u32, needle: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("");
    if stat.is_empty() || state == "Z" || state == "X" {
        return false;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmd).contains(needle)
}

/// The pid of the `serve` holding the workspace's lock, if it is alive.
pub fn server_pid(paths: &Paths) -> Option<u32> {
    let text = std::fs::read_to_string(paths.lock()).ok()?;
    let pid: u32 = text.split_whitespace().nth(1)?.parse().ok()?;
    process_alive(pid, "serve").then_some(pid)
}

/// The run started but not finished, while a server is alive to finish it.
pub fn run_in_flight(paths: &Paths) -> Option<Run> {
    server_pid(paths)?;
    let ledger = Ledger::open(&paths.ledger()).ok()?;
    ledger.runs().into_iter().rev().find(|r| r.status == RunStatus::Running)
}

/// The result to beat: the best kept result of the latest fingerprint ([`ledger::Standings`]).
pub fn best_run(runs: &[Run], ws: &WorkspaceState) -> Option<Run> {
    ledger::Standings::current(runs, &ws.baseline_train_hash).best.cloned()
}

// ------------------------------------------------------------------------------------------------
// The supervisor
// ------------------------------------------------------------------------------------------------

/// How one Claude Code session ended.
#[derive(Debug, Clone, PartialEq)]
enum Ended {
    /// Claude Code finished its turn (or its turn limit) before the deadline.
    Early,
    /// The model API failed (overloaded, rate limited, server error): back off and retry.
    ApiError(String),
    /// The API refused the credentials: retrying cannot help.
    Auth(String),
    /// Claude Code died without a result.
    Crashed(String),
    /// The supervisor stopped it (deadline, budget, signal).
    Stopped,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Early => write!(f, "Claude Code ended its session"),
            Ended::ApiError(why) => write!(f, "API error: {why}"),
            Ended::Auth(why) => write!(f, "authentication failed: {why}"),
            Ended::Crashed(why) => write!(f, "Claude Code crashed: {why}"),
            Ended::Stopped => write!(f, "stopped by the supervisor"),
        }
    }
}

struct Supervisor {
    paths: Paths,
    ws: WorkspaceState,
    opts: Options,
    claude: PathBuf,
    mcp_config: PathBuf,
    hard_limit: Duration,
    max_runs: Option<usize>,
    state: SupervisorState,
    log: File,
    stop: CancellationToken,
    best: Option<(String, f64)>,
}

pub async fn saturday(paths: &Paths, opts: Options) -> Result<ExitCode> {
    let ws = Workspace::open(&paths.root)?.state()?;
    std::fs::create_dir_all(sessions_dir(paths))?;
    let _lock = take_lock(paths)?;
    if let Some(pid) = server_pid(paths) {
        bail!(
            "a server (pid {pid}) is already serving {}: close the interactive Claude Code session first",
            paths.root.display()
        );
    }
    let claude = claude::locate(opts.claude.as_deref(), &paths.root)?;
    let version = claude::version(&claude).unwrap_or_else(|e| format!("unknown ({e:#})"));
    let config = Config::load(&paths.config())?;
    let hard_limit = claude::run_hard_limit(&config);
    let runs_at_start = Ledger::open(&paths.ledger())?.runs().len();
    let max_runs = opts.max_experiments.map(|n| runs_at_start + n);

    // The server Claude Code starts: this binary, told the deadline and the budget.
    let mut args = vec![
        "-C".to_string(),
        paths.root.display().to_string(),
        "serve".into(),
        "--deadline".into(),
        opts.deadline.to_rfc3339(),
    ];
    if let Some(m) = max_runs {
        args.extend(["--max-runs".into(), m.to_string()]);
    }
    let mcp = claude::mcp_config(&std::env::current_exe()?, &args, claude::call_timeout_ms(&config));
    let mcp_config = sessions_dir(paths).join("mcp.json");
    write_atomic(&mcp_config, serde_json::to_string_pretty(&mcp)?.as_bytes())?;

    let log = crate::fsutil::open_append(&paths.state().join("supervisor.log"))?;
    let now = Utc::now();
    let state = SupervisorState {
        pid: std::process::id(),
        started_at: now,
        deadline: opts.deadline,
        max_experiments: opts.max_experiments,
        runs_at_start,
        claude: claude.display().to_string(),
        claude_version: version.clone(),
        session: 0,
        claude_pid: None,
        phase: "starting".into(),
        phase_since: now,
        transcript: None,
        last_exit: None,
        stop_reason: None,
    };
    let runs = Ledger::open(&paths.ledger())?.runs();
    let best = best_run(&runs, &ws).and_then(|r| r.mean_rank().map(|m| (r.id, m)));
    let stop = CancellationToken::new();
    let mut sup = Supervisor {
        paths: paths.clone(),
        ws,
        opts,
        claude,
        mcp_config,
        hard_limit,
        max_runs,
        state,
        log,
        stop: stop.clone(),
        best,
    };
    if version != claude::TESTED_VERSION {
        sup.say(&format!(
            "warning: Claude Code {version} at {}; this project was tested with {} ({})",
            sup.claude.display(),
            claude::TESTED_VERSION,
            claude::TESTED_WHEEL
        ));
    }
    sup.say(&format!(
        "supervising {} until {} with Claude Code {version}{}",
        paths.root.display(),
        sup.opts.deadline.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z"),
        sup.max_runs.map(|m| format!(", at most {} experiments", m - runs_at_start)).unwrap_or_default()
    ));
    crate::shutdown::cancel_on_signal(&stop, |s| tracing::info!("received {s}: stopping Claude Code"));
    let (reason, code) = sup.run().await;
    sup.finish(&reason).await;
    Ok(code)
}

impl Supervisor {
    /// The session loop; returns why it stopped and the exit code.
    async fn run(&mut self) -> (String, ExitCode) {
        let mut failures = 0u32;
        loop {
            if let Some(why) = self.should_stop() {
                return (why, ExitCode::SUCCESS);
            }
            self.state.session += 1;
            let n = self.state.session;
            let prompt = match self.prompt(n) {
                Ok(p) => p,
                Err(e) => return (format!("cannot build the prompt: {e:#}"), ExitCode::FAILURE),
            };
            let started = Instant::now();
            let ended = match self.session(n, &prompt).await {
                Ok(e) => e,
                Err(e) => return (format!("cannot run Claude Code: {e:#}"), ExitCode::FAILURE),
            };
            self.check_best().await;
            let lasted = started.elapsed();
            self.state.last_exit = Some(format!("{ended} after {:.0} s", lasted.as_secs_f64()));
            self.save_state();
            let delay = match &ended {
                Ended::Stopped => continue,
                Ended::Auth(_) => return (ended.to_string(), ExitCode::from(2)),
                Ended::Early if lasted >= Duration::from_secs(60) => {
                    failures = 0;
                    Duration::from_secs(2)
                }
                Ended::Early => self.backoff(&mut failures),
                Ended::ApiError(_) => self.backoff(&mut failures),
                Ended::Crashed(_) => {
                    self.notify("crash", &format!("session {n}: {ended}")).await;
                    self.backoff(&mut failures)
                }
            };
            let until = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            if until >= self.opts.deadline {
                return ("deadline reached".into(), ExitCode::SUCCESS);
            }
            self.set_phase(&format!("backing off until {}", until.with_timezone(&Local).format("%H:%M:%S")));
            self.say(&format!("session {n}: {ended}; next session in {:.0} s", delay.as_secs_f64()));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }

    fn backoff(&self, failures: &mut u32) -> Duration {
        let d = self.opts.backoff_initial.saturating_mul(1 << (*failures).min(20)).min(self.opts.backoff_max);
        *failures += 1;
        d
    }

    /// Why no new session should start, if none should.
    fn should_stop(&self) -> Option<String> {
        if self.stop.is_cancelled() {
            return Some("interrupted".into());
        }
        if Utc::now() >= self.opts.deadline {
            return Some("deadline reached".into());
        }
        if let Some(m) = self.max_runs {
            let runs = Ledger::open(&self.paths.ledger()).map(|l| l.runs().len()).unwrap_or(0);
            if runs >= m {
                return Some(format!("experiment budget spent ({} experiments)", m - self.state.runs_at_start));
            }
        }
        None
    }

    /// [`FOLLOW_THE_INSTRUCTIONS`] for a fresh loop; otherwise where things stand, then that line.
    /// program.md itself reaches the model once, as the server's MCP instructions.
    fn prompt(&self, session: usize) -> Result<String> {
        // The instructions are program.md: without it the loop would run on the server's fallback line.
        std::fs::metadata(self.paths.program_md())
            .with_context(|| format!("read {} (the loop's instructions)", self.paths.program_md().display()))?;
        let runs = Ledger::open(&self.paths.ledger())?.runs();
        if session == 1 && runs.is_empty() {
            return Ok(FOLLOW_THE_INSTRUCTIONS.into());
        }
        Ok(format!("{}\n---\n\n{FOLLOW_THE_INSTRUCTIONS}", resume_prompt(&self.paths, &self.ws, &runs, self, session)))
    }

    /// Runs one Claude Code session to its end, stopping it at the deadline or budget.
    async fn session(&mut self, n: usize, prompt: &str) -> Result<Ended> {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let transcript = sessions_dir(&self.paths).join(format!("{n:03}-{stamp}.jsonl"));
        let stderr = File::create(transcript.with_extension("stderr.log"))?;
        let mut cmd = tokio::process::Command::new(&self.claude);
        cmd.arg("-p").arg(prompt).args(claude::strict_args(&self.mcp_config));
        cmd.args(["--output-format", "stream-json", "--verbose"]);
        if let Some(t) = self.opts.max_turns {
            cmd.args(["--max-turns", &t.to_string()]);
        }
        // Its own process group: a Ctrl-C at the terminal reaches only the supervisor, which stops
        // Claude Code in order.
        cmd.current_dir(&self.paths.root)
            .envs(claude::QUIET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("start {}", self.claude.display()))?;
        let pid = child.id().unwrap_or(0);
        self.state.claude_pid = Some(pid);
        self.state.transcript = Some(self.paths.relative(&transcript).display().to_string());
        self.set_phase("running");
        self.say(&format!("session {n}: Claude Code pid {pid}, transcript {}", transcript.display()));
        let stdout = child.stdout.take().context("claude stdout")?;
        let reader = tokio::spawn(read_stream(stdout, transcript.clone()));

        let mut stopping: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let status = loop {
            tokio::select! {
                s = child.wait() => break s?,
                _ = tick.tick() => {}
            }
            self.check_best().await;
            if let Some(since) = stopping {
                if since.elapsed() > self.opts.grace {
                    self.say(&format!("session {n}: Claude Code ignored SIGINT for {:?}: SIGKILL", self.opts.grace));
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    stopping = Some(Instant::now() + Duration::from_secs(3600));
                }
                continue;
            }
            if let Some(why) = self.stop_now() {
                self.say(&format!("session {n}: {why}: SIGINT to Claude Code"));
                self.set_phase("stopping");
                signal_pid(pid, nix::sys::signal::Signal::SIGINT);
                stopping = Some(Instant::now());
            }
        };
        self.state.claude_pid = None;
        self.stop_leftover_server().await;
        let report = reader.await.unwrap_or_default();
        if stopping.is_some() {
            return Ok(Ended::Stopped);
        }
        Ok(classify(&status, &report))
    }

    /// Whether the running session must stop now: the stop signal, or the deadline or the budget
    /// with no run in flight (a run in flight finishes first, within its hard limit).
    fn stop_now(&mut self) -> Option<String> {
        if self.stop.is_cancelled() {
            return Some("interrupted".into());
        }
        let now = Utc::now();
        let past_deadline = now >= self.opts.deadline;
        let budget_spent =
            self.max_runs.is_some_and(|m| Ledger::open(&self.paths.ledger()).map(|l| l.runs().len()).unwrap_or(0) >= m);
        if !past_deadline && !budget_spent {
            return None;
        }
        if let Some(run) = run_in_flight(&self.paths) {
            let limit = run.started_at + chrono::Duration::from_std(self.hard_limit).unwrap_or_default();
            if now < limit {
                let phase = format!("waiting for run {} to finish", run.id);
                if self.state.phase != phase {
                    self.say(&format!(
                        "{} reached; {phase} (at most until {})",
                        if past_deadline { "deadline" } else { "budget" },
                        limit.with_timezone(&Local).format("%H:%M:%S")
                    ));
                    self.set_phase(&phase);
                }
                return None;
            }
        }
        Some(if past_deadline { "deadline reached".into() } else { "experiment budget spent".into() })
    }

    /// Claude Code SIGINTs its server when it exits; a server still holding the lock after that
    /// gets SIGINT (it cancels its run) and, after the grace, SIGKILL.
    async fn stop_leftover_server(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while server_pid(&self.paths).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Some(pid) = server_pid(&self.paths) else { return };
        self.say(&format!("the server (pid {pid}) outlived Claude Code: SIGINT"));
        signal_pid(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + self.opts.grace.max(Duration::from_secs(12));
        while process_alive(pid, "serve") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if process_alive(pid, "serve") {
            self.say(&format!("the server (pid {pid}) ignored SIGINT: SIGKILL"));
            signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
            // Its jobs' cgroups: killed and removed.
            tokio::time::sleep(Duration::from_millis(500)).await;
            crate::sandbox::cgroup::reap_orphans();
        }
    }

    /// Notifies a new best result (lower mean rank than any before, within the latest fingerprint).
    async fn check_best(&mut self) {
        let Ok(ledger) = Ledger::open(&self.paths.ledger()) else { return };
        let Some(best) = best_run(&ledger.runs(), &self.ws) else { return };
        let Some(rank) = best.mean_rank() else { return };
        // The standings only name another best when a better result is kept (or the fingerprint
        // changed): any change is news, and the last line then names what `status` names.
        let better = self.best.as_ref().is_none_or(|(id, _)| *id != best.id);
        if better {
            let msg = format!(
                "new best: run {} mean rank {rank:.2}{} \"{}\"",
                best.id,
                self.best.as_ref().map(|(id, r)| format!(" (was {r:.2}, {id})")).unwrap_or_default(),
                best.description
            );
            self.best = Some((best.id.clone(), rank));
            self.say(&msg);
            self.notify("new_best", &msg).await;
        }
    }

    async fn finish(&mut self, reason: &str) {
        self.state.stop_reason = Some(reason.into());
        self.set_phase("stopped");
        let best = self.best.as_ref().map(|(id, r)| format!("; best {id} mean rank {r:.2}")).unwrap_or_default();
        let msg = format!("stopped after {} session(s): {reason}{best}", self.state.session);
        self.say(&msg);
        self.notify("stop", &msg).await;
    }

    /// Runs `--notify CMD` through `sh -c` with the event in its environment (at most 60 s).
    async fn notify(&mut self, event: &str, message: &str) {
        let Some(cmd) = self.opts.notify.clone() else { return };
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(&cmd).current_dir(&self.paths.root).stdin(Stdio::null()).kill_on_drop(true);
        c.env("AUTORESEARCH_EVENT", event)
            .env("AUTORESEARCH_MESSAGE", message)
            .env("AUTORESEARCH_WORKSPACE", &self.paths.root)
            .env("AUTORESEARCH_SESSION", self.state.session.to_string())
            .env("AUTORESEARCH_DEADLINE", self.opts.deadline.to_rfc3339());
        if let Some((id, rank)) = &self.best {
            c.env("AUTORESEARCH_BEST_RUN", id).env("AUTORESEARCH_BEST_MEAN_RANK", format!("{rank:.4}"));
        }
        if let Some(r) = &self.state.stop_reason {
            c.env("AUTORESEARCH_REASON", r);
        }
        let result = match c.spawn() {
            Ok(mut child) => match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
                Ok(Ok(s)) if s.success() => return,
                Ok(Ok(s)) => format!("exited with {s}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out after 60 s (killed)".into(),
            },
            Err(e) => e.to_string(),
        };
        self.say(&format!("--notify for {event}: {result}"));
    }

    fn set_phase(&mut self, phase: &str) {
        self.state.phase = phase.into();
        self.state.phase_since = Utc::now();
        self.save_state();
    }

    fn save_state(&self) {
        if let Ok(json) = serde_json::to_string_pretty(&self.state) {
            let _ = write_atomic(&state_path(&self.paths), json.as_bytes());
        }
    }

    fn say(&mut self, msg: &str) {
        let line = format!("[saturday {}] {msg}", Local::now().format("%Y-%m-%d %H:%M:%S"));
        eprintln!("{line}");
        let _ = writeln!(self.log, "{line}");
    }
}

/// What the stream-json transcript said about how the session ended.
#[derive(Debug, Default)]
struct StreamReport {
    /// The last `{"type":"result", ...}` line.
    result: Option<Value>,
}

/// Copies Claude Code's stream-json to the transcript, line by line, and keeps the final result.
async fn read_stream(stdout: tokio::process::ChildStdout, transcript: PathBuf) -> StreamReport {
    let mut report = StreamReport::default();
    let Ok(mut file) = File::create(&transcript) else { return report };
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = writeln!(file, "{line}");
        let _ = file.flush();
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v.get("type").and_then(Value::as_str) == Some("result")
        {
            report.result = Some(v);
        }
    }
    report
}

fn classify(status: &std::process::ExitStatus, report: &StreamReport) -> Ended {
    let Some(r) = &report.result else {
        return Ended::Crashed(format!("{status}, no result in the transcript"));
    };
    let api_status = r.get("api_error_status").and_then(Value::as_u64);
    let api_type = r.get("api_error_type").and_then(Value::as_str).unwrap_or("");
    let text = r.get("result").and_then(Value::as_str).unwrap_or("").chars().take(300).collect::<String>();
    if matches!(api_status, Some(401 | 403)) || matches!(api_type, "authentication_error" | "permission_error") {
        return Ended::Auth(format!("{} {api_type}: {text}", api_status.unwrap_or(0)));
    }
    let terminal = r.get("terminal_reason").and_then(Value::as_str).unwrap_or("");
    if api_status.is_some() || terminal == "api_error" {
        return Ended::ApiError(format!("{} {api_type}: {text}", api_status.unwrap_or(0)));
    }
    Ended::Early
}

/// One run in the resume prompt. The agent reads it: the mean rank at the agent's resolution.
fn prompt_line(r: &Run) -> String {
    format!(
        "{} {:?} mean rank {} {}\"{}\"",
        r.id,
        r.status,
        r.mean_rank().map(|m| format!("{:.2}", round_rank(m))).unwrap_or("-".into()),
        match (r.kept, &r.kept_reason) {
            (true, Some(_)) => "kept with reason ",
            (true, None) => "kept ",
            _ => "",
        },
        r.description
    )
}

/// The resume prompt's line naming the best kept result ([`best_run`]).
/// and the kept state every delta is against, when that is another run.
pub fn best_so_far(runs: &[Run], ws: &WorkspaceState) -> String {
    let s = ledger::Standings::current(runs, &ws.baseline_train_hash);
    match s.best {
        Some(b) => {
            let mut t = format!("- best so far: {} ({})\n", prompt_line(b), s.seeds_label(b));
            if let Some(k) = s.kept.filter(|k| k.train_hash != b.train_hash) {
                t.push_str(&format!(
                    "- kept state (the head of the branch; results are compared with it): {} ({})\n",
                    prompt_line(k),
                    s.seeds_label(k)
                ));
            }
            t
        }
        None => "- no successful run yet: run the unmodified train.rs first (description \"baseline\")\n".into(),
    }
}

/// The prompt of every session. The loop itself is program.md, which the server sends as its MCP
/// instructions (the contract for any client) and Claude Code puts in the system prompt, so the
/// prompt only points at it instead of repeating it.
pub const FOLLOW_THE_INSTRUCTIONS: &str = "Run the autoresearch loop on trainer/src/train.rs now, with the six tools of the \
     `autoresearch` server, exactly as its instructions (program.md) describe.";

fn resume_prompt(paths: &Paths, ws: &WorkspaceState, runs: &[Run], sup: &Supervisor, session: usize) -> String {
    let now = Utc::now();
    let left = (sup.opts.deadline - now).num_minutes().max(0);
    let mut t = format!(
        "You are resuming the autoresearch loop: Claude Code was restarted (session {session}). The deadline is {} \
         ({left} min from now)",
        sup.opts.deadline.with_timezone(&Local).format("%H:%M %Z")
    );
    if let Some(m) = sup.max_runs {
        t.push_str(&format!("; {} experiments left in this session's budget", m.saturating_sub(runs.len())));
    }
    t.push_str(".\nWhere things stand (from the server's ledger):\n");
    t.push_str(&best_so_far(runs, ws));
    t.push_str(&format!("- {} runs in total; the last ones:\n", runs.len()));
    for r in runs.iter().rev().take(5).rev() {
        t.push_str(&format!("  {}\n", prompt_line(r)));
    }
    let pad = std::fs::read_to_string(paths.scratchpad()).unwrap_or_default();
    let tail: String = {
        let chars: Vec<char> = pad.chars().collect();
        chars[chars.len().saturating_sub(2000)..].iter().collect()
    };
    if !tail.trim().is_empty() {
        t.push_str(&format!("- the end of your scratchpad:\n<scratchpad-tail>\n{}\n</scratchpad-tail>\n", tail.trim()));
    }
    t.push_str(
        "train.rs may hold uncommitted edits from the last session: `edit_train view` it and decide (run it, \
         commit after a successful run, or revert). Then continue the loop. Never stop before the deadline.\n",
    );
    t
}

fn take_lock(paths: &Paths) -> Result<File> {
    match crate::fsutil::lock_exclusive(&lock_path(paths), &format!("pid {}", std::process::id()))? {
        Ok(f) => Ok(f),
        Err(holder) => bail!(
            "another supervisor ({holder}) is already running on {}; one supervisor per workspace",
            paths.root.display()
        ),
    }
}

fn signal_pid(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let now = Local.with_ymd_and_hms(2026, 11, 28, 21, 0, 0).unwrap();
        let d = parse_deadline(Some("22:30"), None, now).unwrap();
        assert_eq!(d, Local.with_ymd_and_hms(2026, 11, 28, 22, 30, 0).unwrap().with_timezone(&Utc));
        // Earlier in the day: the next such time is tomorrow.
        let d = parse_deadline(Some("06:00"), None, now).unwrap();
        assert_eq!(d, Local.with_ymd_and_hms(2026, 11, 29, 6, 0, 0).unwrap().with_timezone(&Utc));
        let d = parse_deadline(None, Some("2h"), now).unwrap();
        assert_eq!(d, now.with_timezone(&Utc) + chrono::Duration::hours(2));
        let d = parse_deadline(Some("2026-11-29T08:00:00Z"), None, now).unwrap();
        assert_eq!(d.to_rfc3339(), "2026-11-29T08:00:00+00:00");
        assert!(parse_deadline(Some("2020-01-01T00:00:00Z"), None, now).is_err(), "past");
        assert!(parse_deadline(Some("22:00"), Some("1h"), now).is_err(), "both");
        assert!(parse_deadline(None, None, now).is_err(), "neither");
        assert!(parse_deadline(Some("tonight"), None, now).is_err());
    }

    #[test]
    fn the_resume_prompt_shows_mean_ranks_at_the_agents_resolution() {
        let fingerprint = serde_json::json!({"harness": "h", "data": "d", "val_n": 100, "budget_seconds": 60,
            "profile": "tests", "device": "cpu", "libtorch": "2.11.0"});
        let metrics = serde_json::json!({"mean_rank": 12.345678, "median_rank": 10.5, "i2t_mean_rank": 11.1,
            "t2i_mean_rank": 13.6, "i2t_r1": 1.0, "i2t_r5": 5.0, "i2t_r10": 10.0, "t2i_r1": 1.0, "t2i_r5": 5.0,
            "t2i_r10": 10.0, "n": 100, "random_mean_rank": 49.5});
        let run: Run = serde_json::from_value(serde_json::json!({"id": "r0007", "number": 7,
            "started_at": "2026-11-28T22:00:00Z", "train_hash": "a", "description": "LR 1e-3", "status": "ok",
            "metrics": metrics, "reported": {}, "phases": {"total": 1.0}, "overran": false, "kept": true,
            "commit": null, "repeat_of": null, "seed": 42, "message": null, "fingerprint": fingerprint}))
        .unwrap();
        assert_eq!(prompt_line(&run), "r0007 Ok mean rank 12.35 kept \"LR 1e-3\"");
    }

    #[test]
    fn exits_are_classified_from_the_result_line() {
        let ok = std::process::ExitStatus::default();
        let rep = |v: Value| StreamReport { result: Some(v) };
        let c = classify(&ok, &rep(serde_json::json!({"type":"result","is_error":false,"result":"done"})));
        assert_eq!(c, Ended::Early);
        let c = classify(
            &ok,
            &rep(
                serde_json::json!({"type":"result","is_error":true,"api_error_status":529,"api_error_type":"overloaded_error","terminal_reason":"api_error"}),
            ),
        );
        assert!(matches!(c, Ended::ApiError(_)), "{c:?}");
        let c = classify(
            &ok,
            &rep(
                serde_json::json!({"type":"result","is_error":true,"api_error_status":401,"api_error_type":"authentication_error"}),
            ),
        );
        assert!(matches!(c, Ended::Auth(_)), "{c:?}");
        assert!(matches!(classify(&ok, &StreamReport::default()), Ended::Crashed(_)));
    }
}
