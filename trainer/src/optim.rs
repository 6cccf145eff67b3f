//! AdamW over one flat buffer. Every trainable variable becomes a view of a single contiguous tensor,
//! so the update, both moments and gradient clipping are a handful of kernels over the whole model,
//! where libtorch's C++ AdamW (what tch's `nn::AdamW` wraps) runs ~10 kernels per variable and
//! tch's `clip_grad_norm` one norm per variable plus a device-to-host sync. On a GPU those launches
//! and the sync cost a fixed slice of every step; PyTorch's own AdamW avoids them with its `foreach`
//! kernels.
//!
//! The arithmetic is AdamW's (decoupled weight decay, bias-corrected moments, eps outside the square
//! root) and `clip_grad_norm_`'s (coefficient `max / (norm + 1e-6)`, at most 1). `zero_grad` sets
//! gradients to undefined (PyTorch's `set_to_none=True`, libtorch's default), so a variable that a
//! step's backward pass does not reach (the expert-only paths on a step without an expert batch) is
//! left alone that step: no weight decay, no moment decay. `optim_matches_libtorch_adamw` in the tests
//! holds all of this to `nn::AdamW`.

use anyhow::{ensure, Result};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// AdamW with all trainable variables in one buffer; a drop-in for `nn::Optimizer` in a training loop
/// (`set_lr`, `zero_grad`, `clip_grad_norm`, `step`).
pub struct FlatAdamW {
    /// The trainable variables, each a view of `flat` after [`FlatAdamW::new`].
    vars: Vec<Tensor>,
    /// Where each variable lies in `flat`: (offset, number of elements).
    spans: Vec<(i64, i64)>,
    flat: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// The flat gradient gathered (and clipped) this step, consumed by `step`.
    grad: Option<Tensor>,
    /// An SGD optimiser over the same variables that never steps: its `zero_grad` sets gradients to
    /// undefined, which tch offers no other way to do.
    grads_to_none: tch::COptimizer,
    lr: f64,
    weight_decay: f64,
    betas: (f64, f64),
    eps: f64,
    /// `step` calls so far.
    steps: u64,
    /// Steps each variable has taken (those with a gradient).
    var_steps: Vec<u64>,
}

impl FlatAdamW {
    /// Moves every trainable variable of `vs` into one buffer (values unchanged). Call it after any
    /// pretrained weights are loaded; variables added to `vs` later are not optimised.
    pub fn new(vs: &VarStore, lr: f64, weight_decay: f64) -> Result<FlatAdamW> {
        let mut vars = vs.trainable_variables();
        ensure!(!vars.is_empty(), "the VarStore has no trainable variables");
        let (kind, device) = (vars[0].kind(), vars[0].device());
        ensure!(
            vars.iter().all(|v| v.kind() == kind && v.device() == device),
            "FlatAdamW needs every trainable variable of one kind on one device"
        );
        let mut spans = Vec::with_capacity(vars.len());
        let mut offset = 0;
        for v in &vars {
            let n = v.numel() as i64;
            spans.push((offset, n));
            offset += n;
        }
        let flat = tch::no_grad(|| {
            let parts: Vec<Tensor> = vars.iter().map(|v| v.detach().reshape([-1])).collect();
            let flat = Tensor::cat(&parts, 0);
            for (v, &(o, n)) in vars.iter_mut().zip(&spans) {
                v.set_data(&flat.narrow(0, o, n).view(v.size().as_slice()));
            }
            flat
        });
        let n_vars = vars.len();
        let mut grads_to_none = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?;
        for v in &vars {
            grads_to_none.add_parameters(v, 0)?;
        }
        Ok(FlatAdamW {
            grads_to_none,
            exp_avg: flat.zeros_like(),
            exp_avg_sq: flat.zeros_like(),
            vars,
            spans,
            flat,
            grad: None,
            lr,
            weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
            steps: 0,
            var_steps: vec![0; n_vars],
        })
    }

    /// Sets the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Sets every gradient to undefined (as `nn::Optimizer::zero_grad`, libtorch's `set_to_none`).
    pub fn zero_grad(&mut self) {
        self.grads_to_none.zero_grad().expect("libtorch zero_grad");
        self.grad = None;
    }

