//! The prepare pipeline: ODVG JSONL + images + a `tokenizer.json` -> one safetensors file per split
//! (CONTRACT.md, "`prepare`"), and `prepare_report.json`.
//!
//! Like the reference's datasets: images are decoded in any mode, converted to RGB (alpha dropped, as
//! PIL's `convert("RGB")`), resized to SxS (bilinear, no augmentation); captions and phrases are tokenized
//! with special tokens, truncated to the profile's lengths and 0-padded. Boxes are normalised by the
//! annotated width/height (the decoded size when absent), as `bbox_to_heatmap`. Unlike the reference,
//! which silently substitutes a black image, a missing or corrupt image drops its entry and is named in
//! the report.

use crate::data::VOCAB_SIZE_KEY;
use crate::odvg::{self, Entry};
use crate::profile::Profile;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokenizers::Tokenizer;

/// The splits `prepare` looks for, as `DIR/<split>.jsonl`.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// What `prepare` did with one split.
#[derive(Debug, Serialize, Clone, Default)]
pub struct SplitReport {
    /// Entries kept (rows of `images`).
    pub kept: u64,
    /// Regions kept (rows of `snippet_ids`).
    pub regions: u64,
    /// Reason -> entries skipped.
    pub skipped: BTreeMap<String, u64>,
    /// File names of missing or corrupt images.
    pub bad_images: Vec<String>,
}

/// `prepare_report.json`.
#[derive(Debug, Serialize, Clone)]
pub struct Report {
    /// The profile's name.
    pub profile: String,
    /// Side S of the stored images.
    pub image_size: i64,
    /// Caption length Lc.
    pub caption_len: i64,
    /// Snippet length Ls.
    pub snippet_len: i64,
    /// Vocabulary size of the tokenizer (also stored in each split).
    pub vocab_size: i64,
    /// Split name -> report, for each split present.
    pub splits: BTreeMap<String, SplitReport>,
}

/// One tensor to write: name, safetensors dtype, shape, little-endian bytes.
pub struct RawTensor {
    /// Tensor name.
    pub name: String,
    /// `U8`, `I64`, `F32`...
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Data, little-endian, row-major.
    pub data: Vec<u8>,
}

impl RawTensor {
    fn u8(name: &str, shape: Vec<usize>, data: Vec<u8>) -> RawTensor {
        RawTensor { name: name.into(), dtype: "U8", shape, data }
    }
    fn i64(name: &str, shape: Vec<usize>, v: &[i64]) -> RawTensor {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        RawTensor { name: name.into(), dtype: "I64", shape, data }
    }
    fn f32(name: &str, shape: Vec<usize>, v: &[f32]) -> RawTensor {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        RawTensor { name: name.into(), dtype: "F32", shape, data }
    }
}

/// Writes tensors as a safetensors file without copying them into libtorch first
/// (a gpu-profile split holds ~1.3 GB of images).
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    for t in tensors {
        w.write_all(&t.data)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Why an image could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadImage {
    Missing,
    Corrupt,
    BadName,
}

impl BadImage {
    fn reason(self) -> &'static str {
        match self {
            BadImage::Missing => "missing_image",
            BadImage::Corrupt => "corrupt_image",
            BadImage::BadName => "bad_filename",
        }
    }
}

/// A decoded image: CHW u8 bytes of side `size`, and the decoded width and height.
type Decoded = (Vec<u8>, u32, u32);

/// Decodes any image the `png`/`jpeg` decoders read, as RGB resized to `size` x `size`, CHW order.
pub fn load_image(path: &Path, size: u32) -> Result<Decoded, String> {
    let decode = || -> Result<Decoded, String> {
        let reader = image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let img = reader.decode().map_err(|e| e.to_string())?;
        let (w, h) = (img.width(), img.height());
        let rgb = img.to_rgb8();
        let small = image::imageops::resize(&rgb, size, size, image::imageops::FilterType::Triangle);
        let plane = (size * size) as usize;
        let mut chw = vec![0u8; 3 * plane];
        for (i, p) in small.pixels().enumerate() {
            chw[i] = p.0[0];
            chw[plane + i] = p.0[1];
            chw[2 * plane + i] = p.0[2];
        }
        Ok((chw, w, h))
    };
    // A decoder bug must cost one image, never the whole prepare.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .unwrap_or_else(|_| Err("the decoder panicked".into()))
}

