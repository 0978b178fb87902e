//! The convolutions' GPU kernels against the CPU's. Sums of up to 70 products of values in [-1, 1) in a different
//! order from the CPU's GEMM (and the CPU's Winograd for 3x3 stride 1): rel 1e-5 plus abs 2e-5 for cancellation.

use super::{BiasSums, ConvOps, Gout, Keep};
use crate::backend::{Cpu, Gpu};
use crate::desc::{Columns, ConvDesc, ConvGeom, Epilogue, LayerGrads};
use crate::gpu::Executor;
use crate::ops::linear::gpu::{split_count, Gemm};
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// Conv2d forward (bias, channel bias, with and without a residual) and both gradients, for a 3x3 stride-1 conv
// on an odd grid, a 3x3 stride-2 one and a 1x1 one with batch 1. The channel bias is columns 2.. of a wider matrix.
fn conv2d<E: Executor>(g: &Gpu<E>) {
    for (n, c, h, w, k, s, p, co) in [(2, 3, 7, 9, 3, 1, 1, 5), (1, 5, 9, 7, 3, 2, 1, 3), (2, 4, 5, 3, 1, 1, 0, 6)] {
        let d = ConvDesc { n, geom: ConvGeom::new(c, h, w, k, s, p).unwrap(), channels: co };
        let what = format!("conv2d n{n} c{c} {h}x{w} k{k} s{s} p{p} co{co}");
        let (x, wt, b, cb) = (rand(10, n * c * h * w), rand(11, co * c * k * k), rand(12, co), rand(13, n * (co + 3)));
        let out_len = n * co * d.geom.oh * d.geom.ow;
        let res = rand(15, out_len);
        let (xb, wb, bb, cbb, rb) = (up(g, &x), up(g, &wt), up(g, &b), up(g, &cb), up(g, &res));
        for residual in [false, true] {
            let mut want = vec![0.0; out_len];
            let cols = Columns { buf: &cb, start: 2, stride: co + 3 };
            let epi = Epilogue { bias: Some(&b), chan_bias: Some(cols), residual: residual.then_some(&res) };
            Cpu.conv2d_forward(&d, &x, &wt, epi, &mut want).unwrap();
            let mut got = out(g, out_len);
            let cols = Columns { buf: &cbb, start: 2, stride: co + 3 };
            let epi = Epilogue { bias: Some(&bb), chan_bias: Some(cols), residual: residual.then_some(&rb) };
            g.conv2d_forward(&d, &xb, &wb, epi, &mut got).unwrap();
            close(&down(g, &got), &want, 2e-5, 1e-5, &format!("{what} forward residual={residual}"));
        }

        let gout = rand(14, out_len);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
        Cpu.conv2d_backward(&d, &x, &wt, &gout, LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) }).unwrap();
        let (gb, mut dxb, mut dwb) = (up(g, &gout), out(g, x.len()), out(g, wt.len()));
        g.conv2d_backward(&d, &xb, &wb, &gb, LayerGrads { dx: Some(&mut dxb), dw: Some(&mut dwb) }).unwrap();
        close(&down(g, &dxb), &dx, 2e-5, 1e-5, &format!("{what} dx"));
        close(&down(g, &dwb), &dw, 2e-5, 1e-5, &format!("{what} dW"));
    }
}
gpu_test!(conv2d);

// ConvTranspose2d forward and both gradients, the UNet's 4x4 stride-2 upsampler on an odd grid, and a 3x3
// stride-1 one with batch 1. Tolerances as conv2d.
fn conv_transpose2d<E: Executor>(g: &Gpu<E>) {
    for (n, ci, co, h, w, k, s, p) in [(2, 5, 3, 8, 6, 4, 2, 1), (1, 3, 4, 5, 7, 3, 1, 1)] {
        let d = ConvDesc { n, geom: ConvGeom::new(co, h, w, k, s, p).unwrap(), channels: ci };
        let what = format!("conv_transpose2d n{n} ci{ci} co{co} out {h}x{w} k{k} s{s}");
        let (x, wt, b) = (rand(20, n * ci * d.geom.oh * d.geom.ow), rand(21, ci * co * k * k), rand(22, co));
        let out_len = n * co * h * w;
        let mut want = vec![0.0; out_len];
        Cpu.conv_transpose2d_forward(&d, &x, &wt, Some(&b), &mut want).unwrap();
        let (xb, wb, mut got) = (up(g, &x), up(g, &wt), out(g, out_len));
        g.conv_transpose2d_forward(&d, &xb, &wb, Some(&up(g, &b)), &mut got).unwrap();
        close(&down(g, &got), &want, 2e-5, 1e-5, &format!("{what} forward"));

        let gout = rand(23, out_len);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; wt.len()]);
        Cpu.conv_transpose2d_backward(&d, &x, &wt, &gout, LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) }).unwrap();
        let (mut dxb, mut dwb) = (out(g, x.len()), out(g, wt.len()));
        let grads = LayerGrads { dx: Some(&mut dxb), dw: Some(&mut dwb) };
        g.conv_transpose2d_backward(&d, &xb, &wb, &up(g, &gout), grads).unwrap();
        close(&down(g, &dxb), &dx, 2e-5, 1e-5, &format!("{what} dx"));
        close(&down(g, &dwb), &dw, 2e-5, 1e-5, &format!("{what} dW"));
    }
}
gpu_test!(conv_transpose2d);

