//! The built-in synthetic grounded dataset.
//!
//! Generates a small visual-grounding dataset in the ODVG JSONL format used by Ukiyo-eVG, so
//! the autoresearch loop has something real to train and score on without any download.
//!
//! Layout of an output directory `OUT`:
//!
//! * `OUT/train.jsonl`, `OUT/val.jsonl`, `OUT/test.jsonl`: one JSON object per line,
//!   `{"filename": "train_000123.png", "height": H, "width": W, "grounding": {"caption": "...",
//!   "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "..."}]}}`. Boxes are absolute pixel
//!   coordinates, `x1`/`y1` inclusive and `x2`/`y2` exclusive (so `x2 - x1` is the width), tight
//!   around the drawn pixels of the shape the phrase names.
//! * `OUT/images/<filename>`: the RGB PNG images (`filename` already ends in `.png`).
//! * `OUT/synth.json`: the generator version, the [`SynthSpec`] used, the per-split counts and a
//!   SHA-256 content hash over every JSONL line file and image. It is written last, so a
//!   directory without it is incomplete.
//!
//! Each image (96–192 px on each side, independently, so most are not square) shows 2–4
//! upright shapes (circle, square, triangle, diamond, star, cross, ring) in one of eight
//! colours, "small" (18–26 % of the short side) or "large" (34–48 %), on a plain, gradient or
//! blocky-noise background drawn from a muted palette far from every shape colour. Shapes
//! never overlap (their boxes are separated by a gap), and no two shapes in an image share both
//! colour and kind, so every phrase names exactly one region. The caption chains the shapes in
//! a random order: `"a large red circle left of a small blue square, a green star below it"`:
//! the first clause relates the first shape to the second, each later clause relates a new shape
//! to the one named just before it ("it"). The relation is read off the picture: the axis along
//! which the two boxes are separated by the larger gap. The size word is sometimes left out.
//!
//! Everything is drawn from one ChaCha stream seeded by [`SynthSpec::seed`] (scene layout,
//! sequentially, train then val then test), and per-image noise comes from a hash of a per-image
//! seed, so generation is deterministic and byte-identical across runs while the rasterising and
//! PNG encoding run in parallel. Captions are unique across all three splits (a scene whose
//! caption was already used is redrawn), which the scorer relies on.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bump whenever the generated content changes for the same spec: `ensure` then regenerates.
pub const SYNTH_VERSION: u32 = 1;

/// The split names, in generation order, matching [`SynthSummary::counts`].
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// The sizes `synth --size` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// [`SynthSpec::demo`].
    Demo,
    /// [`SynthSpec::tests`] (smaller).
    Tests,
}

/// What to generate: the number of images per split and the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSpec {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub seed: u64,
}

impl SynthSpec {
    /// The demo dataset: 3000 / 600 / 600 images (random-retrieval mean rank on val ≈ 300).
    pub fn demo() -> Self {
        SynthSpec { train: 3000, val: 600, test: 600, seed: 20240601 }
    }

    /// A smaller dataset for tests: 800 / 200 / 200 images.
    pub fn tests() -> Self {
        SynthSpec { train: 800, val: 200, test: 200, seed: 7 }
    }

    fn counts(&self) -> [usize; 3] {
        [self.train, self.val, self.test]
    }
}

/// The result of [`generate`] or [`ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// The dataset directory.
    pub dir: PathBuf,
    /// Images in train, val, test.
    pub counts: [usize; 3],
    /// Hex SHA-256 over the JSONL files and all images.
    pub hash: String,
}

/// The content of `OUT/synth.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    generator: String,
    version: u32,
    format: String,
    image_dir: String,
    spec: SynthSpec,
    counts: [usize; 3],
    hash: String,
}

// ---------------------------------------------------------------------------------------------
// JSONL records

#[derive(Serialize)]
struct Record<'a> {
    filename: &'a str,
    height: u32,
    width: u32,
    grounding: Grounding<'a>,
}

