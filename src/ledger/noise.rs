//! Noise: a run repeated over seeds is a mean ± sd over n samples; the baseline's seed-to-seed spread
//! is the noise floor of its fingerprint, the lower bound of the noise a difference is judged against
//! (the comparison itself, paired and per configuration, is [`crate::ledger::standings`]); a train.rs
//! whose repeats are identical is flagged as ignoring its seed.

use serde::{Deserialize, Serialize};

use super::Run;
use crate::score::Metrics;

/// How many seed sds (the floor, or a configuration's spread) an unpaired improvement must exceed to
/// count as one (about 95% for normal noise).
pub const FLOORS: f64 = 2.0;

/// What a comparison with the kept state found worth saying ([`crate::ledger::standings::Comparison`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Better than the kept state by more than the noise it was judged against.
    ClearImprovement,
    /// Better than the kept state, but within the noise (paired differences, either side's seed
    /// spread, or the baseline's floor, whichever is largest).
    WithinNoise,
    /// Repeats over different seeds gave identical results: train.rs ignores AR_SEED.
    SeedIgnored,
    /// Better than the kept state, but no spread is measured on either side nor for the baseline.
    NoiseFloorUnknown,
    /// One seed against a kept state measured on several: a screening result.
    SingleSeed,
    /// The kept state rests on one seed while this result has several.
    KeptSingleSeed,
    /// No seed in common with the kept state: mean against mean.
    Unpaired,
}

impl Flag {
    /// The flags that need no comparison to explain, in one sentence.
    pub fn explain(self) -> String {
        match self {
            Flag::SeedIgnored => "repeats over different seeds gave identical results: train.rs ignores the seed \
                 (ctx.seed / AR_SEED), so repeats cannot measure noise"
                .into(),
            Flag::NoiseFloorUnknown => "no noise is measured yet: run the unmodified baseline with `seeds: 3` to \
                 learn how much the metric moves by chance"
                .into(),
            other => serde_json::to_value(other).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
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
        for (seed, rank) in r.seed_ranks() {
            by_seed.entry(seed).or_insert(rank);
        }
    }
    let samples: Vec<f64> = by_seed.into_values().collect();
    sd(&samples).filter(|s| *s > 0.0).map(|s| (s, samples.len()))
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
        assert!(metrics(0.0, &[18.0, 18.0, 18.0]).seed_ignored());
        assert!(!metrics(0.0, &[18.0, 18.5]).seed_ignored());
    }
}
