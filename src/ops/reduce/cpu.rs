//! The CPU's sums and copies: gradient accumulation, bias gradients (sums over pixels and images, in f64), and the
//! channel concat with its inverse.

use super::ReduceOps;
use crate::backend::Cpu;
use crate::desc::{ConcatDesc, Planes};
use crate::error::{Error, Result};
use crate::ops::cpu::wide;
use rayon::prelude::*;

impl ReduceOps for Cpu {
    fn add_assign(&self, acc: &mut Vec<f32>, g: &Vec<f32>) -> Result<()> {
        acc.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn channel_sums(&self, d: Planes, t: &Vec<f32>, per_image: bool, out: &mut Vec<f32>) -> Result<()> {
        check_len("channel_sums out", out, if per_image { d.n * d.c } else { d.c })?;
        channel_sums(t, d.n, d.c, d.plane, per_image, out);
        Ok(())
    }
    fn column_sums(&self, m: &Vec<f32>, _rows: usize, cols: usize, out: &mut Vec<f32>) -> Result<()> {
        check_len("column_sums out", out, cols)?;
        column_sums(m, cols, out);
        Ok(())
    }
    fn concat(&self, d: ConcatDesc, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        concat_channels(a, b, d.ca, d.cb, d.plane, out);
        Ok(())
    }
    fn split(&self, d: ConcatDesc, g: &Vec<f32>) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(split_channels(g, d.n, d.ca, d.cb, d.plane))
    }
    fn copy_columns(
        &self,
        src: &Vec<f32>,
        (rows, width): (usize, usize),
        dst: &mut Vec<f32>,
        (start, stride): (usize, usize),
    ) -> Result<()> {
        check_len("copy_columns src", src, rows * width)?;
        check_len("copy_columns dst", dst, rows * stride)?;
        if start + width > stride {
            return Err(Error::Shape(format!("copy_columns: columns {start}..{} of {stride}", start + width)));
        }
        for (s, d) in src.chunks_exact(width.max(1)).zip(dst.chunks_exact_mut(stride.max(1))) {
            d[start..start + width].copy_from_slice(s);
        }
        Ok(())
    }
}

/// `Err` unless `out` holds exactly `len` words.
fn check_len(what: &str, out: &[f32], len: usize) -> Result<()> {
    if out.len() != len {
        return Err(Error::Shape(format!("{what}: {} words, expected {len}", out.len())));
    }
    Ok(())
}

/// `out` = the per-channel sums of an `[n, c, plane]` tensor, as `[c]` (`per_image = false`) or `[n, c]`
/// (`true`): the gradient of a broadcast bias.
pub fn channel_sums(t: &[f32], n: usize, c: usize, plane: usize, per_image: bool, out: &mut [f32]) {
    let sums: Vec<f32> = t
        .par_chunks(plane)
        .map(|row| {
            wide(
                #[inline(always)]
                || sum_f64(row),
            ) as f32
        })
        .collect();
    if per_image {
        out.copy_from_slice(&sums);
        return;
    }
    for (ch, o) in out.iter_mut().enumerate() {
        *o = (0..n).map(|i| sums[i * c + ch] as f64).sum::<f64>() as f32;
    }
}

/// `Σ row` in f64, in 8 lanes (lane `l` adds the elements `≡ l mod 8`): one running sum would make every add wait
/// for the previous one (4 cycles each); independent lanes pipeline and vectorise.
#[inline(always)]
fn sum_f64(row: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for ch in chunks {
        acc.iter_mut().zip(ch).for_each(|(a, &v)| *a += v as f64);
    }
    acc.iter().sum::<f64>() + tail
}

/// `out[cols]` = the column sums of a `[rows, cols]` matrix (the bias gradient of a linear layer), accumulated in
/// f64.
pub fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    let mut acc = vec![0.0f64; cols];
    m.chunks(cols).for_each(|row| acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64));
    out.iter_mut().zip(acc).for_each(|(o, v)| *o = v as f32);
}

/// Concatenates `a: [n, ca, plane]` and `b: [n, cb, plane]` along channels into `[n, ca + cb, plane]`.
pub fn concat_channels(a: &[f32], b: &[f32], ca: usize, cb: usize, plane: usize, out: &mut [f32]) {
    out.par_chunks_mut((ca + cb) * plane).enumerate().for_each(|(i, o)| {
        o[..ca * plane].copy_from_slice(&a[i * ca * plane..(i + 1) * ca * plane]);
        o[ca * plane..].copy_from_slice(&b[i * cb * plane..(i + 1) * cb * plane]);
    });
}

/// The inverse of [`concat_channels`]: splits `g: [n, ca + cb, plane]` into its two channel blocks.
pub fn split_channels(g: &[f32], n: usize, ca: usize, cb: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut a, mut b) = (Vec::with_capacity(n * ca * plane), Vec::with_capacity(n * cb * plane));
    for o in g.chunks((ca + cb) * plane) {
        a.extend_from_slice(&o[..ca * plane]);
        b.extend_from_slice(&o[ca * plane..]);
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::channel_sums;

    use crate::ops::conv::cpu::tests::values;

    #[test]
    fn channel_sums_match_f64_sums() {
        // Planes of 13 values: one 8-lane chunk and a tail.
        let (n, c, plane) = (2, 3, 13);
        let t = values(n * c * plane, 37, 101);
        let row_sum = |i: usize| t[i * plane..(i + 1) * plane].iter().map(|&v| v as f64).sum::<f64>();
        let (mut per_image, mut total) = (vec![0.0; n * c], vec![0.0; c]);
        channel_sums(&t, n, c, plane, true, &mut per_image);
        channel_sums(&t, n, c, plane, false, &mut total);
        for (i, got) in per_image.into_iter().enumerate() {
            assert!((got as f64 - row_sum(i)).abs() < 1e-6, "image-channel {i}: {got}");
        }
        for (ch, got) in total.into_iter().enumerate() {
            let want: f64 = (0..n).map(|i| row_sum(i * c + ch)).sum();
            assert!((got as f64 - want).abs() < 1e-5, "channel {ch}: {got} vs {want}");
        }
    }
}
