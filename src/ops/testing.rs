//! Helpers for the families' `tests.rs`: each check is one generic function over a `Gpu<E>` backend that runs a
//! family's entry points on it and on the CPU and compares; `gpu_test!` turns it into `<check>::emu` and
//! `<check>::cuda`. The `cuda` variants are `#[ignore]`d, so on a machine without a GPU they are reported as
//! ignored, never as passed; `cargo test -- --ignored` runs them on a GPU machine, where a missing device fails
//! them.
//!
//! Tolerances are `abs + rel·|ref|`. Where the GPU sums in a different order from the CPU (GEMM tiles, block
//! reductions, f32 where the CPU uses f64), the error grows like (terms summed)·ε·(magnitude), hence rel ~1e-5
//! and an abs floor for sums that cancel. Elementwise kernels that follow the CPU's f32 order get 0 on the
//! emulator (same libm, no FMA contraction) and a few ulp on a GPU (its logf/cosf/expf are within 2 ulp).

use crate::backend::{Gpu, Memory};
use crate::gpu::{cuda::Cuda, Executor};
use crate::rng;
use std::sync::OnceLock;

/// The shared CUDA device, or why there is none.
pub(crate) fn cuda() -> &'static Result<Gpu<Cuda>, String> {
    static DEV: OnceLock<Result<Gpu<Cuda>, String>> = OnceLock::new();
    DEV.get_or_init(|| Cuda::new(0).map(Gpu::new).map_err(|e| e.to_string()))
}

/// `mod $name { fn emu(); fn cuda() }` running the check `$name` on the emulator and on CUDA, in f32 or in the
/// precision given.
macro_rules! gpu_test {
    ($name:ident) => {
        $crate::ops::testing::gpu_test!($name, $crate::backend::Precision::Fp32);
    };
    ($name:ident, $precision:expr) => {
        mod $name {
            #[test]
            fn emu() {
                super::$name(&$crate::backend::Gpu::new($crate::gpu::emu::Emulator::new()).with_precision($precision));
            }
            // Counted as ignored, not passed, where there is no GPU; `--ignored` (scripts/gpu-check.sh) runs it,
            // and there a missing device is a failure.
            #[test]
            #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
            fn cuda() {
                match $crate::ops::testing::cuda() {
                    Ok(dev) => super::$name(&dev.clone().with_precision($precision)),
                    Err(why) => panic!("no CUDA device: {why}"),
                }
            }
        }
    };
}
pub(crate) use gpu_test;

/// Uniform values in [-1, 1) from Philox, a pure function of (seed, index).
pub(crate) fn rand(seed: u64, n: usize) -> Vec<f32> {
    (0..n).map(|i| (rng::uniform_u32x4(seed, 99, i as u64)[0] >> 8) as f32 / 8_388_608.0 - 1.0).collect()
}

/// Asserts `|got - want| <= abs + rel·|want|` elementwise (NaN matches NaN).
#[track_caller]
pub(crate) fn close(got: &[f32], want: &[f32], abs: f32, rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = abs + rel * w.abs();
        assert!((g - w).abs() <= tol || (g.is_nan() && w.is_nan()), "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}

/// `v` on the device.
pub(crate) fn up<E: Executor>(g: &Gpu<E>, v: &[f32]) -> E::Buf {
    g.upload(v.to_vec()).unwrap()
}

/// `b` on the host.
pub(crate) fn down<E: Executor>(g: &Gpu<E>, b: &E::Buf) -> Vec<f32> {
    g.download(b).unwrap()
}

/// A device buffer of `n` words for a kernel to fill (NaN on the emulator, so unwritten words show).
pub(crate) fn out<E: Executor>(g: &Gpu<E>, n: usize) -> E::Buf {
    g.alloc(n).unwrap()
}
