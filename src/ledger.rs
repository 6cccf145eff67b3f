//! The results ledger, `.autoresearch/runs.jsonl`: append-only, one fsynced JSON line per event.
//! A run is `started` before anything runs and `finished` after; `kept` and `reverted` record the
//! agent's decisions. Folding the events gives the runs table that `read_metrics` serves. A server
//! that crashed leaves `started` without `finished`: the next server marks those runs `abandoned`.
//!
//! Written through a [`crate::durable::AppendFile`] (a torn last line is set aside, never appended
//! onto; a failed append is undone; the file is put back if deleted under the server). Readers skip
//! a line that is not an event, naming its file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::Head;
use crate::durable::{AppendFile, LineProblem, Repair, parse_lines, read_or_empty};
use crate::score::Metrics;

#[cfg(test)]
pub mod fixtures;
pub mod noise;
pub mod standings;
pub use standings::Standings;

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

impl RunStatus {
    /// The word the ledger, the replies and the report use (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::BuildFailed => "build_failed",
            RunStatus::Crashed => "crashed",
            RunStatus::Timeout => "timeout",
            RunStatus::InvalidOutput => "invalid_output",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// One seed of a run: its mean rank (scored by the server) and how its training went (the steps and the
/// budget cut as the trainer reported them, the loop time from its timeline within the server's clock).
/// Several folds of one seed add up (steps, loop time) or average (mean rank).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeedResult {
    pub seed: u64,
    /// The seed's mean rank; `None` when its training or scoring failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_rank: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// First step to the end of the last, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_s: Option<f64>,
    /// Training stopped because the budget was spent, before train.rs's own schedule ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_cut: bool,
}

impl SeedResult {
    /// This seed's steps over its own loop time.
    pub fn steps_per_s(&self) -> Option<f64> {
        let (steps, secs) = (self.steps?, self.loop_s?);
        (secs > 0.0).then(|| steps as f64 / secs)
    }
}

/// What the trainer said about itself: shown as reported, never trusted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Reported {
    pub steps: Option<u64>,
    pub final_loss: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub device: Option<String>,
    /// The trainer stopped at the budget before its own schedule ended (the harness saw the time up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_cut: bool,
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
        /// The first seed (and the only one of a single-seed run).
        seed: u64,
        /// Every seed the run trains, in order, when it names more than one (older rows: `seed`,
        /// `seed + 1`, ... as many as its metrics have seeds).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seeds: Vec<u64>,
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
        /// Each seed trained, in order (absent in older rows).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        per_seed: Vec<SeedResult>,
        audit: Head,
    },
    Kept {
        run_id: String,
        at: DateTime<Utc>,
        commit: String,
        train_hash: String,
        /// Why it was kept although it did not beat the best kept result (`commit`'s `reason`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
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
    /// The reason given when it was kept (required when it did not beat the best kept result).
    #[serde(default)]
    pub kept_reason: Option<String>,
    pub commit: Option<String>,
    /// When it was last kept: the newest kept run is the head of the experiment branch.
    #[serde(default)]
    pub kept_at: Option<DateTime<Utc>>,
    pub repeat_of: Option<String>,
    pub seed: u64,
    /// The seeds it trains when it names more than one (see [`Run::seeds`]).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Each seed trained (absent in older rows; see [`Run::seed_ranks`]).
    #[serde(default)]
    pub per_seed: Vec<SeedResult>,
    pub message: Option<String>,
    pub fingerprint: Fingerprint,
}

impl Run {
    pub fn mean_rank(&self) -> Option<f64> {
        self.metrics.as_ref().map(|m| m.mean_rank)
    }

    /// The seeds this run trains: as recorded, else `seed`, `seed + 1`, ... one per seed sample.
    pub fn seeds(&self) -> Vec<u64> {
        if !self.seeds.is_empty() {
            return self.seeds.clone();
        }
        let n = self.metrics.as_ref().map_or(1, |m| m.samples().len());
        (0..n as u64).map(|i| self.seed.wrapping_add(i)).collect()
    }

    /// Each seed's mean rank, paired with its seed: the evidence paired comparisons are made of.
    pub fn seed_ranks(&self) -> Vec<(u64, f64)> {
        let Some(m) = &self.metrics else { return vec![] };
        self.seeds().into_iter().zip(m.samples()).collect()
    }

