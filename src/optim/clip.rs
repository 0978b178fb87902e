//! `torch.nn.utils.clip_grad_norm_`.

use crate::backend::Backend;
use crate::error::Result;
use crate::params::Grads;

/// Clips all gradients together: `total = ‖(‖g_1‖₂, …, ‖g_k‖₂)‖₂`, `coef = min(1, max_norm / (total + 1e-6))`,
/// every `g *= coef`. Returns `(total, coef)`. On the CPU the norms are accumulated in f64, in a fixed order; on
/// a GPU in f32 in two deterministic passes ([`OptimOps::clip_grad_norm`](super::OptimOps::clip_grad_norm)).
pub fn clip_grad_norm<B: Backend>(grads: &mut Grads<B>, max_norm: f32) -> Result<(f32, f32)> {
    let Some(backend) = grads.0.first().map(|g| g.backend().clone()) else { return Ok((0.0, 1.0)) };
    let mut bufs: Vec<&mut B::Buf> = grads.0.iter_mut().map(|g| g.buf_mut()).collect();
    backend.clip_grad_norm(&mut bufs, max_norm)
}
