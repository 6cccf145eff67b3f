//! The agent's view of runs: the full row of a run, the compact line, and `read_metrics`' view and
//! text. The default answer stays small however long the night: the baseline, the current kept state,
//! the last few runs one line each (per-seed values and the paired comparison with the kept state),
//! and the run in flight; full rows only on request, a page at a time.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::args::ReadMetricsArgs;
use crate::ledger::noise;
use crate::ledger::standings::Comparison;
use crate::ledger::{self, Run, RunStatus, Standings};
use crate::score::{Metrics, round_rank};

/// Runs in the default answer's list.
pub const DEFAULT_LAST: usize = 5;
/// Full rows per page.
pub const ROWS_PER_PAGE: usize = 10;

/// One run in full (`read_metrics` with `full`, and `run_experiment`'s structured result): the agent's
/// view of a run, its metrics at the agent's resolution ([`Metrics::for_agent`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunRow {
    pub id: String,
    pub number: usize,
    /// First 12 hex digits of the SHA-256 of the train.rs that ran.
    pub train_hash: String,
    pub status: RunStatus,
    pub metrics: Option<Metrics>,
    /// Each seed's mean rank, by seed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_seed: BTreeMap<u64, f64>,
    pub kept: bool,
    /// Why it was kept although it did not beat the kept state (`commit`'s `reason`).
    pub kept_reason: Option<String>,
    pub overran: bool,
    /// Server-measured seconds, all phases.
    pub duration_s: f64,
    /// Server-measured seconds per phase (build, train, embed, score; seeds add up).
    pub phases: ledger::PhaseTimes,
    /// Training steps per second: each seed's steps over its own loop time, averaged over seeds.
    pub steps_per_s: Option<f64>,
    /// The seeds whose training stopped at the budget before train.rs's schedule ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget_cut: Vec<u64>,
    pub description: String,
    /// The earlier run with identical train.rs and fingerprint, if this was a repeat.
    pub repeat_of: Option<String>,
    /// Steps, loss and peak memory as train.rs reported them (not verified; the last seed's).
    pub reported: ledger::Reported,
    /// Short id of the fingerprint (runs compare only within one).
    pub fingerprint: String,
    /// Standard deviation of the mean rank over the run's seeds (when it repeated over seeds).
    pub mean_rank_sd: Option<f64>,
    /// Independent samples behind the mean rank (seeds; 1 for a single training).
    pub samples: usize,
    /// Its configuration minus the kept state's, as the agent sees both (negative is better): the mean
    /// of the per-seed differences on shared seeds, else mean against mean.
    pub delta_vs_kept: Option<f64>,
    /// The kept state compared with (the head of the experiment branch, or the baseline).
    pub compared_with: Option<String>,
    /// The comparison in one line: per-seed differences, their mean and interval, the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_kept: Option<String>,
    /// What the comparison found.
    pub flags: Vec<noise::Flag>,
}

impl From<&Run> for RunRow {
    fn from(r: &Run) -> Self {
        let metrics = r.metrics.as_ref().map(Metrics::for_agent);
        RunRow {
            id: r.id.clone(),
            number: r.number,
            train_hash: r.train_hash[..12.min(r.train_hash.len())].into(),
            status: r.status,
            per_seed: per_seed(r),
            kept: r.kept,
            kept_reason: r.kept_reason.clone(),
            overran: r.overran,
            duration_s: r.phases.total,
            phases: r.phases.clone(),
            steps_per_s: r.steps_per_s().map(round_rank),
            budget_cut: r.budget_cut_seeds(),
            description: r.description.clone(),
            repeat_of: r.repeat_of.clone(),
            reported: r.reported.clone(),
            fingerprint: r.fingerprint.short(),
            mean_rank_sd: metrics.as_ref().and_then(|m| noise::sd(&m.seeds)).map(round_rank),
            samples: metrics.as_ref().map(|m| m.samples().len()).unwrap_or(0),
            metrics,
            delta_vs_kept: None,
            compared_with: None,
            vs_kept: None,
            flags: vec![],
        }
    }
}

