//! The audit log, `.autoresearch/audit.jsonl`: one line per tool call, accepted or refused, and per
//! message the transport refused at the protocol level ([`RecordKind::Protocol`]), each carrying
//! the SHA-256 of the line before it. A sidecar (`audit.head`) and every ledger line and
//! commit record the head hash and line count, so an edited, dropped, reordered or truncated line
//! is found by [`verify`].
//!
//! What the server sets right in its own state (a torn line set aside, a file put back, a commit
//! reconciled with the ledger, calls a full disk kept from being recorded) is a record of its own,
//! `tool: "repair"` (see [`crate::durable::Repair`]), so `verify` can explain it rather than fail.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::durable::{AppendFile, LineProblem, Repair, parse_lines, read_or_empty};
use crate::fsutil::{sha256_hex, write_atomic};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The call did what was asked.
    Ok,
    /// The call was refused before doing anything (a rule of the contract).
    Refused,
    /// The call ran and failed (build error, crash, timeout, internal error).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// What a record is about. Lines written before kinds existed have none and are tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A call of one of the six tools (over MCP or `autoresearch-mcp run`).
    #[default]
    ToolCall,
    /// A message the transport answered with a JSON-RPC error (or dropped, for a notification or
    /// response that may not be answered) before it reached a tool: malformed JSON, an invalid
    /// request, invalid params, a duplicate id, a request before `initialize`. Its `tool` is
    /// [`PROTOCOL_TOOL`], its `reason` the error sent, its `args` what was received (see
    /// [`crate::transport::Refusal`]); `outcome` is always `refused`.
    Protocol,
}

impl RecordKind {
    fn is_tool_call(&self) -> bool {
        *self == RecordKind::ToolCall
    }
}

/// The `tool` of every [`RecordKind::Protocol`] record, so `audit list --tool protocol` finds them.
pub const PROTOCOL_TOOL: &str = "protocol";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub ts: DateTime<Utc>,
    /// Absent (a tool call) on every line but protocol refusals: older logs stay byte-identical.
    #[serde(default, skip_serializing_if = "RecordKind::is_tool_call")]
    pub kind: RecordKind,
    pub tool: String,
    /// `mcp` for tool calls, `cli` for `autoresearch-mcp run`.
    pub via: String,
    pub args: Value,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub train_hash_before: Option<String>,
    pub train_hash_after: Option<String>,
    /// SHA-256 (hex) of the previous line's bytes, or [`GENESIS`] for the first line.
    pub prev: String,
}

/// Hash and count of the log's last line, the value that ledger lines and commits carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub hash: String,
    pub lines: u64,
}

impl Head {
    fn genesis() -> Self {
        Head { hash: GENESIS.into(), lines: 0 }
    }
}

/// Appends records; one writer per workspace (the server holds the workspace lock).
pub struct AuditLog {
    head_path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: AppendFile,
    head: Head,
}

fn valid_record(line: &[u8]) -> bool {
    serde_json::from_slice::<AuditRecord>(line).is_ok()
}

/// The `tool` of the records the server writes about its own state (not tool calls).
pub const REPAIR_TOOL: &str = "repair";

impl AuditLog {
    /// Opens the log as its writer: a torn last line is set aside into `audit.jsonl.torn` and the
    /// repair recorded as the log's next record, so every later line starts on a line boundary.
    pub fn open(path: &Path, head_path: &Path) -> Result<Self> {
        let (mut file, bytes) = AppendFile::open(path, valid_record)?;
        let repairs = file.take_repairs();
        let log = Self { head_path: head_path.to_path_buf(), inner: Mutex::new(Inner { file, head: head_of(&bytes) }) };
        for r in repairs {
            log.append_repair(&r)?;
        }
        Ok(log)
    }

    pub fn head(&self) -> Head {
        self.inner.lock().unwrap().head.clone()
    }

