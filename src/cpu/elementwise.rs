//! Small kernels: SiLU, ReLU, linear layers, channel concat, mean-squared error.

use super::gemm::{sgemm, Mat};
use rayon::prelude::*;

/// `e^x` to within ~2 ulp, branch-free so that loops over slices vectorise (libm's `expf` is a call per element,
/// and was 5-10% of a training step). Cody–Waite reduction `x = n·ln2 + r`, `|r| <= ln2/2`, then the degree-7
/// Taylor polynomial of `e^r` (truncation error `r^8/8! < 6e-9` relative), scaled by `2^n` through the exponent
/// bits. Inputs are clamped to [-87.3, 88.7], where `e^x` stays a normal f32.
///
/// `2^n` is built from the bits of `t = x·log2(e) + 1.5·2^23`, whose low mantissa bits hold `n` in two's
/// complement: `(bits(t) + 127) << 23` keeps just the 9 bits `n + 127` in the exponent field. (`n as i32` would be
/// a saturating float-to-int conversion, which the compiler cannot vectorise: it made the SiLU loops scalar.)
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split so that n·LN2_HI is exact for |n| < 2^10
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to the nearest integer
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// `σ(x) = 1 / (1 + e^{-x})`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// `d silu(x)/dx = σ(x)·(1 + x·(1 - σ(x)))`, where `silu(x) = x·σ(x)`.
#[inline]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// `y = x·σ(x)` elementwise.
pub fn silu_forward(x: &[f32], y: &mut [f32]) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = v * sigmoid(v));
}

/// `dx = dy·silu'(x)` elementwise.
pub fn silu_backward(x: &[f32], gy: &[f32], dx: &mut [f32]) {
    dx.par_iter_mut().zip(x.par_iter().zip(gy.par_iter())).for_each(|(o, (&v, &g))| *o = g * silu_grad(v));
}

/// `y = max(x, 0)` elementwise (a NaN stays NaN, as in `torch.relu`).
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = if v < 0.0 { 0.0 } else { v });
}

/// `dx = dy·[x > 0]` elementwise (the subgradient 0 at x = 0, as PyTorch takes it).
pub fn relu_backward(x: &[f32], gy: &[f32], dx: &mut [f32]) {
    dx.par_iter_mut().zip(x.par_iter().zip(gy.par_iter())).for_each(|(o, (&v, &g))| *o = if v > 0.0 { g } else { 0.0 });
}

/// Linear layer `y[b, o] = Σ_i x[b, i]·W[o, i] + bias[o]` (PyTorch's `x Wᵀ + b`).
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    batch: usize,
    fin: usize,
    fout: usize,
    y: &mut [f32],
) {
    sgemm(batch, fout, fin, Mat::n(x), Mat::t(w), y, false, rayon::current_num_threads());
    if let Some(b) = bias {
        y.chunks_mut(fout).for_each(|row| row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb));
    }
}

/// Linear backward: `dx = dy·W`, `dW = dyᵀ·x`, `db = Σ_b dy`. Only the requested outputs are computed.
pub fn linear_backward(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    batch: usize,
    fin: usize,
    fout: usize,
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
) {
    let threads = rayon::current_num_threads();
    if let Some(dx) = dx {
        sgemm(batch, fin, fout, Mat::n(gy), Mat::n(w), dx, false, threads);
    }
    if let Some(dw) = dw {
        sgemm(fout, fin, batch, Mat::t(gy), Mat::n(x), dw, false, threads);
    }
}

/// Column sums of a `[rows, cols]` matrix (the bias gradient of a linear layer), accumulated in f64.
pub fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut acc = vec![0.0f64; cols];
    m.chunks(cols).for_each(|row| acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64));
    acc.into_iter().map(|v| v as f32).collect()
}

/// Concatenates `a: [n, ca, plane]` and `b: [n, cb, plane]` along channels into `[n, ca + cb, plane]`.
pub fn concat_channels(a: &[f32], b: &[f32], ca: usize, cb: usize, plane: usize, out: &mut [f32]) {
    out.par_chunks_mut((ca + cb) * plane).enumerate().for_each(|(i, o)| {
        o[..ca * plane].copy_from_slice(&a[i * ca * plane..(i + 1) * ca * plane]);
        o[ca * plane..].copy_from_slice(&b[i * cb * plane..(i + 1) * cb * plane]);
    });
}

/// The inverse of [`concat_channels`]: splits `g: [n, ca + cb, plane]` into its two channel blocks.
pub fn split_channels(g: &[f32], n: usize, ca: usize, cb: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut a, mut b) = (Vec::with_capacity(n * ca * plane), Vec::with_capacity(n * cb * plane));
    for o in g.chunks((ca + cb) * plane) {
        a.extend_from_slice(&o[..ca * plane]);
        b.extend_from_slice(&o[ca * plane..]);
    }
    (a, b)
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

#[cfg(test)]
mod tests {
    use super::exp_fast;

    #[test]
    fn exp_fast_is_within_a_few_ulp() {
        // Over the whole range a sigmoid or SiLU can see; 3e-7 relative is ~2.5 ulp.
        let mut worst = 0.0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            let exact = (x as f64).exp();
            worst = worst.max(((exp_fast(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1000.0) > 0.0 && exp_fast(-1000.0) < 1e-37);
        assert!(exp_fast(f32::NAN).is_nan() || exp_fast(f32::NAN) > 0.0);
    }
}
