//! `commit`: keeps the current train.rs as a commit on the experiment branch, with its best run's result.

use chrono::Utc;
use serde_json::Value;

use super::args::{CommitArgs, MAX_DESCRIPTION};
use super::{Reply, Service, cmp_rank, explain_for_agent};
use crate::fsutil::{one_line, sha256_hex};
use crate::ledger::{self, Event, Run, RunStatus};
use crate::noise;
use crate::score::{Metrics, agent_delta, round_rank};
use crate::workspace::CommitError;

impl Service {
    pub fn commit(&self, args: CommitArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("commit", via, json, 1, || self.commit_inner(&args))
    }

    fn commit_inner(&self, args: &CommitArgs) -> Reply {
        let description = match one_line(&args.description, MAX_DESCRIPTION) {
            Ok(d) => d,
            Err(e) => return Reply::refused(format!("refused: {e}")),
        };
        if let Some(id) = self.run_in_flight() {
            return Reply::refused(format!("refused: run {id} is in flight; commit after it finishes"));
        }
        let ws = self.ws.lock().unwrap();
        if let Some(r) = self.off_branch(&ws) {
            return r;
        }
        let branch = &self.state.branch;
        let (current, (parent, kept)) = match (ws.read_train(), ws.kept_at(branch)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return Reply::refused(format!("refused: cannot read train.rs: {e:#}")),
        };
        if current == kept {
            return Reply::refused("refused: train.rs is identical to the last kept commit; nothing to commit");
        }
        let hash = sha256_hex(&current);
        let mut ledger = self.ledger.lock().unwrap();
        let runs = ledger.runs();
        let Some(latest_fp) = runs.last().map(|r| r.fingerprint.clone()) else {
            return Reply::refused("refused: no run has been recorded yet; run_experiment first");
        };
        let candidates: Vec<&Run> =
            runs.iter().filter(|r| r.train_hash == hash && r.fingerprint == latest_fp).collect();
        let Some(run) =
            candidates.iter().filter(|r| r.status == RunStatus::Ok && !r.overran).min_by(|a, b| cmp_rank(a, b))
        else {
            let why = if candidates.iter().any(|r| r.overran) {
                "its only successful runs overran the time budget"
            } else if candidates.is_empty() {
                "this exact train.rs has never been run (edits after the last run count)"
            } else {
                "none of its runs succeeded"
            };
            return Reply::refused(format!(
                "refused: cannot commit this train.rs: {why}. run_experiment first, or revert."
            ));
        };
        let m = run.metrics.clone().expect("ok runs have metrics");
        let others: Vec<Run> = runs.iter().filter(|r| r.id != run.id).cloned().collect();
        let reference = ledger::reference_run(&others, &latest_fp, &self.state.baseline_train_hash);
        let (best, floor) = self.comparison(&runs, &latest_fp, &run.id);
        let flags = noise::flags(&m, best, floor);
        let mut trailers = String::new();
        if let Some(f) = floor {
            trailers.push_str(&format!("Noise-Floor: {:.2}\n", round_rank(f)));
        }
        if !flags.is_empty() {
            let names: Vec<String> =
                flags.iter().filter_map(|f| serde_json::to_value(f).ok()?.as_str().map(String::from)).collect();
            trailers.push_str(&format!("Flags: {}\n", names.join(", ")));
        }
        let head = self.audit.head();
        let message = format!(
            "exp {}: {} | {description}\n\nRun: {}\nTrain-Hash: {hash}\nFingerprint: {}\n{trailers}Audit-Head: {}\nAudit-Lines: {}\n",
            run.id,
            commit_headline(&m, reference),
            run.id,
            latest_fp.short(),
            head.hash,
            head.lines
        );
        let commit = match ws.commit_on(branch, parent, &current, &message) {
            Ok(c) => c,
            Err(CommitError::Refused(why)) => {
                return Reply::refused(format!(
                    "refused: {why}. Nothing was committed and the ledger is unchanged; commit again once that is resolved."
                ));
            }
            Err(CommitError::Failed(why)) => {
                return Reply::error(format!(
                    "git commit failed before the branch moved: {why}. Nothing was committed and the ledger is unchanged."
                ));
            }
        };
        let run_id = run.id.clone();
        if let Err(e) = ledger.append(Event::Kept {
            run_id: run_id.clone(),
            at: Utc::now(),
            commit: commit.clone(),
            train_hash: hash,
            audit: head,
        }) {
            return Reply::error(format!(
                "committed {commit} on {branch}, but its ledger line could not be written: {e:#}. The next server start adds it (it reconciles the branch with the ledger)."
            ));
        }
        let mut text =
            format!("kept run {run_id} as commit {}:\n{}\n", &commit[..10], message.lines().next().unwrap_or(""));
        for f in &flags {
            text.push_str(&format!("warning: {}\n", explain_for_agent(*f, &m, best, floor)));
        }
        let mut r = Reply::ok(text);
        r.run_id = Some(run_id);
        r
    }
}

/// `mean_rank 12.35 (-1.65 vs r0002 14.00)`, the commit's headline. The agent sees it in the reply,
/// so it is at the agent's resolution (the ledger keeps the exact figures).
fn commit_headline(m: &Metrics, reference: Option<&Run>) -> String {
    let delta = reference
        .and_then(|r| {
            r.mean_rank().map(|b| format!("{:+.2} vs {} {:.2}", agent_delta(m.mean_rank, b), r.id, round_rank(b)))
        })
        .unwrap_or_else(|| "no reference".into());
    format!("mean_rank {} ({delta})", noise::mean_pm(&m.for_agent()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fixtures::*;

    #[test]
    fn the_commit_headline_is_what_the_agent_saw() {
        let reference = run("r0002", "other", exact(14.004999, &[]), true);
        let h = commit_headline(&exact(12.345678, &[]), Some(&reference));
        assert_eq!(h, "mean_rank 12.35 (-1.65 vs r0002 14.00)");
        assert_eq!(commit_headline(&exact(9.999, &[]), None), "mean_rank 10.00 (no reference)");
        let w = explain_for_agent(noise::Flag::WithinNoiseFloor, &exact(14.996, &[]), Some(15.004), Some(1.23456));
        assert!(w.contains("(+0.00)") && w.contains("sd 1.23 "), "{w}");
    }
}
