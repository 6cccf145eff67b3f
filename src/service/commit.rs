//! `commit`: keeps the current train.rs as a commit on the experiment branch, with its best run's result.

use chrono::Utc;
use serde_json::Value;

use super::args::{CommitArgs, MAX_DESCRIPTION};
use super::{Reply, Service};
use crate::fsutil::{one_line, sha256_hex};
use crate::ledger::standings::Comparison;
use crate::ledger::{Event, Run, Standings};
use crate::noise;
use crate::score::{Metrics, round_rank};
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
        let reason = match args.reason.as_deref().map(|r| one_line(r, MAX_DESCRIPTION)).transpose() {
            Ok(r) => r,
            Err(e) => return Reply::refused(format!("refused: reason: {e}")),
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
        let standings = Standings::current(&runs, &self.state.baseline_train_hash);
        let Some(latest_fp) = standings.fingerprint() else {
            return Reply::refused("refused: no run has been recorded yet; run_experiment first");
        };
        let Some(run) = standings.best_where(|r| r.train_hash == hash) else {
            let candidates: Vec<&Run> =
                runs.iter().filter(|r| r.train_hash == hash && &r.fingerprint == latest_fp).collect();
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
        let m = run.metrics.clone().expect("comparable runs have metrics");
        let comparison = standings.compare(&run.id, &m);
        if !comparison.beats()
            && reason.is_none()
            && let Some(best) = comparison.reference
        {
            return Reply::refused(format!(
                "refused: run {} ({}) does not beat the best kept result {} ({:.2}, delta {:+.2}); nothing was committed. \
                 Revert, or keep trying; to keep it anyway, commit again with a `reason` (the best kept result stays {}).",
                run.id,
                noise::mean_pm(&m.for_agent()),
                best.id,
                best.mean_rank().map(round_rank).unwrap_or_default(),
                comparison.delta_for_agent().unwrap_or_default(),
                best.id
            ));
        }
        let best_after = standings.best_with(run);
        let mut trailers = String::new();
        if let Some(f) = standings.noise_floor {
            trailers.push_str(&format!("Noise-Floor: {:.2}\n", round_rank(f.0)));
        }
        if !comparison.flags.is_empty() {
            let names: Vec<String> = comparison
                .flags
                .iter()
                .filter_map(|f| serde_json::to_value(f).ok()?.as_str().map(String::from))
                .collect();
            trailers.push_str(&format!("Flags: {}\n", names.join(", ")));
        }
        if let Some(b) = best_after {
            trailers.push_str(&format!(
                "Best-Kept: {} {:.2}\n",
                b.id,
                b.mean_rank().map(round_rank).unwrap_or_default()
            ));
        }
        if let Some(why) = &reason {
            trailers.push_str(&format!("Kept-Reason: {why}\n"));
        }
        let head = self.audit.head();
        let message = format!(
            "exp {}: {} | {description}\n\nRun: {}\nTrain-Hash: {hash}\nFingerprint: {}\n{trailers}Audit-Head: {}\nAudit-Lines: {}\n",
            run.id,
            commit_headline(&m, &comparison),
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
            reason: reason.clone(),
            audit: head,
        }) {
            return Reply::error(format!(
                "committed {commit} on {branch}, but its ledger line could not be written: {e:#}. The next server start adds it (it reconciles the branch with the ledger)."
            ));
        }
        let mut text =
            format!("kept run {run_id} as commit {}:\n{}\n", &commit[..10], message.lines().next().unwrap_or(""));
        match (&reason, best_after) {
            (Some(why), Some(b)) if b.id != run_id => text.push_str(&format!(
                "kept with reason ({why}): it does not beat {}, which stays the best kept result; new runs are compared with {}\n",
                b.id, b.id
            )),
            (Some(why), _) => text.push_str(&format!("reason recorded: {why}\n")),
            (None, _) => {}
        }
        if let Some(b) = best_after {
            text.push_str(&format!("best kept: {} ({:.2})\n", b.id, b.mean_rank().map(round_rank).unwrap_or_default()));
        }
        for w in comparison.warnings() {
            text.push_str(&format!("warning: {w}\n"));
        }
        let mut r = Reply::ok(text);
        r.run_id = Some(run_id);
        r
    }
}

/// `mean_rank 12.35 (-1.65 vs r0002 14.00)`, the commit's headline. The agent sees it in the reply,
/// so it is at the agent's resolution (the ledger keeps the exact figures).
fn commit_headline(m: &Metrics, c: &Comparison) -> String {
    let delta = c
        .reference
        .and_then(|r| Some(format!("{:+.2} vs {} {:.2}", c.delta_for_agent()?, r.id, round_rank(r.mean_rank()?))))
        .unwrap_or_else(|| "no reference".into());
    format!("mean_rank {} ({delta})", noise::mean_pm(&m.for_agent()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fixtures::*;

    #[test]
    fn the_commit_headline_is_what_the_agent_saw() {
        let runs = vec![run("r0002", "other", exact(14.004999, &[]), true)];
        let s = Standings::current(&runs, BASELINE);
        let m = exact(12.345678, &[]);
        assert_eq!(commit_headline(&m, &s.compare("r0003", &m)), "mean_rank 12.35 (-1.65 vs r0002 14.00)");
        let m = exact(9.999, &[]);
        assert_eq!(
            commit_headline(&m, &Standings::current(&[], BASELINE).compare("r0001", &m)),
            "mean_rank 10.00 (no reference)"
        );
        let runs = vec![
            run("r0002", "other", exact(15.004, &[]), true),
            run("r0003", BASELINE, exact(20.0, &[19.0, 20.23456]), false),
        ];
        let s = Standings::current(&runs, BASELINE);
        let w = s.compare("r0004", &exact(14.996, &[])).warnings();
        assert!(w[0].contains("(+0.00)") && w[0].contains("sd 0.87 "), "{w:?}");
    }
}
