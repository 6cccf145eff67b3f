//! One "best" everywhere: a run that does not beat the best kept result is committed only with a
//! reason, is marked so, and does not become the best; the commit reply, the commit message,
//! read_metrics, `status`, the report and the supervisor's resume prompt all name the same best.
//!
//! Cheap: the two runs are ledger rows written through the crate's ledger API before the server
//! starts, as a server would have written them (a baseline at 20.00, the raised learning rate at
//! 25.00); the commits go through the real server and git.

use autoresearch_mcp::fsutil::sha256_hex;
use autoresearch_mcp::ledger::Ledger;
use autoresearch_mcp::workspace::WorkspaceState;
use serde_json::json;

use crate::common::*;

fn git(ws: &Ws, args: &[&str]) -> String {
    let o = std::process::Command::new("git").arg("-C").arg(&ws.root).args(args).output().unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worse_run_is_kept_only_with_a_reason_and_everything_names_the_same_best() {
    let ws = Ws::new();
    let state: WorkspaceState = serde_json::from_slice(&std::fs::read(ws.state("workspace.json")).unwrap()).unwrap();
    let edit = ws.raise_lr_edit();
    let raised = std::fs::read_to_string(ws.train_rs()).unwrap().replacen(
        edit["old_str"].as_str().unwrap(),
        edit["new_str"].as_str().unwrap(),
        1,
    );
    {
        let mut ledger = Ledger::open(&ws.state("runs.jsonl")).unwrap();
        seed_ok_run(&mut ledger, "r0001", &state.baseline_train_hash, "baseline", 20.0);
        seed_ok_run(&mut ledger, "r0002", &sha256_hex(raised.as_bytes()), "LR 3e-4 -> 1e-3", 25.0);
    }
    let c = ws.client().await;
    let e = c.call("edit_train", edit).await;
    assert!(!is_error(&e), "{}", text(&e));
    let tip = || git(&ws, &["rev-parse", &format!("refs/heads/{}", state.branch)]);
    let before = tip();

    // Without a reason: refused, naming the best it does not beat; nothing moves.
    let r = c.call("commit", json!({"description": "LR 1e-3"})).await;
    assert!(is_error(&r), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("does not beat the best kept result r0001") && t.contains("reason"), "{t}");
    assert_eq!(tip(), before, "the branch did not move");

    // With one: kept, marked, and the best stays the baseline.
    let reason = "same score band, half the warmup code";
    let r = c.call("commit", json!({"description": "LR 1e-3", "reason": reason})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("kept run r0002") && t.contains("(+5.00 vs r0001 20.00)"), "{t}");
    assert!(t.contains(&format!("kept with reason ({reason})")) && t.contains("best kept: r0001 (20.00)"), "{t}");
    let msg = git(&ws, &["log", "-1", "--format=%B", &state.branch]);
    assert!(msg.starts_with("exp r0002: mean_rank 25.00 (+5.00 vs r0001 20.00) | LR 1e-3"), "{msg}");
    assert!(msg.contains(&format!("\nKept-Reason: {reason}\n")) && msg.contains("\nBest-Kept: r0001 20.00\n"), "{msg}");

    let v = c.call("read_metrics", json!({})).await;
    let view = v.structured_content.clone().unwrap();
    assert_eq!(view["best_kept"]["id"], "r0001", "{view}");
    assert_eq!(view["runs"][1]["kept_reason"], reason, "{view}");
    assert_eq!(
        (view["runs"][1]["delta_vs_best_kept"].as_f64(), &view["runs"][1]["compared_with"]),
        (Some(5.0), &json!("r0001"))
    );
    assert!(
        text(&v).contains("best kept: r0001") && text(&v).contains(&format!("kept with reason: {reason}")),
        "{}",
        text(&v)
    );

    // The audit log holds both calls, the refusal with its reason.
    let commits: Vec<_> = audit_lines(&ws).into_iter().filter(|l| l["tool"] == "commit").collect();
    assert_eq!(commits.len(), 2);
    assert_eq!(commits[0]["outcome"], "refused");
    assert!(commits[0]["reason"].as_str().unwrap().contains("does not beat"), "{}", commits[0]);
    assert_eq!((commits[1]["outcome"].as_str(), commits[1]["args"]["reason"].as_str()), (Some("ok"), Some(reason)));
    drop(c);

    // status, the report and the supervisor's resume prompt.
    let out = ws.cli(&["status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    let best = status.lines().find(|l| l.starts_with("best ")).unwrap_or_default();
    assert!(best.contains("r0001") && best.contains("20.00"), "{status}");
    assert!(status.lines().any(|l| l.contains("r0002") && l.contains("kept with reason")), "{status}");

    let out = ws.cli(&["report"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("best mean rank 20.00 (r0001)"), "{report}");
    assert!(report.contains("| 2 | r0002 | kept with reason | ok | 25.00 | +5.00 |"), "{report}");
    let html = std::fs::read_to_string(ws.state("report/report.html")).unwrap();
    assert!(html.contains("best mean rank 20.00 (r0001)"), "the page's headline");

    let runs = Ledger::open(&ws.state("runs.jsonl")).unwrap().runs();
    assert_eq!(runs[1].kept_reason.as_deref(), Some(reason), "the ledger keeps the reason");
    let resume = autoresearch_mcp::supervisor::best_so_far(&runs, &state);
    assert!(resume.starts_with("- best so far: r0001 ") && resume.contains("mean rank 20.00"), "{resume}");
}
