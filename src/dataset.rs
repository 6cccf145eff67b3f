//! An ODVG dataset on disk: where its splits and images are, what identifies it, and the k-fold
//! cross-validation splits of the reference.
//!
//! Layouts, tried in order:
//! - explicit paths (`[data] train/val/test/images`, relative to the dataset folder);
//! - the standard layout: `train.jsonl`, `val.jsonl`, optional `test.jsonl`, `images/`;
//! - Ukiyo-eVG's release: `annotations/Ukiyo-eVG/refined/ukiyoe_vg_{train,val}_pgt_odvg.jsonl`,
//!   `ukiyoe_vg_test_annotated.jsonl`, and the images of `images_ukiyo-e.zip` unpacked into one of
//!   `images/`, `images_ukiyo-e/`, `ukiyo-e/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::config::DataConfig;

/// Where Ukiyo-eVG's refined annotations are, relative to the dataset folder.
const UKIYOE_ANNOTATIONS: &str = "annotations/Ukiyo-eVG/refined";
/// Folders the unpacked Ukiyo-e images may be in.
const UKIYOE_IMAGE_DIRS: [&str; 3] = ["images", "images_ukiyo-e", "ukiyo-e"];

/// The resolved files of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// `standard`, `ukiyo-evg` or `explicit`.
    pub kind: &'static str,
    pub train: PathBuf,
    pub val: PathBuf,
    pub test: Option<PathBuf>,
    pub images: PathBuf,
}

impl Layout {
    /// Finds the splits and images of the dataset folder `root`.
    pub fn resolve(root: &Path, cfg: &DataConfig) -> Result<Layout> {
        if !root.is_dir() {
            bail!(
                "dataset {} does not exist; run `autoresearch-mcp synth` or point data.dataset at an ODVG folder",
                root.display()
            );
        }
        let explicit = [&cfg.train, &cfg.val, &cfg.test, &cfg.images].iter().any(|p| !p.as_os_str().is_empty());
        let layout = if explicit {
            let pick =
                |p: &Path, default: &str| root.join(if p.as_os_str().is_empty() { Path::new(default) } else { p });
            let test = pick(&cfg.test, "test.jsonl");
            Layout {
                kind: "explicit",
                train: pick(&cfg.train, "train.jsonl"),
                val: pick(&cfg.val, "val.jsonl"),
                test: test.is_file().then_some(test),
                images: pick(&cfg.images, "images"),
            }
        } else if root.join("train.jsonl").is_file() {
            let test = root.join("test.jsonl");
            Layout {
                kind: "standard",
                train: root.join("train.jsonl"),
                val: root.join("val.jsonl"),
                test: test.is_file().then_some(test),
                images: root.join("images"),
            }
        } else if root.join(UKIYOE_ANNOTATIONS).is_dir() {
            let a = root.join(UKIYOE_ANNOTATIONS);
            let test = a.join("ukiyoe_vg_test_annotated.jsonl");
            let images = UKIYOE_IMAGE_DIRS.iter().map(|d| root.join(d)).find(|d| d.is_dir());
            let Some(images) = images else {
                bail!(
                    "Ukiyo-eVG at {}: unpack images_ukiyo-e.zip into one of {} (or set data.images)",
                    root.display(),
                    UKIYOE_IMAGE_DIRS.join(", ")
                );
            };
            Layout {
                kind: "ukiyo-evg",
                train: a.join("ukiyoe_vg_train_pgt_odvg.jsonl"),
                val: a.join("ukiyoe_vg_val_pgt_odvg.jsonl"),
                test: test.is_file().then_some(test),
                images,
            }
        } else {
            bail!(
                "dataset {} has neither train.jsonl/val.jsonl nor Ukiyo-eVG's {UKIYOE_ANNOTATIONS}/; \
                 set data.train, data.val and data.images for another layout",
                root.display()
            );
        };
        for (what, p) in [("training split", &layout.train), ("validation split", &layout.val)] {
            if !p.is_file() {
                bail!("the {what} {} does not exist ({} layout)", p.display(), layout.kind);
            }
        }
        if !layout.images.is_dir() {
            bail!("the image folder {} does not exist ({} layout)", layout.images.display(), layout.kind);
        }
        Ok(layout)
    }

    /// The splits as (name, file), test only where present.
    pub fn splits(&self) -> Vec<(&'static str, &Path)> {
        let mut s = vec![("train", self.train.as_path()), ("val", self.val.as_path())];
        s.extend(self.test.as_deref().map(|t| ("test", t)));
        s
    }

    /// A short hash of the annotation files and the image listing (names and sizes).
    pub fn hash(&self) -> Result<String> {
        let mut h = Sha256::new();
        for (split, p) in self.splits() {
            h.update(split.as_bytes());
            h.update(Sha256::digest(std::fs::read(p)?));
        }
        let mut names: Vec<(String, u64)> = std::fs::read_dir(&self.images)?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len())))
            .collect();
        names.sort();
        for (n, len) in names {
            h.update(n.as_bytes());
            h.update(len.to_le_bytes());
        }
        Ok(hex::encode(h.finalize())[..16].to_string())
    }
}

