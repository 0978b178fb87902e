//! One training step of the reference's UNet on the CPU (batch gather, q_sample, forward, backward, clip, AdamW, EMA)
//! through the library's `Trainer`, base 64, at batch 32 and 128: `cargo bench --bench train_step`.

use criterion::{criterion_group, criterion_main, Criterion};
use ddpm::train::{RunConfig, TrainState, Trainer};
use ddpm::{rng, Tensor};

/// The binary's allocator, so the numbers match `ddpm bench` (see `ddpm::alloc`).
#[global_allocator]
static ALLOC: ddpm::alloc::CachingAlloc = ddpm::alloc::CachingAlloc;

fn bench_train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step_base64");
    group.sample_size(10);
    for batch in [32usize, 128] {
        // One batch of synthetic images in [-1, 1]; enough epochs that criterion never reaches the run's end.
        let mut images = Tensor::zeros(&[batch, 1, 32, 32]);
        rng::fill_normal(1, 0, images.data_mut());
        images.data_mut().iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
        let config = RunConfig { batch, epochs: 1 << 30, ..RunConfig::reference_recipe() };
        let mut trainer = Trainer::new(TrainState::new(config).unwrap(), images).unwrap();
        group.bench_function(format!("batch{batch}"), |b| b.iter(|| trainer.step(&mut ()).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, bench_train_step);
criterion_main!(benches);
