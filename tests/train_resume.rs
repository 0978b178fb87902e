//! Training determinism: the same seed gives the same run, and a run resumed from a checkpoint at step k has, at
//! step k+m, the same parameters, EMA and optimiser state bit for bit as the run that was never interrupted; and
//! the number of CPU threads does not change a run. Every run here is driven by the library's `Trainer`, which
//! also writes and resumes a run folder the way `ddpm train` does.

mod common;

use ddpm::checkpoint::{load_train_state, save};
use ddpm::diffusion::ScheduleKind;
use ddpm::nn::UNetConfig;
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::train::{
    Batcher, CheckpointPolicy, EpochSummary, LogRow, Observer, RunConfig, RunDir, RunEnd, RunLog, TrainState, Trainer,
};
use ddpm::Tensor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn tiny_config() -> RunConfig {
    RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 },
        batch: 4,
        ema_warmup: true,
        seed: 11,
        ..RunConfig::reference_recipe()
    }
}

/// 18 synthetic 8x8 images: 4 full batches per epoch (drop_last leaves 2 out).
fn images() -> Tensor {
    let data = (0..18 * 64).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::new(&[18, 1, 8, 8], data).unwrap()
}

/// A trainer without an output folder: it only trains.
fn trainer(config: RunConfig, imgs: &Tensor) -> Trainer {
    Trainer::new(TrainState::new(config).unwrap(), imgs.clone()).unwrap()
}

