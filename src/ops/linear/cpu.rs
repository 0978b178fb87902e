//! Linear layers on the CPU, as GEMMs (`super::gemm`).

use super::gemm::{sgemm, Mat};
use super::LinearOps;
use crate::backend::Cpu;
use crate::desc::{LayerGrads, LinearDesc};
use crate::error::Result;

impl LinearOps for Cpu {
    fn linear_forward(
        &self,
        d: LinearDesc,
        x: &Vec<f32>,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        linear_forward(x, w, bias.map(|b| &b[..]), d, y);
        Ok(())
    }
    fn linear_backward(
        &self,
        d: LinearDesc,
        x: &Vec<f32>,
        w: &Vec<f32>,
        gy: &Vec<f32>,
        grads: LayerGrads<Vec<f32>>,
    ) -> Result<()> {
        linear_backward(x, w, gy, d, grads.map(|v| &mut v[..]));
        Ok(())
    }
}

/// Linear layer `y[b, o] = Σ_i x[b, i]·W[o, i] + bias[o]` (PyTorch's `x Wᵀ + b`).
pub fn linear_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, d: LinearDesc, y: &mut [f32]) {
    let LinearDesc { batch, fin, fout } = d;
    sgemm((batch, fout, fin), Mat::n(x), Mat::t(w), y, false, rayon::current_num_threads());
    if let Some(b) = bias {
        y.chunks_mut(fout).for_each(|row| row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb));
    }
}

/// Linear backward: `dx = dy·W`, `dW = dyᵀ·x`; only the requested outputs are computed (`db = Σ_b dy` is
/// `ReduceOps::column_sums`).
pub fn linear_backward(x: &[f32], w: &[f32], gy: &[f32], d: LinearDesc, grads: LayerGrads) {
    let LinearDesc { batch, fin, fout } = d;
    let threads = rayon::current_num_threads();
    if let Some(dx) = grads.dx {
        sgemm((batch, fin, fout), Mat::n(gy), Mat::n(w), dx, false, threads);
    }
    if let Some(dw) = grads.dw {
        sgemm((fout, fin, batch), Mat::t(gy), Mat::n(x), dw, false, threads);
    }
}
