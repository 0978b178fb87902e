//! Every GPU op against the CPU reference, on the emulator always and on a CUDA device when one is present.
//!
//! Each check is one generic function over [`Executor`]; `gpu_test!` turns it into `<op>::emu` and `<op>::cuda`.
//! The `cuda` variants are `#[ignore]`d, so on a machine without a GPU they are reported as ignored, never as
//! passed; `cargo test -- --ignored` runs them on a GPU machine, where a missing device fails them. Sizes are deliberately awkward: odd H and W, channel counts that are no multiple of any tile,
//! batch 1, and small enough that the emulator runs the whole file in seconds.
//!
//! Tolerances are `abs + rel·|ref|`. Where the GPU sums in a different order from the CPU (GEMM tiles, block
//! reductions, f32 where the CPU uses f64), the error grows like (terms summed)·ε·(magnitude), hence rel ~1e-5
//! and an abs floor for sums that cancel. Elementwise kernels that follow the CPU's f32 order get 0 on the
//! emulator (same libm, no FMA contraction) and a few ulp on a GPU (its logf/cosf/expf are within 2 ulp).

use ddpm::cpu::classify;
use ddpm::cpu::conv::{self, ConvGeom, ConvGrads, Epilogue};
use ddpm::cpu::elementwise as ew;
use ddpm::cpu::gemm::{self as cgemm, Mat};
use ddpm::cpu::norm::{self, NormDims};
use ddpm::diffusion::sampler::{ddim_step, ddpm_step, DdimCoefs, DdpmCoefs};
use ddpm::diffusion::Schedule;
use ddpm::gpu::ops::{self, Gemm};
use ddpm::gpu::{cuda::Cuda, emu::Emulator, Arg, Executor, Kernel, LaunchCfg};
use ddpm::nn::TimeEmbedding;
use ddpm::optim::{clip_grad_norm, AdamW, Ema};
use ddpm::params::{Grads, Params};
use ddpm::{rng, Tensor};
use std::sync::OnceLock;

/// The shared CUDA device, or why there is none.
fn cuda() -> &'static Result<Cuda, String> {
    static DEV: OnceLock<Result<Cuda, String>> = OnceLock::new();
    DEV.get_or_init(|| Cuda::new(0).map_err(|e| e.to_string()))
}

macro_rules! gpu_test {
    ($name:ident) => {
        mod $name {
            #[test]
            fn emu() {
                super::$name(&ddpm::gpu::emu::Emulator::new());
            }
            // Counted as ignored, not passed, where there is no GPU; `--ignored` (scripts/gpu-check.sh) runs it,
            // and there a missing device is a failure.
            #[test]
            #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
            fn cuda() {
                match super::cuda() {
                    Ok(dev) => super::$name(dev),
                    Err(why) => panic!("no CUDA device: {why}"),
                }
            }
        }
    };
}

/// Uniform values in [-1, 1) from Philox, a pure function of (seed, index).
fn rand(seed: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| (rng::uniform_u32x4(seed, 99, i as u64)[0] >> 8) as f32 / 8_388_608.0 - 1.0).collect()
}

