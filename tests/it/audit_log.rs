//! `audit verify` passes on an intact log and fails after a line is edited or removed.

use autoresearch_mcp::audit::Outcome;
use serde_json::json;

use crate::audit_log_fixture::generate_log;
use crate::common::*;

#[tokio::test]
async fn verify_detects_edits_and_removals() {
    let ws = Ws::new();
    {
        let c = ws.client().await;
        for i in 0..4 {
            c.call("append_scratchpad", json!({"entry": format!("note {i}")})).await;
        }
        c.call("edit_train", json!({"command": "view", "view_range": [1, 2]})).await;
        c.call("edit_train", json!({"command": "view", "path": "/etc/shadow"})).await;
        c.call("revert", json!({})).await;
    }
    let ok = ws.cli(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("7 lines"));
    let list = String::from_utf8_lossy(&ws.cli(&["audit", "--outcome", "refused"]).stdout).to_string();
    assert!(list.starts_with("time (UTC)"), "a header names the columns: {list}");
    assert_eq!(list.lines().count(), 2, "the header and one refusal: {list}");
    assert!(list.contains("edit_train") && list.contains("only trainer/src/train.rs"));
    let summary = String::from_utf8_lossy(&ws.cli(&["audit", "summary"]).stdout).to_string();
    assert!(summary.contains("7 calls") && summary.contains("append_scratchpad"), "{summary}");

    let path = ws.state("audit.jsonl");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    // Edit one line in the middle.
    let edited = original.replacen("note 1", "note X", 1);
    std::fs::write(&path, &edited).unwrap();
    let out = ws.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("at line 2: line 2 was edited"), "{said}");

    // Remove one line in the middle.
    let mut dropped = lines.clone();
    dropped.remove(4);
    std::fs::write(&path, dropped.join("\n") + "\n").unwrap();
    assert!(!ws.cli(&["audit", "verify"]).status.success());

    // Remove the last line (truncation): caught through the recorded head.
    std::fs::write(&path, lines[..6].join("\n") + "\n").unwrap();
    let out = ws.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed from the end"));

    std::fs::write(&path, &original).unwrap();
    assert!(ws.cli(&["audit", "verify"]).status.success());
}

/// list, summary and verify on a 100k-line log: correct answers, and the time each took (printed;
/// benches/audit_scale.rs is where the speed figures come from).
#[test]
fn a_100k_line_log_lists_summarises_and_verifies() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let (lines, recs) = generate_log(dir.path(), N);
    let audit = |args: &[&str]| {
        let t = std::time::Instant::now();
        let out = std::process::Command::new(bin()).arg("-C").arg(dir.path()).arg("audit").args(args).output().unwrap();
        eprintln!("audit {}: {:.2} s on {N} lines", args.join(" "), t.elapsed().as_secs_f64());
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };

    let (ok, text) = audit(&["verify"]);
    assert!(ok && text.contains(&format!("audit log OK: {N} lines")), "{text}");

    let (ok, text) = audit(&["list"]);
    assert!(ok);
    assert_eq!(text.lines().count(), N + 1, "a header and one line per call");
    assert!(text.contains("\"idea 0\"") && text.contains("(path /etc/passwd)"), "{}", &text[..2000]);

    let (ok, text) = audit(&["list", "--tool", "commit"]);
    assert!(ok);
    assert_eq!(text.lines().count(), N / 50 + 1);
    let since = recs[N / 2].ts;
    let (_, text) = audit(&["list", "--outcome", "refused", "--since", &since.to_rfc3339()]);
    let expected = recs.iter().filter(|r| r.ts >= since && r.outcome == Outcome::Refused).count();
    assert_eq!(text.lines().count(), expected + 1, "refusals since the middle of the log");

    let (ok, text) = audit(&["summary"]);
    assert!(ok && text.starts_with(&format!("{N} calls from 2026-11-22 20:00:00 ")), "{text}");
    let row = text.lines().find(|l| l.trim_start().starts_with("run_experiment")).unwrap().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..5], ["6000", "2000", "0", "4000"], "{row}");
    assert!(text.contains(&format!("refusals ({}), by reason:", N / 50)), "{text}");
    // 2000 × 300 s + 4000 × 20 s in experiments; 30 s between calls.
    assert!(text.contains("188h53m  ") && text.contains("in run_experiment"), "{text}");
    assert!(text.contains("833h19m  ") && text.contains("between calls"), "{text}");

    // One edited line deep inside is pinpointed.
    let path = dir.path().join(".autoresearch/audit.jsonl");
    let mut edited = lines.clone();
    edited[73_455] = edited[73_455].replace("\"last\":5", "\"last\":6");
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let (ok, text) = audit(&["verify"]);
    assert!(!ok && text.contains("at line 73456: line 73456 was edited"), "{text}");

    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(49_999, 50_000);
    std::fs::write(&path, swapped.join("\n") + "\n").unwrap();
    let (ok, text) = audit(&["verify"]);
    assert!(!ok && text.contains("at line 50000: ") && text.contains("reordered"), "{text}");

    // The last ten lines cut off: only the head sidecar can tell.
    std::fs::write(&path, lines[..N - 10].join("\n") + "\n").unwrap();
    let (ok, text) = audit(&["verify"]);
    assert!(!ok && text.contains("at line 99991: ") && text.contains("removed from the end"), "{text}");
}
