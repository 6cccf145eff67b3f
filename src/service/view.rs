//! The agent's view of runs: rows, the `read_metrics` view and its text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::args::ReadMetricsArgs;
use crate::ledger::noise;
use crate::ledger::standings::Comparison;
use crate::ledger::{self, Run, RunStatus, Standings};
use crate::score::{Metrics, round_rank};

/// One row of `read_metrics` (and the structured result of `run_experiment`): the agent's view of a
/// run, its metrics at the agent's resolution ([`Metrics::for_agent`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunRow {
    pub id: String,
    pub number: usize,
    /// First 12 hex digits of the SHA-256 of the train.rs that ran.
    pub train_hash: String,
    pub status: RunStatus,
    pub metrics: Option<Metrics>,
    pub kept: bool,
    /// Why it was kept although it did not beat the best kept result (`commit`'s `reason`).
    pub kept_reason: Option<String>,
    pub overran: bool,
    /// Server-measured seconds, all phases.
    pub duration_s: f64,
    /// Server-measured seconds per phase (build, train, embed, score).
    pub phases: ledger::PhaseTimes,
    pub description: String,
    /// The earlier run with identical train.rs and fingerprint, if this was a repeat.
    pub repeat_of: Option<String>,
    /// Steps, loss and peak memory as train.rs reported them (not verified).
    pub reported: ledger::Reported,
    /// Short id of the fingerprint (runs compare only within one).
    pub fingerprint: String,
    /// Standard deviation of the mean rank over the run's seeds (when it repeated over seeds).
    pub mean_rank_sd: Option<f64>,
    /// Independent samples behind the mean rank (seeds; 1 for a single training).
    pub samples: usize,
    /// Mean rank minus `compared_with`'s, as the agent sees both (negative is better).
    pub delta_vs_best_kept: Option<f64>,
    /// The best kept result of its fingerprint (the baseline counts as kept); in `run_experiment`'s
    /// reply, the best other than this run.
    pub compared_with: Option<String>,
    /// What the comparison with the best kept result and the noise floor found.
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
            kept: r.kept,
            kept_reason: r.kept_reason.clone(),
            overran: r.overran,
            duration_s: r.phases.total,
            phases: r.phases.clone(),
            description: r.description.clone(),
            repeat_of: r.repeat_of.clone(),
            reported: r.reported.clone(),
            fingerprint: r.fingerprint.short(),
            mean_rank_sd: metrics.as_ref().and_then(|m| noise::sd(&m.seeds)).map(round_rank),
            samples: metrics.as_ref().map(|m| m.samples().len()).unwrap_or(0),
            metrics,
            delta_vs_best_kept: None,
            compared_with: None,
            flags: vec![],
        }
    }
}

/// The structured content of `read_metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MetricsView {
    pub runs: Vec<RunRow>,
    pub total_runs: usize,
    /// The best kept result of the current fingerprint: the lowest mean rank among the kept runs and
    /// the runs of the baseline train.rs (the branch starts from it); a run kept with a reason is the
    /// best only if it is better.
    pub best_kept: Option<RunRow>,
    /// Best run of the unmodified train.rs of the current fingerprint.
    pub baseline: Option<RunRow>,
    /// Standard deviation of the baseline's mean rank across seeds and repeats of the current
    /// fingerprint, when at least two samples exist: improvements under twice this are flagged.
    pub noise_floor: Option<f64>,
    /// Samples behind the noise floor.
    pub noise_floor_samples: usize,
    /// The run in progress, if any.
    pub in_flight: Option<String>,
}

/// The agent's row of run `r`, with what comparing it found (`None`: not comparable here).
pub fn row(r: &Run, comparison: Option<Comparison>) -> RunRow {
    let mut row = RunRow::from(r);
    if let Some(c) = comparison {
        row.delta_vs_best_kept = c.delta_for_agent();
        row.compared_with = c.reference.map(|b| b.id.clone());
        row.flags = c.flags;
    }
    row
}

