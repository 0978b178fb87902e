//! Each CPU kernel family alone, at the shapes the reference's UNet (base 64) gives it at batch 32, with its work
//! counted so criterion prints a rate: FLOP/s for the convolutions (as "elem/s": one element = one FLOP), bytes/s
//! for the memory-bound kernels. Before the benchmarks it prints the napkin peaks those rates compare with
//! (llm.c's habit): FMA throughput of the cores, and the bandwidth of a plain copy on this machine.
//! `cargo bench --bench kernels`.
//!
//! FLOPs of a conv: `2·n·c_out·oh·ow·c_in·k²` forward (a multiply and an add per weight tap and output pixel); the
//! backward computes dx and dW, each the same count. The 3x3 stride-1 convs run as Winograd F(2x2, 3x3)
//! (`src/ops/conv/winograd.rs`), which does 2.25x fewer multiply-adds than that count: their rate is an effective one,
//! the direct conv's FLOPs per second, and can exceed the FMA peak. Bytes of an elementwise kernel: every tensor
//! it reads or writes, once (the minimum any implementation must move).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddpm::backend::*;
use ddpm::desc::{ConvDesc, ConvGeom, Epilogue, LayerGrads, NormDesc};
use ddpm::nn::{UNet, UNetConfig};
use ddpm::ops::unary::UnaryKind;
use ddpm::optim::AdamWScalars;
use ddpm::rng;
use rand::{rngs::StdRng, SeedableRng};
use std::time::Instant;

/// Batch of every benchmark: the CPU recipe's.
const N: usize = 32;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; len];
    rng::fill_normal(seed, 0, &mut v);
    v
}

/// Prints the napkin peaks: `threads × GHz × FLOP/cycle` (two FMA pipes of 8 f32 lanes with AVX2, 16 with
/// AVX-512, 2 FLOP per FMA lane), and the copy bandwidth of 256 MiB (read + write counted).
fn print_peaks() {
    let threads = rayon::current_num_threads();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1)?.trim().parse().ok())
        .unwrap_or(0.0);
    let avx512 = cpuinfo.contains("avx512f");
    let flop_per_cycle = if avx512 { 64.0 } else { 32.0 };
    let src = vec![1.0f32; 64 << 20];
    let mut dst = vec![0.0f32; 64 << 20];
    // One untimed pass, so that page faults of the fresh buffer are not counted as bandwidth.
    dst.copy_from_slice(&src);
    let start = Instant::now();
    for _ in 0..4 {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    }
    let copy_gbs = 4.0 * 2.0 * (src.len() * 4) as f64 / start.elapsed().as_secs_f64() / 1e9;
    println!(
        "napkin peaks: {threads} threads x {:.2} GHz x {flop_per_cycle} FLOP/cycle ({}) = {:.0} GFLOP/s; memcpy on one thread {copy_gbs:.1} GB/s (read + write)",
        mhz / 1e3,
        if avx512 { "AVX-512" } else { "AVX2" },
        threads as f64 * mhz / 1e3 * flop_per_cycle
    );
}

/// The convolutions of the UNet: (name, c_in, c_out, side, k, stride, pad).
const CONVS: [(&str, usize, usize, usize, usize, usize, usize); 5] = [
    ("3x3_64_32px", 64, 64, 32, 3, 1, 1),
    ("3x3_128_16px", 128, 128, 16, 3, 1, 1),
    ("3x3_256_8px", 256, 256, 8, 3, 1, 1),
    ("3x3s2_64to128_32px", 64, 128, 32, 3, 2, 1),
    ("1x1_256to128_16px", 256, 128, 16, 1, 1, 0),
];

