//! Group norm's GPU kernels against the CPU's.

use super::NormOps;
use crate::backend::{Cpu, Gpu};
use crate::desc::NormDesc;
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// Forward with and without the fused SiLU, and the backward from the CPU's statistics. The statistics sum up to
// 70 values in f32 blocks where the CPU uses f32 lanes and f64: rel 1e-5; y adds the normalisation's rounding (abs
// 2e-5); the gradients sum over a group: abs 1e-4 for dγ/dβ, rel 1e-4 for dx. The last two shapes have groups of
// 10000 and 18000 values: the first is kept in shared memory by the forward but not by the backward (two arrays
// of it exceed 64 KiB), the second by neither, so both ways of reading a group are checked; their sums of up to
// 18000 terms in f32 (about sqrt(18000)·2^-24 ≈ 8e-6 relative) stay within the same bounds.
fn group_norm<E: Executor>(g: &Gpu<E>) {
    for (n, c, groups, plane) in [(2, 6, 3, 35), (1, 5, 5, 9), (1, 4, 2, 5000), (1, 2, 1, 9000)] {
        let len = n * c * plane;
        let x: Vec<f32> = rand(30, len).iter().map(|v| 3.0 * v + 0.5).collect();
        let (gamma, beta, gy) = (rand(31, c), rand(32, c), rand(33, len));
        for silu in [false, true] {
            let d = NormDesc { n, c, plane, groups, eps: 1e-5, silu };
            let what = format!("group_norm n{n} c{c} g{groups} plane{plane} silu={silu}");
            let mut y = vec![0.0; len];
            let (mean, rstd) = Cpu.group_norm_forward(d, &x, (&gamma, &beta), &mut y).unwrap();
            let (xb, gb, bb, mut yb) = (up(g, &x), up(g, &gamma), up(g, &beta), out(g, len));
            let (mb, rb) = g.group_norm_forward(d, &xb, (&gb, &bb), &mut yb).unwrap();
            close(&down(g, &yb), &y, 2e-5, 1e-5, &format!("{what} y"));
            close(&down(g, &mb), &mean, 1e-6, 1e-5, &format!("{what} mean"));
            close(&down(g, &rb), &rstd, 1e-6, 1e-5, &format!("{what} rstd"));

            let (mut dx, mut dg, mut db) = (vec![0.0; len], vec![0.0; c], vec![0.0; c]);
            let daffine = (&mut dg, &mut db);
            Cpu.group_norm_backward(d, (&x, &gamma, &beta), (&mean, &rstd), &gy, Some((&mut dx, false)), daffine)
                .unwrap();
            // The CPU's statistics as input, so the backward is compared on its own.
            let (mb, rb, mut dxb) = (up(g, &mean), up(g, &rstd), out(g, len));
            let (mut dgb, mut dbb) = (out(g, c), out(g, c));
            let (stats, daffine) = ((&mb, &rb), (&mut dgb, &mut dbb));
            g.group_norm_backward(d, (&xb, &gb, &bb), stats, &up(g, &gy), Some((&mut dxb, false)), daffine).unwrap();
            close(&down(g, &dxb), &dx, 1e-5, 1e-4, &format!("{what} dx"));
            close(&down(g, &dgb), &dg, 1e-4, 1e-5, &format!("{what} dgamma"));
            close(&down(g, &dbb), &db, 1e-4, 1e-5, &format!("{what} dbeta"));
        }
    }
}
gpu_test!(group_norm);

/// The backward adding dx to a gradient already there is, to the bit, the plain backward followed by the addition
/// the tape would otherwise make (`acc + dx`), on the CPU and on the GPU.
fn group_norm_backward_accumulates<E: Executor>(g: &Gpu<E>) {
    let (n, c, groups, plane) = (2, 6, 3, 35);
    let len = n * c * plane;
    let d = NormDesc { n, c, plane, groups, eps: 1e-5, silu: true };
    let x: Vec<f32> = rand(40, len).iter().map(|v| 3.0 * v + 0.5).collect();
    let (gamma, beta, gy, acc) = (rand(41, c), rand(42, c), rand(43, len), rand(44, len));
    let mut y = vec![0.0; len];
    let (mean, rstd) = Cpu.group_norm_forward(d, &x, (&gamma, &beta), &mut y).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // CPU.
    let backward = |dx: (&mut Vec<f32>, bool)| {
        let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
        Cpu.group_norm_backward(d, (&x, &gamma, &beta), (&mean, &rstd), &gy, Some(dx), (&mut dg, &mut db)).unwrap();
    };
    let (mut plain, mut summed) = (vec![0.0; len], acc.clone());
    backward((&mut plain, false));
    backward((&mut summed, true));
    let want: Vec<f32> = acc.iter().zip(&plain).map(|(a, v)| a + v).collect();
    assert_eq!(bits(&summed), bits(&want), "CPU: accumulated dx differs from dx then add");
    // GPU.
    let (xb, gb, bb, gyb, mb, rb) = (up(g, &x), up(g, &gamma), up(g, &beta), up(g, &gy), up(g, &mean), up(g, &rstd));
    let backward = |dx: (&mut E::Buf, bool)| {
        let (mut dg, mut db) = (out(g, c), out(g, c));
        g.group_norm_backward(d, (&xb, &gb, &bb), (&mb, &rb), &gyb, Some(dx), (&mut dg, &mut db)).unwrap();
    };
    let (mut plain, mut summed) = (out(g, len), up(g, &acc));
    backward((&mut plain, false));
    backward((&mut summed, true));
    let want: Vec<f32> = acc.iter().zip(&down(g, &plain)).map(|(a, v)| a + v).collect();
    assert_eq!(bits(&down(g, &summed)), bits(&want), "GPU: accumulated dx differs from dx then add");
}
gpu_test!(group_norm_backward_accumulates);

