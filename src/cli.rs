//! Command-line interface: `init`, `serve`, `run`, `audit`, `report`, `export`, `synth`, `saturday`,
//! `status`, `sandboxed-experiment`, `unsandboxed-experiment`, and the hidden `sandbox-exec` that the local sandbox re-executes.

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
    Serve {
        /// Refuse new runs from this time on (RFC 3339); `saturday` sets it.
        #[arg(long)]
        deadline: Option<String>,
        /// Refuse new runs once the ledger holds this many runs; `saturday` sets it.
        #[arg(long)]
        max_runs: Option<usize>,
    },
    /// Run one experiment from the shell, through the same code path as the tool.
    Run {
        #[arg(long, short = 'm')]
        description: String,
        /// Repeat over this many seeds (1-5) and score the mean ± sd.
        #[arg(long)]
        seeds: Option<u32>,
    },
    /// Review the audit log: list (default), summary, verify.
    Audit {
        #[command(subcommand)]
        action: Option<AuditAction>,
        /// Only calls of this tool.
        #[arg(long, global = true)]
        tool: Option<String>,
        /// Only calls with this outcome (ok, refused, error).
        #[arg(long, global = true)]
        outcome: Option<String>,
        /// Only calls at or after this time: RFC 3339, a UTC date and time (2026-11-23 08:00), or an age (90m, 2h, 1d).
        #[arg(long, global = true)]
        since: Option<String>,
        /// Only calls at or before this time (same forms as --since).
        #[arg(long, global = true)]
        until: Option<String>,
    },
    /// Write the progress chart (SVG, PNG), the results table (TSV, Markdown), every run's diff and
    /// one self-contained report.html; print the table and the paths.
    Report {
        /// Output folder (default: the workspace's .autoresearch/report/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// First score the baseline and every kept run on the test split (sandboxed embedding with each
        /// run's own trainer and checkpoint; runs already scored are not redone) and print that table.
        #[arg(long)]
        test: bool,
    },
    /// Export the best kept model (or --run ID) and the baseline: model.safetensors, MODEL_CARD.md,
    /// card.json, train.rs, its diff from the baseline, and a PyTorch loader.
    Export {
        /// Output folder (default: the workspace's .autoresearch/export/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Export this run instead of the best kept one.
        #[arg(long)]
        run: Option<String>,
    },
    /// Check what works here: sandbox backends, cgroups, the Python env, the toolchain, the GPU inside the
    /// sandbox; and the workspace's state: the ledger, the audit log, git, and every repair the server made.
    Doctor {
        /// Only the workspace's state (ledger, audit log, git, repairs, torn lines set aside), not the machine.
        #[arg(long)]
        state: bool,
    },
    /// Write the built-in synthetic grounded dataset (ODVG JSONL + PNG images).
    Synth {
        /// Output folder (default: the workspace's data/synthetic).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `demo` (default) or `tests` (smaller).
        #[arg(long, default_value = "demo")]
        size: crate::synth::Size,
    },
    /// Make a fresh experiment workspace (a new git repo) from this repository at DIR, then `init` it.
    NewWorkspace {
        dir: PathBuf,
        /// Harness profile: tests, cpu or gpu.
        #[arg(long, default_value = "cpu")]
        profile: crate::config::Profile,
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
    UnsandboxedExperiment(crate::prebuilt::PrebuiltArgs),
    /// For GPU machines with no Rust toolchain: the same experiment with the prebuilt binaries in the
    /// local sandbox (namespaces, cgroup, Landlock, seccomp; needs root and cgroups, as `serve` does),
    /// the check of the whole GPU path (scripts/gpu-check.sh). See docs/gpu.md.
    SandboxedExperiment(crate::prebuilt::PrebuiltArgs),
    /// Leave Claude Code running the loop, unattended, until a deadline: headless, strict profile
    /// (only the six tools), relaunched with a resume prompt whenever it stops early.
    Saturday {
        /// Stop at TIME: RFC 3339, or HH:MM (the next such local time).
        #[arg(long, conflicts_with = "for_", required_unless_present = "for_")]
        until: Option<String>,
        /// Stop after DURATION (e.g. 8h, 90m, 1h30m).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Stop after this many experiments (the server refuses more).
        #[arg(long)]
        max_experiments: Option<usize>,
        /// Turn limit of each Claude Code session (`claude --max-turns`); a session that reaches it is relaunched.
        #[arg(long)]
        max_turns: Option<u32>,
        /// Run `sh -c CMD` on stop, crash and new best (AUTORESEARCH_EVENT, AUTORESEARCH_MESSAGE, ... in its environment).
        #[arg(long, value_name = "CMD")]
        notify: Option<String>,
        /// The Claude Code binary (default: $AUTORESEARCH_CLAUDE, the one in the project's Python environment, `claude` on PATH).
        #[arg(long, value_name = "PATH")]
        claude: Option<PathBuf>,
        /// Seconds to wait after the first API error or quick exit; doubles on each further one.
        #[arg(long, default_value_t = 30)]
        backoff_initial: u64,
        /// Longest wait between sessions, seconds.
        #[arg(long, default_value_t = 900)]
        backoff_max: u64,
        /// Seconds Claude Code and the server get after SIGINT before SIGKILL.
        #[arg(long, default_value_t = 30)]
        grace: u64,
    },
    /// What is running now (supervisor, Claude Code, server, the run in flight), the best result and the last runs.
    Status,
    /// The local sandbox's helper; the job spec comes on stdin.
    #[command(hide = true)]
    SandboxExec,
    /// The `slurm` backend's job on a compute node: runs the staged job of `spec` (a `spec.json` in
    /// the shared directory) through the local sandbox and writes its outcome beside it.
    #[command(hide = true)]
    SandboxJob { spec: std::path::PathBuf },
}

#[derive(Debug, Subcommand, Clone, Copy)]
pub enum AuditAction {
    /// The timeline, one line per call: time (UTC), tool, outcome, duration, run, what was asked, why it failed.
    List,
    /// Calls per tool and outcome, refusals and errors by reason, time in experiments vs other tools vs idle.
    Summary,
    /// Check the hash chain and every recorded head; exits 1 at the first bad line.
    Verify,
}
