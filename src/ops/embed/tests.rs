//! The embedding kernels against the CPU loops, on the emulator (and on CUDA with `--ignored`).

use super::{EmbedDesc, EmbedOps};
use crate::backend::{Cpu, Gpu, Memory};
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// A gather and an addition, and sums in the CPU's order: exact on the emulator; on a GPU the sums may contract
// into FMAs, hence a few ulp of the sum of up to n terms of order 1.
fn embedding<E: Executor>(g: &Gpu<E>) {
    let d = EmbedDesc { n: 13, rows: 11, dim: 24 };
    let (x, table, gy) = (rand(60, d.n * d.dim), rand(61, d.rows * d.dim), rand(62, d.n * d.dim));
    // Every row picked, some several times, row 7 never (its gradient is 0), the last (the null label) too.
    let labels: Vec<u32> = vec![3, 10, 0, 3, 1, 2, 4, 5, 6, 8, 9, 3, 10];
    let (mut y, mut dtable) = (vec![0.0; d.n * d.dim], vec![0.0; d.rows * d.dim]);
    Cpu.embed_add(d, &x, &table, &labels, &mut y).unwrap();
    Cpu.embed_backward(d, &gy, &labels, &mut dtable).unwrap();
    for (i, &l) in labels.iter().enumerate() {
        assert_eq!(y[i * d.dim + 5], x[i * d.dim + 5] + table[l as usize * d.dim + 5]);
    }
    assert!(dtable[7 * d.dim..8 * d.dim].iter().all(|&v| v == 0.0));
    let lb = g.upload_indices(&labels).unwrap();
    let (mut yb, mut db) = (out(g, y.len()), out(g, dtable.len()));
    g.embed_add(d, &up(g, &x), &up(g, &table), &lb, &mut yb).unwrap();
    g.embed_backward(d, &up(g, &gy), &lb, &mut db).unwrap();
    close(&down(g, &yb), &y, 0.0, 0.0, "embed_add");
    close(&down(g, &db), &dtable, 1e-6, 1e-6, "embed_bwd");
    // A label past the table is refused on both, before any launch.
    let bad: Vec<u32> = labels.iter().map(|&l| if l == 10 { 11 } else { l }).collect();
    assert!(Cpu.embed_add(d, &x, &table, &bad, &mut y).is_err());
    let bad = g.upload_indices(&bad).unwrap();
    assert!(g.embed_add(d, &up(g, &x), &up(g, &table), &bad, &mut yb).is_err());
    assert!(g.embed_backward(d, &up(g, &gy), &bad, &mut db).is_err());
}
gpu_test!(embedding);
