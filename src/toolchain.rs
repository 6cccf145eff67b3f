//! The Rust toolchain and the crates the sandboxed build of the trainer sees. The build compiles code
//! the agent wrote, and the compiler reads files at its request (`include_str!`, `#[path]`), so it
//! gets no more than building needs: the toolchain's sysroot (not rustup's proxies and home), and
//! from CARGO_HOME only the registry sources, archives and index entries of the packages the
//! trainer's lockfile names, each bound on its own. CARGO_HOME's root (`credentials.toml`, a
//! `config.toml` with tokens), other crates and everything else of the user's home stay out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The toolchain the sandboxed build uses, found from the server's own environment.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The real `cargo` of the toolchain (`<sysroot>/bin/cargo`), not a rustup proxy.
    pub cargo: PathBuf,
    /// The toolchain's root: `bin/` (cargo, rustc) and `lib/`, bound read-only into the build.
    pub sysroot: PathBuf,
    pub cargo_home: PathBuf,
}

impl Toolchain {
    pub fn detect() -> Result<Self> {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        let cargo_home = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cargo"));
        let rustc = find_in_path("rustc")
            .or_else(|| Some(cargo_home.join("bin/rustc")).filter(|p| p.exists()))
            .context("rustc not found on PATH or in CARGO_HOME/bin: install Rust (rustup) to build the trainer")?;
        let out = std::process::Command::new(&rustc)
            .args(["--print", "sysroot"])
            .output()
            .with_context(|| format!("run {} --print sysroot", rustc.display()))?;
        if !out.status.success() {
            bail!("{} --print sysroot failed: {}", rustc.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let cargo = sysroot.join("bin/cargo");
        if !cargo.is_file() {
            bail!(
                "the toolchain at {} has no bin/cargo: install cargo with it (rustup component add cargo)",
                sysroot.display()
            );
        }
        Ok(Self { cargo, sysroot, cargo_home })
    }

    /// The paths of CARGO_HOME the build may read for the packages `lockfile` names: per package its
    /// unpacked source, its `.crate` archive and its index entry (cargo checks all three offline),
    /// plus each registry's `config.json`; git dependencies' checkouts and databases as folders.
    pub fn registry_view(&self, lockfile: &Path) -> Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string(lockfile).with_context(|| format!("read {}", lockfile.display()))?;
        let lock: toml::Value = toml::from_str(&text).with_context(|| format!("parse {}", lockfile.display()))?;
        let registry = self.cargo_home.join("registry");
        let registries: Vec<String> = std::fs::read_dir(registry.join("src"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut paths = vec![];
        let mut git = false;
        for p in lock.get("package").and_then(|p| p.as_array()).into_iter().flatten() {
            let (Some(name), Some(version), Some(source)) = (
                p.get("name").and_then(|v| v.as_str()),
                p.get("version").and_then(|v| v.as_str()),
                p.get("source").and_then(|v| v.as_str()),
            ) else {
                continue; // a path package: the trainer itself
            };
            if source.starts_with("git+") {
                git = true;
                continue;
            }
            let dir = format!("{name}-{version}");
            let reg =
                registries.iter().find(|r| registry.join("src").join(r).join(&dir).is_dir()).with_context(|| {
                    format!("{dir} ({source}) is not in {}: run scripts/fetch-trainer-deps.sh", registry.display())
                })?;
            paths.push(registry.join("src").join(reg).join(&dir));
            paths.push(registry.join("cache").join(reg).join(format!("{dir}.crate")));
            // A crate locked at two versions has one index entry.
            for p in [
                registry.join("index").join(reg).join(".cache").join(index_prefix(name)).join(name.to_lowercase()),
                registry.join("index").join(reg).join("config.json"),
            ] {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        if git {
            paths.extend(["git/checkouts", "git/db"].map(|d| self.cargo_home.join(d)));
        }
        paths.retain(|p| p.exists());
        Ok(paths)
    }
}

/// Makes every file and folder under `paths` readable by others (folders searchable), adding only
/// the missing bits; returns how many it changed. For the registry view: the build runs as nobody,
/// and some crates ship files without read permission for others (`fnv` 1.0.7: 0640), which the
/// user's own builds read as their owner. They are public sources, so nothing is exposed.
pub fn make_readable(paths: &[PathBuf]) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = 0;
    let mut stack = paths.to_vec();
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        let want = if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p)?.flatten().map(|e| e.path()));
            0o005
        } else if meta.is_file() {
            0o004
        } else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & want != want {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | want))
                .with_context(|| format!("make {} readable for the sandboxed build", p.display()))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Where cargo's index cache keeps a crate's entry: `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`.
fn index_prefix(name: &str) -> String {
    let n = name.to_lowercase();
    match n.len() {
        1 => "1".into(),
        2 => "2".into(),
        3 => format!("3/{}", &n[..1]),
        _ => format!("{}/{}", &n[..2], &n[2..4]),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_crate_files_are_made_readable_for_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lib.rs");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(make_readable(&[dir.path().to_path_buf()]).unwrap(), 1);
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(make_readable(&[dir.path().to_path_buf()]).unwrap(), 0, "nothing left to change");
    }

    #[test]
    fn index_prefixes_follow_cargos_layout() {
        assert_eq!(index_prefix("a"), "1");
        assert_eq!(index_prefix("cc"), "2");
        assert_eq!(index_prefix("tch"), "3/t");
        assert_eq!(index_prefix("Serde_json"), "se/rd");
    }

    #[test]
    fn the_view_names_each_locked_package_and_nothing_at_cargo_homes_root() {
        let home = tempfile::tempdir().unwrap();
        let reg = "index.example-0123";
        for d in [format!("registry/src/{reg}/tch-0.24.0"), format!("registry/src/{reg}/other-1.0.0")] {
            std::fs::create_dir_all(home.path().join(d)).unwrap();
        }
        std::fs::create_dir_all(home.path().join(format!("registry/cache/{reg}"))).unwrap();
        std::fs::write(home.path().join(format!("registry/cache/{reg}/tch-0.24.0.crate")), b"").unwrap();
        std::fs::create_dir_all(home.path().join(format!("registry/index/{reg}/.cache/3/t"))).unwrap();
        std::fs::write(home.path().join(format!("registry/index/{reg}/.cache/3/t/tch")), b"").unwrap();
        std::fs::write(home.path().join(format!("registry/index/{reg}/config.json")), b"{}").unwrap();
        std::fs::write(home.path().join("credentials.toml"), b"token").unwrap();
        let lock = home.path().join("Cargo.lock");
        std::fs::write(
            &lock,
            "version = 4\n[[package]]\nname = \"eclip\"\nversion = \"0.1.0\"\n\
             [[package]]\nname = \"tch\"\nversion = \"0.24.0\"\nsource = \"registry+https://example\"\n",
        )
        .unwrap();
        let tc = Toolchain { cargo: "cargo".into(), sysroot: "/".into(), cargo_home: home.path().to_path_buf() };
        let view = tc.registry_view(&lock).unwrap();
        let rel: Vec<String> =
            view.iter().map(|p| p.strip_prefix(home.path()).unwrap().display().to_string()).collect();
        assert_eq!(
            rel,
            [
                format!("registry/src/{reg}/tch-0.24.0"),
                format!("registry/cache/{reg}/tch-0.24.0.crate"),
                format!("registry/index/{reg}/.cache/3/t/tch"),
                format!("registry/index/{reg}/config.json"),
            ]
        );
        std::fs::write(&lock, "[[package]]\nname = \"gone\"\nversion = \"1.0.0\"\nsource = \"registry+x\"\n").unwrap();
        let err = tc.registry_view(&lock).unwrap_err().to_string();
        assert!(err.contains("gone-1.0.0") && err.contains("fetch-trainer-deps.sh"), "{err}");
    }
}
