//! The launch checks every executor shares, and the emulator's own: argument kinds (float and int buffers kept
//! apart), the 1024-thread limit, each kernel's `__launch_bounds__` and dynamic shared memory limit, writes past a
//! buffer's end, divergent barriers, deadlocks and unwritten shared memory, misused tensor-core instructions and
//! cp.async, and the thread orders. Each family's kernels are tested against the CPU in its own `tests.rs`
//! (`src/ops/*/tests.rs`).

use ddpm::backend::{Gpu, Memory, UnaryOps};
use ddpm::gpu::emu::{Emulator, ThreadOrder};
use ddpm::gpu::{cuda::Cuda, emu::EmuBuf, Arg, Executor, Kernel, LaunchCfg};
use ddpm::ops::unary::UnaryKind;

#[test]
fn emulator_catches_bad_launches() {
    let gpu = Gpu::new(Emulator::new());
    let (a, mut c) = (gpu.upload(vec![1.0; 64]).unwrap(), gpu.alloc(4).unwrap());
    // A launcher checks lengths before it launches.
    let err = gpu.unary_forward(UnaryKind::Silu, &a, &mut c).unwrap_err().to_string();
    assert!(err.contains("unary y"), "{err}");
    let e = gpu.executor();
    let silu = |n: Arg<'_, _>, threads: u32| {
        let args = [Arg::I32(UnaryKind::Silu as i32), Arg::Buf(&a), Arg::Buf(&c), Arg::Null, n, Arg::I32(1)];
        // SAFETY: the launches below are wrong on purpose; the executor must refuse them or catch their writes
        // in its guard words (the emulator's buffers carry them), never corrupt memory.
        unsafe { e.launch(Kernel::UnaryFwd, LaunchCfg::linear(1, threads), &args) }.unwrap_err().to_string()
    };
    let err = silu(Arg::I32(4), 256);
    assert!(err.contains("parameter `n` is I64"), "{err}");
    let err = silu(Arg::I64(4), 1025);
    assert!(err.contains("invalid block shape"), "{err}");
    // A lying length: silu over 64 elements into a 4-word buffer lands in the guard words.
    let err = silu(Arg::I64(64), 256);
    assert!(err.contains("wrote past the end of `y`"), "{err}");
    // A float buffer where the kernel takes indices is refused by kind.
    let args = [Arg::Buf(&a), Arg::Buf(&a), Arg::Buf(&c), Arg::I32(1), Arg::I32(2), Arg::I32(2)];
    // SAFETY: refused before anything runs (the argument kinds are checked first).
    let err = unsafe { e.launch(Kernel::MaxPool2dBwd, LaunchCfg::linear(1, 32), &args) }.unwrap_err().to_string();
    assert!(err.contains("parameter `argmax` is ConstIntPtr, got a float buffer"), "{err}");
}

// Without libcuda, opening a device is an error that says why, never a panic.
#[test]
fn cuda_absence_is_an_error() {
    match Cuda::new(0) {
        Err(why) => {
            assert!(!why.to_string().is_empty());
            eprintln!("skipped: no CUDA device ({why}); the `::cuda` kernel tests are ignored");
        }
        Ok(dev) => eprintln!("CUDA device: {}", dev.describe()),
    }
}

/// Runs one of the `selftest_*` kernels on 64 threads and returns the emulator's verdict.
fn selftest(kernel: Kernel, cfg: LaunchCfg) -> (Result<(), ddpm::Error>, Vec<f32>) {
    let e = Emulator::new();
    let y = e.alloc(64).unwrap();
    // SAFETY: each self-test kernel writes at most 64 words of `y`.
    let r = unsafe { e.launch(kernel, cfg, &[Arg::Buf(&y)]) };
    (r, e.download(&y).unwrap())
}