#[track_caller]
fn close(got: &[f32], want: &[f32], abs: f32, rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * w.abs();
        assert!((g - w).abs() <= tol || (g.is_nan() && w.is_nan()), "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}

fn up<E: Executor>(e: &E, v: &[f32]) -> E::Buf {
    e.upload(v).unwrap()
}
fn down<E: Executor>(e: &E, b: &E::Buf) -> Vec<f32> {
    e.download(b).unwrap()
}

// GEMM: every transpose combination, accumulate, a batch, and a batch sum. Sums of up to 70 products of values in
// [-1, 1): different order than the CPU's GEMM, so rel 1e-5 plus abs 1e-5 for cancellation.
fn sgemm<E: Executor>(e: &E) {
    let (m, n, k) = (67, 5, 70);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (a, b, c0) = (rand(1, m * k), rand(2, k * n), rand(3, m * n));
        for acc in [false, true] {
            let mut want = c0.clone();
            cgemm::sgemm(
                m,
                n,
                k,
                Mat { data: &a, transposed: ta, ld: None },
                Mat { data: &b, transposed: tb, ld: None },
                &mut want,
                acc,
                1,
            );
            let c = up(e, &c0);
            let g = Gemm { accumulate: acc, ..Gemm::plain(m, n, k, ta, tb) };
            ops::sgemm(e, &g, &up(e, &a), &up(e, &b), &c).unwrap();
            close(&down(e, &c), &want, 1e-5, 1e-5, &format!("sgemm ta={ta} tb={tb} acc={acc}"));
        }
    }
    // Batch of 3 with a shared A, and the same three summed into one C.
    let (a, b) = (rand(4, m * k), rand(5, 3 * k * n));
    let mut want = vec![0.0; 3 * m * n];
    let mut sum = vec![0.0; m * n];
    for i in 0..3 {
        let bi = &b[i * k * n..(i + 1) * k * n];
        cgemm::sgemm(m, n, k, Mat::n(&a), Mat::n(bi), &mut want[i * m * n..(i + 1) * m * n], false, 1);
        cgemm::sgemm(m, n, k, Mat::n(&a), Mat::n(bi), &mut sum, i > 0, 1);
    }
    let (ab, bb, c, s) = (up(e, &a), up(e, &b), e.alloc(3 * m * n).unwrap(), e.alloc(m * n).unwrap());
    ops::sgemm(
        e,
        &Gemm { stride_b: k * n, stride_c: m * n, batches: 3, ..Gemm::plain(m, n, k, false, false) },
        &ab,
        &bb,
        &c,
    )
    .unwrap();
    ops::sgemm(e, &Gemm { stride_b: k * n, nsum: 3, ..Gemm::plain(m, n, k, false, false) }, &ab, &bb, &s).unwrap();
    close(&down(e, &c), &want, 1e-5, 1e-5, "sgemm batched");
    close(&down(e, &s), &sum, 3e-5, 1e-5, "sgemm batch sum");
}
gpu_test!(sgemm);

// Conv2d forward (bias + per-image bias + residual) and backward (dx, dW, bias sums), for a padded 3x3, a strided 3x3 and a
// pointwise conv. Sums of C·k·k (forward, dx) or n·OH·OW (dW) products, in a different order: rel 1e-5,
// abs 2e-5 (dW sums up to 126 terms).
fn conv2d<E: Executor>(e: &E) {
    for (n, c, h, w, k, s, p, co) in [(2, 3, 7, 9, 3, 1, 1, 5), (1, 5, 9, 7, 3, 2, 1, 3), (2, 4, 5, 3, 1, 1, 0, 6)] {
        let g = ConvGeom::new(c, h, w, k, s, p).unwrap();
        let what = format!("conv2d n{n} c{c} {h}x{w} k{k} s{s} p{p} co{co}");
        let (x, wt, b, cb) = (rand(10, n * c * h * w), rand(11, co * c * k * k), rand(12, co), rand(13, n * co));
        let out_len = n * co * g.oh * g.ow;
        let res = rand(15, out_len);
        let (xb, wb, out) = (up(e, &x), up(e, &wt), e.alloc(out_len).unwrap());
        for residual in [None, Some(&res[..])] {
            let mut want = vec![0.0; out_len];
            conv::conv2d_forward(
                &g,
                n,
                &x,
                &wt,
                co,
                Epilogue { bias: Some(&b), chan_bias: Some(&cb), residual },
                &mut want,
            );
            let rb = residual.map(|r| up(e, r));
            ops::conv2d_forward(e, &g, n, &xb, &wb, co, Some(&up(e, &b)), Some(&up(e, &cb)), rb.as_ref(), &out)
                .unwrap();
            close(&down(e, &out), &want, 2e-5, 1e-5, &format!("{what} forward residual={}", residual.is_some()));
        }

        let gout = rand(14, out_len);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
        conv::conv2d_backward(&g, n, &x, &wt, co, &gout, ConvGrads { dx: Some(&mut dx), dw: Some(&mut dw) });
        let (gb, dxb, dwb) = (up(e, &gout), e.alloc(x.len()).unwrap(), e.alloc(wt.len()).unwrap());
        ops::conv2d_backward(e, &g, n, &xb, &wb, co, &gb, Some(&dxb), Some(&dwb)).unwrap();
        close(&down(e, &dxb), &dx, 2e-5, 1e-5, &format!("{what} dx"));
        close(&down(e, &dwb), &dw, 2e-5, 1e-5, &format!("{what} dW"));
        for per_image in [false, true] {
            let want = conv::channel_sums(&gout, n, co, g.oh * g.ow, per_image);
            let sums = e.alloc(want.len()).unwrap();
            ops::channel_sums(e, &gb, n, co, g.oh * g.ow, per_image, &sums).unwrap();
            close(&down(e, &sums), &want, 2e-5, 1e-5, &format!("{what} bias grad per_image={per_image}"));
        }
    }
}
gpu_test!(conv2d);

// ConvTranspose2d forward and both gradients, the UNet's 4x4 stride-2 upsampler on an odd grid, and a 3x3
// stride-1 one with batch 1. Tolerances as conv2d.
fn conv_transpose2d<E: Executor>(e: &E) {
    for (n, ci, co, h, w, k, s, p) in [(2, 5, 3, 8, 6, 4, 2, 1), (1, 3, 4, 5, 7, 3, 1, 1)] {
        let g = ConvGeom::new(co, h, w, k, s, p).unwrap();
        let what = format!("conv_transpose2d n{n} ci{ci} co{co} out {h}x{w} k{k} s{s}");
        let (x, wt, b) = (rand(20, n * ci * g.oh * g.ow), rand(21, ci * co * k * k), rand(22, co));
        let out_len = n * co * h * w;
        let mut want = vec![0.0; out_len];
        conv::conv_transpose2d_forward(&g, n, &x, &wt, ci, Some(&b), &mut want);
        let (xb, wb, out) = (up(e, &x), up(e, &wt), e.alloc(out_len).unwrap());
        ops::conv_transpose2d_forward(e, &g, n, &xb, &wb, ci, Some(&up(e, &b)), &out).unwrap();
        close(&down(e, &out), &want, 2e-5, 1e-5, &format!("{what} forward"));

        let gout = rand(23, out_len);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
        conv::conv_transpose2d_backward(&g, n, &x, &wt, ci, &gout, ConvGrads { dx: Some(&mut dx), dw: Some(&mut dw) });
        let (dxb, dwb) = (e.alloc(x.len()).unwrap(), e.alloc(wt.len()).unwrap());
        ops::conv_transpose2d_backward(e, &g, n, &xb, &wb, ci, &up(e, &gout), Some(&dxb), Some(&dwb)).unwrap();
        close(&down(e, &dxb), &dx, 2e-5, 1e-5, &format!("{what} dx"));
        close(&down(e, &dwb), &dw, 2e-5, 1e-5, &format!("{what} dW"));
    }
}
gpu_test!(conv_transpose2d);

// GroupNorm with and without the fused SiLU. The CPU sums the statistics in f64, the GPU in f32 over <= 105
// values of magnitude <= 3: abs 2e-5 on outputs of magnitude ~1-3; dgamma/dbeta sum n·plane terms: abs 1e-4.
fn group_norm<E: Executor>(e: &E) {
    for (n, c, groups, plane) in [(2, 6, 3, 35), (1, 5, 5, 9)] {
        let d = NormDims { n, c, plane, groups };
        let len = n * c * plane;
        let x: Vec<f32> = rand(30, len).iter().map(|v| 3.0 * v + 0.5).collect();
        let (gamma, beta, gy) = (rand(31, c), rand(32, c), rand(33, len));
        for silu in [false, true] {
            let what = format!("group_norm n{n} c{c} g{groups} plane{plane} silu={silu}");
            let mut y = vec![0.0; len];
            let (mean, rstd) = norm::group_norm_forward(d, &x, &gamma, &beta, 1e-5, silu, &mut y);
            let (xb, gb, bb) = (up(e, &x), up(e, &gamma), up(e, &beta));
            let (yb, mb, rb) = (e.alloc(len).unwrap(), e.alloc(n * groups).unwrap(), e.alloc(n * groups).unwrap());
            ops::group_norm_forward(e, d, &xb, &gb, &bb, 1e-5, silu, &yb, &mb, &rb).unwrap();
            close(&down(e, &yb), &y, 2e-5, 1e-5, &format!("{what} y"));
            close(&down(e, &mb), &mean, 1e-6, 1e-5, &format!("{what} mean"));
            close(&down(e, &rb), &rstd, 1e-6, 1e-5, &format!("{what} rstd"));

            let mut dx = vec![0.0; len];
            let (dg, db) = norm::group_norm_backward(d, &x, &gamma, &beta, &mean, &rstd, silu, &gy, Some(&mut dx));
            let (dxb, dgb, dbb) = (e.alloc(len).unwrap(), e.alloc(c).unwrap(), e.alloc(c).unwrap());
            // The CPU's statistics as input, so the backward is compared on its own.
            let (mb, rb) = (up(e, &mean), up(e, &rstd));
            ops::group_norm_backward(e, d, &xb, &gb, &bb, &mb, &rb, silu, &up(e, &gy), Some(&dxb), &dgb, &dbb).unwrap();
            close(&down(e, &dxb), &dx, 1e-5, 1e-4, &format!("{what} dx"));
            close(&down(e, &dgb), &dg, 1e-4, 1e-5, &format!("{what} dgamma"));
            close(&down(e, &dbb), &db, 1e-4, 1e-5, &format!("{what} dbeta"));
        }
    }
}
gpu_test!(group_norm);

// SiLU: elementwise in the CPU's order; expf within 2 ulp on a GPU: rel 1e-6 plus abs 1e-7 near 0.
fn silu<E: Executor>(e: &E) {
    let n = 1001;
    let (x, gy): (Vec<f32>, _) = (rand(40, n).iter().map(|v| 8.0 * v).collect(), rand(41, n));
    let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
    ew::silu_forward(&x, &mut y);
    ew::silu_backward(&x, &gy, &mut dx);
    let (xb, yb, dxb) = (up(e, &x), e.alloc(n).unwrap(), e.alloc(n).unwrap());
    ops::silu_forward(e, &xb, &yb, n).unwrap();
    ops::silu_backward(e, &xb, &up(e, &gy), &dxb, n).unwrap();
    close(&down(e, &yb), &y, 1e-7, 1e-6, "silu forward");
    close(&down(e, &dxb), &dx, 1e-7, 1e-6, "silu backward");
}
gpu_test!(silu);

// ReLU: a comparison and a selection, no arithmetic: exact everywhere, a NaN passing through as on the CPU.
fn relu<E: Executor>(e: &E) {
    let n = 1001;
    let mut x: Vec<f32> = rand(42, n).iter().map(|v| 8.0 * v).collect();
    (x[3], x[4]) = (0.0, f32::NAN);
    let gy = rand(43, n);
    let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
    ew::relu_forward(&x, &mut y);
    ew::relu_backward(&x, &gy, &mut dx);
    let (xb, yb, dxb) = (up(e, &x), e.alloc(n).unwrap(), e.alloc(n).unwrap());
    ops::relu_forward(e, &xb, &yb, n).unwrap();
    ops::relu_backward(e, &xb, &up(e, &gy), &dxb, n).unwrap();
    close(&down(e, &yb), &y, 0.0, 0.0, "relu forward");
    close(&down(e, &dxb), &dx, 0.0, 0.0, "relu backward");
}
gpu_test!(relu);

// Max pooling, forward and backward: comparisons and copies only, so exact, the tie rule included (values rounded
// to 5 levels, so most windows hold ties) and a NaN; odd H and W (last row and column in no window), 2x3 planes.
fn max_pool2d<E: Executor>(e: &E) {
    let (planes, h, w) = (6, 7, 9);
    let out = planes * (h / 2) * (w / 2);
    let mut x: Vec<f32> = rand(44, planes * h * w).iter().map(|v| (2.0 * v).round()).collect();
    x[20] = f32::NAN;
    let gy = rand(45, out);
    let (mut y, mut argmax, mut dx) = (vec![0.0; out], vec![0.0; out], vec![0.0; x.len()]);
    classify::max_pool2d_forward(h, w, &x, &mut y, &mut argmax);
    classify::max_pool2d_backward(h, w, &argmax, &gy, &mut dx);
    let (xb, yb, ab, dxb) = (up(e, &x), e.alloc(out).unwrap(), e.alloc(out).unwrap(), e.alloc(x.len()).unwrap());
    ops::max_pool2d_forward(e, planes, h, w, &xb, &yb, &ab).unwrap();
    close(&down(e, &yb), &y, 0.0, 0.0, "max_pool2d forward");
    assert_eq!(down(e, &ab), argmax, "max_pool2d argmax");
    ops::max_pool2d_backward(e, planes, h, w, &ab, &up(e, &gy), &dxb).unwrap();
    assert_eq!(down(e, &dxb), dx, "max_pool2d backward");
}
gpu_test!(max_pool2d);

// Cross-entropy over 37 rows of 10 logits up to ±8. The row log-sum-exps and the gradient follow the CPU's f32
// order, with expf/logf within 2 ulp on a GPU: rel 1e-6 on lse, abs 1e-8 on dz (entries are ≲ 1/n = 0.03, a few ulp
// of which is ~1e-8). The loss adds the 37 row losses in f32 by one block against the CPU's f64: rel 1e-5.
fn cross_entropy<E: Executor>(e: &E) {
    let (n, classes) = (37, 10);
    let z: Vec<f32> = rand(46, n * classes).iter().map(|v| 8.0 * v).collect();
    let labels: Vec<f32> = (0..n).map(|i| ((i * 7) % classes) as f32).collect();
    let mut lse = vec![0.0; n];
    let loss = classify::cross_entropy(&z, &labels, classes, &mut lse);
    let mut dz = vec![0.0; n * classes];
    classify::cross_entropy_backward(&z, &labels, &lse, 0.7, classes, &mut dz);
    let (zb, lb) = (up(e, &z), up(e, &labels));
    let (lseb, out, dzb) = (e.alloc(n).unwrap(), e.alloc(1).unwrap(), e.alloc(n * classes).unwrap());
    ops::cross_entropy(e, &zb, &lb, n, classes, &lseb, &out).unwrap();
    close(&down(e, &out), &[loss], 0.0, 1e-5, "cross_entropy loss");
    close(&down(e, &lseb), &lse, 0.0, 1e-6, "cross_entropy lse");
    ops::cross_entropy_backward(e, &zb, &lb, &up(e, &lse), 0.7, n, classes, &dzb).unwrap();
    close(&down(e, &dzb), &dz, 1e-8, 0.0, "cross_entropy backward");
}
gpu_test!(cross_entropy);

// Linear forward and backward (dx, dW, db); GEMM tolerances.
fn linear<E: Executor>(e: &E) {
    let (batch, fin, fout) = (3, 37, 29);
    let (x, w, b, gy) = (rand(50, batch * fin), rand(51, fout * fin), rand(52, fout), rand(53, batch * fout));
    let mut y = vec![0.0; batch * fout];
    ew::linear_forward(&x, &w, Some(&b), batch, fin, fout, &mut y);
    let (xb, wb, yb) = (up(e, &x), up(e, &w), e.alloc(batch * fout).unwrap());
    ops::linear_forward(e, &xb, &wb, Some(&up(e, &b)), batch, fin, fout, &yb).unwrap();
    close(&down(e, &yb), &y, 1e-5, 1e-5, "linear forward");
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    ew::linear_backward(&x, &w, &gy, batch, fin, fout, Some(&mut dx), Some(&mut dw));
    let db = ew::column_sums(&gy, fout);
    let (dxb, dwb, dbb) = (e.alloc(x.len()).unwrap(), e.alloc(w.len()).unwrap(), e.alloc(fout).unwrap());
    ops::linear_backward(e, &xb, &wb, &up(e, &gy), batch, fin, fout, Some(&dxb), Some(&dwb), Some(&dbb)).unwrap();
    close(&down(e, &dxb), &dx, 1e-5, 1e-5, "linear dx");
    close(&down(e, &dwb), &dw, 1e-5, 1e-5, "linear dW");
    close(&down(e, &dbb), &db, 1e-5, 1e-5, "linear db");
}
gpu_test!(linear);

// Concat along channels and its inverse: pure copies, so exact.
fn concat_split<E: Executor>(e: &E) {
    let (n, ca, cb, plane) = (2, 3, 5, 15);
    let (a, b) = (rand(60, n * ca * plane), rand(61, n * cb * plane));
    let mut want = vec![0.0; n * (ca + cb) * plane];
    ew::concat_channels(&a, &b, ca, cb, plane, &mut want);
    let out = e.alloc(want.len()).unwrap();
    ops::concat_channels(e, &up(e, &a), &up(e, &b), n, ca, cb, plane, &out).unwrap();
    assert_eq!(down(e, &out), want, "concat");
    let (wa, wb) = ew::split_channels(&want, n, ca, cb, plane);
    let (ga, gb) = (e.alloc(wa.len()).unwrap(), e.alloc(wb.len()).unwrap());
    ops::split_channels(e, &out, n, ca, cb, plane, &ga, &gb).unwrap();
    assert_eq!((down(e, &ga), down(e, &gb)), (wa, wb), "split");
}
gpu_test!(concat_split);

// Gradient accumulation, a device copy and column sums: the first two round once per element as the CPU does
// (bit-exact); the column sums add 7 rows in order in f32 where the CPU uses f64: rel 1e-6.
fn add_copy_column_sums<E: Executor>(e: &E) {
    let (rows, cols) = (7, 301);
    let (a, b) = (rand(65, rows * cols), rand(66, rows * cols));
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let (acc, copy) = (up(e, &a), e.alloc(a.len()).unwrap());
    ops::add_assign(e, &acc, &up(e, &b), a.len()).unwrap();
    assert_eq!(down(e, &acc), want, "add_assign");
    ops::copy(e, &acc, &copy, a.len()).unwrap();
    assert_eq!(down(e, &copy), want, "copy");
    let sums = e.alloc(cols).unwrap();
    ops::column_sums(e, &copy, rows, cols, &sums).unwrap();
    close(&down(e, &sums), &ew::column_sums(&want, cols), 1e-7, 1e-6, "column_sums");
}
gpu_test!(add_copy_column_sums);

// MSE: the loss sums 3001 squares in f32 blocks vs f64 on the CPU: rel 1e-5. The gradient is elementwise: exact
// order, rel 1e-6.
fn mse<E: Executor>(e: &E) {
    let n = 3001;
    let (p, t) = (rand(70, n), rand(71, n));
    let (pb, tb, out, dp) = (up(e, &p), up(e, &t), e.alloc(1).unwrap(), e.alloc(n).unwrap());
    ops::mse(e, &pb, &tb, n, &out).unwrap();
    close(&down(e, &out), &[ew::mse(&p, &t)], 0.0, 1e-5, "mse");
    let mut want = vec![0.0; n];
    ew::mse_backward(&p, &t, 0.7, &mut want);
    ops::mse_backward(e, &pb, &tb, 0.7, n, &dp).unwrap();
    close(&down(e, &dp), &want, 0.0, 1e-6, "mse backward");
}
gpu_test!(mse);

// Sinusoidal embedding with t up to 999: accurate sinf/cosf agree with the CPU's to ~1 ulp of the result
// (abs 3e-7); a fast __sinf would miss by ~1e-4 and fail.
fn time_embedding<E: Executor>(e: &E) {
    let (t, dim) = ([0usize, 1, 17, 500, 999], 32);
    let want = TimeEmbedding::sinusoid(&t, dim);
    let tb = e.upload_i32(&t.map(|v| v as i32)).unwrap();
    let out = e.alloc(t.len() * dim).unwrap();
    ops::time_embedding(e, &tb, &up(e, &TimeEmbedding::freqs(dim)), t.len(), dim / 2, &out).unwrap();
    close(&down(e, &out), want.data(), 3e-7, 0.0, "time embedding");
}
gpu_test!(time_embedding);

// q_sample: the noise is Philox on the device, the same draws as rng::fill_normal; the integer part is exact, and
// logf/sqrtf/cosf are within 2 ulp on a GPU: rel 1e-6 + abs 1e-6 (cos near its zeros).
fn q_sample<E: Executor>(e: &E) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (batch, per) = (3, 2 * 5 * 7);
    let (seed, stream) = (0x1234_5678_9abc, 7u64 << 33);
    let x0 = Tensor::new(&[batch, 2, 5, 7], rand(80, batch * per)).unwrap();
    let t = [0usize, 499, 999];
    let mut noise = Tensor::zeros(&[batch, 2, 5, 7]);
    rng::fill_normal(seed, stream, noise.data_mut());
    let want = sched.q_sample(&x0, &t, &noise).unwrap();
    let (nb, xt) = (e.alloc(batch * per).unwrap(), e.alloc(batch * per).unwrap());
    let tb = e.upload_i32(&t.map(|v| v as i32)).unwrap();
    let (sab, s1m) = (up(e, &sched.sqrt_alphas_bar), up(e, &sched.sqrt_one_minus_alphas_bar));
    ops::q_sample(e, &up(e, x0.data()), &tb, &sab, &s1m, batch, per, seed, stream, &nb, &xt).unwrap();
    close(&down(e, &nb), noise.data(), 1e-6, 1e-6, "q_sample noise");
    close(&down(e, &xt), want.data(), 1e-6, 1e-6, "q_sample x_t");
}
gpu_test!(q_sample);

