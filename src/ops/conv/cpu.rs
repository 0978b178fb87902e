//! Convolution and transposed convolution, forward and backward, as im2col + GEMM per image; the 3x3 stride-1
//! convs with 8 or more channels on each side go through Winograd F(2x2, 3x3) instead (`super::winograd`).
//!
//! A conv with kernel `k`, stride `s`, padding `p` maps an image `[C, H, W]` to `[C_out, OH, OW]`,
//! `OH = (H + 2p - k)/s + 1`. Written as a matrix product: `out = W[C_out, C·k·k] · col[C·k·k, OH·OW]`, where
//! `col = im2col(x)` lays each receptive field out as a column. The transposed conv is the adjoint of that map,
//! so it reuses the same two helpers the other way round (`col2im` forward, `im2col` backward).
//!
//! Two things keep the CPU busy with arithmetic rather than memory traffic: the column matrix is built for a band
//! of output rows at a time (`BAND_PIXELS`), so it is still in the L2 cache when the GEMM reads it, and the
//! backward passes are written as forward convs where they can be (`dx` of a stride-1 conv, all of a transposed
//! conv's backward), so they get the same banding and no `col2im` scatter.

use super::{winograd, ConvOps};
use crate::backend::Cpu;
use crate::desc::{Columns, ConvDesc, ConvGeom, Epilogue, LayerGrads};
use crate::error::Result;
use crate::ops::cpu::{batch_chunks, wide, BATCH_CHUNKS};
use crate::ops::linear::gemm::{sgemm, sgemm_into_transposed, Mat};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

impl ConvOps for Cpu {
    /// Nothing: the CPU's convs read their inputs as they are.
    type Kept = ();
    /// Nothing: the CPU's convs read their weights as they are.
    type PackPlan = ();
    type PackedWeight = ();
    /// Nothing: the CPU's convs read f32 tensors as they are.
    type Operand = ();

    fn conv2d_forward(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        w: &Vec<f32>,
        epi: Epilogue<Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        conv2d_forward(&d.geom, d.n, x, w, d.channels, epi.map(|v| &v[..]), out);
        Ok(())
    }
    fn conv2d_backward(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        w: &Vec<f32>,
        gout: &Vec<f32>,
        grads: LayerGrads<Vec<f32>>,
    ) -> Result<()> {
        conv2d_backward(&d.geom, d.n, x, w, d.channels, gout, grads.map(|v| &mut v[..]));
        Ok(())
    }
    fn conv_transpose2d_forward(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        conv_transpose2d_forward(&d.geom, d.n, x, w, d.channels, bias.map(|v| &v[..]), out);
        Ok(())
    }
    fn conv_transpose2d_backward(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        w: &Vec<f32>,
        gout: &Vec<f32>,
        grads: LayerGrads<Vec<f32>>,
    ) -> Result<()> {
        conv_transpose2d_backward(&d.geom, d.n, x, w, d.channels, gout, grads.map(|v| &mut v[..]));
        Ok(())
    }
}

impl ConvGeom {
    /// For kernel offset `kx` and output width `ow`, the range of output columns whose input column
    /// `ox·s - p + kx` lies inside `[0, w)`.
    fn valid_range(&self, kx: usize, in_len: usize, out_len: usize) -> (usize, usize) {
        let (s, p) = (self.stride as isize, self.pad as isize);
        let kx = kx as isize;
        // smallest ox with ox*s - p + kx >= 0, and first ox with ox*s - p + kx >= in_len
        let lo = ((p - kx).max(0) + s - 1) / s;
        let hi = ((in_len as isize + p - kx).max(0) + s - 1) / s;
        (lo.min(out_len as isize) as usize, hi.min(out_len as isize) as usize)
    }
}

/// im2col for the output rows `rows`: the `[c·k·k, rows.len()·ow]` matrix of those rows' columns,
/// `col[(c·k + ky)·k + kx, oy·ow + ox] = x[c, oy·s - p + ky, ox·s - p + kx]` (zero outside the image).
pub fn im2col_rows(g: &ConvGeom, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
    // Compiled for AVX2 where present (wider copies); the lone column a 3x3 tap reads past the image's edge is
    // zeroed with a store (`zero`), where `fill` made a `memset` call per output row and tap.
    wide(
        #[inline(always)]
        || im2col_rows_body(g, x, rows, col),
    )
}

