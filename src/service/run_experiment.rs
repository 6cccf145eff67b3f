//! `run_experiment`: claims the one run slot, runs the experiment and records it in the ledger.

use std::time::Instant;

use anyhow::Result;
use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::args::{MAX_DESCRIPTION, MAX_SEEDS, RunExperimentArgs};
use super::view;
use super::{Reply, Service, SlotGuard};
use crate::edit;
use crate::experiment::{Outcome, Runner, Toolchain, Trainer};
use crate::fsutil::{free_bytes, one_line, sha256_hex, write_atomic};
use crate::ledger::noise;
use crate::ledger::{Event, Fingerprint, Run, RunStatus, Standings};
use crate::pyenv::PyEnv;
use crate::score::{Metrics, round_rank};

impl Service {
    /// The runner, made on the first run: locating the Python environment may install it (pip, for
    /// minutes), so it runs in its own process group and `cancel` kills the whole of it.
    async fn runner(&self, cancel: &CancellationToken) -> Result<Runner> {
        if let Some(r) = self.runner.lock().unwrap().as_ref() {
            return Ok(r.clone());
        }
        let r = Runner {
            paths: self.paths.clone(),
            config: self.config.clone(),
            pyenv: PyEnv::locate_cancellable(&self.paths.root, cancel).await?,
            trainer: Trainer::Build(Toolchain::detect()?),
            sandbox: self.sandbox.clone(),
        };
        *self.runner.lock().unwrap() = Some(r.clone());
        Ok(r)
    }

    /// Runs one experiment. `cancel` is the request's token; `phase` receives progress labels.
    pub async fn run_experiment(
        &self,
        args: RunExperimentArgs,
        via: &str,
        cancel: CancellationToken,
        phase: watch::Sender<String>,
    ) -> Reply {
        let start = Instant::now();
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        // Room for the call's record and the run's two ledger lines, or nothing runs.
        if let Some(refusal) = self.preflight(&json, 2) {
            return refusal;
        }
        let before = self.train_hash();
        let reply = self.run_inner(&args, cancel, &phase).await;
        self.record("run_experiment", via, json, reply, before, start)
    }

