//! Max pooling's GPU kernels against the CPU's.

use super::PoolOps;
use crate::backend::{Cpu, Gpu, Memory};
use crate::desc::PoolDesc;
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// Forward and backward: comparisons and copies only, so exact, the tie rule included (values rounded to 5 levels,
// so most windows hold ties) and a NaN; odd H and W (last row and column in no window), 2x3 planes.
fn max_pool2d<E: Executor>(g: &Gpu<E>) {
    let d = PoolDesc { planes: 6, h: 7, w: 9 };
    let mut x: Vec<f32> = rand(44, d.planes * d.h * d.w).iter().map(|v| (2.0 * v).round()).collect();
    x[20] = f32::NAN;
    let gy = rand(45, d.out_len());
    let (mut y, mut dx) = (vec![0.0; d.out_len()], vec![0.0; x.len()]);
    let argmax = Cpu.max_pool2d_forward(d, &x, &mut y).unwrap();
    Cpu.max_pool2d_backward(d, &argmax, &gy, &mut dx).unwrap();
    let (xb, mut yb, mut dxb) = (up(g, &x), out(g, d.out_len()), out(g, x.len()));
    let ab = g.max_pool2d_forward(d, &xb, &mut yb).unwrap();
    close(&down(g, &yb), &y, 0.0, 0.0, "max_pool2d forward");
    assert_eq!(g.download_indices(&ab).unwrap(), argmax, "max_pool2d argmax");
    g.max_pool2d_backward(d, &ab, &up(g, &gy), &mut dxb).unwrap();
    assert_eq!(down(g, &dxb), dx, "max_pool2d backward");
}
gpu_test!(max_pool2d);