// DDPM and DDIM steps with and without on-device noise, same f32 order as the CPU: exact on the emulator; noise
// within 2 ulp on a GPU: abs 1e-6 + rel 1e-6.
fn sampler_steps<E: Executor>(e: &E) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let n = 2 * 7 * 9;
    let (x, eps) = (rand(90, n), rand(91, n));
    let (xb, eb, out) = (up(e, &x), up(e, &eps), e.alloc(n).unwrap());
    let seed = 42;
    for t in [0usize, 1, 500, 999] {
        let stream = ddpm::diffusion::sampler::noise_stream(t);
        let mut z = vec![0.0; n];
        rng::fill_normal(seed, stream, &mut z);
        for noisy in [false, true] {
            let mut want = vec![0.0; n];
            ddpm_step(&sched, t, &x, &eps, noisy.then_some(&z[..]), &mut want).unwrap();
            // The CPU drops the noise at t = 0; so does passing None.
            let noise = (noisy && t > 0).then_some((seed, stream));
            ops::ddpm_step(e, &DdpmCoefs::new(&sched, t).unwrap(), &xb, &eb, n, noise, &out).unwrap();
            close(&down(e, &out), &want, 1e-6, 1e-6, &format!("ddpm t={t} noisy={noisy}"));
        }
        let (t_prev, eta) = (t.checked_sub(20).filter(|_| t >= 20), 0.7);
        let c = DdimCoefs::new(&sched, t, t_prev, eta).unwrap();
        for noisy in [false, true] {
            let mut want = vec![0.0; n];
            ddim_step(&sched, t, t_prev, eta, &x, &eps, noisy.then_some(&z[..]), &mut want).unwrap();
            ops::ddim_step(e, &c, &xb, &eb, n, noisy.then_some((seed, stream)), &out).unwrap();
            close(&down(e, &out), &want, 1e-6, 1e-6, &format!("ddim t={t} noisy={noisy}"));
        }
    }
}
gpu_test!(sampler_steps);

