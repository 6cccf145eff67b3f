//! A fresh experiment workspace made from this repository: a new git repo holding a copy of the
//! trainer, the scripts and the agent's files, configured for a profile and a dataset, sharing the
//! repository's trainer build directory (so libtorch bindings compile once). Used by the demo, the
//! tests and the benchmarks; `init` then creates the experiment branch in it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::Profile;

/// What a workspace copies from the repository.
const COPIED: &[&str] = &["trainer", "scripts", "program.md", "scratchpad.md", ".gitignore", ".claude"];

pub struct Scaffold<'a> {
    /// The repository to copy from.
    pub repo: &'a Path,
    pub profile: Profile,
    pub dataset: PathBuf,
    /// Extra lines for the [experiment] table of autoresearch.toml.
    pub experiment_extra: String,
    /// Lines for the [model] table of autoresearch.toml (pretrained towers).
    pub model_extra: String,
    /// The named train.rs configuration to start from (`trainer/configs/<config>.toml`).
    pub config: String,
    /// The server binary that .mcp.json should start.
    pub server_bin: PathBuf,
}

impl Scaffold<'_> {
    /// Creates `dir` (which must not exist or be empty) and commits its content. On failure nothing
    /// is left: a folder it created is removed, a folder that was empty is emptied again.
    pub fn create(&self, dir: &Path) -> Result<PathBuf> {
        let existed = dir.exists();
        if existed && std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?.next().is_some() {
            bail!("{} exists and is not empty", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let made = self.fill(dir);
        if made.is_err() {
            let cleaned = if existed {
                std::fs::read_dir(dir).map(|rd| {
                    for e in rd.flatten() {
                        let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                            std::fs::remove_dir_all(e.path())
                        } else {
                            std::fs::remove_file(e.path())
                        };
                    }
                })
            } else {
                std::fs::remove_dir_all(dir)
            };
            if let Err(e) = cleaned {
                tracing::warn!("could not clean up {}: {e}", dir.display());
            }
        }
        made
    }

    fn fill(&self, dir: &Path) -> Result<PathBuf> {
        let root = dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))?;
        let repo = self.repo.canonicalize().with_context(|| format!("repository {}", self.repo.display()))?;
        for name in COPIED {
            let src = repo.join(name);
            if src.exists() {
                copy(&src, &root.join(name))?;
            }
        }
        let constants = crate::train_config::load(&root.join("trainer"), &self.config)?;
        let train_rs = root.join("trainer/src/train.rs");
        let src = std::fs::read_to_string(&train_rs).with_context(|| format!("read {}", train_rs.display()))?;
        std::fs::write(&train_rs, crate::train_config::apply(&src, &constants)?)
            .with_context(|| format!("write {}", train_rs.display()))?;
        let dataset = if self.dataset.is_absolute() { self.dataset.clone() } else { repo.join(&self.dataset) };
        let toml_path = root.join("autoresearch.toml");
        std::fs::write(
            &toml_path,
            format!(
                "[experiment]\nprofile = \"{}\"\n{}\n[data]\ndataset = {:?}\n\n[model]\n{}\n\n[sandbox]\ntrainer_target_dir = {:?}\n",
                self.profile.as_str(),
                self.experiment_extra,
                dataset.display().to_string(),
                self.model_extra,
                repo.join("trainer/target").display().to_string()
            ),
        )
        .with_context(|| format!("write {}", toml_path.display()))?;
        // The per-call limit Claude Code applies must exceed a run's own hard limit.
        let config = crate::config::Config::load(&root.join("autoresearch.toml"))?;
        let mcp =
            crate::claude::mcp_config(&self.server_bin, &["serve".into()], crate::claude::call_timeout_ms(&config));
        std::fs::write(root.join(".mcp.json"), serde_json::to_string_pretty(&mcp)?)
            .with_context(|| format!("write {}", root.join(".mcp.json").display()))?;
        (|| -> Result<(), git2::Error> {
            let git = git2::Repository::init(&root)?;
            let mut idx = git.index()?;
            idx.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
            idx.write()?;
            let tree = git.find_tree(idx.write_tree()?)?;
            let sig = git2::Signature::now("autoresearch-mcp", "autoresearch-mcp@localhost")?;
            let message = format!("experiment workspace (train.rs: {} configuration)", self.config);
            git.commit(Some("HEAD"), &sig, &sig, &message, &tree, &[])?;
            Ok(())
        })()
        .with_context(|| format!("create the git repository in {}", root.display()))?;
        Ok(root)
    }
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst).with_context(|| format!("create {}", dst.display()))?;
        for e in std::fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
            let e = e?;
            // Build output stays in the repository (shared through trainer_target_dir).
            if e.file_name() == "target" || e.file_name() == "__pycache__" {
                continue;
            }
            copy(&e.path(), &dst.join(e.file_name()))?;
        }
    } else if meta.is_file() {
        std::fs::copy(src, dst).with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}
