//! The workspace's git repository, through git2 only (no hooks ever run): the experiment branch,
//! reading and writing `train.rs` safely, the last kept version, commits and the baseline.
//!
//! The last kept version is the experiment branch's tip, never "whatever HEAD is"; a commit is made
//! on that branch's ref by compare-and-swap, holding the index lock, and refused (changing nothing)
//! when HEAD is elsewhere or git is locked ([`Workspace::commit_on`]).

use std::path::{Path, PathBuf};

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

    /// The experiment branch `init` recorded in workspace.json, if any.
    pub fn branch(&self) -> Option<String> {
        let bytes = std::fs::read(self.paths.workspace_state()).ok()?;
        serde_json::from_slice::<WorkspaceState>(&bytes).ok().map(|s| s.branch)
    }

    /// Ok when HEAD is `branch` (checked out, not detached); else why not, in one sentence.
    pub fn check_head(&self, branch: &str) -> std::result::Result<(), String> {
        let head = self.repo.find_reference("HEAD").map_err(|e| format!("cannot read HEAD: {e}"))?;
        let target = head.symbolic_target().map(String::from);
        if target.as_deref() == Some(format!("refs/heads/{branch}").as_str()) {
            return Ok(());
        }
        let on = match target {
            Some(t) => format!("{:?}", t.strip_prefix("refs/heads/").unwrap_or(&t)),
            None => "a detached commit".to_string(),
        };
        Err(format!(
            "HEAD is on {on}, not on the experiment branch {branch} (the branch was switched while the server runs)"
        ))
    }

    /// The commit at the tip of `branch`.
    pub fn tip(&self, branch: &str) -> Result<Oid> {
        self.repo
            .refname_to_id(&format!("refs/heads/{branch}"))
            .with_context(|| format!("the experiment branch {branch} is missing"))
    }

    /// The tip of `branch` and train.rs in it (the last kept version).
    pub fn kept_at(&self, branch: &str) -> Result<(Oid, Vec<u8>)> {
        let tip = self.tip(branch)?;
        let commit = self.repo.find_commit(tip)?;
        Ok((tip, blob_at(&self.repo, &commit, TRAIN_RS)?))
    }

    /// train.rs as of the last kept commit: the tip of the experiment branch (whatever HEAD is), or
    /// HEAD's before `init`.
    pub fn kept_train(&self) -> Result<Vec<u8>> {
        match self.branch() {
            Some(b) => Ok(self.kept_at(&b)?.1),
            None => blob_at(&self.repo, &self.repo.head()?.peel_to_commit()?, TRAIN_RS),
        }
    }

    /// The git lock files that would make a commit on `branch` fail (the index's, the branch ref's
    /// and its reflog's), if present.
    pub fn git_locks(&self, branch: &str) -> Vec<PathBuf> {
        let git = self.repo.path();
        [
            git.join("index.lock"),
            git.join(format!("refs/heads/{branch}.lock")),
            git.join(format!("logs/refs/heads/{branch}.lock")),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }

    /// Removes the git locks a server that died left behind: an `index.lock` it created (it says
    /// so inside, with the pid, which must be gone), and the branch ref's and reflog's locks that
    /// libgit2 was writing when it died (nobody has them open). Also its temp index files.
    pub fn clear_stale_locks(&self, branch: &str) -> Vec<PathBuf> {
        let git = self.repo.path();
        let mut removed = vec![];
        let index_lock = git.join("index.lock");
        if let Ok(text) = std::fs::read_to_string(&index_lock)
            && let Some(who) = text.strip_prefix(INDEX_LOCK_MARKER)
            && !crate::fsutil::identity_alive(who.trim())
            && std::fs::remove_file(&index_lock).is_ok()
        {
            removed.push(index_lock);
        }
        for lock in [git.join(format!("refs/heads/{branch}.lock")), git.join(format!("logs/refs/heads/{branch}.lock"))]
        {
            if lock.exists() && !open_by_any_process(&lock) && std::fs::remove_file(&lock).is_ok() {
                removed.push(lock);
            }
        }
        // Our temp files there (`autoresearch-index.tmp-<pid>` and its `.lock`, `autoresearch-lock.tmp-<pid>`).
        if let Ok(rd) = std::fs::read_dir(git) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !name.starts_with("autoresearch-") {
                    continue;
                }
                let Some(pid) = crate::fsutil::temp_file_pid(name.trim_end_matches(".lock")) else { continue };
                if (pid == std::process::id() || !crate::fsutil::pid_alive(pid))
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    tracing::warn!("removed {}, a temp file left by a server that died", e.path().display());
                }
            }
        }
        removed
    }

    /// Commits `content` as train.rs on the experiment branch with `message` (only that path
    /// changes), the branch read from workspace.json and its current tip as the parent.
    pub fn commit_train(&self, content: &[u8], message: &str) -> Result<String> {
        let branch = self.branch().context("workspace.json is missing: run init first")?;
        let parent = self.tip(&branch)?;
        self.commit_on(&branch, parent, content, message).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Commits `content` as train.rs on `branch`, whose tip must be `parent`, atomically from the
    /// ledger's view: checked before (HEAD is on `branch`, its tip is `parent`, no git lock is
    /// held), the index locked the way git does it (`index.lock`, created exclusively), the commit
    /// built on `parent`'s tree, the branch ref moved by compare-and-swap from `parent`, then the
    /// index, and checked after. A refusal or failure before the ref moves changes nothing.
    pub fn commit_on(
        &self,
        branch: &str,
        parent: Oid,
        content: &[u8],
        message: &str,
    ) -> std::result::Result<String, CommitError> {
        let refused = CommitError::Refused;
        self.check_head(branch).map_err(refused)?;
        let tip = self.tip(branch).map_err(|e| CommitError::Failed(format!("{e:#}")))?;
        if tip != parent {
            return Err(refused(format!(
                "the experiment branch {branch} moved (its tip is {}, the server expected {}): someone committed on it",
                &tip.to_string()[..10],
                &parent.to_string()[..10]
            )));
        }
        if let Some(lock) = self.git_locks(branch).first() {
            return Err(refused(format!(
                "{} exists: another git process is using the repository, or one crashed and left it; if no git process is running, remove it",
                lock.display()
            )));
        }
        let git = self.repo.path().to_path_buf();
        let _lock = IndexLock::take(&git).map_err(refused)?;
        let failed = |e: git2::Error| CommitError::Failed(e.message().to_string());
        let oid = (|| -> std::result::Result<Oid, git2::Error> {
            let head = self.repo.find_commit(parent)?;
            let blob = self.repo.blob(content)?;
            let entry = train_entry(blob, content.len());
            let mut idx = git2::Index::new()?;
            idx.read_tree(&head.tree()?)?;
            idx.add(&entry)?;
            let tree = self.repo.find_tree(idx.write_tree_to(&self.repo)?)?;
            let sig = Signature::now("autoresearch-mcp", "autoresearch-mcp@localhost")?;
            self.repo.commit(None, &sig, &sig, message, &tree, &[&head])
        })()
        .map_err(failed)?;
        // The new index, prepared beside the real one while we hold its lock.
        let tmp = git.join(format!("autoresearch-index.tmp-{}", std::process::id()));
        let prepared = (|| -> std::result::Result<(), git2::Error> {
            let mut disk = self.repo.index()?;
            disk.read(true)?;
            let mut next = git2::Index::open(&tmp)?;
            for e in disk.iter() {
                next.add(&e)?;
            }
            next.add(&train_entry(self.repo.blob(content)?, content.len()))?;
            next.write()
        })();
        if let Err(e) = prepared {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed(e));
        }
        let first = message.lines().next().unwrap_or("");
        if let Err(e) = self.repo.reference_matching(
            &format!("refs/heads/{branch}"),
            oid,
            true,
            parent,
            &format!("commit: {first}"),
        ) {
            let _ = std::fs::remove_file(&tmp);
            return Err(failed(e));
        }
        // The branch has moved: from here on the commit is made, whatever else fails.
        if let Err(e) = std::fs::rename(&tmp, git.join("index")) {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(
                "committed {oid}, but the index could not be updated ({e}): `git status` may show train.rs as changed"
            );
        }
        match (self.tip(branch), self.check_head(branch)) {
            (Ok(t), Ok(())) if t == oid => Ok(oid.to_string()),
            (t, h) => {
                tracing::error!("after committing {oid} on {branch}: tip {t:?}, HEAD {h:?}");
                Ok(oid.to_string())
            }
        }
    }

    /// Commits of the experiment branch since the baseline, oldest first: id, time, message.
    pub fn branch_commits_since(&self, branch: &str, base: &str) -> Result<Vec<(String, DateTime<Utc>, String)>> {
        let mut walk = self.repo.revwalk()?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
        walk.push(self.tip(branch)?)?;
        walk.hide(Oid::from_str(base)?)?;
        walk.map(|id| {
            let id = id?;
            let c = self.repo.find_commit(id)?;
            let at = DateTime::from_timestamp(c.time().seconds(), 0).unwrap_or_default();
            Ok((id.to_string(), at, c.message().unwrap_or("").to_string()))
        })
        .collect()
    }

    /// Commit messages of the experiment branch since the baseline (for audit-head trailers).
    pub fn commit_messages_since(&self, base: &str) -> Result<Vec<(String, String)>> {
        let branch = self.branch().context("workspace.json is missing")?;
        Ok(self.branch_commits_since(&branch, base)?.into_iter().map(|(id, _, m)| (id, m)).collect())
    }
}

