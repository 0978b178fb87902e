//! `ddpm train-classifier`: trains the MNIST classifier (`ddpm::nn::Classifier`) with the mean cross-entropy and
//! AdamW, on the same 32x32 [-1, 1] images the diffusion model trains on; prints the mean training loss of every
//! epoch and the accuracy on the 10,000 test images, and writes the weights. A run is a function of its flags:
//! the initialisation and the batches come from `--seed`, and the kernels sum in a fixed order.

use super::{checks, on_backend, progress_bar, resolve_device, DeviceArg};
use anyhow::{bail, Result};
use clap::Args;
use ddpm::autograd::Tape;
use ddpm::backend::{Backend, Cpu};
use ddpm::data::{load_dataset, Split};
use ddpm::nn::{Classifier, DEFAULT_WEIGHTS};
use ddpm::optim::AdamW;
use ddpm::params::Params;
use ddpm::train::Batcher;
use ddpm::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

/// Images per inference chunk when scoring the test set.
const EVAL_BATCH: usize = 500;

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// Folder with the MNIST IDX files (train-* and t10k-*, raw or .gz).
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// Where to write the weights (safetensors).
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    out: PathBuf,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// AdamW learning rate (PyTorch's other defaults: betas 0.9/0.999, weight decay 0.01).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed of the initialisation and of the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
}

pub fn run(a: TrainClassifierArgs) -> Result<()> {
    if a.epochs == 0 || a.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be positive, got {}", a.lr);
    }
    checks::readable_dir("--data", &a.data)?;
    checks::extension("--out", &a.out, &["safetensors"])?;
    checks::writable("--out", &a.out)?;
    let device = resolve_device(a.device, None)?;
    on_backend!(device, |b| train_on(&a, b))
}

/// The training run of `a` on `backend`.
fn train_on<B: Backend>(a: &TrainClassifierArgs, backend: &B) -> Result<()> {
    let started = Instant::now();
    let train = load_dataset(&a.data, Split::Train)?;
    let test = load_dataset(&a.data, Split::Test)?;
    let mut host = Params::new();
    let model = Classifier::new(&mut host, &mut StdRng::seed_from_u64(a.seed));
    let mut opt = AdamW::new(&host, a.lr).to_backend(backend, &host.placement())?;
    let mut params = host.to_backend(backend)?;
    let mut batcher = Batcher::new(train.labels.len(), a.batch, a.seed)?;
    let per_epoch = batcher.steps_per_epoch();
    println!(
        "training the MNIST classifier ({} parameters) on {}: {} images, batch {}, lr {}, {per_epoch} steps/epoch, {} epochs",
        params.numel(), backend.describe(), train.labels.len(), a.batch, a.lr, a.epochs
    );
    let bar = progress_bar(a.epochs * per_epoch, "train-classifier");
    for epoch in 0..a.epochs {
        let mut loss_sum = 0.0f64;
        for step in epoch * per_epoch..(epoch + 1) * per_epoch {
            let labels: Vec<usize> = batcher.indices(step).iter().map(|&i| train.labels[i] as usize).collect();
            let x = batcher.batch(&train.images, step);
            let loss = train_step(&model, &mut params, &mut opt, x, &labels)?;
            loss_sum += loss as f64;
            bar.inc(1);
            bar.set_message(format!("epoch {epoch} loss {loss:.4}"));
        }
        // `suspend`, not `println`: the latter prints nothing when the bar is hidden (output not a terminal).
        bar.suspend(|| println!("epoch {epoch}: mean training loss {:.4}", loss_sum / per_epoch as f64));
    }
    bar.finish();
    let accuracy = model.embed(&params, &test.images, EVAL_BATCH)?.accuracy(&test.labels)?;
    model.save(&params.to_backend(&Cpu)?, &a.out)?;
    println!(
        "test accuracy {:.2}% on {} images; weights written to {} ({:.1} minutes in all)",
        100.0 * accuracy,
        test.labels.len(),
        a.out.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// One AdamW step on the mean cross-entropy of the host batch `x` against `labels`; returns the loss.
fn train_step<B: Backend>(
    model: &Classifier,
    params: &mut Params<B>,
    opt: &mut AdamW<B>,
    x: Tensor,
    labels: &[usize],
) -> Result<f32> {
    let (loss, grads) = {
        let mut tape = Tape::new(params);
        let xv = tape.input_host(x)?;
        let (_, logits) = model.forward(&mut tape, xv)?;
        let loss = tape.cross_entropy(logits, labels)?;
        let value = tape.value(loss).to_vec()?[0];
        (value, tape.backward(loss)?)
    };
    opt.step(params, &grads)?;
    Ok(loss)
}
