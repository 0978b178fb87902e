//! Argument parsing and the subcommands.

mod bench;
mod bench_convs;
mod bench_model;
mod checks;
mod classifier;
mod eval;
mod export;
mod info;
mod invert;
mod quality;
mod quality_rows;
mod sample;
mod train;

use anyhow::{anyhow, bail, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ddpm::backend::{Gpu, Memory, Precision};
use ddpm::gpu::cuda::Cuda;
use ddpm::gpu::emu::Emulator;

/// Train a denoising diffusion model (DDPM) on MNIST and sample from it with DDPM or DDIM.
///
/// A from-scratch port of the blog post's `ddpm_ddim.py`: linear β schedule (T=1000), a small UNet, ε-MSE loss,
/// AdamW, gradient clipping and an EMA of the weights.
#[derive(Parser, Debug)]
#[command(name = "ddpm", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model; writes checkpoints, sample grids, a CSV log and a loss curve into --out.
    Train(train::TrainArgs),
    /// Sample images from a checkpoint (ours, or a PyTorch state dict saved as safetensors).
    Sample(sample::SampleArgs),
    /// DDIM inversion: the noise that deterministic DDIM turns back into given MNIST test digits or PNG files.
    ///
    /// Writes the noise (for `sample --noise`), optionally a grid of the originals above their reconstructions,
    /// and prints the round trip's mean absolute error.
    Invert(invert::InvertArgs),
    /// Interpolate between two MNIST test digits through their DDIM-inverted noises; writes one row of frames.
    ///
    /// The two noises are interpolated along the great circle between them (slerp), and each frame is
    /// regenerated with deterministic DDIM.
    Interpolate(invert::InterpolateArgs),
    /// Score samples (a file, or drawn from a checkpoint) with FID and class statistics from the MNIST classifier.
    Eval(eval::EvalArgs),
    /// Score one checkpoint with the blog post's samplers (DDPM-1000, DDIM-100/50/20/10, DDIM-50 with η = 1) into a
    /// Markdown table with sample grids.
    SamplerTable(eval::TableArgs),
    /// Write a checkpoint's EMA (or live) weights as a small weights file, as data/pretrained/ was made.
    Export(export::ExportArgs),
    /// Every number of docs/quality.md: FID against network calls for DDIM, DPM-Solver++ and its SDE variant on
    /// an unconditional model (DDPM-1000 the reference), and a conditional model's accuracy and FID per guidance
    /// weight.
    Quality(quality::QualityArgs),
    /// Time a training step or a sampler step on synthetic data (one JSON line), or each conv shape of the UNet.
    Bench(bench::BenchArgs),
    /// Train the MNIST classifier whose features score samples; prints the test accuracy, writes the weights.
    TrainClassifier(classifier::TrainClassifierArgs),
    /// Report the CUDA devices, driver and NVRTC versions and the compiled kernels, or why CUDA is not used.
    Info,
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when a usable GPU is found, else the CPU.
    Auto,
    /// The CPU (multi-threaded).
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
    /// The GPU's kernels and launch code on the CPU emulator of CUDA: slow (minutes for what a GPU does in a
    /// second), for checking the GPU path end to end on a machine without one.
    Emu,
}

/// The arithmetic of the convolutions and linear layers (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 throughout (the only path on the CPU, and its default).
    Fp32,
    /// bf16 operands with f32 accumulation on the tensor cores, as torch.autocast(dtype=torch.bfloat16) does; the
    /// weights, optimiser, normalisation statistics, loss and sampler updates stay f32 (the default on a GPU).
    Bf16,
}

/// Where a sampling command runs and in which precision: the flags `sample`, `eval`, `sampler-table`, `quality`,
/// `invert` and `interpolate` share.
#[derive(Args, Clone, Copy, Debug)]
pub struct RunArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Convolutions and linear layers in bf16 (tensor cores; default on a GPU) or fp32 (default, and the only
    /// path, on the CPU).
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
}

impl RunArgs {
    /// The device the flags ask for, checked ([`resolve_device`]).
    fn resolve(self) -> Result<Device> {
        resolve_device(self.device, self.precision)
    }
}

/// The backend a command runs on.
enum Device {
    Cpu,
    Cuda(Gpu<Cuda>),
    Emu(Gpu<Emulator>),
}

impl Device {
    /// "cpu", "cuda" or "emu", as `--device` spells it.
    fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
            Device::Emu(_) => "emu",
        }
    }

    /// The precision the device runs the convolutions and linear layers in.
    fn precision(&self) -> Precision {
        match self {
            Device::Cpu => Precision::Fp32,
            Device::Cuda(g) => g.precision(),
            Device::Emu(g) => g.precision(),
        }
    }
}