fn bench_conv(c: &mut Criterion) {
    print_peaks();
    let be = Cpu;
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10);
    for (name, ci, co, side, k, stride, pad) in CONVS {
        let g = ConvGeom::new(ci, side, side, k, stride, pad).unwrap();
        let d = ConvDesc { n: N, geom: g, channels: co };
        let flops = 2 * N * co * g.oh * g.ow * ci * k * k;
        let x = random(N * ci * side * side, 1);
        let w = random(co * ci * k * k, 2);
        let gout = random(N * co * g.oh * g.ow, 3);
        let mut out = be.alloc(N * co * g.oh * g.ow).unwrap();
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| be.conv2d_forward(&d, &x, &w, Epilogue::none(), &mut out).unwrap())
        });
        let (mut dx, mut dw) = (be.alloc(x.len()).unwrap(), be.alloc(w.len()).unwrap());
        group.throughput(Throughput::Elements(2 * flops as u64));
        group.bench_function(BenchmarkId::new("backward", name), |b| {
            b.iter(|| {
                be.conv2d_backward(&d, &x, &w, &gout, LayerGrads { dx: Some(&mut dx), dw: Some(&mut dw) }).unwrap()
            })
        });
    }
    // ConvTranspose2d(4x4, stride 2) from 8x8 to 16x16, 256 -> 128 channels (the UNet's `up2`): the adjoint of a
    // 16x16 -> 8x8 conv with the same FLOP count.
    let g = ConvGeom::new(128, 16, 16, 4, 2, 1).unwrap();
    let (ci, co) = (256, 128);
    let d = ConvDesc { n: N, geom: g, channels: ci };
    let flops = 2 * N * ci * g.oh * g.ow * co * 16;
    let x = random(N * ci * g.oh * g.ow, 4);
    let w = random(ci * co * 16, 5);
    let mut out = be.alloc(N * co * 16 * 16).unwrap();
    group.throughput(Throughput::Elements(flops as u64));
    group.bench_function(BenchmarkId::new("transpose_forward", "4x4s2_256to128_8to16px"), |b| {
        b.iter(|| be.conv_transpose2d_forward(&d, &x, &w, None, &mut out).unwrap())
    });
    group.finish();
}

fn bench_memory_bound(c: &mut Criterion) {
    let be = Cpu;
    let mut group = c.benchmark_group("memory_bound");
    group.sample_size(20);
    // GroupNorm(8) + SiLU on the 64-channel 32x32 activations: reads x, writes y (4 bytes each per element).
    let d = NormDesc { n: N, c: 64, plane: 32 * 32, groups: 8, eps: 1e-5, silu: true };
    let len = d.n * d.c * d.plane;
    let x = random(len, 6);
    let (gamma, beta) = (vec![1.0f32; 64], vec![0.0f32; 64]);
    let mut y = be.alloc(len).unwrap();
    group.throughput(Throughput::Bytes((2 * 4 * len) as u64));
    group.bench_function("group_norm_silu_forward_64ch_32px", |b| {
        b.iter(|| be.group_norm_forward(d, &x, (&gamma, &beta), &mut y).unwrap())
    });
    let gy = random(len, 7);
    let (mean, rstd) = be.group_norm_forward(d, &x, (&gamma, &beta), &mut y).unwrap();
    let (mut dx, mut dgamma, mut dbeta) = (be.alloc(len).unwrap(), be.alloc(64).unwrap(), be.alloc(64).unwrap());
    // Reads x and gy, writes dx.
    group.throughput(Throughput::Bytes((3 * 4 * len) as u64));
    group.bench_function("group_norm_silu_backward_64ch_32px", |b| {
        b.iter(|| {
            let daffine = (&mut dgamma, &mut dbeta);
            be.group_norm_backward(d, (&x, &gamma, &beta), (&mean, &rstd), &gy, Some((&mut dx, false)), daffine)
                .unwrap()
        })
    });
    group.throughput(Throughput::Bytes((2 * 4 * len) as u64));
    group.bench_function("silu_forward_64ch_32px", |b| {
        b.iter(|| be.unary_forward(UnaryKind::Silu, &x, &mut y).unwrap())
    });
    // AdamW over the base-64 UNet's parameter count: reads p, m, v, g and writes p, m, v.
    let mut store = ddpm::params::Params::new();
    UNet::new(UNetConfig::default(), &mut store, &mut StdRng::seed_from_u64(0)).unwrap();
    let params = store.numel();
    let (mut p, mut m, mut v, g) = (random(params, 8), vec![0.0f32; params], vec![0.0f32; params], random(params, 9));
    let s = AdamWScalars {
        decay: 1.0 - 2e-4 * 0.01,
        w1: 0.1,
        b2: 0.999,
        w2: 0.001,
        neg_step_size: -2e-4,
        bc2_sqrt: 1.0,
        eps: 1e-8,
    };
    group.throughput(Throughput::Bytes((7 * 4 * params) as u64));
    group.bench_function(format!("adamw_{params}_params"), |b| {
        b.iter(|| be.adamw_step(&s, &mut p, &mut m, &mut v, &g).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_conv, bench_memory_bound);
criterion_main!(benches);