/// Each seed's mean rank at the agent's resolution.
fn per_seed(r: &Run) -> BTreeMap<u64, f64> {
    r.seed_ranks().into_iter().map(|(s, v)| (s, round_rank(v))).collect()
}

/// The agent's row of run `r`, with what comparing it found (`None`: not comparable here).
pub fn row(r: &Run, comparison: Option<Comparison>) -> RunRow {
    let mut row = RunRow::from(r);
    if let Some(c) = comparison {
        row.delta_vs_kept = c.delta_for_agent().filter(|_| c.reference.is_some());
        row.compared_with = c.reference.map(|b| b.id.clone());
        row.vs_kept = Some(c.line()).filter(|l| !l.is_empty());
        row.flags = c.flags;
    }
    row
}

/// One run in one line: what the default `read_metrics` lists.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunLine {
    pub id: String,
    pub status: RunStatus,
    /// Mean rank over its seeds (agent's resolution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_rank: Option<f64>,
    /// Each seed's mean rank, by seed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_seed: BTreeMap<u64, f64>,
    /// Its configuration minus the kept state's (paired on shared seeds when there are any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_vs_kept: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<noise::Flag>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kept: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget_cut: Vec<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overran: bool,
    pub description: String,
}

impl RunLine {
    fn of(r: &Run, c: Option<&Comparison>) -> RunLine {
        RunLine {
            id: r.id.clone(),
            status: r.status,
            mean_rank: r.mean_rank().map(round_rank),
            per_seed: if r.seed_ranks().len() > 1 { per_seed(r) } else { BTreeMap::new() },
            delta_vs_kept: c.filter(|c| c.reference.is_some()).and_then(Comparison::delta_for_agent),
            flags: c.map(|c| c.flags.clone()).unwrap_or_default(),
            kept: r.kept,
            steps_per_s: r.steps_per_s().map(|s| (s * 10.0).round() / 10.0),
            budget_cut: r.budget_cut_seeds(),
            overran: r.overran,
            description: r.description.clone(),
        }
    }
}

/// A configuration that results are measured against (the baseline, the kept state, the best).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Reference {
    pub id: String,
    /// Mean rank over every seed its train.rs was run on (agent's resolution).
    pub mean_rank: f64,
    /// Seed-to-seed sd of that evidence (two seeds or more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<f64>,
    /// Each seed's mean rank over the runs of its train.rs.
    pub per_seed: BTreeMap<u64, f64>,
    pub description: String,
}

impl Reference {
    fn of(s: &Standings, r: &Run) -> Reference {
        let e = s.evidence(&r.train_hash);
        Reference {
            id: r.id.clone(),
            mean_rank: round_rank(e.mean().or(r.mean_rank()).unwrap_or_default()),
            sd: e.sd().map(round_rank),
            per_seed: e.by_seed.iter().map(|(s, v)| (*s, round_rank(*v))).collect(),
            description: r.description.clone(),
        }
    }
}

/// The structured content of `read_metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MetricsView {
    pub total_runs: usize,
    /// The unmodified train.rs of the current fingerprint, over all its seeds.
    pub baseline: Option<Reference>,
    /// The current kept state (the head of the experiment branch): what every delta is against.
    /// `null` while the baseline is the kept state (nothing kept yet), so it is not repeated.
    pub kept: Option<Reference>,
    /// The lowest kept or baseline mean rank, when it is not the kept state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_kept: Option<Reference>,
    /// Standard deviation of the baseline's mean rank across its seeds: the lower bound of the noise a
    /// difference is judged against.
    pub noise_floor: Option<f64>,
    /// Samples behind the noise floor.
    pub noise_floor_samples: usize,
    /// The run in progress, if any.
    pub in_flight: Option<String>,
    /// The last `last` runs (default 5) matching the filters, one line each, oldest first.
    pub runs: Vec<RunLine>,
    /// With `full`: the full rows of one page of the matching runs, in ledger order (page 1 holds the
    /// newest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<RunRow>,
    /// With `full`: the page shown and how many there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<(usize, usize)>,
}

