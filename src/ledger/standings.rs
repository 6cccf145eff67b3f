//! Where the results stand within one fingerprint: the baseline, the current kept state, the best kept
//! result, and how a result compares with the kept state. This is the one definition of a comparable
//! run ([`comparable`]) and the one ordering of runs ([`order`]); every tool reply, commit message,
//! `status`, the report, `export` and the supervisor's resume prompt read from here, so they cannot
//! disagree.
//!
//! **The reference is the current kept state**: the newest kept run (the head of the experiment
//! branch), or the baseline while nothing is kept, never merely the lowest number ever kept. Its
//! evidence is every comparable run of its train.rs, seed by seed, so re-running the kept train.rs on
//! more seeds adds to it. A result is compared **paired** on the seeds both sides trained (per-seed
//! differences, their mean, all better or mixed, a 95% interval from two pairs on); without a shared
//! seed, mean against mean, labelled so.
//!
//! **Noise belongs to the configuration**: a difference is judged against the paired differences'
//! spread (two pairs or more), else against the larger seed-to-seed spread of the two sides; the
//! baseline's floor ([`noise::noise_floor`]) is a lower bound, and the comparison says which was used.
//!
//! `best` (the lowest kept or baseline mean rank) stays for the review (report, status, export, the
//! supervisor), labelled when it rests on fewer seeds than the evidence it is set against.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::{Fingerprint, Run, RunStatus};
use crate::ledger::noise::{self, FLOORS, Flag};
use crate::score::{agent_delta, round_rank};

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

/// What one train.rs has shown, seed by seed: each seed's mean rank over the runs that trained it
/// (a seed trained twice counts once, at its mean).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    pub by_seed: BTreeMap<u64, f64>,
}

impl Evidence {
    fn of<'r>(runs: impl IntoIterator<Item = &'r Run>) -> Evidence {
        let mut all: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for r in runs {
            for (seed, rank) in r.seed_ranks() {
                all.entry(seed).or_default().push(rank);
            }
        }
        Evidence { by_seed: all.into_iter().map(|(s, v)| (s, v.iter().sum::<f64>() / v.len() as f64)).collect() }
    }

    pub fn n(&self) -> usize {
        self.by_seed.len()
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.by_seed.is_empty()).then(|| self.by_seed.values().sum::<f64>() / self.n() as f64)
    }

    /// The seed-to-seed sd (two seeds or more).
    pub fn sd(&self) -> Option<f64> {
        noise::sd(&self.by_seed.values().copied().collect::<Vec<_>>())
    }

    pub fn seeds(&self) -> Vec<u64> {
        self.by_seed.keys().copied().collect()
    }
}

/// Two-sided 95% Student t quantile for `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
    T.get(df.saturating_sub(1)).copied().unwrap_or(2.0)
}

/// A result against the kept state on the seeds both trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub seeds: Vec<u64>,
    /// Result minus kept, per seed (exact).
    pub diffs: Vec<f64>,
    /// The same at the agent's resolution: differences of the rounded seed values.
    pub shown: Vec<f64>,
}

impl Paired {
    fn of(candidate: &Evidence, kept: &Evidence) -> Option<Paired> {
        let pairs: Vec<(u64, f64, f64)> =
            candidate.by_seed.iter().filter_map(|(s, c)| Some((*s, *c, *kept.by_seed.get(s)?))).collect();
        (!pairs.is_empty()).then(|| Paired {
            seeds: pairs.iter().map(|p| p.0).collect(),
            diffs: pairs.iter().map(|p| p.1 - p.2).collect(),
            shown: pairs.iter().map(|p| agent_delta(p.1, p.2)).collect(),
        })
    }

    pub fn mean(&self) -> f64 {
        mean(&self.diffs)
    }

    /// Half the width of the 95% paired interval (two pairs or more).
    pub fn half_width(&self) -> Option<f64> {
        half_width(&self.diffs)
    }

    /// The mean difference at the agent's resolution.
    pub fn mean_for_agent(&self) -> f64 {
        round_rank(mean(&self.shown))
    }

    /// The 95% interval of the mean difference at the agent's resolution (from the rounded values).
    pub fn interval_for_agent(&self) -> Option<(f64, f64)> {
        let (m, h) = (mean(&self.shown), half_width(&self.shown)?);
        Some((round_rank(m - h), round_rank(m + h)))
    }