    /// Reserves room for a record of about `bytes` bytes (and a cushion for those of calls that
    /// overlap it): a full disk fails here, before the call acts.
    pub fn reserve(&self, bytes: u64) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.settle(&mut inner)?;
        inner.file.reserve(bytes + RESERVE_CUSHION)
    }

    /// Puts the log back if it was deleted under the server (and records that).
    pub fn ensure_in_place(&self) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        self.settle(&mut inner)
    }

    /// Appends one record (its `prev` is filled in here), fsyncs, and updates the head sidecar.
    pub fn append(&self, rec: AuditRecord) -> Result<Head> {
        let mut inner = self.inner.lock().unwrap();
        self.settle(&mut inner)?;
        self.append_locked(&mut inner, rec)
    }

    /// Records something the server set right in its own state.
    pub fn append_repair(&self, r: &Repair) -> Result<Head> {
        tracing::warn!("repair: {}", r.sentence());
        self.append(repair_record(r))
    }

    /// Restores a deleted log and heals a torn tail, recording each repair before anything else.
    fn settle(&self, inner: &mut Inner) -> Result<()> {
        inner.file.ensure_in_place()?;
        if inner.file.heal()? {
            inner.head = head_of(&inner.file.content()?);
        }
        for r in inner.file.take_repairs() {
            tracing::warn!("repair: {}", r.sentence());
            self.append_locked(inner, repair_record(&r))?;
        }
        Ok(())
    }

    fn append_locked(&self, inner: &mut Inner, mut rec: AuditRecord) -> Result<Head> {
        rec.prev = inner.head.hash.clone();
        let line = serde_json::to_string(&rec)?;
        inner.file.append(line.as_bytes()).context("write the audit log")?;
        inner.head = Head { hash: sha256_hex(line.as_bytes()), lines: inner.head.lines + 1 };
        // The sidecar only helps find truncation; a stale one still verifies, so failing to
        // rewrite it (a full disk) fails nothing.
        if let Err(e) = write_atomic(&self.head_path, serde_json::to_string(&inner.head)?.as_bytes()) {
            tracing::warn!("could not update {}: {e:#}", self.head_path.display());
        }
        Ok(inner.head.clone())
    }
}

/// Room kept free at the end of the log beyond the record being reserved for, so that the record
/// of a long call (run_experiment) still fits after shorter calls that overlapped it.
pub const RESERVE_CUSHION: u64 = 64 * 1024;

/// The audit record of a repair.
pub fn repair_record(r: &Repair) -> AuditRecord {
    AuditRecord {
        ts: Utc::now(),
        kind: RecordKind::default(),
        tool: REPAIR_TOOL.into(),
        via: "server".into(),
        args: r.args(),
        outcome: Outcome::Ok,
        reason: Some(r.sentence()),
        duration_ms: 0.0,
        run_id: None,
        train_hash_before: None,
        train_hash_after: None,
        prev: String::new(),
    }
}

fn head_of(bytes: &[u8]) -> Head {
    let mut head = Head::genesis();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        head = Head { hash: sha256_hex(line), lines: head.lines + 1 };
    }
    head
}

