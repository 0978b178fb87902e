//! Every tape op's forward against its textbook (PyTorch) definition, evaluated independently here in f64, on the
//! CPU backend and on the CUDA kernels run by the emulator (`Gpu<Emulator>`). CPU-vs-GPU tests and gradient checks
//! both pass a wrong constant written into both kernels; these do not.
//!
//! Inputs are f32 values uniform in [-1, 1) (exact in f64), so the only difference between a correct kernel and
//! the f64 formula is the kernel's f32 rounding. Each tolerance is `abs + rel·|ref|` with u = 2⁻²⁴ ≈ 6e-8 the
//! f32 unit roundoff, and is argued where it is set. `--nocapture` prints each check's largest error and the
//! fraction of its threshold used.

#[macro_use]
mod common;

use common::{assert_formula, uniform_tensor};
use ddpm::autograd::{Tape, Var};
use ddpm::backend::Backend;
use ddpm::ops::conv::{ChanBias, ConvExtra};
use ddpm::params::Params;
use ddpm::{Result, Tensor};
use rand::{rngs::StdRng, SeedableRng};

/// The value and shape of `build(inputs)` on backend `be` (an inference tape; inputs copied to the device).
fn run<B: Backend>(
    be: &B,
    inputs: &[&Tensor],
    build: impl Fn(&mut Tape<'_, B>, &[Var]) -> Result<Var>,
) -> (Vec<f32>, Vec<usize>) {
    let params = Params::new().to_backend(be).unwrap();
    let mut tape = Tape::inference(&params);
    let vars: Vec<Var> = inputs.iter().map(|t| tape.input_host((*t).clone()).unwrap()).collect();
    let y = build(&mut tape, &vars).unwrap();
    (tape.value(y).to_vec().unwrap(), tape.value(y).shape().to_vec())
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// ---------------------------------------------------------------------------------------------------------------
// conv2d and conv_transpose2d

/// `torch.nn.functional.conv2d(x, w, b, stride, pad) + chan_bias[:, :, None, None] + residual`, by its definition
/// `y[n,o,i,j] = b[o] + Σ_{c,ky,kx} x[n, c, s·i - p + ky, s·j - p + kx]·w[o,c,ky,kx]` (zero outside the image).
fn conv2d_ref(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    (s, p): (usize, usize),
    chan_bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> (Vec<f64>, Vec<usize>) {
    let (&[n, c, h, wd], &[co, _, k, _]) = (x.shape(), w.shape()) else { panic!("4-d") };
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    let (xv, wv) = (x.data(), w.data());
    let mut y = vec![0.0f64; n * co * oh * ow];
    for ni in 0..n {
        for o in 0..co {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b.data()[o] as f64);
                    acc += chan_bias.map_or(0.0, |cb| cb.data()[ni * co + o] as f64);
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = ((s * i + ky) as isize - p as isize, (s * j + kx) as isize - p as isize);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((ni * c + ci) * h + iy as usize) * wd + ix as usize;
                                acc += xv[xi] as f64 * wv[((o * c + ci) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    let yi = ((ni * co + o) * oh + i) * ow + j;
                    y[yi] = acc + residual.map_or(0.0, |r| r.data()[yi] as f64);
                }
            }
        }
    }
    (y, vec![n, co, oh, ow])
}

/// `torch.nn.functional.conv_transpose2d(x, w, b, stride, pad)`, `w: [c_in, c_out, k, k]`, by its definition:
/// every input pixel scatters `x[n,c,i,j]·w[c,o,ky,kx]` to output pixel `(s·i - p + ky, s·j - p + kx)`.
fn conv_transpose2d_ref(x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: usize) -> (Vec<f64>, Vec<usize>) {
    let (&[n, c, h, wd], &[_, co, k, _]) = (x.shape(), w.shape()) else { panic!("4-d") };
    let (oh, ow) = ((h - 1) * s + k - 2 * p, (wd - 1) * s + k - 2 * p);
    let mut y = vec![0.0f64; n * co * oh * ow];
    for ni in 0..n {
        for o in 0..co {
            let bias = b.map_or(0.0, |b| b.data()[o] as f64);
            y[(ni * co + o) * oh * ow..][..oh * ow].iter_mut().for_each(|v| *v = bias);
        }
        for ci in 0..c {
            for i in 0..h {
                for j in 0..wd {
                    let xv = x.data()[((ni * c + ci) * h + i) * wd + j] as f64;
                    for o in 0..co {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (oy, ox) = ((s * i + ky) as isize - p as isize, (s * j + kx) as isize - p as isize);
                                if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                    continue;
                                }
                                let wv = w.data()[((ci * co + o) * k + ky) * k + kx] as f64;
                                y[((ni * co + o) * oh + oy as usize) * ow + ox as usize] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, vec![n, co, oh, ow])
}

/// conv2d with every fused term (bias, per-image channel bias, residual) on the im2col path (3 input channels)
/// and on the Winograd path (8 → 8 channels, even sides, 3x3 stride 1 pad 1: `winograd::applies` on the CPU).
///
/// Tolerance 2e-5 abs + 1e-6 rel: each output sums K = 9·c ≤ 72 products `|x·w| < 1` (plus three terms < 1) in
/// f32; K·u·max|y| ≈ 72·6e-8·4 ≈ 2e-5 bounds a blocked or pairwise sum, and Winograd's transforms (entries 0.5
/// and 1, at most 4 terms each way) scale its rounding by a small constant, still under it. A wrong constant (a
/// transform entry, a tap offset, a bias applied twice) moves outputs by 1e-2 or more.
fn conv2d_fused<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(1);
    for (n, c, co, h, w) in [(2, 3, 4, 5, 7), (2, 8, 8, 6, 8), (1, 12, 9, 4, 4)] {
        let x = uniform_tensor(&mut rng, &[n, c, h, w], -1.0, 1.0);
        let wt = uniform_tensor(&mut rng, &[co, c, 3, 3], -1.0, 1.0);
        let b = uniform_tensor(&mut rng, &[co], -1.0, 1.0);
        // The channel bias as columns 1..co+1 of a wider value, as the UNet reads its time projections.
        let wide = uniform_tensor(&mut rng, &[n, co + 3], -1.0, 1.0);
        let cb: Vec<f32> = wide.data().chunks(co + 3).flat_map(|row| row[1..=co].to_vec()).collect();
        let cb = Tensor::new(&[n, co], cb).unwrap();
        let r = uniform_tensor(&mut rng, &[n, co, h, w], -1.0, 1.0);
        let (want, shape) = conv2d_ref(&x, &wt, Some(&b), (1, 1), Some(&cb), Some(&r));
        let (got, got_shape) = run(be, &[&x, &wt, &b, &wide, &r], |t, v| {
            t.conv2d(
                v[0],
                v[1],
                Some(v[2]),
                1,
                1,
                ConvExtra { chan_bias: Some(ChanBias { var: v[3], start: 1 }), residual: Some(v[4]), operand: false },
            )
        });
        assert_eq!(got_shape, shape);
        assert_formula(&format!("conv2d 3x3 {c}->{co} {h}x{w} + b + cb + res"), &got, &want, 2e-5, 1e-6);
        // The plain conv too (no epilogue), which is the path a fused-term bug would not reach.
        let (want, _) = conv2d_ref(&x, &wt, None, (1, 1), None, None);
        let (got, _) = run(be, &[&x, &wt], |t, v| t.conv2d(v[0], v[1], None, 1, 1, ConvExtra::default()));
        assert_formula(&format!("conv2d 3x3 {c}->{co} {h}x{w}"), &got, &want, 2e-5, 1e-6);
    }
}
on_both!(conv2d_fused);

/// Stride 2 (pad 1, odd and even sides), 1x1 (pad 0) and unpadded 3x3 convs. Tolerance as in [`conv2d_fused`]
/// (K ≤ 72 products here too).
fn conv2d_stride2_pointwise_unpadded<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(2);
    #[allow(clippy::type_complexity)]
    let cases: [(&str, [usize; 4], [usize; 4], usize, usize, bool); 5] = [
        ("stride 2 odd", [2, 5, 7, 6], [3, 5, 3, 3], 2, 1, true),
        ("stride 2 even, 8 channels", [1, 8, 8, 8], [8, 8, 3, 3], 2, 1, true),
        ("1x1", [3, 6, 3, 5], [5, 6, 1, 1], 1, 0, true),
        ("1x1 no bias", [2, 9, 4, 4], [8, 9, 1, 1], 1, 0, false),
        ("unpadded 3x3", [1, 2, 6, 5], [3, 2, 3, 3], 1, 0, false),
    ];
    for (what, xs, ws, s, p, bias) in cases {
        let (x, wt) = (uniform_tensor(&mut rng, &xs, -1.0, 1.0), uniform_tensor(&mut rng, &ws, -1.0, 1.0));
        let b = uniform_tensor(&mut rng, &[ws[0]], -1.0, 1.0);
        let (want, shape) = conv2d_ref(&x, &wt, bias.then_some(&b), (s, p), None, None);
        let (got, got_shape) =
            run(be, &[&x, &wt, &b], |t, v| t.conv2d(v[0], v[1], bias.then_some(v[2]), s, p, ConvExtra::default()));
        assert_eq!(got_shape, shape, "{what}");
        assert_formula(&format!("conv2d {what}"), &got, &want, 2e-5, 1e-6);
    }
}
on_both!(conv2d_stride2_pointwise_unpadded);

/// conv_transpose2d k4 s2 p1 (the UNet's upsampler) with bias, and k3 s1 p1 without. Each output gathers at most
/// c·4 (k4 s2) or c·9 terms `|x·w| < 1`, c ≤ 8: the conv tolerance applies.
fn conv_transpose2d<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(3);
    for (xs, ws, s, p, bias) in [
        ([2, 5, 3, 5], [5, 3, 4, 4], 2, 1, true),
        ([1, 8, 4, 4], [8, 8, 4, 4], 2, 1, true),
        ([2, 3, 4, 3], [3, 2, 3, 3], 1, 1, false),
    ] {
        let (x, wt) = (uniform_tensor(&mut rng, &xs, -1.0, 1.0), uniform_tensor(&mut rng, &ws, -1.0, 1.0));
        let b = uniform_tensor(&mut rng, &[ws[1]], -1.0, 1.0);
        let (want, shape) = conv_transpose2d_ref(&x, &wt, bias.then_some(&b), s, p);
        let (got, got_shape) =
            run(be, &[&x, &wt, &b], |t, v| t.conv_transpose2d(v[0], v[1], bias.then_some(v[2]), s, p));
        assert_eq!(got_shape, shape);
        assert_formula(&format!("conv_transpose2d {xs:?} k{} s{s} p{p}", ws[2]), &got, &want, 2e-5, 1e-6);
    }
}
on_both!(conv_transpose2d);

// ---------------------------------------------------------------------------------------------------------------
// group_norm (+ silu), silu, relu

/// `torch.nn.GroupNorm(groups, c, eps=1e-5)` (biased variance) and then SiLU when `silu`.
fn group_norm_ref(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, silu: bool) -> Vec<f64> {
    let &[n, c, h, w] = x.shape() else { panic!("4-d") };
    let len = c / groups * h * w;
    let mut y = f64s(x);
    for (gi, chunk) in y.chunks_mut(len).enumerate() {
        let mean = chunk.iter().sum::<f64>() / len as f64;
        let var = chunk.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / len as f64;
        for (i, v) in chunk.iter_mut().enumerate() {
            let ch = (gi % groups) * (c / groups) + i / (h * w);
            let z = (*v - mean) / (var + 1e-5).sqrt() * gamma.data()[ch] as f64 + beta.data()[ch] as f64;
            *v = if silu { z * sigmoid(z) } else { z };
        }
    }
    assert_eq!(y.len(), n * c * h * w);
    y
}

/// GroupNorm with and without the fused SiLU, on inputs of unit scale and on inputs whose group variance (about
/// 3e-5) is comparable to eps = 1e-5 and whose mean (0.3) is 50x their spread, so that eps, the biased variance
/// and a cancelling variance formula all show.
///
/// Tolerance 2e-5 abs + 2e-5 rel: `(x-μ)·rstd` is at most ~2 in size (uniform inputs have |x-μ|/σ ≤ √3) and γ, β
/// are below 1 in size; μ and σ² are sums of 30 terms (f32: ≲ 30·u relative), and with the 0.3 offset a
/// one-pass f32 variance loses `u·μ²/σ² ≈ 2e-4` of σ² to cancellation, i.e. 1e-4 of the output: twice over
/// this threshold, as a wrong eps (1e-4 instead of 1e-5 moves rstd by 10-100%) or an unbiased variance (n-1:
/// 1.7%) are far over it.
fn group_norm<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(4);
    for (scale, offset) in [(1.0f32, 0.0f32), (0.01, 0.3)] {
        for silu in [false, true] {
            let raw = uniform_tensor(&mut rng, &[2, 6, 3, 5], -1.0, 1.0);
            let x = Tensor::new(raw.shape(), raw.data().iter().map(|v| v * scale + offset).collect()).unwrap();
            let (gamma, beta) = (uniform_tensor(&mut rng, &[6], -1.5, 1.5), uniform_tensor(&mut rng, &[6], -1.0, 1.0));
            let want = group_norm_ref(&x, &gamma, &beta, 3, silu);
            let (got, _) = run(be, &[&x, &gamma, &beta], |t, v| t.group_norm(v[0], v[1], v[2], 3, silu));
            assert_formula(&format!("group_norm scale {scale} offset {offset} silu={silu}"), &got, &want, 2e-5, 2e-5);
        }
    }
}
on_both!(group_norm);

/// SiLU `x·σ(x)` and ReLU `max(x, 0)` on [-6, 6). SiLU: `exp`, a division and a product, each within a few ulp
/// (CUDA's `expf` is within 2 ulp), so 1e-7 abs + 1e-6 rel; a changed constant in σ (e.g. exp(-x)
/// scaled by 1.01) moves outputs by ~1e-3. ReLU is exact.
fn silu_relu<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(5);
    let x = uniform_tensor(&mut rng, &[3, 7, 5], -6.0, 6.0);
    let (got, _) = run(be, &[&x], |t, v| t.silu(v[0]));
    assert_formula("silu", &got, &f64s(&x).iter().map(|&v| v * sigmoid(v)).collect::<Vec<_>>(), 1e-7, 1e-6);
    let (got, _) = run(be, &[&x], |t, v| t.relu(v[0]));
    assert_formula("relu", &got, &f64s(&x).iter().map(|&v| v.max(0.0)).collect::<Vec<_>>(), 0.0, 0.0);
}
on_both!(silu_relu);

