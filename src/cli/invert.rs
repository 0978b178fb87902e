//! `ddpm invert` and `ddpm interpolate`: DDIM inversion (`ddpm::diffusion::inversion`) of MNIST test digits or PNG
//! files to the noise x_T that deterministic DDIM turns back into them, the round trip's error, and interpolation
//! between two digits along the great circle between their noises.

use super::checks::{self, Kind};
use super::sample::{check_memory, checkpoint_or_pretrained, load_model};
use super::{on_backend, progress_bar, Device};
use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgGroup, Args};
use ddpm::backend::Backend;
use ddpm::checkpoint::SamplingModel;
use ddpm::data::{load_split, to_model_image, Mnist, Split, IMAGE_SIDE};
use ddpm::diffusion::{ddim_invert, regeneration_kind, roundtrip, sample, slerp, RoundTripError, Schedule};
use ddpm::image::save_grid_png;
use ddpm::nn::UNetDenoiser;
use ddpm::tensor_file::write_tensors;
use ddpm::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The model and how to run it: the flags `invert` and `interpolate` share.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A checkpoint written by `ddpm train` or `ddpm export`, or a PyTorch state dict of the reference's UNet saved
    /// as safetensors [default: the shipped weights, data/pretrained/uncond.safetensors]. A class-conditional model
    /// inverts and regenerates with its null label (unconditionally).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// DDIM steps (1..=T) of the inversion and of the regeneration: deterministic DDIM (η = 0, no clamp) on the
    /// reference's grid, which the inversion walks backwards with as many network calls. More steps, a closer
    /// round trip.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// The MNIST folder; its test images (t10k-*) are the ones picked by index.
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// Use the live weights instead of the EMA weights (checkpoints of ours only).
    #[arg(long)]
    no_ema: bool,
    #[command(flatten)]
    run: super::RunArgs,
    /// Replace an output even when it is a file this command reads or did not write.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("images").required(true).args(["indices", "count", "png"])))]