/// Under bf16, the backward asked for dx's operand writes dx as without it (to the bit, plain and adding to a
/// gradient already there), the operand as converting dx makes it (to the bit: the same rounding of the same
/// values), dx's per-image channel sums (35 values each, summed in another order than the CPU's: abs 1e-5 and rel
/// 1e-5, a few f32 roundings of sums of order 1), and the sums' own operand (to the bit, from the sums written).
fn group_norm_backward_writes_the_operand<E: Executor>(g: &Gpu<E>) {
    use crate::backend::{ConvOps, ReduceOps};
    use crate::desc::Planes;
    let (n, c, groups, plane) = (2, 16, 4, 35);
    let (len, planes) = (n * c * plane, Planes { n, c, plane });
    let d = NormDesc { n, c, plane, groups, eps: 1e-5, silu: true };
    let x: Vec<f32> = rand(45, len).iter().map(|v| 3.0 * v + 0.5).collect();
    let (gamma, beta, gy, acc) = (rand(46, c), rand(47, c), rand(48, len), rand(49, len));
    let mut y = vec![0.0; len];
    let (mean, rstd) = Cpu.group_norm_forward(d, &x, (&gamma, &beta), &mut y).unwrap();
    let (xb, gb, bb, gyb, mb, rb) = (up(g, &x), up(g, &gamma), up(g, &beta), up(g, &gy), up(g, &mean), up(g, &rstd));
    let bits = |b: &E::Buf| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for adding in [false, true] {
        let what = if adding { "adding" } else { "plain" };
        let start = if adding { acc.clone() } else { vec![0.0; len] };
        let (mut plain, mut with) = (up(g, &start), up(g, &start));
        let (mut dg, mut db) = (out(g, c), out(g, c));
        let inputs = (&xb, &gb, &bb);
        g.group_norm_backward(d, inputs, (&mb, &rb), &gyb, Some((&mut plain, adding)), (&mut dg, &mut db)).unwrap();
        let op = g
            .group_norm_backward_with(
                d,
                inputs,
                (&mb, &rb),
                &gyb,
                Some((&mut with, adding)),
                (&mut dg, &mut db),
                (true, None),
            )
            .unwrap()
            .expect("an operand under bf16");
        assert_eq!(bits(&with), bits(&plain), "{what}: dx differs with its operand written");
        let converted = g.operand(&plain, planes).unwrap().unwrap();
        assert_eq!(bits(&op.operand.buf.buf), bits(&converted.buf.buf), "{what}: dx's operand differs from converting");
        let sums = op.sums.as_ref().filter(|s| s.per_image && s.rows == n).map(|s| &s.buf).expect("per-image sums");
        let mut want = out(g, n * c);
        g.channel_sums(planes, &plain, true, &mut want).unwrap();
        close(&down(g, sums), &down(g, &want), 1e-5, 1e-5, &format!("{what}: dx's per-image sums"));
        let of_sums = op.of_sums.as_ref().expect("the sums' operand");
        let converted = g.operand(sums, Planes { n, c, plane: 1 }).unwrap().unwrap();
        assert_eq!(bits(&of_sums.operand.buf.buf), bits(&converted.buf.buf), "{what}: the sums' operand");
        let own = of_sums.sums.as_ref().filter(|s| s.per_image).map(|s| &s.buf).expect("the sums' sums");
        assert_eq!(bits(own), bits(sums), "{what}: a [n, c] gradient's sums are itself");
    }
}
gpu_test!(group_norm_backward_writes_the_operand, crate::backend::Precision::Bf16);
