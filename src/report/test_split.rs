//! `report --test`: the baseline and every kept run scored on the **test** split, which no phase of the
//! loop ever mounts, so the researcher sees whether the validation gains of the night hold.
//!
//! The test split is prepared with the rest of the dataset (`prepared/test.safetensors`, when the
//! dataset has one) and is handed out exactly like validation ([`Runner::evaluate`]): dealt anew for
//! every scoring into two files, images and texts, each in its own secret row order that only the
//! server's memory holds; each run's own trainer (`runs/<id>/bin/train`) embeds them from its own
//! checkpoint in two sandboxed processes, and the server scores the embeddings ([`crate::score`]).
//!
//! Results go to `.autoresearch/test_scores.json`, which `report` (test columns, `test.md`, a section
//! of report.html) and `export` (the model card) read. A run is scored again only when its checkpoint
//! or the test split changed. A run that cannot be scored (checkpoint or binary gone, trained on other
//! data, embeddings invalid) is listed with the reason. Cross-validated runs are scored with their first
//! fold's checkpoint, and the table says so.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data::{self, Prepared};
use crate::experiment::{Runner, Toolchain, Trainer};
use crate::fsutil::{read_capped, sha256_hex, write_atomic};
use crate::ledger::{Ledger, Run};
use crate::paths::Paths;
use crate::pyenv::PyEnv;
use crate::report::kind::{Kind, short_label};
use crate::score::Metrics;
use crate::workspace::WorkspaceState;

/// Where the test scores are kept, inside `.autoresearch/`.
pub const SCORES_FILE: &str = "test_scores.json";

/// The last `report --test`: one row per baseline or kept run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestScores {
    pub generated_at: DateTime<Utc>,
    /// The prepared test split: SHA-256 (16 hex digits) of `test.safetensors` and its size.
    pub test_hash: String,
    pub test_n: usize,
    /// Short id of the fingerprint the current configuration gives (runs of others are skipped).
    pub fingerprint: String,
    pub rows: Vec<TestRow>,
}

/// One run on the test split: scored (`metrics`), or not (`skipped` says why).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestRow {
    pub run_id: String,
    pub number: usize,
    /// `kept` or `baseline`.
    pub kind: String,
    pub description: String,
    pub val_mean_rank: Option<f64>,
    pub metrics: Option<Metrics>,
    pub skipped: Option<String>,
    /// The checkpoint scored, relative to the workspace, and its SHA-256.
    pub checkpoint: Option<String>,
    pub checkpoint_sha256: Option<String>,
    /// E.g. which fold's checkpoint a cross-validated run was scored with.
    pub note: Option<String>,
    pub scored_at: Option<DateTime<Utc>>,
}

impl TestScores {
    pub fn path(paths: &Paths) -> PathBuf {
        paths.state().join(SCORES_FILE)
    }

    /// The scores of the last `report --test`, if any (an unreadable file counts as none).
    pub fn load(paths: &Paths) -> Option<TestScores> {
        let bytes = read_capped(&Self::path(paths), 64 << 20).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The scored row of `run_id`.
    pub fn scored(&self, run_id: &str) -> Option<&TestRow> {
        self.rows.iter().find(|r| r.run_id == run_id && r.metrics.is_some())
    }

    /// The Markdown table: run, kind, description, validation and test mean rank, test recalls.
    pub fn markdown(&self) -> String {
        let mut t = format!(
            "Test split: {} pairs (random retrieval mean rank {:.1}), data {}, fingerprint {}, scored {}\n\n",
            self.test_n,
            (self.test_n as f64 - 1.0) / 2.0,
            self.test_hash,
            self.fingerprint,
            self.generated_at.format("%Y-%m-%d %H:%M UTC")
        );
        t.push_str(
            "| # | run | kind | val mean rank | test mean rank | test median | test i2t R@1/5/10 | test t2i R@1/5/10 | note | description |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        let cell = |s: &str| short_label(s, 300).replace('\\', "\\\\").replace('|', "\\|");
        for r in &self.rows {
            let m = r.metrics.as_ref();
            let note = match (&r.skipped, &r.note) {
                (Some(why), _) => format!("not scored: {why}"),
                (None, Some(n)) => n.clone(),
                (None, None) => String::new(),
            };
            t.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.number,
                r.run_id,
                r.kind,
                r.val_mean_rank.map(|v| format!("{v:.2}")).unwrap_or_default(),
                m.map(|m| format!("{:.2}", m.mean_rank)).unwrap_or_default(),
                m.map(|m| format!("{:.1}", m.median_rank)).unwrap_or_default(),
                m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.i2t_r1, m.i2t_r5, m.i2t_r10)).unwrap_or_default(),
                m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.t2i_r1, m.t2i_r5, m.t2i_r10)).unwrap_or_default(),
                cell(&note),
                cell(&r.description),
            ));
        }
        t
    }
}

/// The prepared test split of a cache folder; every scoring deals it anew ([`data::deal_halves`]).
#[derive(Debug, Clone)]
pub struct TestSplit {
    pub source: PathBuf,
    pub n: usize,
    pub hash: String,
}