/// The body of [`im2col_rows`].
#[inline(always)]
fn im2col_rows_body(g: &ConvGeom, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad);
    let band = rows.len() * g.ow;
    for c in 0..g.c {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            let (oy0, oy1) = g.valid_range(ky, g.h, g.oh);
            // the band's rows that read inside the image, relative to the band
            let (oy0, oy1) =
                (oy0.clamp(rows.start, rows.end) - rows.start, oy1.clamp(rows.start, rows.end) - rows.start);
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * band..][..band];
                let (ox0, ox1) = g.valid_range(kx, g.w, g.ow);
                row[..oy0 * g.ow].fill(0.0);
                row[oy1 * g.ow..].fill(0.0);
                if s == 1 && g.ow == g.w && oy0 < oy1 {
                    // A "same" stride-1 conv: output pixel j of the band reads input pixel j + const, so the rows
                    // are one contiguous copy (not one short copy per row); the columns past the image's left
                    // and right edges, which picked up the neighbouring row's ends, are zeroed after.
                    let (d0, d1) = (oy0 * g.ow + ox0, (oy1 - 1) * g.ow + ox1);
                    let s0 = (rows.start + oy0 + ky - p) * g.w + ox0 + kx - p;
                    row[d0..d1].copy_from_slice(&xc[s0..s0 + (d1 - d0)]);
                    for oy in oy0..oy1 {
                        zero(&mut row[oy * g.ow..oy * g.ow + ox0]);
                        zero(&mut row[oy * g.ow + ox1..(oy + 1) * g.ow]);
                    }
                    continue;
                }
                for oy in oy0..oy1 {
                    let iy = (rows.start + oy) * s + ky - p;
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    zero(&mut dst[..ox0]);
                    zero(&mut dst[ox1..]);
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    if s == 1 {
                        let ix0 = ox0 + kx - p;
                        dst[ox0..ox1].copy_from_slice(&src[ix0..ix0 + (ox1 - ox0)]);
                    } else {
                        for ox in ox0..ox1 {
                            dst[ox] = src[ox * s + kx - p];
                        }
                    }
                }
            }
        }
    }
}

/// `v.fill(0.0)`, with the common one- and two-element cases as plain stores (no `memset` call).
#[inline(always)]
fn zero(v: &mut [f32]) {
    match v {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => (*a, *b) = (0.0, 0.0),
        v => v.fill(0.0),
    }
}

