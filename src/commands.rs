//! What each subcommand does (the CLI's bodies), kept out of `main` so tests and main share them.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Outcome};
use crate::cli::{AuditAction, Cli, Command};
use crate::paths::Paths;
use crate::prebuilt::Isolation;
use crate::server::AutoresearchServer;
use crate::service::{RunExperimentArgs, Service, recorded_heads};
use crate::synth::{self, SynthSpec};
use crate::workspace::Workspace;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let root = cli.workspace.canonicalize().with_context(|| format!("workspace {}", cli.workspace.display()))?;
    let paths = Paths::new(&root);
    match cli.command {
        Command::Init { tag } => init(&paths, &tag),
        Command::Serve { deadline, max_runs } => {
            let deadline = deadline
                .map(|d| chrono::DateTime::parse_from_rfc3339(&d).map(|t| t.with_timezone(&chrono::Utc)))
                .transpose()
                .context("--deadline must be RFC 3339")?;
            serve(&paths, crate::run_limits::RunLimits { deadline, max_runs }).await
        }
        Command::Saturday {
            until,
            for_,
            max_experiments,
            max_turns,
            notify,
            claude,
            backoff_initial,
            backoff_max,
            grace,
        } => {
            let deadline = crate::supervisor::parse_deadline(until.as_deref(), for_.as_deref(), chrono::Local::now())?;
            let opts = crate::supervisor::Options {
                deadline,
                max_experiments,
                max_turns,
                notify,
                claude,
                backoff_initial: Duration::from_secs(backoff_initial),
                backoff_max: Duration::from_secs(backoff_max),
                grace: Duration::from_secs(grace),
            };
            crate::supervisor::saturday(&paths, opts).await
        }
        Command::Status => {
            require_workspace(&paths)?;
            print!("{}", crate::status::render(&paths)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { description, seeds } => {
            run_once(&paths, RunExperimentArgs { description, seeds, seed_list: None }).await
        }
        Command::Audit { action, tool, outcome, since, until } => {
            require_workspace(&paths)?;
            audit_cmd(&paths, action.unwrap_or(AuditAction::List), (tool, outcome, since, until))
        }
        Command::Doctor { state } => {
            let checks = if state { crate::doctor::state_checks(&root) } else { crate::doctor::run(&root).await };
            Ok(if crate::doctor::print(&checks) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Report { out, test } => {
            require_workspace(&paths)?;
            if test {
                report_test(&paths).await?;
            }
            report(&paths, out)
        }
        Command::Export { out, run } => {
            require_workspace(&paths)?;
            export(&paths, out, run)
        }
        Command::Synth { out, size } => {
            let spec = match size {
                synth::Size::Demo => SynthSpec::demo(),
                synth::Size::Tests => SynthSpec::tests(),
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
            let scaffold = crate::scaffold::Scaffold {
                repo: &root,
                profile,
                dataset,
                experiment_extra: experiment.join("\n"),
                model_extra: model.join("\n"),
                config,
                server_bin: std::env::current_exe()?,
            };
            let ws = scaffold.create(&dir).with_context(|| format!("new workspace {}", dir.display()))?;
            init(&Paths::new(&ws), &tag).with_context(|| format!("init the new workspace {}", ws.display()))?;
            println!("{}", ws.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::UnsandboxedExperiment(args) => crate::prebuilt::main(&root, args, Isolation::None).await,
        Command::SandboxedExperiment(args) => crate::prebuilt::main(&root, args, Isolation::Local).await,
        Command::SandboxExec | Command::SandboxJob { .. } => unreachable!("handled in main before the runtime starts"),
    }
}

/// Refuses a folder that is not a workspace (no `.autoresearch/`) before anything is read or written
/// there: `-C /etc report` must not create `/etc/.autoresearch/`.
fn require_workspace(paths: &Paths) -> Result<()> {
    if !paths.state().is_dir() {
        bail!(
            "{} is not an autoresearch workspace: it has no {} (run `autoresearch-mcp init --tag <tag>` in the repository first, or pass -C <workspace>)",
            paths.root.display(),
            paths.relative(&paths.state()).display()
        );
    }
    Ok(())
}

fn report(paths: &Paths, out: Option<std::path::PathBuf>) -> Result<ExitCode> {
    let out = out.unwrap_or_else(|| paths.report());
    eprintln!("report: reading {} and writing {}", paths.relative(&paths.ledger()).display(), out.display());
    let written = crate::report::write(paths, &out)?;
    println!("{}\n", written.headline);
    print!("{}", written.markdown);
    println!();
    let diff_dir = out.join("diffs");
    let (diffs, main): (Vec<_>, Vec<_>) = written.files.iter().partition(|f| f.starts_with(&diff_dir));
    for f in main {
        println!("wrote {}", f.display());
    }
    println!("wrote {} ({} diffs)", diff_dir.display(), diffs.len());
    println!("open {} in a browser", out.join("report.html").display());
    Ok(ExitCode::SUCCESS)
}

/// `report --test`: scores the baseline and kept runs on the test split and prints that table.
async fn report_test(paths: &Paths) -> Result<()> {
    let cancel = CancellationToken::new();
    let watcher = crate::shutdown::cancel_on_signal(&cancel, |s| eprintln!("[test] {s}: cancelling"));
    let scores = crate::report::test_split::score_runs(paths, &cancel, &|line| eprintln!("[test] {line}")).await;
    watcher.abort();
    let scores = scores.context("report --test")?;
    print!("{}", scores.markdown());
    println!();
    println!("wrote {}", crate::report::test_split::TestScores::path(paths).display());
    println!();
    Ok(())
}

fn export(paths: &Paths, out: Option<std::path::PathBuf>, run: Option<String>) -> Result<ExitCode> {
    let out = out.unwrap_or_else(|| paths.state().join("export"));
    let done = crate::export::export(paths, &out, run.as_deref())?;
    for n in &done.notes {
        eprintln!("export: {n}");
    }
    for e in &done.exported {
        let c = &e.card;
        println!(
            "{} {} ({}): validation mean rank {:.2}{}; commit {} -> {}",
            c.role,
            c.run_id,
            crate::report::short_label(&c.description, 80),
            c.validation.mean_rank,
            c.test.as_ref().map(|t| format!(", test {:.2}", t.mean_rank)).unwrap_or_default(),
            c.commit.as_deref().map(|x| &x[..x.len().min(10)]).unwrap_or("none"),
            e.dir.display()
        );
    }
    for f in &done.failed {
        eprintln!("export failed: {f}");
    }
    Ok(if done.failed.is_empty() && !done.exported.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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

async fn serve(paths: &Paths, limits: crate::run_limits::RunLimits) -> Result<ExitCode> {
    let svc = Arc::new(Service::open(&paths.root, None)?.with_limits(limits));
    tracing::info!(workspace = %paths.root.display(), "serving the six tools over stdio");
    let server = AutoresearchServer::new(svc.clone());
    let audit = svc.clone();
    let io = crate::transport::stdio(crate::transport::Options {
        supported_versions: rmcp::ServerHandler::supported_protocol_versions(&server).into_owned(),
        on_refusal: Arc::new(move |r| audit.record_protocol_refusal(r)),
    });
    let server = server.serve(io).await.context("MCP initialisation over stdio")?;
    let ct = server.cancellation_token();
    let waiting = tokio::spawn(async move { server.waiting().await });
    let signal = crate::shutdown::signal();
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

async fn run_once(paths: &Paths, args: RunExperimentArgs) -> Result<ExitCode> {
    let svc = Arc::new(Service::open(&paths.root, None)?);
    let (tx, mut rx) = tokio::sync::watch::channel("starting".to_string());
    let cancel = CancellationToken::new();
    let progress = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let phase = rx.borrow_and_update().clone();
            // Never eprintln! here: a closed stderr (the terminal or parent gone) would panic the task.
            let _ = writeln!(std::io::stderr(), "[run] {phase}");
        }
    });
    crate::shutdown::cancel_on_signal(&cancel, |s| {
        let _ = writeln!(std::io::stderr(), "[run] {s}: cancelling");
    });
    let reply = svc.run_experiment(args, "cli", cancel, tx).await;
    progress.abort();
    println!("{}", reply.text);
    Ok(if reply.is_error() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Which audit records `audit list` and `audit summary` show.
struct AuditFilter {
    tool: Option<String>,
    outcome: Option<Outcome>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl AuditFilter {
    fn parse(
        tool: Option<String>,
        outcome: Option<String>,
        since: Option<String>,
        until: Option<String>,
    ) -> Result<Self> {
        let now = chrono::Utc::now();
        let outcome = outcome
            .map(|o| match o.as_str() {
                "ok" => Ok(Outcome::Ok),
                "refused" => Ok(Outcome::Refused),
                "error" => Ok(Outcome::Error),
                other => Err(anyhow::anyhow!("--outcome {other:?}: use ok, refused or error")),
            })
            .transpose()?;
        let since = since.map(|s| audit::parse_when(&s, now)).transpose().context("--since")?;
        let until = until.map(|s| audit::parse_when(&s, now)).transpose().context("--until")?;
        Ok(Self { tool, outcome, since, until })
    }

    fn keeps(&self, r: &audit::AuditRecord) -> bool {
        self.tool.as_deref().is_none_or(|t| r.tool == t)
            && self.outcome.is_none_or(|o| r.outcome == o)
            && self.since.is_none_or(|s| r.ts >= s)
            && self.until.is_none_or(|u| r.ts <= u)
    }
}

fn audit_cmd(
    paths: &Paths,
    action: AuditAction,
    filter: (Option<String>, Option<String>, Option<String>, Option<String>),
) -> Result<ExitCode> {
    use std::io::Write as _;
    match action {
        AuditAction::Verify => {
            let heads = recorded_heads(paths)?;
            let v = audit::verify(&paths.audit(), &heads)?;
            let code = match &v.first_bad {
                None => {
                    println!(
                        "audit log OK: {} lines, head {}, {} recorded heads match",
                        v.lines,
                        &v.head.hash[..16],
                        heads.len()
                    );
                    ExitCode::SUCCESS
                }
                Some((line, why)) => {
                    println!("audit log FAILED verification at line {line}: {why}");
                    ExitCode::from(1)
                }
            };
            for (line, what) in &v.repairs {
                println!("repair at line {line}: {what}");
            }
            for note in &v.notes {
                println!("note: {note}");
            }
            for p in crate::ledger::Ledger::open(&paths.ledger())?.problems() {
                println!("note: {p} (its recorded audit head is not checked)");
            }
            Ok(code)
        }
        AuditAction::List | AuditAction::Summary => {
            let (tool, outcome, since, until) = filter;
            let filter = AuditFilter::parse(tool, outcome, since, until)?;
            let recs: Vec<_> = audit::read_all(&paths.audit())?.into_iter().filter(|r| filter.keeps(r)).collect();
            if let Some(t) = &filter.tool
                && recs.is_empty()
            {
                eprintln!(
                    "no calls of {t:?}; the tools are edit_train, run_experiment, read_metrics, commit, revert, append_scratchpad (and protocol: messages refused before any tool)"
                );
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if matches!(action, AuditAction::List) {
                writeln!(
                    out,
                    "{:<19}  {:<17} {:<7} {:>8}  {:<7} what",
                    "time (UTC)", "tool", "outcome", "took", "run"
                )?;
                for r in &recs {
                    writeln!(out, "{}", audit::timeline_line(r))?;
                }
            } else {
                write!(out, "{}", audit::summarize(&recs))?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
