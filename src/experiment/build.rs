//! The sandboxed build of the trainer's binaries (`train`, `prepare`) from the workspace's sources.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::{Runner, Trainer};
use crate::sandbox::JobOutcome;

impl Runner {
    /// `cargo build --release --offline --locked --bin <bin>` of the trainer, in the sandbox. On
    /// success the binary is copied to `dir/<bin>`, which is what the phases run.
    ///
    /// The target dir may be shared by several workspaces (tests, demos): builds hold a lock on it
    /// from build to copy, so no other build can swap the binary in between, and train.rs is touched
    /// first, so cargo never reuses a `train` built from another workspace's older train.rs.
    pub(super) async fn build(
        &self,
        bin: &str,
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<(JobOutcome, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let target = self.target_dir();
        std::fs::create_dir_all(&target)?;
        let lock = std::fs::File::create(target.join(".autoresearch-build.lock"))?;
        let lock = tokio::task::spawn_blocking(move || fs2::FileExt::lock_exclusive(&lock).map(|_| lock))
            .await?
            .context("lock the trainer's build directory")?;
        // Cargo judges a path package fresh by mtimes, so a harness compiled from another workspace's
        // (older or newer) sources can look fresh here. The target dir remembers which harness it last
        // built; when this one differs, its files are touched and cargo recompiles them.
        let stamp = target.join(".autoresearch-harness");
        let harness = self.harness_hash()?;
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(harness.as_str()) {
            let now = std::time::SystemTime::now();
            for f in self.harness_files()? {
                let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&f);
                file.and_then(|h| h.set_modified(now)).with_context(|| format!("touch {}", f.display()))?;
            }
        }
        if bin == "train" {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.paths.train_rs())
                .context("open train.rs")?;
            f.set_modified(std::time::SystemTime::now()).context("touch train.rs")?;
        }
        let Trainer::Build(tc) = &self.trainer else {
            bail!("building {bin}: this runner uses prebuilt trainer binaries");
        };
        let env = vec![
            (
                "PATH".into(),
                format!(
                    "{}:{}:/usr/local/bin:/usr/bin:/bin",
                    self.pyenv.bin().display(),
                    tc.sysroot.join("bin").display()
                ),
            ),
            ("CARGO_HOME".into(), tc.cargo_home.display().to_string()),
            ("CARGO_TARGET_DIR".into(), self.target_dir().display().to_string()),
            ("CARGO_TERM_COLOR".into(), "never".into()),
            ("LIBTORCH_USE_PYTORCH".into(), "1".into()),
        ];
        let args = ["build", "--release", "--offline", "--locked", "--bin", bin, "--manifest-path"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.paths.trainer().join("Cargo.toml").display().to_string()])
            .collect();
        let timeout = Duration::from_secs(self.config.experiment.build_timeout_seconds);
        // Reads: the trainer's sources, the toolchain's sysroot, the locked crates (not CARGO_HOME: see
        // crate::toolchain), the Python environment (torch-sys asks its python where libtorch is, and
        // that python's own installation). Writes: the target dir, handed to the build's user.
        let mut read_only = vec![self.paths.trainer(), tc.sysroot.clone(), self.pyenv.dir.clone()];
        let view = tc.registry_view(&self.paths.trainer().join("Cargo.lock"))?;
        ensure_readable(&view)?;
        read_only.extend(view);
        read_only.extend(self.pyenv.python_prefix());
        let mut job = self.job("build", tc.cargo.clone(), args, env, dir, (timeout, 8 << 30));
        job.read_only = read_only;
        job.writable.push(target.clone());
        let outcome = self.sandbox.run(&job, cancel).await?;
        // Into a folder the build could not write, so nothing it planted can redirect the copy.
        let bin_dir = dir.with_file_name("bin");
        let copy = bin_dir.join(bin);
        if outcome.success() {
            std::fs::write(&stamp, &harness).context("stamp the trainer's build directory")?;
            let _ = std::fs::remove_dir_all(&bin_dir);
            std::fs::create_dir_all(&bin_dir)?;
            std::fs::copy(target.join("release").join(bin), &copy).with_context(|| format!("copy the built {bin}"))?;
        }
        drop(lock);
        Ok((outcome, copy))
    }
}

/// [`crate::toolchain::make_readable`] once per server for each registry view (a walk of ~20k files).
fn ensure_readable(view: &[PathBuf]) -> Result<()> {
    static DONE: std::sync::Mutex<Vec<Vec<PathBuf>>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap();
    if !done.iter().any(|v| v == view) {
        crate::toolchain::make_readable(view)?;
        done.push(view.to_vec());
    }
    Ok(())
}
