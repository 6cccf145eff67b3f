//! The results ledger, `.autoresearch/runs.jsonl`: append-only, one fsynced JSON line per event.
//! A run is `started` before anything runs and `finished` after; `kept` and `reverted` record the
//! agent's decisions. Folding the events gives the runs table that `read_metrics` serves. A server
//! that crashed leaves `started` without `finished`: the next server marks those runs `abandoned`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::Head;
use crate::fsutil::open_append;
use crate::score::Metrics;

/// Everything that must match for two runs' scores to be comparable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Fingerprint {
    /// SHA-256 over the fixed harness (every trainer file but train.rs).
    pub harness: String,
    /// SHA-256 of the prepared training and validation tensors.
    pub data: String,
    /// Validation size N (random retrieval mean rank is (N-1)/2).
    pub val_n: usize,
    pub budget_seconds: u64,
    pub profile: String,
    pub device: String,
    pub libtorch: String,
    /// The pretrained towers (names, sizes and a hash of their first bytes); empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub towers: String,
}

impl Fingerprint {
    /// A short id for tables: the first 8 hex digits of the fingerprint's hash.
    pub fn short(&self) -> String {
        crate::fsutil::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())[..8].to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, no outcome yet.
    Running,
    /// Built, trained, embedded and scored.
    Ok,
    BuildFailed,
    /// The trainer exited with an error or was killed by a signal.
    Crashed,
    /// Killed at budget + grace.
    Timeout,
    /// Embeddings of the wrong shape, non-finite or zero rows: a crash, not a score.
    InvalidOutput,
    /// Stopped by the client (cancellation or server shutdown).
    Cancelled,
    /// A previous server died during the run.
    Abandoned,
}

/// Timings measured by the server (trusted), in seconds; phases that ran per seed or fold add up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct PhaseTimes {
    pub prepare: Option<f64>,
    pub build: Option<f64>,
    pub train: Option<f64>,
    pub embed_images: Option<f64>,
    pub embed_texts: Option<f64>,
    pub score: Option<f64>,
    /// The experiment, build to last score (not `setup`).
    pub total: f64,
    /// Before the experiment: disk and sandbox checks, snapshot, data cache check, fingerprint, ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<f64>,
    /// `train` split at the landmarks the trainer's harness reported (its timeline; the server's clock
    /// at both ends): spawn to the first step (sandbox start, process start, data load, model build)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_startup: Option<f64>,
    /// ...of which the sandbox's set-up and the process's start until the harness runs (libtorch
    /// loaded)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_start: Option<f64>,
    /// ...and loading the prepared data...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_load: Option<f64>,
    /// ...first step to the end of the last (the training itself)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loop: Option<f64>,
    /// ...and the rest: checkpoint and summary written, process exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_exit: Option<f64>,
}

impl PhaseTimes {
    /// Seconds of the run that were not the training loop (setup included), where the loop is known.
    pub fn overhead(&self) -> Option<f64> {
        self.train_loop.map(|l| (self.total + self.setup.unwrap_or(0.0) - l).max(0.0))
    }

    /// Time spent before training steps: setup, build, trainer start-up (when known; start-ups of
    /// several seeds or folds add up).
    pub fn to_first_step(&self) -> Option<f64> {
        Some(self.setup.unwrap_or(0.0) + self.build.unwrap_or(0.0) + self.train_startup?)
    }

    /// Time spent after training steps: trainer exit, embeds, score (when known; added up likewise).
    pub fn after_last_step(&self) -> Option<f64> {
        let exit = self.train_exit?;
        Some(exit + self.embed_images.unwrap_or(0.0) + self.embed_texts.unwrap_or(0.0) + self.score.unwrap_or(0.0))
    }
}

/// What the trainer said about itself: shown as reported, never trusted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Reported {
    pub steps: Option<u64>,
    pub final_loss: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        run_id: String,
        at: DateTime<Utc>,
        train_hash: String,
        description: String,
        fingerprint: Fingerprint,
        seed: u64,
        /// Same train.rs and fingerprint as an earlier run: allowed, but flagged.
        repeat_of: Option<String>,
        audit: Head,
    },
    Finished {
        run_id: String,
        at: DateTime<Utc>,
        status: RunStatus,
        metrics: Option<Metrics>,
        reported: Reported,
        /// Boxed: the largest field, which would size every event.
        phases: Box<PhaseTimes>,
        /// Training ran past its budget (killed or not): never committable.
        overran: bool,
        message: Option<String>,
        audit: Head,
    },
    Kept {
        run_id: String,
        at: DateTime<Utc>,
        commit: String,
        train_hash: String,
        audit: Head,
    },
    Reverted {
        at: DateTime<Utc>,
        /// The train.rs that was discarded, and its diff against the kept commit.
        train_hash: String,
        diff_file: PathBuf,
        audit: Head,
    },
}

