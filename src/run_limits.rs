//! What the server enforces for a supervisor: the deadline and the experiment budget of `saturday`,
//! given to `serve` on its command line and checked by `run_experiment` before a run starts.

use chrono::{DateTime, Local, Utc};

/// Limits a supervisor sets on `serve`: no new run past the deadline, or once the ledger holds
/// `max_runs` runs. A refusal is a tool result the agent reads, audited like every call.
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    pub deadline: Option<DateTime<Utc>>,
    pub max_runs: Option<usize>,
}

impl RunLimits {
    /// Why a new run must not start now, if it must not.
    pub fn refusal(&self, runs_in_ledger: usize, now: DateTime<Utc>) -> Option<String> {
        const THEN: &str = "Write what you learned and what to try next with append_scratchpad, then stop.";
        if let Some(d) = self.deadline
            && now >= d
        {
            return Some(format!(
                "refused: the session's deadline ({}) has passed: no new experiments. {THEN}",
                d.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z")
            ));
        }
        if let Some(m) = self.max_runs
            && runs_in_ledger >= m
        {
            return Some(format!(
                "refused: the session's experiment budget is spent ({m} runs in the ledger): no new experiments. {THEN}"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_past_the_deadline_and_the_budget() {
        let now = Utc::now();
        let l = RunLimits { deadline: Some(now + chrono::Duration::minutes(5)), max_runs: Some(3) };
        assert_eq!(l.refusal(2, now), None);
        assert!(l.refusal(3, now).unwrap().contains("budget is spent"));
        assert!(l.refusal(0, now + chrono::Duration::minutes(6)).unwrap().contains("deadline"));
        assert_eq!(RunLimits::default().refusal(1000, now), None);
    }
}