    /// The gradients in one flat tensor (zeros where undefined).
    fn gather(&self) -> Tensor {
        let parts: Vec<Tensor> = self
            .vars
            .iter()
            .map(|v| {
                let g = v.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    v.detach().zeros_like().reshape([-1])
                }
            })
            .collect();
        Tensor::cat(&parts, 0).to_kind(self.flat.kind())
    }

    /// Scales the gradients so that their global L2 norm is at most `max` (no host sync).
    pub fn clip_grad_norm(&mut self, max: f64) {
        tch::no_grad(|| {
            let mut g = self.grad.take().unwrap_or_else(|| self.gather());
            let coef = ((g.norm() + 1e-6).reciprocal() * max).clamp_max(1.0);
            let _ = g.g_mul_(&coef);
            self.grad = Some(g);
        });
    }

    /// One AdamW step on every variable with a defined gradient. Each variable counts its own steps
    /// for the bias correction (as PyTorch and libtorch keep `step` per parameter): the largest group
    /// of variables with one count is updated in one pass over the buffer, any other variable with a
    /// gradient on its own, and variables without one are put back as they were.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            let g = self.grad.take().unwrap_or_else(|| self.gather());
            let has: Vec<bool> = self.vars.iter().map(|v| v.grad().defined()).collect();
            for (n, _) in self.var_steps.iter_mut().zip(&has).filter(|(_, h)| **h) {
                *n += 1;
            }
            self.steps += 1;
            let mut counts = std::collections::BTreeMap::new();
            for (n, _) in self.var_steps.iter().zip(&has).filter(|(_, h)| **h) {
                *counts.entry(*n).or_insert(0usize) += 1;
            }
            let Some(bulk) = counts.iter().max_by_key(|(_, c)| **c).map(|(n, _)| *n) else { return };
            let apart: Vec<usize> =
                (0..self.vars.len()).filter(|&i| !has[i] || self.var_steps[i] != bulk).collect();
            let saved = self.slices(&apart);
            self.update(
                &mut self.flat.shallow_clone(),
                &mut self.exp_avg.shallow_clone(),
                &mut self.exp_avg_sq.shallow_clone(),
                &g,
                bulk,
            );
            for (i, (o, n, [p, m, v])) in apart.into_iter().zip(saved) {
                let (mut fp, mut fm, mut fv) = (
                    self.flat.narrow(0, o, n),
                    self.exp_avg.narrow(0, o, n),
                    self.exp_avg_sq.narrow(0, o, n),
                );
                fp.copy_(&p);
                fm.copy_(&m);
                fv.copy_(&v);
                if has[i] {
                    self.update(&mut fp, &mut fm, &mut fv, &g.narrow(0, o, n), self.var_steps[i]);
                }
            }
        });
    }

    /// AdamW's update of parameters `p` with moments `m`, `v` and gradient `g`, at the variable's step `t`.
    fn update(&self, p: &mut Tensor, m: &mut Tensor, v: &mut Tensor, g: &Tensor, t: u64) {
        let (b1, b2) = self.betas;
        let t = t as i32;
        let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
        let _ = m.lerp_(g, 1.0 - b1);
        let _ = v.lerp_(&(g * g), 1.0 - b2);
        let step_size = self.lr / (1.0 - b1.powi(t));
        // p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps), with one temporary: the denominator is
        // built in place, then scaled by -1/step_size so that a plain addcdiv applies it.
        let mut denom = v.sqrt();
        let _ = denom.g_div_scalar_((1.0 - b2.powi(t)).sqrt());
        let _ = denom.g_add_scalar_(self.eps);
        let _ = denom.g_mul_scalar_(-1.0 / step_size);
        let _ = p.addcdiv_(m, &denom);
    }

    /// Copies of (values, first moment, second moment) of the variables `idx`, with their place in `flat`.
    fn slices(&self, idx: &[usize]) -> Vec<(i64, i64, [Tensor; 3])> {
        idx.iter()
            .map(|&i| {
                let (o, n) = self.spans[i];
                let copy = |t: &Tensor| t.narrow(0, o, n).copy();
                (o, n, [copy(&self.flat), copy(&self.exp_avg), copy(&self.exp_avg_sq)])
            })
            .collect()
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The buffer's element kind (the variables').
    pub fn kind(&self) -> Kind {
        self.flat.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, OptimizerConfig};
    use tch::Device;

    /// Two layers, a third used only on odd steps (its gradient is undefined on even steps) and one
    /// never used.
    fn model(vs: &VarStore) -> (nn::Linear, nn::Linear, nn::Linear, nn::Linear) {
        let r = vs.root();
        (
            nn::linear(&r / "a", 6, 8, Default::default()),
            nn::linear(&r / "b", 8, 3, Default::default()),
            nn::linear(&r / "odd", 6, 3, Default::default()),
            nn::linear(&r / "unused", 6, 3, Default::default()),
        )
    }

    fn loss(m: &(nn::Linear, nn::Linear, nn::Linear, nn::Linear), x: &Tensor, step: i64) -> Tensor {
        let mut y = m.1.forward(&m.0.forward(x).relu());
        if step % 2 == 1 {
            y = y + m.2.forward(x) * 0.5;
        }
        (y - 1.0).pow_tensor_scalar(2).mean(Kind::Float) * 10.0
    }

    #[test]
    fn optim_matches_libtorch_adamw() {
        tch::manual_seed(7);
        let (vs_ref, vs_flat) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
        let (m_ref, m_flat) = (model(&vs_ref), model(&vs_flat));
        let mut vs_flat = vs_flat;
        vs_flat.copy(&vs_ref).unwrap();
        let unused_before = vs_ref.variables()["unused.weight"].copy();
        let (lr, wd) = (3e-2, 1e-2);
        let mut reference = nn::AdamW { wd, ..Default::default() }.build(&vs_ref, lr).unwrap();
        let mut flat = FlatAdamW::new(&vs_flat, lr, wd).unwrap();
        for step in 1..=6 {
            let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
            let lr_t = lr * (1.0 - step as f64 / 10.0);
            reference.set_lr(lr_t);
            flat.set_lr(lr_t);
            reference.zero_grad();
            loss(&m_ref, &x, step).backward();
            reference.clip_grad_norm(0.5); // small enough to clip
            reference.step();
            flat.zero_grad();
            loss(&m_flat, &x, step).backward();
            flat.clip_grad_norm(0.5);
            flat.step();
        }
        let flat_vars = vs_flat.variables();
        for (name, r) in vs_ref.variables() {
            let f = &flat_vars[&name];
            let diff = (&r - f).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: differs by {diff}");
        }
        // The unused layer kept its initial weights (undefined gradient: skipped, no weight decay).
        assert!(flat_vars["unused.weight"].equal(&unused_before), "the unused layer moved");
        assert_eq!(flat.steps(), 6);
    }

    #[test]
    fn variables_stay_views_of_the_buffer_and_save_their_values() {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let m = model(&vs);
        let before: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect();
        let mut opt = FlatAdamW::new(&vs, 1e-2, 0.0).unwrap();
        for (k, v) in &before {
            assert!(v.equal(&vs.variables()[k]), "{k} changed when moved into the buffer");
        }
        opt.zero_grad();
        loss(&m, &Tensor::ones([2, 6], (Kind::Float, Device::Cpu)), 1).backward();
        opt.step();
        // The step moved the variables the model uses (they are views of the buffer)...
        let after = vs.variables();
        assert!(!before.iter().find(|(k, _)| k == "a.weight").unwrap().1.equal(&after["a.weight"]));
        // ...and a checkpoint of them holds the values the model sees.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let named: Vec<(String, Tensor)> = after.iter().map(|(k, v)| (k.clone(), v.contiguous())).collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        for (k, t) in Tensor::read_safetensors(&path).unwrap() {
            assert!(t.equal(&after[&k]), "{k} saved wrongly");
        }
        assert_eq!(opt.kind(), Kind::Float);
    }
}
