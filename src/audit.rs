//! The audit log, `.autoresearch/audit.jsonl`: one line per tool call, accepted or refused, each
//! carrying the SHA-256 of the line before it. A sidecar (`audit.head`) and every ledger line and
//! commit record the head hash and line count, so an edited, dropped, reordered or truncated line
//! is found by [`verify`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::{open_append, sha256_hex, write_atomic};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub ts: DateTime<Utc>,
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
    path: PathBuf,
    head_path: PathBuf,
    head: Mutex<Head>,
}

impl AuditLog {
    pub fn open(path: &Path, head_path: &Path) -> Result<Self> {
        let head = match std::fs::read(path) {
            Ok(bytes) => head_of(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Head::genesis(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(Self { path: path.to_path_buf(), head_path: head_path.to_path_buf(), head: Mutex::new(head) })
    }

    pub fn head(&self) -> Head {
        self.head.lock().unwrap().clone()
    }

    /// Appends one record (its `prev` is filled in here), fsyncs, and updates the head sidecar.
    pub fn append(&self, mut rec: AuditRecord) -> Result<Head> {
        let mut head = self.head.lock().unwrap();
        rec.prev = head.hash.clone();
        let line = serde_json::to_string(&rec)?;
        let mut f = open_append(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_data().context("fsync audit log")?;
        *head = Head { hash: sha256_hex(line.as_bytes()), lines: head.lines + 1 };
        write_atomic(&self.head_path, serde_json::to_string(&*head)?.as_bytes())?;
        Ok(head.clone())
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
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Checks the chain line by line, then checks every recorded head (sidecar, ledger lines, commit
/// trailers) against the log: a recorded head whose line is missing or different means truncation
/// or an edit after the fact.
pub fn verify(path: &Path, recorded_heads: &[(String, Head)]) -> Result<Verification> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut hashes: Vec<String> = Vec::new();
    let mut prev = GENESIS.to_string();
    let mut first_bad = None;
    for (i, line) in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let n = i as u64 + 1;
        match serde_json::from_slice::<AuditRecord>(line) {
            Err(e) => {
                first_bad.get_or_insert((n, format!("not a valid audit record: {e}")));
            }
            Ok(rec) if rec.prev != prev => {
                first_bad.get_or_insert((
                    n,
                    "previous-line hash does not match: a line before it was edited, removed or reordered".to_string(),
                ));
            }
            Ok(_) => {}
        }
        prev = sha256_hex(line);
        hashes.push(prev.clone());
    }
    let head = Head { hash: prev, lines: hashes.len() as u64 };
    if first_bad.is_none() {
        for (source, rec) in recorded_heads {
            let found = match rec.lines {
                0 => Some(GENESIS.to_string()),
                n => hashes.get(n as usize - 1).cloned(),
            };
            if found.as_deref() != Some(rec.hash.as_str()) {
                let why = if rec.lines > head.lines {
                    format!(
                        "{source} recorded {} lines but the log has {}: lines were removed from the end",
                        rec.lines, head.lines
                    )
                } else {
                    format!("{source} recorded a different hash for this line: it was edited")
                };
                first_bad = Some((rec.lines.min(head.lines.max(1)), why));
                break;
            }
        }
    }
    Ok(Verification { lines: head.lines, head, first_bad })
}

/// Reads every record (for listing and summaries); skips nothing, fails on a malformed line.
pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("audit line {} is malformed", i + 1)))
        .collect()
}

/// Reads the head sidecar, if any.
pub fn read_head_sidecar(path: &Path) -> Result<Option<Head>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).context("parse audit.head")?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("read audit.head"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tool: &str) -> AuditRecord {
        AuditRecord {
            ts: Utc::now(),
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
        assert_eq!(v.first_bad.unwrap().0, 4);
    }

    #[test]
    fn removed_middle_line_and_reorder_are_found() {
        let (_d, p, _h, _head) = log_with(5);
        let lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
        let mut dropped = lines.clone();
        dropped.remove(2);
        std::fs::write(&p, dropped.join("\n") + "\n").unwrap();
        assert_eq!(verify(&p, &[]).unwrap().first_bad.unwrap().0, 3);
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        std::fs::write(&p, swapped.join("\n") + "\n").unwrap();
        assert!(!verify(&p, &[]).unwrap().ok());
    }

    #[test]
    fn truncation_and_last_line_edit_are_found_through_recorded_head() {
        let (_d, p, _h, head) = log_with(5);
        let lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
        std::fs::write(&p, lines[..4].join("\n") + "\n").unwrap();
        assert!(verify(&p, &[]).unwrap().ok(), "the chain alone cannot see truncation");
        let v = verify(&p, &[("sidecar".into(), head.clone())]).unwrap();
        assert!(v.first_bad.unwrap().1.contains("removed from the end"));
        let mut edited = lines.clone();
        edited[4] = edited[4].replace("tool4", "tool9");
        std::fs::write(&p, edited.join("\n") + "\n").unwrap();
        assert!(!verify(&p, &[("sidecar".into(), head)]).unwrap().ok());
    }
}
