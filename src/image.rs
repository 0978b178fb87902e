//! PNG output: sample grids exactly as torchvision's `save_image` writes them, and animations of such grids
//! (line plots are in [`crate::plot`]).

use std::io::Write;
use std::path::Path;

use crate::atomic_write::write_atomic;
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
    let (gw, gh, rgb) = grid_rgb(images, nrow)?;
    write_png(path, gw, gh, &rgb, None)
}

/// The layout of a grid of `n` images of `h x w`, `nrow` per row: `(padding, columns, width, height)`.
/// make_grid returns a lone image as is, so there is no padding when n == 1.
fn grid_layout(n: usize, h: usize, w: usize, nrow: usize) -> (usize, usize, usize, usize) {
    let (pad, cols) = if n == 1 { (0, 1) } else { (PADDING, nrow.min(n).max(1)) };
    let rows = n.div_ceil(cols);
    (pad, cols, cols * (w + pad) + pad, rows * (h + pad) + pad)
}

/// The grid [`save_grid_png`] writes, as `(width, height, RGB bytes)`.
fn grid_rgb(images: &Tensor, nrow: usize) -> Result<(usize, usize, Vec<u8>)> {
    let (n, c, h, w) = images.dims4("save_grid_png")?;
    if c != 1 && c != 3 || n == 0 || h == 0 || w == 0 {
        return Err(Error::Shape(format!("save_grid_png: need [n>0, 1 or 3, h, w], got {:?}", images.shape())));
    }
    if nrow == 0 {
        return Err(Error::Arg("save_grid_png: nrow must be at least 1".into()));
    }
    let (pad, cols, gw, gh) = grid_layout(n, h, w, nrow);
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
    Ok((gw, gh, rgb))
}

/// An animated PNG (APNG) of sample grids, one frame per [`GridAnimation::push`], rendered as
/// [`save_grid_png`] renders a grid (values outside [-1, 1] show as black or white). Frames are kept as RGB bytes
/// until [`GridAnimation::save`].
pub struct GridAnimation {
    nrow: usize,
    size: Option<(usize, usize)>,
    frames: Vec<Vec<u8>>,
}

impl GridAnimation {
    /// An animation of grids with `nrow` images per row.
    pub fn new(nrow: usize) -> Self {
        GridAnimation { nrow, size: None, frames: Vec::new() }
    }

    /// Renders `images` (`[n, c, h, w]`, as for [`save_grid_png`]) as the next frame; `Err` if the grid's size
    /// differs from the first frame's.
    pub fn push(&mut self, images: &Tensor) -> Result<()> {
        let (w, h, rgb) = grid_rgb(images, self.nrow)?;
        if *self.size.get_or_insert((w, h)) != (w, h) {
            return Err(Error::Shape(format!("animation frame of {w}x{h} after frames of {:?}", self.size)));
        }
        self.frames.push(rgb);
        Ok(())
    }

    /// The bytes one frame of `n` images of `h x w` takes, `nrow` per row: what each [`GridAnimation::push`] keeps.
    pub fn frame_bytes(n: usize, h: usize, w: usize, nrow: usize) -> u128 {
        let (_, _, gw, gh) = grid_layout(n, h, w, nrow);
        3 * gw as u128 * gh as u128
    }

    /// The number of frames pushed.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes the frames as a looping APNG at `path` through [`write_atomic`]: the animation runs for about 4 s
    /// (each frame 20 to 200 ms), then holds the last frame for 2 s. `Err` if there are no frames.
    pub fn save(&self, path: &Path) -> Result<()> {
        let frame_ms = (4000 / self.frames.len().max(1)).clamp(20, 200) as u16;
        let last_ms = 2000;
        let Some((width, height)) = self.size else {
            return Err(Error::file(path, "an animation needs at least one frame"));
        };
        let png_err = |e: png::EncodingError| Error::file(path, format!("APNG encoding failed: {e}"));
        write_atomic(path, |out: &mut dyn Write| {
            let mut enc = png::Encoder::new(out, width as u32, height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            // 0 plays: loop forever.
            enc.set_animated(self.frames.len() as u32, 0).map_err(png_err)?;
            let mut writer = enc.write_header().map_err(png_err)?;
            for (i, frame) in self.frames.iter().enumerate() {
                let ms = if i + 1 == self.frames.len() { last_ms } else { frame_ms };
                writer.set_frame_delay(ms, 1000).map_err(png_err)?;
                writer.write_image_data(frame).map_err(png_err)?;
            }
            writer.finish().map_err(png_err)
        })
    }
}

/// torchvision's `save_image` conversion of a [0, 1] value: `mul(255).add_(0.5).clamp_(0, 255)` then a truncating
/// cast to u8, all in f32.
fn to_u8(v: f32) -> u8 {
    (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

/// Encodes `rgb` (`height * width * 3` bytes) as an 8-bit RGB PNG at `path` through [`write_atomic`], with an
/// optional `Title` text chunk.
pub(crate) fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8], title: Option<&str>) -> Result<()> {
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
