//! The convolutions' GPU kernels against the CPU's. Sums of up to 70 products of values in [-1, 1) in a different
//! order from the CPU's GEMM (and the CPU's Winograd for 3x3 stride 1): rel 1e-5 plus abs 2e-5 for cancellation.

use super::ConvOps;
use crate::backend::{Cpu, Gpu};
use crate::desc::{ConvDesc, ConvGeom, Epilogue, LayerGrads};
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// Conv2d forward (bias, channel bias, with and without a residual) and both gradients, for a 3x3 stride-1 conv
// on an odd grid, a 3x3 stride-2 one and a 1x1 one with batch 1.
fn conv2d<E: Executor>(g: &Gpu<E>) {
    for (n, c, h, w, k, s, p, co) in [(2, 3, 7, 9, 3, 1, 1, 5), (1, 5, 9, 7, 3, 2, 1, 3), (2, 4, 5, 3, 1, 1, 0, 6)] {
        let d = ConvDesc { n, geom: ConvGeom::new(c, h, w, k, s, p).unwrap(), channels: co };
        let what = format!("conv2d n{n} c{c} {h}x{w} k{k} s{s} p{p} co{co}");
        let (x, wt, b, cb) = (rand(10, n * c * h * w), rand(11, co * c * k * k), rand(12, co), rand(13, n * co));
        let out_len = n * co * d.geom.oh * d.geom.ow;
        let res = rand(15, out_len);
        let (xb, wb, bb, cbb, rb) = (up(g, &x), up(g, &wt), up(g, &b), up(g, &cb), up(g, &res));
        for residual in [false, true] {
            let mut want = vec![0.0; out_len];
            let epi = Epilogue { bias: Some(&b), chan_bias: Some(&cb), residual: residual.then_some(&res) };
            Cpu.conv2d_forward(&d, &x, &wt, epi, &mut want).unwrap();
            let mut got = out(g, out_len);
            let epi = Epilogue { bias: Some(&bb), chan_bias: Some(&cbb), residual: residual.then_some(&rb) };
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