// ---- bf16 on the tensor cores ----------------------------------------------------------------------------------
// Each conv of the UNet (base 64, batch 2, its real channel counts and resolutions) in Precision::Bf16, against a
// float64 reference, with two bounds derived from the arithmetic, per output element, with S = Σ|terms|:
// - against the exact sums of the bf16-rounded inputs: only the f32 accumulation differs, and any order of
//   summing `terms` values errs by at most terms·u·S (u = 2⁻²⁴);
// - against the exact sums of the unrounded inputs: rounding each operand to bf16 (8 significant bits, relative
//   error at most 2⁻⁸, half an ulp of its 8-bit significand) moves each product by at most (2·2⁻⁸ + 2⁻¹⁶)·|product|,
//   so the sum by that times S.
// Both also allow 1e-6·(1 + |want|) for the f32 epilogue (bias adds and the residual).

/// `v` rounded to bf16 (to nearest, ties to even) and back.
fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// The three products of the conv `g` between `p` on its output grid (`[n, a, oh, ow]`), `q` on its input grid
/// (`[n, g.c, h, w]`) and `w: [a, g.c, k, k]`, in f64, each with Σ|terms| per element, from the scatter form of
/// the definition: `fwd[i, a, o] = Σ q[i, b, src]·w[a, b, tap]` (conv forward, transposed-conv dx),
/// `adj[i, b, s] = Σ p[i, a, o]·w[a, b, tap]` (conv dx, transposed-conv forward) and
/// `wgrad[a, b, tap] = Σ p[i, a, o]·q[i, b, s]` (both weight gradients).
struct Products {
    fwd: (Vec<f64>, Vec<f64>),
    adj: (Vec<f64>, Vec<f64>),
    wgrad: (Vec<f64>, Vec<f64>),
}

fn products(g: &ConvGeom, n: usize, a: usize, p: &[f32], q: &[f32], w: &[f32]) -> Products {
    let (b, kk, oq, iq) = (g.c, g.k * g.k, g.oh * g.ow, g.h * g.w);
    let z = |len| (vec![0.0f64; len], vec![0.0f64; len]);
    let (mut fwd, mut adj, mut wgrad) = (z(n * a * oq), z(n * b * iq), z(a * b * kk));
    let add = |acc: &mut (Vec<f64>, Vec<f64>), at: usize, x: f32, y: f32| {
        let t = x as f64 * y as f64;
        acc.0[at] += t;
        acc.1[at] += t.abs();
    };
    for i in 0..n {
        for (oy, ox) in (0..g.oh).flat_map(|oy| (0..g.ow).map(move |ox| (oy, ox))) {
            for (ky, kx) in (0..g.k).flat_map(|ky| (0..g.k).map(move |kx| (ky, kx))) {
                let (iy, ix) =
                    ((oy * g.stride + ky) as isize - g.pad as isize, (ox * g.stride + kx) as isize - g.pad as isize);
                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                    continue;
                }
                let (s, o, tap) = (iy as usize * g.w + ix as usize, oy * g.ow + ox, ky * g.k + kx);
                for ca in 0..a {
                    for cb in 0..b {
                        let (po, qs, wt) = ((i * a + ca) * oq + o, (i * b + cb) * iq + s, (ca * b + cb) * kk + tap);
                        add(&mut fwd, po, q[qs], w[wt]);
                        add(&mut adj, qs, p[po], w[wt]);
                        add(&mut wgrad, wt, p[po], q[qs]);
                    }
                }
            }
        }
    }
    Products { fwd, adj, wgrad }
}

