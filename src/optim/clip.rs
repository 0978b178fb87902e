//! `torch.nn.utils.clip_grad_norm_`.

use crate::params::Grads;
use rayon::prelude::*;

/// Clips all gradients together: `total = ‖(‖g_1‖₂, …, ‖g_k‖₂)‖₂`, `coef = min(1, max_norm / (total + 1e-6))`,
/// every `g *= coef`. Returns `(total, coef)`. Norms are accumulated in f64, in a fixed order.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f32) -> (f32, f32) {
    let sq: Vec<f64> = grads.0.par_iter().map(|g| g.data().iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
    let total = sq.iter().sum::<f64>().sqrt() as f32;
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        grads.0.par_iter_mut().for_each(|g| g.data_mut().iter_mut().for_each(|v| *v *= coef));
    }
    (total, coef)
}
