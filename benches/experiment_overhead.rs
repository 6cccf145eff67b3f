//! Experiment overhead: how much of a `run_experiment` call is not training, after a one-line edit of
//! train.rs on a warm machine (trainer compiled once, data prepared). Through a real MCP client over
//! stdio against the real server and sandbox, on a fresh workspace (by default of a freshly generated
//! synthetic dataset: tests size for the tests profile, demo size otherwise).
//!
//! Per run it makes a one-line edit (a different WEIGHT_DECAY each time, so cargo really recompiles
//! train.rs), calls run_experiment, and splits the call's wall time (client clock) into the server's
//! phase times and the trainer harness's landmarks (first step, end of the loop). Prints a table per
//! run and the median; the target is under 15 s of overhead.
//!
//! `cargo bench --bench experiment_overhead [-- --profile tests|cpu|gpu --runs N --budget S --dataset DIR]`
//! (default: tests profile, 3 runs, 5 s training budget; the budget only sets how long the loop runs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use autoresearch_mcp::ledger::PhaseTimes;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde_json::{Value, json};

struct Args {
    profile: String,
    runs: usize,
    budget: u64,
    dataset: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { profile: "tests".into(), runs: 3, budget: 5, dataset: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--profile" => a.profile = value()?,
            "--runs" => a.runs = value()?.parse().context("--runs: a number")?,
            "--budget" => a.budget = value()?.parse().context("--budget: seconds")?,
            "--dataset" => a.dataset = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other:?} (see the header of benches/experiment_overhead.rs)"),
        }
    }
    ensure!(a.runs >= 1, "--runs must be at least 1");
    Ok(a)
}

/// One call's figures, in seconds: the client's clock and the server's phase times.
struct Figures {
    wall: f64,
    phases: PhaseTimes,
}

impl Figures {
    /// Wall time of the call that the server's experiment and setup do not account for: the MCP
    /// round trip, argument checks, the ledger's finished record, the reply.
    fn outside(&self) -> Option<f64> {
        Some(self.wall - self.phases.total - self.phases.setup?)
    }
    fn model_build(&self) -> Option<f64> {
        let p = &self.phases;
        Some(p.train_startup? - p.sandbox_start? - p.data_load?)
    }
    /// The whole call minus the training loop (client clock).
    fn overhead(&self) -> Option<f64> {
        Some(self.wall - self.phases.train_loop?)
    }
}

