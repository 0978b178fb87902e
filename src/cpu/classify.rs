//! The kernels a classifier adds to the UNet's: 2x2 max pooling and the softmax cross-entropy loss.
//!
//! Max pooling is PyTorch's `MaxPool2d(2)`: windows of 2x2 with stride 2, an odd last row or column left out (floor
//! mode). Each window's maximum is the first one in row-major window order, a NaN counting as a maximum (so it
//! propagates), which is PyTorch's rule; its offset `2·dy + dx` is saved (as f32, to live in a backend buffer) and
//! the backward routes the gradient to it alone.
//!
//! Cross-entropy over logits `z: [n, classes]` with integer labels `y`:
//! `L = -(1/n) Σ_i log_softmax(z_i)[y_i] = (1/n) Σ_i (lse_i - z_i[y_i])`, `lse_i = ln Σ_j e^{z_ij}`, and
//! `dL/dz_ij = (e^{z_ij - lse_i} - [j = y_i]) / n`. Labels arrive as f32 words (exact for any class count below
//! 2^24) so they can sit in a backend buffer.

use rayon::prelude::*;

/// 2x2 max pooling with stride 2 of the `h×w` planes of `x`: `y[p, oy, ox] = max_{dy,dx<2}
/// x[p, 2oy + dy, 2ox + dx]` for `oy < h/2`, `ox < w/2`, and `argmax[p, oy, ox] = 2·dy + dx` of that maximum.
pub fn max_pool2d_forward(h: usize, w: usize, x: &[f32], y: &mut [f32], argmax: &mut [f32]) {
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
                ap[oy * ow + ox] = arg as f32;
            }
        }
    });
}

/// `dx[p, 2oy + dy, 2ox + dx] = gy[p, oy, ox]` where `2·dy + dx = argmax[p, oy, ox]`, 0 everywhere else.
pub fn max_pool2d_backward(h: usize, w: usize, argmax: &[f32], gy: &[f32], dx: &mut [f32]) {
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

/// `ln Σ_j e^{z_j}` of one row as `m + ln Σ_j e^{z_j - m}`, `m = max_j z_j`, so that no term overflows and the
/// largest is exactly 1; summed in order in f32, as the GPU kernel does.
pub fn log_sum_exp(z: &[f32]) -> f32 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = z.iter().map(|&v| (v - m).exp()).sum();
    m + s.ln()
}

/// The mean cross-entropy `L = (1/n) Σ_i (lse_i - z_i[y_i])` of `z: [n, classes]` against `labels` (`n` class
/// indices as f32); writes each row's `lse_i` for the backward. The row losses are added in f64, in order.
pub fn cross_entropy(z: &[f32], labels: &[f32], classes: usize, lse: &mut [f32]) -> f32 {
    lse.par_iter_mut().zip(z.par_chunks(classes)).for_each(|(l, row)| *l = log_sum_exp(row));
    let total: f64 = z.chunks(classes).zip(labels).zip(&*lse).map(|((row, &y), &l)| (l - row[y as usize]) as f64).sum();
    (total / labels.len() as f64) as f32
}

/// `dz[i, j] = (e^{z_ij - lse_i} - [j = y_i])·gloss/n`: softmax minus one-hot, times `dL/dL` over the batch size.
pub fn cross_entropy_backward(z: &[f32], labels: &[f32], lse: &[f32], gloss: f32, classes: usize, dz: &mut [f32]) {
    let scale = gloss / labels.len() as f32;
    let rows = dz.par_chunks_mut(classes).zip(z.par_chunks(classes)).zip(labels.par_iter().zip(lse.par_iter()));
    rows.for_each(|((d, row), (&y, &l))| {
        for (j, (d, &v)) in d.iter_mut().zip(row).enumerate() {
            let onehot = if j == y as usize { 1.0 } else { 0.0 };
            *d = ((v - l).exp() - onehot) * scale;
        }
    });
}
