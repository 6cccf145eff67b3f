//! Gaussian heatmaps from normalised boxes, as the reference's `bbox_to_heatmap` and
//! `regions_to_heatmap` (eCLIP `autoresearch/prepare.py`), computed on the device for a whole batch.
//!
//! For a box `[x1,y1,x2,y2]` in 0..1: centre `cx=(x1+x2)/2`, `cy=(y1+y2)/2`; sigma `sx=(x2-x1)/2`,
//! `sy=(y2-y1)/2`, each floored at [`SIGMA_FLOOR`]; value `exp(-((x-cx)^2/(2sx^2) + (y-cy)^2/(2sy^2)))` on an
//! SxS grid of `linspace(0,1,S)` (rows are y, columns x). The boxes of one heatmap merge by element-wise
//! max (starting from zeros). The result lies in [0,1] with shape `(B,1,S,S)`.

use tch::{Kind, Tensor};

/// The reference's lower bound on sigma, avoiding degenerate Gaussians for tiny boxes.
pub const SIGMA_FLOOR: f64 = 0.02;

/// Heatmaps `(B,1,S,S)` f32 from boxes `(B,K,4)` (normalised xyxy) of which the first `nboxes[b]` are
/// real (`nboxes`: `(B,)` i64). Computed on the boxes' device.
pub fn heatmaps(boxes: &Tensor, nboxes: &Tensor, size: i64) -> Tensor {
    let device = boxes.device();
    let boxes = boxes.to_kind(Kind::Float);
    let k = boxes.size()[1];
    let (x1, y1) = (boxes.select(2, 0), boxes.select(2, 1)); // (B, K)
    let (x2, y2) = (boxes.select(2, 2), boxes.select(2, 3));
    let cx = (&x1 + &x2) / 2.0;
    let cy = (&y1 + &y2) / 2.0;
    let sx = ((&x2 - &x1) / 2.0).clamp_min(SIGMA_FLOOR);
    let sy = ((&y2 - &y1) / 2.0).clamp_min(SIGMA_FLOOR);
    let grid = Tensor::linspace(0.0, 1.0, size, (Kind::Float, device)).view([1, 1, size]); // (1, 1, S)
                                                                                           // Exponent terms per axis: (B, K, S).
    let ex = (&grid - cx.unsqueeze(-1)).square() / (sx.square() * 2.0).unsqueeze(-1);
    let ey = (&grid - cy.unsqueeze(-1)).square() / (sy.square() * 2.0).unsqueeze(-1);
    // exp(-(x-term + y-term)) as in the reference (not a product of two exps): (B, K, S, S).
    let h = (ex.unsqueeze(2) + ey.unsqueeze(3)).neg().exp();
    let valid = Tensor::arange(k, (Kind::Int64, device))
        .view([1, k])
        .lt_tensor(&nboxes.to_device(device).view([-1, 1])); // (B, K)
    let h = h * valid.to_kind(Kind::Float).view([-1, k, 1, 1]);
    h.amax([1], false).clamp_min(0.0).unsqueeze(1) // (B, 1, S, S)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: &Tensor, y: i64, x: i64) -> f64 {
        h.double_value(&[0, 0, y, x])
    }

    #[test]
    fn peak_at_centre_and_symmetric() {
        // Centre box on an odd grid: the centre 0.5 is exactly a grid point.
        let boxes = Tensor::from_slice(&[0.25f32, 0.25, 0.75, 0.75]).view([1, 1, 4]);
        let n = Tensor::from_slice(&[1i64]);
        let h = heatmaps(&boxes, &n, 33);
        assert_eq!(h.size(), vec![1, 1, 33, 33]);
        assert!((at(&h, 16, 16) - 1.0).abs() < 1e-6);
        assert!((h.max().double_value(&[]) - 1.0).abs() < 1e-6);
        assert!(h.min().double_value(&[]) >= 0.0);
        let flipped = h.flip([3]);
        assert!((&h - &flipped).abs().max().double_value(&[]) < 1e-6);
        let transposed = h.transpose(2, 3);
        assert!((&h - &transposed).abs().max().double_value(&[]) < 1e-6);
        // One sigma (0.25) away from the centre along x: exp(-1/2).
        let x = 16 + 8; // grid step 1/32, 8 steps = 0.25
        assert!((at(&h, 16, x) - (-0.5f64).exp()).abs() < 1e-5);
    }

    #[test]
    fn floor_on_tiny_boxes() {
        let boxes = Tensor::from_slice(&[0.5f32, 0.5, 0.5, 0.5]).view([1, 1, 4]);
        let n = Tensor::from_slice(&[1i64]);
        let h = heatmaps(&boxes, &n, 101); // grid step 0.01
        assert!((at(&h, 50, 50) - 1.0).abs() < 1e-6);
        // 0.02 away = one floored sigma: exp(-1/2), not 0.
        assert!((at(&h, 50, 52) - (-0.5f64).exp()).abs() < 1e-4);
    }

    #[test]
    fn merge_by_max_and_padding_ignored() {
        let b1 = [0.0f32, 0.0, 0.4, 0.4];
        let b2 = [0.6f32, 0.6, 1.0, 1.0];
        let pad = [0.4f32, 0.4, 0.6, 0.6]; // not counted: nboxes says 2
        let boxes = Tensor::from_slice(&[b1, b2, pad].concat()).view([1, 3, 4]);
        let n = Tensor::from_slice(&[2i64]);
        let merged = heatmaps(&boxes, &n, 21);
        let one =
            |b: [f32; 4]| heatmaps(&Tensor::from_slice(&b).view([1, 1, 4]), &Tensor::from_slice(&[1i64]), 21);
        let expected = one(b1).maximum(&one(b2));
        assert!((&merged - &expected).abs().max().double_value(&[]) < 1e-6);
        // The padded box centred at 0.5 would make the centre ~1; it must not.
        assert!(at(&merged, 10, 10) < 0.9);
    }
}