/// `got` against both bounds of the section comment; `exact` and `rounded` are `(sums, Σ|terms|)` of the
/// unrounded and the bf16-rounded inputs, `extra` what the epilogue adds to every sum.
#[track_caller]
fn check_bf16(
    got: &[f32],
    exact: &(Vec<f64>, Vec<f64>),
    rounded: &(Vec<f64>, Vec<f64>),
    terms: usize,
    extra: &[f64],
    what: &str,
) {
    let u = 2f64.powi(-24);
    assert_eq!(got.len(), exact.0.len(), "{what}: length");
    for (i, &g) in got.iter().enumerate() {
        let g = g as f64;
        let (want_r, s_r) = (rounded.0[i] + extra[i], rounded.1[i]);
        let tol_r = terms as f64 * u * s_r + 1e-6 * (1.0 + want_r.abs());
        assert!((g - want_r).abs() <= tol_r, "{what}[{i}]: got {g}, bf16-input sum {want_r} (tol {tol_r:.3e})");
        let (want, s) = (exact.0[i] + extra[i], exact.1[i]);
        let tol = (2.0 * 2f64.powi(-8) + 2f64.powi(-16) + terms as f64 * u) * s + 1e-6 * (1.0 + want.abs());
        assert!((g - want).abs() <= tol, "{what}[{i}]: got {g}, f32-input sum {want} (tol {tol:.3e})");
    }
}

/// Each conv shape of the UNet at base 64 (the reference recipe) with batch 2: the 3x3 convs at 32x32 and 8x8, a
/// stride-2 one, a 1x1 skip; then 8 and 24 channels on odd grids (several taps per 32-deep k-tile, rows that end
/// mid-tile), a 1x1 grid (a linear layer's shape), channel counts padded to 8 (the UNet's 1-channel input and
/// output convs, 3 -> 5), and strided convs whose input gradients split into unequal output classes (a 1x1
/// stride-2 conv, whose odd pixels meet no tap and must still be written; stride 3; a 5x5 one), in Precision::Bf16, forward (with bias, channel bias and
/// residual) and both gradients, with the bounds above.
fn conv2d_bf16<E: Executor>(g: &Gpu<E>) {
    let n = 2;
    for (c, hw, k, s, p, co) in [
        (64, 32, 3, 1, 1, 64),
        (256, 8, 3, 1, 1, 256),
        (64, 32, 3, 2, 1, 128),
        (256, 16, 1, 1, 0, 128),
        (8, 7, 3, 1, 1, 16),
        (24, 9, 3, 2, 1, 8),
        (40, 1, 1, 1, 0, 24),
        (1, 12, 3, 1, 1, 16),
        (16, 12, 3, 1, 1, 1),
        (3, 5, 3, 2, 1, 5),
        (8, 9, 1, 2, 0, 16),
        (16, 11, 3, 3, 0, 8),
        (8, 10, 5, 2, 2, 8),
    ] {
        let geom = ConvGeom::new(c, hw, hw, k, s, p).unwrap();
        let d = ConvDesc { n, geom, channels: co };
        let what = format!("bf16 conv2d c{c} {hw}x{hw} k{k} s{s} co{co}");
        let (oq, kk) = (geom.oh * geom.ow, k * k);
        let (x, wt, gout) = (rand(30, n * c * hw * hw), rand(31, co * c * kk), rand(32, n * co * oq));
        // The channel bias as columns 4.. of a wider matrix.
        let (b, cb, res) = (rand(33, co), rand(34, n * (co + 5)), rand(35, n * co * oq));
        let exact = products(&geom, n, co, &gout, &x, &wt);
        let rounded = products(&geom, n, co, &bf16_round(&gout), &bf16_round(&x), &bf16_round(&wt));

        let (xb, wb) = (up(g, &x), up(g, &wt));
        let mut got = out(g, n * co * oq);
        let cbb = up(g, &cb);
        let cols = Columns { buf: &cbb, start: 4, stride: co + 5 };
        let epi = Epilogue { bias: Some(&up(g, &b)), chan_bias: Some(cols), residual: Some(&up(g, &res)) };
        g.conv2d_forward(&d, &xb, &wb, epi, &mut got).unwrap();
        let extra: Vec<f64> = (0..n * co * oq)
            .map(|e| res[e] as f64 + (b[e / oq % co] as f64 + cb[e / oq / co * (co + 5) + 4 + e / oq % co] as f64))
            .collect();
        check_bf16(&down(g, &got), &exact.fwd, &rounded.fwd, c * kk, &extra, &format!("{what} forward"));

        let (mut dxb, mut dwb) = (out(g, x.len()), out(g, wt.len()));
        g.conv2d_backward(&d, &xb, &wb, &up(g, &gout), LayerGrads { dx: Some(&mut dxb), dw: Some(&mut dwb) }).unwrap();
        check_bf16(&down(g, &dxb), &exact.adj, &rounded.adj, co * kk, &vec![0.0; x.len()], &format!("{what} dx"));
        check_bf16(&down(g, &dwb), &exact.wgrad, &rounded.wgrad, n * oq, &vec![0.0; wt.len()], &format!("{what} dW"));
    }
}
gpu_test!(conv2d_bf16, crate::backend::Precision::Bf16);