    /// Training throughput: each seed's steps over that seed's loop time, averaged over seeds (seeds
    /// run one after another, so the run's total time would understate it). Older rows: the reported
    /// steps over the loop time.
    pub fn steps_per_s(&self) -> Option<f64> {
        let per_seed: Vec<f64> = self.per_seed.iter().filter_map(SeedResult::steps_per_s).collect();
        if !per_seed.is_empty() {
            return Some(per_seed.iter().sum::<f64>() / per_seed.len() as f64);
        }
        let secs = self.phases.train_loop.filter(|s| *s > 0.0)?;
        Some(self.reported.steps? as f64 / secs)
    }

    /// The seeds whose training the budget cut short.
    pub fn budget_cut_seeds(&self) -> Vec<u64> {
        let mut cut: Vec<u64> = self.per_seed.iter().filter(|s| s.budget_cut).map(|s| s.seed).collect();
        if cut.is_empty() && self.per_seed.is_empty() && self.reported.budget_cut {
            cut.push(self.seed);
        }
        cut
    }
}

pub struct Ledger {
    path: PathBuf,
    events: Vec<Event>,
    /// The line number of each event.
    lines: Vec<u64>,
    /// Lines that are not events (named with their line number; readers skip them, the writer
    /// never drops them).
    problems: Vec<LineProblem>,
    /// The writer's open file (the server's, or the first `append`'s).
    file: Option<AppendFile>,
}

fn valid_event(line: &[u8]) -> bool {
    serde_json::from_slice::<Event>(line).is_ok()
}

fn parse_events(path: &Path, bytes: &[u8]) -> (Vec<Event>, Vec<u64>, Vec<LineProblem>) {
    let (events, problems) =
        parse_lines(path, bytes, |l| serde_json::from_slice::<Event>(l).map_err(|e| e.to_string()));
    let lines = events.iter().map(|(n, _)| *n).collect();
    (events.into_iter().map(|(_, e)| e).collect(), lines, problems)
}

