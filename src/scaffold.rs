//! A fresh experiment workspace made from this repository: a new git repo holding a copy of the
//! trainer, the scripts and the agent's files, configured for a profile and a dataset, sharing the
//! repository's trainer build directory (so libtorch bindings compile once). Used by the demo, the
//! tests and the benchmarks; `init` then creates the experiment branch in it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::Profile;

/// What a workspace copies from the repository.
const COPIED: &[&str] = &["trainer", "scripts", "program.md", "scratchpad.md", ".gitignore", ".claude"];
/// What it leaves behind inside those: the named train.rs configurations (`final` holds the
/// reference's answers, which the loop exists to find) and the demo's scripted agent (it applies one).
/// A workspace's train.rs is written from its configuration here, before the agent starts.
const NOT_COPIED: &[&str] = &["trainer/configs", "scripts/demo_client.py"];

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
        let constants = crate::train_config::load(&repo.join("trainer"), &self.config)?;
        let skip: Vec<PathBuf> = NOT_COPIED.iter().map(|p| repo.join(p)).collect();
        for name in COPIED {
            let src = repo.join(name);
            if src.exists() {
                copy(&src, &root.join(name), &skip)?;
            }
        }
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

fn copy(src: &Path, dst: &Path, skip: &[PathBuf]) -> Result<()> {
    if skip.iter().any(|s| s == src) {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("stat {}", src.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst).with_context(|| format!("create {}", dst.display()))?;
        for e in std::fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
            let e = e?;
            // Build output stays in the repository (shared through trainer_target_dir).
            if e.file_name() == "target" || e.file_name() == "__pycache__" {
                continue;
            }
            copy(&e.path(), &dst.join(e.file_name()), skip)?;
        }
    } else if meta.is_file() {
        std::fs::copy(src, dst).with_context(|| format!("copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Claude Code cuts long MCP server instructions ("… [truncated]"): program.md at 5,874 bytes lost
    /// its end, 3,989 bytes reached the model whole (tests/python/test_saturday.py checks it end to
    /// end). This catches a longer program.md in the quick tier.
    #[test]
    fn program_md_fits_in_claude_codes_mcp_instructions() {
        let len = std::fs::read(repo().join("program.md")).unwrap().len();
        assert!(
            len <= 3989,
            "program.md is {len} bytes: Claude Code may truncate it as MCP instructions; keep it under 3,989"
        );
    }

    /// The reference's final settings, read from where `new-workspace --config final` reads them.
    fn answers() -> BTreeMap<String, String> {
        let a = crate::train_config::load(&repo().join("trainer"), "final").unwrap();
        assert!(a.len() >= 8, "{a:?}");
        a
    }

    /// The lines of `text` that give an answer away: a constant's name beside its final value, or a
    /// "reference final/fix" note.
    fn giveaways(text: &str, answers: &BTreeMap<String, String>) -> Vec<String> {
        text.lines()
            .filter(|line| {
                let tokens: Vec<&str> = line
                    .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-')))
                    .map(|t| t.trim_end_matches('.'))
                    .collect();
                let named = answers.iter().any(|(name, value)| {
                    line.contains(name.as_str())
                        && tokens.iter().any(|t| *t == value || Some(*t) == value.strip_suffix(".0"))
                });
                named || line.contains("reference final") || line.contains("reference fix")
            })
            .map(str::to_string)
            .collect()
    }

    /// Every file under `dir` (relative paths), build output, git and data left out.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let name = e.file_name();
                if [".git", "target", "data", "__pycache__", ".autoresearch"].iter().any(|n| name == *n) {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        out
    }

    #[test]
    fn the_detector_finds_an_answer_and_passes_the_baseline() {
        let a = answers();
        assert_eq!(giveaways("MAX_TEMPERATURE = \"100.0\"  # 2.0 -> 100", &a).len(), 1);
        assert_eq!(giveaways("clamp fix (MAX_TEMPERATURE 2.0 -> 100, the biggest win)", &a).len(), 1);
        assert_eq!(giveaways("const PROJ_DIM: i64 = 128; // width (reference final: 512)", &a).len(), 1);
        let baseline = std::fs::read_to_string(repo().join("trainer/src/train.rs")).unwrap();
        assert_eq!(giveaways(&baseline, &a), Vec::<String>::new(), "train.rs gives answers away");
    }

    #[test]
    fn a_new_workspace_holds_no_reference_answer() {
        let a = answers();
        let dir = tempfile::tempdir().unwrap();
        let ws = Scaffold {
            repo: &repo(),
            profile: Profile::Tests,
            dataset: PathBuf::from("data/synthetic"),
            experiment_extra: String::new(),
            model_extra: String::new(),
            config: "baseline".into(),
            server_bin: PathBuf::from("/usr/bin/true"),
        }
        .create(&dir.path().join("ws"))
        .unwrap();
        assert!(!ws.join("trainer/configs").exists(), "the named configurations were copied");
        assert!(ws.join("trainer/src/train.rs").is_file() && ws.join("program.md").is_file());
        let mut leaks = vec![];
        for f in files(&ws) {
            let Ok(text) = std::fs::read_to_string(ws.join(&f)) else { continue };
            leaks.extend(giveaways(&text, &a).into_iter().map(|l| format!("{}: {l}", f.display())));
        }
        assert!(leaks.is_empty(), "the agent's workspace names the reference's answers:\n{}", leaks.join("\n"));
    }

    /// A clone of this repository can be a workspace too (`init` in it): whatever of it names an
    /// answer must be denied to the interactive profile's Read.
    #[test]
    fn the_interactive_profile_denies_reading_every_file_that_names_an_answer() {
        let a = answers();
        let settings: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo().join(".claude/settings.json")).unwrap()).unwrap();
        let deny: Vec<&str> =
            settings["permissions"]["deny"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        let denied = |f: &Path| {
            let f = f.to_string_lossy();
            deny.iter().filter_map(|r| r.strip_prefix("Read(./")?.strip_suffix(')')).any(|pat| {
                match pat.strip_suffix("/**") {
                    Some(dir) => f.starts_with(&format!("{dir}/")),
                    None => f == pat,
                }
            })
        };
        assert!(denied(Path::new("trainer/configs/final.toml")));
        assert!(!denied(Path::new("trainer/src/train.rs")) && !denied(Path::new("program.md")));
        let mut readable = vec![];
        for f in files(&repo()) {
            let Ok(text) = std::fs::read_to_string(repo().join(&f)) else { continue };
            if !denied(&f)
                && let Some(l) = giveaways(&text, &a).first()
            {
                readable.push(format!("{}: {l}", f.display()));
            }
        }
        assert!(readable.is_empty(), "the interactive profile may Read the answers in:\n{}", readable.join("\n"));
    }
}