/// The UNet's two upsamplers (4x4 stride-2 transposed convs, base 64, batch 2) and a small one with channel counts
/// padded to 8 (5 -> 3) in Precision::Bf16, forward with
/// bias and both gradients, with the bounds above.
fn conv_transpose2d_bf16<E: Executor>(g: &Gpu<E>) {
    let n = 2;
    for (ch, c, hw) in [(256, 128, 16), (128, 64, 32), (5, 3, 6)] {
        let geom = ConvGeom::new(c, hw, hw, 4, 2, 1).unwrap();
        let d = ConvDesc { n, geom, channels: ch };
        let what = format!("bf16 conv_transpose2d {ch}->{c} out {hw}x{hw}");
        let (oq, iq) = (geom.oh * geom.ow, hw * hw);
        let (x, wt, gout, b) = (rand(40, n * ch * oq), rand(41, ch * c * 16), rand(42, n * c * iq), rand(43, c));
        let exact = products(&geom, n, ch, &x, &gout, &wt);
        let rounded = products(&geom, n, ch, &bf16_round(&x), &bf16_round(&gout), &bf16_round(&wt));

        let (xb, wb) = (up(g, &x), up(g, &wt));
        let mut got = out(g, n * c * iq);
        g.conv_transpose2d_forward(&d, &xb, &wb, Some(&up(g, &b)), &mut got).unwrap();
        let extra: Vec<f64> = (0..n * c * iq).map(|e| b[e / iq % c] as f64).collect();
        check_bf16(&down(g, &got), &exact.adj, &rounded.adj, ch * 16, &extra, &format!("{what} forward"));

        let (mut dxb, mut dwb) = (out(g, x.len()), out(g, wt.len()));
        let grads = LayerGrads { dx: Some(&mut dxb), dw: Some(&mut dwb) };
        g.conv_transpose2d_backward(&d, &xb, &wb, &up(g, &gout), grads).unwrap();
        check_bf16(&down(g, &dxb), &exact.fwd, &rounded.fwd, c * 16, &vec![0.0; x.len()], &format!("{what} dx"));
        check_bf16(&down(g, &dwb), &exact.wgrad, &rounded.wgrad, n * oq, &vec![0.0; wt.len()], &format!("{what} dW"));
    }
}
gpu_test!(conv_transpose2d_bf16, crate::backend::Precision::Bf16);

/// The bf16 weight gradient (split-K with a fixed partition and a fixed-order reduction) is the same bits in two
/// runs.
fn wgrad_bf16_deterministic<E: Executor>(g: &Gpu<E>) {
    let (n, c, hw, co) = (2, 64, 32, 64);
    let d = ConvDesc { n, geom: ConvGeom::new(c, hw, hw, 3, 1, 1).unwrap(), channels: co };
    let (x, wt, gout) =
        (up(g, &rand(50, n * c * hw * hw)), up(g, &rand(51, co * c * 9)), up(g, &rand(52, n * co * hw * hw)));
    let runs: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            let mut dw = out(g, co * c * 9);
            g.conv2d_backward(&d, &x, &wt, &gout, LayerGrads { dx: None, dw: Some(&mut dw) }).unwrap();
            down(g, &dw).iter().map(|v| v.to_bits()).collect()
        })
        .collect();
    assert!(runs[0] == runs[1], "the bf16 weight gradient differs between two runs");
}
gpu_test!(wgrad_bf16_deterministic, crate::backend::Precision::Bf16);

