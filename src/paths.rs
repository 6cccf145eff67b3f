//! Where everything lives inside a workspace (the repository the researcher cloned).

use std::path::{Path, PathBuf};

/// The file the agent edits, relative to the workspace root.
pub const TRAIN_RS: &str = "trainer/src/train.rs";

/// Fixed locations inside one workspace.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn train_rs(&self) -> PathBuf {
        self.root.join(TRAIN_RS)
    }
    pub fn trainer(&self) -> PathBuf {
        self.root.join("trainer")
    }
    pub fn program_md(&self) -> PathBuf {
        self.root.join("program.md")
    }
    pub fn scratchpad(&self) -> PathBuf {
        self.root.join("scratchpad.md")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("autoresearch.toml")
    }
    /// Server state: never mounted into a sandbox, never readable by the agent.
    pub fn state(&self) -> PathBuf {
        self.root.join(".autoresearch")
    }
    pub fn ledger(&self) -> PathBuf {
        self.state().join("runs.jsonl")
    }
    pub fn audit(&self) -> PathBuf {
        self.state().join("audit.jsonl")
    }
    /// Head hash and line count of the audit log, rewritten after every append (detects truncation).
    pub fn audit_head(&self) -> PathBuf {
        self.state().join("audit.head")
    }
    pub fn lock(&self) -> PathBuf {
        self.state().join("lock")
    }
    pub fn runs(&self) -> PathBuf {
        self.state().join("runs")
    }
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs().join(run_id)
    }
    /// Where `autoresearch-mcp report` writes by default.
    pub fn report(&self) -> PathBuf {
        self.state().join("report")
    }
    pub fn reverts(&self) -> PathBuf {
        self.state().join("reverts")
    }
    /// Prepared tensor caches, one folder per (dataset, profile).
    pub fn prepared(&self) -> PathBuf {
        self.state().join("data")
    }
    pub fn workspace_state(&self) -> PathBuf {
        self.state().join("workspace.json")
    }
    pub fn relative<'a>(&self, p: &'a Path) -> &'a Path {
        p.strip_prefix(&self.root).unwrap_or(p)
    }
}