/// Two parameter tensors of awkward sizes, and gradients for them.
fn params_and_grads(scale: f32) -> (Params, Grads) {
    let mut p = Params::new();
    p.add("a", Tensor::new(&[3, 37], rand(100, 111)).unwrap());
    p.add("b", Tensor::new(&[1001], rand(101, 1001)).unwrap());
    let g = Grads(vec![
        Tensor::new(&[3, 37], rand(102, 111).iter().map(|v| v * scale).collect()).unwrap(),
        Tensor::new(&[1001], rand(103, 1001).iter().map(|v| v * scale).collect()).unwrap(),
    ]);
    (p, g)
}

// AdamW, three steps: the same f32 operations in the same order (no FMA contraction), so the emulator is exact;
// sqrtf and division are correctly rounded on a GPU too, so abs 0 + rel 1e-6 is slack for the GPU only.
fn adamw<E: Executor>(e: &E) {
    let (mut params, grads) = params_and_grads(1.0);
    let mut opt = AdamW::new(&params, 1e-3);
    let bufs: Vec<_> = params
        .tensors()
        .iter()
        .map(|t| (up(e, t.data()), e.upload(&vec![0.0; t.numel()]).unwrap(), e.upload(&vec![0.0; t.numel()]).unwrap()))
        .collect();
    let gbufs: Vec<_> = grads.0.iter().map(|g| up(e, g.data())).collect();
    for step in 1..=3 {
        let s = opt.scalars(step);
        for ((p, m, v), g) in bufs.iter().zip(&gbufs) {
            ops::adamw_step(e, &s, p, m, v, g, p_len(e, p)).unwrap();
        }
        opt.step(&mut params, &grads).unwrap();
    }
    for (i, (p, m, v)) in bufs.iter().enumerate() {
        close(&down(e, p), params.tensors()[i].data(), 0.0, 1e-6, "adamw p");
        close(&down(e, m), opt.exp_avg[i].data(), 0.0, 1e-6, "adamw m");
        close(&down(e, v), opt.exp_avg_sq[i].data(), 0.0, 1e-6, "adamw v");
    }
}
gpu_test!(adamw);