/// Why a commit was not made.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A rule or the repository's state says no; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// git failed before the branch moved; nothing was changed.
    #[error("{0}")]
    Failed(String),
}

/// What the server writes into an `index.lock` it holds (with its pid and start time), so that the
/// next server can tell its own stale lock (that process gone) from another git process's.
pub const INDEX_LOCK_MARKER: &str = "autoresearch-mcp pid ";

/// `.git/index.lock`, taken exclusively as git does; removed on drop.
struct IndexLock(PathBuf);

impl IndexLock {
    /// Never an empty lock, even if the server dies at any instant: the marker is written to a
    /// temp file first, which is then hard-linked as `index.lock` (failing if it exists).
    fn take(git: &Path) -> std::result::Result<Self, String> {
        let path = git.join("index.lock");
        let tmp = git.join(format!("autoresearch-lock.tmp-{}", std::process::id()));
        std::fs::write(&tmp, format!("{INDEX_LOCK_MARKER}{}\n", crate::fsutil::process_identity()))
            .map_err(|e| format!("cannot lock the index ({}): {e}", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!("{} exists: another git process is using the repository, or one crashed and left it; if no git process is running, remove it", path.display())
            } else {
                format!("cannot lock the index ({}): {e}", path.display())
            }
        })?;
        Ok(IndexLock(path))
    }
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether any process has `path` open (scanning /proc/*/fd; unreadable processes are skipped).
fn open_by_any_process(path: &Path) -> bool {
    let Ok(target) = path.canonicalize() else { return false };
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target)) {
            return true;
        }
    }
    false
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
