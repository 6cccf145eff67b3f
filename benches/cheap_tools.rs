//! Latency of the cheap tools (all but run_experiment) through a real MCP client over stdio,
//! against the real server on a fresh workspace. Prints p50/p99/max per tool; the target is
//! p99 < 50 ms on the development machine. Run: `cargo bench --bench cheap_tools`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use serde_json::{Value, json};

const CALLS: usize = 200;

/// Arguments of the i-th call of one case.
type ArgsFn = Box<dyn Fn(usize) -> Value>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_autoresearch-mcp"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("ws");
    let out = std::process::Command::new(&bin)
        .arg("-C")
        .arg(&repo)
        .args(["new-workspace", "--profile", "tests", "--tag", "bench"])
        .arg(&ws)
        .output()?;
    anyhow::ensure!(out.status.success(), "new-workspace: {}", String::from_utf8_lossy(&out.stderr));
    let transport = TokioChildProcess::new(tokio::process::Command::new(&bin).configure(|c| {
        c.arg("-C").arg(&ws).arg("serve").env("RUST_LOG", "warn");
    }))?;
    let client = ().serve(transport).await?;
    let train = std::fs::read_to_string(ws.join("trainer/src/train.rs"))?;
    let anchor = train.lines().find(|l| l.contains("const WEIGHT_DECAY")).unwrap_or("fn main").to_string();

    // One (tool, arguments) pair per cheap operation; edits alternate so each call really writes.
    let cases: Vec<(&str, ArgsFn)> = vec![
        ("edit_train view", Box::new(|_| json!({"command": "view", "view_range": [1, 40]}))),
        ("edit_train str_replace", {
            let anchor = anchor.clone();
            Box::new(move |i| {
                let (a, b) = if i % 2 == 0 {
                    (anchor.clone(), format!("{anchor} // x"))
                } else {
                    (format!("{anchor} // x"), anchor.clone())
                };
                json!({"command": "str_replace", "old_str": a, "new_str": b})
            })
        }),
        ("read_metrics", Box::new(|_| json!({"last": 20}))),
        ("append_scratchpad", Box::new(|i| json!({"entry": format!("bench note {i}")}))),
        ("revert", Box::new(|_| json!({}))),
        ("commit (refused)", Box::new(|_| json!({"description": "nothing changed"}))),
    ];
    println!("cheap tools over stdio, {CALLS} calls each (audit record written per call)");
    println!("{:<24} {:>9} {:>9} {:>9}", "tool", "p50 ms", "p99 ms", "max ms");
    let mut worst = Duration::ZERO;
    for (name, args) in &cases {
        let tool = name.split(' ').next().unwrap().to_string();
        let mut times = Vec::with_capacity(CALLS);
        for i in 0..CALLS {
            let params = CallToolRequestParams::new(tool.clone()).with_arguments(args(i).as_object().cloned().unwrap());
            let t = Instant::now();
            client.call_tool(params).await?;
            times.push(t.elapsed());
        }
        times.sort();
        let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        worst = worst.max(p(0.99));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("{:<24} {:>9.2} {:>9.2} {:>9.2}", name, ms(p(0.5)), ms(p(0.99)), ms(*times.last().unwrap()));
    }
    println!("worst p99: {:.2} ms (target < 50 ms)", worst.as_secs_f64() * 1e3);
    client.cancel().await?;
    Ok(())
}