/// The adjoint of [`im2col`]: `x[c, iy, ix] = Σ col[(c, ky, kx), (oy, ox)]` over all taps that read `(iy, ix)`.
/// Overwrites `x`.
pub fn col2im(g: &ConvGeom, col: &[f32], x: &mut [f32]) {
    let (k, s, p) = (g.k, g.stride, g.pad);
    let plane = g.oh * g.ow;
    x[..g.c * g.h * g.w].fill(0.0);
    for c in 0..g.c {
        let xc = &mut x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..k {
            let (oy0, oy1) = g.valid_range(ky, g.h, g.oh);
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * plane..][..plane];
                let (ox0, ox1) = g.valid_range(kx, g.w, g.ow);
                for oy in oy0..oy1 {
                    let iy = oy * s + ky - p;
                    let src = &row[oy * g.ow..(oy + 1) * g.ow];
                    let dst = &mut xc[iy * g.w..(iy + 1) * g.w];
                    if s == 1 {
                        let ix0 = ox0 + kx - p;
                        for (d, v) in dst[ix0..ix0 + (ox1 - ox0)].iter_mut().zip(&src[ox0..ox1]) {
                            *d += v;
                        }
                    } else {
                        for ox in ox0..ox1 {
                            dst[ox * s + kx - p] += src[ox];
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Per-thread scratch for column matrices, reused across calls so the hot loop does not allocate.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch buffer of at least `len` floats (contents unspecified).
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// Output pixels per band of the conv forward's column matrix. A 32x32 image's whole column matrix (2.4–4.7 MB)
/// outgrows the L2 cache between `im2col` writing it and the GEMM reading it; a band of 256 pixels (0.6–1.2 MB)
/// stays near it (measurements in docs/history.md), and 16x16 and smaller images are still one band.
const BAND_PIXELS: usize = 256;

/// Output rows per band: as many whole rows as fit in [`BAND_PIXELS`], at least one.
fn band_rows(g: &ConvGeom) -> usize {
    (BAND_PIXELS / g.ow).clamp(1, g.oh)
}

/// The output rows of `g`, band by band.
fn bands(g: &ConvGeom) -> impl Iterator<Item = Range<usize>> {
    let (rows, oh) = (band_rows(g), g.oh);
    (0..oh).step_by(rows).map(move |r0| r0..(r0 + rows).min(oh))
}

/// GEMM threads for work split into `n` parallel items (images, or groups of them): the whole machine when there
/// is one item, else 1 (the items run in parallel).
pub(super) fn inner_threads(n: usize) -> usize {
    if n == 1 {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// Conv2d forward: `out[n] = W · im2col(x[n]) + epilogue`, `x: [n, g.c, g.h, g.w]`, `w: [co, g.c, k, k]`,
/// `out: [n, co, g.oh, g.ow]`, one band of [`BAND_PIXELS`] output pixels at a time.
///
/// Convs where `winograd::applies` run there: the same result, with 2.25x fewer multiply-adds.
pub fn conv2d_forward(g: &ConvGeom, n: usize, x: &[f32], w: &[f32], co: usize, epi: Epilogue, out: &mut [f32]) {
    if winograd::applies(g, co) {
        return winograd::conv2d_forward(g, n, x, w, co, epi, out);
    }
    let (kk, plane, in_len) = (g.col_rows(), g.col_cols(), g.c * g.h * g.w);
    let threads = inner_threads(n);
    out.par_chunks_mut(co * plane).enumerate().for_each(|(i, out_i)| {
        let x_i = &x[i * in_len..(i + 1) * in_len];
        if let Some(r) = epi.residual {
            out_i.copy_from_slice(&r[i * co * plane..(i + 1) * co * plane]);
        }
        let acc = epi.residual.is_some();
        // out_iᵀ[P, co] = colᵀ[P, K] · Wᵀ[K, co], written transposed, i.e. as out_i[co, P] (see
        // `sgemm_into_transposed` for why this orientation).
        if g.is_pointwise() {
            sgemm_into_transposed((plane, co, kk), Mat::t(x_i), Mat::t(w), (out_i, plane), acc, threads);
        } else {
            with_scratch(kk * band_rows(g) * g.ow, |col| {
                for rows in bands(g) {
                    let (p0, band) = (rows.start * g.ow, rows.len() * g.ow);
                    im2col_rows(g, x_i, rows, &mut col[..kk * band]);
                    sgemm_into_transposed(
                        (band, co, kk),
                        Mat::t(&col[..kk * band]),
                        Mat::t(w),
                        (&mut out_i[p0..], plane),
                        acc,
                        threads,
                    );
                }
            });
        }
        add_channel_terms(out_i, co, plane, epi.bias, epi.chan_bias.map(|cb| image_row(cb, i, co)));
    });
}

/// Image `i`'s `co` channel biases among the columns `cb`.
pub(super) fn image_row<'a>(cb: Columns<'a, [f32]>, i: usize, co: usize) -> &'a [f32] {
    &cb.buf[i * cb.stride + cb.start..][..co]
}

/// `out[c, :] += bias[c] + chan_bias[c]` for each channel of one image.
pub(super) fn add_channel_terms(
    out: &mut [f32],
    co: usize,
    plane: usize,
    bias: Option<&[f32]>,
    chan_bias: Option<&[f32]>,
) {
    if bias.is_none() && chan_bias.is_none() {
        return;
    }
    for c in 0..co {
        let add = bias.map_or(0.0, |b| b[c]) + chan_bias.map_or(0.0, |b| b[c]);
        out[c * plane..(c + 1) * plane].iter_mut().for_each(|v| *v += add);
    }
}

/// Conv2d backward for `gout = dL/dout [n, co, oh, ow]`: `dW = Σ_n gout[n] · im2col(x[n])ᵀ` and
/// `dx[n] = col2im(Wᵀ · gout[n])`. Bias gradients are plain sums of `gout` (`ReduceOps::channel_sums`).
///
/// For stride 1, `dx` is itself a stride-1 conv of `gout`, with the kernel flipped in space and its channel axes
/// swapped, and padding `k - 1 - p`:
/// `dx[c, y, x] = Σ_{o, ky, kx} W[o, c, k-1-ky, k-1-kx] · gout[o, y - (k-1-p) + ky, x - (k-1-p) + kx]`.
/// It runs as [`conv2d_forward`] (banded im2col + GEMM, written once) instead of a GEMM into a full column
/// matrix that `col2im` then scatter-adds. Where `winograd::applies`, that forward and dW run through Winograd.
pub fn conv2d_backward(g: &ConvGeom, n: usize, x: &[f32], w: &[f32], co: usize, gout: &[f32], grads: LayerGrads) {
    let (kk, plane, in_len) = (g.col_rows(), g.col_cols(), g.c * g.h * g.w);
    let threads = inner_threads(n);
    let LayerGrads { dx, dw } = grads;
    let dx = match dx {
        Some(dx) if g.stride == 1 && g.pad < g.k => {
            let gt =
                ConvGeom::new(co, g.oh, g.ow, g.k, 1, g.k - 1 - g.pad).expect("the adjoint of a stride-1 conv fits");
            conv2d_forward(&gt, n, gout, &flip_kernel(w, co, g.c, g.k), g.c, Epilogue::none(), dx);
            None
        }
        dx => dx,
    };
    let dw = match dw {
        Some(dw) if winograd::applies(g, co) => {
            winograd::conv2d_weight_grad(g, n, x, co, gout, dw);
            None
        }
        dw => dw,
    };
    if dx.is_none() && dw.is_none() {
        return;
    }
    // dx still to do (other strides) needs a whole image's column matrix; dW only a band's.
    let scratch = kk * if dx.is_some() { plane } else { band_rows(g) * g.ow };
    per_image_backward(n, in_len, (kk, co), scratch, LayerGrads { dx, dw }, |i, first, dx_i, dw_part, col| {
        let x_i = &x[i * in_len..(i + 1) * in_len];
        let g_i = &gout[i * co * plane..(i + 1) * co * plane];
        // dWᵀ[K, co] += col[K, P] · g_iᵀ[P, co]: twice as fast as dW = g_i · colᵀ for these shapes; the partials
        // are transposed back once, when summed.
        if let Some(dw_part) = dw_part {
            if g.is_pointwise() {
                sgemm((kk, co, plane), Mat::n(x_i), Mat::t(g_i), dw_part, !first, threads);
            } else {
                for (b, rows) in bands(g).enumerate() {
                    let (p0, band) = (rows.start * g.ow, rows.len() * g.ow);
                    im2col_rows(g, x_i, rows, &mut col[..kk * band]);
                    let g_band = Mat::t(&g_i[p0..]).ld(plane);
                    sgemm((kk, co, band), Mat::n(&col[..kk * band]), g_band, dw_part, !first || b > 0, threads);
                }
            }
        }
        if let Some(dx_i) = dx_i {
            if g.is_pointwise() {
                sgemm((kk, plane, co), Mat::t(w), Mat::n(g_i), dx_i, false, threads);
            } else {
                sgemm((kk, plane, co), Mat::t(w), Mat::n(g_i), col, false, threads);
                col2im(g, col, dx_i);
            }
        }
    });
}

/// `W[o, c, ky, kx] → W'[c, o, k-1-ky, k-1-kx]`: the kernel of the conv that maps a stride-1 conv's output
/// gradient to its input gradient.
fn flip_kernel(w: &[f32], co: usize, ci: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for o in 0..co {
        for c in 0..ci {
            for t in 0..k * k {
                out[(c * co + o) * k * k + (k * k - 1 - t)] = w[(o * ci + c) * k * k + t];
            }
        }
    }
    out
}

/// The batch loop shared by the conv backwards. Images are split into [`batch_chunks`] processed in parallel;
/// `body(i, first_in_chunk, dx_i, dw_part, col)` handles image `i`, accumulating into its chunk's partial weight
/// gradient, which holds `dWᵀ` as a row-major `dw_t_dims = (rows, cols)` matrix (overwrite when
/// `first_in_chunk`). The partials are summed in chunk order afterwards and transposed into dW, so the result is
/// the same whatever the thread count. `col` is per-thread scratch of `scratch_len` floats.
fn per_image_backward<F>(
    n: usize,
    in_len: usize,
    dw_t_dims: (usize, usize),
    scratch_len: usize,
    grads: LayerGrads,
    body: F,
) where
    F: Fn(usize, bool, Option<&mut [f32]>, Option<&mut [f32]>, &mut [f32]) + Sync,
{
    let ranges = batch_chunks(n);
    let want_dw = grads.dw.is_some();
    let mut dx_chunks: Vec<Option<&mut [f32]>> = match grads.dx {
        Some(dx) => split_by_ranges(dx, &ranges, in_len).into_iter().map(Some).collect(),
        None => ranges.iter().map(|_| None).collect(),
    };
    let partials: Vec<Vec<f32>> = ranges
        .par_iter()
        .zip(dx_chunks.par_iter_mut())
        .map(|(range, dx_chunk)| {
            let mut dw_part = if want_dw { vec![0.0f32; dw_t_dims.0 * dw_t_dims.1] } else { Vec::new() };
            with_scratch(scratch_len, |col| {
                for (j, i) in range.clone().enumerate() {
                    let dx_i = dx_chunk.as_deref_mut().map(|dx| &mut dx[j * in_len..(j + 1) * in_len]);
                    body(i, j == 0, dx_i, want_dw.then_some(&mut dw_part[..]), col);
                }
            });
            dw_part
        })
        .collect();
    if let Some(dw) = grads.dw {
        sum_partials_transposed(&partials, dw_t_dims, dw);
    }
}

/// ConvTranspose2d forward (PyTorch semantics, weight `[ci, co, k, k]`): the adjoint of a conv from the output
/// grid to the input grid. `g` is that conv's geometry: `g.c = co`, `(g.h, g.w)` the output size and
/// `(g.oh, g.ow)` the input size. `out[n] = col2im(Wᵀ · x[n]) + bias`.
pub fn conv_transpose2d_forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    ci: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (kk, plane, out_len) = (g.col_rows(), g.col_cols(), g.c * g.h * g.w);
    let threads = inner_threads(n);
    out.par_chunks_mut(out_len).enumerate().for_each(|(i, out_i)| {
        let x_i = &x[i * ci * plane..(i + 1) * ci * plane];
        with_scratch(kk * plane, |col| {
            sgemm((kk, plane, ci), Mat::t(w), Mat::n(x_i), col, false, threads);
            col2im(g, col, out_i);
        });
        add_channel_terms(out_i, g.c, g.h * g.w, bias, None);
    });
}

/// ConvTranspose2d backward: `dx[n] = W · im2col(gout[n])` and `dW = Σ_n x[n] · im2col(gout[n])ᵀ`. Both are the
/// conv `g` applied to `gout` with the weight `[ci, co, k, k]` read as a conv weight: `dx` is its forward and
/// `dW` its weight gradient for the output gradient `x`.
pub fn conv_transpose2d_backward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &[f32],
    ci: usize,
    gout: &[f32],
    grads: LayerGrads,
) {
    if let Some(dx) = grads.dx {
        conv2d_forward(g, n, gout, w, ci, Epilogue::none(), dx);
    }
    if grads.dw.is_some() {
        conv2d_backward(g, n, gout, w, ci, x, LayerGrads { dx: None, dw: grads.dw });
    }
}

/// Splits `buf` into the sub-slices of whole items named by `ranges` (items of `item_len` floats).
fn split_by_ranges<'a>(
    mut buf: &'a mut [f32],
    ranges: &[std::ops::Range<usize>],
    item_len: usize,
) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = buf.split_at_mut(r.len() * item_len);
        out.push(head);
        buf = tail;
    }
    out
}

