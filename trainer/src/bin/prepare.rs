//! `prepare --profile tests|cpu|gpu --tokenizer FILE --out DIR (--dataset DIR | --split NAME=FILE... --images DIR)`
//! (trainer/CONTRACT.md): ODVG JSONL + images + tokenizer.json -> `OUT/<split>.safetensors` and
//! `OUT/prepare_report.json`. `--dataset DIR` means `DIR/{train,val,test}.jsonl` (those present) and
//! `DIR/images`; `--split` and `--images` name the files of any other layout (the server resolves them).

use anyhow::{bail, Context, Result};
use eclip_harness::{prepare, Profile};
use std::path::PathBuf;

const USAGE: &str = "usage: prepare --profile tests|cpu|gpu --tokenizer FILE --out DIR \
                     (--dataset DIR | --split train=FILE [--split val=FILE ...] --images DIR)";

fn main() -> Result<()> {
    let (mut dataset, mut profile, mut tokenizer, mut out, mut images) = (None, None, None, None, None);
    let mut splits: Vec<(String, PathBuf)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if matches!(flag.as_str(), "-h" | "--help") {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let slot = match flag.as_str() {
            "--dataset" => &mut dataset,
            "--profile" => &mut profile,
            "--tokenizer" => &mut tokenizer,
            "--out" => &mut out,
            "--images" => &mut images,
            "--split" => {
                let (name, file) =
                    value.split_once('=').with_context(|| format!("--split {value:?}: use NAME=FILE"))?;
                if !prepare::SPLITS.contains(&name) {
                    bail!("--split {name}: the splits are {}", prepare::SPLITS.join(", "));
                }
                splits.push((name.to_string(), PathBuf::from(file)));
                continue;
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        };
        *slot = Some(value);
    }
    let need = |v: Option<String>, name: &str| v.with_context(|| format!("missing {name}\n{USAGE}"));
    let profile = Profile::by_name(&need(profile, "--profile")?)?;
    let tokenizer = PathBuf::from(need(tokenizer, "--tokenizer")?);
    let out = PathBuf::from(need(out, "--out")?);
    let (splits, images) = match (dataset, splits.is_empty()) {
        (Some(d), true) => {
            let (s, i) = prepare::standard_layout(&PathBuf::from(d));
            (s, images.map(PathBuf::from).unwrap_or(i))
        }
        (None, false) => (splits, PathBuf::from(need(images, "--images")?)),
        _ => bail!("give either --dataset or --split (with --images)\n{USAGE}"),
    };
    for (name, file) in &splits {
        if !file.is_file() {
            bail!("the {name} split {} does not exist", file.display());
        }
    }
    if !images.is_dir() {
        bail!("the image folder {} does not exist", images.display());
    }
    let started = std::time::Instant::now();
    let report = prepare::run(&splits, &images, &profile, &tokenizer, &out)?;
    eprintln!(
        "prepared {} split(s) for profile {} in {:.1}s",
        report.splits.len(),
        profile.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