#[derive(Serialize)]
struct Grounding<'a> {
    caption: &'a str,
    regions: Vec<Region>,
}

#[derive(Serialize)]
struct Region {
    bbox: [u32; 4],
    phrase: String,
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Circle,
    Square,
    Triangle,
    Diamond,
    Star,
    Cross,
    Ring,
}

const KINDS: [Kind; 7] =
    [Kind::Circle, Kind::Square, Kind::Triangle, Kind::Diamond, Kind::Star, Kind::Cross, Kind::Ring];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Circle => "circle",
            Kind::Square => "square",
            Kind::Triangle => "triangle",
            Kind::Diamond => "diamond",
            Kind::Star => "star",
            Kind::Cross => "cross",
            Kind::Ring => "ring",
        }
    }

    /// Whether the point `(u, v)`, in units of the half-size with `v` pointing down, is inside.
    fn contains(self, u: f64, v: f64) -> bool {
        match self {
            Kind::Circle => u * u + v * v <= 1.0,
            Kind::Square => u.abs() <= 0.85 && v.abs() <= 0.85,
            Kind::Triangle => (-1.0..=0.8).contains(&v) && u.abs() <= (v + 1.0) / 1.8,
            Kind::Diamond => u.abs() + v.abs() <= 1.0,
            Kind::Star => in_polygon(&STAR, u, v),
            Kind::Cross => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
            Kind::Ring => {
                let d = u * u + v * v;
                (0.3025..=1.0).contains(&d)
            }
        }
    }
}

/// A five-pointed star (outer radius 1, inner 0.45), first point straight up.
/// Precomputed so that no transcendental function is involved at run time.
const STAR: [(f64, f64); 10] = [
    (0.0, -1.0),
    (0.264_503, -0.364_058),
    (0.951_057, -0.309_017),
    (0.427_975, 0.139_058),
    (0.587_785, 0.809_017),
    (0.0, 0.45),
    (-0.587_785, 0.809_017),
    (-0.427_975, 0.139_058),
    (-0.951_057, -0.309_017),
    (-0.264_503, -0.364_058),
];

fn in_polygon(poly: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Shape colours: name and nominal RGB. Drawn with a per-shape jitter of at most
/// [`COLOUR_JITTER`] per channel.
const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [215, 35, 35]),
    ("green", [35, 160, 55]),
    ("blue", [35, 75, 215]),
    ("yellow", [240, 215, 35]),
    ("purple", [135, 50, 175]),
    ("orange", [245, 135, 25]),
    ("white", [242, 242, 242]),
    ("black", [18, 18, 18]),
];
const COLOUR_JITTER: i32 = 10;

/// Muted background colours, each at least 50 per channel (L∞) away from every shape colour.
/// Backgrounds deviate from these by at most [`BG_DEVIATION`] per channel.
const BACKGROUNDS: [[u8; 3]; 6] =
    [[128, 128, 128], [85, 95, 110], [190, 175, 140], [120, 140, 110], [60, 120, 125], [150, 115, 130]];