/// `dst = (Σ partials)ᵀ`, summed in order, each partial a row-major `(rows, cols)` matrix (empty ones skipped).
fn sum_partials_transposed(partials: &[Vec<f32>], (rows, cols): (usize, usize), dst: &mut [f32]) {
    debug_assert!(partials.len() <= BATCH_CHUNKS);
    let mut sum = vec![0.0f32; rows * cols];
    for p in partials.iter().filter(|p| !p.is_empty()) {
        sum.iter_mut().zip(p).for_each(|(d, v)| *d += v);
    }
    for (r, row) in sum.chunks(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            dst[c * rows + r] = v;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `out[n, o, oy, ox] = Σ_{c, ky, kx} w[o, c, ky, kx]·x[n, c, oy·s - p + ky, ox·s - p + kx]`, straight from the
    /// definition, in f64.
    pub(crate) fn direct_conv(g: &ConvGeom, n: usize, x: &[f32], w: &[f32], co: usize) -> Vec<f32> {
        let (k, s, p) = (g.k as isize, g.stride as isize, g.pad as isize);
        let mut out = vec![0.0; n * co * g.oh * g.ow];
        for i in 0..n {
            for o in 0..co {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0.0f64;
                        for c in 0..g.c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (oy as isize * s - p + ky, ox as isize * s - p + kx);
                                    if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                        let xv = x[((i * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                        acc += xv as f64
                                            * w[((o * g.c + c) * g.k + ky as usize) * g.k + kx as usize] as f64;
                                    }
                                }
                            }
                        }
                        out[((i * co + o) * g.oh + oy) * g.ow + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    /// `(dx, dW)` for `gout`, straight from the definition (every output pixel's gradient times the input pixel
    /// and weight it read), in f64.
    pub(crate) fn direct_conv_grads(
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        w: &[f32],
        co: usize,
        gout: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (k, s, p) = (g.k as isize, g.stride as isize, g.pad as isize);
        let (mut dx, mut dw) = (vec![0.0f64; x.len()], vec![0.0f64; w.len()]);
        for i in 0..n {
            for o in 0..co {
                for (oy, ox) in (0..g.oh).flat_map(|oy| (0..g.ow).map(move |ox| (oy, ox))) {
                    let go = gout[((i * co + o) * g.oh + oy) * g.ow + ox] as f64;
                    for (c, ky, kx) in
                        (0..g.c).flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c, ky, kx))))
                    {
                        let (iy, ix) = (oy as isize * s - p + ky, ox as isize * s - p + kx);
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            let xi = ((i * g.c + c) * g.h + iy as usize) * g.w + ix as usize;
                            let wi = ((o * g.c + c) * g.k + ky as usize) * g.k + kx as usize;
                            dx[xi] += go * w[wi] as f64;
                            dw[wi] += go * x[xi] as f64;
                        }
                    }
                }
            }
        }
        (dx.into_iter().map(|v| v as f32).collect(), dw.into_iter().map(|v| v as f32).collect())
    }

    /// Deterministic values in [-1, 1).
    pub(crate) fn values(len: usize, mul: usize, modulus: usize) -> Vec<f32> {
        (0..len).map(|i| (i * mul % modulus) as f32 * 2.0 / modulus as f32 - 1.0).collect()
    }

    #[test]
    fn backward_matches_the_definition() {
        // Stride 1 (dx as the flipped conv, dW in several bands), stride 2 (dx through col2im), unpadded, 1x1.
        for (h, k, stride, pad, n) in [(40, 3, 1, 1, 2), (40, 3, 2, 1, 1), (9, 3, 1, 0, 3), (20, 1, 1, 0, 2)] {
            let (c, co) = (3, 4);
            let g = ConvGeom::new(c, h, h, k, stride, pad).unwrap();
            let x = values(n * c * h * h, 37, 101);
            let w = values(co * c * k * k, 53, 89);
            let gout = values(n * co * g.oh * g.ow, 29, 97);
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
            conv2d_backward(&g, n, &x, &w, co, &gout, LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) });
            let (want_dx, want_dw) = direct_conv_grads(&g, n, &x, &w, co, &gout);
            for (a, b) in dx.iter().zip(&want_dx) {
                assert!((a - b).abs() < 1e-5, "dx h={h} k={k} s={stride}: {a} vs {b}");
            }
            // dW sums over every pixel of every image: up to 3200 products.
            for (a, b) in dw.iter().zip(&want_dw) {
                assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()) * 10.0, "dW h={h} k={k} s={stride}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn forward_in_bands_matches_the_definition() {
        // 40x40 outputs: several bands of BAND_PIXELS / 40 rows and a shorter last band; also stride 2.
        for (h, stride, n) in [(40, 1, 2), (40, 2, 1), (7, 1, 3)] {
            let (c, co) = (3, 5);
            let g = ConvGeom::new(c, h, h, 3, stride, 1).unwrap();
            let x: Vec<f32> = (0..n * c * h * h).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let w: Vec<f32> = (0..co * c * 9).map(|i| ((i * 53 % 89) as f32 / 44.0) - 1.0).collect();
            let mut out = vec![f32::NAN; n * co * g.oh * g.ow];
            conv2d_forward(&g, n, &x, &w, co, Epilogue::none(), &mut out);
            for (a, b) in out.iter().zip(direct_conv(&g, n, &x, &w, co)) {
                assert!((a - b).abs() < 1e-5, "h={h} s={stride}: {a} vs {b}");
            }
        }
    }
}
