//! Winograd F(2x2, 3x3) for the 3x3, stride-1, "same" convolutions: the UNet's ResBlock convs and their input
//! gradients, about 80% of its arithmetic.
//!
//! A 2x2 block of outputs of a 3x3 conv reads a 4x4 patch `d` of the (zero-padded) input. Lavin & Gray (2016)
//! write it with 16 multiplies instead of 36:
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`, with
//! `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`.
//!
//! Summed over input channels, each of the 16 positions `ξ` of the 4x4 transformed tile is a matrix product:
//! `M[ξ][o, t] = Σ_c U[ξ][o, c] · V[ξ][c, t]`, with `U = G g Gᵀ` per (o, c) and `V = Bᵀ d B` per (c, tile t).
//! So a conv becomes an input transform, 16 GEMMs of `c_out x tiles x c_in` (2.25x fewer multiply-adds than
//! im2col's one GEMM of `c_out x pixels x 9·c_in`) and an output transform. The weight gradient is the adjoint of
//! the same computation: `dU[ξ] = dM[ξ] · V[ξ]ᵀ` with `dM = A dY Aᵀ` per tile, and `dW = Gᵀ dU G`.
//!
//! The transforms only add and halve, so the rounding error is a few f32 ulps of the largest terms, the same
//! order as the im2col path's (the golden tests hold it to the same tolerances). Tiles are processed in bands
//! of [`BAND_TILES`] so that `V` and `M` stay in the L2 cache between the transforms and the GEMMs; small images
//! are grouped so that each band still has enough tiles to keep the GEMMs efficient.

use super::cpu::{add_channel_terms, image_row, inner_threads, with_scratch};
use crate::desc::{ConvGeom, Epilogue};
use crate::ops::cpu::{batch_chunks, wide};
use crate::ops::linear::gemm::{sgemm, sgemm_into_transposed, Mat};
use rayon::prelude::*;
use std::ops::Range;

/// Tiles (2x2 output blocks) per band: one 32x32 image's band of 8 tile rows. With 64 channels its `V` and `M`
/// are 512 KiB each.
const BAND_TILES: usize = 128;

/// Whether the conv `g` with `co` output channels runs here: 3x3, stride 1, padding 1 and even sides (whole 2x2
/// tiles), with at least 8 channels on each side. At 1 channel (the UNet's first and last convs) the 16 GEMMs
/// would have nothing to multiply; from 8 channels on, Winograd is at least as fast as im2col (docs/history.md).
pub fn applies(g: &ConvGeom, co: usize) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2) && g.c >= 8 && co >= 8
}

/// The tiling of a batch: `tw x th` tiles per image, images grouped `per_group` at a time, and each group's
/// tile rows (counted across its images) cut into bands of `band_rows`.
struct Tiling {
    tw: usize,
    th: usize,
    per_group: usize,
    band_rows: usize,
}

impl Tiling {
    fn new(g: &ConvGeom) -> Self {
        let (tw, th) = (g.w / 2, g.h / 2);
        let per_group = BAND_TILES.div_ceil(tw * th).max(1);
        let band_rows = (BAND_TILES / tw).max(1);
        Tiling { tw, th, per_group, band_rows }
    }
    /// The bands of a group of `imgs` images, as ranges of its tile rows (row `r` is image `r / th`, tile row
    /// `r % th`).
    fn bands(&self, imgs: usize) -> impl Iterator<Item = Range<usize>> {
        let (rows, step) = (imgs * self.th, self.band_rows);
        (0..rows).step_by(step).map(move |r0| r0..(r0 + step).min(rows))
    }
    /// The tile rows of `band`, as `(index in the band, image, tile row of the image)`.
    fn tile_rows(&self, band: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
        let th = self.th;
        band.enumerate().map(move |(bt, r)| (bt, r / th, r % th))
    }
    /// The most tiles any band holds.
    fn max_band_tiles(&self) -> usize {
        self.band_rows.min(self.per_group * self.th) * self.tw
    }
}

/// `G x` for a 3-vector: `(x0, ½(x0 + x1 + x2), ½(x0 - x1 + x2), x2)`.
#[inline(always)]
fn g_apply([a, b, c]: [f32; 3]) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

/// `Gᵀ x` for a 4-vector: `(x0 + ½(x1 + x2), ½(x1 - x2), ½(x1 + x2) + x3)`.
#[inline(always)]
fn gt_apply([a, b, c, d]: [f32; 4]) -> [f32; 3] {
    [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d]
}

/// `U[ξ][o, c] = (G g[o, c] Gᵀ)[ξ]` for a weight `g: [co, ci, 3, 3]`, laid out `[16][co][ci]`.
pub fn transform_weights(w: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0.0; 16 * co * ci];
    for (oc, g) in w.chunks_exact(9).enumerate() {
        // G g: G applied to each of g's 3 columns, as 3 columns of 4.
        let cols: [[f32; 4]; 3] = std::array::from_fn(|col| g_apply([g[col], g[3 + col], g[6 + col]]));
        // (G g) Gᵀ: G applied to each of the 4 rows of G g.
        for row in 0..4 {
            for (col, v) in g_apply([cols[0][row], cols[1][row], cols[2][row]]).into_iter().enumerate() {
                u[(4 * row + col) * co * ci + oc] = v;
            }
        }
    }
    u
}

/// `dW[o, c] = Gᵀ dU[o, c] G` for `du_t: [16][ci][co]` (each `dU[ξ]` transposed, as the weight-gradient GEMMs
/// produce it), written as `[co, ci, 3, 3]`: the adjoint of [`transform_weights`].
fn untransform_weight_grads(du_t: &[f32], co: usize, ci: usize, dw: &mut [f32]) {
    let stride = co * ci;
    for (oc, g) in dw.chunks_exact_mut(9).enumerate() {
        let (o, c) = (oc / ci, oc % ci);
        let m = |xi: usize| du_t[xi * stride + c * co + o];
        // Gᵀ dU: Gᵀ applied to each of dU's 4 columns, as 4 columns of 3.
        let cols: [[f32; 3]; 4] = std::array::from_fn(|col| gt_apply([m(col), m(4 + col), m(8 + col), m(12 + col)]));
        // (Gᵀ dU) G: Gᵀ applied to each of the 3 rows.
        for row in 0..3 {
            g[3 * row..3 * row + 3].copy_from_slice(&gt_apply([
                cols[0][row],
                cols[1][row],
                cols[2][row],
                cols[3][row],
            ]));
        }
    }
}

/// `V[ξ][c, t] = (Bᵀ d B)[ξ]` for the tiles of the tile rows `band` of a group of images `x: [imgs, c, h, w]`
/// (zero padding of 1 around each image); `v` is `[16][c][band tiles]`.
///
/// Per channel and tile row: the four input rows the tiles read, padded, are combined by `Bᵀ` elementwise
/// ([`bt_rows`]), then each combined row by `B` across neighbouring columns ([`b_cols`]). The helpers take
/// separate slices so that the compiler knows they do not overlap and vectorises their loops.
fn transform_input(g: &ConvGeom, tl: &Tiling, x: &[f32], band: Range<usize>, v: &mut [f32]) {
    wide(
        #[inline(always)]
        || {
            let (tw, w, pw) = (tl.tw, g.w, g.w + 2);
            let nt = band.len() * tw;
            let xi_stride = g.c * nt;
            // 4 padded input rows, then the 4 rows of Bᵀ d.
            let mut rows = vec![0.0f32; 8 * pw];
            let (inp, tr) = rows.split_at_mut(4 * pw);
            for c in 0..g.c {
                for (bt, img, ty) in tl.tile_rows(band.clone()) {
                    let plane = &x[(img * g.c + c) * g.h * w..][..g.h * w];
                    for (a, padded) in inp.chunks_exact_mut(pw).enumerate() {
                        let iy = (2 * ty + a).wrapping_sub(1);
                        padded[0] = 0.0;
                        padded[pw - 1] = 0.0;
                        if iy < g.h {
                            padded[1..=w].copy_from_slice(&plane[iy * w..][..w]);
                        } else {
                            padded.fill(0.0);
                        }
                    }
                    let (r0, rest) = inp.split_at(pw);
                    let (r1, rest) = rest.split_at(pw);
                    let (r2, r3) = rest.split_at(pw);
                    let (t0, rest) = tr.split_at_mut(pw);
                    let (t1, rest) = rest.split_at_mut(pw);
                    let (t2, t3) = rest.split_at_mut(pw);
                    bt_rows([r0, r1, r2, r3], t0, t1, t2, t3);
                    for (a, t) in tr.chunks_exact(pw).enumerate() {
                        let base = 4 * a * xi_stride + c * nt + bt * tw;
                        let (v0, rest) = v[base..].split_at_mut(xi_stride);
                        let (v1, rest) = rest.split_at_mut(xi_stride);
                        let (v2, v3) = rest.split_at_mut(xi_stride);
                        b_cols(t, &mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
                    }
                }
            }
        },
    )
}

/// `Bᵀ` applied down the columns of four rows: `(r0 - r2, r1 + r2, r2 - r1, r1 - r3)`.
#[inline(always)]
fn bt_rows([r0, r1, r2, r3]: [&[f32]; 4], t0: &mut [f32], t1: &mut [f32], t2: &mut [f32], t3: &mut [f32]) {
    let n = t0.len();
    let (r0, r1, r2, r3, t1, t2, t3) =
        (&r0[..n], &r1[..n], &r2[..n], &r3[..n], &mut t1[..n], &mut t2[..n], &mut t3[..n]);
    for i in 0..n {
        t0[i] = r0[i] - r2[i];
        t1[i] = r1[i] + r2[i];
        t2[i] = r2[i] - r1[i];
        t3[i] = r1[i] - r3[i];
    }
}

/// `B` applied along a padded row `p` for each tile `j` (columns `p[2j..2j+4]`):
/// `(p0 - p2, p1 + p2, p2 - p1, p1 - p3)`.
#[inline(always)]
fn b_cols(p: &[f32], v0: &mut [f32], v1: &mut [f32], v2: &mut [f32], v3: &mut [f32]) {
    let n = v0.len();
    let (p, v1, v2, v3) = (&p[..2 * n + 2], &mut v1[..n], &mut v2[..n], &mut v3[..n]);
    for j in 0..n {
        let (a, b, c, d) = (p[2 * j], p[2 * j + 1], p[2 * j + 2], p[2 * j + 3]);
        v0[j] = a - c;
        v1[j] = b + c;
        v2[j] = c - b;
        v3[j] = b - d;
    }
}

/// `Y = Aᵀ M A` for each tile of the band, written to `out: [imgs, co, h, w]` (added to it when `acc`);
/// `m` is `[16][co][band tiles]`. Per channel and tile row: `Aᵀ` down the columns ([`at_rows`]), then `A`
/// along the rows into the two output rows ([`a_cols`]).
fn transform_output(g: &ConvGeom, tl: &Tiling, co: usize, m: &[f32], band: Range<usize>, acc: bool, out: &mut [f32]) {
    wide(
        #[inline(always)]
        || {
            let (tw, w) = (tl.tw, g.w);
            let nt = band.len() * tw;
            let xi_stride = co * nt;
            // s[a][b]: row a of Aᵀ M for column b, each a slice over the tile row's tiles.
            let mut s = vec![0.0f32; 8 * tw];
            for o in 0..co {
                for (bt, img, ty) in tl.tile_rows(band.clone()) {
                    let mx = |xi: usize| &m[xi * xi_stride + o * nt + bt * tw..][..tw];
                    let (s_top, s_bottom) = s.split_at_mut(4 * tw);
                    for (b, (s0, s1)) in s_top.chunks_exact_mut(tw).zip(s_bottom.chunks_exact_mut(tw)).enumerate() {
                        at_rows([mx(b), mx(4 + b), mx(8 + b), mx(12 + b)], s0, s1);
                    }
                    let plane = &mut out[(img * co + o) * g.h * w..][..g.h * w];
                    let (top, bottom) = plane[2 * ty * w..][..2 * w].split_at_mut(w);
                    for (sa, dst) in s.chunks_exact(4 * tw).zip([top, bottom]) {
                        let sx = |b: usize| &sa[b * tw..][..tw];
                        a_cols([sx(0), sx(1), sx(2), sx(3)], dst, acc);
                    }
                }
            }
        },
    )
}

/// `Aᵀ` down the columns of four rows: `s0 = m0 + m1 + m2`, `s1 = m1 - m2 - m3`.
#[inline(always)]
fn at_rows([m0, m1, m2, m3]: [&[f32]; 4], s0: &mut [f32], s1: &mut [f32]) {
    let n = s0.len();
    let (m0, m1, m2, m3, s1) = (&m0[..n], &m1[..n], &m2[..n], &m3[..n], &mut s1[..n]);
    for j in 0..n {
        s0[j] = m0[j] + m1[j] + m2[j];
        s1[j] = m1[j] - m2[j] - m3[j];
    }
}

/// `A` along a row of tiles: tile `j`'s two outputs `(s0 + s1 + s2, s1 - s2 - s3)` go to `dst[2j]` and
/// `dst[2j + 1]` (added to them when `acc`).
#[inline(always)]
fn a_cols([s0, s1, s2, s3]: [&[f32]; 4], dst: &mut [f32], acc: bool) {
    let n = s0.len();
    let (s1, s2, s3, dst) = (&s1[..n], &s2[..n], &s3[..n], &mut dst[..2 * n]);
    for j in 0..n {
        let (y0, y1) = (s0[j] + s1[j] + s2[j], s1[j] - s2[j] - s3[j]);
        if acc {
            dst[2 * j] += y0;
            dst[2 * j + 1] += y1;
        } else {
            dst[2 * j] = y0;
            dst[2 * j + 1] = y1;
        }
    }
}

/// `dM = A dY Aᵀ` for each tile of the band of `gout: [imgs, co, h, w]`: the adjoint of [`transform_output`],
/// written to `dm: [16][co][band tiles]`. `A` maps a pair `(y0, y1)` to `(y0, y0 + y1, y0 - y1, -y1)`: first
/// along each of the tile row's two output rows ([`a_expand_cols`]), then down the columns ([`a_expand_rows`]).
fn transform_output_grad(g: &ConvGeom, tl: &Tiling, co: usize, gout: &[f32], band: Range<usize>, dm: &mut [f32]) {
    wide(
        #[inline(always)]
        || {
            let (tw, w) = (tl.tw, g.w);
            let nt = band.len() * tw;
            let xi_stride = co * nt;
            // r[i][b]: output row i (of the tile's two) expanded to column b, a slice over the tile row's tiles.
            let mut r = vec![0.0f32; 8 * tw];
            for o in 0..co {
                for (bt, img, ty) in tl.tile_rows(band.clone()) {
                    let plane = &gout[(img * co + o) * g.h * w..][..g.h * w];
                    for (i, ri) in r.chunks_exact_mut(4 * tw).enumerate() {
                        let (r0, rest) = ri.split_at_mut(tw);
                        let (r1, rest) = rest.split_at_mut(tw);
                        let (r2, r3) = rest.split_at_mut(tw);
                        a_expand_cols(&plane[(2 * ty + i) * w..][..w], r0, r1, r2, r3);
                    }
                    let (top, bottom) = r.split_at(4 * tw);
                    for b in 0..4 {
                        let at = |a: usize| (4 * a + b) * xi_stride + o * nt + bt * tw;
                        let [d0, d1, d2, d3] = dm
                            .get_disjoint_mut([
                                at(0)..at(0) + tw,
                                at(1)..at(1) + tw,
                                at(2)..at(2) + tw,
                                at(3)..at(3) + tw,
                            ])
                            .expect("disjoint positions");
                        a_expand_rows(&top[b * tw..][..tw], &bottom[b * tw..][..tw], d0, d1, d2, d3);
                    }
                }
            }
        },
    )
}

/// `A` along a row of tiles: tile `j`'s pair `(y0, y1) = (row[2j], row[2j + 1])` becomes
/// `(y0, y0 + y1, y0 - y1, -y1)` in `r0..r3`.
#[inline(always)]
fn a_expand_cols(row: &[f32], r0: &mut [f32], r1: &mut [f32], r2: &mut [f32], r3: &mut [f32]) {
    let n = r0.len();
    let (row, r1, r2, r3) = (&row[..2 * n], &mut r1[..n], &mut r2[..n], &mut r3[..n]);
    for j in 0..n {
        let (y0, y1) = (row[2 * j], row[2 * j + 1]);
        r0[j] = y0;
        r1[j] = y0 + y1;
        r2[j] = y0 - y1;
        r3[j] = -y1;
    }
}

/// `A` down the columns: `(top, bottom)` becomes `(top, top + bottom, top - bottom, -bottom)` in `d0..d3`.
#[inline(always)]
fn a_expand_rows(top: &[f32], bottom: &[f32], d0: &mut [f32], d1: &mut [f32], d2: &mut [f32], d3: &mut [f32]) {
    let n = d0.len();
    let (top, bottom, d1, d2, d3) = (&top[..n], &bottom[..n], &mut d1[..n], &mut d2[..n], &mut d3[..n]);
    for j in 0..n {
        d0[j] = top[j];
        d1[j] = top[j] + bottom[j];
        d2[j] = top[j] - bottom[j];
        d3[j] = -bottom[j];
    }
}

/// Images `range` cut into groups of `tl.per_group`.
fn groups(range: Range<usize>, tl: &Tiling) -> Vec<Range<usize>> {
    let end = range.end;
    range.step_by(tl.per_group).map(|i| i..(i + tl.per_group).min(end)).collect()
}

/// Conv2d forward through Winograd F(2x2, 3x3) (see the module docs); same contract as
/// [`super::cpu::conv2d_forward`], for convs where [`applies`] holds.
pub fn conv2d_forward(g: &ConvGeom, n: usize, x: &[f32], w: &[f32], co: usize, epi: Epilogue, out: &mut [f32]) {
    let tl = Tiling::new(g);
    let u = transform_weights(w, co, g.c);
    let (in_len, out_len, plane) = (g.c * g.h * g.w, co * g.h * g.w, g.h * g.w);
    let groups = groups(0..n, &tl);
    let threads = inner_threads(groups.len());
    let max_nt = tl.max_band_tiles();
    out.par_chunks_mut(tl.per_group * out_len).zip(groups.par_iter()).for_each(|(out_g, imgs)| {
        let x_g = &x[imgs.start * in_len..imgs.end * in_len];
        if let Some(r) = epi.residual {
            out_g.copy_from_slice(&r[imgs.start * out_len..imgs.end * out_len]);
        }
        with_scratch(16 * (g.c + co) * max_nt, |scratch| {
            for band in tl.bands(imgs.len()) {
                let nt = band.len() * tl.tw;
                let (v, m) = scratch.split_at_mut(16 * g.c * nt);
                transform_input(g, &tl, x_g, band.clone(), v);
                for xi in 0..16 {
                    // Mᵀ[t, o] = V[ξ]ᵀ[t, c] · U[ξ]ᵀ[c, o], stored as M[o, t] (see `sgemm_into_transposed`).
                    let v_xi = Mat::t(&v[xi * g.c * nt..][..g.c * nt]);
                    let u_xi = Mat::t(&u[xi * co * g.c..][..co * g.c]);
                    sgemm_into_transposed(
                        (nt, co, g.c),
                        v_xi,
                        u_xi,
                        (&mut m[xi * co * nt..][..co * nt], nt),
                        false,
                        threads,
                    );
                }
                transform_output(g, &tl, co, &m[..16 * co * nt], band, epi.residual.is_some(), out_g);
            }
        });
        for (j, i) in imgs.clone().enumerate() {
            add_channel_terms(
                &mut out_g[j * out_len..][..out_len],
                co,
                plane,
                epi.bias,
                epi.chan_bias.map(|cb| image_row(cb, i, co)),
            );
        }
    });
}

/// The weight gradient of a conv where [`applies`] holds, through Winograd: `dUᵀ[ξ][c, o] = Σ_t V[ξ][c, t] ·
/// dM[ξ][o, t]`, accumulated over the images of each of the [`batch_chunks`] (in parallel) and then over the
/// chunks in order, so the result does not depend on the thread count; then `dW = Gᵀ dU G`. Overwrites
/// `dw: [co, c, 3, 3]`.
pub fn conv2d_weight_grad(g: &ConvGeom, n: usize, x: &[f32], co: usize, gout: &[f32], dw: &mut [f32]) {
    let tl = Tiling::new(g);
    let (in_len, out_len) = (g.c * g.h * g.w, co * g.h * g.w);
    let chunks = batch_chunks(n);
    let threads = inner_threads(chunks.len());
    let max_nt = tl.max_band_tiles();
    let partials: Vec<Vec<f32>> = chunks
        .into_par_iter()
        .map(|chunk| {
            let mut du = vec![0.0f32; 16 * g.c * co];
            with_scratch(16 * (g.c + co) * max_nt, |scratch| {
                let mut first = true;
                for imgs in groups(chunk, &tl) {
                    let x_g = &x[imgs.start * in_len..imgs.end * in_len];
                    let g_g = &gout[imgs.start * out_len..imgs.end * out_len];
                    for band in tl.bands(imgs.len()) {
                        let nt = band.len() * tl.tw;
                        let (v, dm) = scratch.split_at_mut(16 * g.c * nt);
                        transform_input(g, &tl, x_g, band.clone(), v);
                        transform_output_grad(g, &tl, co, g_g, band, dm);
                        for xi in 0..16 {
                            let v_xi = Mat::n(&v[xi * g.c * nt..][..g.c * nt]);
                            let dm_xi = Mat::t(&dm[xi * co * nt..][..co * nt]);
                            sgemm((g.c, co, nt), v_xi, dm_xi, &mut du[xi * g.c * co..][..g.c * co], !first, threads);
                        }
                        first = false;
                    }
                }
            });
            du
        })
        .collect();
    // Sum the chunks' dUᵀ in order and map back to 3x3.
    let mut sum = vec![0.0f32; 16 * g.c * co];
    for p in &partials {
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    untransform_weight_grads(&sum, co, g.c, dw);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::{Columns, LayerGrads};
    use crate::ops::conv::cpu::tests::{direct_conv, direct_conv_grads, values};
    use crate::ops::conv::cpu::{conv2d_backward, conv2d_forward};

    /// Tolerance against the f64 definition: the transformed operands are larger than the raw ones
    /// (`|Bᵀ d B| ≤ 4·max|d|`, `|G g Gᵀ| ≤ 2.25·max|g|`) and the output transform adds 9 of the products'
    /// sums, so an output's f32 rounding error is up to ~100 ulps of the largest partial sum (here ~10-40 for
    /// values in [-1, 1] and 8-16 channels): 1e-5 relative to the result plus 5e-5 absolute.
    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 5e-5 + 1e-5 * b.abs()
    }

    #[test]
    fn forward_matches_the_definition() {
        // 40x40: bands of 6 tile rows and a shorter last band; 6x6 and 4x8: several small images grouped into
        // one band; c = 8 and co = 8 are the smallest that take this path.
        for (h, w, c, co, n) in [(40, 40, 8, 9, 2), (6, 6, 9, 8, 5), (4, 8, 16, 8, 3)] {
            let g = ConvGeom::new(c, h, w, 3, 1, 1).unwrap();
            assert!(applies(&g, co));
            let x = values(n * c * h * w, 37, 101);
            let wt = values(co * c * 9, 53, 89);
            // The channel bias as columns 3.. of a wider matrix, as the UNet's time projections are.
            let (bias, chan_bias, residual) =
                (values(co, 7, 13), values(n * (co + 5), 11, 17), values(n * co * h * w, 29, 97));
            let cols = Columns { buf: &chan_bias[..], start: 3, stride: co + 5 };
            let epi = Epilogue { bias: Some(&bias[..]), chan_bias: Some(cols), residual: Some(&residual[..]) };
            let mut out = vec![f32::NAN; n * co * h * w];
            conv2d_forward(&g, n, &x, &wt, co, epi, &mut out);
            let want = direct_conv(&g, n, &x, &wt, co);
            for (idx, (a, b)) in out.iter().zip(&want).enumerate() {
                let (i, o) = (idx / (co * h * w), idx / (h * w) % co);
                let b = b + residual[idx] + bias[o] + chan_bias[i * (co + 5) + 3 + o];
                assert!(close(*a, b), "{h}x{w} c={c} co={co} n={n}, element {idx}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn gradients_match_the_definition() {
        // dx runs as the forward of the flipped conv, dW through `conv2d_weight_grad`: 3 images are 3 batch
        // chunks summed in order; 40x40 has several bands per image, 6x6 groups images.
        for (h, c, co, n) in [(40, 8, 9, 3), (6, 9, 8, 5)] {
            let g = ConvGeom::new(c, h, h, 3, 1, 1).unwrap();
            let x = values(n * c * h * h, 37, 101);
            let w = values(co * c * 9, 53, 89);
            let gout = values(n * co * h * h, 29, 97);
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
            conv2d_backward(&g, n, &x, &w, co, &gout, LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) });
            let (want_dx, want_dw) = direct_conv_grads(&g, n, &x, &w, co, &gout);
            for (a, b) in dx.iter().zip(&want_dx) {
                assert!(close(*a, *b), "dx {h}x{h} n={n}: {a} vs {b}");
            }
            // dW sums over every pixel of every image (up to 4800 products of magnitude ≤ 1, sums up to ~100):
            // the same relative error budget, on a larger absolute scale.
            for (a, b) in dw.iter().zip(&want_dw) {
                assert!((a - b).abs() <= 1e-3 + 1e-5 * b.abs(), "dW {h}x{h} n={n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn weight_transform_and_its_adjoint_agree() {
        // <transform(g), du> = <g, untransform(du)> for any g and du: the weight gradient is the exact adjoint.
        let (co, ci) = (3, 2);
        let g = values(co * ci * 9, 53, 89);
        let du_t = values(16 * ci * co, 37, 101);
        let u = transform_weights(&g, co, ci);
        let mut dg = vec![0.0; g.len()];
        untransform_weight_grads(&du_t, co, ci, &mut dg);
        // u is [16][co][ci], du_t is [16][ci][co].
        let lhs: f64 = (0..16 * co * ci)
            .map(|k| {
                let (xi, o, c) = (k / (co * ci), k / ci % co, k % ci);
                u[k] as f64 * du_t[(xi * ci + c) * co + o] as f64
            })
            .sum();
        let rhs: f64 = g.iter().zip(&dg).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
