//! Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
//! SC 2011).
//!
//! Every draw is a pure function of `(seed, stream, index)`, with no state carried between draws. A CUDA kernel
//! that runs one thread per element can therefore reproduce the CPU draws exactly, and the results do not depend on
//! the thread count or the order of evaluation. The mapping onto Philox is
//! `key = [seed lo, seed hi]` and `counter = [index lo, index hi, stream lo, stream hi]`.

use rayon::prelude::*;

/// Philox multiplier for counter word 0.
const M0: u32 = 0xD251_1F53;
/// Philox multiplier for counter word 2.
const M1: u32 = 0xCD9E_8D57;
/// Weyl key increment for key word 0 (the golden ratio, 2^32 / phi).
const W0: u32 = 0x9E37_79B9;
/// Weyl key increment for key word 1 (sqrt(3) - 1, scaled to 2^32).
const W1: u32 = 0xBB67_AE85;

/// `(hi, lo)` of the 64-bit product `a * b`.
#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// The Philox4x32 bijection with 10 rounds. Each round maps
/// `(c0, c1, c2, c3) -> (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0))`,
/// and the key is bumped by `(W0, W1)` between rounds. This is the Random123 reference `philox4x32_R(10, ctr, key)`.
#[inline]
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, ctr[0]);
        let (hi1, lo1) = mulhilo(M1, ctr[2]);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
    }
    ctr
}

/// Four independent uniform 32-bit words for `(seed, stream, index)`:
/// `philox4x32_10([index lo, index hi, stream lo, stream hi], [seed lo, seed hi])`.
#[inline]
pub fn uniform_u32x4(seed: u64, stream: u64, index: u64) -> [u32; 4] {
    philox4x32_10(
        [index as u32, (index >> 32) as u32, stream as u32, (stream >> 32) as u32],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// One standard normal sample by Box–Muller on the first two words `w0, w1` of [`uniform_u32x4`]:
/// `u1 = ((w0 >> 8) + 1) * 2^-24` in (0, 1], `u2 = (w1 >> 8) * 2^-24` in [0, 1),
/// `z = sqrt(-2 ln u1) * cos(2 pi u2)`.
///
/// The uniforms are exact in f32, and `u1 > 0` means `ln` never sees 0. The rest is f32 `ln`, `sqrt` and `cos`,
/// so CUDA's `logf`/`sqrtf`/`cosf` agree to about 1 ulp. `|z| <= sqrt(48 ln 2) ≈ 5.77`, which truncates a tail
/// of probability about 8e-9.
#[inline]
pub fn normal(seed: u64, stream: u64, index: u64) -> f32 {
    const TWO_POW_M24: f32 = 1.0 / 16_777_216.0;
    let w = uniform_u32x4(seed, stream, index);
    let u1 = ((w[0] >> 8) + 1) as f32 * TWO_POW_M24;
    let u2 = (w[1] >> 8) as f32 * TWO_POW_M24;
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Fills `out` with standard normals: `out[i] = normal(seed, stream, i)`. The work runs in parallel, and because
/// each element depends only on its index, the result does not depend on the thread count.
pub fn fill_normal(seed: u64, stream: u64, out: &mut [f32]) {
    const CHUNK: usize = 4096;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = normal(seed, stream, (c * CHUNK + j) as u64);
        }
    });
}

/// An integer in `0..n` by Lemire's multiply-high: `(w0 * n) >> 32`, with `w0` the first word of
/// [`uniform_u32x4`]. The bias is at most `n / 2^32`, which is negligible for the sizes used here (n ≲ 1e5).
/// Returns 0 when `n == 0`.
#[inline]
pub fn uniform_below(seed: u64, stream: u64, index: u64, n: u32) -> u32 {
    ((uniform_u32x4(seed, stream, index)[0] as u64 * n as u64) >> 32) as u32
}

/// Shuffles `v` in place with Fisher–Yates. For `i = len-1, ..., 1` it swaps `v[i]` with `v[j]`, where
/// `j = (w * (i+1)) >> 64` and `w = (w1 << 32) | w0` is a 64-bit word of `uniform_u32x4(seed, stream, i)`.
/// The 64-bit multiply-high works for any length, and its bias is at most `len / 2^64`.
pub fn shuffle(seed: u64, stream: u64, v: &mut [usize]) {
    for i in (1..v.len()).rev() {
        let w = uniform_u32x4(seed, stream, i as u64);
        let w = ((w[1] as u64) << 32) | w[0] as u64;
        let j = ((w as u128 * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three philox4x32 10-round lines of Random123's `tests/kat_vectors`: counter, key, expected output.
    #[test]
    fn philox_known_answers() {
        let kat: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            ([0; 4], [0; 2], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
            ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (ctr, key, want) in kat {
            assert_eq!(philox4x32_10(ctr, key), want, "ctr {ctr:08x?} key {key:08x?}");
        }
        // The (seed, stream, index) packing: the pi vector is index 0x85a308d3_243f6a88,
        // stream 0x03707344_13198a2e, seed 0x299f31d0_a4093822.
        assert_eq!(
            uniform_u32x4(0x299f31d0_a4093822, 0x03707344_13198a2e, 0x85a308d3_243f6a88),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn normal_moments() {
        let n = 1_000_000;
        let mut z = vec![0.0f32; n];
        fill_normal(7, 3, &mut z);
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let within1 = z.iter().filter(|v| v.abs() < 1.0).count() as f64 / n as f64;
        // 5-sigma bounds: sd(mean) = 1/sqrt(n) = 1e-3, sd(var) = sqrt(2/n) ≈ 1.4e-3,
        // sd(fraction) = sqrt(p(1-p)/n) ≈ 4.7e-4 with p = P(|z| < 1) = 0.682689.
        assert!(mean.abs() < 5e-3, "mean {mean}");
        assert!((var - 1.0).abs() < 7.1e-3, "var {var}");
        assert!((within1 - 0.682689).abs() < 2.4e-3, "P(|z|<1) {within1}");
        assert!(z.iter().all(|v| v.is_finite() && v.abs() < 5.8));
    }

    #[test]
    fn deterministic_and_streams_differ() {
        let draw = |seed, stream| {
            let mut v = vec![0.0f32; 10_000];
            fill_normal(seed, stream, &mut v);
            v
        };
        let a = draw(1, 0);
        assert_eq!(a, draw(1, 0));
        // Element i is normal(seed, stream, i) whatever the chunking or threads.
        assert!(a.iter().enumerate().all(|(i, &v)| v == normal(1, 0, i as u64)));
        for b in [draw(1, 1), draw(2, 0), draw(1 << 32, 0), draw(1, 1 << 32)] {
            assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 10);
        }
    }

    #[test]
    fn uniform_below_in_range_and_balanced() {
        let n = 10u32;
        let mut counts = [0usize; 10];
        for i in 0..100_000 {
            let k = uniform_below(5, 0, i, n);
            assert!(k < n);
            counts[k as usize] += 1;
        }
        // Expected 10_000 per bin with sd ≈ 95; 6 sd ≈ 570.
        assert!(counts.iter().all(|&c| c.abs_diff(10_000) < 570), "{counts:?}");
        assert_eq!(uniform_below(5, 0, 0, 0), 0);
    }

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let base: Vec<usize> = (0..1000).collect();
        let (mut a, mut b, mut c) = (base.clone(), base.clone(), base.clone());
        shuffle(9, 1, &mut a);
        shuffle(9, 1, &mut b);
        shuffle(9, 2, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, base);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, base);
    }
}
