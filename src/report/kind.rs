//! How a run shows in reports and tables (its [`Kind`]) and labels made safe for one line. Shared by
//! the report and `report --test` ([`crate::test_split`]), which the report reads: kept here, apart
//! from both, so neither imports the other back.

use crate::ledger::{Run, RunStatus};

/// How a run shows on the chart and in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Scored and committed.
    Kept,
    /// Scored, and its train.rs is the baseline's (the branch's starting point).
    Baseline,
    /// Scored, not kept.
    Discarded,
    /// No score: build failed, crashed, timed out or wrote invalid embeddings.
    Crashed,
    /// No score: cancelled, abandoned by a server that died, or still running.
    Cancelled,
}

impl Kind {
    pub fn of(run: &Run, baseline_hash: Option<&str>) -> Self {
        match run.status {
            RunStatus::Ok if run.kept => Kind::Kept,
            RunStatus::Ok if Some(run.train_hash.as_str()) == baseline_hash => Kind::Baseline,
            RunStatus::Ok => Kind::Discarded,
            RunStatus::BuildFailed | RunStatus::Crashed | RunStatus::Timeout | RunStatus::InvalidOutput => {
                Kind::Crashed
            }
            RunStatus::Cancelled | RunStatus::Abandoned | RunStatus::Running => Kind::Cancelled,
        }
    }

    /// The CSS/SVG class and the word used in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Kept => "kept",
            Kind::Baseline => "baseline",
            Kind::Discarded => "discarded",
            Kind::Crashed => "crashed",
            Kind::Cancelled => "cancelled",
        }
    }
}

/// A description made safe for one line of a label: controls dropped, whitespace collapsed,
/// at most `max` characters (with an ellipsis).
pub fn short_label(s: &str, max: usize) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() || c.is_whitespace() { ' ' } else { c }).collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    if clean.chars().count() <= max {
        clean
    } else {
        let mut t: String = clean.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_one_short_line() {
        assert_eq!(short_label("a\tb\n\u{1b}[31mc  d", 40), "a b [31mc d");
        assert_eq!(short_label("abcdefghij", 5), "abcd…");
        assert_eq!(short_label("ünïcødé", 7), "ünïcødé");
    }
}