fn p_len<E: Executor>(_: &E, b: &E::Buf) -> usize {
    ddpm::gpu::DeviceBuf::len(b)
}

// EMA with warm-up over two updates: same f32 order, exact on the emulator.
fn ema<E: Executor>(e: &E) {
    let (params, grads) = params_and_grads(1.0);
    let mut ema = Ema::new(&params, 0.999, true);
    let shadows: Vec<_> = params.tensors().iter().map(|t| up(e, t.data())).collect();
    // Move the "live" weights so the average has something to do.
    let live: Vec<_> = grads.0.iter().map(|g| up(e, g.data())).collect();
    let mut moved = Params::new();
    moved.add("a", grads.0[0].clone());
    moved.add("b", grads.0[1].clone());
    for _ in 0..2 {
        let (d, alpha) = ema.scalars();
        for (s, p) in shadows.iter().zip(&live) {
            ops::ema_update(e, d, alpha, s, p, p_len(e, s)).unwrap();
        }
        ema.update(&moved).unwrap();
    }
    for (s, want) in shadows.iter().zip(&ema.shadow) {
        close(&down(e, s), want.data(), 0.0, 1e-6, "ema");
    }
}
gpu_test!(ema);

// Global gradient-norm clipping, clipped (norm ~33 > 1) and not (max_norm 1e3). The norm is summed in f32
// blocks vs f64: rel 1e-5 on the norm, the coefficient and the scaled gradients.
fn clip<E: Executor>(e: &E) {
    for max_norm in [1.0f32, 1e3] {
        let (_, mut grads) = params_and_grads(2.0);
        let bufs: Vec<_> = grads.0.iter().map(|g| up(e, g.data())).collect();
        let out = e.alloc(2).unwrap();
        let list: Vec<_> = bufs.iter().map(|b| (b, p_len(e, b))).collect();
        ops::clip_grad_norm(e, &list, max_norm, &out).unwrap();
        let (total, coef) = clip_grad_norm(&mut grads, max_norm).unwrap();
        close(&down(e, &out), &[total, coef], 0.0, 1e-5, "clip total, coef");
        for (b, g) in bufs.iter().zip(&grads.0) {
            close(&down(e, b), g.data(), 1e-7, 1e-5, "clipped grads");
        }
    }
}
gpu_test!(clip);

