//! Thin entry point: parse the CLI, dispatch. Logs go to stderr; stdout belongs to MCP.

use std::process::ExitCode;

use clap::Parser;

use autoresearch_mcp::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The sandbox helper must stay single-threaded (it forks): handle it before any runtime starts.
    if let Command::SandboxExec = &cli.command {
        std::process::exit(autoresearch_mcp::sandbox::local::exec_main());
    }
    // Sets up its mount namespace while single-threaded, then starts its own small runtime.
    if let Command::SandboxJob { spec } = &cli.command {
        std::process::exit(autoresearch_mcp::sandbox::slurm::job_main(spec));
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(autoresearch_mcp::commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The stdio transport may still sit in a blocking read of stdin: do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}
