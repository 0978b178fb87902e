//! Per-step sampler latency: one UNet evaluation plus the DDPM or DDIM update, at n = 1, 16 and 64 images, base
//! 64 (the reference's model), on the CPU: `cargo bench --bench sampler_step`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ddpm::diffusion::sampler::{ddim_step, ddpm_step};
use ddpm::diffusion::{initial_noise, Denoiser, Schedule};
use ddpm::nn::{UNet, UNetConfig, UNetDenoiser};
use ddpm::params::Params;
use rand::{rngs::StdRng, SeedableRng};

/// The binary's allocator, so the numbers match `ddpm bench` (see `ddpm::alloc`).
#[global_allocator]
static ALLOC: ddpm::alloc::CachingAlloc = ddpm::alloc::CachingAlloc;

fn bench_sampler_step(c: &mut Criterion) {
    let mut params = Params::new();
    let model = UNet::new(UNetConfig::default(), &mut params, &mut StdRng::seed_from_u64(0)).unwrap();
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let mut group = c.benchmark_group("sampler_step_base64");
    group.sample_size(10);
    for n in [1usize, 16, 64] {
        let x = initial_noise(0, n, 1, 32, 32);
        let z = initial_noise(1, n, 1, 32, 32);
        let mut out = vec![0.0f32; x.numel()];
        let mut den = UNetDenoiser { model: &model, params: &params };
        group.bench_with_input(BenchmarkId::new("ddpm", n), &n, |b, &n| {
            b.iter(|| {
                let eps = den.predict_eps(&x, &vec![500; n]).unwrap();
                ddpm_step(&sched, 500, x.data(), eps.data(), Some(z.data()), &mut out).unwrap();
            })
        });
        group.bench_with_input(BenchmarkId::new("ddim", n), &n, |b, &n| {
            b.iter(|| {
                let eps = den.predict_eps(&x, &vec![500; n]).unwrap();
                ddim_step(&sched, (500, Some(480), 0.0), x.data(), eps.data(), None, &mut out).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_sampler_step);
criterion_main!(benches);
