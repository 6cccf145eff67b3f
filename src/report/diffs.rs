//! Where each run's change to train.rs is kept, in order of trust:
//! 1. a kept run: its commit on the experiment branch against the commit's parent (git2);
//! 2. any run: `.autoresearch/runs/<id>/diff.patch`, written when the run started (against the
//!    kept train.rs of that moment);
//! 3. a discarded run whose folder is gone: the diff `revert` saved for the same train.rs hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use crate::edit::unified_diff;
use crate::fsutil::read_capped;
use crate::ledger::{Event, Ledger, Run};
use crate::paths::{Paths, TRAIN_RS};

/// Largest diff file read back (train.rs itself is capped at 256 KiB).
const MAX_DIFF_BYTES: u64 = 4 << 20;

/// A run's diff and where it came from.
#[derive(Debug, Clone)]
pub struct Diff {
    pub text: String,
    /// `commit <short>`, `runs/<id>/diff.patch` or `reverts/<file>`.
    pub source: String,
}

pub struct Finder<'a> {
    paths: &'a Paths,
    repo: Option<Repository>,
    /// train.rs hash → the diff file its revert saved.
    reverted: HashMap<String, PathBuf>,
}

impl<'a> Finder<'a> {
    pub fn new(paths: &'a Paths, ledger: &Ledger) -> Self {
        let reverted = ledger
            .events()
            .iter()
            .filter_map(|ev| match ev {
                Event::Reverted { train_hash, diff_file, .. } => Some((train_hash.clone(), diff_file.clone())),
                _ => None,
            })
            .collect();
        Finder { paths, repo: Repository::open(&paths.root).ok(), reverted }
    }

    pub fn find(&self, run: &Run) -> Option<Diff> {
        if let Some(commit) = &run.commit
            && let Some(text) = self.repo.as_ref().and_then(|r| commit_diff(r, commit))
        {
            return Some(Diff { text, source: format!("commit {}", &commit[..commit.len().min(10)]) });
        }
        let patch = self.paths.run_dir(&run.id).join("diff.patch");
        if let Some(text) = read_text(&patch) {
            return Some(Diff { text, source: self.paths.relative(&patch).display().to_string() });
        }
        let saved = self.reverted.get(&run.train_hash)?;
        // Recorded relative to the workspace; never follow one that points outside it.
        if saved.is_absolute() || saved.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return None;
        }
        let text = read_text(&self.paths.root.join(saved))?;
        Some(Diff { text, source: saved.display().to_string() })
    }
}

fn read_text(path: &Path) -> Option<String> {
    read_capped(path, MAX_DIFF_BYTES).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// train.rs of `commit` against its first parent's.
fn commit_diff(repo: &Repository, commit: &str) -> Option<String> {
    let c = repo.find_commit(Oid::from_str(commit).ok()?).ok()?;
    let blob = |c: &git2::Commit| -> Option<String> {
        let entry = c.tree().ok()?.get_path(Path::new(TRAIN_RS)).ok()?;
        let blob = repo.find_blob(entry.id()).ok()?;
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    };
    let new = blob(&c)?;
    let old = c.parent(0).ok().and_then(|p| blob(&p)).unwrap_or_default();
    Some(unified_diff(&old, &new))
}