    /// `all better`, `all worse`, `equal` or `mixed` (per seed, at the agent's resolution).
    pub fn direction(&self) -> &'static str {
        if self.shown.iter().all(|d| *d == 0.0) {
            "equal"
        } else if self.shown.iter().all(|d| *d < 0.0) {
            "all better"
        } else if self.shown.iter().all(|d| *d > 0.0) {
            "all worse"
        } else {
            "mixed"
        }
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

fn half_width(x: &[f64]) -> Option<f64> {
    Some(t95(x.len() - 1) * noise::sd(x)? / (x.len() as f64).sqrt())
}

/// Which spread a difference was judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseSource {
    /// The 95% interval of the paired differences (two pairs or more).
    PairedDifferences,
    /// This configuration's own seed-to-seed spread.
    ResultSpread,
    /// The kept configuration's seed-to-seed spread.
    KeptSpread,
    /// The baseline's seed-to-seed spread (the lower bound).
    BaselineFloor,
}

/// The margin a difference must exceed to be a clear improvement, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    pub margin: f64,
    pub source: NoiseSource,
}

impl Noise {
    /// How the agent reads it: `the paired differences' 95% interval (±4.10)`, at its resolution.
    pub fn describe(&self) -> String {
        let m = round_rank(self.margin);
        match self.source {
            NoiseSource::PairedDifferences => format!("the paired differences' 95% interval (±{m:.2})"),
            NoiseSource::ResultSpread => format!("{FLOORS} x this configuration's seed sd ({m:.2})"),
            NoiseSource::KeptSpread => format!("{FLOORS} x the kept configuration's seed sd ({m:.2})"),
            NoiseSource::BaselineFloor => format!("{FLOORS} x the baseline's noise floor ({m:.2})"),
        }
    }
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
    /// The current kept state, which results are compared with: the newest kept run (the head of the
    /// experiment branch), else the baseline.
    pub kept: Option<&'a Run>,
    /// The best kept result: the lowest mean rank among the kept and baseline runs (the review's
    /// "best"; see [`Standings::seeds_label`]).
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
                kept: None,
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
            kept: None,
            best: None,
        };
        s.baseline = s.best_where(|r| r.train_hash == s.baseline_hash);
        s.best = s.best_where(|r| s.sets_the_bar(r));
        s.kept = s.runs.iter().copied().filter(|r| r.kept_at.is_some()).max_by_key(|r| (r.kept_at, r.number));
        s.kept = s.kept.or(s.baseline);
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

    /// Everything the comparable runs of train.rs `train_hash` have shown, seed by seed.
    pub fn evidence(&self, train_hash: &str) -> Evidence {
        Evidence::of(self.runs.iter().copied().filter(|r| r.train_hash == train_hash))
    }

    /// The evidence of `r`'s configuration: every comparable run of its train.rs, or `r` alone when it
    /// is not comparable here.
    fn evidence_for(&self, r: &Run) -> Evidence {
        if self.includes(r) { self.evidence(&r.train_hash) } else { Evidence::of([r]) }
    }

    /// `1 seed`, `3 seeds`: how much evidence the configuration of `r` rests on.
    pub fn seeds_label(&self, r: &Run) -> String {
        match self.evidence_for(r).n() {
            1 => "1 seed".into(),
            n => format!("{n} seeds"),
        }
    }

    /// Whether `r` is a run of the kept configuration itself (nothing to compare it with).
    pub fn is_kept_configuration(&self, r: &Run) -> bool {
        self.kept.is_some_and(|k| k.train_hash == r.train_hash)
    }

    /// What `r` is compared with: the current kept state, unless `r` is of the kept configuration.
    pub fn reference_for(&self, r: &Run) -> Option<&'a Run> {
        self.kept.filter(|k| k.train_hash != r.train_hash)
    }

    /// The configuration of run `r` against the current kept state: paired on shared seeds, judged
    /// against the noise of both (see the module docs). What every reply, row and commit shows.
    pub fn compare(&self, r: &Run) -> Comparison<'a> {
        let reference = self.reference_for(r);
        let result = self.evidence_for(r);
        let kept = reference.map(|k| self.evidence(&k.train_hash));
        let paired = kept.as_ref().and_then(|k| Paired::of(&result, k));
        let delta = match (&paired, &kept) {
            (Some(p), _) => Some(p.mean()),
            (None, Some(k)) => result.mean().zip(k.mean()).map(|(a, b)| a - b),
            _ => None,
        };
        let floor = self.noise_floor.map(|f| Noise { margin: FLOORS * f.0, source: NoiseSource::BaselineFloor });
        let spread = |sd: Option<f64>, source| sd.map(|s| Noise { margin: FLOORS * s, source });
        let candidates = match paired.as_ref().and_then(Paired::half_width) {
            Some(h) => vec![Some(Noise { margin: h, source: NoiseSource::PairedDifferences }), floor],
            None => vec![
                spread(result.sd(), NoiseSource::ResultSpread),
                spread(kept.as_ref().and_then(Evidence::sd), NoiseSource::KeptSpread),
                floor,
            ],
        };
        let noise = candidates.into_iter().flatten().max_by(|a, b| a.margin.total_cmp(&b.margin));
        let mut flags = vec![];
        if r.metrics.as_ref().is_some_and(|m| m.seed_ignored()) {
            flags.push(Flag::SeedIgnored);
        }
        if let (Some(k), Some(delta)) = (&kept, delta) {
            if paired.is_none() {
                flags.push(Flag::Unpaired);
            }
            if result.n() == 1 && k.n() > 1 {
                flags.push(Flag::SingleSeed);
            }
            if k.n() == 1 && result.n() > 1 {
                flags.push(Flag::KeptSingleSeed);
            }
            if delta < 0.0 {
                flags.push(match noise {
                    Some(n) if -delta > n.margin => Flag::ClearImprovement,
                    Some(_) => Flag::WithinNoise,
                    None => Flag::NoiseFloorUnknown,
                });
            }
        }
        Comparison { reference, result, kept, paired, noise, delta, flags }
    }

    /// The best kept result after keeping `candidate` (it becomes the best only if it is better).
    pub fn best_with(&self, candidate: &'a Run) -> Option<&'a Run> {
        match self.best_where(|r| r.id != candidate.id && self.sets_the_bar(r)) {
            Some(b) if order(b, candidate) == Ordering::Less => Some(b),
            _ if self.includes(candidate) => Some(candidate),
            other => other,
        }
    }
}

