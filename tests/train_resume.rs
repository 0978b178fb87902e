//! Training determinism: the same seed gives the same run, and a run resumed from a checkpoint at step k has, at
//! step k+m, the same parameters, EMA and optimiser state bit for bit as the run that was never interrupted; and
//! the number of CPU threads does not change a run.

use ddpm::checkpoint::{load_train_state, save};
use ddpm::diffusion::Schedule;
use ddpm::nn::UNetConfig;
use ddpm::train::{Batcher, RunConfig, TrainState};
use ddpm::Tensor;

fn tiny_config() -> RunConfig {
    RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4 },
        batch: 4,
        ema_warmup: true,
        seed: 11,
        ..RunConfig::seed_recipe()
    }
}

/// 18 synthetic 8x8 images: 4 full batches per epoch (drop_last leaves 2 out).
fn images() -> Tensor {
    let data = (0..18 * 64).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::new(&[18, 1, 8, 8], data).unwrap()
}

fn run_steps(state: &mut TrainState, batcher: &mut Batcher, sched: &Schedule, imgs: &Tensor, upto: u64) -> Vec<f32> {
    let mut losses = Vec::new();
    while state.step < upto {
        let x0 = batcher.batch(imgs, state.step);
        losses.push(state.train_step(sched, &x0).unwrap().loss);
    }
    losses
}

fn assert_same(a: &TrainState, b: &TrainState) {
    assert_eq!(a.step, b.step);
    assert_eq!(a.opt.step, b.opt.step);
    assert_eq!(a.ema.updates, b.ema.updates);
    for (i, (name, p)) in a.params.iter().enumerate() {
        assert!(p.data() == b.params.tensors()[i].data(), "{name} differs");
        assert!(a.ema.shadow[i].data() == b.ema.shadow[i].data(), "ema {name} differs");
        assert!(a.opt.exp_avg[i].data() == b.opt.exp_avg[i].data(), "exp_avg {name} differs");
        assert!(a.opt.exp_avg_sq[i].data() == b.opt.exp_avg_sq[i].data(), "exp_avg_sq {name} differs");
    }
}

#[test]
fn resume_continues_bit_for_bit_across_an_epoch_boundary() {
    let (imgs, sched) = (images(), Schedule::linear(1000, 1e-4, 2e-2).unwrap());
    let mut straight = TrainState::new(tiny_config()).unwrap();
    let mut b1 = Batcher::new(18, 4, 11).unwrap();
    let losses = run_steps(&mut straight, &mut b1, &sched, &imgs, 7);

    let mut first = TrainState::new(tiny_config()).unwrap();
    let mut b2 = Batcher::new(18, 4, 11).unwrap();
    let mut resumed_losses = run_steps(&mut first, &mut b2, &sched, &imgs, 3);
    let dir = std::env::temp_dir().join(format!("ddpm-resume-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    save(&first, &path).unwrap();
    drop(first);
    let mut resumed = load_train_state(&path).unwrap();
    let mut b3 = Batcher::new(18, 4, 11).unwrap(); // a fresh batcher, as after a restart
    resumed_losses.extend(run_steps(&mut resumed, &mut b3, &sched, &imgs, 7));
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(losses, resumed_losses, "per-step losses");
    assert_same(&straight, &resumed);
    assert_eq!(resumed.config, tiny_config());
}

#[test]
fn different_seeds_differ_and_training_reduces_the_loss() {
    let (imgs, sched) = (images(), Schedule::linear(1000, 1e-4, 2e-2).unwrap());
    let mut a = TrainState::new(RunConfig { lr: 3e-3, ..tiny_config() }).unwrap();
    let mut b = TrainState::new(RunConfig { seed: 12, ..tiny_config() }).unwrap();
    let mut ba = Batcher::new(18, 4, 11).unwrap();
    let mut bb = Batcher::new(18, 4, 12).unwrap();
    let la = run_steps(&mut a, &mut ba, &sched, &imgs, 60);
    let lb = run_steps(&mut b, &mut bb, &sched, &imgs, 2);
    assert_ne!(la[..2], lb[..], "seeds 11 and 12 gave the same losses");
    // The loss is noisy per step (t and the noise are random); compare means of the first and last 15 steps.
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    assert!(
        mean(&la[45..]) < 0.8 * mean(&la[..15]),
        "loss did not fall: {:?} -> {:?}",
        mean(&la[..15]),
        mean(&la[45..])
    );
}

#[test]
fn batcher_is_a_permutation_per_epoch_with_drop_last() {
    let mut b = Batcher::new(18, 4, 3).unwrap();
    assert_eq!(b.steps_per_epoch(), 4);
    for epoch in 0..2u64 {
        let mut seen: Vec<usize> = (0..4).flat_map(|j| b.indices(epoch * 4 + j).to_vec()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 16, "16 distinct images per epoch");
    }
    let (e0, e1) = (b.indices(0).to_vec(), b.indices(4).to_vec());
    assert_ne!(e0, e1, "each epoch is shuffled anew");
    assert!(Batcher::new(3, 4, 0).is_err());
}

#[test]
fn training_is_bit_identical_across_thread_counts() {
    // 32x32 images, so that the convs have several pixel bands and GEMMs to share out between threads.
    let data = (0..8 * 1024).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let imgs = Tensor::new(&[8, 1, 32, 32], data).unwrap();
    let sched = Schedule::linear(1000, 1e-4, 2e-2).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut state = TrainState::new(tiny_config()).unwrap();
            let mut batcher = Batcher::new(8, 4, 11).unwrap();
            run_steps(&mut state, &mut batcher, &sched, &imgs, 3);
            state
        })
    };
    assert_same(&run(1), &run(3));
}