#[test]
fn emulator_reports_divergent_barrier_with_lines() {
    let err = selftest(Kernel::SelftestDivergentBarrier, LaunchCfg::linear(1, 64)).0.unwrap_err().to_string();
    assert!(
        err.contains("divergent __syncthreads()") && err.contains("selftest.cu:9") && err.contains("selftest.cu:11"),
        "{err}"
    );
}

#[test]
fn emulator_reports_deadlock_with_lines() {
    let err = selftest(Kernel::SelftestDeadlock, LaunchCfg::linear(1, 64)).0.unwrap_err().to_string();
    assert!(err.contains("deadlock") && err.contains("selftest.cu:21") && err.contains("common.cuh:31"), "{err}");
}

#[test]
fn emulator_poisons_dynamic_shared_memory() {
    let (r, y) =
        selftest(Kernel::SelftestUnwrittenSmem, LaunchCfg { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 128 });
    r.unwrap();
    // The fill is 0x7fc07fc0: NaN as an f32 and as either bf16 half.
    assert!(y[..32].iter().all(|v| v.to_bits() == 0x7fc0_7fc0), "{y:?}");
    // Its `// max-dynamic-shared: 65536` opt-in allows 64 KiB, and no more.
    let smem = |shared_bytes| LaunchCfg { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes };
    let (r, y) = selftest(Kernel::SelftestUnwrittenSmem, smem(64 * 1024));
    r.unwrap();
    assert!(y[..32].iter().all(|v| v.is_nan()));
    let err = selftest(Kernel::SelftestUnwrittenSmem, smem(64 * 1024 + 4)).0.unwrap_err().to_string();
    assert!(err.contains("selftest_unwritten_smem") && err.contains("max-dynamic-shared"), "{err}");
}

#[test]
fn launch_limits_of_the_kernel_are_enforced_with_its_name() {
    assert_eq!(Kernel::SumsqPartials.max_threads(), Some(256));
    assert_eq!(Kernel::FinishSum.max_threads(), Some(1024));
    assert_eq!(Kernel::UnaryFwd.max_threads(), None);
    assert_eq!(Kernel::SelftestDeadlock.max_dynamic_shared(), 48 * 1024);
    assert_eq!(Kernel::SelftestUnwrittenSmem.max_dynamic_shared(), 64 * 1024);
    let e = Emulator::new();
    let (x, parts) = (e.upload(&[1.0; 512]).unwrap(), e.alloc(4).unwrap());
    // No ticket: the second pass is not taken.
    let no_finish = [Arg::Null, Arg::Null, Arg::I32(0), Arg::F32(1.0), Arg::F32(0.0)];
    let args: Vec<_> =
        [Arg::Buf(&x), Arg::Null, Arg::Buf(&parts), Arg::I64(512)].into_iter().chain(no_finish).collect();
    // A block above the kernel's __launch_bounds__(256), which the GPU would refuse to launch.
    // SAFETY: refused before anything runs (the launch limits are checked first).
    let err = unsafe { e.launch(Kernel::SumsqPartials, LaunchCfg::linear(1, 512), &args) }.unwrap_err().to_string();
    assert!(
        err.contains("sumsq_partials") && err.contains("512 threads") && err.contains("__launch_bounds__(256)"),
        "{err}"
    );
    // At the bound it runs: 512 ones squared, in one block.
    // SAFETY: x holds the 512 words the kernel reads, parts the one word block 0 writes.
    unsafe { e.launch(Kernel::SumsqPartials, LaunchCfg::linear(1, 256), &args) }.unwrap();
    assert_eq!(e.download(&parts).unwrap()[0], 512.0);
    // More than 48 KiB of dynamic shared memory for a kernel without an opt-in.
    let err =
        selftest(Kernel::SelftestDeadlock, LaunchCfg { grid: [1, 1, 1], block: [64, 1, 1], shared_bytes: 49 * 1024 })
            .0
            .unwrap_err()
            .to_string();
    assert!(err.contains("selftest_deadlock") && err.contains("48 KiB"), "{err}");
}

