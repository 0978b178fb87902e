//! Group normalisation (Wu & He 2018), optionally fused with a SiLU, forward and backward.
//!
//! For image `n` and group `g` (its `C/G` channels times `H·W` pixels, `M` values):
//! `μ = mean(x)`, `σ² = mean((x-μ)²)` (biased), `r = 1/sqrt(σ² + eps)`, `x̂ = (x-μ)·r`,
//! `z = γ_c·x̂ + β_c`, and `y = z` or `y = silu(z)` when fused. Fusing saves one activation per ResBlock: the
//! backward recomputes `z` from the input and the saved `(μ, r)` instead of keeping it.
//!
//! Sums run in 8 f32 lanes over one channel plane (≤ 1024 values, so a lane adds ≤ 128 terms and loses < 1e-5
//! relative) and are combined across planes in f64; the inner loops are branch-free so they vectorise.

use super::NormOps;
use crate::backend::Cpu;
use crate::desc::NormDesc;
use crate::error::{Error, Result};
use crate::ops::cpu::wide;
use crate::ops::unary::sigmoid;
use rayon::prelude::*;

impl NormOps for Cpu {
    fn group_norm_forward(
        &self,
        d: NormDesc,
        x: &Vec<f32>,
        (gamma, beta): (&Vec<f32>, &Vec<f32>),
        y: &mut Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(group_norm_forward(d, x, gamma, beta, y))
    }
    fn group_norm_backward(
        &self,
        d: NormDesc,
        (x, gamma, beta): (&Vec<f32>, &Vec<f32>, &Vec<f32>),
        (mean, rstd): (&Vec<f32>, &Vec<f32>),
        gy: &Vec<f32>,
        dx: Option<(&mut Vec<f32>, bool)>,
        (dgamma, dbeta): (&mut Vec<f32>, &mut Vec<f32>),
    ) -> Result<()> {
        if dgamma.len() != d.c || dbeta.len() != d.c {
            let lens = (dgamma.len(), dbeta.len());
            return Err(Error::Shape(format!("group_norm dgamma, dbeta: {lens:?} words, expected {} each", d.c)));
        }
        match dx {
            // The kernel keeps gz in dx between its passes, so an accumulated gradient is made apart and added.
            Some((acc, true)) => {
                let mut dx = vec![0.0; acc.len()];
                group_norm_backward(d, (x, gamma, beta), (mean, rstd), gy, Some(&mut dx), (dgamma, dbeta));
                acc.iter_mut().zip(&dx).for_each(|(a, v)| *a += v);
            }
            dx => {
                group_norm_backward(d, (x, gamma, beta), (mean, rstd), gy, dx.map(|(v, _)| &mut v[..]), (dgamma, dbeta))
            }
        }
        Ok(())
    }
}

/// `Σ f(a[i], b[i])` over `i < a.len()` (`b` at least as long), in 8 f32 lanes (lane `l` adds the terms
/// `i ≡ l mod 8`), returned as f64. Whole slices of 8, not indices, so the loop has no bounds checks and
/// vectorises.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b[..a.len()].chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (ca, cb) in a8.zip(b8) {
        let (ca, cb): (&[f32; 8], &[f32; 8]) = (ca.try_into().unwrap(), cb.try_into().unwrap());
        for l in 0..8 {
            acc[l] += f(ca[l], cb[l]);
        }
    }
    acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
}

/// Forward: writes `y` and returns the per-(image, group) statistics `(mean, rstd)`, each `[n·groups]`.
pub fn group_norm_forward(d: NormDesc, x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32]) -> (Vec<f32>, Vec<f32>) {
    let (glen, cg, eps, silu) = (d.group_len(), d.c / d.groups, d.eps, d.silu);
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(glen)
        .zip(x.par_chunks(glen))
        .enumerate()
        .map(|(ng, (yg, xg))| {
            wide(
                #[inline(always)]
                || {
                    let sum: f64 = xg.chunks(d.plane).map(|p| lane_sum(p, p, |v, _| v)).sum();
                    let mean = (sum / glen as f64) as f32;
                    let ss: f64 = xg.chunks(d.plane).map(|p| lane_sum(p, p, |v, _| (v - mean) * (v - mean))).sum();
                    let rstd = (1.0 / (ss / glen as f64 + eps as f64).sqrt()) as f32;
                    let c0 = (ng % d.groups) * cg;
                    for (j, (yc, xc)) in yg.chunks_mut(d.plane).zip(xg.chunks(d.plane)).enumerate() {
                        let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
                        if silu {
                            yc.iter_mut().zip(xc).for_each(|(o, &v)| {
                                let z = (v - mean) * rstd * ga + be;
                                *o = z * sigmoid(z);
                            });
                        } else {
                            yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = (v - mean) * rstd * ga + be);
                        }
                    }
                    (mean, rstd)
                },
            )
        })
        .collect();
    stats.into_iter().unzip()
}

