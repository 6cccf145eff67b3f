//! The tools' argument types: their doc comments are the schema descriptions the agent reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ledger::RunStatus;

/// Longest description accepted for a run or commit.
pub const MAX_DESCRIPTION: usize = 200;
/// Most seeds one run_experiment may repeat over.
pub const MAX_SEEDS: u32 = 5;
/// Longest scratchpad entry accepted.
pub const MAX_SCRATCHPAD_ENTRY: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EditCommand {
    /// Show the file with line numbers (optionally only `view_range`).
    View,
    /// Replace `old_str`, which must occur exactly once, by `new_str`.
    StrReplace,
    /// Insert `new_str` as new lines after line `insert_line` (0 = top of file).
    Insert,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EditTrainArgs {
    /// `view`, `str_replace` or `insert`.
    pub command: EditCommand,
    /// The file to edit. Only `trainer/src/train.rs` is editable; it is also the default.
    #[serde(default)]
    pub path: Option<String>,
    /// For `view`: [first, last] line, 1-based and inclusive; last = -1 means the end of the file.
    #[serde(default)]
    pub view_range: Option<Vec<i64>>,
    /// For `str_replace`: the exact text to replace, whitespace included; it must match exactly once.
    #[serde(default)]
    pub old_str: Option<String>,
    /// For `str_replace`: the replacement. For `insert`: the lines to insert.
    #[serde(default)]
    pub new_str: Option<String>,
    /// For `insert`: the line after which `new_str` goes (0 inserts at the top).
    #[serde(default)]
    pub insert_line: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunExperimentArgs {
    /// One line saying what this experiment tests (the hypothesis), e.g. "LR 3e-4 -> 1e-4".
    pub description: String,
    /// Train this train.rs over this many seeds (1-5, default 1; each takes a full budget) and score
    /// the mean ± sd. Repeating the unmodified baseline measures the noise floor.
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_SEEDS))]
    pub seeds: Option<u32>,
    /// Train on exactly these seeds instead (1-5 distinct values), e.g. the kept run's missing seeds
    /// to compare seed by seed: re-run the kept train.rs on the seeds a candidate has and it lacks.
    #[serde(default)]
    #[schemars(length(min = 1, max = MAX_SEEDS))]
    pub seed_list: Option<Vec<u64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ReadMetricsArgs {
    /// List the last N runs, one line each (default 5).
    #[serde(default)]
    pub last: Option<usize>,
    /// Only runs with this status (ok, build_failed, crashed, timeout, invalid_output, cancelled, abandoned).
    #[serde(default)]
    pub status: Option<RunStatus>,
    /// Only runs that were kept (committed).
    #[serde(default)]
    pub kept_only: Option<bool>,
    /// Also the full rows (every metric, phase times, the comparison line), 10 runs a page.
    #[serde(default)]
    pub full: Option<bool>,
    /// With `full`: which page, 1 being the newest runs (default 1).
    #[serde(default)]
    pub page: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommitArgs {
    /// One line describing the kept change; it goes into the commit message after the metric and delta.
    pub description: String,
    /// Required only to keep a train.rs whose best run does not beat the best kept result (e.g. "same
    /// score, half the code"): one line, recorded in the commit and the ledger. The best kept result
    /// then stays what it was.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RevertArgs {
    /// Optional one-line reason, recorded in the ledger with the discarded diff.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ScratchpadArgs {
    /// The note to append (markdown; tabs and newlines allowed, no other control characters; at most 8 KB).
    pub entry: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema the agent reads (as rmcp generates it for tools/list) says what is valid.
    #[test]
    fn the_seeds_schema_says_one_to_five() {
        let schema = rmcp::handler::server::common::schema_for_type::<RunExperimentArgs>();
        let seeds = &schema["properties"]["seeds"];
        assert_eq!(
            (seeds["minimum"].as_u64(), seeds["maximum"].as_u64()),
            (Some(1), Some(MAX_SEEDS as u64)),
            "{seeds}"
        );
        let list = &schema["properties"]["seed_list"];
        assert_eq!((list["minItems"].as_u64(), list["maxItems"].as_u64()), (Some(1), Some(MAX_SEEDS as u64)), "{list}");
    }
}