/// The structured content of `read_metrics` over the ledger's `runs` (`in_flight` left empty), at
/// the agent's resolution.
pub fn metrics_view(runs: &[Run], baseline_hash: &str, args: &ReadMetricsArgs) -> MetricsView {
    let standings = Standings::current(runs, baseline_hash);
    let comparison = |r: &Run| {
        let same_fp = standings.fingerprint() == Some(&r.fingerprint);
        r.metrics.as_ref().filter(|_| same_fp).map(|_| standings.compare(r))
    };
    let matching: Vec<&Run> = runs
        .iter()
        .filter(|r| args.status.is_none_or(|s| r.status == s))
        .filter(|r| !args.kept_only.unwrap_or(false) || r.kept)
        .collect();
    let last = args.last.unwrap_or(DEFAULT_LAST);
    let lines = matching[matching.len().saturating_sub(last)..]
        .iter()
        .map(|r| RunLine::of(r, comparison(r).as_ref()))
        .collect();
    let (mut rows, mut page) = (vec![], None);
    if args.full.unwrap_or(false) {
        let pages = matching.len().div_ceil(ROWS_PER_PAGE).max(1);
        let p = args.page.unwrap_or(1).clamp(1, pages);
        let end = matching.len().saturating_sub((p - 1) * ROWS_PER_PAGE);
        rows = matching[end.saturating_sub(ROWS_PER_PAGE)..end].iter().map(|r| row(r, comparison(r))).collect();
        page = Some((p, pages));
    }
    let kept = standings
        .kept
        .filter(|k| standings.baseline.is_none_or(|b| b.train_hash != k.train_hash))
        .map(|k| Reference::of(&standings, k));
    MetricsView {
        total_runs: runs.len(),
        baseline: standings.baseline.map(|b| Reference::of(&standings, b)),
        best_kept: standings
            .best
            .filter(|b| standings.kept.is_none_or(|k| k.train_hash != b.train_hash))
            .map(|b| Reference::of(&standings, b)),
        kept,
        noise_floor: standings.noise_floor.map(|f| round_rank(f.0)),
        noise_floor_samples: standings.noise_floor.map_or(0, |f| f.1),
        in_flight: None,
        runs: lines,
        rows,
        page,
    }
}

/// `42: 31.30, 43: 59.00`.
fn seeds_text(per_seed: &BTreeMap<u64, f64>) -> String {
    per_seed.iter().map(|(s, v)| format!("{s}: {v:.2}")).collect::<Vec<_>>().join(", ")
}