/// Backward for `gy = dL/dy`: writes `dx` (when asked) and `(dγ, dβ)` into `daffine`, each `[c]`.
///
/// With `gz = gy·silu'(z)` (or `gy`), `dγ_c = Σ gz·x̂`, `dβ_c = Σ gz`, and per group
/// `dx = r·(gz·γ - mean(gz·γ) - x̂·mean(gz·γ·x̂))`.
pub fn group_norm_backward(
    d: NormDesc,
    (x, gamma, beta): (&[f32], &[f32], &[f32]),
    (mean, rstd): (&[f32], &[f32]),
    gy: &[f32],
    dx: Option<&mut [f32]>,
    daffine: (&mut [f32], &mut [f32]),
) {
    let (glen, cg, silu) = (d.group_len(), d.c / d.groups, d.silu);
    // Per (image, group): the partial dγ, dβ of its channels, then reduced over images in order. `gz` is kept in
    // the dx buffer between the two passes so the sigmoid is evaluated once per element.
    let per_group = |ng: usize, buf: &mut [f32], want_dx: bool| -> Vec<(f32, f32)> {
        let (m, r) = (mean[ng], rstd[ng]);
        let c0 = (ng % d.groups) * cg;
        let xg = &x[ng * glen..(ng + 1) * glen];
        let gyg = &gy[ng * glen..(ng + 1) * glen];
        let mut chan = Vec::with_capacity(cg);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for j in 0..cg {
            let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
            let span = j * d.plane..(j + 1) * d.plane;
            let (xc, gc, gz) = (&xg[span.clone()], &gyg[span.clone()], &mut buf[span]);
            if silu {
                gz.iter_mut().zip(xc.iter().zip(gc)).for_each(|(o, (&v, &g))| {
                    let z = (v - m) * r * ga + be;
                    let s = sigmoid(z);
                    *o = g * s * (1.0 + z * (1.0 - s));
                });
            } else {
                gz.copy_from_slice(gc);
            }
            let gz = &*gz;
            let dg = lane_sum(gz, xc, |g, v| g * ((v - m) * r));
            let db = lane_sum(gz, gz, |g, _| g);
            s1 += db * ga as f64;
            s2 += dg * ga as f64;
            chan.push((dg as f32, db as f32));
        }
        if want_dx {
            let (a1, a2) = ((s1 / glen as f64) as f32, (s2 / glen as f64) as f32);
            for j in 0..cg {
                let ga = gamma[c0 + j];
                let span = j * d.plane..(j + 1) * d.plane;
                buf[span.clone()].iter_mut().zip(&xg[span]).for_each(|(o, &v)| {
                    let xh = (v - m) * r;
                    *o = r * (*o * ga - a1 - xh * a2);
                });
            }
        }
        chan
    };
    let parts: Vec<Vec<(f32, f32)>> = match dx {
        Some(dx) => dx.par_chunks_mut(glen).enumerate().map(|(ng, dxg)| per_group(ng, dxg, true)).collect(),
        None => (0..d.n * d.groups).into_par_iter().map(|ng| per_group(ng, &mut vec![0.0; glen], false)).collect(),
    };
    let (mut dgamma, mut dbeta) = (vec![0.0f64; d.c], vec![0.0f64; d.c]);
    for (ng, chan) in parts.iter().enumerate() {
        let c0 = (ng % d.groups) * cg;
        for (j, &(dg, db)) in chan.iter().enumerate() {
            dgamma[c0 + j] += dg as f64;
            dbeta[c0 + j] += db as f64;
        }
    }
    daffine.0.iter_mut().zip(dgamma).for_each(|(o, v)| *o = v as f32);
    daffine.1.iter_mut().zip(dbeta).for_each(|(o, v)| *o = v as f32);
}
