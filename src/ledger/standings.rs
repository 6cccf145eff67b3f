//! Where the results stand within one fingerprint: the baseline, the best kept result, the reference a
//! result is compared with, and the noise floor. This is the one definition of a comparable run
//! ([`comparable`]) and the one ordering of runs ([`order`]); every tool reply, commit message,
//! `status`, the report, `export` and the supervisor's resume prompt read their "best" from here, so
//! they cannot disagree.
//!
//! The bar is set by the kept runs *and* the runs of the baseline train.rs: the experiment branch
//! starts from the baseline, so it is kept from the start. A run kept with a reason although it did not
//! beat the bar is kept (on the branch) but is not the best unless the ordering says so.

use std::cmp::Ordering;

use super::{Fingerprint, Run, RunStatus};
use crate::ledger::noise::{self, Flag};
use crate::score::{Metrics, agent_delta, round_rank};

/// Runs compare only within one fingerprint, and only when they succeeded within their budget with a
/// finite score.
pub fn comparable(r: &Run, fp: &Fingerprint) -> bool {
    &r.fingerprint == fp && r.status == RunStatus::Ok && !r.overran && r.mean_rank().is_some_and(f64::is_finite)
}

/// Better first: the lower mean rank; on a tie the earlier run (the later one did not beat it).
pub fn order(a: &Run, b: &Run) -> Ordering {
    let rank = |r: &Run| r.mean_rank().unwrap_or(f64::MAX);
    rank(a).total_cmp(&rank(b)).then(a.number.cmp(&b.number))
}

/// The standings of one fingerprint.
#[derive(Debug, Clone)]
pub struct Standings<'a> {
    fingerprint: Option<&'a Fingerprint>,
    baseline_hash: String,
    /// The comparable runs, in ledger order.
    runs: Vec<&'a Run>,
    /// The best run of the baseline train.rs.
    pub baseline: Option<&'a Run>,
    /// The best kept result: the best of the kept and baseline runs.
    pub best: Option<&'a Run>,
    /// The baseline's seed-to-seed sd (exact) and the samples behind it ([`noise::noise_floor`]).
    pub noise_floor: Option<(f64, usize)>,
}

impl<'a> Standings<'a> {
    /// The standings of the current fingerprint: the latest run's (empty when there is no run).
    pub fn current(runs: &'a [Run], baseline_hash: &str) -> Self {
        match runs.last() {
            Some(last) => Self::of(runs, &last.fingerprint, baseline_hash),
            None => Self {
                fingerprint: None,
                baseline_hash: baseline_hash.into(),
                runs: vec![],
                baseline: None,
                best: None,
                noise_floor: None,
            },
        }
    }

    /// The standings of fingerprint `fp` among `runs`.
    pub fn of(runs: &'a [Run], fp: &'a Fingerprint, baseline_hash: &str) -> Self {
        let comparable: Vec<&Run> = runs.iter().filter(|r| comparable(r, fp)).collect();
        let mut s = Self {
            fingerprint: Some(fp),
            baseline_hash: baseline_hash.into(),
            noise_floor: noise::noise_floor(&comparable, baseline_hash),
            runs: comparable,
            baseline: None,
            best: None,
        };
        s.baseline = s.best_where(|r| r.train_hash == s.baseline_hash);
        s.best = s.best_where(|r| s.sets_the_bar(r));
        s
    }