/// The prepared-cache folder name of `layout` at `profile` with `tokenizer`: a different tokenizer gives
/// different token ids, so it is part of the key, like the dataset and the profile.
pub fn cache_key(layout: &Layout, profile: &str, tokenizer: &Path) -> Result<String> {
    let tok = std::fs::read(tokenizer).with_context(|| format!("read the tokenizer {}", tokenizer.display()))?;
    Ok(format!("{profile}-{}-{}", layout.hash()?, &crate::fsutil::sha256_hex(&tok)[..8]))
}

/// `prepare`'s arguments naming `splits` and `layout`'s images (its `--split`/`--images` form).
pub fn prepare_split_args(splits: &[(&str, &Path)], layout: &Layout) -> Vec<String> {
    let mut args = vec!["--images".to_string(), layout.images.display().to_string()];
    for (name, file) in splits {
        args.extend(["--split".into(), format!("{name}={}", file.display())]);
    }
    args
}

/// The reference's cross-validation: training and validation entries pooled, shuffled with `seed`, and
/// cut into `k` folds; fold i validates on its own entries and trains on the others. Writes
/// `out/fold-<i>/{train,val}.jsonl` (JSONL lines as they are; `prepare` skips unusable ones in either)
/// and returns the (train, val) files of each fold. The test split is not touched.
pub fn write_folds(layout: &Layout, k: usize, seed: u64, out: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if k < 2 {
        bail!("cross-validation needs at least 2 folds, not {k}");
    }
    let mut lines: Vec<String> = vec![];
    for p in [&layout.train, &layout.val] {
        let text = std::fs::read_to_string(p)?;
        lines.extend(text.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    if lines.len() < k {
        bail!("{} entries cannot make {k} folds", lines.len());
    }
    // Not numpy's RandomState(42): the same protocol (pooled, permuted, k near-equal folds), not the same cut.
    lines.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut files = vec![];
    for i in 0..k {
        let dir = out.join(format!("fold-{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        let (mut train, mut val) = (String::new(), String::new());
        for (j, line) in lines.iter().enumerate() {
            let dest = if j % k == i { &mut val } else { &mut train };
            dest.push_str(line);
            dest.push('\n');
        }
        let (t, v) = (dir.join("train.jsonl"), dir.join("val.jsonl"));
        std::fs::write(&t, train)?;
        std::fs::write(&v, val)?;
        files.push((t, v));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "{}\n{}\n{}\n").unwrap();
    }

    #[test]
    fn finds_the_standard_and_the_ukiyoe_layouts_and_says_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let cfg = DataConfig::default();
        let err = Layout::resolve(d.path(), &cfg).unwrap_err().to_string();
        assert!(err.contains("neither train.jsonl/val.jsonl nor Ukiyo-eVG"), "{err}");

        let a = d.path().join(UKIYOE_ANNOTATIONS);
        touch(&a.join("ukiyoe_vg_train_pgt_odvg.jsonl"));
        touch(&a.join("ukiyoe_vg_val_pgt_odvg.jsonl"));
        let err = Layout::resolve(d.path(), &cfg).unwrap_err().to_string();
        assert!(err.contains("unpack images_ukiyo-e.zip"), "{err}");
        std::fs::create_dir_all(d.path().join("images_ukiyo-e")).unwrap();
        let l = Layout::resolve(d.path(), &cfg).unwrap();
        assert_eq!((l.kind, l.test.is_none()), ("ukiyo-evg", true));
        assert!(l.images.ends_with("images_ukiyo-e"));
        touch(&a.join("ukiyoe_vg_test_annotated.jsonl"));
        assert_eq!(Layout::resolve(d.path(), &cfg).unwrap().splits().len(), 3);

        touch(&d.path().join("train.jsonl"));
        let err = Layout::resolve(d.path(), &cfg).unwrap_err().to_string();
        assert!(err.contains("validation split") && err.contains("standard"), "{err}");
        let explicit = DataConfig {
            val: "annotations/Ukiyo-eVG/refined/ukiyoe_vg_val_pgt_odvg.jsonl".into(),
            images: "images_ukiyo-e".into(),
            ..cfg
        };
        assert_eq!(Layout::resolve(d.path(), &explicit).unwrap().kind, "explicit");
    }

    #[test]
    fn folds_partition_the_pooled_entries() {
        let d = tempfile::tempdir().unwrap();
        let (train, val) = (d.path().join("train.jsonl"), d.path().join("val.jsonl"));
        std::fs::write(&train, (0..7).map(|i| format!("t{i}\n")).collect::<String>()).unwrap();
        std::fs::write(&val, (0..3).map(|i| format!("v{i}\n")).collect::<String>()).unwrap();
        std::fs::create_dir_all(d.path().join("images")).unwrap();
        let l = Layout::resolve(d.path(), &DataConfig::default()).unwrap();
        let folds = write_folds(&l, 3, 42, &d.path().join("cv")).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>();
        let mut all_val = vec![];
        for (t, v) in &folds {
            let (t, v) = (read(t), read(v));
            assert_eq!(t.len() + v.len(), 10);
            assert!(v.iter().all(|x| !t.contains(x)));
            all_val.extend(v);
        }
        all_val.sort();
        assert_eq!(all_val.len(), 10, "every entry validates exactly once");
        assert_eq!(write_folds(&l, 3, 42, &d.path().join("cv2")).unwrap().len(), 3);
        assert_eq!(read(&folds[0].1), read(&d.path().join("cv2/fold-1/val.jsonl")), "deterministic");
    }
}