const BG_DEVIATION: i32 = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    fn words(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenes

#[derive(Debug, Clone, Copy)]
enum Background {
    Plain,
    /// Linear brightness ramp from -BG_DEVIATION to +BG_DEVIATION, horizontal or vertical.
    Gradient {
        vertical: bool,
        flip: bool,
    },
    /// Blocks of `cell` px with a brightness offset of up to ±18, plus ±6 per-pixel noise.
    Noise {
        cell: u32,
    },
}

#[derive(Debug, Clone)]
struct Shape {
    kind: Kind,
    colour: usize,
    large: bool,
    say_size: bool,
    cx: f64,
    cy: f64,
    r: f64,
    rgb: [u8; 3],
    /// Tight box of the drawn pixels, xyxy with exclusive max.
    bbox: [u32; 4],
}

impl Shape {
    fn phrase(&self) -> String {
        let colour = COLOURS[self.colour].0;
        let noun = self.kind.name();
        if self.say_size {
            let size = if self.large { "large" } else { "small" };
            format!("a {size} {colour} {noun}")
        } else {
            let article = if colour.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            format!("{article} {colour} {noun}")
        }
    }

    /// The pixel range the shape may touch: `[x0, y0, x1, y1)`, clipped to the image.
    fn nominal(&self, w: u32, h: u32) -> [u32; 4] {
        let x0 = (self.cx - self.r).floor().max(0.0) as u32;
        let y0 = (self.cy - self.r).floor().max(0.0) as u32;
        let x1 = ((self.cx + self.r).ceil() as u32 + 1).min(w);
        let y1 = ((self.cy + self.r).ceil() as u32 + 1).min(h);
        [x0, y0, x1, y1]
    }

    fn covers(&self, x: u32, y: u32) -> bool {
        let u = (x as f64 + 0.5 - self.cx) / self.r;
        let v = (y as f64 + 0.5 - self.cy) / self.r;
        self.kind.contains(u, v)
    }

    fn tight_box(&self, w: u32, h: u32) -> Option<[u32; 4]> {
        let [x0, y0, x1, y1] = self.nominal(w, h);
        let mut b: Option<[u32; 4]> = None;
        for y in y0..y1 {
            for x in x0..x1 {
                if self.covers(x, y) {
                    let bb = b.get_or_insert([x, y, x + 1, y + 1]);
                    bb[0] = bb[0].min(x);
                    bb[1] = bb[1].min(y);
                    bb[2] = bb[2].max(x + 1);
                    bb[3] = bb[3].max(y + 1);
                }
            }
        }
        b
    }
}

#[derive(Debug, Clone)]
struct Scene {
    width: u32,
    height: u32,
    bg: [u8; 3],
    background: Background,
    noise_seed: u64,
    /// In caption order.
    shapes: Vec<Shape>,
    relations: Vec<Relation>,
}

impl Scene {
    fn caption(&self) -> String {
        let mut out = String::new();
        for (i, rel) in self.relations.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{} {} {}", self.shapes[0].phrase(), rel.words(), self.shapes[1].phrase()));
            } else {
                out.push_str(&format!(", {} {} it", self.shapes[i + 1].phrase(), rel.words()));
            }
        }
        out
    }
}

/// The relation of box `a` to box `b` (both xyxy, disjoint): the axis with the larger gap.
fn relation(a: &[u32; 4], b: &[u32; 4]) -> Option<Relation> {
    let gap = |lo: u32, hi: u32| hi as i64 - lo as i64;
    let candidates = [
        (gap(a[2], b[0]), Relation::LeftOf),
        (gap(b[2], a[0]), Relation::RightOf),
        (gap(a[3], b[1]), Relation::Above),
        (gap(b[3], a[1]), Relation::Below),
    ];
    let (best, rel) = candidates.iter().copied().max_by_key(|(g, _)| *g).expect("four candidates");
    (best >= 2).then_some(rel)
}

fn boxes_apart(a: &[u32; 4], b: &[u32; 4], gap: u32) -> bool {
    a[2] + gap <= b[0] || b[2] + gap <= a[0] || a[3] + gap <= b[1] || b[3] + gap <= a[1]
}

