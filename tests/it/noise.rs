//! Noise-aware results through the tools: a run repeated over seeds is a mean ± sd, the baseline's
//! repeats become the noise floor, throughput is each seed's own (a three-seed run trains as fast as a
//! single seed), named seeds pair with the kept state, and a train.rs that ignores its seed is flagged.

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

    // The unmodified baseline over three seeds: different samples, their mean, the noise floor.
    let r = c.call("run_experiment", json!({"description": "baseline x3", "seeds": 3})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("± ") && text(&r).contains("(n=3)"), "{}", text(&r));
    let three = r.structured_content.clone().unwrap();
    let m = &r.structured_content.clone().unwrap()["metrics"];
    let seeds: Vec<f64> = m["seeds"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // The ledger keeps the exact figures; the agent sees them rounded (score::Metrics::for_agent).
    let exact = Ledger::open(&ws.state("runs.jsonl")).unwrap().runs()[0].metrics.clone().unwrap();
    assert_eq!(exact.seeds.len(), 3);
    assert_ne!(exact.seeds[0], exact.seeds[1], "different seeds must train differently");
    assert!((exact.mean_rank - exact.seeds.iter().sum::<f64>() / 3.0).abs() < 1e-9);
    assert_eq!(seeds, exact.seeds.iter().copied().map(round_rank).collect::<Vec<_>>());
    assert_eq!(m["mean_rank"].as_f64().unwrap(), round_rank(exact.mean_rank));
    for s in [42, 43, 44] {
        assert!(ws.state(&format!("runs/r0001/seed-{s}/train/checkpoint.safetensors")).is_file(), "seed {s}");
    }
    assert_eq!(three["per_seed"].as_object().unwrap().len(), 3, "{three}");

    // One more seed of the same train.rs, named: it pairs with the baseline's seeds it does not have
    // (none), it is the kept configuration's evidence (the baseline is the kept state), and it trains
    // as fast as each seed of the three-seed run. The old figure, one seed's steps over all seeds'
    // time, was a third of that.
    let r = c.call("run_experiment", json!({"description": "baseline, seed 45", "seed_list": [45]})).await;
    assert!(!is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("this is the kept configuration: its evidence is now 4 seeds"), "{}", text(&r));
    assert!(ws.state("runs/r0002/train/checkpoint.safetensors").is_file());
    let runs = Ledger::open(&ws.state("runs.jsonl")).unwrap().runs();
    assert_eq!((runs[1].seed, runs[1].seeds()), (45, vec![45]));
    let per_seed: Vec<f64> = runs[0].per_seed.iter().map(|s| s.steps_per_s().unwrap()).collect();
    let (three_sps, one_sps) = (runs[0].steps_per_s().unwrap(), runs[1].steps_per_s().unwrap());
    let spread = noise::sd(&per_seed).unwrap();
    eprintln!("steps/s: 3 seeds {per_seed:?} (mean {three_sps:.2}, sd {spread:.2}); 1 seed {one_sps:.2}");
    assert!(
        (three_sps - one_sps).abs() <= (4.0 * spread).max(0.25 * one_sps),
        "a 3-seed run's steps/s ({three_sps:.2}) must match a single seed's ({one_sps:.2}) within noise"
    );
    assert_eq!(three["steps_per_s"].as_f64().unwrap(), round_rank(three_sps));
    assert!(runs[0].per_seed.iter().all(|s| s.steps == Some(400) && !s.budget_cut), "{:?}", runs[0].per_seed);
    let v = c.call("read_metrics", json!({})).await;
    let view = v.structured_content.clone().unwrap();
    let floor = view["noise_floor"].as_f64().expect("a noise floor from the baseline's seeds");
    let mut samples = exact.seeds.clone();
    samples.push(runs[1].mean_rank().unwrap());
    assert_eq!(floor, round_rank(noise::sd(&samples).unwrap()), "{view}");
    assert!(view["noise_floor_samples"] == 4, "{view}");
    assert_eq!(view["baseline"]["per_seed"].as_object().unwrap().len(), 4, "{view}");
    assert!(view["kept"].is_null(), "the baseline is the kept state, not repeated: {view}");
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
    let r = c.call("run_experiment", json!({"description": "twice", "seed_list": [42, 42]})).await;
    assert!(is_error(&r) && text(&r).contains("distinct"), "{}", text(&r));
}
