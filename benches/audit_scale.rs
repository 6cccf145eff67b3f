//! `autoresearch-mcp audit` on a generated 100k-line log (a long weekend of tool calls): the time
//! `list`, `list` with filters, `summary` and `verify` take, through the real binary, output to
//! /dev/null. Prints best and median of 5 runs each; the target is well under a second per command
//! on the development machine. Run: `cargo bench --bench audit_scale`.

use std::process::{Command, Stdio};
use std::time::Instant;

const LINES: usize = 100_000;
const REPEATS: usize = 5;

#[path = "../tests/support/audit_log_fixture.rs"]
mod audit_log_fixture;

fn main() -> anyhow::Result<()> {
    let bin = env!("CARGO_BIN_EXE_autoresearch-mcp");
    let tmp = tempfile::tempdir()?;
    let (lines, _) = audit_log_fixture::generate_log(tmp.path(), LINES);
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
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
