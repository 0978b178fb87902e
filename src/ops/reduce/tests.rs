//! The sums' and copies' GPU kernels against the CPU's.

use super::gpu::copy_at;
use super::ReduceOps;
use crate::backend::{Cpu, Gpu, Memory};
use crate::desc::{ConcatDesc, Planes};
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// Concat and split move values: exact.
fn concat_split<E: Executor>(g: &Gpu<E>) {
    let d = ConcatDesc { n: 2, ca: 3, cb: 5, plane: 15 };
    let (a, b) = (rand(60, d.n * d.ca * d.plane), rand(61, d.n * d.cb * d.plane));
    let mut want = vec![0.0; d.n * (d.ca + d.cb) * d.plane];
    Cpu.concat(d, &a, &b, &mut want).unwrap();
    let mut cat = out(g, want.len());
    g.concat(d, &up(g, &a), &up(g, &b), &mut cat).unwrap();
    assert_eq!(down(g, &cat), want, "concat");
    let (wa, wb) = Cpu.split(d, &want).unwrap();
    let (ga, gb) = g.split(d, &cat).unwrap();
    assert_eq!((down(g, &ga), down(g, &gb)), (wa, wb), "split");
}
gpu_test!(concat_split);

// Gradient accumulation, a device copy and column sums: the first two round once per element as the CPU does
// (bit-exact); the column sums add 7 rows in order in f32 where the CPU uses f64: rel 1e-6.
fn add_copy_column_sums<E: Executor>(g: &Gpu<E>) {
    let (rows, cols) = (7, 301);
    let (a, b) = (rand(65, rows * cols), rand(66, rows * cols));
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let mut acc = up(g, &a);
    g.add_assign(&mut acc, &up(g, &b)).unwrap();
    assert_eq!(down(g, &acc), want, "add_assign");
    let mut copied = out(g, a.len());
    copy_at(g.executor(), &acc, &mut copied, 0).unwrap();
    assert_eq!(down(g, &copied), want, "copy");
    let (mut sums, mut want_sums) = (out(g, cols), vec![0.0; cols]);
    g.column_sums(&copied, rows, cols, &mut sums).unwrap();
    Cpu.column_sums(&want, rows, cols, &mut want_sums).unwrap();
    close(&down(g, &sums), &want_sums, 1e-7, 1e-6, "column_sums");
}
gpu_test!(add_copy_column_sums);

// Bias gradients: per (image, channel) sums of up to 63 values in f32 blocks against f64 on the CPU, then over 2
// images: abs 2e-5 + rel 1e-5, as the conv tests always had for them.
fn channel_sums<E: Executor>(g: &Gpu<E>) {
    for d in [Planes { n: 2, c: 5, plane: 63 }, Planes { n: 1, c: 3, plane: 20 }] {
        let t = rand(14, d.n * d.c * d.plane);
        for per_image in [false, true] {
            let len = if per_image { d.n * d.c } else { d.c };
            let (mut want, mut got) = (vec![0.0; len], out(g, len));
            Cpu.channel_sums(d, &t, per_image, &mut want).unwrap();
            g.channel_sums(d, &up(g, &t), per_image, &mut got).unwrap();
            close(&down(g, &got), &want, 2e-5, 1e-5, &format!("{d:?} channel sums per_image={per_image}"));
        }
    }
}
gpu_test!(channel_sums);

// Memory::full on a device: filled by a kernel (exact), and nothing uploaded.
fn full<E: Executor>(g: &Gpu<E>) {
    let counters = g.executor().counters();
    for (n, v) in [(1, 1.0f32), (1000, -0.5), (70_001, 3.25e-7)] {
        let before = counters.snapshot();
        let buf = g.full(n, v).unwrap();
        assert_eq!(counters.snapshot().since(&before).h2d_bytes, 0, "full({n}) uploaded");
        assert_eq!(down(g, &buf), vec![v; n], "full({n}, {v})");
    }
}
gpu_test!(full);
