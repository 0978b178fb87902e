//! Bit-exact port of Pillow's `Image.resize(size, BILINEAR)` for 8-bit single-channel images (libImaging/Resample.c),
//! which is what torchvision's `transforms.Resize` does on a PIL image, and of `ToTensor` + `Normalize(0.5, 0.5)`.

use crate::error::{Error, Result};

/// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the pixel minus 2 guard bits.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one axis: output pixel `o` reads `len[o]` inputs from `start[o]` with weights
/// `k[o * ksize..][..len[o]]` in `PRECISION_BITS` fixed point.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear (triangle, support 1) filter over the
/// whole axis (box `0..in_size`). The double arithmetic follows the C expression order so the weights round alike.
fn bilinear_taps(in_size: usize, out_size: usize) -> Taps {
    // Pillow computes `(double)(float(in1 - in0)) / outSize`; in1 - in0 = in_size is exact in f32 for these sizes.
    let scale = in_size as f32 as f64 / out_size as f64;
    // Downscaling widens the filter to antialias; upscaling keeps it at its natural support.
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0 * filterscale
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut taps = Taps { start: vec![0; out_size], len: vec![0; out_size], ksize, k: vec![0; out_size * ksize] };
    let mut w = vec![0.0f64; ksize];
    for o in 0..out_size {
        let center = (o as f64 + 0.5) * scale;
        // C `(int)` truncates toward zero, as `as i64` does; then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let n = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = triangle(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for (x, &wx) in w.iter().enumerate().take(n) {
            let wx = if ww != 0.0 { wx / ww } else { wx };
            // Round half away from zero, then truncate: `(int)(x * 2^P +- 0.5)`.
            let fixed = wx * (1u32 << PRECISION_BITS) as f64;
            taps.k[o * ksize + x] = if wx < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        taps.start[o] = xmin as usize;
        taps.len[o] = n;
    }
    taps
}

/// Pillow's `bilinear_filter`: `max(0, 1 - |x|)`.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// One output value: `clip8((2^(P-1) + sum(pixel * k)) >> P)` in i32, as Pillow's 8bpc loops compute it.
fn tap(pixels: impl Iterator<Item = u8>, k: &[i32]) -> u8 {
    let acc = pixels.zip(k).fold(1i32 << (PRECISION_BITS - 1), |acc, (p, &k)| acc + p as i32 * k);
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes a row-major `in_h x in_w` u8 image to `out_h x out_w` exactly as Pillow's
/// `Image.resize((out_w, out_h), Image.BILINEAR)` does on an "L" image: a horizontal pass into an intermediate u8
/// image, then a vertical pass, each with fixed-point weights. `Err` if `src` is not `in_w * in_h` bytes.
pub fn resize_bilinear(src: &[u8], in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> Result<Vec<u8>> {
    if src.len() != in_w * in_h || in_w == 0 || in_h == 0 {
        return Err(Error::Shape(format!("resize: {} bytes is not a non-empty {in_h}x{in_w} image", src.len())));
    }
    let (h, v) = (bilinear_taps(in_w, out_w), bilinear_taps(in_h, out_h));
    // Pillow only resamples the source rows the vertical pass reads; computing all rows gives the same values.
    let mut mid = vec![0u8; in_h * out_w];
    for (src_row, mid_row) in src.chunks_exact(in_w).zip(mid.chunks_exact_mut(out_w)) {
        for (o, out) in mid_row.iter_mut().enumerate() {
            let row = &src_row[h.start[o]..h.start[o] + h.len[o]];
            *out = tap(row.iter().copied(), &h.k[o * h.ksize..]);
        }
    }
    let mut dst = vec![0u8; out_h * out_w];
    for (o, dst_row) in dst.chunks_exact_mut(out_w).enumerate() {
        let k = &v.k[o * v.ksize..];
        for (x, out) in dst_row.iter_mut().enumerate() {
            let column = (v.start[o]..v.start[o] + v.len[o]).map(|y| mid[y * out_w + x]);
            *out = tap(column, k);
        }
    }
    Ok(dst)
}

/// `ToTensor` then `Normalize((0.5,), (0.5,))` on one pixel, in f32 and in torch's order: `(v / 255 - 0.5) / 0.5`.
pub fn to_model_range(v: u8) -> f32 {
    (v as f32 / 255.0 - 0.5) / 0.5
}
