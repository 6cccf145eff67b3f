//! Scoring, done by the server outside any sandbox: the trainer only hands over two embedding files
//! in shuffled row orders it cannot undo; the pairing lives here. Metrics follow the reference's
//! evaluation (0-indexed ranks, mean rank = (mean i→t + mean t→i) / 2), with ties counted against the
//! model: rank_i = #{j ≠ i : sim(i, j) ≥ sim(i, i)}, so constant embeddings rank last, not first.

use std::path::Path;

use anyhow::Result;
use safetensors::{Dtype, SafeTensors};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fsutil::read_capped;

/// Retrieval metrics on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Metrics {
    /// The headline: (mean image→text rank + mean text→image rank) / 2, 0-indexed. Lower is better.
    pub mean_rank: f64,
    pub median_rank: f64,
    pub i2t_mean_rank: f64,
    pub t2i_mean_rank: f64,
    /// Recall@K in percent.
    pub i2t_r1: f64,
    pub i2t_r5: f64,
    pub i2t_r10: f64,
    pub t2i_r1: f64,
    pub t2i_r5: f64,
    pub t2i_r10: f64,
    /// Validation size.
    pub n: usize,
    /// What random retrieval scores on average: (n - 1) / 2.
    pub random_mean_rank: f64,
    /// Each fold's mean rank when the run cross-validates (the other fields are then fold means).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<f64>,
    /// Each seed's mean rank when the run repeats over seeds (the other fields are then seed means).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<f64>,
}

impl Metrics {
    /// The cross-validated metrics of per-fold `folds`: every field the mean over folds, `n` the total,
    /// `folds` each fold's mean rank. One fold is returned as it is.
    pub fn over_folds(folds: &[Metrics]) -> Metrics {
        if folds.len() == 1 {
            return folds[0].clone();
        }
        Metrics {
            n: folds.iter().map(|m| m.n).sum(),
            folds: folds.iter().map(|m| m.mean_rank).collect(),
            ..Metrics::mean_of(folds)
        }
    }

    /// The metrics of one train.rs repeated over seeds on the same data: every field the mean over
    /// seeds, `seeds` each seed's mean rank, `folds` (if any) each fold's mean over seeds.
    pub fn over_seeds(seeds: &[Metrics]) -> Metrics {
        if seeds.len() == 1 {
            return seeds[0].clone();
        }
        let k = seeds.len() as f64;
        let folds = (0..seeds[0].folds.len()).map(|i| seeds.iter().map(|m| m.folds[i]).sum::<f64>() / k).collect();
        Metrics { n: seeds[0].n, folds, seeds: seeds.iter().map(|m| m.mean_rank).collect(), ..Metrics::mean_of(seeds) }
    }

    /// Every field the mean over `all` (n, folds and seeds from the first).
    fn mean_of(all: &[Metrics]) -> Metrics {
        let k = all.len() as f64;
        let mean = |f: fn(&Metrics) -> f64| all.iter().map(f).sum::<f64>() / k;
        Metrics {
            mean_rank: mean(|m| m.mean_rank),
            median_rank: mean(|m| m.median_rank),
            i2t_mean_rank: mean(|m| m.i2t_mean_rank),
            t2i_mean_rank: mean(|m| m.t2i_mean_rank),
            i2t_r1: mean(|m| m.i2t_r1),
            i2t_r5: mean(|m| m.i2t_r5),
            i2t_r10: mean(|m| m.i2t_r10),
            t2i_r1: mean(|m| m.t2i_r1),
            t2i_r5: mean(|m| m.t2i_r5),
            t2i_r10: mean(|m| m.t2i_r10),
            random_mean_rank: mean(|m| m.random_mean_rank),
            n: all[0].n,
            folds: all[0].folds.clone(),
            seeds: all[0].seeds.clone(),
        }
    }

    /// Every independent sample of the mean rank this run holds: one per seed, else the mean rank.
    pub fn samples(&self) -> Vec<f64> {
        if self.seeds.is_empty() { vec![self.mean_rank] } else { self.seeds.clone() }
    }