/// The f32 weight gradient (a batch-summed GEMM split over several blocks per C tile with a partition fixed by the
/// shapes, partials added in a fixed order) is the same bits in two runs and matches the CPU. 4 images of 16x16
/// make 4·16 stages of 16 per C tile, so the GEMM splits; the CPU comparison keeps conv2d's tolerances.
fn wgrad_f32_deterministic<E: Executor>(g: &Gpu<E>) {
    let (n, c, hw, co) = (4, 3, 16, 5);
    let d = ConvDesc { n, geom: ConvGeom::new(c, hw, hw, 3, 1, 1).unwrap(), channels: co };
    let (x, wt, gout) = (rand(60, n * c * hw * hw), rand(61, co * c * 9), rand(62, n * co * hw * hw));
    let plane = hw * hw;
    let gemm = Gemm { nsum: n, ..Gemm::plain(co, c * 9, plane, false, true) };
    assert!(split_count(&gemm) > 1, "the test shape should split the batch sum");
    let (xb, wb, gb) = (up(g, &x), up(g, &wt), up(g, &gout));
    let runs: Vec<Vec<f32>> = (0..2)
        .map(|_| {
            let mut dw = out(g, co * c * 9);
            g.conv2d_backward(&d, &xb, &wb, &gb, LayerGrads { dx: None, dw: Some(&mut dw) }).unwrap();
            down(g, &dw)
        })
        .collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&runs[0]) == bits(&runs[1]), "the f32 weight gradient differs between two runs");
    let mut dw = vec![0.0; wt.len()];
    Cpu.conv2d_backward(&d, &x, &wt, &gout, LayerGrads { dx: None, dw: Some(&mut dw) }).unwrap();
    close(&runs[0], &dw, 2e-5, 1e-5, "f32 split weight gradient");
}
gpu_test!(wgrad_f32_deterministic);

/// Exact per-channel sums of `t: [n, c, plane]` and their Σ|terms|: per image (`[n, c]`) and over images (`[c]`).
fn f64_channel_sums(t: &[f32], n: usize, c: usize, plane: usize) -> [(Vec<f64>, Vec<f64>); 2] {
    let (mut per_image, mut total) = ((vec![0.0; n * c], vec![0.0; n * c]), (vec![0.0; c], vec![0.0; c]));
    for (e, &v) in t.iter().enumerate() {
        let (row, ch) = (e / plane, e / plane % c);
        for (acc, at) in [(&mut per_image, row), (&mut total, ch)] {
            acc.0[at] += v as f64;
            acc.1[at] += (v as f64).abs();
        }
    }
    [per_image, total]
}

/// `got` against the exact sums `want` with the bound for f32 sums of depth `depth`: depth·u·Σ|terms|.
#[track_caller]
fn check_sums<E: Executor>(g: &Gpu<E>, got: Option<&E::Buf>, want: &(Vec<f64>, Vec<f64>), depth: usize, what: &str) {
    let got = down(g, got.unwrap_or_else(|| panic!("{what}: not returned")));
    assert_eq!(got.len(), want.0.len(), "{what}: length");
    for (i, &v) in got.iter().enumerate() {
        let tol = depth as f64 * 2f64.powi(-24) * want.1[i];
        assert!((v as f64 - want.0[i]).abs() <= tol, "{what}[{i}]: got {v}, exact {} (tol {tol:.3e})", want.0[i]);
    }
}

