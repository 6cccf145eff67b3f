//! One kept state and one best everywhere: a run that does not beat the kept state is committed only
//! with a reason, is marked so, and becomes the kept state (the head of the branch, what deltas are
//! against) without becoming the best; the commit reply, the commit message, read_metrics, `status`,
//! the report and the supervisor's resume prompt agree. And seeds pair: a lucky single seed does not
//! outrank a three-seed kept configuration without its label, and a configuration better on every
//! shared seed is never called a regression.
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

    // Without a reason: refused, naming the kept state it does not beat; nothing moves.
    let r = c.call("commit", json!({"description": "LR 1e-3"})).await;
    assert!(is_error(&r), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("does not beat the kept state r0001") && t.contains("reason"), "{t}");
    assert!(t.contains("vs baseline r0001 on seeds 42: +5.00 (mean +5.00, all worse)"), "{t}");
    assert_eq!(tip(), before, "the branch did not move");

    // With one: kept, marked; it is the kept state now, and the best stays the baseline.
    let reason = "same score band, half the warmup code";
    let r = c.call("commit", json!({"description": "LR 1e-3", "reason": reason})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("kept run r0002") && t.contains("(+5.00 vs baseline r0001 on 1 shared seed, all worse"), "{t}");
    assert!(t.contains(&format!("kept with reason ({reason})")) && t.contains("it is now the kept state"), "{t}");
    assert!(t.contains("best kept: r0001 (20.00, 1 seed)"), "{t}");
    let msg = git(&ws, &["log", "-1", "--format=%B", &state.branch]);
    assert!(
        msg.starts_with(
            "exp r0002: mean_rank 25.00 (+5.00 vs baseline r0001 on 1 shared seed, all worse, 1 seed: screening) | LR 1e-3"
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("\nKept-Reason: {reason}\n")) && msg.contains("\nBest-Kept: r0001 20.00 (1 seed)\n"),
        "{msg}"
    );
    assert!(msg.contains("\nVs-Kept: vs baseline r0001 on seeds 42: +5.00 (mean +5.00, all worse)\n"), "{msg}");

    let v = c.call("read_metrics", json!({"full": true})).await;
    let view = v.structured_content.clone().unwrap();
    assert_eq!((&view["kept"]["id"], &view["best_kept"]["id"]), (&json!("r0002"), &json!("r0001")), "{view}");
    assert_eq!(view["rows"][1]["kept_reason"], reason, "{view}");
    assert!(view["runs"][1]["delta_vs_kept"].is_null(), "the kept run is not compared with itself: {view}");
    assert_eq!(
        (view["rows"][0]["delta_vs_kept"].as_f64(), &view["rows"][0]["compared_with"]),
        (Some(-5.0), &json!("r0002")),
        "the baseline against the kept state"
    );
    assert!(
        text(&v).contains("kept (deltas are against it): r0002")
            && text(&v).contains(&format!("kept with reason: {reason}")),
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
    assert!(best.contains("r0001") && best.contains("20.00") && best.contains("(1 seed)"), "{status}");
    assert!(
        status.lines().any(|l| l.starts_with("kept ") && l.contains("r0002") && l.contains("compared with it")),
        "{status}"
    );
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
    assert!(
        resume.contains("\n- kept state (the head of the branch; results are compared with it): r0002 "),
        "{resume}"
    );
}

