//! A line plot as a PNG (the training loss curve), with a title, axis names and tick labels drawn in a built-in
//! 5x7 bitmap font, so the picture reads on its own without a plotting library or a font file.

use std::path::Path;

use crate::error::Result;
use crate::image::write_png;

/// Plot size in pixels.
const W: usize = 640;
const H: usize = 400;
/// The axes box: room on the left for y tick labels, below for x tick labels and the x axis name, above for the
/// title.
const LEFT: usize = 64;
const RIGHT: usize = W - 1 - 16;
const TOP: usize = 36;
const BOTTOM: usize = H - 1 - 40;

type Rgb = [u8; 3];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [226, 226, 226];
const BLUE: Rgb = [31, 119, 180];

/// Saves a line plot of `series` (points `(x, y)`, drawn in order) as a 640x400 RGB PNG: white background, light
/// grid lines at the ticks, a black axes box, the polyline in blue, `title` above (also stored in the PNG's `Title`
/// text chunk), `x_name` below and `y_name` over the y axis. The y axis is logarithmic when every y is positive
/// and they span at least a factor 10 (loss curves; the y name then says so); non-finite points are skipped.
/// Text uses lowercase letters, digits and `.-+()`; other characters are drawn as blanks.
pub fn save_curve_png(path: &Path, series: &[(f64, f64)], title: &str, x_name: &str, y_name: &str) -> Result<()> {
    let finite: Vec<(f64, f64)> = series.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let (ymin, ymax) = range(finite.iter().map(|p| p.1));
    let log_y = ymin > 0.0 && ymax >= 10.0 * ymin;
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let (x0, x1) = range(finite.iter().map(|p| p.0));
    let (y0, y1) = range(finite.iter().map(|p| ty(p.1)));
    // Data fill the box minus a 5-pixel inset so extreme points do not sit on the frame.
    let inset = 5.0;
    let (pl, pr) = (LEFT as f64 + inset, RIGHT as f64 - inset);
    let (pt, pb) = (TOP as f64 + inset, BOTTOM as f64 - inset);
    let px = |x: f64| pl + (x - x0) / (x1 - x0) * (pr - pl);
    let py = |ly: f64| pb - (ly - y0) / (y1 - y0) * (pb - pt);

    let mut img = vec![255u8; W * H * 3];
    for (v, label) in linear_ticks(x0, x1) {
        draw_line(&mut img, (px(v), TOP as f64), (px(v), BOTTOM as f64), GRID);
        draw_text(&mut img, px(v) as i64 - text_width(&label, 1) as i64 / 2, BOTTOM as i64 + 8, &label, 1);
    }
    let y_ticks = if log_y { log_ticks(y0, y1) } else { linear_ticks(y0, y1) };
    for (v, label) in y_ticks {
        draw_line(&mut img, (LEFT as f64, py(v)), (RIGHT as f64, py(v)), GRID);
        draw_text(&mut img, LEFT as i64 - 6 - text_width(&label, 1) as i64, py(v) as i64 - 3, &label, 1);
    }
    let corners = [(LEFT, TOP), (RIGHT, TOP), (RIGHT, BOTTOM), (LEFT, BOTTOM), (LEFT, TOP)];
    for c in corners.windows(2) {
        draw_line(&mut img, (c[0].0 as f64, c[0].1 as f64), (c[1].0 as f64, c[1].1 as f64), BLACK);
    }
    let to_px = |(x, y): (f64, f64)| (px(x), py(ty(y)));
    match finite.len() {
        0 => {}
        1 => draw_line(&mut img, to_px(finite[0]), to_px(finite[0]), BLUE),
        _ => finite.windows(2).for_each(|p| draw_line(&mut img, to_px(p[0]), to_px(p[1]), BLUE)),
    }
    draw_text(&mut img, (W - text_width(title, 2)) as i64 / 2, 6, title, 2);
    let y_name = if log_y { format!("{y_name} (log scale)") } else { y_name.to_string() };
    draw_text(&mut img, LEFT as i64 - 4, TOP as i64 - 11, &y_name, 1);
    draw_text(&mut img, (LEFT + RIGHT - text_width(x_name, 1)) as i64 / 2, BOTTOM as i64 + 24, x_name, 1);
    write_png(path, W, H, &img, Some(title))
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

/// Ticks of a linear axis over `[lo, hi]` (`lo < hi`) with their labels: the multiples of the smallest 1-2-5 step
/// (1, 2 or 5 times a power of ten) that cuts the range into at most 4 intervals, labelled with as many decimals as
/// the step needs.
fn linear_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let raw = (hi - lo) / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    (first..=last).map(|k| k as f64 * step).map(|v| (v, format!("{v:.decimals$}"))).collect()
}