fn image_path(images_dir: &Path, filename: &str) -> Result<PathBuf, BadImage> {
    let rel = Path::new(filename);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(BadImage::BadName);
    }
    Ok(images_dir.join(rel))
}

fn decode_all(images_dir: &Path, entries: &[Entry], size: u32) -> Vec<Result<Decoded, BadImage>> {
    let workers =
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(entries.len().max(1));
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<Decoded, BadImage>>> = (0..entries.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<&mut Option<Result<Decoded, BadImage>>>> =
        results.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= entries.len() {
                    break;
                }
                let r = image_path(images_dir, &entries[i].filename).and_then(|p| {
                    if !p.is_file() {
                        return Err(BadImage::Missing);
                    }
                    load_image(&p, size).map_err(|_| BadImage::Corrupt)
                });
                **slots[i].lock().unwrap() = Some(r);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d.is_multiple_of(1000) {
                    eprintln!("  decoded {d}/{} images", entries.len());
                }
            });
        }
    });
    drop(slots);
    results.into_iter().map(|r| r.expect("every slot is filled")).collect()
}

/// Tokenizes `texts` with special tokens, truncated and 0-padded to `len`: (ids, mask), row-major.
pub fn tokenize(tokenizer: &Tokenizer, texts: &[&str], len: usize) -> Result<(Vec<i64>, Vec<i64>)> {
    let mut tok = tokenizer.clone();
    tok.with_truncation(Some(tokenizers::TruncationParams { max_length: len, ..Default::default() }))
        .map_err(|e| anyhow!("configuring truncation: {e}"))?;
    tok.with_padding(None);
    let encodings = tok.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("tokenizing: {e}"))?;
    let mut ids = vec![0i64; texts.len() * len];
    let mut mask = vec![0i64; texts.len() * len];
    for (row, enc) in encodings.iter().enumerate() {
        for (j, (&id, &m)) in enc.get_ids().iter().zip(enc.get_attention_mask()).take(len).enumerate() {
            ids[row * len + j] = id as i64;
            mask[row * len + j] = m as i64;
        }
    }
    Ok((ids, mask))
}

/// Loads a `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))
}