/// The text form of `read_metrics`: a short header, one line per run, the full rows when asked.
pub fn render_view(v: &MetricsView) -> String {
    let mut t = String::new();
    let reference = |what: &str, r: &Reference| {
        let sd = r.sd.map(|s| format!(" ± {s:.2}")).unwrap_or_default();
        let n = r.per_seed.len();
        format!(
            "{what}: {} {:.2}{sd} over {n} seed{} [{}] {}\n",
            r.id,
            r.mean_rank,
            if n == 1 { "" } else { "s" },
            seeds_text(&r.per_seed),
            r.description
        )
    };
    if let Some(b) = &v.baseline {
        t.push_str(&reference("baseline", b));
    }
    match &v.kept {
        Some(k) => t.push_str(&reference("kept (deltas are against it)", k)),
        None if v.baseline.is_some() => t.push_str("kept: nothing yet; deltas are against the baseline\n"),
        None => t.push_str("kept: nothing yet\n"),
    }
    if let Some(b) = &v.best_kept {
        t.push_str(&reference("lowest kept", b));
    }
    match v.noise_floor {
        Some(n) => {
            t.push_str(&format!("noise floor: sd {n:.2} of the baseline over {} seeds\n", v.noise_floor_samples))
        }
        None => t.push_str("noise floor: not measured (run the unmodified baseline with seeds: 3)\n"),
    }
    if let Some(f) = &v.in_flight {
        t.push_str(&format!("in flight: {f}\n"));
    }
    t.push_str(&format!("last {} of {} runs (full rows: `full: true`, `page`):\n", v.runs.len(), v.total_runs));
    for r in &v.runs {
        let mut l = format!("{} {}", r.id, r.status);
        if let Some(m) = r.mean_rank {
            l.push_str(&format!(" {m:.2}"));
        }
        if !r.per_seed.is_empty() {
            l.push_str(&format!(" [{}]", seeds_text(&r.per_seed)));
        }
        if let Some(d) = r.delta_vs_kept {
            l.push_str(&format!(" {d:+.2} vs kept"));
        }
        for f in &r.flags {
            l.push_str(&format!(
                " {}",
                serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ));
        }
        if r.kept {
            l.push_str(" KEPT");
        }
        if !r.budget_cut.is_empty() {
            l.push_str(&format!(" budget-cut {:?}", r.budget_cut));
        }
        if r.overran {
            l.push_str(" OVERRAN");
        }
        t.push_str(&format!("{l} | {}\n", r.description));
    }
    if let Some((p, pages)) = v.page {
        t.push_str(&format!("full rows, page {p} of {pages} (newest first page):\n"));
        for r in &v.rows {
            t.push_str(&format!(
                "{} {} {} ({} samples) {}{}{}\n",
                r.id,
                r.status,
                r.metrics.as_ref().map(noise::mean_pm).unwrap_or("-".into()),
                r.samples,
                r.kept_reason.as_ref().map(|w| format!("kept with reason: {w}; ")).unwrap_or_default(),
                r.vs_kept.as_ref().map(|l| format!("{l}; ")).unwrap_or_default(),
                r.description
            ));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fixtures::*;

    #[test]
    fn run_rows_carry_the_agents_resolution() {
        let row = RunRow::from(&ledger()[0]);
        let m = row.metrics.as_ref().unwrap();
        assert_eq!((m.mean_rank, m.i2t_r1, m.seeds.clone()), (20.12, 33.3, vec![20.0, 20.25]));
        assert_eq!(row.mean_rank_sd, Some(0.18), "the sd of the rounded seeds, rounded");
        assert_eq!(row.per_seed, BTreeMap::from([(42, 20.0), (43, 20.25)]));
        let json = serde_json::to_string(&row).unwrap();
        assert!(max_decimals(&json) <= 2, "{json}");
    }

    #[test]
    fn read_metrics_shows_rounded_numbers_and_deltas_from_rounded_values() {
        let all = ReadMetricsArgs { full: Some(true), ..Default::default() };
        let view = metrics_view(&ledger(), BASELINE, &all);
        assert_eq!(view.kept.as_ref().unwrap().mean_rank, 15.0);
        assert_eq!(view.baseline.as_ref().unwrap().id, "r0001");
        assert!(view.best_kept.is_none(), "the kept state is the best: not repeated");
        // sd(20.0012345, 20.2456789) = 0.17284...
        assert_eq!((view.noise_floor, view.noise_floor_samples), (Some(0.17), 2));
        assert_eq!(view.page, Some((1, 1)));
        let r3 = &view.rows[2];
        assert_eq!(r3.id, "r0003", "in ledger order");
        assert_eq!(r3.delta_vs_kept, Some(0.0), "15.00 - 15.00, not the exact -0.008");
        assert_eq!(r3.flags, vec![noise::Flag::WithinNoise], "flags still see the exact improvement");
        assert_eq!(view.runs[0].delta_vs_kept, Some(5.0), "the baseline's seed 42 against the kept seed 42");
        let json = serde_json::to_string(&view).unwrap();
        assert!(max_decimals(&json) <= 2, "{json}");
        let text = render_view(&view);
        assert!(max_decimals(&text) <= 2, "{text}");
        assert!(text.contains("r0003 ok 15.00 +0.00 vs kept within_noise | "), "{text}");
        assert!(text.contains("vs kept r0002 on seeds 42: +0.00 (mean +0.00, equal); within noise"), "{text}");
    }
}