// ---------------------------------------------------------------------------------------------------------------
// linear, concat, mse, flatten

/// `y = x Wᵀ + b` for a small and a GEMM-sized layer (fin 150, fout 40). Tolerance 1e-5 abs + 1e-6 rel: K ≤ 150
/// products `|x·w| < 1` (the mean |x·w| is 1/4, so |y| ≲ 10): √K·u·Σ|x·w| ≈ 12·6e-8·38 ≈ 3e-5 is the
/// statistical size of a sequential f32 sum's error and blocked sums do better; at the
/// (fin 5) shape it is 1e-7.
fn linear<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(6);
    for (batch, fin, fout) in [(3, 5, 4), (7, 150, 40)] {
        let x = uniform_tensor(&mut rng, &[batch, fin], -1.0, 1.0);
        let w = uniform_tensor(&mut rng, &[fout, fin], -1.0, 1.0);
        let b = uniform_tensor(&mut rng, &[fout], -1.0, 1.0);
        let mut want = vec![0.0f64; batch * fout];
        for i in 0..batch {
            for o in 0..fout {
                want[i * fout + o] = b.data()[o] as f64
                    + (0..fin).map(|k| x.data()[i * fin + k] as f64 * w.data()[o * fin + k] as f64).sum::<f64>();
            }
        }
        let (got, shape) = run(be, &[&x, &w, &b], |t, v| t.linear(v[0], v[1], Some(v[2])));
        assert_eq!(shape, [batch, fout]);
        let atol = if fin > 100 { 4e-5 } else { 1e-6 };
        assert_formula(&format!("linear {batch}x{fin} -> {fout}"), &got, &want, atol, 1e-6);
    }
}
on_both!(linear);

