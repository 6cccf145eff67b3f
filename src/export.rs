//! `autoresearch-mcp export`: the best kept model and the baseline, to take home.
//!
//! For each, a folder (`best/` or `run-<id>/`, and `baseline/`) with:
//! - `model.safetensors`: the run's checkpoint as its train phase wrote it (WiSE-FT already applied when
//!   train.rs applies it), validated as safetensors and rewritten tensor by tensor with provenance in the
//!   header's `__metadata__`;
//! - `MODEL_CARD.md` and `card.json`: validation (and test, after `report --test`) metrics, the
//!   fingerprint, the commit, the harness and libtorch versions, the diff of train.rs from the
//!   baseline, and how to load the model;
//! - `train.rs` (the exact source), `diff_from_baseline.patch`, and `eclip_reference.py` +
//!   `load_pytorch.py` to load it into the PyTorch port of the reference.
//!
//! Nothing here runs trainer code: export only reads files the server owns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde::Serialize;

use crate::edit::unified_diff;
use crate::fsutil::{read_capped, sha256_hex, write_atomic};
use crate::ledger::{Fingerprint, Ledger, Reported, Run, RunStatus, Standings};
use crate::paths::{Paths, TRAIN_RS};
use crate::score::Metrics;
use crate::test_split::{TestScores, checkpoint_of};
use crate::workspace::WorkspaceState;

/// Largest checkpoint read (the train phase's file-size limit is 4 GiB).
const MAX_CHECKPOINT_BYTES: u64 = 8 << 30;

/// The PyTorch port of the reference, as built into this binary (used when the workspace has no
/// `reference/`, e.g. one made by `new-workspace`).
const REFERENCE_PORT: &str = include_str!("../reference/eclip_reference.py");
const LOAD_PYTORCH: &str = include_str!("../assets/export/load_pytorch.py");

/// What a card says the model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Best,
    Chosen,
    Baseline,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Best => "best kept run",
            Role::Chosen => "run chosen with --run",
            Role::Baseline => "baseline",
        }
    }
}

/// The model card, as `card.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    pub role: String,
    pub run_id: String,
    pub number: usize,
    pub description: String,
    pub kept: bool,
    pub started_at: DateTime<Utc>,
    pub seed: u64,
    /// The commit holding this train.rs on the experiment branch (kept runs, and the baseline's commit).
    pub commit: Option<String>,
    pub baseline_commit: String,
    pub branch: String,
    pub train_rs_sha256: String,
    pub validation: Metrics,
    /// From the last `report --test`, when it scored this very checkpoint.
    pub test: Option<Metrics>,
    pub test_note: String,
    pub fingerprint_id: String,
    pub fingerprint: Fingerprint,
    pub harness: Harness,
    pub model: ModelInfo,
    /// WiSE-FT as train.rs sets it (`WISE_FT_ALPHA`): applied before the checkpoint was written, to the
    /// towers that were loaded pretrained.
    pub wise_ft_alpha: Option<f64>,
    pub reported: Reported,
    pub exported_at: DateTime<Utc>,
    /// Unified diff of train.rs from the baseline's to this run's.
    pub diff_from_baseline: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Harness {
    /// SHA-256 prefix over every trainer file but train.rs (the fingerprint's `harness`).
    pub hash: String,
    pub autoresearch_mcp: String,
    /// The trainer's tch requirement (tch pins its libtorch).
    pub tch: Option<String>,
    pub libtorch: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The checkpoint exported, relative to the workspace, and its SHA-256.
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub checkpoint_note: Option<String>,
    pub sha256: String,
    pub tensors: usize,
    pub parameters: u64,
    pub dtypes: Vec<String>,
    pub vocab_size: Option<i64>,
    pub proj_dim: Option<usize>,
    pub profile: String,
}

/// One exported model.
#[derive(Debug, Clone)]
pub struct Exported {
    pub dir: PathBuf,
    pub card: Card,
}

/// What `export` did: the models written and anything it could not export (with the reason).
#[derive(Debug, Default)]
pub struct Outcome {
    pub exported: Vec<Exported>,
    pub notes: Vec<String>,
    pub failed: Vec<String>,
}

