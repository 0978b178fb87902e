//! The tensor-core helpers of kernels/common.cuh (mma.sync m16n8k16 bf16, ldmatrix, cp.async) against the PTX ISA,
//! through the one-warp kernels of kernels/tensor_core_layout.cu. The expected values are computed here from the
//! ISA's description of each instruction's fragment layout, independently of the emulator's code, so the same test
//! checks the emulator (`::emu`, in both thread orders) and the hardware (`::cuda`, `#[ignore]`d: reported as
//! ignored without a GPU; `--ignored` runs it on a GPU machine, where a missing device fails it).

use ddpm::gpu::emu::{Emulator, ThreadOrder};
use ddpm::gpu::{cuda::Cuda, Arg, Executor, Kernel, LaunchCfg};

macro_rules! gpu_test {
    ($name:ident) => {
        mod $name {
            #[test]
            fn emu() {
                super::$name(&super::Emulator::new().with_thread_order(super::ThreadOrder::Forward));
                super::$name(&super::Emulator::new().with_thread_order(super::ThreadOrder::Reversed));
            }
            #[test]
            #[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
            fn cuda() {
                match super::Cuda::new(0) {
                    Ok(dev) => super::$name(&dev),
                    Err(why) => panic!("no CUDA device: {why}"),
                }
            }
        }
    };
}

/// One warp, with `smem` bytes of dynamic shared memory.
fn warp(smem: u32) -> LaunchCfg {
    LaunchCfg { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: smem }
}

/// f32 -> bf16 bits, rounding to nearest with ties to even (finite inputs).
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits as u64 + 0x7fff + ((bits >> 16) & 1) as u64;
    (rounded >> 16) as u16
}

fn bf16_value(h: u16) -> f64 {
    f32::from_bits((h as u32) << 16) as f64
}

/// Reproducible values in [-1, 1).
fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / 8_388_608.0 - 1.0
        })
        .collect()
}

/// D = A·B + C for A 16x16, B 16x8 (row-major, rounded to bf16), C 16x8. The expected value is the exact sum (f64,
/// which holds every bf16 product and this short sum of them without rounding but the last); the kernel's f32 sum
/// of 17 terms in an unspecified order is within 17 roundings of 2^-24 relative to the sum of the terms'
/// magnitudes, so the tolerance is 1e-5 of that sum: tight against any layout mistake, which moves a value by the
/// size of whole terms.
fn mma<E: Executor>(e: &E) {
    let (a, b, c) = (values(1, 256), values(2, 128), values(3, 128));
    let (da, db, dc, dd) = (e.upload(&a).unwrap(), e.upload(&b).unwrap(), e.upload(&c).unwrap(), e.alloc(128).unwrap());
    let args = [Arg::Buf(&da), Arg::Buf(&db), Arg::Buf(&dc), Arg::Buf(&dd)];
    // SAFETY: the kernel reads 256, 128 and 128 floats and writes 128, the buffers' lengths.
    unsafe { e.launch(Kernel::TcLayoutMma, warp(0), &args) }.unwrap();
    check_mma(&a, &b, &c, &e.download(&dd).unwrap());

    // The same product from fragments packed here, by the ISA's m16n8k16 layout (g = lane / 4, t = lane % 4; the
    // lower column of A or row of B in a register's low half): a0 = A[g][2t..], a1 = A[g+8][2t..], a2 =
    // A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..][g], b1 = B[2t+8..][g]; c0, c1 = C[g][2t], C[g][2t+1] and c2,
    // c3 = C[g+8][2t], C[g+8][2t+1], the same for D.
    let pair = |lo: f32, hi: f32| bf16(lo) as u32 | (bf16(hi) as u32) << 16;
    let (mut frag, mut cf) = (Vec::new(), Vec::new());
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for (row, col) in [(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)] {
            frag.push(pair(a[row * 16 + col], a[row * 16 + col + 1]));
        }
        for k in [2 * t, 2 * t + 8] {
            frag.push(pair(b[k * 8 + g], b[(k + 1) * 8 + g]));
        }
        cf.extend([c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]]);
    }
    // The register bits travel as floats (an int buffer holds indices only): uploads and downloads copy bits.
    let frag: Vec<f32> = frag.into_iter().map(f32::from_bits).collect();
    let (dfrag, dcf, dd) = (e.upload(&frag).unwrap(), e.upload(&cf).unwrap(), e.alloc(128).unwrap());
    let args = [Arg::Buf(&dfrag), Arg::Buf(&dcf), Arg::Buf(&dd)];
    // SAFETY: the kernel reads 192 and 128 floats and writes 128, the buffers' lengths.
    unsafe { e.launch(Kernel::TcLayoutMmaFragments, warp(0), &args) }.unwrap();
    let df = e.download(&dd).unwrap();
    let mut d = vec![0.0; 128];
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for (i, (row, col)) in [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)].into_iter().enumerate()
        {
            d[row * 8 + col] = df[4 * lane + i];
        }
    }
    check_mma(&a, &b, &c, &d);
}
gpu_test!(mma);

