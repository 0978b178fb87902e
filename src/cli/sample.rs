//! `ddpm sample`: load weights, run DDPM, DDIM or DPM-Solver++, write a PNG grid or a safetensors tensor.

use super::checks::{self, Kind};
use super::{on_backend, progress_bar, Device};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ddpm::backend::Backend;
use ddpm::checkpoint::{check_finite, load_for_sampling, SamplingModel};
use ddpm::diffusion::{initial_noise, sample_observed, Denoiser, SamplerKind, Schedule, Spacing};
use ddpm::image::{save_grid_png, GridAnimation};
use ddpm::nn::{GuidedDenoiser, UNetConfig, UNetDenoiser};
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::Tensor;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ancestral DDPM over all T steps (Ho et al. 2020, Algorithm 2).
    Ddpm,
    /// DDIM on a sub-grid of --steps steps (Song et al. 2021); --eta 0 is deterministic.
    Ddim,
    /// DPM-Solver++(2M) (Lu et al. 2022b): deterministic, second order, --steps network calls.
    #[value(name = "dpm++2m")]
    DpmPp2m,
    /// SDE-DPM-Solver++(2M) (Lu et al. 2022b): stochastic, --steps network calls.
    #[value(name = "dpm++2m-sde")]
    DpmPp2mSde,
}

/// The timestep spacing of the DPM-Solver++ samplers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpacingArg {
    /// Uniform in t, rounded to the discrete grid.
    UniformT,
    /// Uniform in log-SNR, each mapped to the discrete t of nearest log-SNR (more steps at low noise).
    #[value(name = "logsnr")]
    LogSnr,
}

/// How to sample: the flags `ddpm sample`, `ddpm eval` and `ddpm sampler-table` share.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// The reverse process.
    #[arg(long, value_enum, default_value = "ddim")]
    pub sampler: SamplerArg,
    /// DDIM and DPM-Solver++: number of network evaluations (1..=T). DDIM's grid is the reference's
    /// make_ddim_timesteps (which can add one more call, at T-1); DPM-Solver++ makes exactly --steps calls.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM: noise scale η (0 = deterministic, 1 = DDPM-like on the sub-grid); must be >= 0.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub eta: f32,
    /// DPM-Solver++: the timestep spacing [default: uniform-t, which scored the better FID on the shipped model
    /// at every call count up to 20: docs/quality.md]. DDIM keeps the reference's grid, so it is refused there.
    #[arg(long, value_enum)]
    pub spacing: Option<SpacingArg>,
    /// DDIM and DPM-Solver++: do not clamp the predicted x̂0 to [-1, 1] at each step, nor the output at the end
    /// (the reference clamps both). DDPM has no x̂0 to clamp, so it is refused there.
    #[arg(long)]
    pub no_clamp: bool,
    /// Seed of the initial noise and of the per-step noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the live weights instead of the EMA weights (checkpoints of ours only).
    #[arg(long)]
    pub no_ema: bool,
}

