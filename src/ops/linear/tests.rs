//! The GEMM and the linear layers' GPU kernels against the CPU's.

use super::gemm::{self, Mat};
use super::gpu::{self, Gemm};
use super::LinearOps;
use crate::backend::{ConvOps, Cpu, Gpu, Precision, ReduceOps};
use crate::desc::{LayerGrads, LinearDesc, Planes};
use crate::gpu::{Executor, Kernel};
use crate::ops::conv::{Gout, Keep};
use crate::ops::testing::{close, down, gpu_test, out, rand, up};
use crate::ops::unary::UnaryKind;

// GEMM: every transpose combination, accumulate, a batch, and a batch sum. Sums of up to 70 products of values in
// [-1, 1): different order than the CPU's GEMM, so rel 1e-5 plus abs 1e-5 for cancellation.
fn sgemm<E: Executor>(dev: &Gpu<E>) {
    let e = dev.executor();
    let (m, n, k) = (67, 5, 70);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (a, b, c0) = (rand(1, m * k), rand(2, k * n), rand(3, m * n));
        for acc in [false, true] {
            let mut want = c0.clone();
            gemm::sgemm(
                (m, n, k),
                Mat { data: &a, transposed: ta, ld: None },
                Mat { data: &b, transposed: tb, ld: None },
                &mut want,
                acc,
                1,
            );
            let mut c = up(dev, &c0);
            let g = Gemm { accumulate: acc, ..Gemm::plain(m, n, k, ta, tb) };
            gpu::sgemm(e, &g, &up(dev, &a), &up(dev, &b), &mut c).unwrap();
            close(&down(dev, &c), &want, 1e-5, 1e-5, &format!("sgemm ta={ta} tb={tb} acc={acc}"));
        }
    }
    // Batch of 3 with a shared A, and the same three summed into one C.
    let (a, b) = (rand(4, m * k), rand(5, 3 * k * n));
    let mut want = vec![0.0; 3 * m * n];
    let mut sum = vec![0.0; m * n];
    for i in 0..3 {
        let bi = &b[i * k * n..(i + 1) * k * n];
        gemm::sgemm((m, n, k), Mat::n(&a), Mat::n(bi), &mut want[i * m * n..(i + 1) * m * n], false, 1);
        gemm::sgemm((m, n, k), Mat::n(&a), Mat::n(bi), &mut sum, i > 0, 1);
    }
    let (ab, bb, mut c, mut s) = (up(dev, &a), up(dev, &b), out(dev, 3 * m * n), out(dev, m * n));
    gpu::sgemm(
        e,
        &Gemm { stride_b: k * n, stride_c: m * n, batches: 3, ..Gemm::plain(m, n, k, false, false) },
        &ab,
        &bb,
        &mut c,
    )
    .unwrap();
    gpu::sgemm(e, &Gemm { stride_b: k * n, nsum: 3, ..Gemm::plain(m, n, k, false, false) }, &ab, &bb, &mut s).unwrap();
    close(&down(dev, &c), &want, 1e-5, 1e-5, "sgemm batched");
    close(&down(dev, &s), &sum, 3e-5, 1e-5, "sgemm batch sum");
}
gpu_test!(sgemm);