impl Ledger {
    /// Loads the ledger for reading; never modifies it. A line that is not an event (a bad byte, a
    /// torn last line) is reported with its file and line number and skipped.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_or_empty(path)?;
        let (events, lines, problems) = parse_events(path, &bytes);
        for p in &problems {
            tracing::warn!("{p}");
        }
        Ok(Self { path: path.to_path_buf(), events, lines, problems, file: None })
    }

    /// Loads the ledger as its writer (the server): the file stays open, a torn last line is set
    /// aside into `runs.jsonl.torn` (see [`Ledger::take_repairs`]); malformed middle lines are
    /// reported and kept where they are.
    pub fn open_for_append(path: &Path) -> Result<Self> {
        let (file, bytes) = AppendFile::open(path, valid_event)?;
        let (events, lines, problems) = parse_events(path, &bytes);
        for p in &problems {
            tracing::warn!("{p}; the server keeps the line and appends after it");
        }
        Ok(Self { path: path.to_path_buf(), events, lines, problems, file: Some(file) })
    }

    fn writer(&mut self) -> Result<&mut AppendFile> {
        if self.file.is_none() {
            let (file, _) = AppendFile::open(&self.path, valid_event)?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends one event: one fsynced line, on a line boundary; nothing is written if it fails.
    pub fn append(&mut self, ev: Event) -> Result<()> {
        let line = serde_json::to_string(&ev)?;
        let writer = self.writer()?;
        writer.append(line.as_bytes()).context("write the ledger")?;
        let n = writer.lines();
        self.lines.push(n);
        self.events.push(ev);
        Ok(())
    }

    /// Reserves room for `bytes` more bytes of ledger lines (a full disk fails here, before acting).
    pub fn reserve(&mut self, bytes: u64) -> Result<()> {
        self.writer()?.reserve(bytes)
    }

    /// Puts the file back if it was deleted under the writer (from the open file).
    pub fn ensure_in_place(&mut self) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => f.ensure_in_place(),
            None => Ok(()),
        }
    }

    /// What the writer set right since the last call (torn tail set aside, file restored).
    pub fn take_repairs(&mut self) -> Vec<Repair> {
        self.file.as_mut().map(AppendFile::take_repairs).unwrap_or_default()
    }

    /// Lines that are not events, with their line numbers.
    pub fn problems(&self) -> &[LineProblem] {
        &self.problems
    }

    /// The number of the next run: past every run id in the ledger (a run whose `started` line is
    /// unreadable still holds its number through its run folder, which the caller checks).
    pub fn next_run_number(&self) -> usize {
        let max_id = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Started { run_id, .. } => run_id.strip_prefix('r')?.parse::<usize>().ok(),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        max_id.max(self.runs().len()) + 1
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Each event with its 1-based line number in the file.
    pub fn numbered_events(&self) -> impl Iterator<Item = (u64, &Event)> {
        self.lines.iter().copied().zip(self.events.iter())
    }

    /// All runs in start order.
    pub fn runs(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for ev in &self.events {
            match ev {
                Event::Started { run_id, at, train_hash, description, fingerprint, seed, seeds, repeat_of, .. } => {
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
                        kept_reason: None,
                        commit: None,
                        kept_at: None,
                        repeat_of: repeat_of.clone(),
                        seed: *seed,
                        seeds: seeds.clone(),
                        per_seed: vec![],
                        message: None,
                        fingerprint: fingerprint.clone(),
                    });
                }
                Event::Finished { run_id, status, metrics, reported, phases, overran, message, per_seed, .. } => {
                    if let Some(&i) = index.get(run_id) {
                        let r = &mut runs[i];
                        r.status = *status;
                        r.metrics = metrics.clone();
                        r.reported = reported.clone();
                        r.phases = (**phases).clone();
                        r.overran = *overran;
                        r.message = message.clone();
                        r.per_seed = per_seed.clone();
                    }
                }
                Event::Kept { run_id, commit, reason, at, .. } => {
                    if let Some(&i) = index.get(run_id) {
                        runs[i].kept = true;
                        runs[i].kept_at = Some(*at);
                        runs[i].kept_reason = reason.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_are_the_serde_names() {
        use RunStatus::*;
        for st in [Running, Ok, BuildFailed, Crashed, Timeout, InvalidOutput, Cancelled, Abandoned] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
        }
    }

    fn started(id: &str) -> Event {
        Event::Started {
            run_id: id.into(),
            at: Utc::now(),
            train_hash: "h".into(),
            description: "d".into(),
            fingerprint: Fingerprint {
                harness: "h".into(),
                data: "d".into(),
                val_n: 1,
                budget_seconds: 1,
                profile: "tests".into(),
                device: "cpu".into(),
                libtorch: "x".into(),
                towers: String::new(),
            },
            seed: 1,
            seeds: vec![],
            repeat_of: None,
            audit: Head { hash: crate::audit::GENESIS.into(), lines: 0 },
        }
    }

    fn finished(id: &str) -> Event {
        Event::Finished {
            run_id: id.into(),
            at: Utc::now(),
            status: RunStatus::Crashed,
            metrics: None,
            reported: Reported::default(),
            phases: Box::default(),
            overran: false,
            message: None,
            per_seed: vec![],
            audit: Head { hash: crate::audit::GENESIS.into(), lines: 0 },
        }
    }

    #[test]
    fn a_bad_middle_line_is_named_skipped_and_kept_and_run_numbers_go_past_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        for id in ["r0001", "r0002", "r0003"] {
            l.append(started(id)).unwrap();
        }
        let mut bytes = std::fs::read(&p).unwrap();
        let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        bytes[second + 2] = 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let mut l = Ledger::open_for_append(&p).unwrap();
        assert_eq!(l.runs().len(), 2);
        assert_eq!(l.problems().len(), 1);
        assert!(l.problems()[0].to_string().contains("runs.jsonl line 2 is malformed"), "{}", l.problems()[0]);
        assert_eq!(l.next_run_number(), 4, "r0003 is still in the ledger");
        assert_eq!(l.numbered_events().map(|(n, _)| n).collect::<Vec<_>>(), [1, 3]);
        l.append(finished("r0003")).unwrap();
        assert!(std::fs::read(&p).unwrap().starts_with(&bytes), "the writer never drops the bad line");
    }

    #[test]
    fn a_run_whose_state_folder_is_deleted_mid_run_still_finishes() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(".autoresearch");
        std::fs::create_dir(&state).unwrap();
        let p = state.join("runs.jsonl");
        let mut l = Ledger::open_for_append(&p).unwrap();
        l.append(started("r0001")).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
        l.append(finished("r0001")).unwrap();
        let on_disk = Ledger::open(&p).unwrap();
        assert_eq!(on_disk.events().len(), 2, "both lines: the started one restored from the open file");
        assert_eq!(on_disk.runs()[0].status, RunStatus::Crashed, "not shown as running");
        assert!(matches!(&l.take_repairs()[..], [Repair::Restored { .. }]));
    }
}