/// Exports into `out`: the run `run_id`, or else the best kept run of the latest fingerprint, and the
/// baseline run of the same fingerprint (its best by validation mean rank when it was repeated).
pub fn export(paths: &Paths, out: &Path, run_id: Option<&str>) -> Result<Outcome> {
    let state: WorkspaceState = serde_json::from_slice(
        &std::fs::read(paths.workspace_state())
            .with_context(|| format!("{} is missing: is this a workspace?", paths.workspace_state().display()))?,
    )
    .context("parse workspace.json")?;
    let runs = Ledger::open(&paths.ledger())?.runs();
    let Some(latest) = runs.last() else { bail!("the ledger has no runs yet: nothing to export") };
    let mut out_models: Vec<(Role, &Run)> = vec![];
    let mut outcome = Outcome::default();
    let fp = match run_id {
        Some(id) => {
            let run = runs.iter().find(|r| r.id == id).with_context(|| format!("no run {id:?} in the ledger"))?;
            if run.status != RunStatus::Ok || run.metrics.is_none() {
                bail!("run {id} has status {:?}: it has no scored model to export", run.status);
            }
            if !run.kept {
                outcome.notes.push(format!("run {id} was not kept (no commit): exporting it as you asked"));
            }
            out_models.push((Role::Chosen, run));
            &run.fingerprint
        }
        None => &latest.fingerprint,
    };
    let standings = Standings::of(&runs, fp, &state.baseline_train_hash);
    if run_id.is_none() {
        // The best kept result; when that is the baseline itself, it is exported once, as the baseline.
        match standings.best {
            Some(best) if best.kept => out_models.push((Role::Best, best)),
            Some(best) => outcome.notes.push(format!(
                "no kept run of the latest fingerprint ({}) beats the baseline {}: exporting the baseline only",
                fp.short(),
                best.id
            )),
            None => outcome
                .notes
                .push(format!("no kept run of the latest fingerprint ({}): exporting the baseline only", fp.short())),
        }
    }
    let baselines = runs.iter().filter(|r| standings.includes(r) && r.train_hash == state.baseline_train_hash).count();
    match standings.baseline {
        Some(b) if out_models.iter().any(|(_, r)| r.id == b.id) => {
            outcome.notes.push(format!("run {} is the baseline itself: exported once", b.id))
        }
        Some(b) => {
            if baselines > 1 {
                outcome.notes.push(format!(
                    "{baselines} baseline runs of this fingerprint: exporting {}, the best by validation mean rank",
                    b.id
                ));
            }
            out_models.push((Role::Baseline, b))
        }
        None => outcome.notes.push(format!("no scored baseline run of fingerprint {}: no baseline export", fp.short())),
    }

    let repo = Repository::open(&paths.root).context("open the workspace's git repository")?;
    let baseline_src = blob_at(&repo, &state.baseline_commit, TRAIN_RS)
        .with_context(|| format!("read train.rs of the baseline commit {}", state.baseline_commit))?;
    let tests = TestScores::load(paths);
    let ctx = Ctx { paths, repo: &repo, state: &state, baseline_src: &baseline_src, tests: tests.as_ref() };
    for (role, run) in out_models {
        let dir = match role {
            Role::Best => out.join("best"),
            Role::Chosen => out.join(format!("run-{}", safe_name(&run.id))),
            Role::Baseline => out.join("baseline"),
        };
        match export_one(&ctx, role, run, &dir) {
            Ok(card) => outcome.exported.push(Exported { dir, card }),
            Err(e) => outcome.failed.push(format!("{} {}: {e:#}", role.label(), run.id)),
        }
    }
    Ok(outcome)
}

struct Ctx<'a> {
    paths: &'a Paths,
    repo: &'a Repository,
    state: &'a WorkspaceState,
    baseline_src: &'a str,
    tests: Option<&'a TestScores>,
}

fn safe_name(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(64).collect()
}

fn blob_at(repo: &Repository, commit: &str, path: &str) -> Result<String> {
    let c = repo.find_commit(Oid::from_str(commit)?)?;
    let entry = c.tree()?.get_path(Path::new(path))?;
    let blob = repo.find_blob(entry.id())?;
    Ok(String::from_utf8_lossy(blob.content()).into_owned())
}