/// The night on a synthetic ledger: the baseline and a kept configuration over seeds 42-44, a
/// lucky single seed, the kept configuration's seeds, a better configuration on all three.
#[tokio::test(flavor = "multi_thread")]
async fn seeds_pair_a_lucky_single_seed_is_labelled_and_a_better_configuration_is_no_regression() {
    let ws = Ws::new();
    let state: WorkspaceState = serde_json::from_slice(&std::fs::read(ws.state("workspace.json")).unwrap()).unwrap();
    let base = std::fs::read_to_string(ws.train_rs()).unwrap();
    let version = |n: u32| format!("{base}// configuration {n}\n");
    let hash = |n: u32| sha256_hex(version(n).as_bytes());
    {
        let mut ledger = Ledger::open(&ws.state("runs.jsonl")).unwrap();
        let on = |r: [f64; 3]| [(42, r[0]), (43, r[1]), (44, r[2])];
        seed_ok_run_on(&mut ledger, "r0001", &state.baseline_train_hash, "baseline", &on([140.6, 142.1, 139.0]));
        seed_ok_run_on(&mut ledger, "r0002", &hash(2), "no text dropout", &on([42.3, 78.6, 58.7]));
        seed_ok_run_on(&mut ledger, "r0003", &hash(3), "lucky", &[(42, 40.0)]);
        seed_ok_run_on(&mut ledger, "r0004", &hash(4), "better everywhere", &on([31.3, 59.0, 45.6]));
    }
    let c = ws.client().await;
    // Keep configuration 2 first (the agent did, with its three seeds).
    std::fs::write(ws.train_rs(), version(2)).unwrap();
    let r = c.call("commit", json!({"description": "no text dropout"})).await;
    assert!(!is_error(&r), "{}", text(&r));

    // The lucky seed: better on seed 42, labelled a screening result, within the kept spread.
    let v = c.call("read_metrics", json!({"full": true})).await;
    let view = v.structured_content.clone().unwrap();
    assert_eq!(view["kept"]["id"], "r0002", "{view}");
    assert_eq!(view["kept"]["per_seed"], json!({"42": 42.3, "43": 78.6, "44": 58.7}), "{view}");
    let lucky = &view["rows"][2];
    assert_eq!(lucky["id"], "r0003");
    let flags = lucky["flags"].as_array().unwrap();
    assert!(flags.contains(&json!("single_seed")) && flags.contains(&json!("within_noise")), "{lucky}");
    assert!(!flags.contains(&json!("clear_improvement")), "{lucky}");
    assert!(lucky["vs_kept"].as_str().unwrap().contains("1 seed against 3: a screening result"), "{lucky}");
    // The better configuration: paired on three seeds, all better, a clear improvement.
    let better = &view["rows"][3];
    assert_eq!(
        better["vs_kept"].as_str().unwrap(),
        "vs kept r0002 on seeds 42,43,44: -11.00, -19.60, -13.10 (mean -14.57, 95% [-25.71, -3.43], all better); \
         clear improvement against the paired differences' 95% interval (±11.14)"
    );
    let t = text(&v);
    assert!(t.contains("r0004 ok 45.30 [42: 31.30, 43: 59.00, 44: 45.60] -14.57 vs kept clear_improvement | "), "{t}");

    // The lucky seed kept with its label; the better configuration then still pairs with the kept
    // state's seed, and once the kept train.rs has its other seeds, it is better on all three.
    std::fs::write(ws.train_rs(), version(3)).unwrap();
    let r = c.call("commit", json!({"description": "lucky"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let msg = git(&ws, &["log", "-1", "--format=%B", &state.branch]);
    assert!(
        msg.starts_with(
            "exp r0003: mean_rank 40.00 (-2.30 vs kept r0002 on 1 shared seed, all better, 1 seed: screening)"
        ),
        "{msg}"
    );
    assert!(text(&r).contains("rests on one seed"), "{}", text(&r));
    drop(c);
    {
        let mut ledger = Ledger::open(&ws.state("runs.jsonl")).unwrap();
        seed_ok_run_on(&mut ledger, "r0005", &hash(3), "lucky on 43, 44", &[(43, 80.0), (44, 61.0)]);
    }
    let c = ws.client().await;
    std::fs::write(ws.train_rs(), version(4)).unwrap();
    let r = c.call("commit", json!({"description": "better everywhere"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let msg = git(&ws, &["log", "-1", "--format=%B", &state.branch]);
    assert!(msg.starts_with("exp r0004: mean_rank 45.30 ± "), "{msg}");
    assert!(msg.contains("(-15.03 vs kept r0003 on 3 shared seeds, all better)"), "never a regression: {msg}");
    let v = c.call("read_metrics", json!({})).await.structured_content.unwrap();
    assert_eq!(v["kept"]["id"], "r0004", "{v}");
}

/// read_metrics' default answer stays small however long the night: at 100 runs (three seeds each,
/// every fifth kept) the whole tool result, text and structured content, is under 3 KB; full rows
/// come a page at a time.
#[tokio::test(flavor = "multi_thread")]
async fn read_metrics_stays_under_3_kb_at_100_runs() {
    let ws = Ws::new();
    let state: WorkspaceState = serde_json::from_slice(&std::fs::read(ws.state("workspace.json")).unwrap()).unwrap();
    {
        let mut ledger = Ledger::open(&ws.state("runs.jsonl")).unwrap();
        for i in 1..=100u32 {
            let hash = if i == 1 { state.baseline_train_hash.clone() } else { sha256_hex(format!("v{i}").as_bytes()) };
            let r = 140.0 - i as f64;
            let seeds = [(42, r + 0.123), (43, r + 1.456), (44, r - 0.789)];
            let description = format!("experiment {i}: a one-line hypothesis of ordinary length here");
            seed_ok_run_on(&mut ledger, &format!("r{i:04}"), &hash, &description, &seeds);
            if i % 5 == 0 {
                let head = autoresearch_mcp::audit::Head { hash: autoresearch_mcp::audit::GENESIS.into(), lines: 0 };
                let kept = autoresearch_mcp::ledger::Event::Kept {
                    run_id: format!("r{i:04}"),
                    at: chrono::Utc::now() + chrono::Duration::seconds(i.into()),
                    commit: format!("{i:040}"),
                    train_hash: hash,
                    reason: None,
                    audit: head,
                };
                ledger.append(kept).unwrap();
            }
        }
    }
    let c = ws.client().await;
    let r = c.call("read_metrics", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let bytes = serde_json::to_string(&r).unwrap().len();
    eprintln!("read_metrics at 100 runs: {bytes} bytes\n{}", text(&r));
    assert!(bytes < 3 * 1024, "{bytes} bytes:\n{}", serde_json::to_string_pretty(&r).unwrap());
    let v = r.structured_content.clone().unwrap();
    assert_eq!((v["total_runs"].as_u64(), v["runs"].as_array().unwrap().len()), (Some(100), 5));
    assert_eq!((&v["kept"]["id"], &v["baseline"]["id"]), (&json!("r0100"), &json!("r0001")));
    assert!(v.get("rows").is_none(), "no full rows unless asked");

    let page = c.call("read_metrics", json!({"full": true, "page": 2})).await.structured_content.unwrap();
    let ids: Vec<&str> = page["rows"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((ids.len(), ids[0], page["page"].clone()), (10, "r0081", json!([2, 10])));
}