/// Prepares one split; returns its tensors and report.
pub fn prepare_split(
    jsonl: &Path,
    images_dir: &Path,
    profile: &Profile,
    tokenizer: &Tokenizer,
) -> Result<(Vec<RawTensor>, SplitReport)> {
    let text = std::fs::read_to_string(jsonl).with_context(|| format!("reading {}", jsonl.display()))?;
    let parsed = odvg::parse(&text);
    let mut report = SplitReport { skipped: parsed.skipped, ..Default::default() };
    let size = profile.image_size as usize;
    eprintln!("  {} usable entries; decoding images at {size}x{size}", parsed.entries.len());
    let decoded = decode_all(images_dir, &parsed.entries, size as u32);

    let mut images: Vec<u8> = Vec::new();
    let mut kept: Vec<(&Entry, f64, f64)> = Vec::new();
    for (entry, d) in parsed.entries.iter().zip(decoded) {
        match d {
            Ok((chw, w, h)) => {
                images.extend_from_slice(&chw);
                kept.push((entry, entry.width.unwrap_or(w as f64), entry.height.unwrap_or(h as f64)));
            }
            Err(bad) => {
                *report.skipped.entry(bad.reason().to_string()).or_default() += 1;
                report.bad_images.push(entry.filename.clone());
            }
        }
    }
    let n = kept.len();
    report.kept = n as u64;

    let norm = |b: &[f64; 4], w: f64, h: f64| [b[0] / w, b[1] / h, b[2] / w, b[3] / h].map(|x| x as f32);
    let ki = kept.iter().map(|(e, _, _)| e.regions.len()).max().unwrap_or(1).max(1);
    let mut image_boxes = vec![0f32; n * ki * 4];
    let mut image_nboxes = vec![0i64; n];
    let mut snippet_texts: Vec<&str> = Vec::new();
    let mut snippet_image: Vec<i64> = Vec::new();
    let mut snippet_groups: Vec<Vec<[f32; 4]>> = Vec::new();
    for (i, (e, w, h)) in kept.iter().enumerate() {
        image_nboxes[i] = e.regions.len() as i64;
        let boxes: Vec<[f32; 4]> = e.regions.iter().map(|r| norm(&r.bbox, *w, *h)).collect();
        for (j, b) in boxes.iter().enumerate() {
            image_boxes[(i * ki + j) * 4..(i * ki + j + 1) * 4].copy_from_slice(b);
        }
        let mut by_phrase: HashMap<&str, Vec<[f32; 4]>> = HashMap::new();
        for (r, b) in e.regions.iter().zip(&boxes) {
            by_phrase.entry(r.phrase.as_str()).or_default().push(*b);
        }
        for r in &e.regions {
            snippet_texts.push(&r.phrase);
            snippet_image.push(i as i64);
            snippet_groups.push(by_phrase[r.phrase.as_str()].clone());
        }
    }
    let r = snippet_texts.len();
    report.regions = r as u64;
    let k = snippet_groups.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut snippet_boxes = vec![0f32; r * k * 4];
    let mut snippet_nboxes = vec![0i64; r];
    for (s, group) in snippet_groups.iter().enumerate() {
        snippet_nboxes[s] = group.len() as i64;
        for (j, b) in group.iter().enumerate() {
            snippet_boxes[(s * k + j) * 4..(s * k + j + 1) * 4].copy_from_slice(b);
        }
    }
    let (lc, ls) = (profile.caption_len as usize, profile.snippet_len as usize);
    let captions: Vec<&str> = kept.iter().map(|(e, _, _)| e.caption.as_str()).collect();
    let (caption_ids, caption_mask) = tokenize(tokenizer, &captions, lc)?;
    let (snippet_ids, snippet_mask) = tokenize(tokenizer, &snippet_texts, ls)?;
    let vocab = tokenizer.get_vocab_size(true) as i64;

    let tensors = vec![
        RawTensor::u8("images", vec![n, 3, size, size], images),
        RawTensor::i64("caption_ids", vec![n, lc], &caption_ids),
        RawTensor::i64("caption_mask", vec![n, lc], &caption_mask),
        RawTensor::i64("snippet_ids", vec![r, ls], &snippet_ids),
        RawTensor::i64("snippet_mask", vec![r, ls], &snippet_mask),
        RawTensor::i64("snippet_image", vec![r], &snippet_image),
        RawTensor::f32("snippet_boxes", vec![r, k, 4], &snippet_boxes),
        RawTensor::i64("snippet_nboxes", vec![r], &snippet_nboxes),
        RawTensor::f32("image_boxes", vec![n, ki, 4], &image_boxes),
        RawTensor::i64("image_nboxes", vec![n], &image_nboxes),
        RawTensor::i64(VOCAB_SIZE_KEY, vec![1], &[vocab]),
    ];
    Ok((tensors, report))
}

/// The splits of the standard layout present in `dataset` (`DIR/<split>.jsonl`), with `DIR/images`.
pub fn standard_layout(dataset: &Path) -> (Vec<(String, PathBuf)>, PathBuf) {
    let splits = SPLITS
        .iter()
        .map(|s| (s.to_string(), dataset.join(format!("{s}.jsonl"))))
        .filter(|(s, p)| {
            let present = p.is_file();
            if !present {
                eprintln!("{s}: no {}, skipped", p.display());
            }
            present
        })
        .collect();
    (splits, dataset.join("images"))
}

/// Runs `prepare`: every (split, JSONL) of `splits` with images from `images_dir`, then
/// `prepare_report.json`. Progress goes to stderr.
pub fn run(
    splits: &[(String, PathBuf)],
    images_dir: &Path,
    profile: &Profile,
    tokenizer_path: &Path,
    out: &Path,
) -> Result<Report> {
    let tokenizer = load_tokenizer(tokenizer_path)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = Report {
        profile: profile.name.to_string(),
        image_size: profile.image_size,
        caption_len: profile.caption_len,
        snippet_len: profile.snippet_len,
        vocab_size: tokenizer.get_vocab_size(true) as i64,
        splits: BTreeMap::new(),
    };
    for (split, jsonl) in splits {
        eprintln!("{split}: reading {}", jsonl.display());
        let (tensors, r) = prepare_split(jsonl, images_dir, profile, &tokenizer)?;
        let path = out.join(format!("{split}.safetensors"));
        write_safetensors(&path, &tensors)?;
        eprintln!(
            "{split}: kept {} images, {} regions; skipped {:?}; wrote {}",
            r.kept,
            r.regions,
            r.skipped,
            path.display()
        );
        report.splits.insert(split.clone(), r);
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out.join("prepare_report.json"), json + "\n").context("writing prepare_report.json")?;
    Ok(report)
}