fn export_one(ctx: &Ctx, role: Role, run: &Run, dir: &Path) -> Result<Card> {
    let paths = ctx.paths;
    let (ckpt, ckpt_note) = checkpoint_of(paths, run);
    let bytes = read_capped(&ckpt, MAX_CHECKPOINT_BYTES)
        .with_context(|| format!("its checkpoint {} cannot be read", paths.relative(&ckpt).display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", paths.relative(&ckpt).display()))?;
    if st.is_empty() {
        bail!("{} holds no tensors", paths.relative(&ckpt).display());
    }

    // train.rs: the commit's for kept runs and the baseline, else the snapshot taken when the run started.
    let commit = match (role, &run.commit) {
        (_, Some(c)) => Some(c.clone()),
        (Role::Baseline, None) => Some(ctx.state.baseline_commit.clone()),
        _ => None,
    };
    let source = match &commit {
        Some(c) => blob_at(ctx.repo, c, TRAIN_RS).with_context(|| format!("read train.rs of commit {c}"))?,
        None => {
            let snap = paths.run_dir(&run.id).join("train.rs");
            String::from_utf8_lossy(&read_capped(&snap, 4 << 20).context("read the run's train.rs snapshot")?)
                .into_owned()
        }
    };
    if sha256_hex(source.as_bytes()) != run.train_hash {
        bail!("the train.rs found for it does not have the hash the ledger recorded ({})", &run.train_hash[..12]);
    }
    let diff = unified_diff(ctx.baseline_src, &source);

    // The model: every tensor copied, provenance in the header.
    let ckpt_sha = sha256_hex(&bytes);
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("autoresearch.run".into(), run.id.clone()),
        ("autoresearch.role".into(), role.label().into()),
        ("autoresearch.description".into(), crate::report::short_label(&run.description, 300)),
        ("autoresearch.train_rs_sha256".into(), run.train_hash.clone()),
        ("autoresearch.fingerprint".into(), run.fingerprint.short()),
        ("autoresearch.profile".into(), run.fingerprint.profile.clone()),
        ("autoresearch.checkpoint_sha256".into(), ckpt_sha.clone()),
    ]);
    if let Some(c) = &commit {
        metadata.insert("autoresearch.commit".into(), c.clone());
    }
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (mut parameters, mut dtypes, mut vocab_size, mut proj_dim) = (0u64, vec![], None, None);
    let mut views = Vec::with_capacity(names.len());
    for name in &names {
        let t = st.tensor(name)?;
        let dtype = format!("{:?}", t.dtype());
        if !dtypes.contains(&dtype) {
            dtypes.push(dtype);
        }
        if name == "harness.vocab_size" {
            if let (safetensors::Dtype::I64, Some(b)) = (t.dtype(), t.data().get(..8)) {
                vocab_size = Some(i64::from_le_bytes(b.try_into()?));
            }
        } else {
            parameters += t.shape().iter().product::<usize>() as u64;
        }
        if name == "image_encoder.projector.weight" {
            proj_dim = t.shape().first().copied();
        }
        views.push((name.clone(), TensorView::new(t.dtype(), t.shape().to_vec(), t.data())?));
    }
    let model = safetensors::serialize(views, Some(metadata)).context("serialise model.safetensors")?;
    SafeTensors::deserialize(&model).context("the written model does not parse back")?;

    let test_row = ctx.tests.and_then(|t| t.scored(&run.id));
    let (test, test_note) = match (ctx.tests, test_row) {
        (_, Some(r)) if r.checkpoint_sha256.as_deref() == Some(ckpt_sha.as_str()) => (
            r.metrics.clone(),
            format!(
                "report --test of {}{}",
                ctx.tests.map(|t| t.generated_at.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default(),
                r.note.as_deref().map(|n| format!("; {n}")).unwrap_or_default()
            ),
        ),
        (_, Some(_)) => (None, "report --test scored another checkpoint of this run: run it again".into()),
        (Some(_), None) => (None, "the last report --test did not score this run".into()),
        (None, None) => (None, "not scored on the test split: run `autoresearch-mcp report --test`".into()),
    };
    let card = Card {
        role: role.label().into(),
        run_id: run.id.clone(),
        number: run.number,
        description: run.description.clone(),
        kept: run.kept,
        started_at: run.started_at,
        seed: run.seed,
        commit,
        baseline_commit: ctx.state.baseline_commit.clone(),
        branch: ctx.state.branch.clone(),
        train_rs_sha256: run.train_hash.clone(),
        validation: run.metrics.clone().context("the run has no metrics")?,
        test,
        test_note,
        fingerprint_id: run.fingerprint.short(),
        fingerprint: run.fingerprint.clone(),
        harness: Harness {
            hash: run.fingerprint.harness.clone(),
            autoresearch_mcp: env!("CARGO_PKG_VERSION").into(),
            tch: tch_requirement(&paths.trainer().join("Cargo.toml")),
            libtorch: run.fingerprint.libtorch.clone(),
        },
        model: ModelInfo {
            checkpoint: paths.relative(&ckpt).display().to_string(),
            checkpoint_sha256: ckpt_sha,
            checkpoint_note: ckpt_note,
            sha256: sha256_hex(&model),
            tensors: names.len(),
            parameters,
            dtypes,
            vocab_size,
            proj_dim,
            profile: run.fingerprint.profile.clone(),
        },
        wise_ft_alpha: wise_ft_alpha(&source),
        reported: run.reported.clone(),
        exported_at: Utc::now(),
        diff_from_baseline: diff.clone(),
    };

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    write_atomic(&dir.join("model.safetensors"), &model)?;
    write_atomic(&dir.join("train.rs"), source.as_bytes())?;
    write_atomic(&dir.join("diff_from_baseline.patch"), diff.as_bytes())?;
    let port = std::fs::read(paths.root.join("reference/eclip_reference.py"))
        .unwrap_or_else(|_| REFERENCE_PORT.as_bytes().to_vec());
    write_atomic(&dir.join("eclip_reference.py"), &port)?;
    let profile = run.fingerprint.profile.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>();
    write_atomic(&dir.join("load_pytorch.py"), LOAD_PYTORCH.replace("@PROFILE@", &profile).as_bytes())?;
    write_atomic(&dir.join("card.json"), serde_json::to_string_pretty(&card)?.as_bytes())?;
    write_atomic(&dir.join("MODEL_CARD.md"), markdown(&card, paths).as_bytes())?;
    Ok(card)
}

/// `tch = "=0.24.0"` of the trainer's manifest.
fn tch_requirement(manifest: &Path) -> Option<String> {
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    let tch = v.get("dependencies")?.get("tch")?;
    tch.as_str().or_else(|| tch.get("version")?.as_str()).map(String::from)
}

/// `const WISE_FT_ALPHA: f64 = 0.1;` in train.rs.
fn wise_ft_alpha(source: &str) -> Option<f64> {
    let line = source.lines().find(|l| l.trim_start().starts_with("const WISE_FT_ALPHA"))?;
    line.split_once('=')?.1.split(';').next()?.trim().replace('_', "").parse().ok()
}

fn metrics_lines(m: &Metrics) -> String {
    let folds = if m.folds.is_empty() {
        String::new()
    } else {
        format!(
            " (mean of {} folds: {})",
            m.folds.len(),
            m.folds.iter().map(|f| format!("{f:.2}")).collect::<Vec<_>>().join(", ")
        )
    };
    format!(
        "mean rank **{:.2}**{folds} (random {:.1}, N = {}), median rank {:.1}, image→text R@1/5/10 {:.1}/{:.1}/{:.1} %, \
         text→image R@1/5/10 {:.1}/{:.1}/{:.1} %",
        m.mean_rank,
        m.random_mean_rank,
        m.n,
        m.median_rank,
        m.i2t_r1,
        m.i2t_r5,
        m.i2t_r10,
        m.t2i_r1,
        m.t2i_r5,
        m.t2i_r10
    )
}

/// `MODEL_CARD.md`. The description and the diff are agent text: the one is a single cleaned line, the
/// other sits in a fence longer than any backtick run it contains.
fn markdown(c: &Card, paths: &Paths) -> String {
    let fp = &c.fingerprint;
    let mut s = format!(
        "# eCLIP model: {} {}\n\n> {}\n\n",
        c.role,
        c.run_id,
        md_escape(&crate::report::short_label(&c.description, 300))
    );
    s.push_str(&format!(
        "Experiment #{} on branch `{}`, started {}, seed {}; {}.\n\n",
        c.number,
        c.branch,
        c.started_at.format("%Y-%m-%d %H:%M UTC"),
        c.seed,
        match (&c.commit, c.kept) {
            (Some(commit), true) => format!("kept as commit `{commit}`"),
            (Some(commit), false) => format!("the baseline's train.rs, commit `{commit}`"),
            (None, _) => "not committed (its train.rs is `train.rs` here)".into(),
        }
    ));
    s.push_str("## Metrics\n\n");
    s.push_str(&format!("- **validation**: {}\n", metrics_lines(&c.validation)));
    match &c.test {
        Some(t) => s.push_str(&format!("- **test**: {} — {}\n", metrics_lines(t), c.test_note)),
        None => s.push_str(&format!("- **test**: {}\n", c.test_note)),
    }
    if let Some(steps) = c.reported.steps {
        s.push_str(&format!(
            "- as the trainer reported: {steps} steps, final loss {}\n",
            c.reported.final_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into())
        ));
    }
    s.push_str("\nMean rank is 0-indexed, (mean image→text + mean text→image) / 2, ties counted against the model; lower is better.\n\n");

    s.push_str("## Provenance\n\n");
    s.push_str(&format!(
        "| | |\n|---|---|\n| run | `{}` |\n| commit | {} |\n| baseline commit | `{}` |\n| train.rs SHA-256 | `{}` |\n\
         | fingerprint | `{}`: harness `{}`, data `{}`, validation N {}, budget {} s, profile `{}`, device `{}`, libtorch `{}`{} |\n\
         | harness | autoresearch-mcp {}, trainer harness `{}`, tch `{}` |\n| libtorch | {} |\n\
         | checkpoint | `{}` (SHA-256 `{}`){} |\n| model.safetensors | SHA-256 `{}`: {} tensors, {} parameters, {} |\n\
         | WiSE-FT | {} |\n\n",
        c.run_id,
        c.commit.as_deref().map(|x| format!("`{x}`")).unwrap_or("none (not kept)".into()),
        c.baseline_commit,
        c.train_rs_sha256,
        c.fingerprint_id,
        fp.harness,
        fp.data,
        fp.val_n,
        fp.budget_seconds,
        fp.profile,
        fp.device,
        fp.libtorch,
        if fp.towers.is_empty() { ", random-init towers".to_string() } else { format!(", pretrained towers `{}`", fp.towers) },
        c.harness.autoresearch_mcp,
        c.harness.hash,
        c.harness.tch.as_deref().unwrap_or("?"),
        c.harness.libtorch,
        c.model.checkpoint,
        c.model.checkpoint_sha256,
        c.model.checkpoint_note.as_deref().map(|n| format!("; {n}")).unwrap_or_default(),
        c.model.sha256,
        c.model.tensors,
        c.model.parameters,
        c.model.dtypes.join(", "),
        match c.wise_ft_alpha {
            Some(a) if a > 0.0 && !fp.towers.is_empty() => format!(
                "alpha {a}: the pretrained towers were pulled back to {:.0}% of their pretrained weights by train.rs before the checkpoint was written; this file has it applied",
                a * 100.0
            ),
            Some(a) if a > 0.0 => format!("alpha {a}, but no tower was loaded pretrained: nothing to pull back"),
            Some(_) => "off (alpha 0)".into(),
            None => "train.rs sets no WISE_FT_ALPHA".into(),
        },
    ));

    s.push_str("## train.rs, diff from the baseline\n\n");
    if c.diff_from_baseline.trim().is_empty() {
        s.push_str("None: this is the baseline's train.rs.\n\n");
    } else {
        let fence = "`".repeat(longest_backtick_run(&c.diff_from_baseline).max(2) + 1);
        s.push_str(&format!("{fence}diff\n{}{fence}\n\n", c.diff_from_baseline));
    }

    let profile = &c.model.profile;
    let run_bin = paths.run_dir(&c.run_id).join("bin/train");
    s.push_str(&format!(
        "## Loading it\n\n\
         `model.safetensors` holds every variable of the model by its VarStore path (`image_encoder.backbone.*` a timm \
         ViT, `text_encoder.backbone.*` a Hugging Face BERT/DistilBERT, `*.projector.*`, `heatmap_processor.*`, \
         `log_temperature`), f32, plus `harness.vocab_size` (i64, not a variable). The projection width is {}, the \
         vocabulary {} tokens, the profile `{profile}` (image side and tower sizes: `eclip_harness::Profile`, \
         `PROFILES` in eclip_reference.py).\n\n\
         **With the trainer** (Rust, libtorch {}): the run's own binary loads it through the harness's checkpoint \
         loader (`eclip_harness::checkpoint::load`: every variable by name, an error naming each missing tensor or \
         wrong shape) in its embed phases (trainer/CONTRACT.md):\n\n\
         ```sh\n\
         P=$(scripts/python-env.sh)\n\
         AR_PHASE=embed-images AR_PROFILE={profile} AR_DEVICE=cpu AR_CHECKPOINT=$PWD/model.safetensors \\\n  \
         AR_DATA=images.safetensors AR_OUT=out/ LD_LIBRARY_PATH=$P/lib/python3.11/site-packages/torch/lib \\\n  \
         {}\n\
         ```\n\n\
         `AR_DATA` holds `images` (u8, N×3×S×S); `AR_PHASE=embed-texts` takes `caption_ids` and `caption_mask` (i64, \
         N×L) instead. Either writes `out/embeddings.safetensors` (`embeddings`, f32 N×D, not normalised). A train.rs \
         built from `train.rs` here loads it the same way.\n\n\
         **With PyTorch**: `eclip_reference.py` (here) is the PyTorch port of the reference trainer; its `state_dict` \
         names equal the checkpoint's, so\n\n\
         ```sh\n\
         $P/bin/python load_pytorch.py                                         # load_state_dict(strict=True)\n\
         $P/bin/python load_pytorch.py --embed images.safetensors --out e.safetensors   # the trainer's embeddings\n\
         ```\n\n\
         or, in Python:\n\n\
         ```python\n\
         import eclip_reference as ref\n\
         from safetensors.torch import load_file\n\
         state = load_file(\"model.safetensors\")\n\
         vocab_size = int(state.pop(\"harness.vocab_size\")[0])\n\
         ref.PROJ_DIM = state[\"image_encoder.projector.weight\"].shape[0]\n\
         model = ref.build_model(ref.PROFILES[\"{profile}\"], vocab_size{})\n\
         model.load_state_dict(state, strict=True)\n\
         model.eval()  # encode_image(ref.normalize_images(u8_images)), encode_text(ids, mask)\n\
         ```\n\n\
         The port builds the baseline's architecture at the checkpoint's projection width. If the diff above changes \
         the model's structure (layers, heads, a new module), mirror it in eclip_reference.py: `load_state_dict` \
         names every key that does not fit.\n",
        c.model.proj_dim.map(|d| d.to_string()).unwrap_or("?".into()),
        c.model.vocab_size.map(|v| v.to_string()).unwrap_or("?".into()),
        c.harness.libtorch,
        run_bin.display(),
        if fp.towers.is_empty() {
            String::new()
        } else {
            ", text_tower=TEXT_DIR, image_tower=IMAGE_DIR  # the [model] towers of autoresearch.toml".into()
        },
    ));
    s
}

/// Agent text as literal Markdown on one line: the characters that open links, images, HTML, emphasis,
/// code and tables are backslash-escaped.
fn md_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\`*_[]<>!|~".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut best, mut cur) = (0, 0);
    for ch in s.chars() {
        cur = if ch == '`' { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wise_ft_alpha_is_read_from_train_rs() {
        let src = "const X: f64 = 1.0;\nconst WISE_FT_ALPHA: f64 = 0.1; // (reference final: 0.1)\n";
        assert_eq!(wise_ft_alpha(src), Some(0.1));
        assert_eq!(wise_ft_alpha("const WISE_FT_ALPHA: f64 = 0.0;"), Some(0.0));
        assert_eq!(wise_ft_alpha("fn main() {}"), None);
    }

    #[test]
    fn descriptions_cannot_inject_markdown() {
        assert_eq!(md_escape("![x](http://e/t.png) <b>"), "\\!\\[x\\](http://e/t.png) \\<b\\>");
    }

    #[test]
    fn diffs_are_fenced_longer_than_their_backticks() {
        assert_eq!(longest_backtick_run("a ``` b `` c"), 3);
        assert_eq!(longest_backtick_run("none"), 0);
    }
}
