//! What the CPU kernels of every family share: a fixed batch split and a switch to AVX2 code.
//!
//! CPU kernels work on plain slices with the dimensions of a [`crate::desc`] descriptor. The CPU kernels are the
//! reference every other backend is tested against, and the fast path on machines without a GPU: parallel work is
//! split into a fixed number of chunks so that results never depend on the thread count.

/// The number of batch chunks the parallel kernels split work into. Fixed (not the thread count) so that
/// per-chunk partial sums, and therefore results, are the same on every machine.
pub const BATCH_CHUNKS: usize = 8;

/// Splits `n` items into at most [`BATCH_CHUNKS`] contiguous ranges of near-equal size.
pub fn batch_chunks(n: usize) -> Vec<std::ops::Range<usize>> {
    let chunks = n.clamp(1, BATCH_CHUNKS);
    let size = n.div_ceil(chunks);
    (0..n).step_by(size.max(1)).map(|s| s..(s + size).min(n)).collect()
}

/// Runs `f` compiled for AVX2 when the CPU has it. The crate is built for baseline x86-64, whose 4-wide SSE
/// halves the throughput of the elementwise loops (the `gemm` crate dispatches on its own). Results are the same
/// to the bit either way: Rust never fuses or reorders float operations, so only the vector width changes. `f`
/// must be an `#[inline(always)]` closure, or it is compiled on its own, for baseline x86-64.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(f) };
        }
    }
    f()
}