impl SamplerArgs {
    /// The sampler these flags describe; `Err` for a flag that the chosen sampler does not take.
    pub fn kind(&self) -> Result<SamplerKind> {
        let clamp = !self.no_clamp;
        let dpm = matches!(self.sampler, SamplerArg::DpmPp2m | SamplerArg::DpmPp2mSde);
        if self.spacing.is_some() && !dpm {
            bail!("--spacing applies to --sampler dpm++2m and dpm++2m-sde only (DDIM uses the reference's grid)");
        }
        if dpm && self.eta != 0.0 {
            bail!("--eta applies to --sampler ddim only (dpm++2m is deterministic, dpm++2m-sde's noise is fixed)");
        }
        let spacing = match self.spacing.unwrap_or(SpacingArg::UniformT) {
            SpacingArg::UniformT => Spacing::UniformT,
            SpacingArg::LogSnr => Spacing::LogSnr,
        };
        let steps = self.steps;
        Ok(match self.sampler {
            SamplerArg::Ddpm if self.no_clamp => {
                bail!("--no-clamp: --sampler ddpm has no x̂0 clamp to skip (it applies to ddim and dpm++2m[-sde])")
            }
            SamplerArg::Ddpm => SamplerKind::Ddpm,
            SamplerArg::Ddim => SamplerKind::Ddim { steps, eta: self.eta, clamp },
            SamplerArg::DpmPp2m => SamplerKind::DpmPp2m { steps, spacing, clamp },
            SamplerArg::DpmPp2mSde => SamplerKind::DpmPp2mSde { steps, spacing, clamp },
        })
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A checkpoint written by `ddpm train` or `ddpm export`, or a PyTorch state dict of the reference's UNet
    /// saved as safetensors [default: the shipped weights, data/pretrained/uncond.safetensors, or
    /// data/pretrained/cond.safetensors with --digit or --guidance].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplerArgs,
    /// Number of images (defaults to 64, or to the count in --noise).
    #[arg(long)]
    n: Option<usize>,
    /// A safetensors file with a tensor `noise` [n,1,32,32] used as x_T, to reproduce a run across implementations.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Output: `.png` writes a grid (8 per row, 2-pixel padding), `.safetensors` the tensor `samples` [n,1,32,32].
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    #[command(flatten)]
    run: super::RunArgs,
    /// Replace --out even when it is a file this command reads or did not write (a checkpoint, say).
    #[arg(long)]
    force: bool,
    /// Class-conditional checkpoints (`train --classes`): sample this digit (0-9) only [default: a grid of one row
    /// per digit, --n rounded up to a multiple of 10].
    #[arg(long, allow_negative_numbers = true)]
    digit: Option<i64>,
    /// Class-conditional checkpoints: the classifier-free guidance weight w >= 0 of ε̃ = (1 + w)·ε(x, c) - w·ε(x, ∅)
    /// (0: the plain conditional model) [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    guidance: Option<f32>,
    /// Also write the sampling trajectory as an animated PNG: the grid at x_T and after every network call, down
    /// to x_0 (values clamped to [-1, 1] for display), the last frame held longer.
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Run the sampler step by step instead of capturing one step (network call and update) as a CUDA graph and
    /// replaying it for the others (on a GPU or the emulator; the CPU has no graphs). The same images to the bit.
    #[arg(long)]
    no_graphs: bool,
}

/// The guidance weight `sample` uses on a class-conditional checkpoint when `--guidance` is not given.
pub const DEFAULT_GUIDANCE: f32 = 3.0;

/// What a class-conditional model is guided towards: each image's class and the guidance weight.
pub struct Guidance {
    pub classes: Vec<usize>,
    pub w: f32,
}

/// What the output file is.
enum OutKind {
    Png,
    Safetensors,
}

fn out_kind(path: &Path) -> Result<OutKind> {
    checks::extension("--out", path, &["png", "safetensors"])?;
    Ok(if path.extension().is_some_and(|e| e == "png") { OutKind::Png } else { OutKind::Safetensors })
}

/// Loads the weights to sample from (see [`load_for_sampling`], which checks their sizes), and refuses weights
/// that are not all finite: a diverged run would only make noise.
pub fn load_model(path: &Path, use_ema: bool) -> Result<SamplingModel> {
    let m = load_for_sampling(path, use_ema)?;
    check_finite(&m.params)
        .with_context(|| format!("{} ({}): a diverged run cannot be sampled from", path.display(), m.description))?;
    Ok(m)
}

/// Refuses, before any compute, a request (`what`, naming its flag) to sample `n` images from `config` on
/// `device` that would not fit in memory. On a GPU only the host's share is checked: a GPU allocation that fails
/// is an error, not an abort.
pub fn check_memory(device: &Device, what: &str, n: usize, config: &UNetConfig) -> Result<()> {
    let bytes = match device {
        // The emulator's device memory is host memory.
        Device::Cpu | Device::Emu(_) => checks::sampling_bytes(n, config),
        Device::Cuda(_) => checks::host_image_bytes(n),
    };
    checks::fits_in_memory(what, bytes)
}

/// Reads x_T from a `--noise` file: the tensor `noise`, `[n, 1, 32, 32]`.
fn read_noise(path: &Path, in_ch: usize) -> Result<Tensor> {
    let f = read_tensors(path)?;
    let noise = f.f32("noise")?.clone();
    match noise.shape() {
        &[n, c, 32, 32] if n > 0 && c == in_ch => Ok(noise),
        s => bail!("{}: tensor `noise` has shape {s:?}, expected [n, {in_ch}, 32, 32]", path.display()),
    }
}

/// Something that watches a run: called with the images (on the host) after every network call.
pub type Watch<'a> = dyn FnMut(&Tensor) -> ddpm::Result<()> + 'a;

/// Runs the sampler with the weights of `m` on `backend`, from the host noise `x_t` and sampling seed `seed`,
/// guided when `guidance` says so, showing `watch` the images after each network call.
fn sample_on<B: Backend>(
    backend: &B,
    m: &SamplingModel,
    (sched, kind, guidance): (&Schedule, SamplerKind, Option<&Guidance>),
    (x_t, seed): (Tensor, (u64, bool)),
    progress: &mut dyn FnMut(usize, usize),
    mut watch: Option<&mut Watch>,
) -> Result<Tensor> {
    let params = m.params.to_backend(backend)?;
    let x_t = x_t.into_backend(backend)?;
    let mut observe = |done, total, x: &Tensor<B>| {
        progress(done, total);
        match watch.as_mut() {
            Some(w) => w(&Tensor::new(x.shape(), x.to_vec()?)?),
            None => Ok(()),
        }
    };
    Ok(match guidance {
        None => {
            let mut den = UNetDenoiser { model: &m.model, params: &params };
            sample_observed(&mut den, sched, kind, x_t, seed, &mut observe)?
        }
        Some(g) => {
            let mut den = GuidedDenoiser::new(&m.model, &params, &g.classes, g.w)?;
            sample_observed(&mut den as &mut dyn Denoiser<B>, sched, kind, x_t, seed, &mut observe)?
        }
    })
}

/// Samples from `m` with `kind` starting at the host noise `x_t`, on `device`, with a progress bar; guided towards
/// a class per image when `guidance` is given (a class-conditional model; without it such a model samples
/// unconditionally, from its null label). Returns the images and the number of network calls.
pub fn generate(
    device: &Device,
    m: &SamplingModel,
    kind: SamplerKind,
    x_t: Tensor,
    seed: u64,
    guidance: Option<&Guidance>,
) -> Result<(Tensor, usize)> {
    generate_watched(device, m, (kind, guidance), x_t, (seed, true), None)
}

/// [`generate`], showing `watch` the images after each network call, and with `graphs` (`seed` is the pair
/// `(seed, graphs)`) captured where it can be ([`sample_observed`]).
pub fn generate_watched(
    device: &Device,
    m: &SamplingModel,
    (kind, guidance): (SamplerKind, Option<&Guidance>),
    x_t: Tensor,
    seed: (u64, bool),
    watch: Option<&mut Watch>,
) -> Result<(Tensor, usize)> {
    let sched = m.schedule.build(m.timesteps)?;
    kind.validate(sched.t).context("bad sampler settings")?;
    let calls = kind.timesteps(&sched).len();
    let bar = progress_bar(calls as u64, "sample");
    let mut progress = |done: usize, _| bar.set_position(done as u64);
    let images = on_backend!(device, |b| sample_on(b, m, (&sched, kind, guidance), (x_t, seed), &mut progress, watch))?;
    bar.finish_and_clear();
    Ok((images, calls))
}

/// The weights `sample` uses without `--checkpoint`: the CPU recipe's EMA weights, trained and exported as the
/// README says.
pub const PRETRAINED_UNCOND: &str = "data/pretrained/uncond.safetensors";
/// [`PRETRAINED_UNCOND`]'s class-conditional twin (`train --classes`), for `--digit` and `--guidance`.
pub const PRETRAINED_COND: &str = "data/pretrained/cond.safetensors";

/// `--checkpoint`, or the shipped weights that fit the other flags, saying which; `Err` with what to do when the
/// shipped file is not there (a command run outside the repository's root).
pub fn checkpoint_or_pretrained(checkpoint: &Option<PathBuf>, conditional: bool) -> Result<PathBuf> {
    if let Some(p) = checkpoint {
        checks::readable_file("--checkpoint", p)?;
        return Ok(p.clone());
    }
    let (path, what) =
        if conditional { (PRETRAINED_COND, "class-conditional") } else { (PRETRAINED_UNCOND, "unconditional") };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!(
            "no --checkpoint given, and the shipped {what} weights {} are not here (they are in the repository; run from its root, or give --checkpoint)",
            path.display()
        );
    }
    eprintln!("no --checkpoint given: using the shipped {what} weights {}", path.display());
    Ok(path)
}