/// The tape's forms under bf16. The gradients from what the forward kept (the NHWC copy of x, the weight packed
/// for the adjoint GEMM in the forward's packing launch) are the same bits as from a fresh conversion and packing
/// (they are the same values). The bias sums that come with gout's conversion are f32
/// trees: a warp's butterfly over each 32-pixel tile (5 levels), then the tiles in order, then (for the bias, when
/// the per-image sums are asked for too) the images in order; a sum of depth D errs by at most D·u·Σ|terms|
/// (u = 2⁻²⁴, first order), the bound checked against the f64 sums. Shapes: planes that end mid-tile, channel
/// counts that are neither multiples of 32 nor of 8, a 1x1 grid (a linear layer's), a transposed conv; all of
/// these split each image's pixels over several blocks, and the last (64 images of 70 channels: 192 blocks) does not.
fn conv_backward_with_bf16<E: Executor>(g: &Gpu<E>) {
    for (n, c, hw, k, s, co, transposed) in [
        (3, 5, 7, 3, 1, 37, false),
        (2, 16, 12, 3, 2, 8, false),
        (4, 8, 1, 1, 1, 3, false),
        (2, 5, 6, 4, 2, 3, true),
        (64, 8, 10, 1, 1, 70, false),
    ] {
        let geom = ConvGeom::new(c, hw, hw, k, s, k / 2 - usize::from(k == 4)).unwrap();
        let d = ConvDesc { n, geom, channels: co };
        let what = format!("n{n} c{c} {hw}x{hw} k{k} s{s} co{co} transposed={transposed}");
        // A conv maps [c, hw, hw] to [co, oh, ow]; its adjoint the other way round.
        let (oq, iq) = (geom.oh * geom.ow, hw * hw);
        let (x_len, out_len, out_c, out_plane) =
            if transposed { (n * co * oq, n * c * iq, c, iq) } else { (n * c * iq, n * co * oq, co, oq) };
        let (x, wt, gout) = (rand(70, x_len), rand(71, co * c * k * k), rand(72, out_len));
        let (xb, wb, gb) = (up(g, &x), up(g, &wt), up(g, &gout));
        let mut y = out(g, out_len);
        let keep = Keep { for_dw: true, for_dx: true };
        let kept = if transposed {
            g.conv_transpose2d_forward_keep(&d, (&xb, None), (&wb, None), None, &mut y, keep)
        } else {
            g.conv2d_forward_keep(&d, (&xb, None), (&wb, None), Epilogue::none(), &mut y, keep)
        };
        let kept = kept.unwrap();
        let kept_both = kept.as_ref().is_some_and(|k| k.input.is_some() && k.weight.is_some());
        assert!(kept_both, "{what}: the bf16 forward keeps its input's copy and the adjoint's weight");
        // Runs the backward, with the bias sums into a buffer of their own when `bias`; returns dx's and dW's bits,
        // the bias sums and the per-image sums.
        let run_with = |kept, bias: bool, chan_bias, with_dw: bool| {
            let (mut dx, mut dw, mut db) = (out(g, x_len), out(g, wt.len()), out(g, out_c));
            let grads = LayerGrads { dx: Some(&mut dx), dw: with_dw.then_some(&mut dw) };
            let sums = BiasSums { bias: bias.then_some(&mut db), chan_bias };
            let per_image = if transposed {
                g.conv_transpose2d_backward_with(&d, (&xb, &wb, &mut Gout::of(&gb)), kept, grads.into(), sums)
            } else {
                g.conv2d_backward_with(&d, (Some(&xb), &wb, &mut Gout::of(&gb)), kept, grads.into(), sums)
            };
            let bits = |b| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            (bits(&dx), bits(&dw), bias.then_some(db), per_image.unwrap())
        };
        let run = |kept, bias, chan_bias| run_with(kept, bias, chan_bias, true);
        let (dx, dw, both, both_per_image) = run(kept.as_ref(), true, true);
        let (dx_fresh, dw_fresh, _, none) = run(None, false, false);
        assert!(dx == dx_fresh && dw == dw_fresh, "{what}: gradients differ with the kept input copy");
        assert!(none.is_none(), "{what}: per-image sums not asked for");
        let (_, _, bias_only, bias_only_per_image) = run(kept.as_ref(), true, false);
        assert!(bias_only_per_image.is_none(), "{what}: channel-bias sums not asked for");
        // Without a weight gradient the bias sums take a launch of their own, and the same bits.
        let (_, _, without_dw, _) = run_with(kept.as_ref(), true, false, false);
        let bits = |b: &Option<_>| b.as_ref().map(|b| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert!(bits(&without_dw) == bits(&bias_only), "{what}: bias sums differ without the weight gradient");

        let depth = sum_depth(out_plane);
        let [per_image, total] = f64_channel_sums(&gout, n, out_c, out_plane);
        check_sums(g, both_per_image.as_ref(), &per_image, depth, &format!("{what} per-image sums"));
        check_sums(g, both.as_ref(), &total, depth + n, &format!("{what} sums"));
        check_sums(g, bias_only.as_ref(), &total, depth + n, &format!("{what} sums alone"));
    }
}
gpu_test!(conv_backward_with_bf16, crate::backend::Precision::Bf16);

/// The depth of a summing conversion's per-image sums over `plane` pixels: each of a block's lanes adds its
/// `tiles/splits` pixels (rounded up), a butterfly of 5 levels adds the lanes, `sum_rows` adds the `splits` blocks:
/// ⌈t/s⌉ + s <= t + 1 for 1 <= s <= t tiles of 32 pixels.
fn sum_depth(plane: usize) -> usize {
    plane.div_ceil(32) + 6
}

/// [`Tape::norm_conv2d`](crate::autograd::Tape::norm_conv2d) against `group_norm` then `conv2d` on the same
/// backend, through an MSE loss: the output and every gradient equal to the bit, since both run the same kernels'
/// arithmetic (under bf16 the fused GroupNorm rounds its output to bf16 as the conv's conversion rounds the f32
/// one). 16 channels take the fused path; 12 (not a multiple of 8) fall back to the two ops.
fn norm_conv2d_equals_unfused<E: Executor>(g: &Gpu<E>) {
    use crate::autograd::Tape;
    use crate::ops::conv::{ChanBias, ConvExtra, Norm};
    use crate::params::Params;
    use crate::tensor::Tensor;
    for c in [16, 12] {
        let (n, h, w, co, groups) = (2, 6, 5, 8, 4);
        let mut p = Params::new();
        let mut add = |name: &str, shape: &[usize], seed: u64| {
            let len = shape.iter().product();
            p.add(name, Tensor::new(shape, rand(seed, len)).unwrap())
        };
        let x = add("x", &[n, c, h, w], 20);
        let (gamma, beta) = (add("gamma", &[c], 21), add("beta", &[c], 22));
        let (wt, b) = (add("w", &[co, c, 3, 3], 23), add("b", &[co], 24));
        let (cb, res) = (add("chan_bias", &[n, co], 25), add("residual", &[n, co, h, w], 26));
        let params = p.to_backend(g).unwrap();
        let target = Tensor::new(&[n, co, h, w], rand(27, n * co * h * w)).unwrap();
        let run = |fused: bool| -> (Vec<f32>, Vec<Vec<f32>>) {
            let mut t = Tape::new(&params);
            let [x, gamma, beta, wt, b, cb, res] = [x, gamma, beta, wt, b, cb, res].map(|id| t.param(id));
            let extra = ConvExtra { chan_bias: Some(ChanBias::of(cb)), residual: Some(res), operand: false };
            let y = if fused {
                t.norm_conv2d(x, Norm { gamma, beta, groups, silu: true }, wt, Some(b), 1, 1, extra).unwrap()
            } else {
                let a = t.group_norm(x, gamma, beta, groups, true).unwrap();
                t.conv2d(a, wt, Some(b), 1, 1, extra).unwrap()
            };
            let target = t.input_host(target.clone()).unwrap();
            let loss = t.mse(y, target).unwrap();
            let out = down(g, t.value(y).buf());
            let grads = t.backward(loss).unwrap();
            (out, grads.0.iter().map(|v| down(g, v.buf())).collect())
        };
        let ((y, grads), (y_ref, grads_ref)) = (run(true), run(false));
        let first_diff = |a: &[f32], b: &[f32]| {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).position(|(p, q)| p.to_bits() != q.to_bits()).map(|i| (i, a[i], b[i]))
        };
        assert_eq!(first_diff(&y, &y_ref), None, "c={c}: output (index, fused, unfused)");
        for (i, (got, want)) in grads.iter().zip(&grads_ref).enumerate() {
            let name = params.name(crate::params::ParamId(i));
            assert_eq!(first_diff(got, want), None, "c={c}: gradient of {name} (index, fused, unfused)");
        }
    }
}
gpu_test!(norm_conv2d_equals_unfused, crate::backend::Precision::Bf16);

