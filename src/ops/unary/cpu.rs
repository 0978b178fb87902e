//! The CPU loops of the elementwise activations, one monomorphised loop per [`UnaryKind`] so that each
//! vectorises; and the branch-free `exp` they (and the fused GroupNorm+SiLU) use.

use super::{UnaryKind, UnaryOps};
use crate::backend::Cpu;
use crate::error::Result;
use rayon::prelude::*;

/// `e^x` to within ~2 ulp, branch-free so that loops over slices vectorise (libm's `expf` is a call per
/// element). Cody–Waite reduction `x = n·ln2 + r`, `|r| <= ln2/2`, then the degree-7
/// Taylor polynomial of `e^r` (truncation error `r^8/8! < 6e-9` relative), scaled by `2^n` through the exponent
/// bits. Inputs are clamped to [-87.3, 88.7], where `e^x` stays a normal f32.
///
/// `2^n` is built from the bits of `t = x·log2(e) + 1.5·2^23`, whose low mantissa bits hold `n` in two's
/// complement: `(bits(t) + 127) << 23` keeps just the 9 bits `n + 127` in the exponent field. (`n as i32` would be
/// a saturating float-to-int conversion, which the compiler cannot vectorise.)
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

impl UnaryOps for Cpu {
    fn unary_forward(&self, kind: UnaryKind, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        match kind {
            UnaryKind::Silu => map(x, y, |v| UnaryKind::Silu.forward(v)),
            UnaryKind::Relu => map(x, y, |v| UnaryKind::Relu.forward(v)),
        }
        Ok(())
    }
    fn unary_backward(&self, kind: UnaryKind, x: &Vec<f32>, gy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        match kind {
            UnaryKind::Silu => zip_map(x, gy, dx, |v, g| UnaryKind::Silu.backward(v, g)),
            UnaryKind::Relu => zip_map(x, gy, dx, |v, g| UnaryKind::Relu.backward(v, g)),
        }
        Ok(())
    }
}

/// `y[i] = f(x[i])` in parallel.
#[inline(always)]
fn map(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    y.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = f(v));
}

/// `out[i] = f(x[i], g[i])` in parallel.
#[inline(always)]
fn zip_map(x: &[f32], g: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    out.par_iter_mut().zip(x.par_iter().zip(g.par_iter())).for_each(|(o, (&v, &g))| *o = f(v, g));
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