/// Ticks of a log axis whose range `[lo, hi]` is in log10 units: the powers of ten inside it, and 2x and 5x each
/// power too when the range spans less than two decades (so there are at least two ticks).
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let mantissas: &[f64] = if hi - lo < 2.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let mut ticks = Vec::new();
    for k in lo.floor() as i32..=hi.ceil() as i32 {
        for &m in mantissas {
            let at = (m * 10f64.powi(k)).log10();
            if (lo..=hi).contains(&at) {
                let decimals = (-k).max(0) as usize;
                ticks.push((at, format!("{:.decimals$}", m * 10f64.powi(k))));
            }
        }
    }
    ticks
}

/// Draws a 2-pixel-wide segment by sampling it at least once per pixel step (a DDA rasteriser); points off the
/// image are dropped.
fn draw_line(img: &mut [u8], a: (f64, f64), b: (f64, f64), color: Rgb) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = ((a.0 + t * (b.0 - a.0)).round() as i64, (a.1 + t * (b.1 - a.1)).round() as i64);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x + dx, y + dy, color);
        }
    }
}

/// Sets one pixel, if it is on the image.
fn put(img: &mut [u8], x: i64, y: i64, color: Rgb) {
    if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
        let at = (y as usize * W + x as usize) * 3;
        img[at..at + 3].copy_from_slice(&color);
    }
}

/// Characters of [`FONT`], in its order.
const FONT_CHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyz.-+()";

/// A 5x7 bitmap font: per glyph 7 rows, top first; bit 4 of a row is its leftmost pixel. Lowercase letters sit
/// in rows 2-6, except [`DESCENDERS`], whose glyphs are drawn 2 rows lower so their tails hang below the line.
#[rustfmt::skip]
const FONT: [[u8; 7]; 41] = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E], // 0 1
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E], // 2 3
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E], // 4 5
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 6 7
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C], // 8 9
    [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F], [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E], // a b
    [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E], [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F], // c d
    [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E], [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08], // e f
    [0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E], [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11], // g h
    [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E], [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C], // i j
    [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12], [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], // k l
    [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11], [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11], // m n
    [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E], [0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10], // o p
    [0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x01], [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10], // q r
    [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E], [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06], // s t
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D], [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04], // u v
    [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A], [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11], // w x
    [0x11, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E], [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F], // y z
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C], [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00], // . -
    [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00], [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], // + (
    [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],                                             // )
];

/// Letters drawn 2 rows lower than the rest (see [`FONT`]).
const DESCENDERS: &str = "gpqy";

/// Width in pixels of `text` drawn at `scale`: 6 pixels a character (5 of glyph, 1 of space), less the last space.
fn text_width(text: &str, scale: usize) -> usize {
    (text.chars().count() * 6 * scale).saturating_sub(scale)
}

/// Draws `text` in black with its top-left corner at `(x, y)`, each font pixel a `scale` x `scale` square.
fn draw_text(img: &mut [u8], x: i64, y: i64, text: &str, scale: usize) {
    let s = scale as i64;
    for (i, c) in text.chars().enumerate() {
        let c = c.to_ascii_lowercase();
        let Some(g) = FONT_CHARS.find(c) else { continue };
        let drop = if DESCENDERS.contains(c) { 2 } else { 0 };
        for (row, bits) in FONT[g].iter().enumerate() {
            for col in 0..5 {
                if bits >> (4 - col) & 1 == 1 {
                    let (gx, gy) = (x + (i as i64 * 6 + col) * s, y + (row as i64 + drop) * s);
                    (0..s * s).for_each(|p| put(img, gx + p % s, gy + p / s, BLACK));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ticks: Vec<(f64, String)>) -> Vec<String> {
        ticks.into_iter().map(|t| t.1).collect()
    }

    #[test]
    fn linear_ticks_use_a_1_2_5_step() {
        assert_eq!(labels(linear_ticks(1.0, 11250.0)), ["5000", "10000"]);
        assert_eq!(labels(linear_ticks(0.0, 5000.0)), ["0", "2000", "4000"]);
        assert_eq!(labels(linear_ticks(-0.05, 0.051)), ["-0.05", "0.00", "0.05"]);
    }

    #[test]
    fn log_ticks_are_decades_or_1_2_5() {
        // A loss from 1.3 down to 0.012: three decades, so only powers of ten.
        assert_eq!(labels(log_ticks(0.012f64.log10(), 1.3f64.log10())), ["0.1", "1"]);
        // Less than two decades: 1, 2 and 5 times each power.
        assert_eq!(labels(log_ticks(0.015f64.log10(), 0.3f64.log10())), ["0.02", "0.05", "0.1", "0.2"]);
    }

    #[test]
    fn every_font_char_has_a_glyph() {
        assert_eq!(FONT_CHARS.len(), FONT.len());
        assert!(FONT.iter().all(|g| g.iter().any(|&r| r != 0) && g.iter().all(|&r| r < 32)));
    }
}