#[derive(Serialize, Deserialize)]
struct TestReady {
    hash: String,
    n: usize,
}

/// The test split of the cache `prepared`, checked and hashed on first use (`private/test_ready.json`).
/// Under a lock, so two reports never write it at once.
pub fn ensure_test_split(prepared: &Prepared) -> Result<TestSplit> {
    let dir = &prepared.dir;
    let source = prepared.prepared_dir().join("test.safetensors");
    if !source.is_file() {
        bail!(
            "the prepared data {} has no test split: the dataset has no test file (test.jsonl, Ukiyo-eVG's \
             ukiyoe_vg_test_annotated.jsonl, or data.test in autoresearch.toml), so there is nothing to score on",
            dir.display()
        );
    }
    let lock = std::fs::File::create(dir.join(".test-split.lock"))?;
    fs2::FileExt::lock_exclusive(&lock).context("lock the prepared data folder")?;
    let ready_file = dir.join("private/test_ready.json");
    let ready: Option<TestReady> = std::fs::read(&ready_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(ready) = ready {
        return Ok(TestSplit { source, n: ready.n, hash: ready.hash });
    }
    let bytes = read_capped(&source, data::MAX_SPLIT_BYTES).context("read the prepared test split")?;
    let st = SafeTensors::deserialize(&bytes).context("parse test.safetensors")?;
    let n = data::rows(&st, "images")?;
    for key in ["caption_ids", "caption_mask"] {
        if data::rows(&st, key)? != n {
            bail!("test.safetensors: {key} has a different number of rows than images");
        }
    }
    if n < 2 {
        bail!("the test split has {n} usable pairs: too few to rank");
    }
    let hash = sha256_hex(&bytes)[..16].to_string();
    std::fs::create_dir_all(dir.join("private"))?;
    write_atomic(&ready_file, serde_json::to_string(&TestReady { hash: hash.clone(), n })?.as_bytes())?;
    Ok(TestSplit { source, n, hash })
}

/// Holds the workspace's one-server lock: test scoring would compete with a server's runs for the
/// machine (and skew their wall-clock budget), so it waits for the loop to be over.
fn lock_workspace(paths: &Paths) -> Result<std::fs::File> {
    match crate::fsutil::lock_exclusive(&paths.lock(), &format!("pid {} (report --test)", std::process::id()))? {
        Ok(f) => Ok(f),
        Err(holder) => bail!(
            "a server is serving {} ({holder}): stop it before `report --test`, whose embedding jobs would compete \
             with its experiments",
            paths.root.display(),
        ),
    }
}

/// The sandbox backend the configuration names, as `serve` makes it.
/// SHA-256 of a file that a job wrote, never through a symlink, streamed.
fn file_sha256(path: &Path) -> Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    if !f.metadata()?.file_type().is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn is_regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.file_type().is_file()).unwrap_or(false)
}

/// The checkpoint a run is scored with, and a note when it is not the obvious one: a run repeated over
/// seeds trained once per seed, a cross-validated run once per fold; the first seed's and the first
/// fold's checkpoint stands for it.
pub fn checkpoint_of(paths: &Paths, run: &Run) -> (PathBuf, Option<String>) {
    let mut dir = paths.run_dir(&run.id);
    let mut notes = vec![];
    let seeds = run.metrics.as_ref().map(|m| m.seeds.len()).unwrap_or(0);
    let seed_dir = dir.join(format!("seed-{}", run.seed));
    if seeds > 1 || seed_dir.is_dir() {
        notes.push(format!("seed {} of {seeds}", run.seed));
        dir = seed_dir;
    }
    let folds = run.metrics.as_ref().map(|m| m.folds.len()).unwrap_or(0);
    let cross_validated = folds > 1 || dir.join("fold-1").is_dir();
    if cross_validated {
        let k = if folds > 1 { folds.to_string() } else { "k".into() };
        notes.push(format!("fold 1 of {k}"));
        dir = dir.join("fold-1");
    }
    let note = (!notes.is_empty()).then(|| {
        let cv = if cross_validated { " (cross-validated: trained on that fold's training part)" } else { "" };
        format!("{}'s checkpoint{cv}", notes.join(", "))
    });
    (dir.join("train/checkpoint.safetensors"), note)
}

