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

/// Rows per GEMM of a linear layer's forward.
const ROWS: usize = 8;

/// Linear layer `y[b, o] = Σ_i x[b, i]·W[o, i] + bias[o]` (PyTorch's `x Wᵀ + b`).
///
/// Row by row the same bits whatever the batch: the `gemm` crate's kernels for a few rows depend on how many there
/// are (for 48 or more outputs), so the rows go through GEMMs of [`ROWS`] rows each, the last one padded with
/// zeros. A guided sampler's doubled batch then gives each image the plain call's prediction, to the bit.
pub fn linear_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, d: LinearDesc, y: &mut [f32]) {
    let LinearDesc { batch, fin, fout } = d;
    let threads = rayon::current_num_threads();
    let full = batch / ROWS * ROWS;
    for (xs, ys) in x[..full * fin].chunks(ROWS * fin).zip(y.chunks_mut(ROWS * fout)) {
        sgemm((ROWS, fout, fin), Mat::n(xs), Mat::t(w), ys, false, threads);
    }
    if full < batch {
        let mut xs = vec![0.0; ROWS * fin];
        xs[..(batch - full) * fin].copy_from_slice(&x[full * fin..batch * fin]);
        let mut ys = vec![0.0; ROWS * fout];
        sgemm((ROWS, fout, fin), Mat::n(&xs), Mat::t(w), &mut ys, false, threads);
        y[full * fout..batch * fout].copy_from_slice(&ys[..(batch - full) * fout]);
    }
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
