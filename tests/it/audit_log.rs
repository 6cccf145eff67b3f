//! `audit verify` passes on an intact log and fails after a line is edited or removed.

use serde_json::json;

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
    assert_eq!(list.lines().count(), 1, "{list}");
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
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 3"), "{}", String::from_utf8_lossy(&out.stdout));

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