/// Checks D (16x8 row-major) against A·B + C, A and B rounded to bf16, within the tolerance above.
#[track_caller]
fn check_mma(a: &[f32], b: &[f32], c: &[f32], d: &[f32]) {
    for m in 0..16 {
        for n in 0..8 {
            let terms: Vec<f64> =
                (0..16).map(|k| bf16_value(bf16(a[m * 16 + k])) * bf16_value(bf16(b[k * 8 + n]))).collect();
            let want = c[m * 8 + n] as f64 + terms.iter().sum::<f64>();
            let scale = c[m * 8 + n].abs() as f64 + terms.iter().map(|t| t.abs()).sum::<f64>();
            let got = d[m * 8 + n] as f64;
            assert!((got - want).abs() <= 1e-5 * scale, "D[{m}][{n}]: got {got}, want {want} (scale {scale})");
        }
    }
}

/// ldmatrix x1, x2, x4, plain and transposed, from matrices whose elements are all different (integers 0..255,
/// exact in bf16): each lane's registers must hold exactly the elements the ISA assigns it. For lane l, register i
/// of a plain load holds row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i (the lower column in the low half); a
/// transposed load holds rows 2(l%4) and 2(l%4)+1 of column l/4 (the lower row in the low half).
fn ldmatrix<E: Executor>(e: &E) {
    let src: Vec<f32> = (0..256).map(|v| v as f32).collect();
    let at = |m: usize, r: usize, c: usize| bf16(src[m * 64 + r * 8 + c]) as u32;
    let dsrc = e.upload(&src).unwrap();
    for count in [1, 2, 4] {
        for trans in [0, 1] {
            let out = e.alloc_i32(128).unwrap();
            let args = [Arg::Buf(&dsrc), Arg::Ints(&out), Arg::I32(count as i32), Arg::I32(trans)];
            // SAFETY: the kernel reads 256 floats and writes 128 ints, the buffers' lengths.
            unsafe { e.launch(Kernel::TcLayoutLdmatrix, warp(1024), &args) }.unwrap();
            let got = e.download_i32(&out).unwrap();
            for lane in 0..32 {
                for i in 0..4 {
                    let (g, t) = (lane / 4, lane % 4);
                    let want = match (i < count, trans) {
                        (false, _) => 0,
                        (true, 0) => at(i, g, 2 * t) | at(i, g, 2 * t + 1) << 16,
                        (true, _) => at(i, 2 * t, g) | at(i, 2 * t + 1, g) << 16,
                    };
                    assert_eq!(
                        got[lane * 4 + i],
                        want,
                        "x{count} trans {trans}: lane {lane} register {i}: got {:#010x}, want {want:#010x}",
                        got[lane * 4 + i]
                    );
                }
            }
        }
    }
}
gpu_test!(ldmatrix);

/// cp.async: lane l copies 16-byte chunk l of the source into slot l ^ 5, or zeros where bit l of the mask is set;
/// after the wait and the barrier, slot s holds chunk s ^ 5 (or zeros), bit for bit.
fn cp_async<E: Executor>(e: &E) {
    let src: Vec<f32> = (0..128).map(|i| i as f32 + 0.5).collect();
    let dsrc = e.upload(&src).unwrap();
    for mask in [0u32, 0x8040_0102] {
        let out = e.alloc(128).unwrap();
        let args = [Arg::Buf(&dsrc), Arg::Buf(&out), Arg::I32(mask as i32)];
        // SAFETY: the kernel reads and writes 128 floats, the buffers' lengths.
        unsafe { e.launch(Kernel::TcLayoutCpAsync, warp(512), &args) }.unwrap();
        let got = e.download(&out).unwrap();
        for slot in 0..32 {
            let chunk = slot ^ 5;
            for j in 0..4 {
                let want = if mask >> chunk & 1 == 1 { 0.0 } else { src[4 * chunk + j] };
                let g = got[4 * slot + j];
                assert_eq!(g.to_bits(), want.to_bits(), "mask {mask:#x}: slot {slot} word {j}: got {g}, want {want}");
            }
        }
    }
}
gpu_test!(cp_async);
