//! Group normalisation (Wu & He 2018), optionally fused with a SiLU, forward and backward.
//!
//! For image `n` and group `g` (its `C/G` channels times `H·W` pixels, `M` values):
//! `μ = mean(x)`, `σ² = mean((x-μ)²)` (biased), `r = 1/sqrt(σ² + eps)`, `x̂ = (x-μ)·r`,
//! `z = γ_c·x̂ + β_c`, and `y = z` or `y = silu(z)` when fused. Fusing saves one activation per ResBlock: the
//! backward recomputes `z` from the input and the saved `(μ, r)` instead of keeping it.

use super::elementwise::{sigmoid, silu_grad};
use rayon::prelude::*;

/// Dimensions of a group norm: `n` images, `c` channels in `groups` groups, `plane = H·W`.
#[derive(Clone, Copy, Debug)]
pub struct NormDims {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
    pub groups: usize,
}

impl NormDims {
    fn group_len(&self) -> usize {
        self.c / self.groups * self.plane
    }
}

/// Forward: writes `y` and returns the per-(image, group) statistics `(mean, rstd)`, each `[n·groups]`.
pub fn group_norm_forward(d: NormDims, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, silu: bool, y: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let (glen, cg) = (d.group_len(), d.c / d.groups);
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(glen)
        .zip(x.par_chunks(glen))
        .enumerate()
        .map(|(ng, (yg, xg))| {
            // f64 sums: a group holds up to 8·32·32 = 8192 values, and a plain f32 sum would lose ~1e-4 relative.
            let mean = xg.iter().map(|&v| v as f64).sum::<f64>() / glen as f64;
            let var = xg.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / glen as f64;
            let (mean, rstd) = (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32);
            let c0 = (ng % d.groups) * cg;
            for (j, (yc, xc)) in yg.chunks_mut(d.plane).zip(xg.chunks(d.plane)).enumerate() {
                let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
                for (o, &v) in yc.iter_mut().zip(xc) {
                    let z = (v - mean) * rstd * ga + be;
                    *o = if silu { z * sigmoid(z) } else { z };
                }
            }
            (mean, rstd)
        })
        .collect();
    stats.into_iter().unzip()
}

/// Backward for `gy = dL/dy`: writes `dx` (when asked) and returns `(dγ, dβ)`, each `[c]`.
///
/// With `gz = gy·silu'(z)` (or `gy`), `dγ_c = Σ gz·x̂`, `dβ_c = Σ gz`, and per group
/// `dx = r·(gz·γ - mean(gz·γ) - x̂·mean(gz·γ·x̂))`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(d: NormDims, x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], rstd: &[f32], silu: bool, gy: &[f32], dx: Option<&mut [f32]>) -> (Vec<f32>, Vec<f32>) {
    let (glen, cg) = (d.group_len(), d.c / d.groups);
    // Per (image, group): the partial dγ, dβ of its channels, then reduced over images in order.
    let per_group = |ng: usize, dxg: Option<&mut [f32]>| -> Vec<(f32, f32)> {
        let (m, r) = (mean[ng], rstd[ng]);
        let c0 = (ng % d.groups) * cg;
        let xg = &x[ng * glen..(ng + 1) * glen];
        let gyg = &gy[ng * glen..(ng + 1) * glen];
        let mut chan = Vec::with_capacity(cg);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for j in 0..cg {
            let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
            let (mut dg, mut db) = (0.0f64, 0.0f64);
            for p in j * d.plane..(j + 1) * d.plane {
                let xh = (xg[p] - m) * r;
                let gz = if silu { gyg[p] * silu_grad(xh * ga + be) } else { gyg[p] };
                dg += (gz * xh) as f64;
                db += gz as f64;
            }
            s1 += db * ga as f64;
            s2 += dg * ga as f64;
            chan.push((dg as f32, db as f32));
        }
        if let Some(dxg) = dxg {
            let (a1, a2) = ((s1 / glen as f64) as f32, (s2 / glen as f64) as f32);
            for j in 0..cg {
                let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
                for p in j * d.plane..(j + 1) * d.plane {
                    let xh = (xg[p] - m) * r;
                    let gz = if silu { gyg[p] * silu_grad(xh * ga + be) } else { gyg[p] };
                    dxg[p] = r * (gz * ga - a1 - xh * a2);
                }
            }
        }
        chan
    };
    let parts: Vec<Vec<(f32, f32)>> = match dx {
        Some(dx) => dx.par_chunks_mut(glen).enumerate().map(|(ng, dxg)| per_group(ng, Some(dxg))).collect(),
        None => (0..d.n * d.groups).into_par_iter().map(|ng| per_group(ng, None)).collect(),
    };
    let (mut dgamma, mut dbeta) = (vec![0.0f64; d.c], vec![0.0f64; d.c]);
    for (ng, chan) in parts.iter().enumerate() {
        let c0 = (ng % d.groups) * cg;
        for (j, &(dg, db)) in chan.iter().enumerate() {
            dgamma[c0 + j] += dg as f64;
            dbeta[c0 + j] += db as f64;
        }
    }
    (dgamma.into_iter().map(|v| v as f32).collect(), dbeta.into_iter().map(|v| v as f32).collect())
}