/// Concat along channels and flatten move values without arithmetic: exact. MSE `mean((p - t)²)` over 70
/// elements: 70 squares summed in f32, ≤ 70·u relative, so rel 4e-6; dividing by N - 1 instead of N is 1.4% off.
fn concat_flatten_mse<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(7);
    let (a, b) =
        (uniform_tensor(&mut rng, &[2, 3, 3, 5], -1.0, 1.0), uniform_tensor(&mut rng, &[2, 2, 3, 5], -1.0, 1.0));
    let mut want = Vec::new();
    for n in 0..2 {
        want.extend(f64s(&a)[n * 45..(n + 1) * 45].iter());
        want.extend(f64s(&b)[n * 30..(n + 1) * 30].iter());
    }
    let (got, shape) = run(be, &[&a, &b], |t, v| t.concat(v[0], v[1]));
    assert_eq!(shape, [2, 5, 3, 5]);
    assert_formula("concat", &got, &want, 0.0, 0.0);
    let (got, shape) = run(be, &[&a], |t, v| t.flatten(v[0]));
    assert_eq!(shape, [2, 45]);
    assert_formula("flatten", &got, &f64s(&a), 0.0, 0.0);
    let (p, q) = (uniform_tensor(&mut rng, &[2, 5, 7], -1.0, 1.0), uniform_tensor(&mut rng, &[2, 5, 7], -1.0, 1.0));
    let want = f64s(&p).iter().zip(f64s(&q)).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / 70.0;
    let (got, shape) = run(be, &[&p, &q], |t, v| t.mse(v[0], v[1]));
    assert_eq!(shape, [1]);
    assert_formula("mse", &got, &[want], 0.0, 4e-6);
}
on_both!(concat_flatten_mse);

