//! An exponential moving average of the weights, sampled from instead of the noisy live weights.

use crate::arena::{self, Arena};
use crate::backend::{Backend, Cpu};
use crate::error::Result;
use crate::params::Params;
use crate::tensor::Tensor;

/// The EMA shadow: `shadow ← d·shadow + (1-d)·p` after every optimiser step, on the parameters' backend.
#[derive(Clone, Debug)]
pub struct Ema<B: Backend = Cpu> {
    /// The target decay `d` (the reference's 0.9999); f64 like the reference's Python float, so `1 - d` is exact.
    pub decay: f64,
    /// With warm-up the decay at update `k` (from 0) is `min(d, (1+k)/(10+k))`, so that a short run's EMA is not
    /// still mostly the random initialisation; without it, always `d` (the reference).
    pub warmup: bool,
    /// Updates applied so far.
    pub updates: u64,
    /// The averaged parameters, in the store's order.
    pub shadow: Vec<Tensor<B>>,
    /// The shadow's arena on a GPU, laid out as the parameters' ([`crate::arena`]).
    pub(crate) arena: Arena<B>,
}

impl Ema {
    /// A shadow that starts as a copy of `params`.
    pub fn new(params: &Params, decay: f64, warmup: bool) -> Self {
        Ema { decay, warmup, updates: 0, shadow: params.tensors().to_vec(), arena: Arena::none() }
    }
}

impl<B: Backend> Ema<B> {
    /// A copy of this state with its shadow on `backend` (the host is `&Cpu`), in an arena placed in `order` (the
    /// parameters' [`Params::placement`](crate::params::Params::placement)) where the backend has views.
    pub fn to_backend<C: Backend>(&self, backend: &C, order: &[usize]) -> Result<Ema<C>> {
        let host = self.shadow.iter().map(|t| t.to_backend(&Cpu)).collect::<Result<Vec<_>>>()?;
        let (arena, shadow) = arena::place(backend, &host, order)?;
        Ok(Ema { decay: self.decay, warmup: self.warmup, updates: self.updates, shadow, arena })
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        self.decay_at(self.updates)
    }

    /// The decay of update `k` (from 0).
    fn decay_at(&self, k: u64) -> f64 {
        if self.warmup {
            let k = k as f64;
            self.decay.min((1.0 + k) / (10.0 + k))
        } else {
            self.decay
        }
    }

    /// The f32 `(d, 1 - d)` of the next update, `1 - d` formed in f64 first (shared with the GPU kernel).
    pub fn scalars(&self) -> (f32, f32) {
        self.scalars_at(self.updates)
    }

    /// [`Ema::scalars`] of update `k` (from 0), for a plan of steps ahead.
    pub fn scalars_at(&self, k: u64) -> (f32, f32) {
        let d = self.decay_at(k);
        (d as f32, (1.0 - d) as f32)
    }

    /// `shadow ← shadow·d + p·(1-d)`, in PyTorch's f32 order (`mul_(d)` then `add_(p, alpha=1-d)`), one fused
    /// [`OptimOps::ema_update`](super::OptimOps::ema_update) per tensor.
    pub fn update(&mut self, params: &Params<B>) -> Result<()> {
        let (d, alpha) = self.scalars();
        for (s, p) in self.shadow.iter_mut().zip(params.tensors()) {
            params.backend().ema_update(d, alpha, s.buf_mut(), p.buf())?;
        }
        self.updates += 1;
        Ok(())
    }
}
