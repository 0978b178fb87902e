//! Every activation's GPU kernels against its CPU loop.

use super::{UnaryKind, UnaryOps};
use crate::backend::{Cpu, Gpu};
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

/// `(abs, rel)` for `kind`. ReLU is a comparison and a selection, no arithmetic: exact everywhere, a NaN passing
/// through as on the CPU. The others follow the CPU's f32 order with the device's `expf` (within 2 ulp) where the
/// CPU has `exp_fast` (within ~2.5 ulp): a few ulp of a value of order 1.
fn tolerance(kind: UnaryKind) -> (f32, f32) {
    match kind {
        UnaryKind::Relu => (0.0, 0.0),
        _ => (1e-7, 1e-6),
    }
}

fn activations<E: Executor>(g: &Gpu<E>) {
    let n = 1001;
    let mut x: Vec<f32> = rand(40, n).iter().map(|v| 8.0 * v).collect();
    (x[3], x[4]) = (0.0, f32::NAN);
    let gy = rand(41, n);
    for &kind in UnaryKind::ALL {
        let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
        Cpu.unary_forward(kind, &x, &mut y).unwrap();
        Cpu.unary_backward(kind, &x, &gy, &mut dx).unwrap();
        let (xb, mut yb, mut dxb) = (up(g, &x), out(g, n), out(g, n));
        g.unary_forward(kind, &xb, &mut yb).unwrap();
        g.unary_backward(kind, &xb, &up(g, &gy), &mut dxb).unwrap();
        let (abs, rel) = tolerance(kind);
        close(&down(g, &yb), &y, abs, rel, &format!("{} forward", kind.name()));
        close(&down(g, &dxb), &dx, abs, rel, &format!("{} backward", kind.name()));
    }
}
gpu_test!(activations);
