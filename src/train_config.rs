//! Named configurations of train.rs (`trainer/configs/<name>.toml`): the `const` values they change.
//! `baseline` is train.rs as it ships (the reference before its run); `final` is the reference's kept
//! settings. Applying one rewrites only the value of each named `const NAME: TYPE = VALUE;` line, so the
//! comments and everything else stay, and fails if a constant is missing or appears twice.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    constants: BTreeMap<String, String>,
}

/// The constants configuration `name` sets, read from `trainer/configs/<name>.toml` under `trainer`.
pub fn load(trainer: &Path, name: &str) -> Result<BTreeMap<String, String>> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("configuration name {name:?}: use letters, digits, - and _");
    }
    let path = trainer.join("configs").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        let known = list(trainer).unwrap_or_default().join(", ");
        format!("no configuration {name:?} ({} does not exist; known: {known})", path.display())
    })?;
    let f: ConfigFile = toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(f.constants)
}

/// Names of the configurations under `trainer/configs`.
pub fn list(trainer: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(trainer.join("configs"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".toml").map(String::from))
        .collect();
    names.sort();
    Ok(names)
}

/// `src` with each constant of `constants` set to its value.
pub fn apply(src: &str, constants: &BTreeMap<String, String>) -> Result<String> {
    let mut lines: Vec<String> = src.lines().map(String::from).collect();
    for (name, value) in constants {
        let prefix = format!("const {name}:");
        let hits: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim_start().starts_with(&prefix)).collect();
        let [i] = hits[..] else {
            bail!("train.rs has {} `const {name}` lines (expected exactly one)", hits.len());
        };
        let line = &lines[i];
        let eq = line.find(" = ").with_context(|| format!("`const {name}` has no ` = `"))?;
        let semi = line[eq..].find(';').map(|j| eq + j).with_context(|| format!("`const {name}` has no `;`"))?;
        lines[i] = format!("{}{value}{}", &line[..eq + 3], &line[semi..]);
    }
    let mut out = lines.join("\n");
    if src.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "const A: i64 = 1; // keep me\n    const B: f64 = 2.0;\nfn main() {}\n";

    #[test]
    fn rewrites_values_and_keeps_comments() {
        let c = BTreeMap::from([("A".into(), "7".into()), ("B".into(), "1e-4".into())]);
        assert_eq!(apply(SRC, &c).unwrap(), "const A: i64 = 7; // keep me\n    const B: f64 = 1e-4;\nfn main() {}\n");
    }

    #[test]
    fn a_missing_or_repeated_constant_is_an_error() {
        let c = BTreeMap::from([("C".into(), "1".into())]);
        assert!(apply(SRC, &c).unwrap_err().to_string().contains("0 `const C` lines"));
        let twice = format!("{SRC}const A: i64 = 3;\n");
        let c = BTreeMap::from([("A".into(), "1".into())]);
        assert!(apply(&twice, &c).unwrap_err().to_string().contains("2 `const A` lines"));
    }

    #[test]
    fn the_shipped_configurations_apply_to_the_shipped_train_rs() {
        let trainer = Path::new(env!("CARGO_MANIFEST_DIR")).join("trainer");
        let src = std::fs::read_to_string(trainer.join("src/train.rs")).unwrap();
        assert!(list(&trainer).unwrap().contains(&"final".to_string()));
        assert_eq!(apply(&src, &load(&trainer, "baseline").unwrap()).unwrap(), src);
        let fin = apply(&src, &load(&trainer, "final").unwrap()).unwrap();
        assert!(fin.contains("const MAX_TEMPERATURE: f64 = 100.0;"), "{fin}");
        assert!(fin.contains("const PROJ_DIM: i64 = 512;"));
        assert!(load(&trainer, "nope").unwrap_err().to_string().contains("known: baseline, final"));
        assert!(load(&trainer, "../x").is_err());
    }
}
