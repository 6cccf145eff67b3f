//! Every refusal of DESIGN.md's tool table that does not need a run in flight (those are in
//! `experiment`): each comes back as a tool result with isError, changes nothing, and is audited.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn edit_train_refusals() {
    let ws = Ws::new();
    let c = ws.client().await;
    let before = std::fs::read(ws.train_rs()).unwrap();

    for path in ["trainer/src/lib.rs", "../etc/passwd", "/etc/passwd", "program.md", "trainer/src/../src/lib.rs"] {
        let r =
            c.call("edit_train", json!({"command": "str_replace", "path": path, "old_str": "a", "new_str": "b"})).await;
        assert!(is_error(&r) && text(&r).contains("only trainer/src/train.rs"), "{path}: {}", text(&r));
    }
    let r = c
        .call(
            "edit_train",
            json!({"command": "str_replace", "old_str": "this text is not in train.rs", "new_str": "x"}),
        )
        .await;
    assert!(is_error(&r) && text(&r).contains("not found"), "{}", text(&r));
    let r = c.call("edit_train", json!({"command": "str_replace", "old_str": "let", "new_str": "let"})).await;
    assert!(is_error(&r) && text(&r).contains("matches"), "{}", text(&r));
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 1_000_000, "new_str": "x"})).await;
    assert!(is_error(&r) && text(&r).contains("past the end"), "{}", text(&r));
    let r = c
        .call("edit_train", json!({"command": "str_replace", "old_str": "fn main", "new_str": "fn main\u{1b}[2J"}))
        .await;
    assert!(is_error(&r) && text(&r).contains("control character"), "{}", text(&r));
    let huge = "x".repeat(300 * 1024);
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": huge})).await;
    assert!(is_error(&r) && text(&r).contains("cap"), "{}", text(&r));
    assert_eq!(std::fs::read(ws.train_rs()).unwrap(), before, "refused edits change nothing");

    // A file that is not UTF-8, too big, or a symlink is refused; revert repairs each.
    let mut bad = before.clone();
    bad.extend_from_slice(&[0xff, 0xfe, b'\n']);
    std::fs::write(ws.train_rs(), &bad).unwrap();
    let r = c.call("edit_train", json!({"command": "view"})).await;
    assert!(is_error(&r) && text(&r).contains("UTF-8"), "{}", text(&r));
    std::fs::write(ws.train_rs(), vec![b'/'; 400 * 1024]).unwrap();
    let r = c.call("edit_train", json!({"command": "view"})).await;
    assert!(is_error(&r) && text(&r).contains("cap"), "{}", text(&r));
    std::fs::remove_file(ws.train_rs()).unwrap();
    let secret = ws.root.join("secret.txt");
    std::fs::write(&secret, "SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, ws.train_rs()).unwrap();
    let r = c.call("edit_train", json!({"command": "view"})).await;
    assert!(is_error(&r) && !text(&r).contains("SECRET"), "{}", text(&r));
    let r = c.call("revert", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert_eq!(std::fs::read(ws.train_rs()).unwrap(), before);
    assert!(!std::fs::symlink_metadata(ws.train_rs()).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "SECRET", "the symlink target was not written");

    let audit = audit_lines(&ws);
    assert_eq!(audit.iter().filter(|r| r["outcome"] == "refused").count(), 13);
    assert!(
        audit.iter().filter(|r| r["outcome"] == "refused").all(|r| r["reason"].as_str().is_some_and(|s| !s.is_empty()))
    );
}

#[tokio::test]
async fn commit_refusals_and_scratchpad_limits() {
    let ws = Ws::new();
    let c = ws.client().await;
    // Nothing changed since the kept commit.
    let r = c.call("commit", json!({"description": "nothing"})).await;
    assert!(is_error(&r) && text(&r).contains("identical"), "{}", text(&r));
    // A change that was never evaluated.
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// unevaluated"})).await;
    assert!(!is_error(&r));
    let r = c.call("commit", json!({"description": "sneak it in"})).await;
    assert!(is_error(&r), "{}", text(&r));
    let r = c.call("commit", json!({"description": "two\nlines"})).await;
    assert!(is_error(&r) && text(&r).contains("control character"), "{}", text(&r));
    let repo = git2::Repository::open(&ws.root).unwrap();
    assert_eq!(
        repo.head().unwrap().peel_to_commit().unwrap().message().unwrap(),
        "experiment workspace (train.rs: baseline configuration)",
        "no commit was made"
    );

    let r = c.call("append_scratchpad", json!({"entry": "x".repeat(9 * 1024)})).await;
    assert!(is_error(&r) && text(&r).contains("cap"), "{}", text(&r));
    let r = c.call("append_scratchpad", json!({"entry": "hi \u{1b}[31mred"})).await;
    assert!(is_error(&r) && text(&r).contains("control character"), "{}", text(&r));
    let r = c.call("append_scratchpad", json!({"entry": "  "})).await;
    assert!(is_error(&r));
    let sp = std::fs::read_to_string(ws.root.join("scratchpad.md")).unwrap();
    assert!(!sp.contains("red") && !sp.contains("xxxx"), "refused entries were not written");
    let r = c.call("run_experiment", json!({"description": "bad\u{7}bell"})).await;
    assert!(is_error(&r) && text(&r).contains("control character"), "{}", text(&r));

    // Malformed arguments are protocol errors, not crashes.
    let params = rmcp::model::CallToolRequestParams::new("edit_train")
        .with_arguments(json!({"command": "explode"}).as_object().cloned().unwrap());
    match c.service.call_tool(params).await {
        Err(_) => {}
        Ok(r) => assert!(is_error(&r), "invalid arguments must not succeed: {}", text(&r)),
    }
    let ok = c.call("read_metrics", json!({"last": 3})).await;
    assert!(!is_error(&ok), "the server is still healthy");
}
