//! Pretrained towers through a whole experiment: `[model] text_tower = "minilm"` reaches the train
//! phase (AR_TEXT_TOWER, mounted read-only), its weights load, its tokenizer prepares the data; a tower
//! path that does not exist is a clear error before anything runs.

use crate::common::*;

fn set_model(ws: &Ws, line: &str) {
    let path = ws.root.join("autoresearch.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    assert!(toml.contains("[model]\n"), "{toml}");
    std::fs::write(&path, toml.replace("[model]\n", &format!("[model]\n{line}\n"))).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pretrained_text_tower_is_loaded_in_the_sandbox_and_a_missing_one_is_named() {
    let _slot = experiment_slot().await;
    // A few seconds of training: this checks the wiring, not the model (MiniLM is slow on a CPU).
    let ws = Ws::with_config("budget_seconds = 5");
    set_model(&ws, r#"image_tower = "no/such/vit.safetensors""#);
    let out = ws.cli(&["run", "-m", "missing tower"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && all.contains("model.image_tower") && all.contains("does not exist"), "{all}");

    let ws = Ws::with_config("budget_seconds = 5");
    set_model(&ws, r#"text_tower = "minilm""#);
    let out = ws.cli(&["run", "-m", "MiniLM text tower"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(ws.state("runs/r0001/train.log")).unwrap();
    assert!(log.contains("text tower: loaded 101 tensors"), "{log}");
    assert!(log.contains("; unused: embeddings.position_ids, pooler.dense.bias, pooler.dense.weight"), "{log}");
    // The tower's width (384) is what the projection reads: the run built MiniLM, not the profile's tower.
    let ckpt = std::fs::read(ws.state("runs/r0001/train/checkpoint.safetensors")).unwrap();
    let n = u64::from_le_bytes(ckpt[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&ckpt[8..8 + n]);
    assert!(header.contains(r#""text_encoder.projector.weight":{"dtype":"F32","shape":[128,384]"#), "{header}");
}
