//! `ddpm export`: a checkpoint's sampling weights as a small file of their own (a plain state dict with the
//! schedule in its metadata), as the weights shipped in `data/pretrained/` were made.

use super::checks::{self, Kind};
use super::sample::load_model;
use anyhow::Result;
use clap::Args;
use ddpm::checkpoint::save_weights;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint written by `ddpm train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The weights file to write (.safetensors): the reference's parameter names, so PyTorch's
    /// `load_state_dict` reads it too; `ddpm sample --checkpoint` samples from it as from the checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Export the live weights instead of the EMA weights.
    #[arg(long)]
    no_ema: bool,
    /// Replace --out even when it is not a file `ddpm export` wrote.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    checks::readable_file("--checkpoint", &a.checkpoint)?;
    checks::extension("--out", &a.out, &["safetensors"])?;
    checks::output("--out", &a.out, Kind::Weights, &[("--checkpoint", a.checkpoint.as_path())], a.force)?;
    let m = load_model(&a.checkpoint, !a.no_ema)?;
    save_weights(&m, &a.out)?;
    let c = &m.model.config;
    eprintln!(
        "wrote {} ({}; base {}, t_dim {}, classes {}, {} parameters)",
        a.out.display(),
        m.description,
        c.base,
        c.t_dim,
        c.classes,
        m.params.numel()
    );
    Ok(())
}