/// What `audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub lines: u64,
    pub head: Head,
    /// The first problem: 1-based line number (0 for the file as a whole) and what is wrong.
    pub first_bad: Option<(u64, String)>,
    /// The repair records in the log: line number and what the server set right.
    pub repairs: Vec<(u64, String)>,
    /// What is not a failure but is said: a torn last line not yet set aside, a recorded head that
    /// names a line a crash cut (explained by its repair record).
    pub notes: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Checks the chain line by line, then checks every recorded head (sidecar, ledger lines, commit
/// trailers) against the log: a recorded head whose line is missing or different means truncation
/// or an edit after the fact, unless a repair record explains it (a line a crash cut, set aside
/// by the next start: the repair record took its place and names it).
///
/// The first bad line is pinpointed: an edited line is the one before the first line whose `prev`
/// names no line of the log; a moved line is one whose `prev` names a line elsewhere; a line that
/// is not an audit record is itself bad; a truncated log is caught by a recorded head. A last line
/// without its newline that is not a record is a crash's torn line, not yet set aside: noted.
pub fn verify(path: &Path, recorded_heads: &[(String, Head)]) -> Result<Verification> {
    let bytes = read_or_empty(path)?;
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut notes = vec![];
    // A torn last line (no newline, not a record): not part of the chain.
    let mut torn_tail = None;
    if bytes.last().is_some_and(|b| *b != b'\n')
        && let Some(tail) = lines.last()
        && serde_json::from_slice::<Chained>(tail).is_err()
    {
        let n = lines.len() as u64;
        notes.push(format!(
            "line {n} is torn ({} bytes without a newline: a crash cut it); the next server start sets it aside",
            tail.len()
        ));
        torn_tail = Some(n);
        lines.pop();
    }
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let hashes: Vec<String> = lines.iter().map(|l| sha256_hex(l)).collect();
    // Built only when the chain breaks, to say where the line came from.
    let mut index: Option<std::collections::HashMap<&str, u64>> = None;
    let mut first_bad = None;
    let mut repairs = vec![];
    // Lines of this log that a crash cut and a repair record replaced.
    let mut cut_lines = std::collections::BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let n = i as u64 + 1;
        let expected = if i == 0 { GENESIS } else { hashes[i - 1].as_str() };
        let chained = match serde_json::from_slice::<Chained>(line) {
            Err(e) => {
                first_bad = Some((n, format!("line {n} is not a valid audit record ({e}): it was edited")));
                break;
            }
            Ok(c) => c,
        };
        if chained.tool.as_deref() == Some(REPAIR_TOOL)
            && let Ok(rec) = serde_json::from_slice::<AuditRecord>(line)
        {
            repairs.push((n, rec.reason.clone().unwrap_or_else(|| rec.args.to_string())));
            if let Ok(Repair::TornTail { file: f, line: cut, .. }) = serde_json::from_value::<Repair>(rec.args.clone())
                && f == file
                && cut == n
            {
                cut_lines.insert(cut);
            }
        }
        let prev = chained.prev;
        if prev == expected {
            continue;
        }
        let index = index.get_or_insert_with(|| {
            hashes
                .iter()
                .enumerate()
                .map(|(j, h)| (h.as_str(), j as u64 + 1))
                .collect::<std::collections::HashMap<_, _>>()
        });
        first_bad = Some(match (prev.as_str(), index.get(prev.as_str())) {
            (GENESIS, _) => (
                1,
                format!("line {n} was written as the first line of the log: lines 1-{} were inserted before it", n - 1),
            ),
            (_, Some(&k)) if k > n => (
                n,
                format!("line {n} was written right after line {k}, which now comes after it: lines were reordered"),
            ),
            (_, Some(&k)) => (
                k + 1,
                format!(
                    "line {n} was written right after line {k}: line{} {} inserted or moved here",
                    if k + 1 == n - 1 { format!(" {}", k + 1) } else { format!("s {}-{}", k + 1, n - 1) },
                    if k + 1 == n - 1 { "was" } else { "were" }
                ),
            ),
            (_, None) if n == 1 => {
                (1, "line 1 follows a line that is not in the log: lines were removed from the start".to_string())
            }
            (_, None) => (
                n - 1,
                format!(
                    "line {} was edited, or lines after it were removed: line {n} names a predecessor that is not in the log",
                    n - 1
                ),
            ),
        });
        break;
    }
    let head = Head { hash: hashes.last().cloned().unwrap_or_else(|| GENESIS.to_string()), lines: hashes.len() as u64 };
    if first_bad.is_none() {
        for (source, rec) in recorded_heads {
            let found = match rec.lines {
                0 => Some(GENESIS),
                n => hashes.get(n as usize - 1).map(String::as_str),
            };
            if found == Some(rec.hash.as_str()) {
                continue;
            }
            if cut_lines.contains(&rec.lines) {
                notes.push(format!(
                    "{source} recorded line {0}, which a crash cut; it was set aside (the repair record at line {0})",
                    rec.lines
                ));
                continue;
            }
            if torn_tail == Some(rec.lines) {
                notes.push(format!("{source} recorded line {}, the torn last line", rec.lines));
                continue;
            }
            first_bad = Some(if rec.lines > head.lines {
                (
                    head.lines + 1,
                    format!(
                        "{source} recorded {} lines but the log has {}: lines {}-{} were removed from the end",
                        rec.lines,
                        head.lines,
                        head.lines + 1,
                        rec.lines
                    ),
                )
            } else {
                (rec.lines, format!("{source} recorded a different hash for line {}: it was edited", rec.lines))
            });
            break;
        }
    }
    Ok(Verification { lines: head.lines, head, first_bad, repairs, notes })
}

/// The only fields `verify` needs: parsing whole records would double its time on large logs.
#[derive(Deserialize)]
struct Chained {
    prev: String,
    #[serde(default)]
    tool: Option<String>,
}

/// Reads every record (for listing and summaries). A line that is not a record (a bad byte, a
/// torn last line) is reported on stderr with its line number and skipped.
pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>> {
    let (recs, problems) = read_all_checked(path)?;
    for p in &problems {
        tracing::warn!("{p}");
    }
    Ok(recs)
}

/// Every record, and the lines that are not records.
pub fn read_all_checked(path: &Path) -> Result<(Vec<AuditRecord>, Vec<LineProblem>)> {
    let bytes = read_or_empty(path)?;
    let (recs, problems) =
        parse_lines(path, &bytes, |l| serde_json::from_slice::<AuditRecord>(l).map_err(|e| e.to_string()));
    Ok((recs.into_iter().map(|(_, r)| r).collect(), problems))
}

/// Reads the head sidecar, if any.
pub fn read_head_sidecar(path: &Path) -> Result<Option<Head>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).context("parse audit.head")?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("read audit.head"),
    }
}

// ------------------------------------------------------------------------------------------------
// Reading the log: timeline lines, time filters, the summary
// ------------------------------------------------------------------------------------------------

/// Characters of agent text shown per timeline line.
const WHAT_CHARS: usize = 72;

/// Agent text made safe for a terminal: no escape sequences or control characters, one line, capped.
fn clean(s: &str, max: usize) -> String {
    let one: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let one = one.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max { one } else { one.chars().take(max.saturating_sub(1)).chain(['…']).collect() }
}