/// Draws one scene, or `None` if the shapes could not be placed (the caller redraws).
fn draw_scene(rng: &mut ChaCha12Rng) -> Option<Scene> {
    let width: u32 = rng.random_range(96..=192);
    let height: u32 = rng.random_range(96..=192);
    let short = width.min(height) as f64;
    let gap = ((short * 0.03).round() as u32).max(2);
    let n: usize = rng.random_range(2..=4);

    let mut shapes: Vec<Shape> = Vec::with_capacity(n);
    let mut nominals: Vec<[u32; 4]> = Vec::with_capacity(n);
    for _ in 0..n {
        // Colour and kind, distinct as a pair within the image.
        let (kind, colour) = loop {
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            let colour = rng.random_range(0..COLOURS.len());
            if !shapes.iter().any(|s| s.kind == kind && s.colour == colour) {
                break (kind, colour);
            }
        };
        let large = rng.random_bool(0.4);
        let side = if large { rng.random_range(0.34..0.48) } else { rng.random_range(0.18..0.26) } * short;
        let r = side / 2.0;
        let say_size = rng.random_bool(0.7);
        let base = COLOURS[colour].1;
        let mut rgb = [0u8; 3];
        for (c, b) in rgb.iter_mut().zip(base) {
            *c = (b as i32 + rng.random_range(-COLOUR_JITTER..=COLOUR_JITTER)).clamp(0, 255) as u8;
        }
        let mut placed = None;
        for _ in 0..60 {
            let cx = rng.random_range(r + 1.0..width as f64 - r - 1.0);
            let cy = rng.random_range(r + 1.0..height as f64 - r - 1.0);
            let shape = Shape { kind, colour, large, say_size, cx, cy, r, rgb, bbox: [0; 4] };
            let nom = shape.nominal(width, height);
            if nominals.iter().all(|o| boxes_apart(o, &nom, gap)) {
                placed = Some((shape, nom));
                break;
            }
        }
        let (mut shape, nom) = placed?;
        shape.bbox = shape.tight_box(width, height)?;
        shapes.push(shape);
        nominals.push(nom);
    }

    // Clause 0 reads "shape0 REL shape1"; clause i > 0 reads "shape(i+1) REL it (shape i)".
    let relations = (0..n - 1)
        .map(|i| {
            let (a, b) = if i == 0 { (0, 1) } else { (i + 1, i) };
            relation(&shapes[a].bbox, &shapes[b].bbox)
        })
        .collect::<Option<Vec<_>>>()?;

    let bg = BACKGROUNDS[rng.random_range(0..BACKGROUNDS.len())];
    let background = match rng.random_range(0..10) {
        0..4 => Background::Plain,
        4..7 => Background::Gradient { vertical: rng.random_bool(0.5), flip: rng.random_bool(0.5) },
        _ => Background::Noise { cell: rng.random_range(6..=20) },
    };
    Some(Scene { width, height, bg, background, noise_seed: rng.random(), shapes, relations })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic value in `-amp..=amp` for the given seed and coordinates.
fn noise(seed: u64, x: u32, y: u32, amp: i32) -> i32 {
    let h = splitmix(seed ^ ((x as u64) << 32 | y as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    (h % (2 * amp as u64 + 1)) as i32 - amp
}

fn render(scene: &Scene) -> RgbImage {
    let (w, h) = (scene.width, scene.height);
    let shade = |d: i32| -> [u8; 3] {
        let d = d.clamp(-BG_DEVIATION, BG_DEVIATION);
        scene.bg.map(|v| (v as i32 + d).clamp(0, 255) as u8)
    };
    let ramp = |p: u32, len: u32, flip: bool| -> i32 {
        let t = p as f64 / (len - 1).max(1) as f64;
        let t = if flip { 1.0 - t } else { t };
        ((t * 2.0 - 1.0) * BG_DEVIATION as f64).round() as i32
    };
    let stride = w as usize * 3;
    let mut raw = Vec::with_capacity(stride * h as usize);
    match scene.background {
        Background::Plain => raw = shade(0).repeat(w as usize * h as usize),
        Background::Gradient { vertical: true, flip } => {
            for y in 0..h {
                raw.extend_from_slice(&shade(ramp(y, h, flip)).repeat(w as usize));
            }
        }
        Background::Gradient { vertical: false, flip } => {
            let row: Vec<u8> = (0..w).flat_map(|x| shade(ramp(x, w, flip))).collect();
            for _ in 0..h {
                raw.extend_from_slice(&row);
            }
        }
        Background::Noise { cell } => {
            let fine_seed = scene.noise_seed.rotate_left(17);
            raw.resize(stride * h as usize, 0);
            for (y, row) in raw.chunks_exact_mut(stride).enumerate() {
                let y = y as u32;
                let mut block = (u32::MAX, 0);
                for (x, px) in row.chunks_exact_mut(3).enumerate() {
                    let x = x as u32;
                    if block.0 != x / cell {
                        block = (x / cell, noise(scene.noise_seed, x / cell, y / cell, 18));
                    }
                    px.copy_from_slice(&shade(block.1 + noise(fine_seed, x, y, 6)));
                }
            }
        }
    }
    for shape in &scene.shapes {
        let [x0, y0, x1, y1] = shape.bbox;
        for y in y0..y1 {
            let row = (y * w) as usize * 3;
            for x in x0..x1 {
                if shape.covers(x, y) {
                    let i = row + x as usize * 3;
                    raw[i..i + 3].copy_from_slice(&shape.rgb);
                }
            }
        }
    }
    RgbImage::from_raw(w, h, raw).expect("buffer size matches")
}

fn encode_png(img: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(img.as_raw().len() / 2);
    PngEncoder::new_with_quality(&mut buf, CompressionType::Fast, FilterType::Sub)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .context("encoding PNG")?;
    Ok(buf)
}

fn file_name(split: &str, index: usize) -> String {
    format!("{split}_{index:06}.png")
}

fn jsonl_line(scene: &Scene, filename: &str, caption: &str) -> anyhow::Result<String> {
    let record = Record {
        filename,
        height: scene.height,
        width: scene.width,
        grounding: Grounding {
            caption,
            regions: scene.shapes.iter().map(|s| Region { bbox: s.bbox, phrase: s.phrase() }).collect(),
        },
    };
    Ok(serde_json::to_string(&record)?)
}

/// Renders and writes the images in parallel; returns each image's SHA-256, in order.
fn write_images(dir: &Path, jobs: &[(String, &Scene)]) -> anyhow::Result<Vec<[u8; 32]>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 16);
    let chunk = jobs.len().div_ceil(threads).max(1);
    let results: Vec<anyhow::Result<Vec<[u8; 32]>>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(name, scene)| {
                            let bytes = encode_png(&render(scene))?;
                            let path = dir.join(name);
                            fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                            Ok(Sha256::digest(&bytes).into())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("image writer panicked"))).collect()
    });
    let mut digests = Vec::with_capacity(jobs.len());
    for r in results {
        digests.extend(r?);
    }
    Ok(digests)
}