/// Scores the baseline and every kept run on the test split, writes `.autoresearch/test_scores.json`
/// and returns the scores. `say` receives one progress line at a time.
pub async fn score_runs(paths: &Paths, cancel: &CancellationToken, say: &dyn Fn(&str)) -> Result<TestScores> {
    let _lock = lock_workspace(paths)?;
    let config = Config::load(&paths.config())?;
    let runner = Runner {
        paths: paths.clone(),
        config: config.clone(),
        pyenv: PyEnv::locate_cancellable(&paths.root, cancel).await?,
        trainer: Trainer::Build(Toolchain::detect()?),
        sandbox: crate::sandbox::configured(&config, false)?,
    };
    let (phase, mut phase_rx) = tokio::sync::watch::channel(String::new());
    let echo = tokio::spawn(async move {
        while phase_rx.changed().await.is_ok() {
            let line = phase_rx.borrow_and_update().clone();
            eprintln!("[test] {line}");
        }
    });
    // The data the current configuration trains on (its fingerprint decides which runs are comparable),
    // and the fixed split that holds the test set (cross-validation folds do not carry it).
    let data = runner.ensure_data(cancel, &phase).await?;
    let fp = runner.fingerprint(&data)?;
    let fixed = if data.len() == 1 {
        data[0].clone()
    } else {
        let mut fixed = runner.clone();
        fixed.config.experiment.folds = 0;
        fixed.ensure_data(cancel, &phase).await?.remove(0)
    };
    echo.abort();
    let test = ensure_test_split(&fixed)?;
    say(&format!("test split: {} pairs ({})", test.n, paths.relative(&fixed.dir).display()));

    let ledger = Ledger::open(&paths.ledger())?;
    let state: Option<WorkspaceState> =
        std::fs::read(paths.workspace_state()).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let baseline = state.map(|s| s.baseline_train_hash);
    let previous = TestScores::load(paths);
    let mut rows = vec![];
    for run in ledger.runs() {
        let kind = Kind::of(&run, baseline.as_deref());
        if !matches!(kind, Kind::Kept | Kind::Baseline) {
            continue;
        }
        if cancel.is_cancelled() {
            bail!("cancelled");
        }
        let mut row = TestRow {
            run_id: run.id.clone(),
            number: run.number,
            kind: kind.as_str().into(),
            description: run.description.clone(),
            val_mean_rank: run.mean_rank(),
            metrics: None,
            skipped: None,
            checkpoint: None,
            checkpoint_sha256: None,
            note: None,
            scored_at: None,
        };
        let outcome = score_run(&runner, &run, &fp, &test, previous.as_ref(), &mut row, cancel).await;
        match outcome {
            Ok(()) => {}
            Err(e) => row.skipped = Some(format!("{e:#}")),
        }
        match (&row.metrics, &row.skipped) {
            (Some(m), _) => say(&format!(
                "{} ({}): test mean rank {:.2} (validation {}){}",
                run.id,
                row.kind,
                m.mean_rank,
                row.val_mean_rank.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
                row.note.as_deref().map(|n| format!("; {n}")).unwrap_or_default()
            )),
            (None, Some(why)) => say(&format!("{} ({}): not scored: {why}", run.id, row.kind)),
            (None, None) => {}
        }
        rows.push(row);
    }
    let scores =
        TestScores { generated_at: Utc::now(), test_hash: test.hash, test_n: test.n, fingerprint: fp.short(), rows };
    write_atomic(&TestScores::path(paths), serde_json::to_string_pretty(&scores)?.as_bytes())?;
    Ok(scores)
}

/// Scores one run into `row`; an error is the reason it was not scored.
async fn score_run(
    runner: &Runner,
    run: &Run,
    fp: &crate::ledger::Fingerprint,
    test: &TestSplit,
    previous: Option<&TestScores>,
    row: &mut TestRow,
    cancel: &CancellationToken,
) -> Result<()> {
    let paths = &runner.paths;
    let f = &run.fingerprint;
    if f.data != fp.data || f.profile != fp.profile || f.towers != fp.towers {
        bail!(
            "trained on other data, profile or towers (fingerprint {}; the current configuration gives {}): \
             score it with the autoresearch.toml it ran with",
            f.short(),
            fp.short()
        );
    }
    let run_dir = paths.run_dir(&run.id);
    let trainer = run_dir.join("bin/train");
    let (ckpt, note) = checkpoint_of(paths, run);
    row.note = note;
    for (what, p) in [("checkpoint", &ckpt), ("trainer binary", &trainer)] {
        if !is_regular(p) {
            bail!("its {what} {} is missing", paths.relative(p).display());
        }
    }
    row.checkpoint = Some(paths.relative(&ckpt).display().to_string());
    let sha = file_sha256(&ckpt)?;
    row.checkpoint_sha256 = Some(sha.clone());
    // Already scored with this checkpoint on this test split: keep it.
    if let Some(old) = previous
        && old.test_hash == test.hash
        && let Some(r) = old.scored(&run.id)
        && r.checkpoint_sha256.as_deref() == Some(sha.as_str())
    {
        row.metrics = r.metrics.clone();
        row.scored_at = r.scored_at;
        return Ok(());
    }
    let out = run_dir.join("test");
    // Nothing of an earlier attempt may be read back as this one's output.
    let _ = std::fs::remove_dir_all(&out);
    let (phase, _) = tokio::sync::watch::channel(String::new());
    let eval = runner.evaluate(&trainer, &test.source, test.n, &ckpt, &out, run.seed, "", cancel, &phase).await?;
    match eval.result {
        Ok(m) => row.metrics = Some(m),
        // Only the status: embed output could carry test data.
        Err((status, why)) => bail!("{} ({status:?}; logs in {})", why, paths.relative(&out).display()),
    }
    row.scored_at = Some(Utc::now());
    Ok(())
}
