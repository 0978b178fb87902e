//! One training step of the seed's UNet on the CPU (forward, backward, clip, AdamW, EMA), base 64, at batch 32
//! and 128: `cargo bench --bench train_step`.

use criterion::{criterion_group, criterion_main, Criterion};
use ddpm::autograd::Tape;
use ddpm::nn::{UNet, UNetConfig};
use ddpm::optim::{clip_grad_norm, AdamW, Ema};
use ddpm::params::Params;
use ddpm::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The binary's allocator, so the numbers match `ddpm bench` (see `ddpm::alloc`).
#[global_allocator]
static ALLOC: ddpm::alloc::CachingAlloc = ddpm::alloc::CachingAlloc;

fn bench_train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_base64");
    group.sample_size(10);
    for batch in [32usize, 128] {
        let mut rng = StdRng::seed_from_u64(0);
        let mut params = Params::new();
        let model = UNet::new(UNetConfig::default(), &mut params, &mut rng).unwrap();
        let mut opt = AdamW::new(&params, 2e-4);
        let mut ema = Ema::new(&params, 0.9999, false);
        let x: Vec<f32> = (0..batch * 1024).map(|_| rng.random_range(-1.0..1.0)).collect();
        let noise: Vec<f32> = (0..batch * 1024).map(|_| rng.random_range(-1.0..1.0)).collect();
        let t: Vec<usize> = (0..batch).map(|_| rng.random_range(0..1000)).collect();
        group.bench_function(format!("batch{batch}"), |b| {
            b.iter(|| {
                let mut tape = Tape::new(&params);
                let xv = tape.input(Tensor::new(&[batch, 1, 32, 32], x.clone()).unwrap());
                let nv = tape.input(Tensor::new(&[batch, 1, 32, 32], noise.clone()).unwrap());
                let eps = model.forward(&mut tape, xv, &t).unwrap();
                let loss = tape.mse(eps, nv).unwrap();
                let mut grads = tape.backward(loss).unwrap();
                clip_grad_norm(&mut grads, 1.0).unwrap();
                opt.step(&mut params, &grads).unwrap();
                ema.update(&params).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_train_step);
criterion_main!(benches);
