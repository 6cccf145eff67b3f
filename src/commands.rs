//! What each subcommand does (the CLI's bodies), kept out of `main` so tests and main share them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Outcome};
use crate::cli::{AuditAction, Cli, Command};
use crate::ledger::Ledger;
use crate::paths::Paths;
use crate::server::AutoresearchServer;
use crate::service::{RunExperimentArgs, Service, recorded_heads};
use crate::synth::{self, SynthSpec};
use crate::workspace::Workspace;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let root = cli.workspace.canonicalize().with_context(|| format!("workspace {}", cli.workspace.display()))?;
    let paths = Paths::new(&root);
    match cli.command {
        Command::Init { tag } => init(&paths, &tag),
        Command::Serve => serve(&paths).await,
        Command::Run { description } => run_once(&paths, description).await,
        Command::Audit { action, tool, outcome, since } => {
            audit_cmd(&paths, action.unwrap_or(AuditAction::List), tool, outcome, since)
        }
        Command::Doctor => {
            let checks = crate::doctor::run(&root).await;
            Ok(if crate::doctor::print(&checks) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Report => {
            let ledger = Ledger::open(&paths.ledger())?;
            print!("{}", crate::report::markdown_table(&ledger.runs()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { out, size } => {
            let spec = match size.as_str() {
                "demo" => SynthSpec::demo(),
                "tests" => SynthSpec::tests(),
                other => bail!("--size {other:?}: use demo or tests"),
            };
            let out = out.unwrap_or_else(|| root.join("data/synthetic"));
            let s = synth::ensure(&out, &spec)?;
            eprintln!(
                "synthetic dataset in {}: train {}, val {}, test {} (hash {})",
                s.dir.display(),
                s.counts[0],
                s.counts[1],
                s.counts[2],
                &s.hash[..12]
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::NewWorkspace { dir, profile, dataset, tag, experiment, model, config } => {
            let profile: crate::config::Profile = serde_json::from_value(serde_json::Value::String(profile.clone()))
                .map_err(|_| anyhow::anyhow!("--profile {profile:?}: use tests, cpu or gpu"))?;
            let scaffold = crate::scaffold::Scaffold {
                repo: &root,
                profile,
                dataset,
                experiment_extra: experiment.join("\n"),
                model_extra: model.join("\n"),
                config,
                server_bin: std::env::current_exe()?,
            };
            let ws = scaffold.create(&dir)?;
            init(&Paths::new(&ws), &tag)?;
            println!("{}", ws.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::UnsandboxedExperiment(args) => crate::direct::main(&root, args).await,
        Command::SandboxExec { .. } => unreachable!("handled in main before the runtime starts"),
    }
}

fn init(paths: &Paths, tag: &str) -> Result<ExitCode> {
    let ws = Workspace::open(&paths.root)?;
    let state = ws.init(tag)?;
    eprintln!(
        "created branch {} at {} (baseline train.rs {}); start the server with `autoresearch-mcp serve`",
        state.branch,
        &state.baseline_commit[..10],
        &state.baseline_train_hash[..12]
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(paths: &Paths) -> Result<ExitCode> {
    let svc = Arc::new(Service::open(&paths.root, None)?);
    tracing::info!(workspace = %paths.root.display(), "serving the six tools over stdio");
    let server = AutoresearchServer::new(svc.clone())
        .serve(rmcp::transport::stdio())
        .await
        .context("MCP initialisation over stdio")?;
    let ct = server.cancellation_token();
    let waiting = tokio::spawn(async move { server.waiting().await });
    let signal = shutdown_signal();
    tokio::select! {
        _ = waiting => tracing::info!("client disconnected"),
        s = signal => tracing::info!("received {s}; stopping"),
    }
    // Stop a run in flight and wait for its cancellation to be recorded.
    svc.shutdown.cancel();
    ct.cancel();
    for _ in 0..100 {
        if svc.run_in_flight().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term, mut hup) =
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return std::future::pending().await,
        };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

async fn run_once(paths: &Paths, description: String) -> Result<ExitCode> {
    let svc = Arc::new(Service::open(&paths.root, None)?);
    let (tx, mut rx) = tokio::sync::watch::channel("starting".to_string());
    let cancel = CancellationToken::new();
    let progress = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let phase = rx.borrow_and_update().clone();
            eprintln!("[run] {phase}");
        }
    });
    let c2 = cancel.clone();
    tokio::spawn(async move {
        let s = shutdown_signal().await;
        eprintln!("[run] {s}: cancelling");
        c2.cancel();
    });
    let reply = svc.run_experiment(RunExperimentArgs { description }, "cli", cancel, tx).await;
    progress.abort();
    println!("{}", reply.text);
    Ok(if reply.is_error() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn audit_cmd(
    paths: &Paths,
    action: AuditAction,
    tool: Option<String>,
    outcome: Option<String>,
    since: Option<String>,
) -> Result<ExitCode> {
    match action {
        AuditAction::Verify => {
            let heads = recorded_heads(paths)?;
            let v = audit::verify(&paths.audit(), &heads)?;
            match &v.first_bad {
                None => {
                    println!(
                        "audit log OK: {} lines, head {}, {} recorded heads match",
                        v.lines,
                        &v.head.hash[..16],
                        heads.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some((line, why)) => {
                    println!("audit log FAILED verification at line {line}: {why}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditAction::List | AuditAction::Summary => {
            let since = since
                .map(|s| chrono::DateTime::parse_from_rfc3339(&s).map(|d| d.with_timezone(&chrono::Utc)))
                .transpose()
                .context("--since must be RFC 3339, e.g. 2026-11-23T08:00:00Z")?;
            let recs: Vec<_> = audit::read_all(&paths.audit())?
                .into_iter()
                .filter(|r| tool.as_deref().is_none_or(|t| r.tool == t))
                .filter(|r| outcome.as_deref().is_none_or(|o| r.outcome.as_str() == o))
                .filter(|r| since.is_none_or(|s| r.ts >= s))
                .collect();
            if matches!(action, AuditAction::List) {
                for r in &recs {
                    println!(
                        "{} {:<18} {:<8} {:>9.1} ms {}{}",
                        r.ts.format("%Y-%m-%d %H:%M:%S"),
                        r.tool,
                        r.outcome.as_str(),
                        r.duration_ms,
                        r.run_id.as_deref().map(|i| format!("[{i}] ")).unwrap_or_default(),
                        r.reason.as_deref().unwrap_or("")
                    );
                }
            } else {
                let mut per: std::collections::BTreeMap<(String, &str), (usize, f64)> = Default::default();
                for r in &recs {
                    let e = per.entry((r.tool.clone(), r.outcome.as_str())).or_default();
                    e.0 += 1;
                    e.1 += r.duration_ms;
                }
                println!("{} calls", recs.len());
                for ((t, o), (n, ms)) in per {
                    println!("  {t:<18} {o:<8} {n:>5} calls {:>10.1} s", ms / 1e3);
                }
                let refused: Vec<_> = recs.iter().filter(|r| r.outcome == Outcome::Refused).collect();
                if !refused.is_empty() {
                    println!("refusals:");
                    for r in refused {
                        println!("  {} {}: {}", r.ts.format("%H:%M:%S"), r.tool, r.reason.as_deref().unwrap_or(""));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
