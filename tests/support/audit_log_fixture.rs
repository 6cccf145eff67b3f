//! The generated audit log shared by `tests/it/audit_log.rs` (correctness on 100k lines) and
//! `benches/audit_scale.rs` (timing on the same log). Included by both with `#[path]`.

use autoresearch_mcp::audit::Outcome;
use serde_json::json;

/// A chained log of `n` calls written directly (no server), its head sidecar; returns its lines and
/// records. Of every 50 calls: one 5-minute run_experiment, two failed 20-second ones, one refused
/// edit, one commit, the rest read_metrics; 30 s between calls.
pub fn generate_log(dir: &std::path::Path, n: usize) -> (Vec<String>, Vec<autoresearch_mcp::audit::AuditRecord>) {
    use autoresearch_mcp::audit::{AuditRecord, GENESIS, Head};
    use autoresearch_mcp::fsutil::sha256_hex;
    let state = dir.join(".autoresearch");
    std::fs::create_dir_all(&state).unwrap();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-22T20:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let mut prev = GENESIS.to_string();
    let mut lines = Vec::with_capacity(n);
    let mut recs = Vec::with_capacity(n);
    let mut t = t0;
    for i in 0..n {
        let (tool, args, outcome, reason, ms) = match i % 50 {
            0 => ("run_experiment", json!({"description": format!("idea {i}")}), Outcome::Ok, None, 300_000.0),
            20 | 40 => (
                "run_experiment",
                json!({"description": format!("idea {i}")}),
                Outcome::Error,
                Some("build failed"),
                20_000.0,
            ),
            7 => (
                "edit_train",
                json!({"command": "str_replace", "old_str": "a", "new_str": "b", "path": "/etc/passwd"}),
                Outcome::Refused,
                Some("refused: only trainer/src/train.rs can be edited"),
                0.3,
            ),
            9 => ("commit", json!({"description": format!("keep {i}")}), Outcome::Ok, None, 15.0),
            _ => ("read_metrics", json!({"last": 5}), Outcome::Ok, None, 2.0),
        };
        t += chrono::Duration::microseconds((ms * 1e3) as i64);
        let rec = AuditRecord {
            ts: t,
            kind: Default::default(),
            tool: tool.into(),
            via: "mcp".into(),
            args,
            outcome,
            reason: reason.map(String::from),
            duration_ms: ms,
            run_id: (tool == "run_experiment").then(|| format!("r{:04}", i / 20 + 1)),
            train_hash_before: Some("ab".repeat(32)),
            train_hash_after: Some("ab".repeat(32)),
            prev: prev.clone(),
        };
        let line = serde_json::to_string(&rec).unwrap();
        prev = sha256_hex(line.as_bytes());
        lines.push(line);
        recs.push(rec);
        t += chrono::Duration::seconds(30);
    }
    std::fs::write(state.join("audit.jsonl"), lines.join("\n") + "\n").unwrap();
    let head = Head { hash: prev, lines: n as u64 };
    std::fs::write(state.join("audit.head"), serde_json::to_string(&head).unwrap()).unwrap();
    (lines, recs)
}
