//! Noise-aware comparisons: a run repeated over seeds is a mean ± sd over n samples; the baseline's
//! seed-to-seed spread is the noise floor of its fingerprint; an "improvement" smaller than twice that
//! floor is flagged as noise, and a train.rs whose repeats are identical is flagged as ignoring its seed.

use serde::{Deserialize, Serialize};

use crate::ledger::Run;
use crate::score::Metrics;

/// How many noise floors an improvement must exceed to count as one (about 95% for normal noise).
pub const FLOORS: f64 = 2.0;

/// What a comparison found worth saying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Better than the best kept result, but by less than FLOORS noise floors.
    WithinNoiseFloor,
    /// Repeats over different seeds gave identical results: train.rs ignores AR_SEED.
    SeedIgnored,
    /// Better than the best kept result, but the noise floor is not measured yet.
    NoiseFloorUnknown,
}

impl Flag {
    /// One sentence for the agent; `delta` and `floor` as the agent sees them
    /// ([`agent_delta`](crate::score::agent_delta), [`round_rank`](crate::score::round_rank)).
    pub fn explain(self, delta: Option<f64>, floor: Option<f64>) -> String {
        match self {
            Flag::WithinNoiseFloor => format!(
                "the improvement ({:+.2}) is inside the noise floor ({FLOORS} x sd {:.2} of the baseline across seeds): \
                 repeat it with `seeds` before keeping it",
                delta.unwrap_or(0.0),
                floor.unwrap_or(0.0)
            ),
            Flag::SeedIgnored => "repeats over different seeds gave identical results: train.rs ignores the seed \
                 (ctx.seed / AR_SEED), so repeats cannot measure noise"
                .into(),
            Flag::NoiseFloorUnknown => "the noise floor is not measured yet: run the unmodified baseline with \
                 `seeds: 3` to learn how much the metric moves by chance"
                .into(),
        }
    }
}

/// Sample standard deviation (n - 1), when there are at least two samples.
pub fn sd(x: &[f64]) -> Option<f64> {
    if x.len() < 2 {
        return None;
    }
    let m = x.iter().sum::<f64>() / x.len() as f64;
    Some((x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt())
}

/// The noise floor of the comparable runs given ([`crate::ledger::standings::comparable`]): the sd over
/// the distinct seeds of the runs of the baseline train.rs, with the number of seeds. A repeat with a seed already seen
/// is the same sample again (training is deterministic per seed), so it counts once. `None` below two
/// seeds, or when the baseline ignores its seed (zero spread would call every change significant).
pub fn noise_floor(runs: &[&Run], baseline_hash: &str) -> Option<(f64, usize)> {
    let mut by_seed: std::collections::BTreeMap<u64, f64> = Default::default();
    for r in runs.iter().filter(|r| r.train_hash == baseline_hash) {
        let Some(m) = &r.metrics else { continue };
        for (i, rank) in m.samples().into_iter().enumerate() {
            by_seed.entry(r.seed.wrapping_add(i as u64)).or_insert(rank);
        }
    }
    let samples: Vec<f64> = by_seed.into_values().collect();
    sd(&samples).filter(|s| *s > 0.0).map(|s| (s, samples.len()))
}

/// The flags of `m` against the best kept mean rank and the noise floor.
pub fn flags(m: &Metrics, best_kept: Option<f64>, floor: Option<f64>) -> Vec<Flag> {
    let mut f = vec![];
    if m.seed_ignored() {
        f.push(Flag::SeedIgnored);
    }
    if let Some(best) = best_kept {
        let delta = m.mean_rank - best;
        if delta < 0.0 {
            match floor {
                Some(fl) if -delta < FLOORS * fl => f.push(Flag::WithinNoiseFloor),
                Some(_) => {}
                None => f.push(Flag::NoiseFloorUnknown),
            }
        }
    }
    f
}

/// `12.34 ± 0.56 (n=3)`, or `12.34` for one sample. For the agent, give it [`Metrics::for_agent`]:
/// the sd then comes from the rounded seeds too.
pub fn mean_pm(m: &Metrics) -> String {
    match sd(&m.seeds) {
        Some(s) => format!("{:.2} ± {s:.2} (n={})", m.mean_rank, m.seeds.len()),
        None => format!("{:.2}", m.mean_rank),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(mean: f64, seeds: &[f64]) -> Metrics {
        let one = |r: f64| Metrics {
            mean_rank: r,
            median_rank: r,
            i2t_mean_rank: r,
            t2i_mean_rank: r,
            i2t_r1: 0.0,
            i2t_r5: 0.0,
            i2t_r10: 0.0,
            t2i_r1: 0.0,
            t2i_r5: 0.0,
            t2i_r10: 0.0,
            n: 100,
            random_mean_rank: 49.5,
            folds: vec![],
            seeds: vec![],
        };
        if seeds.is_empty() {
            one(mean)
        } else {
            Metrics::over_seeds(&seeds.iter().map(|&r| one(r)).collect::<Vec<_>>())
        }
    }

    #[test]
    fn repeats_average_and_report_their_spread() {
        let m = metrics(0.0, &[10.0, 12.0, 14.0]);
        assert_eq!(m.mean_rank, 12.0);
        assert_eq!(m.seeds, vec![10.0, 12.0, 14.0]);
        assert_eq!(mean_pm(&m), "12.00 ± 2.00 (n=3)");
        assert_eq!(mean_pm(&metrics(7.0, &[])), "7.00");
    }

    #[test]
    fn small_improvements_are_noise_and_identical_repeats_ignore_the_seed() {
        let floor = Some(1.5);
        // 2.5 better than best kept 20: inside 2 x 1.5.
        assert_eq!(flags(&metrics(17.5, &[]), Some(20.0), floor), vec![Flag::WithinNoiseFloor]);
        // 4 better: a real improvement.
        assert!(flags(&metrics(16.0, &[]), Some(20.0), floor).is_empty());
        // Worse is not flagged; better with no floor asks for one.
        assert!(flags(&metrics(21.0, &[]), Some(20.0), floor).is_empty());
        assert_eq!(flags(&metrics(19.0, &[]), Some(20.0), None), vec![Flag::NoiseFloorUnknown]);
        let same = metrics(0.0, &[18.0, 18.0, 18.0]);
        assert!(same.seed_ignored());
        assert_eq!(flags(&same, None, floor), vec![Flag::SeedIgnored]);
        assert!(!metrics(0.0, &[18.0, 18.5]).seed_ignored());
    }
}
