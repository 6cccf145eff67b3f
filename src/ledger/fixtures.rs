//! Runs and fingerprints for unit tests: the ledger's own and the service's.

use super::{Fingerprint, Run, RunStatus};
use crate::score::Metrics;

/// A tests-profile fingerprint on the CPU with `val_n` validation pairs and a `budget_seconds` budget.
pub fn fingerprint(val_n: usize, budget_seconds: u64) -> Fingerprint {
    Fingerprint {
        harness: "h".into(),
        data: "d".into(),
        val_n,
        budget_seconds,
        profile: "tests".into(),
        device: "cpu".into(),
        libtorch: "2.11.0".into(),
        towers: String::new(),
    }
}

/// Run number `n` (id `rNNNN`) of `train_hash`: ok with `metrics`, crashed without.
pub fn run(n: usize, train_hash: &str, metrics: Option<Metrics>, kept: bool, fingerprint: Fingerprint) -> Run {
    Run {
        id: format!("r{n:04}"),
        number: n,
        started_at: chrono::Utc::now(),
        train_hash: train_hash.into(),
        description: "d".into(),
        status: if metrics.is_some() { RunStatus::Ok } else { RunStatus::Crashed },
        metrics,
        reported: Default::default(),
        phases: Default::default(),
        overran: false,
        kept,
        kept_reason: None,
        commit: None,
        kept_at: kept.then(|| chrono::DateTime::from_timestamp(n as i64, 0).expect("a valid time")),
        repeat_of: None,
        seed: 42,
        seeds: vec![],
        per_seed: vec![],
        message: None,
        fingerprint,
    }
}
