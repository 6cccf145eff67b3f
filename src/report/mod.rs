//! `autoresearch-mcp report`: what happened overnight, from the ledger. Writes into one folder
//! (default `.autoresearch/report/`):
//! - `chart.svg` and `chart.png`: mean rank per experiment, kept / baseline / discarded / crashed /
//!   cancelled told apart, the best kept so far as a step line, fingerprint changes marked ([`chart`]);
//! - `results.tsv` and `results.md`: one row per run ([`table`]);
//! - `diffs/<run>.diff`: every experiment's change to train.rs, kept or not ([`diffs`]);
//! - `report.html`: all of the above in one self-contained page ([`html`]);
//! - `test.md`: after `report --test`, the baseline and kept runs on the test split
//!   ([`crate::report::test_split`]); the tables and the page then show test mean ranks too.
//!
//! Descriptions and diffs are agent text: every writer escapes them for its format.

pub mod chart;
pub mod diffs;
pub mod html;
pub mod table;
pub mod test_split;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fsutil::write_atomic;
use crate::ledger::{Ledger, Run, Standings};
use crate::paths::Paths;
use crate::report::test_split::TestScores;

pub mod kind;
use crate::workspace::WorkspaceState;
pub use kind::{Kind, short_label};

/// One run with what the report derives from it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub run: Run,
    pub kind: Kind,
    /// Short id of the run's fingerprint.
    pub fingerprint: String,
    /// Counts toward the best kept result ([`Standings::sets_the_bar`]): the best-so-far line.
    pub sets_the_bar: bool,
    /// The best kept result of the same fingerprint before this run ([`Standings`]).
    pub best_before: Option<f64>,
    /// The run's change to train.rs (unified diff), and where it was found; `None` if nowhere.
    pub diff: Option<diffs::Diff>,
}

impl Entry {
    pub fn status(&self) -> String {
        self.run.status.to_string()
    }

    /// "kept with reason" for a run kept although it did not beat the best, else the kind.
    pub fn kind_label(&self) -> &'static str {
        match (self.kind, &self.run.kept_reason) {
            (Kind::Kept, Some(_)) => "kept with reason",
            (k, _) => k.as_str(),
        }
    }

    /// The description on one line, with the reason when it was kept with one.
    pub fn description(&self, max: usize) -> String {
        match &self.run.kept_reason {
            Some(why) => short_label(&format!("{} (kept with reason: {why})", self.run.description), max),
            None => short_label(&self.run.description, max),
        }
    }

    /// Mean rank minus the best kept before it (negative is better).
    pub fn delta(&self) -> Option<f64> {
        Some(self.run.mean_rank()? - self.best_before?)
    }

    /// The file name of its diff: the run id if it is a plain id, else its number.
    pub fn diff_name(&self) -> String {
        let id = &self.run.id;
        if !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            format!("{id}.diff")
        } else {
            format!("run{:04}.diff", self.run.number)
        }
    }
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub entries: Vec<Entry>,
    /// The SHA-256 of the baseline's train.rs (`None` without workspace.json).
    pub baseline_hash: Option<String>,
    pub branch: Option<String>,
    pub workspace: PathBuf,
    pub generated_at: chrono::DateTime<chrono::Utc>,
    /// The scores of the last `report --test`, if it ran.
    pub test: Option<TestScores>,
}

impl Report {
    /// Reads the ledger, the workspace state and every run's diff.
    pub fn load(paths: &Paths) -> Result<Self> {
        let ledger = Ledger::open(&paths.ledger())?;
        let state: Option<WorkspaceState> =
            std::fs::read(paths.workspace_state()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let baseline = state.as_ref().map(|s| s.baseline_train_hash.clone());
        let finder = diffs::Finder::new(paths, &ledger);
        let runs = ledger.runs();
        let hash = baseline.as_deref().unwrap_or_default();
        let entries = (0..runs.len())
            .map(|i| {
                let run = &runs[i];
                let standings = Standings::of(&runs, &run.fingerprint, hash);
                let before = Standings::of(&runs[..i], &run.fingerprint, hash);
                Entry {
                    fingerprint: run.fingerprint.short(),
                    kind: Kind::of(run, baseline.as_deref()),
                    sets_the_bar: standings.sets_the_bar(run),
                    best_before: before.best.and_then(|b| b.mean_rank()),
                    diff: finder.find(run),
                    run: run.clone(),
                }
            })
            .collect();
        Ok(Report {
            entries,
            baseline_hash: baseline,
            branch: state.map(|s| s.branch),
            workspace: paths.root.clone(),
            generated_at: chrono::Utc::now(),
            test: TestScores::load(paths),
        })
    }

    /// The best kept result of the latest fingerprint ([`Standings`]).
    pub fn best(&self) -> Option<&Entry> {
        let runs: Vec<Run> = self.entries.iter().map(|e| e.run.clone()).collect();
        let standings = Standings::current(&runs, self.baseline_hash.as_deref().unwrap_or_default());
        let best = standings.best?;
        self.entries.iter().find(|e| e.run.id == best.id)
    }

    /// The test-split metrics of a run, when the last `report --test` scored it.
    pub fn test_metrics(&self, run_id: &str) -> Option<&crate::score::Metrics> {
        self.test.as_ref()?.scored(run_id)?.metrics.as_ref()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }

    /// One line: how many runs, kept, crashed, and the best.
    pub fn headline(&self) -> String {
        let mut s = format!(
            "{} experiments: {} kept, {} baseline, {} discarded, {} crashed, {} cancelled",
            self.entries.len(),
            self.count(Kind::Kept),
            self.count(Kind::Baseline),
            self.count(Kind::Discarded),
            self.count(Kind::Crashed),
            self.count(Kind::Cancelled)
        );
        if let Some(b) = self.best()
            && let Some(m) = b.run.mean_rank()
        {
            s.push_str(&format!("; best mean rank {m:.2} ({})", b.run.id));
        }
        s
    }
}

/// What `write` produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    /// [`Report::headline`].
    pub headline: String,
    pub files: Vec<PathBuf>,
    pub markdown: String,
}

/// Writes every report file into `out` (created if missing) and returns their paths.
pub fn write(paths: &Paths, out: &Path) -> Result<Written> {
    let report = Report::load(paths)?;
    let diff_dir = out.join("diffs");
    std::fs::create_dir_all(&diff_dir).with_context(|| format!("create {}", diff_dir.display()))?;
    let mut files = vec![];
    let mut put = |name: PathBuf, bytes: &[u8]| -> Result<()> {
        write_atomic(&name, bytes).with_context(|| format!("write {}", name.display()))?;
        files.push(name);
        Ok(())
    };
    let svg = chart::svg(&report);
    put(out.join("chart.svg"), svg.as_bytes())?;
    put(out.join("chart.png"), &chart::png(&svg)?)?;
    put(out.join("results.tsv"), table::tsv(&report).as_bytes())?;
    let markdown = table::markdown(&report);
    put(out.join("results.md"), markdown.as_bytes())?;
    if let Some(t) = &report.test {
        put(out.join("test.md"), t.markdown().as_bytes())?;
    }
    for e in &report.entries {
        if let Some(d) = &e.diff {
            put(diff_dir.join(e.diff_name()), d.text.as_bytes())?;
        }
    }
    put(out.join("report.html"), html::page(&report, &svg).as_bytes())?;
    Ok(Written { dir: out.to_path_buf(), headline: report.headline(), files, markdown })
}
