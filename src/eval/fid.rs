//! The Fréchet distance between two sets of feature vectors, each summarised by a Gaussian (Heusel et al. 2017):
//!
//! `FID = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^{1/2})`
//!
//! with `μ` the mean and `Σ` the unbiased covariance (`1/(n−1)`, as `numpy.cov` in the usual FID code) of the
//! features. Everything past the f32 features is f64.
//!
//! FID estimated from `n` samples is biased upward, roughly by a term in `1/n`: two sets of *real* images of
//! size `n` do not score 0. So a FID is only comparable with another at the same `n`, and is reported beside the
//! real-versus-real score at that `n` (the floor).

use super::linalg::{trace, trace_sqrt_product};
use crate::error::{Error, Result};

/// Mean and covariance of `n` feature vectors of dimension `dim`.
#[derive(Clone, Debug)]
pub struct GaussianStats {
    pub n: usize,
    pub dim: usize,
    /// `μ = (1/n) Σ_i f_i`.
    pub mean: Vec<f64>,
    /// `Σ = 1/(n−1) Σ_i (f_i − μ)(f_i − μ)ᵀ`, row-major `dim × dim`.
    pub cov: Vec<f64>,
}

impl GaussianStats {
    /// The statistics of `features`, row-major `[n, dim]`; needs `n ≥ 2`.
    pub fn from_features(features: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(Error::Shape(format!("{} feature values do not split into vectors of {dim}", features.len())));
        }
        let n = features.len() / dim;
        if n < 2 {
            return Err(Error::Arg(format!("a covariance needs at least 2 feature vectors, got {n}")));
        }
        let mut mean = vec![0.0f64; dim];
        for f in features.chunks_exact(dim) {
            mean.iter_mut().zip(f).for_each(|(m, &x)| *m += x as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // Centre first, then accumulate: the one-pass `E[xxᵀ] − μμᵀ` loses digits when features have a large mean.
        let mut cov = vec![0.0f64; dim * dim];
        let mut centred = vec![0.0f64; dim];
        for f in features.chunks_exact(dim) {
            centred.iter_mut().zip(f).zip(&mean).for_each(|((c, &x), m)| *c = x as f64 - m);
            for i in 0..dim {
                let ci = centred[i];
                // Upper triangle only; mirrored below.
                cov[i * dim + i..(i + 1) * dim].iter_mut().zip(&centred[i..]).for_each(|(s, &cj)| *s += ci * cj);
            }
        }
        let scale = 1.0 / (n - 1) as f64;
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] * scale;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(GaussianStats { n, dim, mean, cov })
    }
}

/// `‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁Σ₂)^{1/2})` (see the module docs).
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    if a.dim != b.dim {
        return Err(Error::Shape(format!("features of dimension {} and {} cannot be compared", a.dim, b.dim)));
    }
    let d = a.dim;
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y).powi(2)).sum();
    let cross = trace_sqrt_product(&a.cov, &b.cov, d);
    // Rounding can leave a tiny negative number when the two sets are the same; the distance is ≥ 0.
    Ok((mean_term + trace(&a.cov, d) + trace(&b.cov, d) - 2.0 * cross).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` vectors whose coordinate `k` is `mean[k] + sd[k]·z` with z a deterministic ±1 pattern that makes
    /// the coordinates exactly uncorrelated (columns of a Hadamard-like sign matrix) and of exact variance.
    fn diagonal_gaussian_sample(mean: &[f32], sd: &[f32], n: usize) -> Vec<f32> {
        let dim = mean.len();
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            for k in 0..dim {
                // Bit k of i (Walsh functions): mutually orthogonal and balanced over n = 2^m rows.
                let sign = if (i >> k) & 1 == 0 { 1.0 } else { -1.0 };
                out.push(mean[k] + sd[k] * sign);
            }
        }
        out
    }

    #[test]
    fn matches_the_closed_form_for_diagonal_gaussians() {
        // For diagonal covariances the formula reduces to Σ_k (μ1−μ2)² + (s1 − s2)² (standard deviations s):
        // an independent expression that involves no matrix square root.
        let n = 64; // 2^6 rows make the six ±1 columns exactly balanced and orthogonal
        let (m1, s1) = ([0.5f32, -1.0, 2.0, 0.0, 0.25, 1.0], [1.0f32, 0.5, 2.0, 0.1, 1.5, 0.75]);
        let (m2, s2) = ([0.0f32, -1.5, 2.5, 0.5, 0.25, 0.0], [2.0f32, 0.5, 1.0, 0.3, 0.5, 1.25]);
        let a = GaussianStats::from_features(&diagonal_gaussian_sample(&m1, &s1, n), 6).unwrap();
        let b = GaussianStats::from_features(&diagonal_gaussian_sample(&m2, &s2, n), 6).unwrap();
        // The sample variance with 1/(n−1) of ±s is s²·n/(n−1).
        let r = (n as f64 / (n - 1) as f64).sqrt();
        let want: f64 =
            (0..6).map(|k| (m1[k] as f64 - m2[k] as f64).powi(2) + (r * (s1[k] as f64 - s2[k] as f64)).powi(2)).sum();
        let got = frechet_distance(&a, &b).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "FID {got} vs closed form {want}");
    }

    #[test]
    fn a_set_against_itself_scores_zero() {
        let f: Vec<f32> = (0..50 * 8).map(|i| ((i * 37 % 101) as f32 / 17.0).sin()).collect();
        let s = GaussianStats::from_features(&f, 8).unwrap();
        let fid = frechet_distance(&s, &s).unwrap();
        // The cross term is computed through two eigen-decompositions; 1e-9 of tr(Σ) is rounding level.
        assert!(fid < 1e-9 * (2.0 * trace(&s.cov, 8)), "FID of a set with itself is {fid}");
    }

    #[test]
    fn too_few_vectors_or_ragged_input_is_an_error() {
        assert!(GaussianStats::from_features(&[1.0, 2.0], 2).is_err());
        assert!(GaussianStats::from_features(&[1.0, 2.0, 3.0], 2).is_err());
    }
}
