//! The losses on the CPU.
//!
//! Mean-squared error `L = (1/N)·Σ (p - t)²`, summed in f64 in order, and `dL/dp = (2/N)·(p - t)·dL`.
//!
//! Cross-entropy over logits `z: [n, classes]` with integer labels `y`:
//! `L = -(1/n) Σ_i log_softmax(z_i)[y_i] = (1/n) Σ_i (lse_i - z_i[y_i])`, `lse_i = ln Σ_j e^{z_ij}`, and
//! `dL/dz_ij = (e^{z_ij - lse_i} - [j = y_i]) / n`.

use super::LossOps;
use crate::backend::Cpu;
use crate::desc::LogitsDesc;
use crate::error::{Error, Result};
use rayon::prelude::*;

impl LossOps for Cpu {
    fn mse(&self, p: &Vec<f32>, t: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        match &mut out[..] {
            [l] => *l = mse(p, t),
            _ => return Err(Error::Shape(format!("mse: a loss of {} words, expected one", out.len()))),
        }
        Ok(())
    }
    fn mse_backward(&self, p: &Vec<f32>, t: &Vec<f32>, gloss: &Vec<f32>, dp: &mut Vec<f32>) -> Result<()> {
        let Some(&gloss) = gloss.first() else { return Err(Error::Shape("mse_backward: an empty gradient".into())) };
        mse_backward(p, t, gloss, dp);
        Ok(())
    }
    fn cross_entropy(&self, d: LogitsDesc, z: &Vec<f32>, labels: &Vec<u32>) -> Result<(Vec<f32>, Vec<f32>)> {
        if let Some(bad) = labels.iter().find(|&&y| y as usize >= d.classes) {
            return Err(Error::Arg(format!("cross_entropy: label {bad} out of range 0..{}", d.classes)));
        }
        let mut lse = vec![0.0; d.n];
        let loss = cross_entropy(z, labels, d.classes, &mut lse);
        Ok((vec![loss], lse))
    }
    fn cross_entropy_backward(
        &self,
        d: LogitsDesc,
        z: &Vec<f32>,
        (labels, lse): (&Vec<u32>, &Vec<f32>),
        gloss: f32,
        dz: &mut Vec<f32>,
    ) -> Result<()> {
        cross_entropy_backward(z, labels, lse, gloss, d.classes, dz);
        Ok(())
    }
}

/// Mean-squared error `L = (1/N)·Σ (p - t)²`, summed in f64 in order (a parallel sum's order, and so its
/// last bit, would depend on scheduling).
pub fn mse(p: &[f32], t: &[f32]) -> f32 {
    let s: f64 = p.iter().zip(t).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
    (s / p.len() as f64) as f32
}

/// `dL/dp = (2/N)·(p - t)·dL`.
pub fn mse_backward(p: &[f32], t: &[f32], gloss: f32, dp: &mut [f32]) {
    let scale = 2.0 * gloss / p.len() as f32;
    dp.par_iter_mut().zip(p.par_iter().zip(t.par_iter())).for_each(|(o, (&a, &b))| *o = scale * (a - b));
}

/// `ln Σ_j e^{z_j}` of one row as `m + ln Σ_j e^{z_j - m}`, `m = max_j z_j`, so that no term overflows and the
/// largest is exactly 1; summed in order in f32, as the GPU kernel does.
pub fn log_sum_exp(z: &[f32]) -> f32 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = z.iter().map(|&v| (v - m).exp()).sum();
    m + s.ln()
}

/// The mean cross-entropy `L = (1/n) Σ_i (lse_i - z_i[y_i])` of `z: [n, classes]` against `labels` (`n` class
/// indices); writes each row's `lse_i` for the backward. The row losses are added in f64, in order.
pub fn cross_entropy(z: &[f32], labels: &[u32], classes: usize, lse: &mut [f32]) -> f32 {
    lse.par_iter_mut().zip(z.par_chunks(classes)).for_each(|(l, row)| *l = log_sum_exp(row));
    let total: f64 = z.chunks(classes).zip(labels).zip(&*lse).map(|((row, &y), &l)| (l - row[y as usize]) as f64).sum();
    (total / labels.len() as f64) as f32
}

/// `dz[i, j] = (e^{z_ij - lse_i} - [j = y_i])·gloss/n`: softmax minus one-hot, times `dL/dL` over the batch size.
pub fn cross_entropy_backward(z: &[f32], labels: &[u32], lse: &[f32], gloss: f32, classes: usize, dz: &mut [f32]) {
    let scale = gloss / labels.len() as f32;
    let rows = dz.par_chunks_mut(classes).zip(z.par_chunks(classes)).zip(labels.par_iter().zip(lse.par_iter()));
    rows.for_each(|((d, row), (&y, &l))| {
        for (j, (d, &v)) in d.iter_mut().zip(row).enumerate() {
            let onehot = if j == y as usize { 1.0 } else { 0.0 };
            *d = ((v - l).exp() - onehot) * scale;
        }
    });
}
