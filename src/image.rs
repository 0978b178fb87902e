//! PNG output: sample grids exactly as torchvision's `save_image` writes them, and a minimal line plot for curves.

use std::io::Write;
use std::path::Path;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Gap between grid cells and around the grid, in pixels (torchvision's `make_grid` default).
const PADDING: usize = 2;

/// Saves `images` (`[n, c, h, w]`, c = 1 or 3, values in [-1, 1]) as an 8-bit RGB PNG grid, reproducing torchvision's
/// `save_image((x + 1) / 2, nrow=nrow)`: `make_grid` with padding 2 and pad value 0 (`min(nrow, n)` columns,
/// `ceil(n / columns)` rows, image i at `((i / cols) * (h + 2) + 2, (i % cols) * (w + 2) + 2)`; a single image is
/// written alone without padding), gray replicated to RGB, and each value mapped to
/// `u8(clamp(((x + 1) / 2) * 255 + 0.5, 0, 255))` in f32 (truncating).
pub fn save_grid_png(path: &Path, images: &Tensor, nrow: usize) -> Result<()> {
    let (n, c, h, w) = images.dims4("save_grid_png")?;
    if c != 1 && c != 3 || n == 0 || h == 0 || w == 0 {
        return Err(Error::Shape(format!("save_grid_png: need [n>0, 1 or 3, h, w], got {:?}", images.shape())));
    }
    if nrow == 0 {
        return Err(Error::Arg("save_grid_png: nrow must be at least 1".into()));
    }
    // make_grid returns a lone image as is, so there is no padding when n == 1.
    let (pad, cols) = if n == 1 { (0, 1) } else { (PADDING, nrow.min(n)) };
    let rows = n.div_ceil(cols);
    let (gh, gw) = (rows * (h + pad) + pad, cols * (w + pad) + pad);
    let mut rgb = vec![0u8; gh * gw * 3];
    let data = images.data();
    for i in 0..n {
        let (top, left) = ((i / cols) * (h + pad) + pad, (i % cols) * (w + pad) + pad);
        for ch in 0..3 {
            // Gray is replicated: every RGB channel reads channel 0.
            let plane = &data[(i * c + if c == 1 { 0 } else { ch }) * h * w..][..h * w];
            for (y, row) in plane.chunks_exact(w).enumerate() {
                for (x, &v) in row.iter().enumerate() {
                    rgb[((top + y) * gw + left + x) * 3 + ch] = to_u8((v + 1.0) / 2.0);
                }
            }
        }
    }
    write_png(path, gw, gh, &rgb, None)
}

/// torchvision's `save_image` conversion of a [0, 1] value: `mul(255).add_(0.5).clamp_(0, 255)` then a truncating
/// cast to u8, all in f32.
fn to_u8(v: f32) -> u8 {
    (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

/// Plot size in pixels.
const PLOT_W: usize = 640;
const PLOT_H: usize = 400;
/// Margin between the image border and the axes box.
const MARGIN: usize = 20;

/// Saves a line plot of `series` (points `(x, y)`, drawn in order) as a 640x400 RGB PNG: white background, a black
/// axes box, the polyline in blue. The y axis is logarithmic when every y is positive and they span at least a
/// factor 10 (loss curves); non-finite points are skipped. `title` goes into the PNG's `Title` text chunk since
/// the plot itself has no text.
pub fn save_curve_png(path: &Path, series: &[(f64, f64)], title: &str) -> Result<()> {
    let finite: Vec<(f64, f64)> = series.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let (ymin, ymax) = range(finite.iter().map(|p| p.1));
    let log_y = ymin > 0.0 && ymax >= 10.0 * ymin;
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let (x0, x1) = range(finite.iter().map(|p| p.0));
    let (y0, y1) = range(finite.iter().map(|p| ty(p.1)));
    let mut img = vec![255u8; PLOT_W * PLOT_H * 3];
    let (left, top, right, bottom) = (MARGIN, MARGIN, PLOT_W - 1 - MARGIN, PLOT_H - 1 - MARGIN);
    for (a, b) in [((left, top), (right, top)), ((right, top), (right, bottom)), ((right, bottom), (left, bottom))] {
        draw_line(&mut img, to_f(a), to_f(b), [0, 0, 0]);
    }
    draw_line(&mut img, to_f((left, bottom)), to_f((left, top)), [0, 0, 0]);
    // Data fill the box minus a 5-pixel inset so extreme points do not sit on the frame.
    let inset = 5.0;
    let (pl, pr) = (left as f64 + inset, right as f64 - inset);
    let (pt, pb) = (top as f64 + inset, bottom as f64 - inset);
    let to_px = |(x, y): (f64, f64)| (pl + (x - x0) / (x1 - x0) * (pr - pl), pb - (ty(y) - y0) / (y1 - y0) * (pb - pt));
    let blue = [31, 119, 180];
    match finite.len() {
        0 => {}
        1 => draw_line(&mut img, to_px(finite[0]), to_px(finite[0]), blue),
        _ => finite.windows(2).for_each(|p| draw_line(&mut img, to_px(p[0]), to_px(p[1]), blue)),
    }
    write_png(path, PLOT_W, PLOT_H, &img, Some(title))
}

fn to_f((x, y): (usize, usize)) -> (f64, f64) {
    (x as f64, y as f64)
}

/// `(min, max)` of the values, widened to a non-empty interval so a flat or empty series still maps to pixels.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Draws a 2-pixel-wide segment by sampling it at least once per pixel step (a DDA rasteriser); points off the
/// image are dropped.
fn draw_line(img: &mut [u8], a: (f64, f64), b: (f64, f64), color: [u8; 3]) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = ((a.0 + t * (b.0 - a.0)).round() as i64, (a.1 + t * (b.1 - a.1)).round() as i64);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (px, py) = (x + dx, y + dy);
            if (0..PLOT_W as i64).contains(&px) && (0..PLOT_H as i64).contains(&py) {
                let at = (py as usize * PLOT_W + px as usize) * 3;
                img[at..at + 3].copy_from_slice(&color);
            }
        }
    }
}

/// Encodes `rgb` (`height * width * 3` bytes) as an 8-bit RGB PNG at `path` through [`write_atomic`], with an
/// optional `Title` text chunk.
fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8], title: Option<&str>) -> Result<()> {
    let png_err = |e: png::EncodingError| Error::file(path, format!("PNG encoding failed: {e}"));
    write_atomic(path, |out: &mut dyn Write| {
        let mut enc = png::Encoder::new(out, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(t) = title {
            enc.add_text_chunk("Title".into(), t.into()).map_err(png_err)?;
        }
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(rgb).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}
