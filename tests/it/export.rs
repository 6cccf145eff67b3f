//! Sunday morning, after the loop: `report --test` scores the baseline and the kept runs on the test
//! split, and `export` hands out the best kept model and the baseline as safetensors with a card. On
//! the synthetic data in the tests profile: a baseline run, then a kept learning-rate change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// A workspace with r0001 = the baseline and r0002 = LR 3e-4 -> 1e-3, kept; no server left running.
async fn baseline_and_kept_change() -> Ws {
    // The 400 steps take ~20 s on an idle machine; the budget only caps them, so that a loaded machine
    // (several minutes for them on 2 shared cores) still trains fully: a model cut short proves nothing.
    let ws = Ws::with_config("budget_seconds = 600");
    let c = ws.client().await;
    let r = c.call("run_experiment", json!({"description": "baseline"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let e = c.call("edit_train", ws.raise_lr_edit()).await;
    assert!(!is_error(&e), "{}", text(&e));
    let r = c.call("run_experiment", json!({"description": "LR 3e-4 -> 1e-3"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let k = c.call("commit", json!({"description": "LR 3e-4 -> 1e-3"})).await;
    assert!(!is_error(&k), "{}", text(&k));
    // Stop the server: report --test refuses to run beside one.
    let pid = c.pid;
    drop(c);
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws
}

fn test_scores(ws: &Ws) -> Value {
    serde_json::from_slice(&std::fs::read(ws.state("test_scores.json")).unwrap()).unwrap()
}

fn row<'a>(scores: &'a Value, id: &str) -> &'a Value {
    scores["rows"].as_array().unwrap().iter().find(|r| r["run_id"] == id).unwrap()
}

fn report_test(ws: &Ws) -> String {
    let t = Instant::now();
    let out = ws.cli(&["report", "--test"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report --test failed:\n{stdout}\n{stderr}");
    eprintln!("report --test took {:.1} s:\n{stdout}", t.elapsed().as_secs_f64());
    stdout
}

/// The prepared cache folder of the workspace (one: fixed split, one tokenizer).
/// The validation size of the workspace's prepared data.
fn s_val_n(ws: &Ws) -> usize {
    let ready: Value = serde_json::from_slice(&std::fs::read(cache_dir(ws).join("ready.json")).unwrap()).unwrap();
    ready["val_n"].as_u64().unwrap() as usize
}

fn cache_dir(ws: &Ws) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(ws.state("data")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// One workspace (two full runs) serves both Sunday commands, in the order a researcher runs them.
#[tokio::test(flavor = "multi_thread")]
async fn report_test_then_export_on_a_baseline_and_a_kept_change() {
    let _slot = experiment_slot().await;
    let ws = baseline_and_kept_change().await;
    report_test_scores_the_baseline_and_kept_runs_on_the_test_split(&ws);
    export_round_trips_through_the_trainers_loader(&ws);
}

fn report_test_scores_the_baseline_and_kept_runs_on_the_test_split(ws: &Ws) {
    // r0002's trainer binary is gone: it is listed with the reason, the baseline is still scored.
    let bin = ws.state("runs/r0002/bin");
    std::fs::rename(&bin, ws.state("runs/r0002/bin.away")).unwrap();
    let stdout = report_test(ws);
    let s = test_scores(ws);
    let base = row(&s, "r0001");
    assert_eq!(base["kind"], "baseline");
    let m = &base["metrics"];
    let (test, random) = (m["mean_rank"].as_f64().unwrap(), m["random_mean_rank"].as_f64().unwrap());
    assert!(test < 0.7 * random, "baseline test mean rank {test} is not far below random {random}");
    assert_eq!(m["n"].as_u64().unwrap() as usize, s["test_n"].as_u64().unwrap() as usize);
    let kept = row(&s, "r0002");
    assert_eq!(kept["kind"], "kept");
    assert!(kept["metrics"].is_null());
    assert!(kept["skipped"].as_str().unwrap().contains("runs/r0002/bin/train is missing"), "{kept}");
    assert!(stdout.contains("| 1 | r0001 | baseline |"), "{stdout}");
    assert!(stdout.contains("not scored: its trainer binary"), "{stdout}");

    // The test split went out like validation: dealt into halves for the scoring, the pairing only in
    // the server's memory; neither is left on disk.
    assert!(cache_dir(ws).join("private/test_ready.json").is_file());
    let left = files_under(&ws.state(""));
    assert!(!left.iter().any(|f| f.contains("pairing") || f.contains("/evaluation/")), "{left:?}");

    // With the binary back: r0002 is scored, r0001 is not redone (same checkpoint, same test split).
    std::fs::rename(ws.state("runs/r0002/bin.away"), &bin).unwrap();
    let before = base["scored_at"].clone();
    let stdout = report_test(ws);
    let s = test_scores(ws);
    assert_eq!(row(&s, "r0001")["scored_at"], before, "the baseline's score was reused");
    let kept = &row(&s, "r0002")["metrics"];
    assert!(kept["mean_rank"].as_f64().unwrap() < 0.7 * random, "{kept}");
    assert!(stdout.contains("| 2 | r0002 | kept |"), "{stdout}");

    // The report shows them: a test column in the tables, test.md, and a section of report.html.
    let dir = ws.state("report");
    let tsv = std::fs::read_to_string(dir.join("results.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    let col = rows[0].iter().position(|c| *c == "test_mean_rank").unwrap();
    for (i, id) in [(1, "r0001"), (2, "r0002")] {
        assert_eq!(rows[i][1], id);
        let v: f64 = rows[i][col].parse().unwrap_or_else(|_| panic!("{tsv}"));
        assert!(v < random, "{tsv}");
    }
    assert!(std::fs::read_to_string(dir.join("test.md")).unwrap().contains("| 2 | r0002 | kept |"));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains(r#"<table id="test">"#) && html.contains("<th>test mean rank</th>"), "{html}");
}

/// `scripts/python-env.sh`'s environment (python with torch, timm, transformers).
fn python() -> PathBuf {
    let out = Command::new("bash").arg(repo_root().join("scripts/python-env.sh")).output().unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python")
}

/// Runs `trainer`'s `embed-images` phase as a plain process (the contract's environment, no sandbox).
/// Every file under `dir`, as strings.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() { stack.push(p) } else { out.push(p.display().to_string()) }
        }
    }
    out
}

fn embed_images(trainer: &Path, checkpoint: &Path, data: &Path, out: &Path) -> Vec<f32> {
    std::fs::create_dir_all(out).unwrap();
    let r = Command::new(trainer)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LD_LIBRARY_PATH", torch_lib())
        .env("AR_PHASE", "embed-images")
        .env("AR_PROFILE", "tests")
        .env("AR_DEVICE", "cpu")
        .env("AR_DATA", data)
        .env("AR_OUT", out)
        .env("AR_CHECKPOINT", checkpoint)
        .output()
        .unwrap();
    assert!(r.status.success(), "embed-images failed: {}", String::from_utf8_lossy(&r.stderr));
    embeddings(&out.join("embeddings.safetensors"))
}

fn embeddings(file: &Path) -> Vec<f32> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("embeddings").unwrap();
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn export_round_trips_through_the_trainers_loader(ws: &Ws) {
    report_test(ws);
    let t = Instant::now();
    let out = ws.cli(&["export"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "export failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("export took {:.2} s:\n{stdout}", t.elapsed().as_secs_f64());
    let export = ws.state("export");
    let (best, baseline) = (export.join("best"), export.join("baseline"));
    for d in [&best, &baseline] {
        for f in
            ["model.safetensors", "MODEL_CARD.md", "card.json", "train.rs", "load_pytorch.py", "eclip_reference.py"]
        {
            assert!(d.join(f).is_file(), "{}/{f}", d.display());
        }
    }

    // The card names the commit and carries the diff from the baseline and both metrics.
    let repo = git2::Repository::open(&ws.root).unwrap();
    let head = repo.head().unwrap().peel_to_commit().unwrap().id().to_string();
    let card: Value = serde_json::from_slice(&std::fs::read(best.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["run_id"], "r0002");
    assert_eq!(card["commit"], head.as_str());
    let diff = card["diff_from_baseline"].as_str().unwrap();
    assert!(
        diff.contains("-const LEARNING_RATE") && diff.contains("+const LEARNING_RATE") && diff.contains("1e-3"),
        "{diff}"
    );
    assert!(card["test"]["mean_rank"].as_f64().is_some(), "report --test scored it: {card}");
    assert!(card["validation"]["mean_rank"].as_f64().is_some());
    assert!(card["harness"]["libtorch"].as_str().unwrap().starts_with("2."), "{card}");
    let md = std::fs::read_to_string(best.join("MODEL_CARD.md")).unwrap();
    assert!(md.contains(&head) && md.contains(diff.trim_end()), "{md}");
    assert!(md.contains("load_state_dict(state, strict=True)") && md.contains("**test**: mean rank"), "{md}");
    let base_card: Value = serde_json::from_slice(&std::fs::read(baseline.join("card.json")).unwrap()).unwrap();
    assert_eq!(base_card["run_id"], "r0001");
    assert_eq!(base_card["diff_from_baseline"], "");
    assert_eq!(base_card["commit"], card["baseline_commit"]);

    // The exported file through the trainer's own loader gives exactly the original checkpoint's
    // embeddings, and those of the run's sandboxed embed phase (in that run's own row order).
    let trainer = ws.state("runs/r0002/bin/train");
    let val_images = cache_dir(ws).join("prepared/val.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let exported = embed_images(&trainer, &best.join("model.safetensors"), &val_images, &tmp.path().join("a"));
    let original = embed_images(
        &trainer,
        &ws.state("runs/r0002/train/checkpoint.safetensors"),
        &val_images,
        &tmp.path().join("b"),
    );
    assert!(!exported.is_empty());
    assert_eq!(exported, original, "the exported model embeds exactly as the checkpoint");
    let in_run = embeddings(&ws.state("runs/r0002/embed-images/embeddings.safetensors"));
    assert_eq!(in_run.len(), exported.len());
    let n = s_val_n(ws);
    let d = exported.len() / n;
    // Each row the run embedded is some validation image's row of the exported model.
    let closest = |row: &[f32]| {
        exported
            .chunks_exact(d)
            .map(|e| e.iter().zip(row).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max))
            .fold(f32::MAX, f32::min)
    };
    let worst = in_run.chunks_exact(d).map(closest).fold(0f32, f32::max);
    assert!(worst < 1e-4, "the run's own embeddings differ by {worst}");

    // And through PyTorch, as the card says: the reference port loads it strictly and embeds alike.
    let py_out = tmp.path().join("py.safetensors");
    let r = Command::new(python())
        .arg(best.join("load_pytorch.py"))
        .arg("--embed")
        .arg(&val_images)
        .arg("--out")
        .arg(&py_out)
        .output()
        .unwrap();
    let py_stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "load_pytorch.py failed:\n{py_stdout}\n{}", String::from_utf8_lossy(&r.stderr));
    assert!(py_stdout.contains("loaded") && py_stdout.contains("PROJ_DIM 128"), "{py_stdout}");
    let py = embeddings(&py_out);
    assert_eq!(py.len(), exported.len());
    let d = exported.len() / count_rows(&val_images);
    for (i, (a, b)) in exported.chunks(d).zip(py.chunks(d)).enumerate() {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let cos = dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt());
        assert!(cos > 1.0 - 1e-4, "row {i}: PyTorch and the trainer disagree (cosine {cos})");
    }

    // Asking for a run that is not there, or one whose checkpoint is gone, fails clearly.
    let out = ws.cli(&["export", "--run", "r0099"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no run \"r0099\""));
    std::fs::remove_file(ws.state("runs/r0001/train/checkpoint.safetensors")).unwrap();
    let out = ws.cli(&["export", "--out", tmp.path().join("again").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("baseline r0001") && stderr.contains("cannot be read"),
        "{stderr}"
    );
    assert!(tmp.path().join("again/best/model.safetensors").is_file(), "the best run is still exported");
}

/// Rows of the `images` tensor of a phase file.
fn count_rows(file: &Path) -> usize {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("images").unwrap().shape()[0]
}

/// A cross-validated run has one checkpoint per fold: `report --test` scores the first fold's and
/// says so, on the test split of the fixed split's cache (the folds never hold the test set).
#[tokio::test(flavor = "multi_thread")]
async fn report_test_scores_a_cross_validated_run_with_its_first_fold() {
    let _slot = experiment_slot().await;
    // A short budget: this checks the protocol, not the model.
    let ws = Ws::with_config("budget_seconds = 10\nfolds = 3");
    let out = ws.cli(&["run", "-m", "baseline, 3-fold"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stdout = report_test(&ws);
    let s = test_scores(&ws);
    let r = row(&s, "r0001");
    assert_eq!(r["kind"], "baseline");
    assert!(r["metrics"]["mean_rank"].as_f64().unwrap().is_finite(), "{r}");
    assert!(r["note"].as_str().unwrap().contains("fold 1 of 3"), "{r}");
    assert_eq!(r["checkpoint"], ".autoresearch/runs/r0001/fold-1/train/checkpoint.safetensors");
    assert!(stdout.contains("fold 1 of 3's checkpoint"), "{stdout}");
    let with_test = std::fs::read_dir(ws.state("data"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("private/test_ready.json").is_file())
        .count();
    assert_eq!(with_test, 1, "one cache holds the checked test split: the fixed split's");
}