/// Weights packed for a whole arena in one launch ([`ConvOps::pack_weights`]) against each conv packing its own:
/// a conv, a transposed conv and a linear layer's weight side by side in one arena give the same outputs and input
/// gradients to the bit (the same bf16 rounding of the same values, in the layouts the GEMMs read).
fn packed_weights_equal_packing_per_conv<E: Executor>(g: &Gpu<E>) {
    use crate::desc::LinearDesc;
    use crate::ops::linear::LinearOps;
    let (n, c, h, w, co) = (2, 12, 6, 5, 8);
    let conv = ConvDesc { n, geom: ConvGeom::new(c, h, w, 3, 1, 1).unwrap(), channels: co };
    // A transposed conv from co channels on the conv's output grid (6x5 -> 12x10), and a [co, c] linear layer.
    let upsample = ConvDesc { n, geom: ConvGeom::new(c, 2 * h, 2 * w, 4, 2, 1).unwrap(), channels: co };
    let shapes: [&[usize]; 3] = [&[co, c, 3, 3], &[co, c, 4, 4], &[co, c]];
    let offsets = [0, 2000, 4000];
    let mut arena = vec![0.0; 5000];
    for (i, (s, at)) in shapes.iter().zip(offsets).enumerate() {
        let len = s.iter().product::<usize>();
        arena[at..at + len].copy_from_slice(&rand(30 + i as u64, len));
    }
    let arena_buf = up(g, &arena);
    let tensors: Vec<(usize, &[usize])> = offsets.iter().copied().zip(shapes).collect();
    let plan = g.pack_plan(&tensors).unwrap().expect("bf16 packs");
    let packed = g.pack_weights(&plan, &arena_buf).unwrap();
    let weight = |i: usize| up(g, &arena[offsets[i]..offsets[i] + shapes[i].iter().product::<usize>()]);
    let keep = Keep { for_dw: false, for_dx: true };
    let run = |use_packed: bool| {
        let pick = |i: usize| if use_packed { packed[i].as_ref() } else { None };
        // The conv, then its input gradient through the kept adjoint operand.
        let (x, gy) = (up(g, &rand(40, n * c * h * w)), up(g, &rand(41, n * co * h * w)));
        let mut y = out(g, n * co * h * w);
        let kept =
            g.conv2d_forward_keep(&conv, (&x, None), (&weight(0), pick(0)), Epilogue::none(), &mut y, keep).unwrap();
        let mut dx = out(g, n * c * h * w);
        let grads = LayerGrads { dx: Some(&mut dx), dw: None };
        g.conv2d_backward_with(
            &conv,
            (None, &weight(0), &mut Gout::of(&gy)),
            kept.as_ref(),
            grads.into(),
            BiasSums::default(),
        )
        .unwrap();
        // The transposed conv of y, and the linear layer.
        let mut z = out(g, n * c * 4 * h * w);
        g.conv_transpose2d_forward_keep(&upsample, (&y, None), (&weight(1), pick(1)), None, &mut z, keep).unwrap();
        let mut l = out(g, n * co);
        let lin = LinearDesc { batch: n, fin: c, fout: co };
        let xl = up(g, &rand(42, n * c));
        g.linear_forward_keep(lin, ((&xl, None), (&weight(2), pick(2)), None), &mut l, keep).unwrap();
        [&y, &dx, &z, &l].map(|b| down(g, b).iter().map(|f| f.to_bits()).collect::<Vec<_>>())
    };
    let (per_conv, packed) = (run(false), run(true));
    for (k, what) in ["conv", "conv dx", "transposed conv", "linear"].iter().enumerate() {
        assert!(per_conv[k] == packed[k], "{what}: the packed weights give other bits");
    }
}
gpu_test!(packed_weights_equal_packing_per_conv, crate::backend::Precision::Bf16);

