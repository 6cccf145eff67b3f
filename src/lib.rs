//! autoresearch-mcp: an MCP tool server that lets Claude Code run a Karpathy-style autoresearch loop
//! on an eCLIP trainer — hypothesize, edit, train, evaluate, keep or revert — and nothing else.
//!
//! # Layout
//! - [`server`]: the MCP layer. Six tools, each a thin typed method over [`service`].
//! - [`transport`]: stdio framing in front of rmcp: every message answered, malformed ones audited.
//! - [`service`]: what each tool does, its refusals, and the audit record every call writes.
//! - [`experiment`]: one experiment: build → train → embed images → embed texts → score.
//! - [`sandbox`]: where hostile code runs (`local`: namespaces, cleared environment, whole-tree kill;
//!   `docker`; the disk quota; the page-cache reset between the embed phases).
//! - [`toolchain`]: the Rust toolchain and the locked crates the sandboxed build may read.
//! - [`score`]: retrieval metrics computed by the server from the embeddings, outside any sandbox.
//! - [`data`]: the prepared tensor cache, and each evaluation's fresh deal of the split into halves.
//! - [`workspace`]: the git repository (git2), `train.rs` read/write, commit and revert.
//! - [`edit`]: the text operations of `edit_train` (view, str_replace, insert).
//! - [`ledger`]: `.autoresearch/runs.jsonl`, the append-only record of every run.
//! - [`audit`]: `.autoresearch/audit.jsonl`, the hash-chained record of every tool call (and of every
//!   repair the server made to its own state).
//! - [`durable`]: append-only files that heal: torn lines set aside, failed appends undone, room
//!   reserved before acting, files deleted under the server put back.
//! - [`synth`]: the built-in synthetic grounded dataset (ODVG JSONL + PNG images).
//! - [`untrusted`]: how program output is cleaned and fenced before the agent sees it.
//! - [`report`]: the Sunday-morning report: progress chart, results tables, every diff, one HTML page.
//! - [`test_split`]: `report --test`, the baseline and kept runs scored on the never-mounted test split.
//! - [`export`]: the best kept model and the baseline as safetensors with a model card.
//! - [`claude`]: Claude Code itself: its binary, the tested version, the strict profile's flags.
//! - [`supervisor`]: `saturday`, Claude Code left running the loop until a deadline.
//! - [`status`]: what is running now, the best so far, the last runs.
//! - [`shutdown`]: SIGINT, SIGTERM and SIGHUP as a cancellation, for every command that can be stopped.

pub mod audit;
pub mod claude;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod dataset;
pub mod direct;
pub mod doctor;
pub mod durable;
pub mod duration;
pub mod edit;
pub mod experiment;
pub mod export;
pub mod fsutil;
pub mod ledger;
pub mod noise;
pub mod paths;
pub mod pyenv;
pub mod report;
pub mod run_limits;
pub mod sandbox;
pub mod scaffold;
pub mod score;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod supervisor;
pub mod synth;
pub mod test_split;
pub mod toolchain;
pub mod train_config;
pub mod transport;
pub mod untrusted;
pub mod workspace;

#[cfg(test)]
mod import_cycles;
