//! Shared test helpers: golden files and `abs + rel·|ref|` comparisons that report the worst element.
#![allow(dead_code)]

use ddpm::autograd::Tape;
use ddpm::backend::Backend;
use ddpm::nn::{Timesteps, UNet, UNetConfig};
use ddpm::params::{Grads, Params};
use ddpm::tensor_file::{read_tensors, TensorFile};
use ddpm::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use std::path::PathBuf;

pub mod cli;

/// `rel` under the repository: under `$CARGO_MANIFEST_DIR` when set at run time (cargo sets it; so does
/// scripts/gpu-check.sh for test binaries built on another machine), else under the crate this was built in.
pub fn repo_path(rel: &str) -> PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(root).join(rel)
}

/// The golden file `tests/golden/{name}`.
pub fn golden(name: &str) -> TensorFile {
    read_tensors(&repo_path("tests/golden").join(name)).unwrap_or_else(|e| panic!("{e}"))
}

/// The golden model: `UNet(in_ch=1, base=16, t_dim=32)` with the weights of `weights.safetensors`.
pub fn golden_model() -> (UNet, Params) {
    let mut params = Params::new();
    let model =
        UNet::new(UNetConfig { in_ch: 1, base: 16, t_dim: 32, classes: 0 }, &mut params, &mut StdRng::seed_from_u64(0))
            .unwrap();
    let w = golden("weights.safetensors");
    params.load_from(&w.f32_with_prefix(""), "weights.safetensors").unwrap();
    (model, params)
}

/// The golden batch's timesteps.
pub fn timesteps(io: &TensorFile) -> Vec<usize> {
    io.i64("t").unwrap().iter().map(|&t| t as usize).collect()
}

/// Forward + backward on the golden batch on the backend of `params`: (activations by name, loss, grads), all
/// copied to the host.
pub fn golden_step<B: Backend>(model: &UNet, params: &Params<B>) -> (Vec<(String, Tensor)>, f32, Grads) {
    let io = golden("io.safetensors");
    let be = params.backend();
    let mut tape = Tape::new(params);
    let x = tape.input(io.f32("x").unwrap().to_backend(be).unwrap());
    let target = tape.input(io.f32("noise").unwrap().to_backend(be).unwrap());
    let mut traced = Vec::new();
    let eps = model
        .forward_traced(&mut tape, x, Timesteps::Host(&timesteps(&io)), None, &mut |name, v| traced.push((name, v)))
        .unwrap();
    let acts = traced
        .into_iter()
        .map(|(n, v)| (n.to_string(), tape.value(v).to_backend(&ddpm::backend::Cpu).unwrap()))
        .collect();
    let loss = tape.mse(eps, target).unwrap();
    let loss_value = tape.value(loss).to_vec().unwrap()[0];
    let grads = tape.backward(loss).unwrap().0.into_iter().map(|g| g.to_host().unwrap()).collect();
    (acts, loss_value, Grads(grads))
}

/// The outcome of comparing `ours` with `reference` under `|ours - ref| <= atol + rtol·|ref|`.
#[derive(Debug, Clone, Copy)]
pub struct Cmp {
    /// Largest `|ours - ref|`.
    pub max_abs: f32,
    /// Largest `|ours - ref| / (atol + rtol·|ref|)`: the fraction of the threshold used (must be <= 1).
    pub worst_ratio: f32,
    /// Elements over the threshold.
    pub failures: usize,
    /// Mean `|ours - ref|`.
    pub mean_abs: f32,
}

/// Compares elementwise; see [`Cmp`].
pub fn compare(ours: &[f32], reference: &[f32], atol: f32, rtol: f32) -> Cmp {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let mut c = Cmp { max_abs: 0.0, worst_ratio: 0.0, failures: 0, mean_abs: 0.0 };
    let mut sum = 0.0f64;
    for (&a, &r) in ours.iter().zip(reference) {
        let d = (a - r).abs();
        sum += d as f64;
        let tol = atol + rtol * r.abs();
        let ratio = if tol > 0.0 {
            d / tol
        } else if d == 0.0 {
            0.0
        } else {
            f32::INFINITY
        };
        c.max_abs = c.max_abs.max(d);
        c.worst_ratio = c.worst_ratio.max(if d.is_nan() { f32::INFINITY } else { ratio });
        if d.is_nan() || d > tol {
            c.failures += 1;
        }
    }
    c.mean_abs = (sum / ours.len().max(1) as f64) as f32;
    c
}

