//! `autoresearch-mcp audit` on a generated 100k-line log (a long weekend of tool calls): the time
//! `list`, `list` with filters, `summary` and `verify` take, through the real binary, output to
//! /dev/null. Prints best and median of 5 runs each; the target is well under a second per command
//! on the development machine. Run: `cargo bench --bench audit_scale`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use autoresearch_mcp::audit::{AuditRecord, GENESIS, Head, Outcome};
use autoresearch_mcp::fsutil::sha256_hex;
use serde_json::json;

const LINES: usize = 100_000;
const REPEATS: usize = 5;

/// The same mix as the integration test's: per 50 calls one 5-minute run, two failed ones, one
/// refused edit, one commit, the rest read_metrics, 30 s apart.
fn generate(dir: &Path, n: usize) -> anyhow::Result<u64> {
    let state = dir.join(".autoresearch");
    std::fs::create_dir_all(&state)?;
    let mut t = chrono::DateTime::parse_from_rfc3339("2026-11-22T20:00:00Z")?.with_timezone(&chrono::Utc);
    let mut prev = GENESIS.to_string();
    let mut text = String::with_capacity(n * 400);
    for i in 0..n {
        let (tool, args, outcome, reason, ms) = match i % 50 {
            0 => ("run_experiment", json!({"description": format!("idea {i}")}), Outcome::Ok, None, 300_000.0),
            20 | 40 => (
                "run_experiment",
                json!({"description": format!("idea {i}")}),
                Outcome::Error,
                Some("build failed"),
                20_000.0,
            ),
            7 => (
                "edit_train",
                json!({"command": "str_replace", "old_str": "a", "new_str": "b", "path": "/etc/passwd"}),
                Outcome::Refused,
                Some("refused: only trainer/src/train.rs can be edited"),
                0.3,
            ),
            9 => ("commit", json!({"description": format!("keep {i}")}), Outcome::Ok, None, 15.0),
            _ => ("read_metrics", json!({"last": 5}), Outcome::Ok, None, 2.0),
        };
        t += chrono::Duration::microseconds((ms * 1e3) as i64);
        let rec = AuditRecord {
            ts: t,
            tool: tool.into(),
            via: "mcp".into(),
            args,
            outcome,
            reason: reason.map(String::from),
            duration_ms: ms,
            run_id: (tool == "run_experiment").then(|| format!("r{:04}", i / 20 + 1)),
            train_hash_before: Some("ab".repeat(32)),
            train_hash_after: Some("ab".repeat(32)),
            prev: prev.clone(),
        };
        let line = serde_json::to_string(&rec)?;
        prev = sha256_hex(line.as_bytes());
        text.push_str(&line);
        text.push('\n');
        t += chrono::Duration::seconds(30);
    }
    std::fs::write(state.join("audit.jsonl"), &text)?;
    std::fs::write(state.join("audit.head"), serde_json::to_string(&Head { hash: prev, lines: n as u64 })?)?;
    Ok(text.len() as u64)
}

fn main() -> anyhow::Result<()> {
    let bin = env!("CARGO_BIN_EXE_autoresearch-mcp");
    let tmp = tempfile::tempdir()?;
    let bytes = generate(tmp.path(), LINES)?;
    println!(
        "audit commands on a {LINES}-line log ({:.1} MB), output to /dev/null, {REPEATS} runs each",
        bytes as f64 / 1e6
    );
    println!("{:<52} {:>9} {:>9}", "command", "best s", "median s");
    let cases: [&[&str]; 5] = [
        &["list"],
        &["list", "--tool", "run_experiment", "--outcome", "error"],
        &["list", "--since", "2026-12-20"],
        &["summary"],
        &["verify"],
    ];
    for args in cases {
        let mut times = vec![];
        for _ in 0..REPEATS {
            let t = Instant::now();
            let status =
                Command::new(bin).arg("-C").arg(tmp.path()).arg("audit").args(args).stdout(Stdio::null()).status()?;
            times.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(status.success(), "audit {} failed", args.join(" "));
        }
        times.sort_by(f64::total_cmp);
        println!("{:<52} {:>9.3} {:>9.3}", format!("audit {}", args.join(" ")), times[0], times[REPEATS / 2]);
    }
    Ok(())
}