/// The structured content of `read_metrics` over the ledger's `runs` (`in_flight` left empty), at
/// the agent's resolution.
pub fn metrics_view(runs: &[Run], baseline_hash: &str, args: &ReadMetricsArgs) -> MetricsView {
    let standings = Standings::current(runs, baseline_hash);
    let mut view = MetricsView {
        runs: runs
            .iter()
            .filter(|r| args.status.is_none_or(|s| r.status == s))
            .filter(|r| !args.kept_only.unwrap_or(false) || r.kept)
            .map(|r| {
                let same_fp = standings.fingerprint() == Some(&r.fingerprint);
                row(r, r.metrics.as_ref().filter(|_| same_fp).map(|m| standings.against_best(m)))
            })
            .collect(),
        total_runs: runs.len(),
        best_kept: standings.best.map(RunRow::from),
        baseline: standings.baseline.map(RunRow::from),
        noise_floor: standings.noise_floor.map(|f| round_rank(f.0)),
        noise_floor_samples: standings.noise_floor.map_or(0, |f| f.1),
        in_flight: None,
    };
    if let Some(n) = args.last {
        let skip = view.runs.len().saturating_sub(n);
        view.runs.drain(..skip);
    }
    view
}

/// The text form of `read_metrics`.
pub fn render_view(v: &MetricsView) -> String {
    let mut t = String::new();
    let line = |r: &RunRow| {
        format!(
            "{} {:<14} {:>9} {:>6} {}{} {}\n",
            r.id,
            r.status.to_string(),
            r.metrics.as_ref().map(noise::mean_pm).unwrap_or("-".into()),
            format!("{:.0}s", r.duration_s),
            match (r.kept, &r.kept_reason) {
                (true, Some(_)) => "kept with reason ",
                (true, None) => "kept ",
                _ => "",
            },
            if r.overran { "OVERRAN " } else { "" },
            r.description,
        ) + &r.kept_reason.iter().map(|why| format!("      kept with reason: {why}\n")).collect::<String>()
            + &r.flags
                .iter()
                .map(|f| {
                    let vs = r.compared_with.as_deref().map(|c| format!(" (vs {c})")).unwrap_or_default();
                    format!("      flag{vs}: {}\n", f.explain(r.delta_vs_best_kept, v.noise_floor))
                })
                .collect::<String>()
    };
    if let Some(b) = &v.baseline {
        t.push_str(&format!("baseline: {}", line(b)));
    }
    if let Some(b) = &v.best_kept {
        t.push_str(&format!("best kept: {}", line(b)));
    }
    match v.noise_floor {
        Some(n) => t.push_str(&format!(
            "noise floor: sd {n:.2} of the baseline over {} seeds/repeats; improvements under {:.2} are flagged\n",
            v.noise_floor_samples,
            noise::FLOORS * n
        )),
        None => t.push_str("noise floor: not measured (run the unmodified baseline with seeds: 3)\n"),
    }
    if let Some(f) = &v.in_flight {
        t.push_str(&format!("in flight: {f}\n"));
    }
    t.push_str(&format!(
        "{} of {} runs:\nid    status         mean_rank  time  description\n",
        v.runs.len(),
        v.total_runs
    ));
    for r in &v.runs {
        t.push_str(&line(r));
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
        let json = serde_json::to_string(&row).unwrap();
        assert!(max_decimals(&json) <= 2, "{json}");
    }

    #[test]
    fn read_metrics_shows_rounded_numbers_and_deltas_from_rounded_values() {
        let view = metrics_view(&ledger(), BASELINE, &ReadMetricsArgs::default());
        assert_eq!(view.best_kept.as_ref().unwrap().metrics.as_ref().unwrap().mean_rank, 15.0);
        assert_eq!(view.baseline.as_ref().unwrap().id, "r0001");
        // sd(20.0012345, 20.2456789) = 0.17284...
        assert_eq!((view.noise_floor, view.noise_floor_samples), (Some(0.17), 2));
        let r3 = &view.runs[2];
        assert_eq!(r3.delta_vs_best_kept, Some(0.0), "15.00 - 15.00, not the exact -0.008");
        assert_eq!(r3.flags, vec![noise::Flag::WithinNoiseFloor], "flags still see the exact improvement");
        assert_eq!(view.runs[0].delta_vs_best_kept, Some(5.12));
        let json = serde_json::to_string(&view).unwrap();
        assert!(max_decimals(&json) <= 2, "{json}");
        let text = render_view(&view);
        assert!(max_decimals(&text) <= 2, "{text}");
        assert!(text.contains("improvement (+0.00)") && text.contains("sd 0.17"), "{text}");
    }
}
