//! The optimiser's CPU kernels: elementwise updates in parallel chunks (the split cannot change a result), and the
//! global gradient norm summed per tensor in f64, then over tensors in the store's order.

use super::{AdamWScalars, OptimOps};
use crate::backend::Cpu;
use crate::error::Result;
use rayon::prelude::*;

/// Elements per parallel task of the elementwise optimiser updates: large enough to amortise a task, small
/// enough to spread one big tensor over every core. The updates are elementwise, so the split cannot change
/// a result.
const CHUNK: usize = 1 << 14;

impl OptimOps for Cpu {
    fn clip_grad_norm(&self, grads: &mut [&mut Vec<f32>], max_norm: f32) -> Result<(f32, f32)> {
        // Per-tensor sums of squares in f64 (in parallel), then their sum in the store's order.
        let sq: Vec<f64> = grads.par_iter().map(|g| g.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
        let total = sq.iter().sum::<f64>().sqrt() as f32;
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            grads.par_iter_mut().for_each(|g| g.iter_mut().for_each(|v| *v *= coef));
        }
        Ok((total, coef))
    }
    fn adamw_step(
        &self,
        s: &AdamWScalars,
        p: &mut Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        g: &Vec<f32>,
    ) -> Result<()> {
        let &AdamWScalars { decay, w1, b2, w2, neg_step_size, bc2_sqrt, eps } = s;
        let chunks =
            p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK));
        chunks.for_each(|(((p, m), v), g)| {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                *p *= decay;
                *m += w1 * (g - *m);
                *v = *v * b2 + w2 * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += neg_step_size * *m / denom;
            }
        });
        Ok(())
    }
    fn ema_update(&self, d: f32, alpha: f32, shadow: &mut Vec<f32>, p: &Vec<f32>) -> Result<()> {
        shadow.par_chunks_mut(CHUNK).zip(p.par_chunks(CHUNK)).for_each(|(s, p)| {
            s.iter_mut().zip(p).for_each(|(s, &p)| *s = *s * d + alpha * p);
        });
        Ok(())
    }
}
