//! `prepare --dataset DIR --profile tests|cpu|gpu --tokenizer FILE --out DIR` (trainer/CONTRACT.md):
//! ODVG JSONL + images + tokenizer.json -> `OUT/<split>.safetensors` and `OUT/prepare_report.json`.

use anyhow::{bail, Context, Result};
use eclip_harness::{prepare, Profile};
use std::path::PathBuf;

const USAGE: &str = "usage: prepare --dataset DIR --profile tests|cpu|gpu --tokenizer FILE --out DIR";

fn main() -> Result<()> {
    let (mut dataset, mut profile, mut tokenizer, mut out) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--dataset" => &mut dataset,
            "--profile" => &mut profile,
            "--tokenizer" => &mut tokenizer,
            "--out" => &mut out,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        };
        *slot = Some(args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?);
    }
    let need = |v: Option<String>, name: &str| v.with_context(|| format!("missing {name}\n{USAGE}"));
    let dataset = PathBuf::from(need(dataset, "--dataset")?);
    let profile = Profile::by_name(&need(profile, "--profile")?)?;
    let tokenizer = PathBuf::from(need(tokenizer, "--tokenizer")?);
    let out = PathBuf::from(need(out, "--out")?);
    let started = std::time::Instant::now();
    let report = prepare::run(&dataset, &profile, &tokenizer, &out)?;
    eprintln!(
        "prepared {} split(s) for profile {} in {:.1}s",
        report.splits.len(),
        profile.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
