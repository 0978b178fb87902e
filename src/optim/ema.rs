//! An exponential moving average of the weights, sampled from instead of the noisy live weights.

use crate::params::Params;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// The EMA shadow: `shadow ← d·shadow + (1-d)·p` after every optimiser step.
#[derive(Clone, Debug)]
pub struct Ema {
    /// The target decay `d` (the seed's 0.9999); f64 like the seed's Python float, so `1 - d` is exact.
    pub decay: f64,
    /// With warm-up the decay at update `k` (from 0) is `min(d, (1+k)/(10+k))`, so that a short run's EMA is not
    /// still mostly the random initialisation; without it, always `d` (the seed).
    pub warmup: bool,
    /// Updates applied so far.
    pub updates: u64,
    /// The averaged parameters, in the store's order.
    pub shadow: Vec<Tensor>,
}

impl Ema {
    /// A shadow that starts as a copy of `params`.
    pub fn new(params: &Params, decay: f64, warmup: bool) -> Self {
        Ema { decay, warmup, updates: 0, shadow: params.tensors().to_vec() }
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        if self.warmup {
            let k = self.updates as f64;
            self.decay.min((1.0 + k) / (10.0 + k))
        } else {
            self.decay
        }
    }

    /// The f32 `(d, 1 - d)` of the next update, `1 - d` formed in f64 first (shared with the GPU kernel).
    pub fn scalars(&self) -> (f32, f32) {
        let d = self.current_decay();
        (d as f32, (1.0 - d) as f32)
    }

    /// `shadow ← shadow·d + p·(1-d)`, in PyTorch's f32 order (`mul_(d)` then `add_(p, alpha=1-d)`).
    pub fn update(&mut self, params: &Params) {
        let (d, alpha) = self.scalars();
        self.shadow.par_iter_mut().zip(params.tensors().par_iter()).for_each(|(s, p)| {
            s.data_mut().iter_mut().zip(p.data()).for_each(|(s, &p)| *s = *s * d + alpha * p);
        });
        self.updates += 1;
    }
}
