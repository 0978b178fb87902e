//! Argument parsing and the two subcommands.

mod bench;
mod sample;
mod train;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};

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
    /// Time a training step or a sampler step on synthetic data; prints one JSON line.
    Bench(bench::BenchArgs),
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
}

/// The device a run uses; `Err` when the requested one is unavailable.
fn resolve_device(d: DeviceArg) -> Result<&'static str> {
    match d {
        DeviceArg::Auto | DeviceArg::Cpu => Ok("cpu"),
        DeviceArg::Cuda => bail!("--device cuda: this build has no CUDA backend yet; use --device cpu"),
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Bench(a) => bench::run(a),
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