// The launch checks every executor shares, and the emulator's own: argument kinds, the 1024-thread limit, and
// writes past a buffer's end.
#[test]
fn emulator_catches_bad_launches() {
    let e = Emulator::new();
    let (a, c) = (e.upload(&[1.0; 64]).unwrap(), e.alloc(4).unwrap());
    let err = ops::sgemm(&e, &Gemm::plain(8, 8, 1, false, false), &a, &a, &c).unwrap_err().to_string();
    assert!(err.contains("sgemm C"), "{err}");
    let err =
        unsafe { e.launch(Kernel::SiluFwd, LaunchCfg::linear(1, 256), &[Arg::Buf(&a), Arg::Buf(&c), Arg::I32(4)]) }
            .unwrap_err()
            .to_string();
    assert!(err.contains("parameter `n` is I64"), "{err}");
    let err =
        unsafe { e.launch(Kernel::SiluFwd, LaunchCfg::linear(1, 1025), &[Arg::Buf(&a), Arg::Buf(&c), Arg::I64(4)]) }
            .unwrap_err()
            .to_string();
    assert!(err.contains("invalid block shape"), "{err}");
    // A lying length: silu over 64 elements into a 4-word buffer lands in the guard words.
    let err =
        unsafe { e.launch(Kernel::SiluFwd, LaunchCfg::linear(1, 256), &[Arg::Buf(&a), Arg::Buf(&c), Arg::I64(64)]) }
            .unwrap_err()
            .to_string();
    assert!(err.contains("wrote past the end of `y`"), "{err}");
}