/// Runs `$body` with `$b` bound to the chosen backend (`&Cpu` or `&Gpu<Cuda>`): each command's work is one
/// generic function, instantiated once per backend.
macro_rules! on_backend {
    ($device:expr, |$b:ident| $body:expr) => {
        // Matching on a reference works for a `Device` and a `&Device` alike, and binds the GPU by reference.
        match &$device {
            $crate::cli::Device::Cpu => {
                let $b = &ddpm::backend::Cpu;
                $body
            }
            $crate::cli::Device::Cuda(gpu) => {
                let $b = gpu;
                $body
            }
            $crate::cli::Device::Emu(gpu) => {
                let $b = gpu;
                $body
            }
        }
    };
}
use on_backend;

/// The device a run uses, in `precision` (default: bf16 on a GPU or the emulator, fp32 on the CPU): with `auto`
/// CUDA device 0 when it can be opened (the choice is printed), else the CPU, saying why; `Err` saying why when
/// `cuda` is asked for and cannot be used, or when the device has no path for the precision asked for. Decided
/// before any work.
fn resolve_device(d: DeviceArg, precision: Option<PrecisionArg>) -> Result<Device> {
    let gpu_precision = match precision {
        Some(PrecisionArg::Fp32) => Precision::Fp32,
        Some(PrecisionArg::Bf16) | None => Precision::Bf16,
    };
    let cpu = |why: Option<String>| {
        if precision == Some(PrecisionArg::Bf16) {
            let on = why.map_or("--device cpu has".to_string(), |w| {
                format!("--device auto found no usable GPU ({w}), and the CPU has")
            });
            bail!(
                "--precision bf16: {on} no bf16 path (the CPU's convolutions are f32); use --precision fp32, or \
                 --device emu to run the GPU's bf16 kernels on the CPU emulator"
            );
        }
        if let Some(why) = why {
            eprintln!("no usable CUDA device ({why}): running on the CPU");
        }
        Ok(Device::Cpu)
    };
    let cuda = |dev: Cuda| {
        eprintln!("using {} in {}", ddpm::gpu::Executor::describe(&dev), gpu_precision.name());
        Device::Cuda(Gpu::new(dev).with_precision(gpu_precision))
    };
    match d {
        DeviceArg::Cpu => cpu(None),
        DeviceArg::Cuda => {
            let dev = Cuda::new(0).map_err(|e| {
                anyhow!(
                    "--device cuda: no usable CUDA device: {e} (`ddpm info` says more; --device cpu runs on the CPU)"
                )
            })?;
            Ok(cuda(dev))
        }
        DeviceArg::Emu => {
            let emu = Emulator::new();
            eprintln!(
                "using the {} in {} (the GPU's kernels on the CPU: slow, for checking the GPU path)",
                ddpm::gpu::Executor::describe(&emu),
                gpu_precision.name()
            );
            Ok(Device::Emu(Gpu::new(emu).with_precision(gpu_precision)))
        }
        DeviceArg::Auto => match Cuda::new(0) {
            Ok(dev) => Ok(cuda(dev)),
            Err(e) => cpu(Some(e.to_string())),
        },
    }
}

/// Parses the command line (exiting with clap's message on an error). Every subcommand takes negative numbers
/// as flag values (`--lr -1`), so that a command refuses an out-of-range value with a message about its flag
/// instead of the parser calling the number an unknown argument.
pub fn parse() -> Cli {
    let mut cmd = Cli::command();
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |s| s.allow_negative_numbers(true));
    }
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Invert(a) => invert::run_invert(a),
        Command::Interpolate(a) => invert::run_interpolate(a),
        Command::Eval(a) => eval::run(a),
        Command::SamplerTable(a) => eval::run_table(a),
        Command::Export(a) => export::run(a),
        Command::Quality(a) => quality::run(a),
        Command::Bench(a) => bench::run(a),
        Command::TrainClassifier(a) => classifier::run(a),
        Command::Info => info::run(),
    }
}

/// A progress bar with the given length and a `{msg}` slot.
fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {{per_sec}} ETA {{eta}} {{msg}}"
    ))
    .expect("valid template");
    bar.set_style(style);
    bar
}

/// Prints `msg` as its own line above `bar`, or on stderr when the bar is hidden (stderr is not a terminal, as in a
/// logged run), so that a run's milestones are visible either way.
fn say(bar: &indicatif::ProgressBar, msg: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        bar.println(msg.as_ref());
    }
}