/// One block of `threads` threads with `smem` bytes of dynamic shared memory.
fn block(threads: u32, smem: u32) -> LaunchCfg {
    LaunchCfg { grid: [1, 1, 1], block: [threads, 1, 1], shared_bytes: smem }
}

/// Launches a self-test kernel on `e`; the emulator's verdict as text.
fn run_on(e: &Emulator, kernel: Kernel, cfg: LaunchCfg, args: &[Arg<'_, EmuBuf>]) -> Result<(), String> {
    // SAFETY: each self-test kernel below reads at most 128 words of its input and writes at most 128 of its output,
    // and every buffer passed has 128 words.
    unsafe { e.launch(kernel, cfg, args) }.map_err(|e| e.to_string())
}

#[test]
fn reversed_thread_order_exposes_a_missing_barrier() {
    let missing_barrier = |order| {
        let e = Emulator::new().with_thread_order(order);
        let y = e.alloc(128).unwrap();
        run_on(&e, Kernel::SelftestMissingBarrier, block(64, 4), &[Arg::Buf(&y)]).unwrap();
        e.download(&y).unwrap()[..64].to_vec()
    };
    // Thread 0 writes before the others read in the default order: the race is invisible.
    assert!(missing_barrier(ThreadOrder::Forward).iter().all(|&v| v == 42.0));
    // Reversed, every reader runs before thread 0 and reads the NaN fill.
    let y = missing_barrier(ThreadOrder::Reversed);
    assert!(y[0] == 42.0 && y[1..].iter().all(|v| v.is_nan()), "{y:?}");
    // A shuffled order puts thread 0 after some readers too (for this seed; the order is reproducible).
    assert!(missing_barrier(ThreadOrder::Shuffled(1)).iter().any(|v| v.is_nan()));
}

#[test]
fn emulator_catches_cp_async_misuse() {
    let e = Emulator::new();
    let (x, y) = (e.upload(&(0..128).map(|i| i as f32).collect::<Vec<_>>()).unwrap(), e.alloc(128).unwrap());
    let misuse =
        |mode| run_on(&e, Kernel::SelftestCpAsyncMisuse, block(32, 512), &[Arg::Buf(&x), Arg::Buf(&y), Arg::I32(mode)]);
    // Read before the wait: the destination holds the poison, NaN as f32 and as bf16.
    misuse(0).unwrap();
    let got = e.download(&y).unwrap();
    assert!(got.iter().all(|v| v.to_bits() == 0x7fc0_7fc0), "{got:?}");
    // A wait without a commit completes nothing, and neither does a commit without a wait.
    for mode in [1, 2] {
        let err = misuse(mode).unwrap_err();
        assert!(err.contains("cp.async copies still pending at thread exit"), "{err}");
    }
}

#[test]
fn reversed_thread_order_exposes_a_missing_barrier_after_cp_async_wait() {
    let read_neighbour = |order| {
        let e = Emulator::new().with_thread_order(order);
        let (x, y) = (e.upload(&(0..128).map(|i| i as f32).collect::<Vec<_>>()).unwrap(), e.alloc(128).unwrap());
        let args = [Arg::Buf(&x), Arg::Buf(&y), Arg::I32(3)];
        run_on(&e, Kernel::SelftestCpAsyncMisuse, block(32, 512), &args).unwrap();
        e.download(&y).unwrap()
    };
    // Forward, lane l - 1 has issued and waited for its copy before lane l reads it: the missing barrier is hidden.
    let y = read_neighbour(ThreadOrder::Forward);
    assert!((4..128).all(|i| y[i] == (i - 4) as f32), "{y:?}");
    // Reversed, lane l reads slot l - 1 before lane l - 1 has run at all.
    let y = read_neighbour(ThreadOrder::Reversed);
    assert!(y[4..].iter().all(|v| v.is_nan()), "{y:?}");
}

#[test]
fn cp_async_wait_completes_committed_groups_only() {
    let e = Emulator::new();
    let src: Vec<f32> = (0..128).map(|i| i as f32 + 0.25).collect();
    let (x, y) = (e.upload(&src).unwrap(), e.alloc(128).unwrap());
    run_on(&e, Kernel::SelftestCpAsyncGroups, block(32, 48), &[Arg::Buf(&x), Arg::Buf(&y)]).unwrap();
    let y = e.download(&y).unwrap();
    // wait<1> with groups {x[0..4]}, {x[4..8]} committed and x[8..12] not: only the older group lands.
    assert_eq!(y[..4], src[..4]);
    assert!(y[4..12].iter().all(|v| v.is_nan()), "{:?}", &y[..12]);
    // After committing the last copy, wait<0> lands everything.
    assert_eq!(y[12..24], src[..12]);
}

#[test]
fn emulator_reports_bad_ldmatrix_addresses() {
    let e = Emulator::new();
    let y = e.alloc(128).unwrap();
    let bad =
        |mode| run_on(&e, Kernel::SelftestBadLdmatrix, block(32, 512), &[Arg::Buf(&y), Arg::I32(mode)]).unwrap_err();
    let err = bad(0);
    assert!(err.contains("ldmatrix") && err.contains("not 16-byte aligned"), "{err}");
    let err = bad(1);
    assert!(err.contains("ldmatrix") && err.contains("not inside the block's dynamic shared memory"), "{err}");
}

#[test]
fn emulator_reports_partial_warp_mma() {
    let e = Emulator::new();
    let y = e.alloc(128).unwrap();
    let mma =
        |threads, half| run_on(&e, Kernel::SelftestPartialWarpMma, block(threads, 0), &[Arg::Buf(&y), Arg::I32(half)]);
    // A whole warp is fine: D = 0·0 + 1.
    mma(32, 0).unwrap();
    assert!(e.download(&y).unwrap()[..32].iter().all(|&v| v == 1.0));
    // Half the warp exits: reported when a lane exits while others wait in the mma (the default order), or when a
    // lane reaches the mma after others exited (the reversed one).
    let err = mma(32, 1).unwrap_err();
    assert!(err.contains("exited"), "{err}");
    let err = mma(16, 0).unwrap_err();
    assert!(err.contains("mma.sync") && err.contains("needs a full warp of 32 threads"), "{err}");
}

/// Static shared memory counts too: build.rs sizes each kernel's `__shared__` arrays (the same bytes ptxas reports
/// in docs/kernels.md), and a launch whose static plus dynamic shared memory exceeds 48 KiB is refused.
#[test]
fn static_shared_memory_counts_toward_the_limit() {
    assert_eq!(Kernel::NchwToNhwcBf16.static_shared(), 32 * 33 * 4);
    assert_eq!(Kernel::Sgemm.static_shared(), 2 * 2 * 16 * 66 * 4);
    assert_eq!(Kernel::SumsqPartials.static_shared(), 32 * 4 + 4);
    assert_eq!(Kernel::ConvGatherMma.static_shared(), 0);
    let e = Emulator::new();
    let (x, parts) = (e.upload(&[1.0; 512]).unwrap(), e.alloc(4).unwrap());
    // No ticket: the second pass is not taken.
    let no_finish = [Arg::Null, Arg::Null, Arg::I32(0), Arg::F32(1.0), Arg::F32(0.0)];
    let args: Vec<_> =
        [Arg::Buf(&x), Arg::Null, Arg::Buf(&parts), Arg::I64(512)].into_iter().chain(no_finish).collect();
    let cfg = LaunchCfg { grid: [1, 1, 1], block: [256, 1, 1], shared_bytes: 48 * 1024 - 132 + 4 };
    // SAFETY: refused before anything runs (the launch limits are checked first).
    let err = unsafe { e.launch(Kernel::SumsqPartials, cfg, &args) }.unwrap_err().to_string();
    assert!(err.contains("sumsq_partials") && err.contains("132 bytes of static"), "{err}");
}