// Without libcuda, opening a device is an error that says why, never a panic.
#[test]
fn cuda_absence_is_an_error() {
    match cuda() {
        Err(why) => {
            assert!(!why.is_empty());
            eprintln!("skipped: no CUDA device ({why}); the `::cuda` kernel tests are ignored");
        }
        Ok(dev) => eprintln!("CUDA device: {}", dev.describe()),
    }
}

/// Runs one of the `selftest_*` kernels on 64 threads and returns the emulator's verdict.
fn selftest(kernel: Kernel, cfg: LaunchCfg) -> (Result<(), ddpm::Error>, Vec<f32>) {
    let e = Emulator::new();
    let y = e.alloc(64).unwrap();
    let r = unsafe { e.launch(kernel, cfg, &[Arg::Buf(&y)]) };
    (r, e.download(&y).unwrap())
}

#[test]
fn emulator_reports_divergent_barrier_with_lines() {
    let err = selftest(Kernel::SelftestDivergentBarrier, LaunchCfg::linear(1, 64)).0.unwrap_err().to_string();
    assert!(
        err.contains("divergent __syncthreads()") && err.contains("selftest.cu:9") && err.contains("selftest.cu:11"),
        "{err}"
    );
}

#[test]
fn emulator_reports_deadlock_with_lines() {
    let err = selftest(Kernel::SelftestDeadlock, LaunchCfg::linear(1, 64)).0.unwrap_err().to_string();
    assert!(err.contains("deadlock") && err.contains("selftest.cu:21") && err.contains("common.cuh:31"), "{err}");
}

#[test]
fn emulator_poisons_dynamic_shared_memory() {
    let (r, y) =
        selftest(Kernel::SelftestUnwrittenSmem, LaunchCfg { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 128 });
    r.unwrap();
    assert!(y[..32].iter().all(|v| v.is_nan()));
    let err = selftest(
        Kernel::SelftestUnwrittenSmem,
        LaunchCfg { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 49 * 1024 },
    )
    .0
    .unwrap_err()
    .to_string();
    assert!(err.contains("48 KiB"), "{err}");
}
