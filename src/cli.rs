//! Command-line interface: `init`, `serve`, `run`, `audit`, `report`, `synth`, and the hidden
//! `sandbox-exec` that the local sandbox re-executes.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "autoresearch-mcp",
    version,
    about = "An MCP tool server for unattended autoresearch on an eCLIP trainer"
)]
pub struct Cli {
    /// The workspace: the repository holding trainer/, program.md and .autoresearch/.
    #[arg(long, short = 'C', global = true, default_value = ".")]
    pub workspace: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the experiment branch autoresearch/<tag> and the ledger (refused if the branch exists).
    Init {
        #[arg(long)]
        tag: String,
    },
    /// Serve the six tools over stdio (what .mcp.json starts).
    Serve,
    /// Run one experiment from the shell, through the same code path as the tool.
    Run {
        #[arg(long, short = 'm')]
        description: String,
    },
    /// Review the audit log: list (default), summary, verify.
    Audit {
        #[command(subcommand)]
        action: Option<AuditAction>,
        /// Only calls of this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only calls with this outcome (ok, refused, error).
        #[arg(long)]
        outcome: Option<String>,
        /// Only calls at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Print the results table (Markdown) of every run.
    Report,
    /// Check what works here: sandbox backends, cgroups, the Python env, the toolchain, the GPU inside the sandbox.
    Doctor,
    /// Write the built-in synthetic grounded dataset (ODVG JSONL + PNG images).
    Synth {
        /// Output folder (default: the workspace's data/synthetic).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `demo` (default) or `tests` (smaller).
        #[arg(long, default_value = "demo")]
        size: String,
    },
    /// Make a fresh experiment workspace (a new git repo) from this repository at DIR, then `init` it.
    NewWorkspace {
        dir: PathBuf,
        #[arg(long, default_value = "cpu")]
        profile: String,
        /// ODVG dataset folder (default: the repository's data/synthetic).
        #[arg(long, default_value = "data/synthetic")]
        dataset: PathBuf,
        /// Tag of the experiment branch to create in it.
        #[arg(long, default_value = "demo")]
        tag: String,
        /// Extra `key = value` lines for the [experiment] table (e.g. "budget_seconds = 120").
        #[arg(long)]
        experiment: Vec<String>,
        /// `key = value` lines for the [model] table (e.g. 'text_tower = "minilm"').
        #[arg(long)]
        model: Vec<String>,
        /// Start train.rs from a named configuration in trainer/configs (`baseline` or `final`).
        #[arg(long, default_value = "baseline")]
        config: String,
    },
    /// UNSANDBOXED, for benchmark/GPU machines only: prepare, train, embed and score one experiment with
    /// the trainer binaries run as plain child processes (no namespaces, no cgroups, no Landlock: train.rs
    /// gets your rights, files and network). Never reachable from the MCP tools. See docs/gpu.md.
    UnsandboxedExperiment(crate::direct::DirectArgs),
    #[command(hide = true)]
    SandboxExec { spec: String },
}

#[derive(Debug, Subcommand, Clone, Copy)]
pub enum AuditAction {
    /// One line per call: time, tool, outcome, duration, reason.
    List,
    /// Calls per tool and outcome, refusals and why, time spent.
    Summary,
    /// Check the hash chain and every recorded head; exits 1 at the first bad line.
    Verify,
}