    /// The fingerprint these standings are of (`None`: no run yet).
    pub fn fingerprint(&self) -> Option<&'a Fingerprint> {
        self.fingerprint
    }

    /// Whether `r` is one of the runs compared here.
    pub fn includes(&self, r: &Run) -> bool {
        self.fingerprint.is_some_and(|fp| comparable(r, fp))
    }

    /// A comparable run that counts toward the best: kept, or the baseline's train.rs.
    pub fn sets_the_bar(&self, r: &Run) -> bool {
        self.includes(r) && (r.kept || r.train_hash == self.baseline_hash)
    }

    /// The best comparable run that `keep` accepts.
    pub fn best_where(&self, keep: impl Fn(&Run) -> bool) -> Option<&'a Run> {
        self.runs.iter().copied().filter(|r| keep(r)).min_by(|a, b| order(a, b))
    }

    /// What run `run_id` is compared with: the best kept result other than itself.
    pub fn reference_for(&self, run_id: &str) -> Option<&'a Run> {
        self.best_where(|r| r.id != run_id && self.sets_the_bar(r))
    }

    /// A new result: run `run_id`'s `m` against its reference (the best kept result other than
    /// itself) and the noise floor. What `run_experiment` and `commit` report.
    pub fn compare(&self, run_id: &str, m: &Metrics) -> Comparison<'a> {
        self.comparison(self.reference_for(run_id), m)
    }

    /// A result against the best kept result as it stands (itself, if it is the best): what the
    /// rows of `read_metrics` show.
    pub fn against_best(&self, m: &Metrics) -> Comparison<'a> {
        self.comparison(self.best, m)
    }

    fn comparison(&self, reference: Option<&'a Run>, m: &Metrics) -> Comparison<'a> {
        let best = reference.and_then(|r| r.mean_rank());
        let floor = self.noise_floor.map(|f| f.0);
        Comparison { reference, mean_rank: m.mean_rank, floor, flags: noise::flags(m, best, floor) }
    }

    /// The best kept result after keeping `candidate` (it becomes the best only if it is better).
    pub fn best_with(&self, candidate: &'a Run) -> Option<&'a Run> {
        match self.reference_for(&candidate.id) {
            Some(b) if order(b, candidate) == Ordering::Less => Some(b),
            _ if self.includes(candidate) => Some(candidate),
            other => other,
        }
    }
}

/// A result compared with the best kept result (other than itself).
#[derive(Debug, Clone)]
pub struct Comparison<'a> {
    /// The run compared with (`None`: no comparable kept or baseline run yet).
    pub reference: Option<&'a Run>,
    /// The result's exact mean rank.
    mean_rank: f64,
    /// The exact noise floor.
    floor: Option<f64>,
    pub flags: Vec<Flag>,
}

impl Comparison<'_> {
    /// Mean rank minus the reference's, between the values the agent sees ([`agent_delta`]).
    pub fn delta_for_agent(&self) -> Option<f64> {
        Some(agent_delta(self.mean_rank, self.reference?.mean_rank()?))
    }

    /// Strictly better than the reference (exact figures), or nothing to beat yet.
    pub fn beats(&self) -> bool {
        self.reference.and_then(|r| r.mean_rank()).is_none_or(|b| self.mean_rank < b)
    }

    /// One sentence per flag, with the delta and the floor rounded as the agent sees them.
    pub fn warnings(&self) -> Vec<String> {
        self.flags.iter().map(|f| f.explain(self.delta_for_agent(), self.floor.map(round_rank))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(budget: u64) -> Fingerprint {
        crate::ledger::fixtures::fingerprint(100, budget)
    }

    fn run(n: usize, hash: &str, rank: Option<f64>, kept: bool) -> Run {
        crate::ledger::fixtures::run(n, hash, rank.map(|r| crate::score::fixture(r, &[])), kept, fp(60))
    }

    #[test]
    fn a_worse_kept_run_does_not_become_the_best() {
        let mut worse = run(2, "b", Some(25.0), true);
        worse.kept_reason = Some("simpler".into());
        let runs = vec![run(1, "base", Some(20.0), false), worse, run(3, "c", Some(22.0), false)];
        let s = Standings::current(&runs, "base");
        assert_eq!(s.baseline.map(|r| r.id.as_str()), Some("r0001"));
        assert_eq!(s.best.map(|r| r.id.as_str()), Some("r0001"), "the baseline stays the best");
        let c = s.compare("r0003", runs[2].metrics.as_ref().unwrap());
        assert_eq!(c.reference.map(|r| r.id.as_str()), Some("r0001"));
        assert_eq!(c.delta_for_agent(), Some(2.0));
        assert!(!c.beats());
        assert_eq!(s.best_with(&runs[2]).map(|r| r.id.as_str()), Some("r0001"));
        let own = s.against_best(runs[0].metrics.as_ref().unwrap());
        assert_eq!((own.delta_for_agent(), own.flags.len()), (Some(0.0), 0), "the best against itself");
    }

    #[test]
    fn ties_go_to_the_earlier_run_and_only_comparable_runs_count() {
        let mut overran = run(1, "base", Some(5.0), false);
        overran.overran = true;
        let mut other_fp = run(2, "x", Some(1.0), true);
        other_fp.fingerprint = fp(120);
        let runs = vec![
            overran,
            other_fp,
            run(3, "base", Some(20.0), false),
            run(4, "y", Some(20.0), true),
            run(5, "z", None, true),
            run(6, "w", Some(19.0), false),
        ];
        let s = Standings::current(&runs, "base");
        assert_eq!(s.best.map(|r| r.id.as_str()), Some("r0003"), "a tie does not beat");
        let c = s.compare("r0004", runs[3].metrics.as_ref().unwrap());
        assert!(!c.beats(), "equal is not better");
        assert_eq!(s.best_with(&runs[5]).map(|r| r.id.as_str()), Some("r0006"));
        assert!(s.compare("r0006", runs[5].metrics.as_ref().unwrap()).beats());
        assert!(Standings::current(&[], "base").best.is_none());
    }
}