/// Asserts `compare(..)` has no failures, with a message naming `what`; returns the comparison for reporting.
pub fn assert_close(what: &str, ours: &[f32], reference: &[f32], atol: f32, rtol: f32) -> Cmp {
    let c = compare(ours, reference, atol, rtol);
    assert!(
        c.failures == 0,
        "{what}: {} of {} elements exceed {atol} + {rtol}*|ref| (max abs diff {:.3e}, worst {:.1}x the threshold)",
        c.failures,
        ours.len(),
        c.max_abs,
        c.worst_ratio
    );
    c
}

/// The largest distance in units in the last place between `ours` and `reference` (same-sign finite f32s).
pub fn max_ulp(ours: &[f32], reference: &[f32]) -> u32 {
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(a, r)| (a.to_bits() as i64 - r.to_bits() as i64).unsigned_abs() as u32)
        .max()
        .unwrap_or(0)
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform(rng: &mut impl rand::Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// A host tensor of `shape` with values uniform in `[lo, hi)`.
pub fn uniform_tensor(rng: &mut impl rand::Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    Tensor::new(shape, uniform(rng, shape.iter().product(), lo, hi)).unwrap()
}

/// Asserts `|ours - want| <= atol + rtol·|want|` elementwise against an f64 reference, naming `what` and the first
/// failing index; prints (with `--nocapture`) the largest error and the fraction of the threshold used.
pub fn assert_formula(what: &str, ours: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_within(what, ours, want, &|i| atol + rtol * want[i].abs());
}

/// [`assert_formula`] with a tolerance per element, `tol(i)`.
pub fn assert_within(what: &str, ours: &[f32], want: &[f64], tol: &dyn Fn(usize) -> f64) {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    let (mut worst, mut max_abs, mut first_bad) = (0.0f64, 0.0f64, None);
    for (i, (&a, &r)) in ours.iter().zip(want).enumerate() {
        let d = (a as f64 - r).abs();
        if (d.is_nan() || d > tol(i)) && first_bad.is_none() {
            first_bad = Some((i, a, r));
        }
        max_abs = max_abs.max(d);
        worst = worst.max(if d.is_nan() { f64::INFINITY } else { d / tol(i) });
    }
    eprintln!("{what}: max |ours - f64| {max_abs:.2e}, {:.1}% of the threshold", 100.0 * worst);
    if let Some((i, a, r)) = first_bad {
        panic!("{what}: [{i}] = {a:e}, formula {r:e} (tolerance {:e}; worst {worst:.1}x the threshold)", tol(i));
    }
}

/// Runs each test on the CPU kernels and on the CUDA kernels in the emulator.
#[allow(unused_macros)] // used by the formula tests, not by every test binary that includes this module
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&ddpm::backend::Cpu);
            }
            #[test]
            fn emu() {
                super::$name(&ddpm::backend::Gpu::new(ddpm::gpu::emu::Emulator::new()));
            }
        }
    };
}

/// Runs each test, a function of an executor, on the emulator (in every test pass) and on CUDA device 0 (`#[ignore]`d:
/// reported as ignored, not passed, without a GPU; `--ignored` runs it on a GPU machine, where a missing device fails
/// it).
#[allow(unused_macros)] // used by the GPU tests, not by every test binary that includes this module
macro_rules! gpu_test {
    ($name:ident) => {
        mod $name {
            #[test]
            fn emu() {
                super::$name(ddpm::gpu::emu::Emulator::new());
            }
            #[test]
            #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
            fn cuda() {
                match ddpm::gpu::cuda::Cuda::new(0) {
                    Ok(dev) => super::$name(dev),
                    Err(why) => panic!("no CUDA device: {why}"),
                }
            }
        }
    };
}

/// A `log.csv` without its `unix_time` column (the wall-clock time of each row, the one column that differs
/// between identical runs), for comparing runs.
#[allow(dead_code)] // used by the training tests, not by every test binary that includes this module
pub fn without_times(log: &str) -> String {
    log.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 7, "a log row of 7 columns: {l}");
            [&f[..5], &f[6..]].concat().join(",") + "\n"
        })
        .collect()
}