    /// Whether repeats over seeds gave exactly the same result: train.rs ignores its seed.
    pub fn seed_ignored(&self) -> bool {
        self.seeds.len() > 1 && self.seeds.iter().all(|s| (s - self.seeds[0]).abs() < 1e-9)
    }

    /// The metrics as the agent sees them: mean ranks (folds and seeds too) to two decimals, the
    /// median to one, recalls to one (percent). Exact ranks would be a score oracle: crafted
    /// embeddings could read the private validation pairing off them. The ledger keeps full precision.
    pub fn for_agent(&self) -> Metrics {
        let ranks = |v: &[f64]| v.iter().copied().map(round_rank).collect();
        Metrics {
            mean_rank: round_rank(self.mean_rank),
            median_rank: round_to(self.median_rank, MEDIAN_DECIMALS),
            i2t_mean_rank: round_rank(self.i2t_mean_rank),
            t2i_mean_rank: round_rank(self.t2i_mean_rank),
            i2t_r1: round_recall(self.i2t_r1),
            i2t_r5: round_recall(self.i2t_r5),
            i2t_r10: round_recall(self.i2t_r10),
            t2i_r1: round_recall(self.t2i_r1),
            t2i_r5: round_recall(self.t2i_r5),
            t2i_r10: round_recall(self.t2i_r10),
            n: self.n,
            random_mean_rank: self.random_mean_rank,
            folds: ranks(&self.folds),
            seeds: ranks(&self.seeds),
        }
    }
}

// The agent's resolution: the one rule for every number derived from a score that reaches the agent.

/// Decimals of mean ranks, their deltas and spreads (sd, noise floor) shown to the agent.
pub const RANK_DECIMALS: i32 = 2;
/// Decimals of the median rank (an integer or .5 anyway) and of recalls in percent.
pub const MEDIAN_DECIMALS: i32 = 1;
pub const RECALL_DECIMALS: i32 = 1;

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A mean rank (or a spread of mean ranks) at the agent's resolution.
pub fn round_rank(x: f64) -> f64 {
    round_to(x, RANK_DECIMALS)
}

/// A recall (percent) at the agent's resolution.
pub fn round_recall(x: f64) -> f64 {
    round_to(x, RECALL_DECIMALS)
}

/// `a - b` as the agent sees it: the difference of the rounded values, so that it tells nothing
/// round(a) and round(b) do not already tell.
pub fn agent_delta(a: f64, b: f64) -> f64 {
    round_rank(round_rank(a) - round_rank(b))
}

/// Why a pair of embedding files is not a score.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidEmbeddings {
    #[error("{which} embeddings: {why}")]
    Bad { which: &'static str, why: String },
    #[error("image embeddings are {0}-dimensional but text embeddings are {1}-dimensional")]
    DimMismatch(usize, usize),
}

/// Largest embedding width accepted.
pub const MAX_DIM: usize = 8192;

/// A validated (n, d) f32 matrix, row-major.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub n: usize,
    pub d: usize,
    pub data: Vec<f32>,
}

/// Reads `embeddings` from a safetensors file, checking dtype, shape, finiteness and non-zero rows.
pub fn load_embeddings(path: &Path, which: &'static str, n: usize) -> Result<Embeddings> {
    let cap = (n * MAX_DIM * 4 + (1 << 20)) as u64;
    let bytes = read_capped(path, cap).map_err(|e| InvalidEmbeddings::Bad { which, why: format!("{e:#}") })?;
    Ok(parse_embeddings(&bytes, which, n)?)
}