fn run_steps(trainer: &mut Trainer, upto: u64) -> Vec<f32> {
    let mut losses = Vec::new();
    while trainer.state().step < upto {
        losses.extend(trainer.step(&mut ()).unwrap().iter().map(|r| r.stats.loss));
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
    let imgs = images();
    let mut straight = trainer(tiny_config(), &imgs);
    let losses = run_steps(&mut straight, 7);

    let mut first = trainer(tiny_config(), &imgs);
    let mut resumed_losses = run_steps(&mut first, 3);
    let dir = std::env::temp_dir().join(format!("ddpm-resume-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    save(first.state(), &path).unwrap();
    drop(first);
    // A fresh trainer (and so a fresh batcher), as after a restart.
    let mut resumed = Trainer::new(load_train_state(&path).unwrap(), imgs.clone()).unwrap();
    resumed_losses.extend(run_steps(&mut resumed, 7));
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(losses, resumed_losses, "per-step losses");
    assert_same(straight.state(), resumed.state());
    assert_eq!(resumed.state().config, tiny_config());
}

#[test]
fn checkpoints_of_the_same_state_are_byte_identical() {
    let imgs = images();
    let mut a = trainer(tiny_config(), &imgs);
    run_steps(&mut a, 2);
    let mut b = trainer(tiny_config(), &imgs);
    run_steps(&mut b, 2);
    let dir = std::env::temp_dir().join(format!("ddpm-ckpt-bytes-{}", std::process::id()));
    let paths = [dir.join("a1.safetensors"), dir.join("a2.safetensors"), dir.join("b.safetensors")];
    save(a.state(), &paths[0]).unwrap();
    save(a.state(), &paths[1]).unwrap();
    save(b.state(), &paths[2]).unwrap();
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    std::fs::remove_dir_all(&dir).ok();
    assert!(bytes[0] == bytes[1], "two saves of one state differ");
    assert!(bytes[0] == bytes[2], "saves of two identical runs differ");
    // The metadata comes first in the header, in key order.
    let header_len = u64::from_le_bytes(bytes[0][..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[0][8..8 + header_len]).unwrap();
    assert!(header.starts_with(r#"{"__metadata__":{"adam_step":"2","base":"8","batch":"4","#), "{header}");
}

#[test]
fn different_seeds_differ_and_training_reduces_the_loss() {
    let imgs = images();
    let mut a = trainer(RunConfig { lr: 3e-3, ..tiny_config() }, &imgs);
    let mut b = trainer(RunConfig { seed: 12, ..tiny_config() }, &imgs);
    let la = run_steps(&mut a, 60);
    let lb = run_steps(&mut b, 2);
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
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut trainer = trainer(tiny_config(), &imgs);
            run_steps(&mut trainer, 3);
            trainer.into_state()
        })
    };
    assert_same(&run(1), &run(3));
}

/// Records what a run reports, one line per event.
#[derive(Default)]
struct Recorder(Vec<String>);

impl Observer for Recorder {
    fn step_done(&mut self, row: &LogRow) {
        self.0.push(format!("step {} of epoch {}", row.step, row.epoch));
    }
    fn epoch_done(&mut self, e: &EpochSummary) {
        self.0.push(format!("epoch {} ends at {}/{} after {} steps", e.epoch, e.step, e.total, e.steps));
    }
    fn final_ddpm_grid(&mut self, timesteps: usize) {
        self.0.push(format!("DDPM-{timesteps}"));
    }
}

#[test]
fn trainer_writes_a_run_folder_and_resumes_it_exactly() {
    // 8 images of 32x32 (what the samplers draw), batch 4: 2 steps per epoch; T = 10 keeps the grids cheap.
    let data = (0..8 * 1024).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let imgs = Tensor::new(&[8, 1, 32, 32], data).unwrap();
    let config = RunConfig { timesteps: 10, max_steps: Some(3), ..tiny_config() };
    let root = std::env::temp_dir().join(format!("ddpm-trainer-{}", std::process::id()));
    let (a, b) = (root.join("a"), root.join("b"));

    let mut straight = trainer(config.clone(), &imgs);
    straight.write_into(RunDir::create(&a).unwrap(), 4).unwrap();
    let mut events = Recorder::default();
    straight.run(&mut events).unwrap();
    assert_eq!(
        events.0,
        [
            "step 1 of epoch 0",
            "epoch 0 ends at 2/3 after 2 steps",
            "step 2 of epoch 0",
            "epoch 1 ends at 3/3 after 1 steps",
            "step 3 of epoch 1",
            "DDPM-10"
        ]
    );
    for f in ["checkpoint.safetensors", "log.csv", "samples_epoch000.png", "samples_ddim.png", "samples_ddpm.png"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    assert!(!a.join("samples_epoch001.png").exists(), "epoch 1 did not end");

    // The same run stopped after epoch 0, then continued from its checkpoint in its own folder.
    let mut first = trainer(RunConfig { max_steps: Some(2), ..config.clone() }, &imgs);
    let dir = RunDir::create(&b).unwrap();
    assert!(!dir.holds_run());
    first.write_into(dir.clone(), 4).unwrap();
    first.run(&mut ()).unwrap();
    assert!(dir.holds_run());
    let mut state = load_train_state(&dir.checkpoint()).unwrap();
    state.config.max_steps = Some(3);
    let mut resumed = Trainer::new(state, imgs.clone()).unwrap();
    resumed.write_into(dir, 4).unwrap();
    resumed.run(&mut ()).unwrap();

    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let log = String::from_utf8(read(&a.join("log.csv"))).unwrap();
    assert!(log.starts_with("step,epoch,loss,grad_norm,lr,unix_time,fid\n") && log.lines().count() == 4, "{log}");
    let log_b = String::from_utf8(read(&b.join("log.csv"))).unwrap();
    assert_eq!(common::without_times(&log), common::without_times(&log_b), "the resumed run's log");
    assert_same(&load_train_state(&a.join("checkpoint.safetensors")).unwrap(), resumed.state());
    for f in ["samples_epoch000.png", "samples_ddim.png", "samples_ddpm.png", "loss_curve.png"] {
        assert_eq!(read(&a.join(f)), read(&b.join(f)), "{f}");
    }
    std::fs::remove_dir_all(&root).ok();
}

/// 8 images of 32x32 (what the samplers draw); at batch 4, 2 steps per epoch.
fn images32() -> Tensor {
    let data = (0..8 * 1024).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::new(&[8, 1, 32, 32], data).unwrap()
}

/// A fresh scratch folder for test `name`.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-trainer-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// A trainer of `config` writing grids of 2 images into `dir`, a checkpoint every `every` steps, keeping `keep`.
fn writing_trainer(state: TrainState, dir: &std::path::Path, every: u64, keep: usize) -> Trainer {
    let mut t = Trainer::new(state, images32()).unwrap();
    t.checkpoint_policy(CheckpointPolicy { every, keep }).unwrap();
    t.write_into(RunDir::create(dir).unwrap(), 2).unwrap();
    t
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn checkpoints_come_every_few_steps_and_only_the_newest_are_kept() {
    let root = scratch("keep");
    let config = RunConfig { timesteps: 10, max_steps: Some(7), epochs: 100, ..tiny_config() };
    let mut t = writing_trainer(TrainState::new(config.clone()).unwrap(), &root, 3, 2);
    assert_eq!(t.run(&mut ()).unwrap(), RunEnd::Finished);
    // Every 3 steps and at every epoch end (2 steps) and the run's end: 2, 3, 4, 6, 7; the newest 2 are kept.
    let ckpts: Vec<String> = names(&root).into_iter().filter(|n| n.starts_with("checkpoint")).collect();
    assert_eq!(ckpts, ["checkpoint-6.safetensors", "checkpoint-7.safetensors", "checkpoint.safetensors"]);
    let read = |n: &str| std::fs::read(root.join(n)).unwrap();
    assert_eq!(read("checkpoint.safetensors"), read("checkpoint-7.safetensors"));
    let json = String::from_utf8(read("config.json")).unwrap();
    assert!(json.contains("\"lr\": 0.0002,") && json.contains("\"max_steps\": 7\n"), "{json}");
    // A checkpoint-STEP of the same run's future (left by a resume from an older one) does not count against
    // `keep` until the run passes it.
    let mut state = load_train_state(&root.join("checkpoint-6.safetensors")).unwrap();
    state.config.max_steps = Some(8);
    let mut t = writing_trainer(state, &root, 100, 2);
    t.run(&mut ()).unwrap();
    let ckpts: Vec<String> = names(&root).into_iter().filter(|n| n.starts_with("checkpoint")).collect();
    assert_eq!(ckpts, ["checkpoint-7.safetensors", "checkpoint-8.safetensors", "checkpoint.safetensors"]);
    std::fs::remove_dir_all(&root).ok();
}

/// Sets its flag once step `at` is done, as a signal handler would.
struct StopAt(u64, Arc<AtomicBool>);

impl Observer for StopAt {
    fn step_done(&mut self, row: &LogRow) {
        if row.step == self.0 {
            self.1.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_stop_request_writes_a_checkpoint_and_the_resumed_run_ends_as_the_uninterrupted_one() {
    let (a, b) = (scratch("stop-a"), scratch("stop-b"));
    let config = RunConfig { timesteps: 10, max_steps: Some(5), ..tiny_config() };
    let mut straight = writing_trainer(TrainState::new(config.clone()).unwrap(), &a, 100, 3);
    straight.run(&mut ()).unwrap();

    // Stopped after step 3 (mid-epoch, between checkpoints): it writes checkpoint 3 and nothing more.
    let mut first = writing_trainer(TrainState::new(config.clone()).unwrap(), &b, 100, 3);
    let flag = Arc::new(AtomicBool::new(false));
    first.stop_when(flag.clone());
    assert_eq!(first.run(&mut StopAt(3, flag)).unwrap(), RunEnd::Stopped { step: 3 });
    assert!(!b.join("samples_ddpm.png").exists());
    let state = load_train_state(&b.join("checkpoint.safetensors")).unwrap();
    assert_eq!(state.step, 3);
    // Rows written after the checkpoint (a run killed later) are cut off on resume.
    let mut log = std::fs::read_to_string(b.join("log.csv")).unwrap();
    log.push_str("4,1,9,9,0.0002,0.0,\n");
    std::fs::write(b.join("log.csv"), log).unwrap();
    let mut resumed = writing_trainer(state, &b, 100, 3);
    assert_eq!(resumed.run(&mut ()).unwrap(), RunEnd::Finished);
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let log = |p: std::path::PathBuf| common::without_times(&String::from_utf8(read(p)).unwrap());
    assert_eq!(log(a.join("log.csv")), log(b.join("log.csv")), "the resumed run's log");
    assert_eq!(read(a.join("checkpoint.safetensors")), read(b.join("checkpoint.safetensors")));
    assert_eq!(read(a.join("samples_ddpm.png")), read(b.join("samples_ddpm.png")));
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
}

#[test]
fn a_diverging_run_stops_with_an_error_and_writes_no_non_finite_checkpoint() {
    let root = scratch("nan");
    let config = RunConfig { timesteps: 10, lr: 1e30, max_steps: Some(20), epochs: 100, ..tiny_config() };
    let mut t = writing_trainer(TrainState::new(config).unwrap(), &root, 1, 100);
    let err = t.run(&mut ()).unwrap_err().to_string();
    assert!(err.contains("training diverged at step") && err.contains("lower learning rate"), "{err}");
    let ckpts: Vec<_> = names(&root).into_iter().filter(|n| n.starts_with("checkpoint-")).collect();
    for name in &ckpts {
        let state = load_train_state(&root.join(name)).unwrap();
        ddpm::checkpoint::check_state_finite(&state).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let last = load_train_state(&root.join("checkpoint.safetensors")).map(|s| s.step).unwrap_or(0);
    assert!(err.contains(&format!("step {}", last + 1)) || err.contains(&format!("of step {last}")), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_new_run_refuses_a_folder_with_a_run_or_its_leftovers() {
    let root = scratch("leftovers");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("notes.txt"), "mine").unwrap();
    assert!(RunDir::for_new_run(&root).is_ok(), "other files are no run");
    std::fs::write(root.join("log.csv"), RunLog::HEADER).unwrap();
    let err = RunDir::for_new_run(&root).unwrap_err().to_string();
    assert!(err.contains("log.csv") && err.contains("no checkpoint"), "{err}");
    std::fs::write(root.join("checkpoint.safetensors"), "").unwrap();
    let err = RunDir::for_new_run(&root).unwrap_err().to_string();
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// A class-conditional run (3 classes, cosine schedule) on `labels`, without an output folder.
fn conditional_trainer(config: &RunConfig, imgs: &Tensor, labels: &[u8]) -> Trainer {
    trainer(config.clone(), imgs).with_labels(labels).unwrap()
}

#[test]
fn a_conditional_run_resumes_bit_for_bit_and_its_checkpoint_records_classes_and_schedule() {
    let imgs = images();
    let config = RunConfig {
        model: UNetConfig { classes: 3, ..tiny_config().model },
        schedule: ScheduleKind::Cosine,
        ..tiny_config()
    };
    let labels: Vec<u8> = (0..18).map(|i| (i % 3) as u8).collect();
    let mut straight = conditional_trainer(&config, &imgs, &labels);
    let losses = run_steps(&mut straight, 7);
    let other_labels: Vec<u8> = labels.iter().map(|l| 2 - l).collect();
    let other = run_steps(&mut conditional_trainer(&config, &imgs, &other_labels), 7);
    assert_ne!(losses, other, "the labels take part in training");

    let mut first = conditional_trainer(&config, &imgs, &labels);
    let mut resumed_losses = run_steps(&mut first, 3);
    let dir = std::env::temp_dir().join(format!("ddpm-resume-cond-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    save(first.state(), &path).unwrap();
    let loaded = load_train_state(&path).unwrap();
    assert_eq!(loaded.config, config, "classes and schedule round-trip through the checkpoint");
    let mut resumed = Trainer::new(loaded, imgs.clone()).unwrap().with_labels(&labels).unwrap();
    resumed_losses.extend(run_steps(&mut resumed, 7));
    assert_eq!(losses, resumed_losses, "per-step losses");
    assert_same(straight.state(), resumed.state());

    // Without its labels a conditional run cannot take a step; labels outside its classes are refused.
    assert!(trainer(config.clone(), &imgs).step(&mut ()).is_err());
    assert!(trainer(config.clone(), &imgs).with_labels(&[3; 18]).is_err());
    assert!(trainer(config.clone(), &imgs).with_labels(&labels[1..]).is_err());

    // A checkpoint older than the two fields: unconditional, linear schedule.
    save(&TrainState::new(tiny_config()).unwrap(), &path).unwrap();
    let f = read_tensors(&path).unwrap();
    let tensors = f.f32_with_prefix("");
    let named: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let mut meta: BTreeMap<String, String> = f.metadata.clone().into_iter().collect();
    assert!(meta.remove("classes").is_some() && meta.remove("schedule").is_some());
    write_tensors(&path, &named, Some(meta)).unwrap();
    let old = load_train_state(&path).unwrap();
    assert_eq!((old.config.model.classes, old.config.schedule), (0, ScheduleKind::Linear));
    std::fs::remove_dir_all(&dir).ok();
}