impl Event {
    pub fn audit_head(&self) -> &Head {
        match self {
            Event::Started { audit, .. }
            | Event::Finished { audit, .. }
            | Event::Kept { audit, .. }
            | Event::Reverted { audit, .. } => audit,
        }
    }
}

/// One run, folded from its events.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    pub id: String,
    /// Position in the ledger, 1-based: the experiment number.
    pub number: usize,
    pub started_at: DateTime<Utc>,
    pub train_hash: String,
    pub description: String,
    pub status: RunStatus,
    pub metrics: Option<Metrics>,
    pub reported: Reported,
    pub phases: PhaseTimes,
    pub overran: bool,
    pub kept: bool,
    pub commit: Option<String>,
    pub repeat_of: Option<String>,
    pub seed: u64,
    pub message: Option<String>,
    pub fingerprint: Fingerprint,
}

impl Run {
    pub fn mean_rank(&self) -> Option<f64> {
        self.metrics.as_ref().map(|m| m.mean_rank)
    }
}

pub struct Ledger {
    path: PathBuf,
    events: Vec<Event>,
}

impl Ledger {
    /// Loads the ledger. A torn last line (a crash mid-write) is ignored; any other bad line is an error.
    pub fn open(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut events = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Event>(line) {
                Ok(ev) => events.push(ev),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                    tracing::warn!("ignoring a torn last line in {}", path.display());
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("{} line {} is malformed", path.display(), i + 1));
                }
            }
        }
        Ok(Self { path: path.to_path_buf(), events })
    }

    pub fn append(&mut self, ev: Event) -> Result<()> {
        let mut line = serde_json::to_string(&ev)?;
        line.push('\n');
        let mut f = open_append(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data().context("fsync ledger")?;
        self.events.push(ev);
        Ok(())
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// All runs in start order.
    pub fn runs(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for ev in &self.events {
            match ev {
                Event::Started { run_id, at, train_hash, description, fingerprint, seed, repeat_of, .. } => {
                    index.insert(run_id.clone(), runs.len());
                    runs.push(Run {
                        id: run_id.clone(),
                        number: runs.len() + 1,
                        started_at: *at,
                        train_hash: train_hash.clone(),
                        description: description.clone(),
                        status: RunStatus::Running,
                        metrics: None,
                        reported: Reported::default(),
                        phases: PhaseTimes::default(),
                        overran: false,
                        kept: false,
                        commit: None,
                        repeat_of: repeat_of.clone(),
                        seed: *seed,
                        message: None,
                        fingerprint: fingerprint.clone(),
                    });
                }
                Event::Finished { run_id, status, metrics, reported, phases, overran, message, .. } => {
                    if let Some(&i) = index.get(run_id) {
                        let r = &mut runs[i];
                        r.status = *status;
                        r.metrics = metrics.clone();
                        r.reported = reported.clone();
                        r.phases = (**phases).clone();
                        r.overran = *overran;
                        r.message = message.clone();
                    }
                }
                Event::Kept { run_id, commit, .. } => {
                    if let Some(&i) = index.get(run_id) {
                        runs[i].kept = true;
                        runs[i].commit = Some(commit.clone());
                    }
                }
                Event::Reverted { .. } => {}
            }
        }
        runs
    }

    /// Runs that were started but never finished (the server that ran them died).
    pub fn unfinished(&self) -> Vec<String> {
        self.runs().into_iter().filter(|r| r.status == RunStatus::Running).map(|r| r.id).collect()
    }
}

/// The run that sets the bar: the best (lowest mean rank) kept run with this fingerprint, or else
/// the best run of the baseline train.rs.
pub fn reference_run<'a>(runs: &'a [Run], fp: &Fingerprint, baseline_hash: &str) -> Option<&'a Run> {
    let comparable = |r: &&Run| r.status == RunStatus::Ok && &r.fingerprint == fp && !r.overran;
    let best_of = |it: Vec<&'a Run>| {
        it.into_iter().min_by(|a, b| a.mean_rank().unwrap_or(f64::MAX).total_cmp(&b.mean_rank().unwrap_or(f64::MAX)))
    };
    best_of(runs.iter().filter(comparable).filter(|r| r.kept).collect())
        .or_else(|| best_of(runs.iter().filter(comparable).filter(|r| r.train_hash == baseline_hash).collect()))
}