// ---------------------------------------------------------------------------------------------------------------
// max_pool2d, cross_entropy

/// 2x2/2 max pooling of odd-sided planes (the last row and column are in no window): exact.
fn max_pool2d<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(8);
    let x = uniform_tensor(&mut rng, &[2, 3, 5, 7], -1.0, 1.0);
    let mut want = Vec::new();
    for plane in x.data().chunks(35) {
        for i in 0..2 {
            for j in 0..3 {
                let at = |dy: usize, dx: usize| plane[(2 * i + dy) * 7 + 2 * j + dx] as f64;
                want.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
            }
        }
    }
    let (got, shape) = run(be, &[&x], |t, v| t.max_pool2d(v[0]));
    assert_eq!(shape, [2, 3, 2, 3]);
    assert_formula("max_pool2d", &got, &want, 0.0, 0.0);
}
on_both!(max_pool2d);

/// `mean_i (log Σ_j exp z_ij - z_i,y_i)` for moderate logits and for logits near ±80 (exp overflows f32 unless
/// the row maximum is subtracted first). Tolerance 1e-6 abs + 1e-6 rel: per row an f32 log-sum-exp of ≤ 10 terms
/// (a few ulp of a value ≲ 80), averaged over ≤ 6 rows; a wrong constant in the log-sum-exp or the mean
/// (1/(n-1), a missing max shift) is far off.
fn cross_entropy<B: Backend>(be: &B) {
    let mut rng = StdRng::seed_from_u64(9);
    for (n, classes, scale, labels) in
        [(6, 4, 3.0f32, vec![0, 3, 1, 1, 2, 3]), (1, 10, 3.0, vec![7]), (3, 5, 80.0, vec![4, 0, 2])]
    {
        let z = uniform_tensor(&mut rng, &[n, classes], -scale, scale);
        let want = (0..n)
            .map(|i| {
                let row = &f64s(&z)[i * classes..(i + 1) * classes];
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[labels[i]]
            })
            .sum::<f64>()
            / n as f64;
        let (got, shape) = run(be, &[&z], |t, v| t.cross_entropy(v[0], &labels));
        assert_eq!(shape, [1]);
        let atol = 1e-6 * scale as f64;
        assert_formula(&format!("cross_entropy {n}x{classes} |z| < {scale}"), &got, &[want], atol, 1e-6);
    }
}
on_both!(cross_entropy);