/// What a call asked for, in a few words (its arguments are agent text: cleaned and capped).
pub fn what(rec: &AuditRecord) -> String {
    let a = &rec.args;
    let s = |k: &str| a.get(k).and_then(Value::as_str);
    let lines = |k: &str| s(k).map(|t| t.lines().count().max(1)).unwrap_or(0);
    if rec.kind == RecordKind::Protocol {
        let id = a.get("id").filter(|v| !v.is_null()).map(|v| format!(" id {v}")).unwrap_or_default();
        let w = format!(
            "{}{id}, {} bytes: {}",
            s("method").unwrap_or("(no method)"),
            a.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            s("excerpt").unwrap_or("")
        );
        return clean(&w, WHAT_CHARS);
    }
    let w = match rec.tool.as_str() {
        "edit_train" => {
            let mut w = match s("command").unwrap_or("?") {
                "view" => match a.get("view_range").and_then(Value::as_array) {
                    Some(r) => format!("view {}", r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("-")),
                    None => "view".into(),
                },
                "str_replace" => format!(
                    "str_replace {} → {} lines: {}",
                    lines("old_str"),
                    lines("new_str"),
                    s("old_str").and_then(|t| t.lines().find(|l| !l.trim().is_empty())).unwrap_or("").trim()
                ),
                "insert" => format!(
                    "insert {} lines after line {}",
                    lines("new_str"),
                    a.get("insert_line").map(|v| v.to_string()).unwrap_or_else(|| "?".into())
                ),
                other => other.to_string(),
            };
            if let Some(p) = s("path").filter(|p| *p != crate::paths::TRAIN_RS) {
                w = format!("{w} (path {p})");
            }
            w
        }
        "run_experiment" | "commit" => format!("\"{}\"", s("description").unwrap_or("")),
        "revert" => s("reason").map(|r| format!("\"{r}\"")).unwrap_or_default(),
        REPAIR_TOOL => s("kind").unwrap_or("").to_string(),
        "append_scratchpad" => {
            format!("{} chars: {}", s("entry").map(|e| e.chars().count()).unwrap_or(0), s("entry").unwrap_or(""))
        }
        _ => match a {
            Value::Object(m) if m.is_empty() => String::new(),
            Value::Null => String::new(),
            other => other.to_string(),
        },
    };
    clean(&w, WHAT_CHARS)
}

/// A duration for people: `850 ms`, `12.3 s`, `4m05s`, `3h12m`.
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// One timeline line: time (UTC), tool, outcome, duration, run, what was asked, and why it failed.
pub fn timeline_line(rec: &AuditRecord) -> String {
    let mut line = format!(
        "{}  {:<17} {:<7} {:>8}  {:<7} {}",
        rec.ts.format("%Y-%m-%d %H:%M:%S"),
        clean(&rec.tool, 17),
        rec.outcome.as_str(),
        human(rec.duration_ms / 1e3),
        rec.run_id.as_deref().map(|r| clean(r, 7)).unwrap_or_default(),
        what(rec)
    );
    if let Some(r) = &rec.reason {
        line.push_str("  → ");
        line.push_str(&clean(r, 160));
    }
    line.trim_end().to_string()
}

/// A point in time for `--since`/`--until`: RFC 3339 (`2026-11-23T08:00:00Z`), a UTC date or
/// date and time (`2026-11-23`, `2026-11-23 08:00`), or an age (`90m`, `2h`, `1d` ago).
pub fn parse_when(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(Utc.from_utc_datetime(&d));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight")));
    }
    match crate::duration::parse(t) {
        Ok(age) => Ok(now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)),
        Err(_) => anyhow::bail!(
            "{s:?} is not a time: use RFC 3339 (2026-11-23T08:00:00Z), a UTC date and time (2026-11-23 08:00) or an age (90m, 2h, 1d, 1h30m)"
        ),
    }
}

/// Calls of one tool, by outcome, and the time they took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolStats {
    pub calls: u64,
    pub ok: u64,
    pub refused: u64,
    pub error: u64,
    pub seconds: f64,
}

/// What `audit summary` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub calls: u64,
    /// When the first call started.
    pub first: Option<DateTime<Utc>>,
    /// When the last call ended.
    pub last: Option<DateTime<Utc>>,
    pub per_tool: std::collections::BTreeMap<String, ToolStats>,
    /// (tool, reason with numbers blanked) → (count, the latest full reason).
    pub refusals: std::collections::BTreeMap<(String, String), (u64, String)>,
    /// Errors the same way (build failures, crashes, timeouts).
    pub errors: std::collections::BTreeMap<(String, String), (u64, String)>,
    /// From the first call's start to the last call's end.
    pub span_seconds: f64,
    /// Inside run_experiment calls (building, training, embedding, scoring).
    pub experiment_seconds: f64,
    /// Inside any other tool call (not overlapping an experiment).
    pub other_tool_seconds: f64,
    /// Between calls: the agent thinking, or nobody there.
    pub idle_seconds: f64,
}