pub struct InvertArgs {
    /// MNIST test images to invert, by index (0..=9999), comma-separated: --indices 0,5,17.
    #[arg(long, value_delimiter = ',')]
    indices: Option<Vec<usize>>,
    /// Invert the first N MNIST test images.
    #[arg(long)]
    count: Option<usize>,
    /// PNG files to invert: 8-bit grayscale, 28x28 (resized to 32x32 as the MNIST images are) or 32x32, a white
    /// digit on black as in MNIST.
    #[arg(long, num_args = 1..)]
    png: Vec<PathBuf>,
    /// The noise: a safetensors file with the tensor `noise` [n,1,32,32], which `ddpm sample --noise FILE
    /// --sampler ddim --no-clamp --steps S` (S = --steps) turns back into the images.
    #[arg(long, default_value = "noise.safetensors")]
    out: PathBuf,
    /// Also write a PNG grid of the originals (rows of up to 10) each above its reconstruction.
    #[arg(long)]
    grid: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct InterpolateArgs {
    /// The MNIST test image (index) the interpolation starts at.
    #[arg(long)]
    from: usize,
    /// The MNIST test image (index) it ends at.
    #[arg(long)]
    to: usize,
    /// Frames, both endpoints included (at least 2).
    #[arg(long, default_value_t = 9)]
    frames: usize,
    /// The PNG of one row of frames.
    #[arg(long, default_value = "interpolation.png")]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

/// Images picked for inversion: `[n, 1, 32, 32]` in [-1, 1], and a name for each ("test image 17", a file).
pub(super) struct Picked {
    pub(super) images: Tensor,
    names: Vec<String>,
}

/// The MNIST test split in the folder of `--data`.
pub(super) fn mnist_test(dir: &Path) -> Result<Mnist> {
    checks::readable_dir("--data", dir)?;
    Ok(load_split(dir, Split::Test)?)
}

/// The test images of `m` at `indices`, preprocessed as training preprocesses its images; `Err` naming `flag` for
/// an index past the test set.
pub(super) fn test_images(m: &Mnist, indices: &[usize], flag: &str) -> Result<Picked> {
    if let Some(bad) = indices.iter().find(|&&i| i >= m.n) {
        bail!("{flag} {bad}: the MNIST test set has {} images, indexed from 0", m.n);
    }
    let per = m.rows * m.cols;
    let mut data = Vec::with_capacity(indices.len() * IMAGE_SIDE * IMAGE_SIDE);
    for &i in indices {
        data.extend(to_model_image(&m.images[i * per..][..per], m.cols, m.rows)?);
    }
    let names = indices.iter().map(|i| format!("test image {i}")).collect();
    Ok(Picked { images: Tensor::new(&[indices.len(), 1, IMAGE_SIDE, IMAGE_SIDE], data)?, names })
}

/// A PNG to invert, preprocessed as the MNIST images are; `Err` naming the file unless it is an 8-bit grayscale
/// PNG of 28x28 or 32x32.
fn png_image(path: &Path) -> Result<Vec<f32>> {
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("--png {shown}: cannot read"))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| anyhow!("--png {shown}: not a readable PNG: {e}"))?;
    let info = reader.info();
    let (w, h, color, depth) = (info.width as usize, info.height as usize, info.color_type, info.bit_depth as u8);
    let square = [28, IMAGE_SIDE].contains(&w) && w == h;
    if color != png::ColorType::Grayscale || depth != 8 || !square {
        bail!(
            "--png {shown}: a {w}x{h} {color:?} PNG of {depth}-bit samples; expected 8-bit grayscale of 28x28 or \
             32x32 (a white digit on black, as MNIST)"
        );
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(|e| anyhow!("--png {shown}: cannot decode: {e}"))?;
    buf.truncate(frame.buffer_size());
    Ok(to_model_image(&buf, w, h)?)
}

impl InvertArgs {
    /// The images the flags pick, each checked (index in range, PNG of the right kind).
    fn pick(&self) -> Result<Picked> {
        if let Some(indices) = &self.indices {
            return test_images(&mnist_test(&self.model.data)?, indices, "--indices");
        }
        if let Some(n) = self.count {
            if n == 0 {
                bail!("--count must be at least 1");
            }
            let m = mnist_test(&self.model.data)?;
            if n > m.n {
                bail!("--count {n}: the MNIST test set has {} images", m.n);
            }
            return test_images(&m, &(0..n).collect::<Vec<_>>(), "--count");
        }
        let mut data = Vec::new();
        for p in &self.png {
            data.extend(png_image(p)?);
        }
        let names = self.png.iter().map(|p| p.display().to_string()).collect();
        Ok(Picked { images: Tensor::new(&[self.png.len(), 1, IMAGE_SIDE, IMAGE_SIDE], data)?, names })
    }
}

/// The model and its schedule, checked for a run on `n` images at a time on `device` (`what` asked for them): one
/// input channel (MNIST's), `--steps` within the schedule, the memory; says that a class-conditional model runs
/// unconditionally.
fn prepare(
    a: &ModelArgs,
    checkpoint: &Path,
    device: &Device,
    (what, n): (&str, usize),
) -> Result<(SamplingModel, Schedule)> {
    let m = load_model(checkpoint, !a.no_ema)?;
    let config = &m.model.config;
    if config.in_ch != 1 {
        bail!("{}: a model of {} channels; MNIST digits have 1", checkpoint.display(), config.in_ch);
    }
    regeneration_kind(a.steps).validate(m.timesteps).context("--steps")?;
    check_memory(device, what, n, config)?;
    eprintln!("model: {} ({})", checkpoint.display(), m.description);
    if config.classes > 0 {
        eprintln!("class-conditional checkpoint: inverting and regenerating with its null label (unconditionally)");
    }
    let sched = m.schedule.build(m.timesteps)?;
    Ok((m, sched))
}

/// Inverts `x0` and regenerates it with the weights of `m` on `backend`: `(noise, reconstruction)` on the host.
pub(super) fn roundtrip_on<B: Backend>(
    backend: &B,
    m: &SamplingModel,
    (sched, steps): (&Schedule, usize),
    x0: &Tensor,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Tensor)> {
    let params = m.params.to_backend(backend)?;
    let mut den = UNetDenoiser { model: &m.model, params: &params };
    Ok(roundtrip(&mut den, sched, steps, x0.to_backend(backend)?, progress)?)
}

/// Inverts the two images of `ends` with the weights of `m` on `backend`, interpolates their noises over `frames`
/// frames with [`slerp`], and regenerates each frame: `[frames, 1, 32, 32]` on the host, unclamped.
fn interpolate_on<B: Backend>(
    backend: &B,
    m: &SamplingModel,
    (sched, steps): (&Schedule, usize),
    (ends, frames): (&Tensor, usize),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let params = m.params.to_backend(backend)?;
    let mut den = UNetDenoiser { model: &m.model, params: &params };
    let noise = ddim_invert(&mut den, sched, steps, ends.to_backend(backend)?, &mut |d, c| progress(d, 2 * c))?;
    let noise = noise.to_vec()?;
    let (a, b) = noise.split_at(noise.len() / 2);
    let mut path = Vec::with_capacity(frames * a.len());
    for i in 0..frames {
        path.extend(slerp(a, b, i as f64 / (frames - 1) as f64)?);
    }
    let x_t = Tensor::new(&[frames, 1, IMAGE_SIDE, IMAGE_SIDE], path)?.into_backend(backend)?;
    Ok(sample(&mut den, sched, regeneration_kind(steps), x_t, 0, &mut |d, c| progress(c + d, 2 * c))?)
}

/// A progress bar over the network calls of an inversion and a regeneration with `steps` steps.
fn calls_bar(sched: &Schedule, steps: usize, what: &str) -> indicatif::ProgressBar {
    progress_bar(2 * regeneration_kind(steps).timesteps(sched).len() as u64, what)
}

/// The grid of `--grid`: rows of up to 10 originals, each row above the reconstructions of its images; a short
/// last row is padded with black.
pub(super) fn pairs_grid(x0: &Tensor, recon: &Tensor) -> Result<(Tensor, usize)> {
    let n = x0.shape()[0];
    let per = IMAGE_SIDE * IMAGE_SIDE;
    let cols = n.min(10);
    let mut data = Vec::new();
    for start in (0..n).step_by(cols) {
        let end = (start + cols).min(n);
        for src in [x0, recon] {
            data.extend_from_slice(&src.data()[start * per..end * per]);
            data.resize(data.len() + (start + cols - end) * per, -1.0);
        }
    }
    let images = data.len() / per;
    Ok((Tensor::new(&[images, 1, IMAGE_SIDE, IMAGE_SIDE], data)?, cols))
}

pub fn run_invert(a: InvertArgs) -> Result<()> {
    let force = a.model.force;
    checks::extension("--out", &a.out, &["safetensors"])?;
    let checkpoint = checkpoint_or_pretrained(&a.model.checkpoint, false)?;
    let mut inputs = vec![("--checkpoint", checkpoint.as_path())];
    for p in &a.png {
        checks::readable_file("--png", p)?;
        inputs.push(("--png", p.as_path()));
    }
    checks::output("--out", &a.out, Kind::Noise, &inputs, force)?;
    if let Some(g) = &a.grid {
        checks::extension("--grid", g, &["png"])?;
        checks::output("--grid", g, Kind::Png, &inputs, force)?;
        checks::distinct_outputs(&[("--out", &a.out), ("--grid", g)])?;
    }
    let picked = a.pick()?;
    let n = picked.names.len();
    let device = a.model.run.resolve()?;
    let what = match (&a.indices, a.count) {
        (Some(_), _) => format!("--indices ({n} images)"),
        (None, Some(_)) => format!("--count {n}"),
        (None, None) => format!("--png ({n} images)"),
    };
    let (m, sched) = prepare(&a.model, &checkpoint, &device, (&what, n))?;
    let steps = a.model.steps;
    eprintln!("inverting {n} images with DDIM-{steps} (η = 0, no clamp) on the {}", device.name());
    let start = std::time::Instant::now();
    let bar = calls_bar(&sched, steps, "invert");
    let mut progress = |done: usize, _| bar.set_position(done as u64);
    let (noise, recon) = on_backend!(device, |b| roundtrip_on(b, &m, (&sched, steps), &picked.images, &mut progress))?;
    bar.finish_and_clear();
    let err = RoundTripError::new(&picked.images, &recon)?;
    let meta = BTreeMap::from([("ddim_steps".to_string(), steps.to_string())]);
    write_tensors(&a.out, &[("noise".to_string(), &noise)], Some(meta))?;
    eprintln!(
        "wrote {} (noise of {n} images; `ddpm sample --checkpoint {} --noise {} --sampler ddim --no-clamp --steps \
         {steps}` regenerates them)",
        a.out.display(),
        checkpoint.display(),
        a.out.display()
    );
    if let Some(g) = &a.grid {
        let (grid, cols) = pairs_grid(&picked.images, &recon)?;
        save_grid_png(g, &grid, cols)?;
        eprintln!("wrote {} (originals above reconstructions)", g.display());
    }
    let (worst, worst_err) = err.worst();
    println!(
        "round-trip mean absolute error (model units, [-1, 1]): {:.5} over {n} images; worst {:.5} ({}); {:.1} s",
        err.mean(),
        worst_err,
        picked.names[worst],
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run_interpolate(a: InterpolateArgs) -> Result<()> {
    if a.frames < 2 {
        bail!("--frames must be at least 2 (both endpoints are frames), got {}", a.frames);
    }
    checks::extension("--out", &a.out, &["png"])?;
    let checkpoint = checkpoint_or_pretrained(&a.model.checkpoint, false)?;
    checks::output("--out", &a.out, Kind::Png, &[("--checkpoint", checkpoint.as_path())], a.model.force)?;
    let test = mnist_test(&a.model.data)?;
    let (from, to) = (test_images(&test, &[a.from], "--from")?, test_images(&test, &[a.to], "--to")?);
    let ends = Tensor::new(&[2, 1, IMAGE_SIDE, IMAGE_SIDE], [from.images.data(), to.images.data()].concat())?;
    let device = a.model.run.resolve()?;
    let (m, sched) = prepare(&a.model, &checkpoint, &device, (&format!("--frames {}", a.frames), a.frames))?;
    let (steps, frames) = (a.model.steps, a.frames);
    eprintln!(
        "interpolating test images {} and {} over {frames} frames with DDIM-{steps} on the {}",
        a.from,
        a.to,
        device.name()
    );
    let bar = calls_bar(&sched, steps, "interpolate");
    let mut progress = |done: usize, _| bar.set_position(done as u64);
    let images = on_backend!(device, |b| interpolate_on(b, &m, (&sched, steps), (&ends, frames), &mut progress))?;
    bar.finish_and_clear();
    save_grid_png(&a.out, &images, frames)?;
    // The end frames regenerate the two digits themselves: their round-trip error says how faithful the row is.
    let per = IMAGE_SIDE * IMAGE_SIDE;
    let ends_out = [&images.data()[..per], &images.data()[(frames - 1) * per..]].concat();
    let err = RoundTripError::new(&ends, &Tensor::new(&[2, 1, IMAGE_SIDE, IMAGE_SIDE], ends_out)?)?;
    eprintln!("wrote {} ({frames} frames)", a.out.display());
    println!(
        "end frames' round-trip mean absolute error: {:.5} (test image {}), {:.5} (test image {})",
        err.per_image[0], a.from, err.per_image[1], a.to
    );
    Ok(())
}
