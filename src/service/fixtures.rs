//! Ledgers for the service's unit tests.

use crate::ledger::{Fingerprint, Run};
use crate::score::Metrics;

pub const BASELINE: &str = "baseline-hash";

pub fn fingerprint() -> Fingerprint {
    crate::ledger::fixtures::fingerprint(333, 60)
}

/// Metrics with many decimals everywhere, as the scorer produces them.
pub fn exact(mean: f64, seeds: &[f64]) -> Metrics {
    crate::score::fixture(mean, seeds)
}

pub fn run(id: &str, train_hash: &str, m: Metrics, kept: bool) -> Run {
    crate::ledger::fixtures::run(id[1..].parse().unwrap(), train_hash, Some(m), kept, fingerprint())
}

/// The most digits after a decimal point among the numbers written in `text`.
pub fn max_decimals(text: &str) -> usize {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|tok| tok.trim_matches('.').split_once('.'))
        .map(|(_, frac)| frac.len())
        .max()
        .unwrap_or(0)
}

/// Baseline r0001 over two seeds, r0002 kept at 15.004, r0003 at 14.996: 0.008 better exactly,
/// but both show as 15.00.
pub fn ledger() -> Vec<Run> {
    vec![
        run("r0001", BASELINE, exact(20.12345678, &[20.0012345, 20.2456789]), false),
        run("r0002", "other", exact(15.004, &[]), true),
        run("r0003", "third", exact(14.996, &[]), false),
    ]
}