pub fn parse_embeddings(bytes: &[u8], which: &'static str, n: usize) -> Result<Embeddings, InvalidEmbeddings> {
    let bad = |why: String| InvalidEmbeddings::Bad { which, why };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let t = st.tensor("embeddings").map_err(|_| bad("no tensor named `embeddings`".into()))?;
    if t.dtype() != Dtype::F32 {
        return Err(bad(format!("dtype {:?}, expected F32", t.dtype())));
    }
    let shape = t.shape();
    if shape.len() != 2 || shape[0] != n || shape[1] == 0 || shape[1] > MAX_DIM {
        return Err(bad(format!("shape {shape:?}, expected ({n}, D) with 1 <= D <= {MAX_DIM}")));
    }
    let d = shape[1];
    let data: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let emb = Embeddings { n, d, data };
    emb.check(which)?;
    Ok(emb)
}

impl Embeddings {
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    fn check(&self, which: &'static str) -> Result<(), InvalidEmbeddings> {
        for i in 0..self.n {
            let row = self.row(i);
            if row.iter().any(|x| !x.is_finite()) {
                return Err(InvalidEmbeddings::Bad { which, why: format!("row {i} has a non-finite value") });
            }
            if row.iter().all(|x| *x == 0.0) {
                return Err(InvalidEmbeddings::Bad { which, why: format!("row {i} has zero norm") });
            }
        }
        Ok(())
    }

    /// Rows reordered so that row i is item i of the original split: `order[a]` is the original
    /// index of the item at file row a.
    pub fn unshuffle(&self, order: &[usize]) -> Embeddings {
        let mut data = vec![0f32; self.data.len()];
        for (a, &orig) in order.iter().enumerate() {
            data[orig * self.d..(orig + 1) * self.d].copy_from_slice(self.row(a));
        }
        Embeddings { n: self.n, d: self.d, data }
    }

    fn normalized(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.data.len());
        for i in 0..self.n {
            let row = self.row(i);
            let norm = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            out.extend(row.iter().map(|x| *x as f64 / norm));
        }
        out
    }
}

/// Scores one evaluation: the two embedding files of a split dealt into halves ([`crate::data::deal_halves`]),
/// `images` in `pairing.image_order` and `texts` in `pairing.text_order`, put back in pair order with
/// the pairing only the server holds. The one scoring of every experiment, backend and `report --test`.
pub fn score_halves(pairing: &crate::data::Pairing, n: usize, images: &Path, texts: &Path) -> Result<Metrics> {
    let img = load_embeddings(images, "image", n)?.unshuffle(&pairing.image_order);
    let txt = load_embeddings(texts, "text", n)?.unshuffle(&pairing.text_order);
    Ok(score(&img, &txt)?)
}

/// Scores paired embeddings (row i of each is item i).
pub fn score(img: &Embeddings, txt: &Embeddings) -> Result<Metrics, InvalidEmbeddings> {
    if img.d != txt.d {
        return Err(InvalidEmbeddings::DimMismatch(img.d, txt.d));
    }
    let (n, d) = (img.n, img.d);
    let (a, b) = (img.normalized(), txt.normalized());
    let mut sim = vec![0f64; n * n]; // sim[i * n + j] = image i · text j
    for i in 0..n {
        let ai = &a[i * d..(i + 1) * d];
        for j in 0..n {
            let bj = &b[j * d..(j + 1) * d];
            sim[i * n + j] = ai.iter().zip(bj).map(|(x, y)| x * y).sum();
        }
    }
    let i2t: Vec<usize> =
        (0..n).map(|i| (0..n).filter(|&j| j != i && sim[i * n + j] >= sim[i * n + i]).count()).collect();
    let t2i: Vec<usize> =
        (0..n).map(|i| (0..n).filter(|&j| j != i && sim[j * n + i] >= sim[i * n + i]).count()).collect();
    let mean = |r: &[usize]| r.iter().sum::<usize>() as f64 / n as f64;
    let recall = |r: &[usize], k: usize| 100.0 * r.iter().filter(|&&x| x < k).count() as f64 / n as f64;
    let (mi, mt) = (mean(&i2t), mean(&t2i));
    Ok(Metrics {
        mean_rank: (mi + mt) / 2.0,
        median_rank: (median(&i2t) + median(&t2i)) / 2.0,
        i2t_mean_rank: mi,
        t2i_mean_rank: mt,
        i2t_r1: recall(&i2t, 1),
        i2t_r5: recall(&i2t, 5),
        i2t_r10: recall(&i2t, 10),
        t2i_r1: recall(&t2i, 1),
        t2i_r5: recall(&t2i, 5),
        t2i_r10: recall(&t2i, 10),
        n,
        random_mean_rank: (n as f64 - 1.0) / 2.0,
        folds: vec![],
        seeds: vec![],
    })
}

