//! Real dataset layouts through a whole experiment: Ukiyo-eVG's release layout (annotations under
//! annotations/Ukiyo-eVG/refined, images in images_ukiyo-e/) with the reference's 3-fold
//! cross-validation.

use crate::common::*;
use autoresearch_mcp::ledger::Ledger;

/// The test dataset rearranged as Ukiyo-eVG's release.
fn ukiyo_evg_copy(dir: &std::path::Path) {
    let src = test_dataset();
    let a = dir.join("annotations/Ukiyo-eVG/refined");
    std::fs::create_dir_all(&a).unwrap();
    for (from, to) in [
        ("train.jsonl", "ukiyoe_vg_train_pgt_odvg.jsonl"),
        ("val.jsonl", "ukiyoe_vg_val_pgt_odvg.jsonl"),
        ("test.jsonl", "ukiyoe_vg_test_annotated.jsonl"),
    ] {
        std::fs::copy(src.join(from), a.join(to)).unwrap();
    }
    let images = dir.join("images_ukiyo-e");
    std::fs::create_dir_all(&images).unwrap();
    for e in std::fs::read_dir(src.join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), images.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ukiyo_evg_layout_with_three_fold_cross_validation() {
    let _slot = experiment_slot().await;
    let data = tempfile::tempdir().unwrap();
    ukiyo_evg_copy(data.path());
    // A short budget: this checks the protocol (three folds, their mean), not the model.
    let ws = Ws::build("budget_seconds = 10\nfolds = 3", "baseline", data.path());
    let out = ws.cli(&["run", "-m", "baseline, 3-fold"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("mean over 3 folds"), "{stdout}");

    let runs = Ledger::open(&ws.state("runs.jsonl")).unwrap().runs();
    let m = runs[0].metrics.clone().expect("metrics");
    assert_eq!(m.folds.len(), 3);
    let mean = m.folds.iter().sum::<f64>() / 3.0;
    assert!((m.mean_rank - mean).abs() < 1e-9, "the run's mean rank is the folds' mean");
    // Train 800 + val 200 pooled: every entry validates once (3 folds of ~333).
    assert_eq!(m.n, 1000);
    for (i, f) in m.folds.iter().enumerate() {
        assert!(f.is_finite() && *f < m.random_mean_rank * 1.2, "fold {i}: {f}");
    }
    for fold in 1..=3 {
        let dir = ws.state(&format!("runs/r0001/fold-{fold}"));
        assert!(dir.join("train/checkpoint.safetensors").is_file(), "fold {fold} trained");
    }
    // Each fold was prepared from the release layout, with the test split left out of the folds.
    let prepared = std::fs::read_dir(ws.state("data")).unwrap().filter_map(|e| e.ok()).count();
    assert!(prepared >= 1);
}
