//! autoresearch-mcp: an MCP tool server that lets Claude Code run a Karpathy-style autoresearch loop
//! on an eCLIP trainer — hypothesize, edit, train, evaluate, keep or revert — and nothing else.
//!
//! # Layout
//! The flow of one experiment, the trust boundary and the invariants: docs/ARCHITECTURE.md.
//! - [`server`]: the MCP layer. Six tools, each a thin typed method over [`service`].
//! - [`transport`]: stdio framing in front of rmcp: every message answered, malformed ones audited.
//! - [`service`]: one file per tool: its refusals, its work, the audit record every call writes.
//! - [`experiment`]: one experiment: build → train → embed images → embed texts → score; the trainer's
//!   `AR_*` contract, the overrun rule, the run's `finished` row.
//! - [`sandbox`]: where hostile code runs (`local`: namespaces, cleared environment, whole-tree kill;
//!   `docker`; `none`, no isolation, for `unsandboxed-experiment` only; the disk quota; the page-cache
//!   reset between the embed phases).
//! - [`prebuilt`]: `sandboxed-experiment` / `unsandboxed-experiment`, the experiment with prebuilt binaries
//!   on the `local` or `none` backend (GPU machines without Rust).
//! - [`scheduler`]: slots for runs (one per GPU) and the first-come queue in front of them; a slot
//!   names the GPU its run's phases would be limited to ([`sandbox::gpus`]). Not yet used by
//!   `run_experiment`, which still runs one experiment at a time.
//! - [`child`]: an unsandboxed child process in its own process group, killed as a group (setup scripts).
//! - [`pyenv`]: the project's Python environment (libtorch, the tokenizer), as `scripts/python-env.sh` names it.
//! - [`toolchain`]: the Rust toolchain and the locked crates the sandboxed build may read.
//! - [`score`]: retrieval metrics computed by the server from the embeddings, outside any sandbox.
//! - [`data`]: the prepared tensor cache, and each evaluation's fresh deal of the split into halves.
//! - [`dataset`]: where a dataset's splits and images are (the standard and the Ukiyo-eVG layouts, folds).
//! - [`workspace`]: the git repository (git2), `train.rs` read/write, commit and revert.
//! - [`edit`]: the text operations of `edit_train` (view, str_replace, insert).
//! - [`ledger`]: `.autoresearch/runs.jsonl`, the append-only record of every run; `ledger::standings`,
//!   the one ranking (comparable runs, their order, baseline, best kept, noise floor); `ledger::noise`,
//!   repeats over seeds and the flags.
//! - [`audit`]: `.autoresearch/audit.jsonl`, the hash-chained record of every tool call (and of every
//!   repair the server made to its own state).
//! - [`durable`]: append-only files that heal: torn lines set aside, failed appends undone, room
//!   reserved before acting, files deleted under the server put back.
//! - [`paths`], [`fsutil`]: where the workspace keeps things; careful file reads and writes.
//! - [`scaffold`], [`train_config`]: `new-workspace` and `init`; the named train.rs configurations.
//! - [`synth`]: the built-in synthetic grounded dataset (ODVG JSONL + PNG images).
//! - [`untrusted`]: how program output is cleaned and fenced before the agent sees it.
//! - [`report`]: the Sunday-morning report: progress chart, results tables, every diff, one HTML page;
//!   `report::test_split`, `report --test` on the never-mounted test split.
//! - [`export`]: the best kept model and the baseline as safetensors with a model card.
//! - [`claude`]: Claude Code itself: its binary, the tested version, the strict profile's flags.
//! - [`supervisor`]: `saturday`, Claude Code left running the loop until a deadline; [`run_limits`],
//!   the deadline and experiment budget it gives the server.
//! - [`status`], [`doctor`]: what is running now and the best so far; checks of the machine and the state.
//! - [`cli`], [`commands`]: the command line and each command's body.
//! - [`config`]: `autoresearch.toml`, and the enums (profile, device, backend) flags parse alike.
//! - [`duration`]: the one parser of durations (`saturday --for`, audit ages).
//! - [`shutdown`]: SIGINT, SIGTERM and SIGHUP as a cancellation, for every command that can be stopped.

pub mod audit;
pub mod child;
pub mod claude;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod dataset;
pub mod doctor;
pub mod durable;
pub mod duration;
pub mod edit;
pub mod experiment;
pub mod export;
pub mod fsutil;
pub mod ledger;
pub mod paths;
pub mod prebuilt;
pub mod pyenv;
pub mod report;
pub mod run_limits;
pub mod sandbox;
pub mod scaffold;
pub mod scheduler;
pub mod score;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod supervisor;
pub mod synth;
pub mod toolchain;
pub mod train_config;
pub mod transport;
pub mod untrusted;
pub mod workspace;

#[cfg(test)]
mod import_cycles;