// A batch sum of 13 products (the conv weight gradient is A plain, B transposed, one C), for every transpose
// combination and with C 67x5 (two tiles down) and 5x70 (two across), split over several blocks per C tile,
// against the single-block sum and the CPU, with accumulate, for the automatic split count and for 7 runs (whose
// boundaries fall inside items). Tolerances as the batch sum above.
fn sgemm_split<E: Executor>(dev: &Gpu<E>) {
    let e = dev.executor();
    let items = 13;
    for (m, n, k) in [(67, 5, 70), (5, 70, 37)] {
        let (a, b, c0) = (rand(6, items * m * k), rand(7, items * n * k), rand(8, m * n));
        let (ab, bb) = (up(dev, &a), up(dev, &b));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let what = format!("sgemm {m}x{n}x{k} ta={ta} tb={tb} batch sum");
            let mut want = c0.clone();
            for i in 0..items {
                let (ai, bi) = (&a[i * m * k..(i + 1) * m * k], &b[i * n * k..(i + 1) * n * k]);
                let (am, bm) = (Mat { data: ai, transposed: ta, ld: None }, Mat { data: bi, transposed: tb, ld: None });
                gemm::sgemm((m, n, k), am, bm, &mut want, true, 1);
            }
            let plain = Gemm::plain(m, n, k, ta, tb);
            let g = Gemm { stride_a: m * k, stride_b: n * k, nsum: items, accumulate: true, ..plain };
            let auto = gpu::split_count(&g);
            assert!(auto > 1, "{what}: 13 items of several stages should split");
            let run = |splits: usize| {
                let mut c = up(dev, &c0);
                gpu::sgemm_split(e, &g, splits, &ab, &bb, &mut c).unwrap();
                down(dev, &c)
            };
            let single = run(1);
            close(&single, &want, 3e-5, 1e-5, &format!("{what}, one block per tile"));
            for splits in [auto, 7] {
                let split = run(splits);
                close(&split, &want, 3e-5, 1e-5, &format!("{what} in {splits} splits"));
                close(&split, &single, 3e-5, 1e-5, &format!("{what} in {splits} splits against one block"));
            }
        }
    }
}
gpu_test!(sgemm_split);

// Linear forward and backward (dx, dW, db); GEMM tolerances.
fn linear<E: Executor>(g: &Gpu<E>) {
    let d = LinearDesc { batch: 3, fin: 37, fout: 29 };
    let (x, w, b) = (rand(50, d.batch * d.fin), rand(51, d.fout * d.fin), rand(52, d.fout));
    let gy = rand(53, d.batch * d.fout);
    let mut y = vec![0.0; d.batch * d.fout];
    Cpu.linear_forward(d, &x, &w, Some(&b), &mut y).unwrap();
    let (xb, wb, mut yb) = (up(g, &x), up(g, &w), out(g, d.batch * d.fout));
    g.linear_forward(d, &xb, &wb, Some(&up(g, &b)), &mut yb).unwrap();
    close(&down(g, &yb), &y, 1e-5, 1e-5, "linear forward");
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    Cpu.linear_backward(d, &x, &w, &gy, LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) }).unwrap();
    let mut db = vec![0.0; d.fout];
    Cpu.column_sums(&gy, d.batch, d.fout, &mut db).unwrap();
    let (gyb, mut dxb, mut dwb) = (up(g, &gy), out(g, x.len()), out(g, w.len()));
    g.linear_backward(d, &xb, &wb, &gyb, LayerGrads { dx: Some(&mut dxb), dw: Some(&mut dwb) }).unwrap();
    let mut dbb = out(g, d.fout);
    g.column_sums(&gyb, d.batch, d.fout, &mut dbb).unwrap();
    close(&down(g, &dxb), &dx, 1e-5, 1e-5, "linear dx");
    close(&down(g, &dwb), &dw, 1e-5, 1e-5, "linear dW");
    close(&down(g, &dbb), &db, 1e-5, 1e-5, "linear db");
}
gpu_test!(linear);

// The bias's gradient made inside the backward (`linear_backward_with`'s `db`): by `column_sums` in f32, and under
// bf16 by the conv backward's dy conversion and weight-gradient reduction (a linear layer is a 1x1 conv there),
// with and without dW. db sums the f32 gy over 5 rows either way, so it is held to f32's 1e-5; the bf16 dW only to
// the GEMM's bf16 operands (a sum of 5 products, each operand within 2^-8 relative: abs 1e-2 at values in [-1, 1)).
fn linear_bias_gradient_in_the_backward<E: Executor>(dev: &Gpu<E>) {
    let d = LinearDesc { batch: 5, fin: 16, fout: 24 };
    let (x, w, gy) = (rand(60, d.batch * d.fin), rand(61, d.fout * d.fin), rand(62, d.batch * d.fout));
    let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; d.fout]);
    Cpu.linear_backward(d, &x, &w, &gy, LayerGrads { dx: None, dw: Some(&mut dw) }).unwrap();
    Cpu.column_sums(&gy, d.batch, d.fout, &mut db).unwrap();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let g = &dev.clone().with_precision(precision);
        let (xb, wb, gyb) = (up(g, &x), up(g, &w), up(g, &gy));
        for with_dw in [true, false] {
            let what = format!("linear db ({precision:?}, dW {with_dw})");
            let (mut dwb, mut dbb) = (out(g, w.len()), out(g, d.fout));
            let grads = LayerGrads { dx: None, dw: with_dw.then_some(&mut dwb) };
            g.linear_backward_with(d, (&xb, &wb, &mut Gout::of(&gyb)), None, (grads.into(), Some(&mut dbb))).unwrap();
            close(&down(g, &dbb), &db, 1e-5, 1e-5, &what);
            if with_dw {
                close(&down(g, &dwb), &dw, 1e-2, 1e-2, &format!("{what}: dW"));
            }
        }
    }
}
gpu_test!(linear_bias_gradient_in_the_backward);

