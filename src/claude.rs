//! Claude Code, the loop driver: where its binary is, which version was tested, the environment and
//! flags of the strict headless profile, and how long one tool call may take. Used by `saturday`,
//! `doctor` and the workspace scaffold.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::pyenv::PyEnv;

/// The Claude Code version the tests ran against (`scripts/python-env.sh` installs it).
pub const TESTED_VERSION: &str = "2.1.330";
/// The PyPI wheel that bundles [`TESTED_VERSION`] (`claude_agent_sdk/_bundled/claude`).
pub const TESTED_WHEEL: &str = "claude-agent-sdk==0.2.187";
/// The name `.mcp.json` registers the server under; Claude Code names its tools `mcp__autoresearch__*`.
pub const SERVER_NAME: &str = "autoresearch";

/// Set on every Claude Code process this project starts: no self-update, no telemetry, no
/// traffic beyond the model API.
pub const QUIET_ENV: [(&str, &str); 3] =
    [("DISABLE_AUTOUPDATER", "1"), ("DISABLE_TELEMETRY", "1"), ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")];

/// Where the `claude` binary comes from, first match wins: `explicit` (`--claude`),
/// `$AUTORESEARCH_CLAUDE`, the CLI bundled in the project's Python environment, `claude` on PATH.
pub fn locate(explicit: Option<&Path>, workspace: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return executable(p).with_context(|| format!("--claude {}", p.display()));
    }
    if let Some(p) = std::env::var_os("AUTORESEARCH_CLAUDE").filter(|v| !v.is_empty()) {
        return executable(Path::new(&p)).with_context(|| format!("AUTORESEARCH_CLAUDE={}", p.to_string_lossy()));
    }
    if let Some(p) = bundled(workspace) {
        return Ok(p);
    }
    if let Some(dirs) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&dirs) {
            if let Ok(p) = executable(&d.join("claude")) {
                return Ok(p);
            }
        }
    }
    bail!(
        "Claude Code not found: pass --claude PATH, set AUTORESEARCH_CLAUDE, run scripts/python-env.sh \
         (installs {TESTED_WHEEL}), or put `claude` on PATH"
    )
}

/// The CLI bundled in the project's Python environment, when that environment is already set up
/// (this never installs it).
fn bundled(workspace: &Path) -> Option<PathBuf> {
    let script = workspace.join("scripts/python-env.sh");
    if !script.exists() {
        return None;
    }
    let env = PyEnv::locate(workspace).ok()?;
    let lib = env.dir.join("lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|e| {
        let p = e.path().join("site-packages/claude_agent_sdk/_bundled/claude");
        executable(&p).ok()
    })
}

fn executable(p: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).with_context(|| format!("{} does not exist", p.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("{} is not an executable file", p.display());
    }
    Ok(p.to_path_buf())
}

/// `claude --version`, e.g. `2.1.330`.
pub fn version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .envs(QUIET_ENV)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("run {} --version", bin.display()))?;
    if !out.status.success() {
        bail!("{} --version failed ({})", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().map(str::to_string).context("`claude --version` printed nothing")
}

/// The flags of the strict headless profile (DESIGN.md): only the servers of `mcp_config`, no
/// settings files, no built-in tools, only the six tools allowed, and nothing asks.
pub fn strict_args(mcp_config: &Path) -> Vec<String> {
    let mut args: Vec<String> =
        vec!["--mcp-config".into(), mcp_config.display().to_string(), "--strict-mcp-config".into()];
    for a in
        ["--setting-sources", "", "--tools", "", "--allowedTools", "mcp__autoresearch", "--permission-mode", "dontAsk"]
    {
        args.push(a.into());
    }
    args
}

/// The longest one `run_experiment` call can take: data preparation (first run only), the build,
/// then per fold training (budget + grace) and the two embed phases, each at its own hard limit.
pub fn run_hard_limit(config: &Config) -> Duration {
    let e = &config.experiment;
    let per_fold = config.budget_seconds() + e.grace_seconds + 2 * e.embed_timeout_seconds;
    let prepare = 3600; // experiment.rs: the prepare phase's own limit
    Duration::from_secs(prepare + e.build_timeout_seconds + u64::from(e.folds.max(1)) * per_fold)
}

/// The per-server `timeout` (ms) for `.mcp.json`: above a run's hard limit, and never under an hour.
/// Claude Code applies it as the hard wall-clock limit of one tool call; progress notifications
/// (every 10 s) keep its idle timer from firing before that.
pub fn call_timeout_ms(config: &Config) -> u64 {
    let limit = run_hard_limit(config) + Duration::from_secs(300);
    (limit.as_millis() as u64).max(3_600_000)
}

/// The `.mcp.json` entry that starts this server over stdio.
pub fn mcp_config(command: &Path, args: &[String], timeout_ms: u64) -> serde_json::Value {
    serde_json::json!({"mcpServers": {SERVER_NAME: {
        "type": "stdio",
        "command": command.display().to_string(),
        "args": args,
        "timeout": timeout_ms
    }}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_timeout_is_above_the_hard_limit_of_every_profile() {
        for toml in [
            "[experiment]\nprofile = \"tests\"",
            "[experiment]\nprofile = \"gpu\"",
            "[experiment]\nprofile = \"gpu\"\nfolds = 3",
            "[experiment]\nprofile = \"cpu\"\nbudget_seconds = 3000\nfolds = 5",
        ] {
            let config: Config = toml::from_str(toml).unwrap();
            let limit = run_hard_limit(&config).as_millis() as u64;
            assert!(call_timeout_ms(&config) > limit, "{toml}");
            assert!(call_timeout_ms(&config) >= 3_600_000);
        }
    }

    #[test]
    fn strict_profile_flags() {
        let a = strict_args(Path::new("/w/.mcp.json")).join(" ");
        assert_eq!(
            a,
            "--mcp-config /w/.mcp.json --strict-mcp-config --setting-sources  --tools  --allowedTools mcp__autoresearch --permission-mode dontAsk"
        );
    }
}