fn median(r: &[usize]) -> f64 {
    let mut v = r.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 { v[n / 2] as f64 } else { (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0 }
}

/// Serialises an (n, d) f32 matrix as the trainer would (for tests and tools).
pub fn to_safetensors(e: &Embeddings) -> Vec<u8> {
    let bytes: Vec<u8> = e.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![e.n, e.d], &bytes).expect("valid view");
    safetensors::serialize([("embeddings", view)], None).expect("serialize")
}

/// Metrics with many decimals everywhere, as the scorer produces them (for tests of what is shown).
#[cfg(test)]
pub(crate) fn fixture(mean: f64, seeds: &[f64]) -> Metrics {
    Metrics {
        mean_rank: mean,
        median_rank: 10.5,
        i2t_mean_rank: mean - 1.234567,
        t2i_mean_rank: mean + 1.234567,
        i2t_r1: 100.0 / 3.0,
        i2t_r5: 200.0 / 3.0,
        i2t_r10: 71.428571428,
        t2i_r1: 100.0 / 7.0,
        t2i_r5: 55.555555555,
        t2i_r10: 81.818181818,
        n: 333,
        random_mean_rank: 166.0,
        folds: vec![mean - 0.987654, mean + 0.987654],
        seeds: seeds.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn emb(n: usize, d: usize, mut f: impl FnMut(usize, usize) -> f32) -> Embeddings {
        Embeddings { n, d, data: (0..n * d).map(|k| f(k / d, k % d)).collect() }
    }

    fn random(n: usize, d: usize, seed: u64) -> Embeddings {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        emb(n, d, |_, _| rng.random_range(-1.0..1.0))
    }

    #[test]
    fn perfect_embeddings_rank_zero() {
        let e = random(50, 16, 1);
        let m = score(&e, &e).unwrap();
        assert_eq!(m.mean_rank, 0.0);
        assert_eq!(m.i2t_r1, 100.0);
        assert_eq!(m.random_mean_rank, 24.5);
    }

    #[test]
    fn constant_embeddings_score_no_better_than_random() {
        let n = 100;
        let c = emb(n, 8, |_, _| 0.5);
        let m = score(&c, &random(n, 8, 2)).unwrap();
        assert_eq!(m.t2i_mean_rank, (n - 1) as f64, "ties must count against the model");
        assert!(m.i2t_mean_rank >= m.random_mean_rank, "{m:?}");
        assert!(m.mean_rank >= m.random_mean_rank, "{m:?}");
        let both = score(&c, &c).unwrap();
        assert_eq!(both.mean_rank, (n - 1) as f64);
        assert_eq!(both.i2t_r10, 0.0);
    }

    #[test]
    fn random_embeddings_score_near_random() {
        let m = score(&random(300, 32, 3), &random(300, 32, 4)).unwrap();
        assert!((m.mean_rank - m.random_mean_rank).abs() < 25.0, "{m:?}");
    }

    #[test]
    fn zero_and_nan_rows_are_invalid_not_scores() {
        let mut z = random(10, 4, 5);
        z.data[8..12].fill(0.0);
        let bytes = to_safetensors(&z);
        assert!(parse_embeddings(&bytes, "image", 10).unwrap_err().to_string().contains("zero norm"));
        let mut nan = random(10, 4, 6);
        nan.data[3] = f32::NAN;
        assert!(parse_embeddings(&to_safetensors(&nan), "text", 10).unwrap_err().to_string().contains("non-finite"));
        let all_zero = emb(10, 4, |_, _| 0.0);
        assert!(parse_embeddings(&to_safetensors(&all_zero), "image", 10).is_err());
    }

    #[test]
    fn wrong_shape_dtype_or_garbage_is_invalid() {
        let e = random(10, 4, 7);
        assert!(parse_embeddings(&to_safetensors(&e), "image", 11).unwrap_err().to_string().contains("shape"));
        assert!(parse_embeddings(b"metrics: mean_rank 0.0", "image", 10).is_err());
        let bytes: Vec<u8> = vec![0u8; 40];
        let v = safetensors::tensor::TensorView::new(Dtype::F64, vec![10, 1], &bytes[..80.min(bytes.len())]);
        assert!(
            v.is_err()
                || parse_embeddings(&safetensors::serialize([("embeddings", v.unwrap())], None).unwrap(), "image", 10)
                    .is_err()
        );
    }

    /// Digits after the point in `x`'s shortest round-trip form (what JSON and `{}` print).
    fn decimals(x: f64) -> usize {
        format!("{x}").split_once('.').map_or(0, |(_, frac)| frac.len())
    }

    #[test]
    fn rounding_rules() {
        assert_eq!(round_rank(12.345678), 12.35);
        assert_eq!(round_rank(12.344999), 12.34);
        assert_eq!(round_rank(7.0), 7.0);
        assert_eq!(round_recall(33.333333), 33.3);
        assert_eq!(round_recall(66.666666), 66.7);
        assert_eq!(round_to(12.5, MEDIAN_DECIMALS), 12.5);
    }

    #[test]
    fn the_agent_view_shows_only_the_allowed_decimals() {
        let exact = Metrics {
            median_rank: 10.5,
            i2t_mean_rank: 11.111111111,
            t2i_mean_rank: 13.580246913,
            folds: vec![11.123456, 13.567891],
            ..fixture(12.345678901, &[12.0000001, 12.691357802])
        };
        let m = exact.for_agent();
        let ranks =
            [m.mean_rank, m.i2t_mean_rank, m.t2i_mean_rank].into_iter().chain(m.folds.clone()).chain(m.seeds.clone());
        for r in ranks {
            assert!(decimals(r) <= 2, "{r}");
        }
        for r in [m.median_rank, m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10] {
            assert!(decimals(r) <= 1, "{r}");
        }
        assert_eq!((m.mean_rank, m.i2t_r1, m.t2i_r10, m.median_rank), (12.35, 33.3, 81.8, 10.5));
        assert_eq!((m.folds, m.seeds), (vec![11.12, 13.57], vec![12.0, 12.69]));
        assert_eq!((m.n, m.random_mean_rank), (333, 166.0));
        // The JSON the agent receives carries the same digits.
        let json = serde_json::to_string(&exact.for_agent()).unwrap();
        assert!(json.contains("\"mean_rank\":12.35,") && !json.contains("12.345"), "{json}");
    }

    #[test]
    fn deltas_come_from_the_rounded_values() {
        // Exactly 0.008 apart, but both show as 10.00: the delta must not tell them apart.
        assert_eq!(agent_delta(10.004, 9.996), 0.0);
        assert_eq!(agent_delta(12.345678, 10.001), 2.35);
        assert_eq!(agent_delta(9.994, 10.006), -0.02);
        assert_eq!(decimals(agent_delta(0.3 + 1e-9, 0.1)), 1, "float noise of the subtraction is rounded off");
    }

    #[test]
    fn unshuffle_restores_pairing() {
        let e = random(20, 6, 8);
        let order: Vec<usize> = (0..20).rev().collect();
        let mut shuffled = e.clone();
        for (a, &orig) in order.iter().enumerate() {
            shuffled.data[a * 6..(a + 1) * 6].copy_from_slice(&e.data[orig * 6..(orig + 1) * 6]);
        }
        assert_eq!(shuffled.unshuffle(&order).data, e.data);
        assert_eq!(score(&shuffled.unshuffle(&order), &e).unwrap().mean_rank, 0.0);
    }
}
