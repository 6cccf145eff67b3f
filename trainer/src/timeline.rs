//! Landmarks of the train phase, for the server's overhead breakdown (how much of an experiment is not
//! training): when the process reached the harness, when the prepared data was on the device, when the
//! training loop first asked for the time (its first step) and when the checkpoint was saved (after
//! the last step). Process-wide: a trainer process runs one phase.
//!
//! `train.rs` cannot move these marks without editing the harness, but it decides when it calls the
//! harness; the server treats them as reported figures, never as a score.

use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static ORIGIN: OnceLock<(Instant, f64)> = OnceLock::new();
static DATA_LOADED: OnceLock<f64> = OnceLock::new();
static FIRST_STEP: OnceLock<f64> = OnceLock::new();
static LOOP_END: OnceLock<f64> = OnceLock::new();
static BUDGET_SPENT: OnceLock<f64> = OnceLock::new();

/// The landmarks, in seconds since [`start`]; `None` where not reached.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Timeline {
    /// Unix time of [`start`] (the phase's context was built): the server subtracts its own spawn time
    /// to get the sandbox's start plus the process's start (libtorch loaded).
    pub started_unix: f64,
    /// `TrainData::load` returned: the prepared split is on the device.
    pub data_loaded_s: Option<f64>,
    /// The first `Context::time_is_up`/`time_left` call: the training loop's first step begins.
    pub first_step_s: Option<f64>,
    /// `checkpoint::save` was entered: the last step is done.
    pub loop_end_s: Option<f64>,
    /// The first time `Context::time_is_up`/`time_left` found the budget spent: the loop stopped at
    /// the budget, before train.rs's own schedule ended.
    pub budget_spent_s: Option<f64>,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn origin() -> &'static (Instant, f64) {
    ORIGIN.get_or_init(|| (Instant::now(), unix_now()))
}

fn mark(slot: &OnceLock<f64>) {
    let (t0, _) = origin();
    slot.get_or_init(|| t0.elapsed().as_secs_f64());
}

/// Sets the origin (first call wins); called when the context is built.
pub fn start() {
    origin();
}

/// The prepared data is loaded (first call wins).
pub fn data_loaded() {
    mark(&DATA_LOADED);
}

/// The training loop asked for the time: its first step begins (first call wins).
pub fn first_step() {
    mark(&FIRST_STEP);
}

/// The checkpoint is about to be written: the loop is over (first call wins).
pub fn loop_end() {
    mark(&LOOP_END);
}

/// The training loop found its budget spent (first call wins).
pub fn budget_spent() {
    mark(&BUDGET_SPENT);
}

/// The landmarks so far.
pub fn snapshot() -> Timeline {
    let (_, started_unix) = *origin();
    Timeline {
        started_unix,
        data_loaded_s: DATA_LOADED.get().copied(),
        first_step_s: FIRST_STEP.get().copied(),
        loop_end_s: LOOP_END.get().copied(),
        budget_spent_s: BUDGET_SPENT.get().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_ordered_and_the_first_call_wins() {
        start();
        data_loaded();
        std::thread::sleep(std::time::Duration::from_millis(5));
        first_step();
        let first = snapshot().first_step_s.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        first_step(); // a later step does not move the first
        loop_end();
        let t = snapshot();
        assert_eq!(t.first_step_s, Some(first));
        let (d, f, e) = (t.data_loaded_s.unwrap(), t.first_step_s.unwrap(), t.loop_end_s.unwrap());
        assert!(d < f && f < e, "{t:?}");
        assert!((t.started_unix - unix_now()).abs() < 60.0, "{t:?}");
        assert_eq!(t.budget_spent_s, None, "the budget was never found spent");
        budget_spent();
        assert!(snapshot().budget_spent_s.unwrap() >= e);
    }
}