// A linear layer and its activation in one GEMM (`linear_forward_act` under bf16) against the two in turn (the GEMM,
// then `unary_with_operand`), for every activation: the epilogue applies the same f32 formula to the same f32
// result, so y, f(y) and f(y)'s operand (20 columns, padded to 24) agree to the bit, from one GEMM launch and no
// activation launch.
fn linear_act_fused<E: Executor>(g: &Gpu<E>) {
    let d = LinearDesc { batch: 5, fin: 24, fout: 20 };
    let planes = Planes { n: d.batch, c: d.fout, plane: 1 };
    let (xb, wb, bb) = (up(g, &rand(70, d.batch * d.fin)), up(g, &rand(71, d.fout * d.fin)), up(g, &rand(72, d.fout)));
    let bits = |b: &E::Buf| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let counters = g.executor().counters();
    for &kind in UnaryKind::ALL {
        let what = format!("linear + {}", kind.name());
        let inputs = ((&xb, None), (&wb, None), Some(&bb));
        let (mut y0, mut a0, mut op0) = (out(g, 100), out(g, 100), g.operand_for_output(planes).unwrap().unwrap());
        g.linear_forward_keep(d, inputs, &mut y0, Keep::default()).unwrap();
        g.unary_with_operand(kind, (&y0, planes), &mut a0, &mut op0).unwrap();
        let (mut y1, mut a1, mut op1) = (out(g, 100), out(g, 100), g.operand_for_output(planes).unwrap().unwrap());
        counters.record();
        g.linear_forward_act(d, inputs, (&mut y1, (kind, &mut a1, Some(&mut op1))), Keep::default()).unwrap();
        // (Besides the input's conversion and the weight's packing, which a tape's linear layer gets made.)
        let log = counters.take_log();
        let run: Vec<_> =
            log.iter().map(|l| l.kernel).filter(|k| [Kernel::ConvGatherMma, Kernel::UnaryFwd].contains(k)).collect();
        assert_eq!(run, [Kernel::ConvGatherMma], "{what}: launches");
        assert_eq!(bits(&y1), bits(&y0), "{what}: y");
        assert_eq!(bits(&a1), bits(&a0), "{what}: f(y)");
        assert_eq!(bits(&op1.buf.buf), bits(&op0.buf.buf), "{what}: f(y)'s operand");
    }
}
gpu_test!(linear_act_fused, crate::backend::Precision::Bf16);

/// The CPU's linear layer gives each row the same bits whatever the batch (the `gemm` crate's kernels for a few rows
/// differ with their count from 48 outputs on): rows 0..3 of batches of 3, 11 and 16.
#[test]
fn cpu_linear_rows_do_not_depend_on_the_batch() {
    let (fin, fout) = (16, 80);
    let (w, b) = (rand(80, fout * fin), rand(81, fout));
    let rows = |batch: usize| {
        let d = LinearDesc { batch, fin, fout };
        let x: Vec<f32> = (0..batch).flat_map(|i| rand(82 + i as u64 % 3, fin)).collect();
        let mut y = vec![0.0; batch * fout];
        Cpu.linear_forward(d, &x, &w, Some(&b), &mut y).unwrap();
        y[..3 * fout].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let three = rows(3);
    assert_eq!(rows(11), three, "batch 11");
    assert_eq!(rows(16), three, "batch 16");
}