/// A reason with digits collapsed, so `run r0004 is in flight` and `run r0007 is in flight` count together.
fn reason_key(r: &str) -> String {
    let mut k = String::with_capacity(r.len());
    let mut in_num = false;
    // The whole reason: a cap would merge reasons that differ only past it.
    for c in clean(r, usize::MAX).chars() {
        if c.is_ascii_digit() {
            if !in_num {
                k.push('N');
            }
            in_num = true;
        } else {
            in_num = false;
            k.push(c);
        }
    }
    k
}

/// Totals over `recs` (in log order). Each record's time is when the call ended; it started
/// `duration_ms` earlier. Time is counted once where calls overlap (a read_metrics during a run).
pub fn summarize(recs: &[AuditRecord]) -> Summary {
    let mut s = Summary { calls: recs.len() as u64, ..Default::default() };
    // (start, end, is_experiment) in seconds since the first start.
    let mut spans: Vec<(f64, f64, bool)> = Vec::with_capacity(recs.len());
    let start_of = |r: &AuditRecord| r.ts - chrono::Duration::microseconds((r.duration_ms * 1e3) as i64);
    let t0 = recs.iter().map(start_of).min();
    for r in recs {
        let t = s.per_tool.entry(r.tool.clone()).or_default();
        t.calls += 1;
        t.seconds += r.duration_ms / 1e3;
        match r.outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Refused => t.refused += 1,
            Outcome::Error => t.error += 1,
        }
        let reason = r.reason.as_deref().unwrap_or("");
        let bucket = match r.outcome {
            Outcome::Ok => None,
            Outcome::Refused => Some(&mut s.refusals),
            Outcome::Error => Some(&mut s.errors),
        };
        if let Some(b) = bucket {
            let e = b.entry((r.tool.clone(), reason_key(reason))).or_insert((0, String::new()));
            e.0 += 1;
            e.1 = clean(reason, 300);
        }
        s.first = Some(s.first.map_or(start_of(r), |f| f.min(start_of(r))));
        s.last = Some(s.last.map_or(r.ts, |l| l.max(r.ts)));
        if let Some(t0) = t0 {
            let a = (start_of(r) - t0).num_microseconds().unwrap_or(0) as f64 / 1e6;
            spans.push((a, a + r.duration_ms.max(0.0) / 1e3, r.tool == "run_experiment"));
        }
    }
    // Experiments first: other calls count only outside them.
    let union = |mut v: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out: Vec<(f64, f64)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        out
    };
    let total = |v: &[(f64, f64)]| v.iter().map(|(a, b)| b - a).sum::<f64>();
    let exp = union(spans.iter().filter(|x| x.2).map(|x| (x.0, x.1)).collect());
    let all = union(spans.iter().map(|x| (x.0, x.1)).collect());
    s.experiment_seconds = total(&exp);
    s.other_tool_seconds = (total(&all) - s.experiment_seconds).max(0.0);
    s.span_seconds = spans.iter().map(|x| x.1).fold(0.0, f64::max);
    s.idle_seconds = (s.span_seconds - total(&all)).max(0.0);
    s
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return writeln!(f, "0 calls");
        };
        writeln!(
            f,
            "{} calls from {} to {} UTC ({})",
            self.calls,
            first.format("%Y-%m-%d %H:%M:%S"),
            last.format("%Y-%m-%d %H:%M:%S"),
            human(self.span_seconds)
        )?;
        writeln!(f, "\ncalls per tool:")?;
        writeln!(f, "  {:<18} {:>7} {:>7} {:>8} {:>7} {:>10}", "tool", "calls", "ok", "refused", "error", "time")?;
        for (tool, t) in &self.per_tool {
            writeln!(
                f,
                "  {:<18} {:>7} {:>7} {:>8} {:>7} {:>10}",
                clean(tool, 18),
                t.calls,
                t.ok,
                t.refused,
                t.error,
                human(t.seconds)
            )?;
        }
        let pct = |x: f64| if self.span_seconds > 0.0 { 100.0 * x / self.span_seconds } else { 0.0 };
        writeln!(f, "\ntime ({} from the first call to the last):", human(self.span_seconds))?;
        writeln!(
            f,
            "  {:>10} {:>5.1}%  in run_experiment (build, train, embed, score)",
            human(self.experiment_seconds),
            pct(self.experiment_seconds)
        )?;
        writeln!(
            f,
            "  {:>10} {:>5.1}%  in the other tools",
            human(self.other_tool_seconds),
            pct(self.other_tool_seconds)
        )?;
        writeln!(
            f,
            "  {:>10} {:>5.1}%  between calls (the agent thinking, or idle)",
            human(self.idle_seconds),
            pct(self.idle_seconds)
        )?;
        for (title, map) in [("refusals", &self.refusals), ("errors", &self.errors)] {
            let n: u64 = map.values().map(|v| v.0).sum();
            if n == 0 {
                continue;
            }
            writeln!(f, "\n{title} ({n}), by reason:")?;
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(b.0)));
            for ((tool, _), (count, latest)) in rows {
                writeln!(f, "  {count:>6}  {:<18} {latest}", clean(tool, 18))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tool: &str) -> AuditRecord {
        AuditRecord {
            ts: Utc::now(),
            kind: RecordKind::ToolCall,
            tool: tool.into(),
            via: "mcp".into(),
            args: serde_json::json!({"x": 1}),
            outcome: Outcome::Ok,
            reason: None,
            duration_ms: 1.0,
            run_id: None,
            train_hash_before: None,
            train_hash_after: None,
            prev: String::new(),
        }
    }

    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf, PathBuf, Head) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let h = dir.path().join("audit.head");
        let log = AuditLog::open(&p, &h).unwrap();
        let mut head = log.head();
        for i in 0..n {
            head = log.append(rec(&format!("tool{i}"))).unwrap();
        }
        (dir, p, h, head)
    }

    #[test]
    fn intact_log_verifies_and_reopen_keeps_head() {
        let (_d, p, h, head) = log_with(5);
        let v = verify(&p, &[("sidecar".into(), head.clone())]).unwrap();
        assert!(v.ok(), "{:?}", v.first_bad);
        assert_eq!(v.lines, 5);
        assert_eq!(AuditLog::open(&p, &h).unwrap().head(), head);
    }

    #[test]
    fn edited_line_is_pinpointed() {
        let (_d, p, _h, head) = log_with(5);
        let text = std::fs::read_to_string(&p).unwrap();
        let edited = text.replacen("tool2", "toolX", 1);
        std::fs::write(&p, edited).unwrap();
        let v = verify(&p, &[("sidecar".into(), head)]).unwrap();
        let (line, why) = v.first_bad.unwrap();
        assert_eq!(line, 3, "{why}");
        assert!(why.contains("line 3 was edited"), "{why}");
        // An edit that breaks the JSON is that line itself.
        std::fs::write(&p, text.replacen("\"tool2\"", "\"tool2", 1)).unwrap();
        let (line, why) = verify(&p, &[]).unwrap().first_bad.unwrap();
        assert_eq!(line, 3, "{why}");
        assert!(why.contains("not a valid audit record"), "{why}");
    }

    #[test]
    fn removed_middle_line_and_reorder_are_found() {
        let (_d, p, _h, _head) = log_with(5);
        let lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
        let mut dropped = lines.clone();
        dropped.remove(2);
        std::fs::write(&p, dropped.join("\n") + "\n").unwrap();
        let (line, why) = verify(&p, &[]).unwrap().first_bad.unwrap();
        assert_eq!(line, 2, "{why}");
        assert!(why.contains("lines after it were removed"), "{why}");

        // Swapped neighbours: the first one out of place is named.
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        std::fs::write(&p, swapped.join("\n") + "\n").unwrap();
        let (line, why) = verify(&p, &[]).unwrap().first_bad.unwrap();
        assert_eq!(line, 2, "{why}");
        assert!(why.contains("reordered"), "{why}");

        // A line moved back: lines 2-3 now sit between the line it followed and itself.
        let mut moved = lines.clone();
        let l4 = moved.remove(3);
        moved.insert(1, l4);
        std::fs::write(&p, moved.join("\n") + "\n").unwrap();
        let (line, why) = verify(&p, &[]).unwrap().first_bad.unwrap();
        assert_eq!(line, 2, "{why}");
        assert!(why.contains("reordered"), "{why}");

        // A copy of line 4 inserted before it.
        let mut inserted = lines.clone();
        inserted.insert(3, lines[3].clone());
        std::fs::write(&p, inserted.join("\n") + "\n").unwrap();
        let (line, why) = verify(&p, &[]).unwrap().first_bad.unwrap();
        assert_eq!(line, 4, "{why}");
        assert!(why.contains("inserted or moved"), "{why}");

        // Lines removed from the start.
        std::fs::write(&p, lines[2..].join("\n") + "\n").unwrap();
        let (line, why) = verify(&p, &[]).unwrap().first_bad.unwrap();
        assert_eq!(line, 1, "{why}");
        assert!(why.contains("removed from the start"), "{why}");
    }

    #[test]
    fn truncation_and_last_line_edit_are_found_through_recorded_head() {
        let (_d, p, _h, head) = log_with(5);
        let lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
        std::fs::write(&p, lines[..4].join("\n") + "\n").unwrap();
        assert!(verify(&p, &[]).unwrap().ok(), "the chain alone cannot see truncation");
        let v = verify(&p, &[("sidecar".into(), head.clone())]).unwrap();
        let (line, why) = v.first_bad.unwrap();
        assert_eq!(line, 5, "{why}");
        assert!(why.contains("lines 5-5 were removed from the end"), "{why}");
        let mut edited = lines.clone();
        edited[4] = edited[4].replace("tool4", "tool9");
        std::fs::write(&p, edited.join("\n") + "\n").unwrap();
        let (line, why) = verify(&p, &[("sidecar".into(), head)]).unwrap().first_bad.unwrap();
        assert_eq!(line, 5, "{why}");
        assert!(why.contains("different hash for line 5"), "{why}");
    }

    #[test]
    fn a_line_a_crash_cut_is_explained_by_its_repair_but_other_damage_is_not() {
        let (_d, p, h, head5) = log_with(5);
        let full = std::fs::read(&p).unwrap();
        let lines: Vec<&[u8]> = full.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        // A power cut takes the second half of line 5, which audit.head (head5) had recorded.
        let cut = full.len() - 1 - lines[4].len() / 2;
        std::fs::write(&p, &full[..cut]).unwrap();
        let v = verify(&p, &[("sidecar".into(), head5.clone())]).unwrap();
        assert!(v.ok(), "{:?}", v.first_bad);
        assert!(v.notes.iter().any(|n| n.contains("line 5 is torn")), "{:?}", v.notes);
        // The writer opens it: the fragment is set aside and a repair record takes line 5.
        let log = AuditLog::open(&p, &h).unwrap();
        assert_eq!(log.head().lines, 5);
        log.append(rec("after")).unwrap();
        let torn = crate::durable::read_torn(&crate::durable::torn_path(&p));
        assert_eq!(torn.len(), 1);
        assert_eq!(torn[0].text.as_deref().map(str::as_bytes), Some(&lines[4][..lines[4].len() - lines[4].len() / 2]));
        let heads = [("old sidecar".to_string(), head5.clone()), ("sidecar".to_string(), log.head())];
        let v = verify(&p, &heads).unwrap();
        assert!(v.ok(), "{:?}", v.first_bad);
        assert_eq!(v.repairs.len(), 1);
        assert!(v.repairs[0].0 == 5 && v.repairs[0].1.contains("set aside"), "{:?}", v.repairs);
        assert!(v.notes.iter().any(|n| n.contains("old sidecar recorded line 5, which a crash cut")), "{:?}", v.notes);

        // Real damage is still found: a recorded head for another line that does not match...
        let wrong = Head { hash: sha256_hex(b"x"), lines: 4 };
        let (line, why) = verify(&p, &[("ledger".into(), wrong)]).unwrap().first_bad.unwrap();
        assert_eq!(line, 4, "{why}");
        let text = std::fs::read_to_string(&p).unwrap();
        // ...an edited line...
        std::fs::write(&p, text.replacen("tool1", "toolX", 1)).unwrap();
        assert!(!verify(&p, &heads).unwrap().ok());
        // ...a dropped one, before or after the repair...
        for drop in [1, 4, 5] {
            let mut l: Vec<&str> = text.lines().collect();
            l.remove(drop);
            std::fs::write(&p, l.join("\n") + "\n").unwrap();
            assert!(!verify(&p, &heads).unwrap().ok(), "line {} dropped", drop + 1);
        }
        // ...and reordered lines.
        let mut l: Vec<&str> = text.lines().collect();
        l.swap(4, 5);
        std::fs::write(&p, l.join("\n") + "\n").unwrap();
        assert!(!verify(&p, &heads).unwrap().ok());
        // A repair record naming a line other than its own explains nothing.
        let mut l: Vec<String> = text.lines().map(String::from).collect();
        l.truncate(4);
        std::fs::write(&p, l.join("\n") + "\n").unwrap();
        let log = AuditLog::open(&p, &h).unwrap();
        log.append_repair(&Repair::TornTail {
            file: "audit.jsonl".into(),
            torn_file: "audit.jsonl.torn".into(),
            line: 3,
            offset: 0,
            bytes: 1,
            sha256: "00".into(),
        })
        .unwrap();
        let (line, why) =
            verify(&p, &[("ledger".into(), Head { hash: sha256_hex(b"y"), lines: 3 })]).unwrap().first_bad.unwrap();
        assert_eq!(line, 3, "{why}");
    }

    #[test]
    fn a_failed_append_leaves_no_half_line_and_a_deleted_log_comes_back() {
        let (d, p, h, _) = log_with(3);
        let log = AuditLog::open(&p, &h).unwrap();
        std::fs::remove_dir_all(d.path()).unwrap();
        let head = log.append(rec("after the rm")).unwrap();
        assert_eq!(head.lines, 5, "3 lines, the restore's repair record, this one");
        let v = verify(&p, &[("sidecar".into(), read_head_sidecar(&h).unwrap().unwrap())]).unwrap();
        assert!(v.ok() && v.repairs.len() == 1, "{v:?}");
    }

    fn at(tool: &str, end: &str, ms: f64, outcome: Outcome, reason: Option<&str>) -> AuditRecord {
        AuditRecord {
            ts: DateTime::parse_from_rfc3339(end).unwrap().with_timezone(&Utc),
            duration_ms: ms,
            outcome,
            reason: reason.map(String::from),
            ..rec(tool)
        }
    }

    #[test]
    fn summary_splits_experiment_tool_and_idle_time() {
        let recs = vec![
            at("read_metrics", "2026-11-23T08:00:01Z", 1000.0, Outcome::Ok, None),
            at("run_experiment", "2026-11-23T08:05:01Z", 290_000.0, Outcome::Ok, None),
            // During the run: counted once.
            at("read_metrics", "2026-11-23T08:02:00Z", 500.0, Outcome::Ok, None),
            at("edit_train", "2026-11-23T08:03:00Z", 2.0, Outcome::Refused, Some("refused: run r0001 is in flight")),
            at("edit_train", "2026-11-23T08:06:00Z", 2.0, Outcome::Refused, Some("refused: run r0002 is in flight")),
            at("run_experiment", "2026-11-23T08:09:00Z", 60_000.0, Outcome::Error, Some("build failed")),
        ];
        let s = summarize(&recs);
        assert_eq!(s.calls, 6);
        assert_eq!(s.per_tool["edit_train"].refused, 2);
        assert!((s.span_seconds - 540.0).abs() < 1e-6, "{}", s.span_seconds);
        assert!((s.experiment_seconds - 350.0).abs() < 1e-6, "{}", s.experiment_seconds);
        assert!((s.other_tool_seconds - 1.002).abs() < 1e-6, "{}", s.other_tool_seconds);
        assert!((s.idle_seconds - (540.0 - 351.002)).abs() < 1e-6, "{}", s.idle_seconds);
        assert_eq!(s.refusals.len(), 1, "digits are blanked so both refusals group: {:?}", s.refusals);
        let text = s.to_string();
        assert!(text.contains("refusals (2)") && text.contains("errors (1)"), "{text}");
    }

    #[test]
    fn timeline_shows_what_and_strips_escapes() {
        let mut r = rec("edit_train");
        r.args = serde_json::json!({"command": "str_replace", "old_str": "const LR: f64 = 3e-4;\n", "new_str": "a\nb"});
        let line = timeline_line(&r);
        assert!(line.contains("str_replace 1 → 2 lines: const LR: f64 = 3e-4;"), "{line}");
        r.tool = "commit".into();
        r.args = serde_json::json!({"description": "x\u{1b}[2Jy"});
        r.outcome = Outcome::Refused;
        r.reason = Some("refused: \u{1b}]0;title\u{7}nothing to commit".into());
        let line = timeline_line(&r);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.contains("refused") && line.contains("nothing to commit"), "{line}");
    }

    #[test]
    fn protocol_records_carry_their_kind_and_tool_calls_stay_as_they_were() {
        // A tool call serialises without `kind`, byte for byte as before kinds existed.
        let line = serde_json::to_string(&rec("read_metrics")).unwrap();
        assert!(!line.contains("\"kind\""), "{line}");
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back.kind, RecordKind::ToolCall);
        let mut r = rec(PROTOCOL_TOOL);
        r.kind = RecordKind::Protocol;
        r.outcome = Outcome::Refused;
        r.reason = Some("-32700 Parse error: expected value at line 1 column 1".into());
        r.args =
            serde_json::json!({"code": -32700, "method": null, "id": null, "bytes": 9, "excerpt": "not\u{1b}json"});
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"kind\":\"protocol\""), "{line}");
        assert_eq!(serde_json::from_str::<AuditRecord>(&line).unwrap().kind, RecordKind::Protocol);
        let shown = timeline_line(&r);
        assert!(shown.contains("protocol") && shown.contains("(no method), 9 bytes: not json"), "{shown}");
        assert!(shown.contains("-32700 Parse error"), "{shown}");
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        let s = summarize(&[r]);
        assert_eq!(s.per_tool[PROTOCOL_TOOL].refused, 1);
    }

    #[test]
    fn times_parse_in_every_documented_form() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().with_timezone(&Utc);
        let t = |s: &str| parse_when(s, now).unwrap().to_rfc3339();
        assert_eq!(t("2026-11-23T08:00:00Z"), "2026-11-23T08:00:00+00:00");
        assert_eq!(t("2026-11-23T09:00:00+01:00"), "2026-11-23T08:00:00+00:00");
        assert_eq!(t("2026-11-23 08:00"), "2026-11-23T08:00:00+00:00");
        assert_eq!(t("2026-11-23"), "2026-11-23T00:00:00+00:00");
        assert_eq!(t("90m"), "2026-11-23T10:30:00+00:00");
        assert_eq!(t("2h"), "2026-11-23T10:00:00+00:00");
        assert_eq!(t("1d"), "2026-11-22T12:00:00+00:00");
        assert_eq!(t("1h30m"), "2026-11-23T10:30:00+00:00");
        assert!(parse_when("yesterday", now).is_err());
    }
}