/// A backward pass asked to add to dx (`GradsInto::add_dx`, what the tape asks when dx's other readers have made
/// its gradient already) leaves exactly `before + fresh`, the bits of the tape's own addition of a freshly written
/// dx, for a conv, a transposed conv and a linear layer; the weight gradient is unchanged by it.
fn backward_adds_to_dx<B: crate::backend::LinearOps>(be: &B) {
    use crate::desc::{GradsInto, LinearDesc};
    let geom = ConvGeom::new(8, 6, 6, 3, 2, 1).unwrap();
    let (conv, linear) = (ConvDesc { n: 2, geom, channels: 16 }, LinearDesc { batch: 3, fin: 16, fout: 8 });
    let (iq, oq) = (geom.h * geom.w, geom.oh * geom.ow);
    // (what, x length, weight length, gout length)
    for (what, x_len, w_len, g_len) in [
        ("conv2d", 2 * 8 * iq, 16 * 8 * 9, 2 * 16 * oq),
        ("conv_transpose2d", 2 * 16 * oq, 16 * 8 * 9, 2 * 8 * iq),
        ("linear", 3 * 16, 8 * 16, 3 * 8),
    ] {
        let up = |v: Vec<f32>| be.upload(v).unwrap();
        let (x, w, gout, before) = (up(rand(80, x_len)), up(rand(81, w_len)), up(rand(82, g_len)), rand(83, x_len));
        let run = |add_dx: bool| {
            let (mut dx, mut dw) = (up(if add_dx { before.clone() } else { vec![0.0; x_len] }), up(vec![0.0; w_len]));
            let into = GradsInto { grads: LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) }, add_dx };
            match what {
                "conv2d" => be.conv2d_backward_with(
                    &conv,
                    (Some(&x), &w, &mut Gout::of(&gout)),
                    None,
                    into,
                    BiasSums::default(),
                ),
                "conv_transpose2d" => be.conv_transpose2d_backward_with(
                    &conv,
                    (&x, &w, &mut Gout::of(&gout)),
                    None,
                    into,
                    BiasSums::default(),
                ),
                _ => be.linear_backward_with(linear, (&x, &w, &mut Gout::of(&gout)), None, (into, None)).map(|()| None),
            }
            .unwrap();
            let bits = |b| be.download(b).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            (bits(&dx), bits(&dw))
        };
        let ((fresh, dw_fresh), (added, dw_added)) = (run(false), run(true));
        let want: Vec<u32> = before.iter().zip(&fresh).map(|(b, f)| (b + f32::from_bits(*f)).to_bits()).collect();
        assert!(added == want, "{what}: dx added to is not before + fresh dx");
        assert!(dw_added == dw_fresh, "{what}: the weight gradient changed");
    }
}

#[test]
fn backward_adds_to_dx_cpu() {
    backward_adds_to_dx(&Cpu);
}
fn backward_adds_to_dx_gpu<E: Executor>(g: &Gpu<E>) {
    backward_adds_to_dx(g);
}
gpu_test!(backward_adds_to_dx_gpu);
fn backward_adds_to_dx_bf16<E: Executor>(g: &Gpu<E>) {
    backward_adds_to_dx(g);
}
gpu_test!(backward_adds_to_dx_bf16, crate::backend::Precision::Bf16);