/// A configuration compared with the current kept state.
#[derive(Debug, Clone)]
pub struct Comparison<'a> {
    /// The kept run compared with (`None`: nothing kept or measured yet, or the result is of the kept
    /// configuration itself).
    pub reference: Option<&'a Run>,
    /// The result's configuration, seed by seed.
    pub result: Evidence,
    /// The kept configuration, seed by seed.
    pub kept: Option<Evidence>,
    /// On the seeds both trained.
    pub paired: Option<Paired>,
    /// What a difference was judged against (`None`: no spread measured on either side).
    pub noise: Option<Noise>,
    /// Result minus kept (exact): the paired mean, else mean against mean.
    delta: Option<f64>,
    pub flags: Vec<Flag>,
}

/// `42,43,44`.
fn seed_list(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

impl Comparison<'_> {
    /// Result minus kept as the agent sees it: the mean of the rounded per-seed differences when
    /// paired, else the difference of the rounded means.
    pub fn delta_for_agent(&self) -> Option<f64> {
        match &self.paired {
            Some(p) => Some(p.mean_for_agent()),
            None => Some(agent_delta(self.result.mean()?, self.kept.as_ref()?.mean()?)),
        }
    }

    /// Better than the kept state (exact figures; paired when possible), or nothing to beat yet.
    pub fn beats(&self) -> bool {
        self.reference.is_none() || self.delta.is_some_and(|d| d < 0.0)
    }

    /// Better by more than the noise it was judged against.
    pub fn clear_improvement(&self) -> bool {
        self.flags.contains(&Flag::ClearImprovement)
    }

    /// The comparison in one line, at the agent's resolution: `vs kept r0012 on seeds 42,43,44:
    /// -11.00, -19.60, -13.10 (mean -14.57, 95% [-25.90, -3.23], all better)`. Empty without a reference.
    pub fn line(&self) -> String {
        let (Some(r), Some(kept)) = (self.reference, &self.kept) else { return String::new() };
        let what = if r.kept { "kept" } else { "baseline" };
        let mut t = match &self.paired {
            Some(p) => {
                let diffs: Vec<String> = p.shown.iter().map(|d| format!("{d:+.2}")).collect();
                let interval =
                    p.interval_for_agent().map(|(lo, hi)| format!(", 95% [{lo:+.2}, {hi:+.2}]")).unwrap_or_default();
                format!(
                    "vs {what} {} on seeds {}: {} (mean {:+.2}{interval}, {})",
                    r.id,
                    seed_list(&p.seeds),
                    diffs.join(", "),
                    p.mean_for_agent(),
                    p.direction()
                )
            }
            None => format!(
                "vs {what} {} (seeds {}; this on seeds {}, none shared): {:+.2} mean against mean, unpaired",
                r.id,
                seed_list(&kept.seeds()),
                seed_list(&self.result.seeds()),
                self.delta_for_agent().unwrap_or_default()
            ),
        };
        if self.flags.contains(&Flag::SingleSeed) {
            t.push_str(&format!("; 1 seed against {}: a screening result", kept.n()));
        }
        if self.flags.contains(&Flag::KeptSingleSeed) {
            t.push_str(&format!("; the {what} state rests on 1 seed"));
        }
        if let Some(n) = self.noise.filter(|_| self.delta.is_some_and(|d| d < 0.0)) {
            let verdict = if self.clear_improvement() { "clear improvement" } else { "within noise" };
            t.push_str(&format!("; {verdict} against {}", n.describe()));
        }
        t
    }

    /// What to do about the flags, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let missing = |have: &Evidence, want: &Evidence| {
            seed_list(&want.seeds().into_iter().filter(|s| !have.by_seed.contains_key(s)).collect::<Vec<_>>())
        };
        let kept_id = self.reference.map(|r| r.id.as_str()).unwrap_or("?");
        self.flags
            .iter()
            .filter_map(|f| {
                let kept = self.kept.as_ref();
                Some(match f {
                    Flag::ClearImprovement => return None,
                    Flag::SeedIgnored => Flag::SeedIgnored.explain(),
                    Flag::NoiseFloorUnknown => Flag::NoiseFloorUnknown.explain(),
                    Flag::WithinNoise => format!(
                        "the improvement ({:+.2}) is within the noise ({}): repeat it on more seeds before keeping it",
                        self.delta_for_agent().unwrap_or_default(),
                        self.noise.map(|n| n.describe()).unwrap_or_default()
                    ),
                    Flag::SingleSeed => format!(
                        "one seed is a screening result: run it on the kept run {kept_id}'s other seeds \
                         (`seed_list: [{}]`) before trusting or keeping it",
                        missing(&self.result, kept?)
                    ),
                    Flag::KeptSingleSeed => format!(
                        "the kept state {kept_id} rests on one seed: compare on more by re-running the kept train.rs \
                         on seeds [{}] (revert, run with `seed_list`, then edit again)",
                        missing(kept?, &self.result)
                    ),
                    Flag::Unpaired => format!(
                        "no seed in common with {kept_id}: run with `seed_list: [{}]` to compare seed by seed",
                        seed_list(&kept?.seeds())
                    ),
                })
            })
            .collect()
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

    /// Run `n` of `hash` on the seeds and mean ranks given.
    fn seeded(n: usize, hash: &str, seeds: &[(u64, f64)], kept: bool) -> Run {
        let ranks: Vec<f64> = seeds.iter().map(|s| s.1).collect();
        let mean = ranks.iter().sum::<f64>() / ranks.len() as f64;
        let m = crate::score::fixture(mean, if ranks.len() > 1 { &ranks } else { &[] });
        let mut r = crate::ledger::fixtures::run(n, hash, Some(m), kept, fp(60));
        r.seed = seeds[0].0;
        r.seeds = seeds.iter().map(|s| s.0).collect();
        r
    }

    fn on_42_to_44(ranks: [f64; 3]) -> Vec<(u64, f64)> {
        vec![(42, ranks[0]), (43, ranks[1]), (44, ranks[2])]
    }

    #[test]
    fn the_kept_state_is_the_newest_kept_run_and_the_best_stays_the_lowest() {
        let mut worse = run(2, "b", Some(25.0), true);
        worse.kept_reason = Some("simpler".into());
        let runs = vec![run(1, "base", Some(20.0), false), worse, run(3, "c", Some(22.0), false)];
        let s = Standings::current(&runs, "base");
        assert_eq!(s.baseline.map(|r| r.id.as_str()), Some("r0001"));
        assert_eq!(s.best.map(|r| r.id.as_str()), Some("r0001"), "the baseline stays the best");
        assert_eq!(s.kept.map(|r| r.id.as_str()), Some("r0002"), "the head of the branch is the reference");
        let c = s.compare(&runs[2]);
        assert_eq!(c.reference.map(|r| r.id.as_str()), Some("r0002"));
        assert_eq!(c.delta_for_agent(), Some(-3.0));
        assert!(c.beats());
        assert_eq!(c.line(), "vs kept r0002 on seeds 42: -3.00 (mean -3.00, all better)");
        assert_eq!(c.flags, vec![Flag::NoiseFloorUnknown], "no spread is measured anywhere");
        assert_eq!(s.best_with(&runs[2]).map(|r| r.id.as_str()), Some("r0001"));
        assert!(s.compare(&runs[1]).reference.is_none(), "the kept configuration is not compared with itself");
        let nothing_kept = vec![run(1, "base", Some(20.0), false), run(2, "c", Some(21.0), false)];
        let s = Standings::current(&nothing_kept, "base");
        assert_eq!(s.kept.map(|r| r.id.as_str()), Some("r0001"), "the baseline while nothing is kept");
        assert!(s.compare(&nothing_kept[1]).line().starts_with("vs baseline r0001 on seeds 42: +1.00"));
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
        assert_eq!(s.kept.map(|r| r.id.as_str()), Some("r0004"), "r0005 crashed: not comparable");
        assert!(!s.compare(&runs[2]).beats(), "equal is not better");
        assert_eq!(s.best_with(&runs[5]).map(|r| r.id.as_str()), Some("r0006"));
        assert!(s.compare(&runs[5]).beats());
        assert!(Standings::current(&[], "base").best.is_none());
    }

    #[test]
    fn a_lucky_single_seed_does_not_outrank_a_three_seed_kept_configuration_without_a_label() {
        let mut runs = vec![
            seeded(1, "base", &on_42_to_44([140.6, 142.1, 139.0]), false),
            seeded(2, "kept", &on_42_to_44([42.3, 78.6, 58.7]), true),
            seeded(3, "lucky", &[(42, 40.0)], false),
        ];
        let s = Standings::current(&runs, "base");
        assert_eq!(s.kept.map(|r| r.id.as_str()), Some("r0002"));
        let c = s.compare(&runs[2]);
        assert!(c.flags.contains(&Flag::SingleSeed) && c.flags.contains(&Flag::WithinNoise), "{:?}", c.flags);
        assert!(!c.clear_improvement(), "one seed 2.3 better against a spread of sd 18");
        assert_eq!(
            c.line(),
            "vs kept r0002 on seeds 42: -2.30 (mean -2.30, all better); 1 seed against 3: a screening result; \
             within noise against 2 x the kept configuration's seed sd (36.36)"
        );
        assert!(c.warnings().iter().any(|w| w.contains("screening") && w.contains("`seed_list: [43,44]`")));

        // Kept anyway: it is the kept state, and everything says it rests on one seed.
        runs[2].kept = true;
        runs[2].kept_at = Some(chrono::Utc::now());
        runs.push(seeded(4, "next", &on_42_to_44([45.0, 60.0, 50.0]), false));
        let s = Standings::current(&runs, "base");
        assert_eq!((s.kept.unwrap().id.as_str(), s.best.unwrap().id.as_str()), ("r0003", "r0003"));
        assert_eq!(s.seeds_label(s.best.unwrap()), "1 seed");
        let c = s.compare(&runs[3]);
        assert!(c.flags.contains(&Flag::KeptSingleSeed), "{:?}", c.flags);
        assert!(
            c.line().starts_with(
                "vs kept r0003 on seeds 42: +5.00 (mean +5.00, all worse); the kept state rests on 1 seed"
            )
        );
        assert!(c.warnings().iter().any(|w| w.contains("seeds [43,44]")), "{:?}", c.warnings());

        // The kept train.rs re-run on the missing seeds: its evidence grows and the pairing covers three.
        runs.push(seeded(5, "lucky", &[(43, 80.0), (44, 61.0)], false));
        let s = Standings::current(&runs, "base");
        assert_eq!(s.seeds_label(s.kept.unwrap()), "3 seeds");
        let c = s.compare(&runs[3]);
        assert_eq!(c.paired.as_ref().unwrap().seeds, vec![42, 43, 44]);
        assert!(
            c.line().starts_with("vs kept r0003 on seeds 42,43,44: +5.00, -20.00, -11.00 (mean -8.67"),
            "{}",
            c.line()
        );
    }

    #[test]
    fn paired_differences_are_computed_and_shown_and_decide_when_consistent() {
        // The night: the kept configuration spread sd 18 over its seeds; the new one is better on
        // every seed by 11 to 20.
        let runs = vec![
            seeded(1, "base", &on_42_to_44([140.6, 142.1, 139.0]), false),
            seeded(2, "kept", &on_42_to_44([42.3, 78.6, 58.7]), true),
            seeded(3, "new", &on_42_to_44([31.3, 59.0, 45.6]), false),
        ];
        let s = Standings::current(&runs, "base");
        let c = s.compare(&runs[2]);
        let p = c.paired.as_ref().unwrap();
        assert_eq!(p.shown, vec![-11.0, -19.6, -13.1]);
        assert!((p.mean() - (-14.5667)).abs() < 1e-3);
        // sd of the differences 4.4836, t(2) = 4.303: half width 11.14.
        assert!((p.half_width().unwrap() - 11.139).abs() < 1e-2, "{:?}", p.half_width());
        assert_eq!(c.noise.unwrap().source, NoiseSource::PairedDifferences);
        assert!(c.clear_improvement(), "{:?}", c.flags);
        assert_eq!(
            c.line(),
            "vs kept r0002 on seeds 42,43,44: -11.00, -19.60, -13.10 (mean -14.57, 95% [-25.71, -3.43], all better); \
             clear improvement against the paired differences' 95% interval (±11.14)"
        );
        assert_eq!(c.delta_for_agent(), Some(-14.57));
    }

    #[test]
    fn a_large_spread_gets_no_clear_improvement_from_a_small_mean_difference_whatever_the_floor() {
        let base = seeded(1, "base", &on_42_to_44([140.6, 142.1, 139.0]), false);
        let kept = seeded(2, "kept", &on_42_to_44([42.3, 78.6, 58.7]), true);
        let runs = vec![base, kept, seeded(3, "new", &on_42_to_44([50.0, 65.0, 49.0]), false)];
        let s = Standings::current(&runs, "base");
        let floor = s.noise_floor.unwrap().0;
        let c = s.compare(&runs[2]);
        let delta = c.delta_for_agent().unwrap();
        assert!(delta < 0.0 && -delta > FLOORS * floor, "the baseline's floor alone would call {delta} clear");
        assert_eq!(c.flags, vec![Flag::WithinNoise]);
        assert_eq!(c.noise.unwrap().source, NoiseSource::PairedDifferences);
        assert!(c.line().contains("(mean -5.20, 95% [") && c.line().contains("mixed); within noise"), "{}", c.line());

        // Unpaired (no shared seed): judged against the larger spread, the kept configuration's.
        let runs =
            vec![runs[0].clone(), runs[1].clone(), seeded(3, "new", &[(45, 50.0), (46, 52.0), (47, 51.0)], false)];
        let s = Standings::current(&runs, "base");
        let c = s.compare(&runs[2]);
        assert_eq!(c.flags, vec![Flag::Unpaired, Flag::WithinNoise]);
        assert_eq!(c.noise.unwrap().source, NoiseSource::KeptSpread);
        assert!(c.line().contains("(seeds 42,43,44; this on seeds 45,46,47, none shared): -8.87 mean against mean"));
        assert!(c.warnings().iter().any(|w| w.contains("`seed_list: [42,43,44]`")), "{:?}", c.warnings());

        // With consistent spreads on both sides, the baseline's floor is the lower bound.
        let runs = vec![
            seeded(1, "base", &on_42_to_44([140.0, 150.0, 130.0]), false),
            seeded(2, "kept", &on_42_to_44([60.0, 61.0, 59.0]), true),
            seeded(3, "new", &on_42_to_44([50.0, 51.2, 48.8]), false),
        ];
        let s = Standings::current(&runs, "base");
        let c = s.compare(&runs[2]);
        assert_eq!((c.noise.unwrap().source, c.flags.clone()), (NoiseSource::BaselineFloor, vec![Flag::WithinNoise]));
    }
}