async fn call(client: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> Result<rmcp::model::CallToolResult> {
    let params =
        CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
    client.call_tool(params).await.with_context(|| format!("calling {tool}"))
}

fn text_of(r: &rmcp::model::CallToolResult) -> String {
    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect::<Vec<_>>().join("\n")
}

/// Runs one experiment and returns its figures; fails on anything but an `ok` run.
async fn run(client: &RunningService<RoleClient, ()>, description: &str) -> Result<Figures> {
    let t = Instant::now();
    let r = call(client, "run_experiment", json!({ "description": description })).await?;
    let wall = t.elapsed().as_secs_f64();
    let row = r.structured_content.clone().with_context(|| format!("no run row: {}", text_of(&r)))?;
    ensure!(row["status"] == "ok", "run {description:?} did not succeed:\n{}", text_of(&r));
    let phases = serde_json::from_value(row["phases"].clone()).context("the run row's phases")?;
    Ok(Figures { wall, phases })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_autoresearch-mcp"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("ws");
    let dataset = match &args.dataset {
        Some(d) => d.clone(),
        None => {
            // The synthetic dataset at the size the profile is meant for (tests: small, else demo).
            let size = if args.profile == "tests" { "tests" } else { "demo" };
            let dir = tmp.path().join("data");
            eprintln!("generating the synthetic dataset ({size} size)...");
            let out = std::process::Command::new(&bin).args(["synth", "--size", size, "--out"]).arg(&dir).output()?;
            ensure!(out.status.success(), "synth: {}", String::from_utf8_lossy(&out.stderr));
            dir
        }
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("-C").arg(&repo).args(["new-workspace", "--profile", &args.profile, "--tag", "overhead-bench"]);
    cmd.args(["--experiment", &format!("budget_seconds = {}", args.budget)]);
    let out = cmd.arg("--dataset").arg(&dataset).arg(&ws).output()?;
    ensure!(out.status.success(), "new-workspace: {}", String::from_utf8_lossy(&out.stderr));
    let transport = TokioChildProcess::new(tokio::process::Command::new(&bin).configure(|c| {
        c.arg("-C").arg(&ws).arg("serve").env("RUST_LOG", "warn");
    }))?;
    let client = ().serve(transport).await?;

    eprintln!("warm-up run (prepares the data if needed, compiles the trainer if needed)...");
    let warm = run(&client, "warm-up").await?;
    eprintln!(
        "warm-up: {:.1} s (setup incl. data preparation {:.1} s, build {:.1} s)",
        warm.wall,
        warm.phases.setup.unwrap_or(f64::NAN),
        warm.phases.build.unwrap_or(f64::NAN)
    );

    let train = std::fs::read_to_string(ws.join("trainer/src/train.rs"))?;
    let line = train.lines().find(|l| l.starts_with("const WEIGHT_DECAY: f64 = ")).context("no WEIGHT_DECAY line")?;
    let mut figures = vec![];
    for i in 1..=args.runs {
        // A one-line edit with a new value each time: cargo must recompile train.rs.
        let next = format!("const WEIGHT_DECAY: f64 = 1.{i:03}e-4; // overhead bench edit {i}");
        let r =
            call(&client, "edit_train", json!({"command": "str_replace", "old_str": line, "new_str": next})).await?;
        ensure!(r.is_error != Some(true), "edit_train: {}", text_of(&r));
        eprintln!("run {i}/{} (one-line edit)...", args.runs);
        let f = run(&client, &format!("overhead bench, edit {i}")).await?;
        eprintln!("run {i}: {:.1} s", f.wall);
        figures.push(f);
        // Back to the kept train.rs, so that the next edit is again one line away from it.
        let r = call(&client, "revert", json!({})).await?;
        ensure!(r.is_error != Some(true), "revert: {}", text_of(&r));
    }
    client.cancel().await?;

    type Row<'a> = (&'a str, Box<dyn Fn(&Figures) -> Option<f64>>);
    let rows: Vec<Row> = vec![
        ("call -> first training step", Box::new(|f| f.phases.to_first_step())),
        ("  server setup (disk, sandbox check, snapshot, data cache, fingerprint)", Box::new(|f| f.phases.setup)),
        ("  incremental build of the edited train.rs (sandboxed cargo)", Box::new(|f| f.phases.build)),
        ("  sandbox start + process start (libtorch loaded)", Box::new(|f| f.phases.sandbox_start)),
        ("  data load (prepared split onto the device)", Box::new(|f| f.phases.data_load)),
        ("  model build, optimiser, until step 1", Box::new(Figures::model_build)),
        ("training loop (not overhead)", Box::new(|f| f.phases.train_loop)),
        ("last training step -> score recorded", Box::new(|f| Some(f.phases.after_last_step()? + f.outside()?))),
        ("  checkpoint write + trainer exit", Box::new(|f| f.phases.train_exit)),
        ("  embed images (sandboxed process)", Box::new(|f| f.phases.embed_images)),
        ("  embed texts (sandboxed process)", Box::new(|f| f.phases.embed_texts)),
        ("  score (server)", Box::new(|f| f.phases.score)),
        ("  ledger, reply, MCP round trip", Box::new(Figures::outside)),
        ("whole call (client clock)", Box::new(|f| Some(f.wall))),
        ("OVERHEAD (whole call - training loop)", Box::new(Figures::overhead)),
    ];
    let cell = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
    println!();
    println!(
        "== experiment overhead after a one-line train.rs edit: profile {}, training budget {} s, {} run(s), {} CPUs, warm machine",
        args.profile,
        args.budget,
        args.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!();
    let heads: Vec<String> = (1..=figures.len()).map(|i| format!("run {i}")).collect();
    println!("| seconds | {} | median |", heads.join(" | "));
    println!("|---|{}---|", "---|".repeat(figures.len()));
    for (label, get) in &rows {
        let vals: Vec<Option<f64>> = figures.iter().map(get).collect();
        let med = median(vals.iter().flatten().copied().collect());
        let cells: Vec<String> = vals.into_iter().map(cell).collect();
        println!("| {label} | {} | {} |", cells.join(" | "), cell(med));
    }
    println!();
    let build = median(figures.iter().filter_map(|f| f.phases.build).collect());
    let overhead = median(figures.iter().filter_map(Figures::overhead).collect());
    println!("incremental build after a one-line train.rs edit: {} s (median)", cell(build));
    println!(
        "experiment overhead: {} s (median; target < 15 s); warm-up run with data preparation: {:.1} s",
        cell(overhead),
        warm.wall
    );
    Ok(())
}
