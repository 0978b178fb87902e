//! A training run killed with SIGKILL at random moments (between steps, inside a step, or while a checkpoint is
//! being written) always leaves a loadable last checkpoint, and resuming from it ends bit-identical to the run that
//! was never interrupted: the same final checkpoint bytes and the same `log.csv`.
//!
//! The moments come from a fixed-seed RNG, so the test is the same on every run; they are spread over the part of
//! the run that has checkpoints (a kill before the first one leaves nothing to resume, by design).

mod common;

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Kills per test run.
const KILLS: usize = 20;

/// A tiny training run into `out` that checkpoints every 2 steps, so most moments fall near a checkpoint write;
/// or, with `resume`, that run continued in place from a checkpoint (which fixes the model and batch flags).
fn train(out: &Path, resume: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ddpm"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.args(["train", "--device", "cpu", "--max-steps", "40", "--save-every", "2", "--keep", "2"]);
    c.args(["--eval-n", "0", "--sample-n", "2"]);
    match resume {
        Some(ckpt) => c.args(["--resume", ckpt.to_str().unwrap()]),
        None => {
            c.args(["--base", "8", "--t-dim", "4", "--batch", "8", "--timesteps", "50", "--out", out.to_str().unwrap()])
        }
    };
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn succeeds(out: Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The temporary files of atomic writes in `dir` (`.NAME.tmp-PID-N`).
fn temps(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names.filter(|n| n.contains(".tmp-")).collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-kill-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn sigkill_at_random_moments_never_loses_the_run() {
    let dir = scratch("runs");
    // The uninterrupted run, and how long its checkpointed part takes.
    let reference = dir.join("reference");
    let mut child = train(&reference, None).spawn().unwrap();
    let ckpt = reference.join("checkpoint.safetensors");
    while !ckpt.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the reference run ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(2));
    }
    let first_checkpoint = Instant::now();
    succeeds(child.wait_with_output().unwrap(), "reference run");
    let window = first_checkpoint.elapsed();
    let want = std::fs::read(&ckpt).unwrap();
    let want_log = common::without_times(&std::fs::read_to_string(reference.join("log.csv")).unwrap());

    let mut rng = StdRng::seed_from_u64(20);
    let (mut mid_run, mut mid_write) = (0, 0);
    for k in 0..KILLS {
        let run = dir.join(format!("killed-{k}"));
        let mut child = train(&run, None).spawn().unwrap();
        let ckpt = run.join("checkpoint.safetensors");
        while !ckpt.exists() {
            assert!(child.try_wait().unwrap().is_none(), "kill {k}: the run ended before its first checkpoint");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(window.mul_f64(rng.random_range(0.0..1.0)));
        // SIGKILL: no handler runs, so whatever the run was doing stops mid-way.
        if child.try_wait().unwrap().is_none() {
            mid_run += 1;
            child.kill().unwrap();
        }
        child.wait().unwrap();
        // A temporary file at this moment means the kill landed inside a checkpoint (or log) write.
        mid_write += temps(&run).len().min(1);

        let state = ddpm::checkpoint::load_train_state(&ckpt)
            .unwrap_or_else(|e| panic!("kill {k}: the last checkpoint does not load: {e}"));
        ddpm::checkpoint::check_state_finite(&state).unwrap();
        succeeds(train(&run, Some(&ckpt)).output().unwrap(), &format!("kill {k}: resume"));
        assert!(std::fs::read(&ckpt).unwrap() == want, "kill {k} (at step {}): final checkpoint differs", state.step);
        let log = common::without_times(&std::fs::read_to_string(run.join("log.csv")).unwrap());
        assert_eq!(log, want_log, "kill {k}: log.csv differs");
        let leftovers = temps(&run);
        assert!(leftovers.is_empty(), "kill {k}: temporary files left behind: {leftovers:?}");
    }
    // Most moments must land inside the run, or the test proves little.
    assert!(mid_run >= KILLS / 2, "only {mid_run} of {KILLS} kills landed before the run ended");
    eprintln!(
        "{mid_run} of {KILLS} SIGKILLs landed mid-run ({mid_write} inside a file write); every run resumed to the \
         uninterrupted run's bytes"
    );
    std::fs::remove_dir_all(&dir).ok();
}
