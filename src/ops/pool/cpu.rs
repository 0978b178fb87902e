//! 2x2 max pooling on the CPU: PyTorch's `MaxPool2d(2)`, windows of 2x2 with stride 2, an odd last row or column
//! left out (floor mode). Each window's maximum is the first one in row-major window order, a NaN counting as a
//! maximum (so it propagates), which is PyTorch's rule; its offset `2·dy + dx` is saved and the backward routes the
//! gradient to it alone.

use super::PoolOps;
use crate::backend::Cpu;
use crate::desc::PoolDesc;
use crate::error::Result;
use rayon::prelude::*;

impl PoolOps for Cpu {
    fn max_pool2d_forward(&self, d: PoolDesc, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<Vec<u32>> {
        let mut argmax = vec![0; d.out_len()];
        max_pool2d_forward(d.h, d.w, x, y, &mut argmax);
        Ok(argmax)
    }
    fn max_pool2d_backward(&self, d: PoolDesc, argmax: &Vec<u32>, gy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        max_pool2d_backward(d.h, d.w, argmax, gy, dx);
        Ok(())
    }
}

/// 2x2 max pooling with stride 2 of the `h×w` planes of `x`: `y[p, oy, ox] = max_{dy,dx<2}
/// x[p, 2oy + dy, 2ox + dx]` for `oy < h/2`, `ox < w/2`, and `argmax[p, oy, ox] = 2·dy + dx` of that maximum.
pub fn max_pool2d_forward(h: usize, w: usize, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = (h / 2, w / 2);
    let planes = y.par_chunks_mut(oh * ow).zip(argmax.par_chunks_mut(oh * ow)).zip(x.par_chunks(h * w));
    planes.for_each(|((yp, ap), xp)| {
        for oy in 0..oh {
            for ox in 0..ow {
                let at = |k: usize| xp[(2 * oy + k / 2) * w + 2 * ox + k % 2];
                let (mut best, mut arg) = (at(0), 0);
                for k in 1..4 {
                    let v = at(k);
                    if v > best || v.is_nan() {
                        (best, arg) = (v, k);
                    }
                }
                yp[oy * ow + ox] = best;
                ap[oy * ow + ox] = arg as u32;
            }
        }
    });
}

/// `dx[p, 2oy + dy, 2ox + dx] = gy[p, oy, ox]` where `2·dy + dx = argmax[p, oy, ox]`, 0 everywhere else.
pub fn max_pool2d_backward(h: usize, w: usize, argmax: &[u32], gy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    let planes = dx.par_chunks_mut(h * w).zip(argmax.par_chunks(oh * ow)).zip(gy.par_chunks(oh * ow));
    planes.for_each(|((dp, ap), gp)| {
        dp.fill(0.0);
        for (o, (&k, &g)) in ap.iter().zip(gp).enumerate() {
            let (oy, ox, k) = (o / ow, o % ow, k as usize);
            dp[(2 * oy + k / 2) * w + 2 * ox + k % 2] = g;
        }
    });
}
