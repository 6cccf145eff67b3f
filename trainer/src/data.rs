//! A prepared split (CONTRACT.md, "Tensors of a prepared split") loaded onto the device once, and the
//! batches `train.rs` draws from it.
//!
//! Sampling follows the reference's two `DataLoader`s (`shuffle=True, drop_last=True`): a plain batch is
//! the next slice of a random permutation of the images, reshuffled each epoch; an expert batch comes
//! from a second, independent permutation, and for each image one of its regions is drawn at random as
//! the snippet, while the heatmap merges *all* the image's boxes (the reference's
//! `UkiyoeExpertDataset`: `regions_to_heatmap(sample.regions)` + the phrase of one random region).

use crate::heatmap::heatmaps;
use crate::normalize_images;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Key of the vocabulary size in a prepared split (defined with the checkpoint's in [`crate::vocab`]).
pub use crate::vocab::SPLIT_KEY as VOCAB_SIZE_KEY;

/// A prepared split on the device.
#[derive(Debug)]
pub struct TrainData {
    /// `(N,3,S,S)` u8 RGB.
    pub images: Tensor,
    /// `(N,Lc)` i64 token ids, 0-padded.
    pub caption_ids: Tensor,
    /// `(N,Lc)` i64, 1 for real tokens.
    pub caption_mask: Tensor,
    /// `(R,Ls)` i64: the phrase of each region.
    pub snippet_ids: Tensor,
    /// `(R,Ls)` i64.
    pub snippet_mask: Tensor,
    /// `(R,)` i64: the image of each snippet.
    pub snippet_image: Tensor,
    /// `(R,K,4)` f32: normalised boxes of the regions of that image with the snippet's phrase.
    pub snippet_boxes: Tensor,
    /// `(R,)` i64: real boxes among the K.
    pub snippet_nboxes: Tensor,
    /// `(N,Ki,4)` f32: normalised boxes of every region of the image (the reference's heatmap).
    pub image_boxes: Tensor,
    /// `(N,)` i64: real boxes among the Ki.
    pub image_nboxes: Tensor,
    /// Vocabulary size of the tokenizer used by `prepare`.
    pub vocab_size: i64,
    /// Snippet rows grouped by image (a stable sort of `snippet_image`).
    snippet_order: Tensor,
    /// `(N,)`: first position in `snippet_order` of each image's snippets.
    snippet_start: Tensor,
    /// `(N,)`: number of snippets of each image.
    snippet_count: Tensor,
    /// Rows with at least one snippet (the expert sampler's population).
    expert_rows: Tensor,
    device: Device,
}

/// A plain batch: images and captions.
#[derive(Debug)]
pub struct Batch {
    /// `(B,3,S,S)` f32, ImageNet-normalised.
    pub images: Tensor,
    /// `(B,Lc)` i64.
    pub caption_ids: Tensor,
    /// `(B,Lc)` i64.
    pub caption_mask: Tensor,
}

/// An expert batch: a plain batch plus a heatmap and a snippet per image.
#[derive(Debug)]
pub struct ExpertBatch {
    /// `(B,3,S,S)` f32, ImageNet-normalised.
    pub images: Tensor,
    /// `(B,Lc)` i64.
    pub caption_ids: Tensor,
    /// `(B,Lc)` i64.
    pub caption_mask: Tensor,
    /// `(B,1,S,S)` f32 in [0,1]: all the image's boxes merged (the reference's expert heatmap).
    pub heatmaps: Tensor,
    /// `(B,Ls)` i64: the phrase of one random region of each image.
    pub snippet_ids: Tensor,
    /// `(B,Ls)` i64.
    pub snippet_mask: Tensor,
    /// `(B,)` i64: rows of [`TrainData::images`].
    pub image_idx: Tensor,
    /// `(B,)` i64: rows of [`TrainData::snippet_ids`] (e.g. for a snippet-only heatmap from
    /// [`TrainData::snippet_boxes`]).
    pub snippet_idx: Tensor,
}

/// Epochs of random permutations of a set of rows, `drop_last` like the reference's loaders.
#[derive(Debug)]
pub struct Sampler {
    rows: Tensor,
    perm: Tensor,
    pos: i64,
    batch: i64,
}

impl Sampler {
    /// A sampler over `rows` (`(M,)` i64 on the device, M > 0) in batches of `batch` (capped at M).
    pub fn new(rows: Tensor, batch: i64) -> Sampler {
        assert!(rows.size()[0] > 0, "a sampler needs at least one row");
        let batch = batch.min(rows.size()[0]).max(1);
        Sampler { perm: Tensor::empty([0], (Kind::Int64, rows.device())), rows, pos: 0, batch }
    }

    /// Rows per batch (the asked size, or fewer when the split has fewer rows).
    pub fn batch_size(&self) -> i64 {
        self.batch
    }

    /// The next batch of row indices, `(B,)` i64 on the device.
    pub fn next_rows(&mut self) -> Tensor {
        let m = self.rows.size()[0];
        if self.pos + self.batch > self.perm.size()[0] {
            self.perm = self.rows.index_select(0, &Tensor::randperm(m, (Kind::Int64, self.rows.device())));
            self.pos = 0;
        }
        let idx = self.perm.narrow(0, self.pos, self.batch);
        self.pos += self.batch;
        idx
    }
}

fn take(map: &mut HashMap<String, Tensor>, key: &str, kind: Kind, dims: usize) -> Result<Tensor> {
    let t = map.remove(key).with_context(|| format!("the prepared split has no tensor {key:?}"))?;
    if t.kind() != kind || t.dim() != dims {
        bail!("tensor {key:?} is {:?} {:?}, expected {kind:?} with {dims} dimensions", t.kind(), t.size());
    }
    Ok(t)
}

/// Reads all tensors of a safetensors file (on the CPU).
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

impl TrainData {
    /// Loads a prepared split onto `device` and checks its shapes.
    pub fn load(path: &Path, device: Device) -> Result<TrainData> {
        let mut m = read_tensors(path)?;
        let images = take(&mut m, "images", Kind::Uint8, 4)?;
        let caption_ids = take(&mut m, "caption_ids", Kind::Int64, 2)?;
        let caption_mask = take(&mut m, "caption_mask", Kind::Int64, 2)?;
        let snippet_ids = take(&mut m, "snippet_ids", Kind::Int64, 2)?;
        let snippet_mask = take(&mut m, "snippet_mask", Kind::Int64, 2)?;
        let snippet_image = take(&mut m, "snippet_image", Kind::Int64, 1)?;
        let snippet_boxes = take(&mut m, "snippet_boxes", Kind::Float, 3)?;
        let snippet_nboxes = take(&mut m, "snippet_nboxes", Kind::Int64, 1)?;
        let image_boxes = take(&mut m, "image_boxes", Kind::Float, 3)?;
        let image_nboxes = take(&mut m, "image_nboxes", Kind::Int64, 1)?;
        let vocab_size = take(&mut m, VOCAB_SIZE_KEY, Kind::Int64, 1)?.int64_value(&[0]);
        let n = images.size()[0];
        if n == 0 {
            bail!("the prepared split has no images");
        }
        for (name, t) in [
            ("caption_ids", &caption_ids),
            ("caption_mask", &caption_mask),
            ("image_boxes", &image_boxes),
            ("image_nboxes", &image_nboxes),
        ] {
            if t.size()[0] != n {
                bail!("{name} has {} rows, images {n}", t.size()[0]);
            }
        }
        let r = snippet_ids.size()[0];
        for (name, t) in [
            ("snippet_mask", &snippet_mask),
            ("snippet_image", &snippet_image),
            ("snippet_boxes", &snippet_boxes),
            ("snippet_nboxes", &snippet_nboxes),
        ] {
            if t.size()[0] != r {
                bail!("{name} has {} rows, snippet_ids {r}", t.size()[0]);
            }
        }
        if r > 0 {
            let (lo, hi) = (snippet_image.min().int64_value(&[]), snippet_image.max().int64_value(&[]));
            if lo < 0 || hi >= n {
                bail!("snippet_image has values in [{lo}, {hi}] outside [0, {n})");
            }
        }
        let (_, snippet_order) = snippet_image.sort_stable(true, 0, false);
        let snippet_count = snippet_image.bincount(None::<Tensor>, n);
        let snippet_start = snippet_count.cumsum(0, Kind::Int64) - &snippet_count;
        let expert_rows = snippet_count.gt(0).nonzero().view([-1]);
        if expert_rows.size()[0] == 0 {
            bail!("the prepared split has no regions (the expert batches need them)");
        }
        let d = |t: Tensor| t.to_device(device);
        let data = TrainData {
            images: d(images),
            caption_ids: d(caption_ids),
            caption_mask: d(caption_mask),
            snippet_ids: d(snippet_ids),
            snippet_mask: d(snippet_mask),
            snippet_image: d(snippet_image),
            snippet_boxes: d(snippet_boxes),
            snippet_nboxes: d(snippet_nboxes),
            image_boxes: d(image_boxes),
            image_nboxes: d(image_nboxes),
            vocab_size,
            snippet_order: d(snippet_order),
            snippet_start: d(snippet_start),
            snippet_count: d(snippet_count),
            expert_rows: d(expert_rows),
            device,
        };
        crate::timeline::data_loaded();
        Ok(data)
    }

    /// Number of images (= captions).
    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    /// Whether the split has no images (never true after [`TrainData::load`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Side S of the stored images.
    pub fn image_size(&self) -> i64 {
        self.images.size()[2]
    }

    /// The device the tensors live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// A sampler for plain batches (over all images).
    pub fn sampler(&self, batch: i64) -> Sampler {
        Sampler::new(Tensor::arange(self.len(), (Kind::Int64, self.device)), batch)
    }

    /// A sampler for expert batches (over images with at least one region).
    pub fn expert_sampler(&self, batch: i64) -> Sampler {
        Sampler::new(self.expert_rows.shallow_clone(), batch)
    }

    /// The plain batch of image rows `idx`.
    pub fn batch(&self, idx: &Tensor) -> Batch {
        Batch {
            images: normalize_images(&self.images.index_select(0, idx)),
            caption_ids: self.caption_ids.index_select(0, idx),
            caption_mask: self.caption_mask.index_select(0, idx),
        }
    }

    /// The expert batch of image rows `idx`: heatmap of all the image's boxes, one random snippet each.
    pub fn expert_batch(&self, idx: &Tensor) -> ExpertBatch {
        let count = self.snippet_count.index_select(0, idx);
        let start = self.snippet_start.index_select(0, idx);
        let u = Tensor::rand([idx.size()[0]], (Kind::Float, self.device));
        let pick = (u * count.to_kind(Kind::Float)).floor().to_kind(Kind::Int64);
        let pick = pick.minimum(&(&count - 1)).clamp_min(0);
        let snippet_idx = self.snippet_order.index_select(0, &(start + pick));
        let heat = heatmaps(
            &self.image_boxes.index_select(0, idx),
            &self.image_nboxes.index_select(0, idx),
            self.image_size(),
        );
        ExpertBatch {
            images: normalize_images(&self.images.index_select(0, idx)),
            caption_ids: self.caption_ids.index_select(0, idx),
            caption_mask: self.caption_mask.index_select(0, idx),
            heatmaps: heat,
            snippet_ids: self.snippet_ids.index_select(0, &snippet_idx),
            snippet_mask: self.snippet_mask.index_select(0, &snippet_idx),
            image_idx: idx.shallow_clone(),
            snippet_idx,
        }
    }
}
