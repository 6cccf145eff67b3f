//! `commit`: keeps the current train.rs as a commit on the experiment branch, with its best run's result.

use chrono::Utc;
use serde_json::Value;

use super::args::{CommitArgs, MAX_DESCRIPTION};
use super::{Reply, Service};
use crate::fsutil::{one_line, sha256_hex};
use crate::ledger::noise;
use crate::ledger::standings::Comparison;
use crate::ledger::{Event, Run, Standings};
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
        let comparison = standings.compare(run);
        if !comparison.beats()
            && reason.is_none()
            && let Some(kept) = comparison.reference
        {
            return Reply::refused(format!(
                "refused: run {} ({}) does not beat the kept state {} ({}); nothing was committed. \
                 Revert, or keep trying; to keep it anyway, commit again with a `reason` (it then becomes the kept state).",
                run.id,
                noise::mean_pm(&m.for_agent()),
                kept.id,
                comparison.line()
            ));
        }
        let best_after = standings.best_with(run);
        let mut trailers = String::new();
        if comparison.reference.is_some() {
            trailers.push_str(&format!("Vs-Kept: {}\n", comparison.line()));
        }
        trailers.push_str(&format!("Evidence: {}\n", standings.seeds_label(run)));
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
                "Best-Kept: {} {:.2} ({})\n",
                b.id,
                b.mean_rank().map(round_rank).unwrap_or_default(),
                standings.seeds_label(b)
            ));
        }
        if let Some(why) = &reason {
            trailers.push_str(&format!("Kept-Reason: {why}\n"));
        }
        let head = self.audit.head();
        let message = format!(
            "exp {}: {} | {description}\n\nRun: {}\nTrain-Hash: {hash}\nFingerprint: {}\n{trailers}Audit-Head: {}\nAudit-Lines: {}\n",
            run.id,
            commit_headline(&m, &comparison, &standings.seeds_label(run)),
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
        match (&reason, comparison.reference) {
            (Some(why), Some(k)) if !comparison.beats() => text.push_str(&format!(
                "kept with reason ({why}): it does not beat {}; it is now the kept state, and new runs are compared with it\n",
                k.id
            )),
            (Some(why), _) => text.push_str(&format!("reason recorded: {why}\n")),
            (None, _) => {}
        }
        if let Some(b) = best_after {
            text.push_str(&format!(
                "best kept: {} ({:.2}, {})\n",
                b.id,
                b.mean_rank().map(round_rank).unwrap_or_default(),
                standings.seeds_label(b)
            ));
        }
        if standings.seeds_label(run) == "1 seed" {
            text.push_str(&format!(
                "note: the kept state now rests on one seed (a screening result): run_experiment with `seed_list` \
                 on two more seeds now, before editing, so later results pair with it (its seed is {})\n",
                run.seed
            ));
        }
        for w in comparison.warnings() {
            text.push_str(&format!("warning: {w}\n"));
        }
        let mut r = Reply::ok(text);
        r.run_id = Some(run_id);
        r
    }
}

/// `mean_rank 12.35 ± 0.20 (n=3) (-1.65 vs kept r0002 on 3 seeds, all better)`, the commit's headline:
/// the paired comparison with the kept state (its mean over the shared seeds), never the lowest number
/// ever kept. The agent sees it in the reply, so it is at the agent's resolution.
fn commit_headline(m: &Metrics, c: &Comparison, evidence: &str) -> String {
    let delta = match (c.reference, &c.paired) {
        (Some(r), Some(p)) => format!(
            "{:+.2} vs {} {} on {} shared seed{}, {}",
            p.mean_for_agent(),
            if r.kept { "kept" } else { "baseline" },
            r.id,
            p.seeds.len(),
            if p.seeds.len() == 1 { "" } else { "s" },
            p.direction()
        ),
        (Some(r), None) => format!(
            "{:+.2} vs {} {}, unpaired",
            c.delta_for_agent().unwrap_or_default(),
            if r.kept { "kept" } else { "baseline" },
            r.id
        ),
        (None, _) => "no reference".into(),
    };
    let label = if evidence == "1 seed" { ", 1 seed: screening" } else { "" };
    format!("mean_rank {} ({delta}{label})", noise::mean_pm(&m.for_agent()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fixtures::*;

    #[test]
    fn the_commit_headline_is_the_paired_comparison_the_agent_saw() {
        let runs =
            vec![run("r0002", "other", exact(14.004999, &[]), true), run("r0003", "new", exact(12.345678, &[]), false)];
        let s = Standings::current(&runs, BASELINE);
        let m = runs[1].metrics.clone().unwrap();
        assert_eq!(
            commit_headline(&m, &s.compare(&runs[1]), "1 seed"),
            "mean_rank 12.35 (-1.65 vs kept r0002 on 1 shared seed, all better, 1 seed: screening)"
        );
        let alone = vec![run("r0001", "x", exact(9.999, &[]), false)];
        let m = exact(9.999, &[]);
        assert_eq!(
            commit_headline(&m, &Standings::current(&alone, BASELINE).compare(&alone[0]), "1 seed"),
            "mean_rank 10.00 (no reference, 1 seed: screening)"
        );
    }

    #[test]
    fn a_better_three_seed_configuration_is_never_called_a_regression_against_a_lucky_seed() {
        // r0005 kept on seed 42 alone at 42.32; its train.rs re-run on 43 and 44; the new configuration
        // is better on each seed though its mean is above the lucky draw.
        let mut lucky = run("r0005", "lucky", exact(42.32, &[]), true);
        lucky.seed = 42;
        let mut rerun = run("r0006", "lucky", exact(69.0, &[78.6, 59.4]), false);
        (rerun.seed, rerun.seeds) = (43, vec![43, 44]);
        let mut new = run("r0007", "new", exact(47.13, &[31.3, 59.0, 51.1]), false);
        new.seeds = vec![42, 43, 44];
        let runs = vec![lucky, rerun, new];
        let s = Standings::current(&runs, BASELINE);
        let c = s.compare(&runs[2]);
        let h = commit_headline(runs[2].metrics.as_ref().unwrap(), &c, "3 seeds");
        assert!(
            h.starts_with("mean_rank 47.13 ± ") && h.ends_with("(-12.97 vs kept r0005 on 3 shared seeds, all better)"),
            "{h}"
        );
        assert!(c.beats());
    }
}
