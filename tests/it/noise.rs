//! Noise-aware results through the tools: a run repeated over seeds is a mean ± sd, the baseline's
//! repeats become the noise floor, and a train.rs that ignores its seed is flagged.

use autoresearch_mcp::ledger::Ledger;
use autoresearch_mcp::ledger::noise;
use autoresearch_mcp::score::round_rank;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn seed_repeats_give_a_noise_floor_and_a_seed_ignoring_train_rs_is_flagged() {
    let _slot = experiment_slot().await;
    let ws = Ws::with_config("budget_seconds = 300");
    let c = ws.client().await;

    // The unmodified baseline over two seeds: two different samples, their mean, the noise floor.
    let r = c.call("run_experiment", json!({"description": "baseline x2", "seeds": 2})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("± ") && text(&r).contains("(n=2)"), "{}", text(&r));
    let m = &r.structured_content.clone().unwrap()["metrics"];
    let seeds: Vec<f64> = m["seeds"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // The ledger keeps the exact figures; the agent sees them rounded (score::Metrics::for_agent).
    let exact = Ledger::open(&ws.state("runs.jsonl")).unwrap().runs()[0].metrics.clone().unwrap();
    assert_eq!(exact.seeds.len(), 2);
    assert_ne!(exact.seeds[0], exact.seeds[1], "different seeds must train differently");
    assert!((exact.mean_rank - (exact.seeds[0] + exact.seeds[1]) / 2.0).abs() < 1e-9);
    assert_eq!(seeds, exact.seeds.iter().copied().map(round_rank).collect::<Vec<_>>());
    assert_eq!(m["mean_rank"].as_f64().unwrap(), round_rank(exact.mean_rank));
    for s in [42, 43] {
        assert!(ws.state(&format!("runs/r0001/seed-{s}/train/checkpoint.safetensors")).is_file(), "seed {s}");
    }
    let v = c.call("read_metrics", json!({})).await;
    let view = v.structured_content.clone().unwrap();
    let floor = view["noise_floor"].as_f64().expect("a noise floor from two baseline seeds");
    assert_eq!(floor, round_rank(noise::sd(&exact.seeds).unwrap()), "{view}");
    assert!(view["noise_floor_samples"] == 2, "{view}");
    assert!(text(&v).contains("noise floor: sd"), "{}", text(&v));

    // A train.rs that reseeds libtorch itself: every seed gives the same result.
    let src = std::fs::read_to_string(ws.train_rs()).unwrap();
    let anchor = "    let ctx = Context::from_env()?;\n";
    assert!(src.contains(anchor));
    let e = c
        .call(
            "edit_train",
            json!({"command": "str_replace", "old_str": anchor, "new_str": format!("{anchor}    tch::manual_seed(7);\n")}),
        )
        .await;
    assert!(!is_error(&e), "{}", text(&e));
    let e = c
        .call(
            "edit_train",
            json!({"command": "str_replace", "old_str": "const MAX_STEPS: u64 = 400;", "new_str": "const MAX_STEPS: u64 = 40;"}),
        )
        .await;
    assert!(!is_error(&e), "{}", text(&e));
    let r = c.call("run_experiment", json!({"description": "fixed seed, short", "seeds": 2})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("ignores the seed"), "{}", text(&r));
    let row = r.structured_content.clone().unwrap();
    let seeds = row["metrics"]["seeds"].as_array().unwrap();
    assert_eq!(seeds[0], seeds[1]);
    let v = c.call("read_metrics", json!({"last": 1})).await;
    let flags = &v.structured_content.clone().unwrap()["runs"][0]["flags"];
    assert!(flags.as_array().unwrap().contains(&json!("seed_ignored")), "{flags}");

    // Out-of-range repeats are refused.
    let r = c.call("run_experiment", json!({"description": "too many", "seeds": 9})).await;
    assert!(is_error(&r) && text(&r).contains("use 1 to 5"), "{}", text(&r));
}