/// Generates the dataset into `out`, which must not exist or be an empty directory.
pub fn generate(out: &Path, spec: &SynthSpec) -> anyhow::Result<SynthSummary> {
    if out.exists() {
        let mut entries = fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
        if entries.next().is_some() {
            bail!("synth output directory {} is not empty (use ensure to replace it)", out.display());
        }
    }
    let images = out.join("images");
    fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;

    // Scene layout: sequential, one stream, globally unique captions.
    let mut rng = ChaCha12Rng::seed_from_u64(spec.seed);
    let mut seen: HashSet<String> = HashSet::new();
    let mut splits: Vec<Vec<(Scene, String)>> = Vec::with_capacity(3);
    for (split, count) in SPLITS.iter().zip(spec.counts()) {
        let mut scenes = Vec::with_capacity(count);
        let mut attempts = 0usize;
        while scenes.len() < count {
            attempts += 1;
            if attempts > 1000 + count * 1000 {
                bail!("could not draw {count} scenes with unique captions for split {split}");
            }
            let Some(scene) = draw_scene(&mut rng) else {
                continue;
            };
            let caption = scene.caption();
            if seen.insert(caption.clone()) {
                scenes.push((scene, caption));
            }
        }
        splits.push(scenes);
    }

    let mut hasher = Sha256::new();
    hasher.update(format!("autoresearch-synth v{SYNTH_VERSION}\n").as_bytes());
    for (split, scenes) in SPLITS.iter().zip(&splits) {
        let mut jsonl = String::new();
        let mut jobs = Vec::with_capacity(scenes.len());
        for (i, (scene, caption)) in scenes.iter().enumerate() {
            let name = file_name(split, i);
            jsonl.push_str(&jsonl_line(scene, &name, caption)?);
            jsonl.push('\n');
            jobs.push((name, scene));
        }
        let path = out.join(format!("{split}.jsonl"));
        fs::write(&path, jsonl.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        hasher.update(format!("{split}.jsonl {}\n", jsonl.len()).as_bytes());
        hasher.update(jsonl.as_bytes());
        let digests = write_images(&images, &jobs)?;
        for ((name, _), digest) in jobs.iter().zip(digests) {
            hasher.update(name.as_bytes());
            hasher.update(digest);
        }
    }
    let hash = hex::encode(hasher.finalize());
    let counts = spec.counts();
    let manifest = Manifest {
        generator: "autoresearch-mcp synth".into(),
        version: SYNTH_VERSION,
        format: "odvg".into(),
        image_dir: "images".into(),
        spec: spec.clone(),
        counts,
        hash: hash.clone(),
    };
    let path = out.join("synth.json");
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    let mut f = fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(SynthSummary { dir: out.to_path_buf(), counts, hash })
}

/// The summary of an existing, complete dataset at `out` generated from `spec` by this version
/// of the generator, or `None`.
fn existing(out: &Path, spec: &SynthSpec) -> Option<SynthSummary> {
    let text = fs::read_to_string(out.join("synth.json")).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    if m.version != SYNTH_VERSION || m.spec != *spec || m.counts != spec.counts() {
        return None;
    }
    for (split, count) in SPLITS.iter().zip(m.counts) {
        let jsonl = fs::read_to_string(out.join(format!("{split}.jsonl"))).ok()?;
        if jsonl.lines().count() != count {
            return None;
        }
        for i in 0..count {
            if !out.join("images").join(file_name(split, i)).is_file() {
                return None;
            }
        }
    }
    Some(SynthSummary { dir: out.to_path_buf(), counts: m.counts, hash: m.hash })
}

fn unique_sibling(out: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    let name =
        out.file_name().with_context(|| format!("{} has no file name", out.display()))?.to_string_lossy().into_owned();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{name}.{tag}-{}-{nanos}", std::process::id())))
}

/// Reuses `out` if its `synth.json` matches `spec` (and this generator version) and all files are
/// present; otherwise generates into a temporary sibling directory and renames it into place,
/// replacing whatever was at `out`.
pub fn ensure(out: &Path, spec: &SynthSpec) -> anyhow::Result<SynthSummary> {
    if let Some(summary) = existing(out, spec) {
        return Ok(summary);
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = unique_sibling(out, "tmp")?;
    let summary = match generate(&tmp, spec) {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // Another process may have finished the same work meanwhile.
    if let Some(done) = existing(out, spec) {
        let _ = fs::remove_dir_all(&tmp);
        return Ok(done);
    }
    let old = if out.symlink_metadata().is_ok() {
        let old = unique_sibling(out, "old")?;
        fs::rename(out, &old).with_context(|| format!("moving stale {} aside", out.display()))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = fs::rename(&tmp, out) {
        if let Some(done) = existing(out, spec) {
            let _ = fs::remove_dir_all(&tmp);
            return Ok(done);
        }
        let _ = fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("renaming dataset into {}", out.display()));
    }
    if let Some(old) = old {
        if old.is_dir() {
            let _ = fs::remove_dir_all(&old);
        } else {
            let _ = fs::remove_file(&old);
        }
    }
    Ok(SynthSummary { dir: out.to_path_buf(), ..summary })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn small() -> SynthSpec {
        SynthSpec { train: 120, val: 40, test: 40, seed: 11 }
    }

    fn read_lines(dir: &Path, split: &str) -> Vec<Value> {
        fs::read_to_string(dir.join(format!("{split}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn palettes_are_separated() {
        for bg in BACKGROUNDS {
            for (name, c) in COLOURS {
                let d = (0..3).map(|i| (bg[i] as i32 - c[i] as i32).abs()).max().unwrap();
                assert!(d >= 50, "background {bg:?} too close to {name}");
            }
        }
        for (i, (a, ca)) in COLOURS.iter().enumerate() {
            for (b, cb) in &COLOURS[i + 1..] {
                let d = (0..3).map(|k| (ca[k] as i32 - cb[k] as i32).abs()).max().unwrap();
                assert!(d >= 60, "{a} too close to {b}");
            }
        }
    }

    #[test]
    fn deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = generate(&a.path().join("d"), &small()).unwrap();
        let sb = generate(&b.path().join("d"), &small()).unwrap();
        assert_eq!(sa.hash, sb.hash);
        assert_eq!(sa.counts, [120, 40, 40]);
        for f in ["train.jsonl", "val.jsonl", "test.jsonl", "synth.json"] {
            assert_eq!(
                fs::read(a.path().join("d").join(f)).unwrap(),
                fs::read(b.path().join("d").join(f)).unwrap(),
                "{f}"
            );
        }
        for f in ["train_000000.png", "val_000017.png", "test_000039.png"] {
            assert_eq!(
                fs::read(a.path().join("d/images").join(f)).unwrap(),
                fs::read(b.path().join("d/images").join(f)).unwrap(),
                "{f}"
            );
        }
        let other = SynthSpec { seed: 12, ..small() };
        let sc = generate(&b.path().join("e"), &other).unwrap();
        assert_ne!(sa.hash, sc.hash);
    }

    #[test]
    fn captions_unique_and_phrases_grounded() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        let spec = SynthSpec::tests();
        let start = std::time::Instant::now();
        generate(&dir, &spec).unwrap();
        eprintln!("tests spec generated in {:?}", start.elapsed());
        let mut seen = HashSet::new();
        for (split, count) in SPLITS.iter().zip(spec.counts()) {
            let lines = read_lines(&dir, split);
            assert_eq!(lines.len(), count);
            for line in lines {
                let caption = line["grounding"]["caption"].as_str().unwrap().to_string();
                let regions = line["grounding"]["regions"].as_array().unwrap();
                assert!((2..=4).contains(&regions.len()));
                let mut phrases = HashSet::new();
                for r in regions {
                    let p = r["phrase"].as_str().unwrap();
                    assert_eq!(caption.matches(p).count(), 1, "{p:?} in {caption:?}");
                    assert!(phrases.insert(p.to_string()));
                }
                assert!(seen.insert(caption.clone()), "duplicate caption {caption:?}");
            }
        }
    }

    #[test]
    fn jsonl_structure_and_tight_boxes() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        generate(&dir, &small()).unwrap();
        let colour_of =
            |phrase: &str| -> [u8; 3] { COLOURS.iter().find(|(n, _)| phrase.split(' ').any(|w| w == *n)).unwrap().1 };
        let mut non_square = 0;
        for split in SPLITS {
            for (i, line) in read_lines(&dir, split).into_iter().enumerate() {
                let obj = line.as_object().unwrap();
                let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
                keys.sort();
                assert_eq!(keys, ["filename", "grounding", "height", "width"]);
                let filename = obj["filename"].as_str().unwrap();
                assert_eq!(filename, file_name(split, i));
                let (w, h) = (obj["width"].as_u64().unwrap() as u32, obj["height"].as_u64().unwrap() as u32);
                if w != h {
                    non_square += 1;
                }
                let img = image::open(dir.join("images").join(filename)).unwrap().to_rgb8();
                assert_eq!(img.dimensions(), (w, h));
                let g = obj["grounding"].as_object().unwrap();
                let mut gkeys: Vec<_> = g.keys().map(String::as_str).collect();
                gkeys.sort();
                assert_eq!(gkeys, ["caption", "regions"]);
                for r in g["regions"].as_array().unwrap() {
                    assert_eq!(r.as_object().unwrap().len(), 2);
                    let phrase = r["phrase"].as_str().unwrap();
                    let b: Vec<u32> =
                        r["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
                    assert_eq!(b.len(), 4);
                    assert!(b[0] < b[2] && b[2] <= w && b[1] < b[3] && b[3] <= h, "{b:?}");
                    let short = w.min(h) as f64;
                    assert!(
                        (b[2] - b[0]).max(b[3] - b[1]) as f64 >= 0.15 * short,
                        "{phrase} too small: {b:?} in {w}x{h}"
                    );
                    let want = colour_of(phrase);
                    let is_shape = |x: u32, y: u32| {
                        let p = img.get_pixel(x, y).0;
                        (0..3).all(|k| (p[k] as i32 - want[k] as i32).abs() <= COLOUR_JITTER)
                    };
                    // Every edge row/column of the box touches the shape: the box is tight.
                    assert!((b[0]..b[2]).any(|x| is_shape(x, b[1])), "{phrase} top");
                    assert!((b[0]..b[2]).any(|x| is_shape(x, b[3] - 1)), "{phrase} bottom");
                    assert!((b[1]..b[3]).any(|y| is_shape(b[0], y)), "{phrase} left");
                    assert!((b[1]..b[3]).any(|y| is_shape(b[2] - 1, y)), "{phrase} right");
                }
            }
        }
        assert!(non_square > 100);
    }

    #[test]
    fn relations_match_boxes() {
        let mut rng = ChaCha12Rng::seed_from_u64(3);
        let mut drawn = 0;
        while drawn < 300 {
            let Some(scene) = draw_scene(&mut rng) else {
                continue;
            };
            drawn += 1;
            let b = |i: usize| scene.shapes[i].bbox;
            for (i, rel) in scene.relations.iter().enumerate() {
                // Clause 0: shape 0 REL shape 1; clause i: shape i+1 REL shape i.
                let (a, o) = if i == 0 { (b(0), b(1)) } else { (b(i + 1), b(i)) };
                let ok = match rel {
                    Relation::LeftOf => a[2] < o[0],
                    Relation::RightOf => o[2] < a[0],
                    Relation::Above => a[3] < o[1],
                    Relation::Below => o[3] < a[1],
                };
                assert!(ok, "{rel:?} {a:?} {o:?}");
            }
            for i in 0..scene.shapes.len() {
                for j in i + 1..scene.shapes.len() {
                    assert!(boxes_apart(&b(i), &b(j), 1));
                }
            }
        }
    }

    #[test]
    fn ensure_reuses_and_regenerates() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data/synth");
        let spec = SynthSpec { train: 30, val: 10, test: 10, seed: 5 };
        let first = ensure(&dir, &spec).unwrap();
        assert_eq!(first.dir, dir);
        assert_eq!(first.counts, [30, 10, 10]);
        let marker = dir.join("marker");
        fs::write(&marker, "x").unwrap();
        let again = ensure(&dir, &spec).unwrap();
        assert_eq!(again, first);
        assert!(marker.exists(), "reused directory was replaced");

        // A missing image forces regeneration.
        fs::remove_file(dir.join("images/val_000003.png")).unwrap();
        let repaired = ensure(&dir, &spec).unwrap();
        assert_eq!(repaired.hash, first.hash);
        assert!(!marker.exists());
        assert!(dir.join("images/val_000003.png").is_file());

        // A spec change regenerates.
        fs::write(&marker, "x").unwrap();
        let spec2 = SynthSpec { val: 12, ..spec };
        let second = ensure(&dir, &spec2).unwrap();
        assert_eq!(second.counts, [30, 12, 10]);
        assert_ne!(second.hash, first.hash);
        assert!(!marker.exists());
        assert_eq!(read_lines(&dir, "val").len(), 12);
        // No temporary or stale siblings are left behind.
        let siblings: Vec<_> = fs::read_dir(t.path().join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(siblings, vec![std::ffi::OsString::from("synth")]);
        // generate refuses a non-empty directory.
        assert!(generate(&dir, &spec).is_err());
    }
}
