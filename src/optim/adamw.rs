//! `torch.optim.AdamW` (Loshchilov & Hutter 2019), single-tensor path, amsgrad off.

use crate::arena::{self, Arena};
use crate::backend::{Backend, Cpu};
use crate::error::Result;
use crate::params::{Grads, Params};
use crate::tensor::Tensor;

/// The per-step f32 scalars of an AdamW update (see [`AdamW::scalars`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// `1 - lr·wd`, the decoupled weight decay factor.
    pub decay: f32,
    /// `1 - β₁`.
    pub w1: f32,
    /// `β₂`.
    pub b2: f32,
    /// `1 - β₂`.
    pub w2: f32,
    /// `-lr / (1 - β₁ᵏ)`.
    pub neg_step_size: f32,
    /// `√(1 - β₂ᵏ)`.
    pub bc2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
}

/// AdamW state: hyper-parameters, the step count and the two moment estimates per parameter, on the
/// parameters' backend.
#[derive(Clone, Debug)]
pub struct AdamW<B: Backend = Cpu> {
    // Hyper-parameters are f64 as PyTorch's are Python floats: `1 - 0.999` must be formed from the exact 0.999,
    // not from its f32 rounding, to match PyTorch's update to the last bit.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken so far.
    pub step: u64,
    /// First moments `m`, one per parameter.
    pub exp_avg: Vec<Tensor<B>>,
    /// Second moments `v`, one per parameter.
    pub exp_avg_sq: Vec<Tensor<B>>,
    /// The arenas of `exp_avg` and `exp_avg_sq` on a GPU, laid out as the parameters' ([`crate::arena`]).
    pub(crate) arenas: (Arena<B>, Arena<B>),
}

impl AdamW {
    /// PyTorch's defaults besides `lr`: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn new(params: &Params, lr: f64) -> Self {
        let zeros = || params.tensors().iter().map(|t| Tensor::zeros(t.shape())).collect();
        AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 0,
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            arenas: Default::default(),
        }
    }
}

impl<B: Backend> AdamW<B> {
    /// A copy of this state with its moments on `backend` (the host is `&Cpu`), in an arena placed in `order` (the
    /// parameters' [`Params::placement`]) where the backend has views.
    pub fn to_backend<C: Backend>(&self, backend: &C, order: &[usize]) -> Result<AdamW<C>> {
        let copy = |ts: &[Tensor<B>]| {
            let host = ts.iter().map(|t| t.to_backend(&Cpu)).collect::<Result<Vec<_>>>()?;
            arena::place(backend, &host, order)
        };
        let ((m_arena, exp_avg), (v_arena, exp_avg_sq)) = (copy(&self.exp_avg)?, copy(&self.exp_avg_sq)?);
        let AdamW { lr, beta1, beta2, eps, weight_decay, step, .. } = *self;
        let arenas = (m_arena, v_arena);
        Ok(AdamW { lr, beta1, beta2, eps, weight_decay, step, exp_avg, exp_avg_sq, arenas })
    }

    /// The f32 scalars of update number `k` (from 1), formed in f64 as Python does and then rounded: shared by
    /// [`AdamW::step`] and the fused GPU kernel, so both use the same bits.
    pub fn scalars(&self, k: u64) -> AdamWScalars {
        let (lr, b1, b2) = (self.lr, self.beta1, self.beta2);
        let k = k as i32;
        AdamWScalars {
            decay: (1.0 - lr * self.weight_decay) as f32,
            w1: (1.0 - b1) as f32,
            b2: b2 as f32,
            w2: (1.0 - b2) as f32,
            neg_step_size: (-(lr / (1.0 - b1.powi(k)))) as f32,
            bc2_sqrt: (1.0 - b2.powi(k)).sqrt() as f32,
            eps: self.eps as f32,
        }
    }

    /// One update, step `k = step + 1`, in PyTorch's f32 order:
    /// `p ← p·(1 - lr·wd)`; `m ← m + (1-β₁)(g - m)`; `v ← β₂v + (1-β₂)g²`;
    /// `p ← p - (lr/(1-β₁ᵏ))·m / (√v/√(1-β₂ᵏ) + eps)`. Scalars are formed in f64, as Python does, then rounded;
    /// the update runs as one fused [`OptimOps::adamw_step`](super::OptimOps::adamw_step) per tensor.
    pub fn step(&mut self, params: &mut Params<B>, grads: &Grads<B>) -> Result<()> {
        self.step += 1;
        let s = self.scalars(self.step);
        let be = params.backend().clone();
        let moments = self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut());
        for ((p, (m, v)), g) in params.tensors_mut().iter_mut().zip(moments).zip(&grads.0) {
            be.adamw_step(&s, p.buf_mut(), m.buf_mut(), v.buf_mut(), g.buf())?;
        }
        Ok(())
    }
}
