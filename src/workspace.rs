//! The workspace's git repository, through git2 only (no hooks ever run): the experiment branch,
//! reading and writing `train.rs` safely, the last kept version, commits and the baseline.

use std::path::Path;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use git2::{IndexEntry, IndexTime, Oid, Repository, Signature};
use serde::{Deserialize, Serialize};

use crate::edit::MAX_FILE_BYTES;
use crate::fsutil::{read_capped, sha256_hex, write_atomic};
use crate::paths::{Paths, TRAIN_RS};

pub const BRANCH_PREFIX: &str = "autoresearch/";

/// Written by `init`: which branch the loop works on and which train.rs is the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceState {
    pub branch: String,
    pub baseline_train_hash: String,
    pub baseline_commit: String,
    pub created_at: DateTime<Utc>,
}

pub struct Workspace {
    pub paths: Paths,
    repo: Repository,
}

impl Workspace {
    pub fn open(root: &Path) -> Result<Self> {
        let repo = Repository::open(root).with_context(|| format!("{} is not a git repository", root.display()))?;
        Ok(Self { paths: Paths::new(root), repo })
    }

    /// Creates `autoresearch/<tag>` at HEAD and switches to it. Refuses an existing branch or a
    /// train.rs that differs from HEAD's (the baseline must be a committed file).
    pub fn init(&self, tag: &str) -> Result<WorkspaceState> {
        if tag.is_empty()
            || !tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || tag.starts_with('.')
        {
            bail!("tag {tag:?} must be letters, digits, '-', '_' or '.' (e.g. nov23)");
        }
        let branch = format!("{BRANCH_PREFIX}{tag}");
        if self.repo.find_branch(&branch, git2::BranchType::Local).is_ok() {
            bail!("branch {branch} already exists; pick another tag or continue with `serve` on it");
        }
        let head = self.repo.head().context("the repository has no commit yet")?.peel_to_commit()?;
        let committed = blob_at(&self.repo, &head, TRAIN_RS)?;
        let current = self.read_train()?;
        if committed != current {
            bail!("{TRAIN_RS} has uncommitted changes; commit or discard them before init");
        }
        self.repo.branch(&branch, &head, false)?;
        self.repo.set_head(&format!("refs/heads/{branch}"))?;
        let state = WorkspaceState {
            branch,
            baseline_train_hash: sha256_hex(&current),
            baseline_commit: head.id().to_string(),
            created_at: Utc::now(),
        };
        std::fs::create_dir_all(self.paths.state())?;
        write_atomic(&self.paths.workspace_state(), serde_json::to_string_pretty(&state)?.as_bytes())?;
        Ok(state)
    }

    /// The state `init` wrote, checking that HEAD is still on that branch.
    pub fn state(&self) -> Result<WorkspaceState> {
        let p = self.paths.workspace_state();
        let bytes = std::fs::read(&p)
            .with_context(|| format!("{} is missing: run `autoresearch-mcp init --tag <tag>` first", p.display()))?;
        let state: WorkspaceState = serde_json::from_slice(&bytes).context("parse workspace.json")?;
        let head = self.repo.head().context("read HEAD")?;
        if head.shorthand() != Some(state.branch.as_str()) {
            bail!(
                "HEAD is on {:?}, not on the experiment branch {}; check it out again",
                head.shorthand().unwrap_or("(detached)"),
                state.branch
            );
        }
        Ok(state)
    }

    /// train.rs as bytes: never through a symlink, only a regular file under the size cap.
    pub fn read_train(&self) -> Result<Vec<u8>> {
        read_capped(&self.paths.train_rs(), MAX_FILE_BYTES as u64)
    }

    pub fn write_train(&self, text: &str) -> Result<()> {
        write_atomic(&self.paths.train_rs(), text.as_bytes())
    }

    /// train.rs as of the last kept commit (HEAD of the experiment branch).
    pub fn kept_train(&self) -> Result<Vec<u8>> {
        let head = self.repo.head()?.peel_to_commit()?;
        blob_at(&self.repo, &head, TRAIN_RS)
    }

    /// Commits `content` as train.rs on HEAD with `message`; only that path changes.
    pub fn commit_train(&self, content: &[u8], message: &str) -> Result<String> {
        let head = self.repo.head()?.peel_to_commit()?;
        let blob = self.repo.blob(content)?;
        let entry = train_entry(blob, content.len());
        let mut idx = git2::Index::new()?;
        idx.read_tree(&head.tree()?)?;
        idx.add(&entry)?;
        let tree_id = idx.write_tree_to(&self.repo)?;
        let tree = self.repo.find_tree(tree_id)?;
        let sig = Signature::now("autoresearch-mcp", "autoresearch-mcp@localhost")?;
        let oid = self.repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&head])?;
        // Keep the on-disk index in step so `git status` is clean afterwards.
        let mut disk = self.repo.index()?;
        disk.add(&entry)?;
        disk.write()?;
        Ok(oid.to_string())
    }

    /// Commit messages of the experiment branch since the baseline (for audit-head trailers).
    pub fn commit_messages_since(&self, base: &str) -> Result<Vec<(String, String)>> {
        let mut walk = self.repo.revwalk()?;
        walk.push_head()?;
        walk.hide(Oid::from_str(base)?)?;
        walk.map(|id| {
            let id = id?;
            let c = self.repo.find_commit(id)?;
            Ok((id.to_string(), c.message().unwrap_or("").to_string()))
        })
        .collect()
    }
}

fn train_entry(blob: Oid, len: usize) -> IndexEntry {
    IndexEntry {
        ctime: IndexTime::new(0, 0),
        mtime: IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        file_size: len as u32,
        id: blob,
        flags: 0,
        flags_extended: 0,
        path: TRAIN_RS.as_bytes().to_vec(),
    }
}

fn blob_at(repo: &Repository, commit: &git2::Commit, path: &str) -> Result<Vec<u8>> {
    let entry =
        commit.tree()?.get_path(Path::new(path)).with_context(|| format!("commit {} has no {path}", commit.id()))?;
    let blob = repo.find_blob(entry.id())?;
    Ok(blob.content().to_vec())
}
