//! The reference's two train.rs configurations on the synthetic data: its final settings (the changes
//! its autoresearch run kept) beat its baseline by a clear margin on every seed. Prints the seed table
//! and writes it to target/seed-table.md.

use crate::common::*;
use autoresearch_mcp::ledger::Ledger;

const SEEDS: [u64; 3] = [1, 2, 3];

/// Validation mean ranks of `config` over SEEDS (one experiment repeated over the seeds, run through
/// the CLI: one workspace, one build, one data preparation) and what random retrieval would score.
fn mean_ranks(config: &str) -> (Vec<f64>, f64) {
    // A generous budget: the final settings train 800 steps of 64 and the machine may be shared.
    let ws = Ws::with_train_config(&format!("seed = {}\nbudget_seconds = 600", SEEDS[0]), config);
    let n = SEEDS.len().to_string();
    let out = ws.cli(&["run", "-m", &format!("{config} settings, seeds {SEEDS:?}"), "--seeds", &n]);
    assert!(out.status.success(), "{config}: {}", String::from_utf8_lossy(&out.stderr));
    let runs = Ledger::open(&ws.state("runs.jsonl")).unwrap().runs();
    let run = runs.last().expect("one run");
    let m = run.metrics.as_ref().unwrap_or_else(|| panic!("{config}: no metrics ({:?})", run.status));
    assert!(!run.overran, "{config} overran its budget: the table would compare cut runs");
    assert_eq!(m.seeds.len(), SEEDS.len(), "one mean rank per seed: {m:?}");
    (m.seeds.clone(), m.random_mean_rank)
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

#[tokio::test(flavor = "multi_thread")]
async fn final_settings_beat_the_baseline_on_every_seed() {
    let _slot = experiment_slot().await;
    let mut rows = vec![];
    let mut random = 0.0;
    for config in ["baseline", "final"] {
        let (ranks, rnd) = mean_ranks(config);
        random = rnd;
        rows.push((config, ranks));
    }
    let mut table = format!(
        "| train.rs | {} | mean ± sd |\n|---|{}---|\n",
        SEEDS.map(|s| format!("seed {s}")).join(" | "),
        "---|".repeat(SEEDS.len())
    );
    for (config, ranks) in &rows {
        let (m, sd) = mean_sd(ranks);
        let cells: Vec<String> = ranks.iter().map(|r| format!("{r:.1}")).collect();
        table.push_str(&format!("| {config} | {} | {m:.1} ± {sd:.1} |\n", cells.join(" | ")));
    }
    table.push_str(&format!(
        "\nValidation mean rank (lower is better; random = {random:.1}), tests profile, synthetic data.\n"
    ));
    eprintln!("\n{table}");
    let _ = std::fs::write(repo_root().join("target/seed-table.md"), &table);

    let (baseline, fin) = (&rows[0].1, &rows[1].1);
    let worst_final = fin.iter().cloned().fold(f64::MIN, f64::max);
    let best_baseline = baseline.iter().cloned().fold(f64::MAX, f64::min);
    assert!(worst_final < best_baseline, "final settings lost on some seed:\n{table}");
    let ((mb, _), (mf, _)) = (mean_sd(baseline), mean_sd(fin));
    assert!(mf < 0.8 * mb, "final settings are not clearly better (mean {mf:.1} vs {mb:.1}):\n{table}");
}
