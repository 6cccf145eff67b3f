//! The tool surface: exactly six tools with schemas, program.md as instructions, cheap tools work.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn lists_exactly_the_six_tools_with_schemas() {
    let ws = Ws::new();
    let c = ws.client().await;
    let tools = c.service.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["append_scratchpad", "commit", "edit_train", "read_metrics", "revert", "run_experiment"]);
    for t in &tools {
        assert!(t.description.as_deref().is_some_and(|d| d.len() > 40), "{} needs a description", t.name);
        assert_eq!(t.input_schema.get("type").and_then(|v| v.as_str()), Some("object"), "{}", t.name);
    }
    let edit = tools.iter().find(|t| t.name == "edit_train").unwrap();
    let props = edit.input_schema.get("properties").unwrap().as_object().unwrap();
    for p in ["command", "path", "view_range", "old_str", "new_str", "insert_line"] {
        assert!(props.contains_key(p), "edit_train schema lacks {p}");
        let described = serde_json::to_string(&props[p]).unwrap();
        assert!(described.contains("description"), "edit_train.{p} has no description");
    }
    let metrics = tools.iter().find(|t| t.name == "read_metrics").unwrap();
    assert!(metrics.output_schema.is_some(), "read_metrics declares an output schema");
    let info = c.service.peer_info().unwrap();
    assert!(info.instructions.as_deref().unwrap_or("").contains("Never stop"), "instructions are program.md");
}

#[tokio::test]
async fn view_edit_diff_scratchpad_and_read_metrics() {
    let ws = Ws::new();
    let c = ws.client().await;
    let view = c.call("edit_train", json!({"command": "view", "view_range": [1, 5]})).await;
    assert!(!is_error(&view));
    assert!(text(&view).starts_with("    1\t"), "{}", text(&view));
    assert_eq!(text(&view).lines().count(), 5);

    let original = std::fs::read_to_string(ws.train_rs()).unwrap();
    let line = original
        .lines()
        .find(|l| l.contains("const LEARNING_RATE"))
        .expect("train.rs has a const LEARNING_RATE")
        .to_string();
    let edited = c
        .call("edit_train", json!({"command": "str_replace", "old_str": line, "new_str": format!("{line} // tuned")}))
        .await;
    assert!(!is_error(&edited), "{}", text(&edited));
    assert!(text(&edited).contains("+") && text(&edited).contains("// tuned"), "diff is shown: {}", text(&edited));
    assert!(std::fs::read_to_string(ws.train_rs()).unwrap().contains("// tuned"));

    let ins = c
        .call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// hypothesis: lower LR"}))
        .await;
    assert!(!is_error(&ins));
    assert!(std::fs::read_to_string(ws.train_rs()).unwrap().starts_with("// hypothesis: lower LR\n"));

    let pad = c.call("append_scratchpad", json!({"entry": "tried LR 1e-4\nnext: warmup"})).await;
    assert!(!is_error(&pad));
    let sp = std::fs::read_to_string(ws.root.join("scratchpad.md")).unwrap();
    assert!(sp.contains("tried LR 1e-4\nnext: warmup") && sp.contains(" UTC\n"), "timestamped: {sp}");

    let m = c.call("read_metrics", json!({})).await;
    assert!(!is_error(&m));
    let s = m.structured_content.expect("structured content");
    assert_eq!(s["total_runs"], 0);
    assert!(s["runs"].as_array().unwrap().is_empty());

    // revert restores the kept file byte for byte
    let r = c.call("revert", json!({"reason": "bad idea"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(std::fs::read(ws.train_rs()).unwrap(), original.as_bytes());
    let revert_event = std::fs::read_to_string(ws.state("runs.jsonl")).unwrap();
    assert!(revert_event.contains("\"event\":\"reverted\""));
    let diffs: Vec<_> = std::fs::read_dir(ws.state("reverts")).unwrap().collect();
    assert_eq!(diffs.len(), 1, "the discarded diff is kept");

    // every call wrote one audit record
    let audit = audit_lines(&ws);
    let tools: Vec<&str> = audit.iter().map(|r| r["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["edit_train", "edit_train", "edit_train", "append_scratchpad", "read_metrics", "revert"]);
    assert!(audit.iter().all(|r| r["outcome"] == "ok"));
    assert_ne!(audit[1]["train_hash_before"], audit[1]["train_hash_after"], "the edit changed the hash");
}

#[tokio::test]
async fn second_server_on_the_same_workspace_is_refused() {
    let ws = Ws::new();
    let _c = ws.client().await;
    let out = ws.cli(&["serve"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn doctor_runs_a_real_probe_job_in_the_sandbox() {
    let ws = Ws::new();
    let out = ws.cli(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("[ok  ] local sandbox: probe job     uid=65534"), "{stdout}");
    assert!(stdout.contains("host-loopback=unreachable"), "{stdout}");
}