    async fn run_inner(
        &self,
        args: &RunExperimentArgs,
        request_cancel: CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Reply {
        let description = match one_line(&args.description, MAX_DESCRIPTION) {
            Ok(d) => d,
            Err(e) => return Reply::refused(format!("refused: {e}")),
        };
        let seeds = match seeds_to_train(args, self.config.experiment.seed) {
            Ok(s) => s,
            Err(why) => return Reply::refused(format!("refused: {why}")),
        };
        let runs = self.ledger.lock().unwrap().runs().len();
        if let Some(why) = self.limits.refusal(runs, Utc::now()) {
            return Reply::refused(why);
        }
        // Claim the single run slot before anything else.
        let cancel = CancellationToken::new();
        let run_id = {
            let mut slot = self.in_flight.lock().unwrap();
            if let Some(id) = slot.as_ref() {
                return Reply::refused(format!("refused: run {id} is already in flight; one run at a time"));
            }
            let mut n = self.ledger.lock().unwrap().next_run_number();
            // A run whose ledger line is unreadable still holds its number through its folder.
            while self.paths.run_dir(&format!("r{n:04}")).exists() {
                n += 1;
            }
            let id = format!("r{n:04}");
            *slot = Some(id.clone());
            id
        };
        let _release = SlotGuard(&self.in_flight);
        // Either the client's cancellation or server shutdown stops the run.
        let watcher = {
            let (c, rc, sd) = (cancel.clone(), request_cancel.clone(), self.shutdown.clone());
            tokio::spawn(async move {
                tokio::select! { _ = rc.cancelled() => c.cancel(), _ = sd.cancelled() => c.cancel(), _ = c.cancelled() => {} }
            })
        };
        let mut reply = self.run_claimed(&run_id, &description, &seeds, &cancel, phase).await;
        watcher.abort();
        reply.run_id = Some(run_id);
        reply
    }

    async fn run_claimed(
        &self,
        run_id: &str,
        description: &str,
        seeds: &[u64],
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Reply {
        let setup_started = Instant::now();
        let setup = match self.setup(run_id, cancel, phase).await {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let (outcome, repeat_of) =
            match self.execute(run_id, description, seeds, setup_started, &setup, cancel, phase).await {
                Ok(done) => done,
                Err(reply) => return reply,
            };
        let fingerprint = setup.fingerprint;
        let ledger = self.ledger.lock().unwrap();
        let runs = ledger.runs();
        drop(ledger);
        let standings = Standings::of(&runs, &fingerprint, &self.state.baseline_train_hash);
        let Some(run) = runs.iter().find(|r| r.id == run_id) else {
            return Reply::error(format!("run {run_id} is missing from the ledger after it finished"));
        };
        let report = summarize_run(run, &outcome, &standings, &fingerprint);
        let mut text = report.text();
        if let Some(r) = &repeat_of {
            text.push_str(&format!(
                "\nnote: train.rs is identical to run {r} (same fingerprint): this is a repeat, not a new experiment.\n"
            ));
        }
        let mut reply = if outcome.status == RunStatus::Ok { Reply::ok(text) } else { Reply::error(text) };
        // The same comparison as the text, as data: the row, what to do next, the warnings and a failure's
        // message (some clients hand the model the structured content in place of the text).
        let mut row = json!(view::row(run, run.metrics.as_ref().map(|_| standings.compare(run))));
        if let Some(o) = row.as_object_mut() {
            o.insert("next".into(), json!(report.next));
            o.insert("warnings".into(), json!(report.warnings));
            o.insert("message".into(), json!(outcome.message));
        }
        reply.structured = Some(row);
        reply
    }

    /// Everything before the run starts: the checks, the runner (the Python environment located on
    /// the first run), the snapshot of train.rs, the data and the run folder. A refusal or an error is
    /// the reply; nothing is in the ledger yet.
    async fn setup(
        &self,
        run_id: &str,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<Setup, Reply> {
        if let Some(r) = self.off_branch(&self.ws.lock().unwrap()) {
            return Err(r);
        }
        match free_bytes(&self.paths.root) {
            Ok(b) if b < self.config.experiment.min_free_gib << 30 => {
                return Err(Reply::refused(format!(
                    "refused: only {:.1} GiB free on the workspace's disk (need {} GiB); ask the operator to free space",
                    b as f64 / (1u64 << 30) as f64,
                    self.config.experiment.min_free_gib
                )));
            }
            _ => {}
        }
        let cancelled = |what: &str| Reply::error(format!("cancelled during setup ({what}): the run did not start"));
        let runner = match self.runner(cancel).await {
            Ok(r) => r,
            Err(_) if cancel.is_cancelled() => return Err(cancelled("locating the Python environment")),
            Err(e) => return Err(Reply::error(format!("the server cannot run experiments here: {e:#}"))),
        };
        if let Err(e) = runner.sandbox.check() {
            return Err(Reply::refused(format!(
                "refused: the {} sandbox cannot isolate a run here: {e:#}",
                runner.sandbox.name()
            )));
        }
        // Snapshot train.rs; edits are refused from now until the run ends.
        let (snapshot, kept) = {
            let ws = self.ws.lock().unwrap();
            match (ws.read_train(), ws.kept_train()) {
                (Ok(s), Ok(k)) => (s, k),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(Reply::refused(format!("refused: cannot read train.rs: {e:#}")));
                }
            }
        };
        let data = match runner.ensure_data(cancel, phase).await {
            Ok(d) => d,
            Err(_) if cancel.is_cancelled() => return Err(cancelled("preparing the data")),
            Err(e) => {
                return Err(Reply::error(format!(
                    "data preparation failed (not a problem of train.rs; tell the operator): {e:#}"
                )));
            }
        };
        let fingerprint = match runner.fingerprint(&data) {
            Ok(f) => f,
            Err(e) => return Err(Reply::error(format!("cannot fingerprint the run: {e:#}"))),
        };
        let run_dir = self.paths.run_dir(run_id);
        let diff = edit::unified_diff(&String::from_utf8_lossy(&kept), &String::from_utf8_lossy(&snapshot));
        let folder = (|| -> Result<()> {
            std::fs::create_dir_all(&run_dir)?;
            write_atomic(&run_dir.join("train.rs"), &snapshot)?;
            write_atomic(&run_dir.join("diff.patch"), diff.as_bytes())?;
            Ok(())
        })();
        if let Err(e) = folder {
            return Err(Reply::error(format!("cannot create the run folder: {e:#}")));
        }
        Ok(Setup { runner, data, fingerprint, train_hash: sha256_hex(&snapshot), run_dir })
    }

    /// The run's lifecycle, the only place it is written: the `started` row, the experiment, its
    /// metrics file and the `finished` row. Returns the outcome and the earlier run this repeats.
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        run_id: &str,
        description: &str,
        seeds: &[u64],
        setup_started: Instant,
        setup: &Setup,
        cancel: &CancellationToken,
        phase: &watch::Sender<String>,
    ) -> Result<(Outcome, Option<String>), Reply> {
        let (fingerprint, train_hash) = (&setup.fingerprint, &setup.train_hash);
        let repeat_of = self
            .ledger
            .lock()
            .unwrap()
            .runs()
            .iter()
            .rev()
            .find(|r| &r.train_hash == train_hash && &r.fingerprint == fingerprint && r.status == RunStatus::Ok)
            .map(|r| r.id.clone());
        let started = Event::Started {
            run_id: run_id.into(),
            at: Utc::now(),
            train_hash: train_hash.clone(),
            description: description.into(),
            fingerprint: fingerprint.clone(),
            seed: seeds[0],
            seeds: if seeds.len() > 1 { seeds.to_vec() } else { vec![] },
            repeat_of: repeat_of.clone(),
            audit: self.audit.head(),
        };
        if let Err(e) = self.ledger.lock().unwrap().append(started) {
            return Err(Reply::error(format!("cannot write the ledger: {e:#}")));
        }
        let setup_secs = setup_started.elapsed().as_secs_f64();
        let mut outcome = setup.runner.experiment(&setup.run_dir, &setup.data, seeds, cancel, phase).await;
        outcome.phases.setup = Some(setup_secs);
        if let Some(m) = &outcome.metrics {
            let _ = write_atomic(
                &setup.run_dir.join("metrics.json"),
                serde_json::to_string_pretty(m).unwrap_or_default().as_bytes(),
            );
        }
        if let Err(e) = self.ledger.lock().unwrap().append(outcome.finished_event(run_id, self.audit.head())) {
            return Err(Reply::error(format!("cannot write the ledger: {e:#}")));
        }
        Ok((outcome, repeat_of))
    }
}

/// What the setup of a run produced, for its execution.
struct Setup {
    runner: Runner,
    data: Vec<crate::data::Prepared>,
    fingerprint: Fingerprint,
    train_hash: String,
    run_dir: std::path::PathBuf,
}

/// The seeds a run trains: `seed_list` as given, else `seeds` (default 1) consecutive ones from the
/// configured seed. A refusal says what is allowed.
fn seeds_to_train(args: &RunExperimentArgs, first: u64) -> Result<Vec<u64>, String> {
    match (&args.seed_list, args.seeds) {
        (Some(list), n) => {
            let mut distinct = list.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if list.is_empty() || list.len() > MAX_SEEDS as usize || distinct.len() != list.len() {
                return Err(format!("seed_list = {list:?}: give 1 to {MAX_SEEDS} distinct seeds"));
            }
            if n.is_some_and(|n| n as usize != list.len()) {
                return Err(format!("seeds = {} but seed_list has {}: give one of them", n.unwrap_or(0), list.len()));
            }
            Ok(list.clone())
        }
        (None, n) => {
            let n = n.unwrap_or(1);
            if !(1..=MAX_SEEDS).contains(&n) {
                return Err(format!("seeds = {n}: use 1 to {MAX_SEEDS}"));
            }
            Ok((0..n as u64).map(|i| first.wrapping_add(i)).collect())
        }
    }
}

/// A run's reply: the report, and apart, what to do next and the warnings (both also in the text).
struct RunReport {
    body: String,
    next: Option<String>,
    warnings: Vec<String>,
}

impl RunReport {
    fn text(&self) -> String {
        let mut t = self.body.clone();
        t.extend(self.next.iter().map(|n| format!("{n}\n")));
        t.extend(self.warnings.iter().map(|w| format!("warning: {w}\n")));
        t
    }
}

/// The reply to run `run`: the result per seed, its paired comparison with the kept state
/// (`standings`), what the server measured, and what to do next.
fn summarize_run(run: &Run, o: &crate::experiment::Outcome, standings: &Standings, fp: &Fingerprint) -> RunReport {
    let mut t = String::new();
    let run_id = &run.id;
    let comparison = run.metrics.as_ref().map(|_| standings.compare(run));
    let status = o.status.to_string();
    match o.metrics.as_ref().map(Metrics::for_agent) {
        Some(m) => {
            t.push_str(&format!(
                "run {run_id} {status}: mean rank {} (random would be {:.1}, N = {})",
                noise::mean_pm(&m),
                m.random_mean_rank,
                m.n
            ));
            if m.folds.len() > 1 {
                let folds: Vec<String> = m.folds.iter().map(|f| format!("{f:.2}")).collect();
                t.push_str(&format!(
                    " = mean over {} folds [{}], sd {:.2}",
                    m.folds.len(),
                    folds.join(", "),
                    noise::sd(&m.folds).unwrap_or(0.0)
                ));
            }
            t.push('\n');
            let seeds: Vec<String> =
                run.seed_ranks().iter().map(|(s, r)| format!("{s}: {:.2}", round_rank(*r))).collect();
            t.push_str(&format!("per seed: {}\n", seeds.join(", ")));
            match comparison.as_ref().map(|c| c.line()).filter(|l| !l.is_empty()) {
                Some(line) => t.push_str(&format!("{line} (lower is better)\n")),
                None if standings.is_kept_configuration(run) => t.push_str(&format!(
                    "this is the kept configuration: its evidence is now {} (mean {:.2})\n",
                    standings.seeds_label(run),
                    standings.evidence(&run.train_hash).mean().map(round_rank).unwrap_or_default()
                )),
                None => t.push_str("no earlier comparable run\n"),
            }
            t.push_str(&format!(
                "median rank {:.1}; image->text R@1/5/10 {:.1}/{:.1}/{:.1}%; text->image R@1/5/10 {:.1}/{:.1}/{:.1}%\n",
                m.median_rank, m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10
            ));
        }
        None => t.push_str(&format!("run {run_id} {status}\n")),
    }
    let r = &o.reported;
    if r.steps.is_some() || r.final_loss.is_some() {
        t.push_str(&format!(
            "reported by train.rs (unverified, last seed): steps {}, final loss {}, peak memory {}\n",
            r.steps.map(|s| s.to_string()).unwrap_or("?".into()),
            r.final_loss.map(|l| format!("{l:.4}")).unwrap_or("?".into()),
            r.peak_memory_bytes.map(|b| format!("{:.2} GB", b as f64 / 1e9)).unwrap_or("?".into()),
        ));
    }
    let p = &o.phases;
    let f = |x: Option<f64>| x.map(|v| format!("{v:.1}s")).unwrap_or("-".into());
    t.push_str(&format!(
        "server-measured: build {}, train {}, embed {} + {}, score {}, total {:.1}s; fingerprint {} ({} profile, {}, budget {} s)\n",
        f(p.build), f(p.train), f(p.embed_images), f(p.embed_texts), f(p.score), p.total, fp.short(), fp.profile, fp.device, fp.budget_seconds
    ));
    if let (Some(overhead), Some(before), Some(after)) = (p.overhead(), p.to_first_step(), p.after_last_step()) {
        t.push_str(&format!(
            "not training: {overhead:.1}s of {:.1}s: {before:.1}s before the first step (setup {}, build {}, trainer start-up {}: sandbox and process {}, data load {}), {after:.1}s after the last (checkpoint and exit {}, embed, score)\n",
            p.total + p.setup.unwrap_or(0.0),
            f(p.setup), f(p.build), f(p.train_startup), f(p.sandbox_start), f(p.data_load), f(p.train_exit)
        ));
    }
    // Throughput per seed: each seed's reported steps over its own loop time (the server's clock).
    if let Some(sps) = run.steps_per_s() {
        let each: Vec<String> = run
            .per_seed
            .iter()
            .filter_map(|s| Some(format!("{}: {} steps in {:.1}s", s.seed, s.steps?, s.loop_s?)))
            .collect();
        let each = if each.len() > 1 { format!(" ({})", each.join(", ")) } else { String::new() };
        t.push_str(&format!("throughput: {sps:.2} steps/s per seed over the training loop{each}\n"));
    }
    let cut = run.budget_cut_seeds();
    if !cut.is_empty() {
        let seeds: Vec<String> = cut.iter().map(u64::to_string).collect();
        t.push_str(&format!(
            "BUDGET CUT on seed {}: training stopped at the budget before train.rs's schedule (MAX_STEPS) ended; \
             fewer steps or a shorter schedule would finish it\n",
            seeds.join(", ")
        ));
    }
    if o.overran {
        t.push_str("OVERRAN: training took longer than its budget; this run cannot be committed.\n");
    }
    if let Some(msg) = &o.message {
        t.push_str(msg);
        t.push('\n');
    }
    let next = comparison.as_ref().filter(|_| o.status == RunStatus::Ok && !o.overran).map(|c| match c.reference {
        None if standings.is_kept_configuration(run) => {
            "Next: this train.rs is already kept; edit it for the next experiment.".to_string()
        }
        None => "Next: commit to keep it (nothing to compare with yet), or revert.".to_string(),
        Some(_) if c.clear_improvement() => "Next: commit: a clear improvement on the kept state.".into(),
        Some(_) if c.beats() => {
            "Next: better than the kept state but not clearly: repeat on more seeds (`seed_list`) before committing, or revert.".into()
        }
        Some(r) => format!(
            "Next: revert: this does not beat the kept state {}; commit it only with a `reason` to keep it anyway.",
            r.id
        ),
    });
    RunReport { body: t, next, warnings: comparison.iter().flat_map(|c| c.warnings()).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::fixtures::*;

    fn outcome(run: &Run) -> crate::experiment::Outcome {
        crate::experiment::Outcome {
            status: RunStatus::Ok,
            metrics: run.metrics.clone(),
            reported: Default::default(),
            phases: Default::default(),
            overran: false,
            message: None,
            per_seed: vec![],
        }
    }

    #[test]
    fn the_run_report_shows_rounded_numbers_and_deltas_from_rounded_values() {
        let new = run("r0004", "new", exact(12.345678, &[12.1111111, 12.5802469]), false);
        let runs = vec![run("r0002", "other", exact(14.004999, &[]), true), new];
        let t =
            summarize_run(&runs[1], &outcome(&runs[1]), &Standings::current(&runs, BASELINE), &fingerprint()).text();
        assert!(t.contains("mean rank 12.35 ± 0.33 (n=2)"), "{t}");
        assert!(t.contains("[11.36, 13.33]"), "{t}");
        assert!(t.contains("per seed: 42: 12.11, 43: 12.58\n"), "{t}");
        assert!(t.contains("vs kept r0002 on seeds 42: -1.89 (mean -1.89, all better)"), "{t}");
        assert!(t.contains("R@1/5/10 33.3/66.7/71.4%"), "{t}");
        assert!(t.contains("Next: commit"), "{t}");
        assert!(max_decimals(&t) <= 2, "{t}");
    }

    #[test]
    fn the_run_reply_and_its_row_give_the_same_delta_against_the_same_run() {
        // Baseline r0001 at 20, r0002 kept with a reason at 25 (worse, but the kept state), r0003 at 22.
        let mut runs = ledger();
        runs[0].metrics = Some(exact(20.0, &[]));
        runs[1].metrics = Some(exact(25.0, &[]));
        runs[1].kept_reason = Some("simpler".into());
        runs[2].metrics = Some(exact(26.0, &[]));
        let standings = Standings::current(&runs, BASELINE);
        let t = summarize_run(&runs[2], &outcome(&runs[2]), &standings, &fingerprint()).text();
        assert!(t.contains("vs kept r0002 on seeds 42: +1.00 (mean +1.00, all worse)"), "{t}");
        assert!(t.contains("does not beat the kept state r0002"), "{t}");
        let row = view::row(&runs[2], Some(standings.compare(&runs[2])));
        assert_eq!((row.delta_vs_kept, row.compared_with.as_deref()), (Some(1.0), Some("r0002")));
    }

    #[test]
    fn seeds_are_counted_or_named() {
        let args = |seeds: Option<u32>, list: Option<Vec<u64>>| RunExperimentArgs {
            description: "d".into(),
            seeds,
            seed_list: list,
        };
        assert_eq!(seeds_to_train(&args(None, None), 42), Ok(vec![42]));
        assert_eq!(seeds_to_train(&args(Some(3), None), 42), Ok(vec![42, 43, 44]));
        assert_eq!(seeds_to_train(&args(None, Some(vec![43, 44])), 42), Ok(vec![43, 44]));
        assert_eq!(seeds_to_train(&args(Some(2), Some(vec![7, 9])), 42), Ok(vec![7, 9]));
        assert!(seeds_to_train(&args(Some(9), None), 42).unwrap_err().contains("use 1 to 5"));
        assert!(seeds_to_train(&args(None, Some(vec![1, 1])), 42).unwrap_err().contains("distinct"));
        assert!(seeds_to_train(&args(None, Some(vec![])), 42).is_err());
        assert!(seeds_to_train(&args(Some(3), Some(vec![1])), 42).unwrap_err().contains("one of them"));
    }
}