pub fn run(a: SampleArgs) -> Result<()> {
    if a.n == Some(0) {
        bail!("--n must be at least 1");
    }
    let out = out_kind(&a.out)?;
    let checkpoint = checkpoint_or_pretrained(&a.checkpoint, a.digit.is_some() || a.guidance.is_some())?;
    let mut inputs = vec![("--checkpoint", checkpoint.as_path())];
    if let Some(p) = &a.noise {
        checks::readable_file("--noise", p)?;
        inputs.push(("--noise", p.as_path()));
    }
    let kind_of_out = match out {
        OutKind::Png => Kind::Png,
        OutKind::Safetensors => Kind::Samples,
    };
    checks::output("--out", &a.out, kind_of_out, &inputs, a.force)?;
    if let Some(t) = &a.trajectory {
        checks::extension("--trajectory", t, &["png"])?;
        checks::output("--trajectory", t, Kind::Png, &inputs, a.force)?;
        checks::distinct_outputs(&[("--out", &a.out), ("--trajectory", t)])?;
    }
    if let Some(d) = a.digit.filter(|d| !(0..=9).contains(d)) {
        bail!("--digit must be a digit from 0 to 9, got {d}");
    }
    if let Some(w) = a.guidance.filter(|w| !(w.is_finite() && *w >= 0.0)) {
        bail!("--guidance must be finite and >= 0, got {w}");
    }
    let device = a.run.resolve()?;
    let kind = a.sampling.kind()?;
    let m = load_model(&checkpoint, !a.sampling.no_ema)?;
    kind.validate(m.timesteps).context("bad sampler settings")?;
    let classes = m.model.config.classes;
    if classes == 0 && (a.digit.is_some() || a.guidance.is_some()) {
        bail!(
            "--digit and --guidance need a class-conditional checkpoint (`ddpm train --classes`); {} is unconditional",
            checkpoint.display()
        );
    }
    if let Some(d) = a.digit.filter(|&d| d as usize >= classes && classes > 0) {
        bail!("--digit {d}: {} has only {classes} classes", checkpoint.display());
    }
    let in_ch = m.model.config.in_ch;
    let x_t = match &a.noise {
        Some(p) => {
            let noise = read_noise(p, in_ch)?;
            if a.n.is_some_and(|n| n != noise.shape()[0]) {
                bail!("--n {} disagrees with the {} images in {}", a.n.unwrap(), noise.shape()[0], p.display());
            }
            let n = noise.shape()[0];
            if classes > 0 && a.digit.is_none() && !n.is_multiple_of(classes) {
                bail!(
                    "{} holds {n} images: a grid of one row per class needs a multiple of {classes}, or --digit",
                    p.display()
                );
            }
            check_memory(
                &device,
                &format!("--noise {} ({n} images)", p.display()),
                guided_batch(classes, n),
                &m.model.config,
            )?;
            noise
        }
        None => {
            let mut n = a.n.unwrap_or(64);
            // Without --digit, a conditional model samples a grid of one row per class: n rounded up to a
            // multiple of the classes, n / classes images each.
            if classes > 0 && a.digit.is_none() && !n.is_multiple_of(classes) {
                n = n.div_ceil(classes) * classes;
                eprintln!("--n rounded up to {n}: one row of {} images per class", n / classes);
            }
            check_memory(&device, &format!("--n {n}"), guided_batch(classes, n), &m.model.config)?;
            initial_noise(a.sampling.seed, n, in_ch, 32, 32)
        }
    };
    let n = x_t.shape()[0];
    let guidance = (classes > 0).then(|| Guidance {
        classes: match a.digit {
            Some(d) => vec![d as usize; n],
            None => (0..n).map(|i| i / (n / classes)).collect(),
        },
        w: a.guidance.unwrap_or(DEFAULT_GUIDANCE),
    });
    let per_row = if classes > 0 && a.digit.is_none() { n / classes } else { 8 };
    if let Some(t) = &a.trajectory {
        let frames = kind.timesteps(&m.schedule.build(m.timesteps)?).len() as u128 + 1;
        let what = format!("--trajectory {} ({frames} frames of {n} images)", t.display());
        checks::fits_in_memory(&what, frames * GridAnimation::frame_bytes(n, 32, 32, per_row))?;
    }
    eprintln!(
        "sampling {n} images with {} on the {} from {} ({})",
        super::eval::sampler_name(kind, m.timesteps),
        device.name(),
        checkpoint.display(),
        m.description
    );
    let start = std::time::Instant::now();
    if let Some(g) = &guidance {
        let what = a.digit.map_or("one row per digit".to_string(), |d| format!("digit {d}"));
        eprintln!("class-conditional: {what}, classifier-free guidance w = {}", g.w);
    }
    let mut anim = a.trajectory.as_ref().map(|_| GridAnimation::new(per_row));
    if let Some(an) = &mut anim {
        an.push(&x_t)?;
    }
    let mut record = |x: &Tensor| anim.as_mut().map_or(Ok(()), |an| an.push(x));
    let watch = a.trajectory.is_some().then_some(&mut record as &mut Watch);
    let (images, calls) =
        generate_watched(&device, &m, (kind, guidance.as_ref()), x_t, (a.sampling.seed, !a.no_graphs), watch)?;
    match out {
        OutKind::Png => save_grid_png(&a.out, &images, per_row)?,
        OutKind::Safetensors => write_tensors(&a.out, &[("samples".to_string(), &images)], None)?,
    }
    eprintln!("wrote {} ({n} images, {calls} network calls, {:.3} s)", a.out.display(), start.elapsed().as_secs_f64());
    if let (Some(path), Some(an)) = (&a.trajectory, &anim) {
        an.save(path)?;
        eprintln!("wrote {} ({} frames: x_T, then one per network call)", path.display(), an.len());
    }
    Ok(())
}

/// Images per network call when sampling `n` images from a model of `classes` classes: twice as many for a
/// conditional model, whose guided calls batch the conditional and unconditional halves together.
fn guided_batch(classes: usize, n: usize) -> usize {
    if classes > 0 {
        2 * n
    } else {
        n
    }
}
