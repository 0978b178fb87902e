//! `ddpm sample`: load weights, run DDPM or DDIM, write a PNG grid or a safetensors tensor.

use super::checks::{self, Kind};
use super::{on_backend, progress_bar, resolve_device, Device, DeviceArg};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ddpm::backend::Backend;
use ddpm::checkpoint::{check_finite, load_for_sampling, SamplingModel};
use ddpm::diffusion::{initial_noise, sample, SamplerKind, Schedule};
use ddpm::image::save_grid_png;
use ddpm::nn::{UNetConfig, UNetDenoiser};
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::Tensor;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ancestral DDPM over all T steps (Ho et al. 2020, Algorithm 2).
    Ddpm,
    /// DDIM on a sub-grid of --steps steps (Song et al. 2021); --eta 0 is deterministic.
    Ddim,
}

/// How to sample: the flags `ddpm sample`, `ddpm eval` and `ddpm sampler-table` share.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// The reverse process.
    #[arg(long, value_enum, default_value = "ddim")]
    pub sampler: SamplerArg,
    /// DDIM: number of network evaluations (1..=T); the grid is the reference's make_ddim_timesteps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM: noise scale η (0 = deterministic, 1 = DDPM-like on the sub-grid); must be >= 0.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub eta: f32,
    /// Seed of the initial noise and of the per-step noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the live weights instead of the EMA weights (checkpoints of ours only).
    #[arg(long)]
    pub no_ema: bool,
}

impl SamplerArgs {
    /// The sampler these flags describe.
    pub fn kind(&self) -> SamplerKind {
        match self.sampler {
            SamplerArg::Ddpm => SamplerKind::Ddpm,
            SamplerArg::Ddim => SamplerKind::Ddim { steps: self.steps, eta: self.eta },
        }
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A checkpoint written by `ddpm train`, or a PyTorch state dict of the reference's UNet saved as safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
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
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Convolutions and linear layers in bf16 (tensor cores; default on a GPU) or fp32 (default, and the only
    /// path, on the CPU).
    #[arg(long, value_enum)]
    precision: Option<super::PrecisionArg>,
    /// Replace --out even when it is a file this command reads or did not write (a checkpoint, say).
    #[arg(long)]
    force: bool,
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

/// Runs the sampler with the weights of `m` on `backend`, from the host noise `x_t`.
fn sample_on<B: Backend>(
    backend: &B,
    m: &SamplingModel,
    sched: &Schedule,
    kind: SamplerKind,
    x_t: Tensor,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let params = m.params.to_backend(backend)?;
    let mut den = UNetDenoiser { model: &m.model, params: &params };
    Ok(sample(&mut den, sched, kind, x_t.into_backend(backend)?, seed, progress)?)
}

/// Samples from `m` with `kind` starting at the host noise `x_t`, on `device`, with a progress bar. Returns the
/// images and the number of network calls.
pub fn generate(
    device: &Device,
    m: &SamplingModel,
    kind: SamplerKind,
    x_t: Tensor,
    seed: u64,
) -> Result<(Tensor, usize)> {
    let sched = m.schedule.build(m.timesteps)?;
    kind.validate(sched.t).context("bad sampler settings")?;
    let calls = match kind {
        SamplerKind::Ddpm => sched.t,
        SamplerKind::Ddim { steps, .. } => ddpm::diffusion::ddim_timesteps(sched.t, steps).len(),
    };
    let bar = progress_bar(calls as u64, "sample");
    let mut progress = |done: usize, _| bar.set_position(done as u64);
    let images = on_backend!(device, |b| sample_on(b, m, &sched, kind, x_t, seed, &mut progress))?;
    bar.finish_and_clear();
    Ok((images, calls))
}

pub fn run(a: SampleArgs) -> Result<()> {
    if a.n == Some(0) {
        bail!("--n must be at least 1");
    }
    let out = out_kind(&a.out)?;
    checks::readable_file("--checkpoint", &a.checkpoint)?;
    let mut inputs = vec![("--checkpoint", a.checkpoint.as_path())];
    if let Some(p) = &a.noise {
        checks::readable_file("--noise", p)?;
        inputs.push(("--noise", p.as_path()));
    }
    let kind_of_out = match out {
        OutKind::Png => Kind::Png,
        OutKind::Safetensors => Kind::Samples,
    };
    checks::output("--out", &a.out, kind_of_out, &inputs, a.force)?;
    let device = resolve_device(a.device, a.precision)?;
    let kind = a.sampling.kind();
    let m = load_model(&a.checkpoint, !a.sampling.no_ema)?;
    kind.validate(m.timesteps).context("bad sampler settings")?;
    let in_ch = m.model.config.in_ch;
    let x_t = match &a.noise {
        Some(p) => {
            let noise = read_noise(p, in_ch)?;
            if a.n.is_some_and(|n| n != noise.shape()[0]) {
                bail!("--n {} disagrees with the {} images in {}", a.n.unwrap(), noise.shape()[0], p.display());
            }
            let n = noise.shape()[0];
            check_memory(&device, &format!("--noise {} ({n} images)", p.display()), n, &m.model.config)?;
            noise
        }
        None => {
            let n = a.n.unwrap_or(64);
            check_memory(&device, &format!("--n {n}"), n, &m.model.config)?;
            initial_noise(a.sampling.seed, n, in_ch, 32, 32)
        }
    };
    let n = x_t.shape()[0];
    eprintln!(
        "sampling {n} images with {kind:?} on the {} from {} ({})",
        device.name(),
        a.checkpoint.display(),
        m.description
    );
    let start = std::time::Instant::now();
    let (images, calls) = generate(&device, &m, kind, x_t, a.sampling.seed)?;
    match out {
        OutKind::Png => save_grid_png(&a.out, &images, 8)?,
        OutKind::Safetensors => write_tensors(&a.out, &[("samples".to_string(), &images)], None)?,
    }
    eprintln!("wrote {} ({n} images, {calls} network calls, {:.3} s)", a.out.display(), start.elapsed().as_secs_f64());
    Ok(())
}
