//! The `ddpm` binary end to end: a tiny training run, resuming it, sampling from it and from a plain PyTorch state
//! dict (against the golden DDIM trajectory), and bad input of every kind as a short error with a non-zero exit,
//! never a panic and never a partly written output file.

mod common;

use common::cli::{ddpm, s, scratch};
use std::path::Path;
use std::process::{Command, Output};

/// Asserts a clean failure: non-zero exit, an `error:` line containing `needle`, no panic.
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "stderr should contain {needle:?}: {err}");
}

#[test]
fn train_resume_and_sample_tiny_run() {
    let dir = scratch("run");
    let out = dir.join("run");
    let base = [
        "train",
        "--device",
        "cpu",
        "--base",
        "8",
        "--t-dim",
        "4",
        "--batch",
        "8",
        "--timesteps",
        "50",
        "--sample-n",
        "4",
        "--eval-n",
        "16",
        "--out",
        s(&out),
    ];
    let r = ddpm(&[&base[..], &["--max-steps", "3"]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // FID is measured at the end of training (and of each epoch) and logged in the last column.
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    assert!(log.starts_with("step,epoch,loss,grad_norm,lr,unix_time,fid\n"), "{log}");
    let fid: f64 =
        log.lines().last().unwrap().rsplit(',').next().unwrap().parse().expect("a FID on the last step's row");
    assert!(fid.is_finite() && fid > 0.0, "{log}");
    for f in ["checkpoint.safetensors", "log.csv", "samples_ddim.png", "samples_ddpm.png", "loss_curve.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ckpt = out.join("checkpoint.safetensors");
    // Training again into the same folder without --resume would overwrite the run: refused.
    fails_with(&ddpm(&[&base[..], &["--max-steps", "3"]].concat()), "already holds a run");
    // Resume to step 5: two more log lines; changing the run's settings is refused.
    let r = ddpm(&[
        "train",
        "--device",
        "cpu",
        "--resume",
        s(&ckpt),
        "--max-steps",
        "5",
        "--sample-n",
        "4",
        "--out",
        s(&out),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 5, "header + 5 steps:\n{log}");
    assert!(log.lines().nth(5).unwrap().starts_with("5,"));
    fails_with(&ddpm(&["train", "--resume", s(&ckpt), "--lr", "1", "--out", s(&out)]), "cannot change when resuming");

    let png = dir.join("s.png");
    let r = ddpm(&["sample", "--checkpoint", s(&ckpt), "--steps", "5", "--n", "3", "--out", s(&png)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(png.exists());
    let st = dir.join("s.safetensors");
    let r = ddpm(&["sample", "--checkpoint", s(&ckpt), "--sampler", "ddpm", "--n", "2", "--no-ema", "--out", s(&st)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let samples = ddpm::tensor_file::read_tensors(&st).unwrap();
    let t = samples.f32("samples").unwrap();
    assert_eq!(t.shape(), &[2, 1, 32, 32]);
    assert!(t.data().iter().all(|v| (-1.0..=1.0).contains(v)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sampling_a_pytorch_state_dict_reproduces_the_reference_trajectory() {
    let dir = scratch("torch");
    let steps = common::golden("steps.safetensors");
    let noise_file = dir.join("noise.safetensors");
    ddpm::tensor_file::write_tensors(&noise_file, &[("noise".into(), steps.f32("traj.ddim10.xT").unwrap())], None)
        .unwrap();
    let out = dir.join("out.safetensors");
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/weights.safetensors");
    let r =
        ddpm(&["sample", "--checkpoint", s(&weights), "--steps", "10", "--noise", s(&noise_file), "--out", s(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ours = ddpm::tensor_file::read_tensors(&out).unwrap();
    // The same bound as tests/sampling.rs (README: 5e-4 over the 11-step trajectory).
    common::assert_close(
        "traj.ddim10.out via CLI",
        ours.f32("samples").unwrap().data(),
        steps.f32("traj.ddim10.out").unwrap().data(),
        5e-4,
        0.0,
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `ddpm sample --sampler dpm++2m` and `dpm++2m-sde` end to end on the golden (base 16) weights: exactly --steps
/// network calls, images of the right shape, in [-1, 1] with the clamp; `--help` explains the new flags.
#[test]
fn dpm_solver_samples_end_to_end() {
    let dir = scratch("dpm");
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/weights.safetensors");
    let runs: [&[&str]; 2] = [
        &["--sampler", "dpm++2m", "--steps", "4"],
        &["--sampler", "dpm++2m-sde", "--steps", "3", "--spacing", "uniform-t", "--no-clamp"],
    ];
    for (i, flags) in runs.into_iter().enumerate() {
        let out = dir.join(format!("dpm{i}.safetensors"));
        let base = ["sample", "--device", "cpu", "--checkpoint", s(&weights), "--n", "2", "--out", s(&out)];
        let r = ddpm(&[&base[..], flags].concat());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{flags:?}: {err}");
        assert!(err.contains(&format!("{} network calls", flags[3])), "{flags:?}: {err}");
        let samples = ddpm::tensor_file::read_tensors(&out).unwrap();
        let t = samples.f32("samples").unwrap();
        assert_eq!(t.shape(), &[2, 1, 32, 32]);
        assert!(t.data().iter().all(|v| v.is_finite()), "{flags:?}");
        if !flags.contains(&"--no-clamp") {
            assert!(t.data().iter().all(|v| (-1.0..=1.0).contains(v)), "{flags:?}");
        }
    }
    let help = String::from_utf8_lossy(&ddpm(&["sample", "--help"]).stdout).into_owned();
    for needle in ["dpm++2m", "dpm++2m-sde", "--spacing", "uniform-t", "logsnr", "--no-clamp"] {
        assert!(help.contains(needle), "sample --help should mention {needle}: {help}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `ddpm sample` of a PyTorch-trained checkpoint from PyTorch's noise (tests/golden/trained-*, made by
/// pytorch/make_trained_golden.py), DDIM-20, against PyTorch's f32 output: on the CPU and on the emulator in f32
/// within 2e-3 (f32 arithmetic in other orders, amplified along the 21-step trajectory), and on the emulator in
/// bf16 no farther from it than twice PyTorch's own bf16 autocast is (its max and mean abs difference, recorded
/// in the fixture: about 0.11 and 0.0046). Twice, because the two round in different places: autocast also
/// rounds every conv's output to bf16, which we keep in f32.
#[test]
fn sampling_a_pytorch_trained_checkpoint_on_the_emulator_in_f32_and_bf16() {
    let dir = scratch("emu-sample");
    let fixture =
        ddpm::tensor_file::read_tensors(&common::repo_path("tests/golden/trained-ddim20.safetensors")).unwrap();
    let noise_file = dir.join("noise.safetensors");
    ddpm::tensor_file::write_tensors(&noise_file, &[("noise".into(), fixture.f32("xT").unwrap())], None).unwrap();
    let weights = common::repo_path("tests/golden/trained-weights.safetensors");
    let reference = fixture.f32("out.fp32").unwrap();
    let torch_bf16 = fixture.f32("torch_bf16_err").unwrap().data().to_vec();
    // `ddpm sample` of DDIM-20 from the fixture's noise on `device` in `precision` (with `extra` flags): the samples.
    let sample = |device: &str, precision: &str, extra: &[&str]| {
        let out = dir.join(format!("{device}-{precision}{}.safetensors", extra.concat()));
        let args = ["sample", "--device", device, "--precision", precision, "--checkpoint", s(&weights)];
        let r = ddpm(&[&args[..], &["--steps", "20", "--noise", s(&noise_file), "--out", s(&out)], extra].concat());
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        ddpm::tensor_file::read_tensors(&out).unwrap().f32("samples").unwrap().clone()
    };
    let mut emu_bf16 = None;
    for (device, precision, max_abs, mean_abs) in [
        ("cpu", "fp32", 2e-3, 2e-3),
        ("emu", "fp32", 2e-3, 2e-3),
        ("emu", "bf16", 2.0 * torch_bf16[0], 2.0 * torch_bf16[1]),
    ] {
        let ours = sample(device, precision, &[]);
        let what = format!("DDIM-20 of the trained checkpoint on {device} in {precision}");
        let c = common::assert_close(&what, ours.data(), reference.data(), max_abs, 0.0);
        eprintln!("{what}: max abs {:.2e}, mean abs {:.2e}", c.max_abs, c.mean_abs);
        assert!(c.mean_abs <= mean_abs, "{what}: mean abs error {:.3e} over {mean_abs:e}", c.mean_abs);
        if (device, precision) == ("emu", "bf16") {
            emu_bf16 = Some(ours);
        }
    }
    // On the emulator the sampler captured one step and replayed it; step by step (--no-graphs), the same bits.
    let bits = |t: &ddpm::Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let plain = sample("emu", "bf16", &["--no-graphs"]);
    assert!(bits(&plain) == bits(&emu_bf16.unwrap()), "--no-graphs differs");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bf16_on_the_cpu_is_refused_before_any_work() {
    let dir = scratch("cpu-bf16");
    let out = dir.join("s.png");
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/weights.safetensors");
    let r = ddpm(&["sample", "--device", "cpu", "--precision", "bf16", "--checkpoint", s(&weights), "--out", s(&out)]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--precision bf16") && err.contains("no bf16 path"), "{err}");
    assert!(!out.exists(), "nothing is written");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn recipe_reference_is_also_accepted_as_seed() {
    // Both spellings parse: the run then stops at the resume check, which refuses any --recipe, before it reads
    // the (missing) checkpoint. An unknown recipe is refused by the parser instead.
    let missing = std::env::temp_dir().join(format!("ddpm-cli-{}-no-such-checkpoint", std::process::id()));
    for recipe in ["reference", "seed", "cpu"] {
        let r = ddpm(&["train", "--device", "cpu", "--recipe", recipe, "--resume", s(&missing)]);
        fails_with(&r, "--recipe cannot change when resuming");
    }
    fails_with(&ddpm(&["train", "--device", "cpu", "--recipe", "bogus"]), "invalid value 'bogus'");
    // --help names the recipe `reference` only; `seed` stays a hidden alias.
    let help = String::from_utf8_lossy(&ddpm(&["train", "-h"]).stdout).into_owned();
    assert!(help.contains("[possible values: reference, cpu]"), "{help}");
}

#[test]
fn bad_input_is_a_clean_error_and_leaves_no_output() {
    let dir = scratch("bad");
    let out = dir.join("x.png");
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/weights.safetensors");
    let w = s(&weights);
    let sample = |extra: &[&str]| ddpm(&[&["sample", "--checkpoint", w, "--out", s(&out)][..], extra].concat());
    fails_with(&sample(&["--steps", "0"]), "DDIM steps must be in 1..=1000");
    fails_with(&sample(&["--steps", "1001"]), "DDIM steps must be in 1..=1000");
    fails_with(&sample(&["--eta", "-0.5"]), "eta must be finite and >= 0");
    fails_with(&sample(&["--n", "0"]), "--n must be at least 1");
    fails_with(&sample(&["--sampler", "ddpm", "--no-clamp"]), "--sampler ddpm has no x̂0 clamp to skip");
    fails_with(&sample(&["--sampler", "ddim", "--spacing", "logsnr"]), "--spacing applies to --sampler dpm++2m");
    fails_with(&sample(&["--sampler", "dpm++2m", "--eta", "1"]), "--eta applies to --sampler ddim only");
    fails_with(&sample(&["--sampler", "dpm++2m", "--steps", "0"]), "DPM-Solver++ steps must be in 1..=1000");
    fails_with(&sample(&["--sampler", "dpm++2m-sde", "--steps", "1001"]), "DPM-Solver++ steps must be in 1..=1000");
    fails_with(&sample(&["--sampler", "dpm++2m", "--spacing", "cosine"]), "invalid value 'cosine'");
    let no_noise = dir.join("nonoise.safetensors");
    ddpm::tensor_file::write_tensors(&no_noise, &[("other".into(), &ddpm::Tensor::zeros(&[1, 1, 32, 32]))], None)
        .unwrap();
    fails_with(&sample(&["--noise", s(&no_noise)]), "no tensor `noise`");
    let bad_shape = dir.join("badshape.safetensors");
    ddpm::tensor_file::write_tensors(&bad_shape, &[("noise".into(), &ddpm::Tensor::zeros(&[2, 1, 28, 28]))], None)
        .unwrap();
    fails_with(&sample(&["--noise", s(&bad_shape)]), "expected [n, 1, 32, 32]");
    fails_with(
        &ddpm(&["sample", "--checkpoint", w, "--out", s(&dir.join("x.jpg"))]),
        "must end in .png or .safetensors",
    );
    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "this is not a checkpoint").unwrap();
    fails_with(&ddpm(&["sample", "--checkpoint", s(&text), "--out", s(&out)]), "not a valid safetensors file");
    fails_with(
        &ddpm(&["sample", "--checkpoint", s(&dir.join("missing.safetensors")), "--out", s(&out)]),
        "missing.safetensors",
    );
    // A state dict with a mis-shaped tensor: the error names it.
    let golden = ddpm::tensor_file::read_tensors(&weights).unwrap();
    let mut tensors: Vec<(String, ddpm::Tensor)> = golden.f32_with_prefix("").into_iter().collect();
    tensors.iter_mut().find(|(n, _)| n == "mid.conv1.bias").unwrap().1 = ddpm::Tensor::zeros(&[63]);
    let refs: Vec<(String, &ddpm::Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let broken = dir.join("broken.safetensors");
    ddpm::tensor_file::write_tensors(&broken, &refs, None).unwrap();
    fails_with(&ddpm(&["sample", "--checkpoint", s(&broken), "--out", s(&out)]), "mid.conv1.bias");
    assert!(!out.exists(), "no output may be written by a failed run");
    fails_with(&ddpm(&["train", "--resume", s(&broken), "--out", s(&dir.join("r"))]), "not a ddpm training checkpoint");

    // Data: a missing folder, a truncated file, a wrong magic.
    fails_with(&ddpm(&["train", "--data", s(&dir.join("nodata")), "--out", s(&dir.join("r1"))]), "nodata");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    for f in ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(mnist.join(f), data.join(f)).unwrap();
    }
    let mut header = vec![0u8, 0, 8, 3, 0, 0, 0xea, 0x60, 0, 0, 0, 28, 0, 0, 0, 28];
    header.extend(vec![0u8; 1000]);
    std::fs::write(data.join("train-images-idx3-ubyte"), &header).unwrap();
    fails_with(&ddpm(&["train", "--data", s(&data), "--out", s(&dir.join("r2"))]), "truncated");
    header[3] = 7;
    std::fs::write(data.join("train-images-idx3-ubyte"), &header).unwrap();
    fails_with(&ddpm(&["train", "--data", s(&data), "--out", s(&dir.join("r3"))]), "train-images-idx3-ubyte");
    fails_with(
        &ddpm(&["train", "--device", "cuda", "--out", s(&dir.join("r4"))]),
        "--device cuda: no usable CUDA device",
    );
    fails_with(&ddpm(&["train", "--base", "12", "--out", s(&dir.join("r5"))]), "base must be a positive multiple of 8");
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes `n` synthetic 28x28 digits and their labels as the raw IDX files of `split` ("train" or "t10k").
fn write_idx(dir: &Path, split: &str, n: u32) {
    let mut images = [&[0u8, 0, 8, 3][..], &n.to_be_bytes(), &28u32.to_be_bytes(), &28u32.to_be_bytes()].concat();
    images.extend((0..n as usize * 784).map(|i| (i * 37 % 251) as u8));
    std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
    let mut labels = [&[0u8, 0, 8, 1][..], &n.to_be_bytes()].concat();
    labels.extend((0..n as u8).map(|i| i % 10));
    std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn train_classifier_is_deterministic_and_checks_its_flags() {
    let dir = scratch("classifier");
    write_idx(&dir, "train", 24);
    write_idx(&dir, "t10k", 10);
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    for out in [&a, &b] {
        let r = ddpm(&[
            "train-classifier",
            "--data",
            s(&dir),
            "--out",
            s(out),
            "--epochs",
            "2",
            "--batch",
            "8",
            "--device",
            "cpu",
            "--seed",
            "3",
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(stdout.contains("epoch 1: mean training loss") && stdout.contains("test accuracy"), "{stdout}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, same weights");
    ddpm::nn::Classifier::load(&a).unwrap();
    let c = dir.join("c.safetensors");
    fails_with(
        &ddpm(&["train-classifier", "--data", s(&dir), "--out", s(&c), "--batch", "0"]),
        "--batch must be at least 1",
    );
    fails_with(&ddpm(&["train-classifier", "--data", s(&dir), "--out", s(&c), "--lr", "0"]), "--lr must be positive");
    fails_with(
        &ddpm(&["train-classifier", "--data", s(&dir), "--out", s(&c), "--batch", "32", "--device", "cpu"]),
        "batch size 32",
    );
    fails_with(&ddpm(&["train-classifier", "--data", s(&dir.join("none")), "--out", s(&c)]), "none");
    assert!(!c.exists(), "no weights from a failed run");
    std::fs::remove_dir_all(&dir).ok();
}

/// `ddpm train` of a tiny model (base 8, T = 50, grids of 4) on data/mnist into `out`, with `extra` flags.
fn tiny_train(out: &Path, extra: &[&str]) -> Output {
    let base = ["train", "--device", "cpu", "--base", "8", "--t-dim", "4", "--batch", "8", "--timesteps", "50"];
    ddpm(&[&base[..], &["--sample-n", "4", "--out", s(out)], extra].concat())
}

fn succeeds(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_resumed_run_in_place_or_in_a_new_folder_logs_what_the_uninterrupted_run_logs() {
    let dir = scratch("inplace");
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    succeeds(&tiny_train(&a, &["--max-steps", "6", "--eval-n", "16"]));
    // Stopped at step 3 by --max-steps (which measures FID there), then continued in its own folder.
    succeeds(&tiny_train(&b, &["--max-steps", "3", "--eval-n", "16"]));
    let ckpt3 = b.join("checkpoint-3.safetensors");
    let resume = ["train", "--device", "cpu", "--sample-n", "4", "--eval-n", "16", "--max-steps", "6", "--resume"];
    let stdout = succeeds(&ddpm(&[&resume[..], &[s(&b.join("checkpoint.safetensors"))]].concat()));
    assert!(stdout.contains(&format!("output in {}", b.display())), "{stdout}");
    let log = common::without_times(&read(&a.join("log.csv")));
    assert_eq!(log.lines().count(), 7, "{log}");
    assert_eq!(log, common::without_times(&read(&b.join("log.csv"))), "resumed in place");
    assert_eq!(read(&a.join("config.json")), read(&b.join("config.json")));
    // From step 3 again, into a new folder: it gets the checkpoint and the log up to step 3.
    succeeds(&ddpm(&[&resume[..], &[s(&ckpt3), "--out", s(&c)]].concat()));
    assert_eq!(log, common::without_times(&read(&c.join("log.csv"))), "resumed into a new folder");
    for f in ["checkpoint-3.safetensors", "checkpoint-6.safetensors", "checkpoint-best.safetensors"] {
        assert!(c.join(f).exists(), "{f} missing");
    }
    assert_eq!(
        std::fs::read(a.join("checkpoint.safetensors")).unwrap(),
        std::fs::read(c.join("checkpoint.safetensors")).unwrap()
    );
    // A folder holding another run is refused, with the commands that work.
    let r = ddpm(&[&resume[..], &[s(&ckpt3), "--out", s(&a)]].concat());
    fails_with(&r, "holds another run");
    fails_with(&r, &format!("`ddpm train --resume {}", a.join("checkpoint.safetensors").display()));
    fails_with(&r, &format!("`ddpm train --resume {} --device cpu --sample-n 4 --eval-n 16`", ckpt3.display()));
    // A folder with a run's leftovers but no checkpoint is refused, for a new run too.
    let d = dir.join("d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("log.csv"), "step,epoch,loss,grad_norm,lr,fid\n").unwrap();
    fails_with(&tiny_train(&d, &["--max-steps", "1"]), "no checkpoint");
    fails_with(&ddpm(&[&resume[..], &[s(&ckpt3), "--out", s(&d)]].concat()), "files of another run");
    assert_eq!(read(&d.join("log.csv")), "step,epoch,loss,grad_norm,lr,fid\n");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_diverging_run_names_the_step_and_leaves_only_finite_checkpoints() {
    let dir = scratch("diverge");
    let out = dir.join("run");
    let r =
        tiny_train(&out, &["--lr", "1e30", "--max-steps", "50", "--save-every", "1", "--keep", "100", "--eval-n", "0"]);
    fails_with(&r, "training diverged at step");
    fails_with(&r, "lower learning rate");
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let state = ddpm::checkpoint::load_train_state(&p).unwrap();
            ddpm::checkpoint::check_state_finite(&state).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `ddpm ARGS` started in the background, its output captured.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run's log has `rows` rows (the run is then past its setup, signal handlers included).
#[cfg(unix)]
fn wait_for_rows(log: &Path, rows: usize, child: &mut std::process::Child) {
    let start = std::time::Instant::now();
    while std::fs::read_to_string(log).map_or(0, |t| t.lines().count()) < rows + 1 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(start.elapsed().as_secs() < 120, "no log rows after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends `signal` ("INT", "TERM") to `child`.
#[cfg(unix)]
fn signal(child: &std::process::Child, signal: &str) {
    let r = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(r.success());
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_and_prints_the_resume_command_and_a_second_one_exits_at_once() {
    let dir = scratch("signal");
    let out = dir.join("run");
    // Explicit --epochs replace the CPU recipe's 11250 steps: 2 epochs of 7500 steps.
    let args = ["train", "--device", "cpu", "--epochs", "2", "--batch", "8", "--base", "8", "--t-dim", "4"];
    let mut child =
        spawn(&[&args[..], &["--timesteps", "50", "--sample-n", "4", "--eval-n", "0", "--out", s(&out)]].concat());
    wait_for_rows(&out.join("log.csv"), 2, &mut child);
    signal(&child, "INT");
    let r = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    fails_with(&r, "interrupted after step");
    assert!(stdout.contains("steps 0..15000"), "{stdout}");
    assert!(read(&out.join("config.json")).contains("\"max_steps\": null"));
    let ckpt = out.join("checkpoint.safetensors");
    let command = format!("ddpm train --resume {} --device cpu --sample-n 4 --eval-n 0", ckpt.display());
    assert!(stdout.contains(&command), "{stdout}");
    let step = ddpm::checkpoint::load_train_state(&ckpt).unwrap().step;
    let log = read(&out.join("log.csv"));
    assert!(log.lines().last().unwrap().starts_with(&format!("{step},")), "checkpoint of step {step}; log:\n{log}");
    // The printed command continues it (here only 2 more steps).
    let more = (step + 2).to_string();
    succeeds(&ddpm(&[&command.split(' ').skip(1).collect::<Vec<_>>()[..], &["--max-steps", &more]].concat()));
    assert_eq!(read(&out.join("log.csv")).lines().count() as u64, step + 3);

    // SIGTERM stops a run the same way.
    let out = dir.join("term");
    let mut child =
        spawn(&[&args[..], &["--timesteps", "50", "--sample-n", "4", "--eval-n", "0", "--out", s(&out)]].concat());
    wait_for_rows(&out.join("log.csv"), 1, &mut child);
    signal(&child, "TERM");
    fails_with(&child.wait_with_output().unwrap(), "interrupted after step");
    assert!(out.join("checkpoint.safetensors").exists());

    // A second Ctrl-C during the step (about a second at base 32, batch 64) exits at once, writing nothing.
    let out = dir.join("twice");
    let args = ["train", "--device", "cpu", "--base", "32", "--batch", "64", "--eval-n", "0", "--out", s(&out)];
    let mut child = spawn(&args);
    wait_for_rows(&out.join("log.csv"), 1, &mut child);
    signal(&child, "INT");
    std::thread::sleep(std::time::Duration::from_millis(20));
    signal(&child, "INT");
    let r = child.wait_with_output().unwrap();
    assert_eq!(r.status.code(), Some(130), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!out.join("checkpoint.safetensors").exists(), "a checkpoint was written");
    std::fs::remove_dir_all(&dir).ok();
}

// `ddpm info` reports what the build embedded (the PTX's ISA version when NVRTC was present, else that there is
// none) and, on a machine without a driver (CI, this test's usual home), says so instead of failing.
#[test]
fn info_reports_the_embedded_ptx_and_the_driver() {
    let out = ddpm(&["info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let isa = text.lines().find(|l| l.starts_with("PTX ISA: ")).unwrap_or_else(|| panic!("no PTX ISA line: {text}"));
    if ddpm::gpu::kernels::PTX_EMBEDDED {
        assert!(isa.contains("; PTX target: sm_"), "{isa}");
        assert!(text.contains("\ndriver can load PTX ISA "), "{text}");
        assert!(text.contains(&format!("cubins: {}", ddpm::gpu::kernels::CUBIN_ARCH)), "{text}");
    } else {
        assert!(isa.contains("none embedded"), "{isa}");
    }
    if ddpm::gpu::cuda::driver_version().is_err() {
        assert!(text.contains("CUDA driver: not available"), "{text}");
        if ddpm::gpu::kernels::PTX_EMBEDDED {
            assert!(text.contains("no driver here"), "{text}");
        }
    }
}

#[test]
fn a_cosine_run_keeps_its_schedule_in_its_checkpoints_and_samples_with_it() {
    let dir = scratch("cosine");
    let run = dir.join("run");
    succeeds(&tiny_train(&run, &["--schedule", "cosine", "--max-steps", "2", "--eval-n", "0"]));
    assert!(read(&run.join("config.json")).contains("\"schedule\": \"cosine\""));
    let ckpt = run.join("checkpoint.safetensors");
    let m = ddpm::checkpoint::load_for_sampling(&ckpt, true).unwrap();
    assert_eq!(m.schedule, ddpm::diffusion::ScheduleKind::Cosine);
    let png = dir.join("s.png");
    let r = ddpm(&["sample", "--checkpoint", s(&ckpt), "--steps", "3", "--n", "2", "--out", s(&png)]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("cosine schedule, T = 50"), "{r:?}");
    succeeds(&r);
    // Resuming may restate the schedule but not change it.
    let resume = |schedule: &str| {
        let flags = ["--resume", s(&ckpt), "--schedule", schedule, "--max-steps", "3", "--sample-n", "4"];
        ddpm(&[&["train", "--device", "cpu", "--eval-n", "0", "--out", s(&run)][..], &flags].concat())
    };
    fails_with(&resume("linear"), "--schedule linear does not match");
    succeeds(&resume("cosine"));
    fails_with(&tiny_train(&dir.join("bad"), &["--schedule", "quadratic"]), "invalid value 'quadratic'");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_class_conditional_run_samples_digits_with_guidance_and_refuses_what_it_cannot_guide() {
    let dir = scratch("conditional");
    let run = dir.join("run");
    succeeds(&tiny_train(&run, &["--classes", "--max-steps", "2", "--eval-n", "0"]));
    assert!(read(&run.join("config.json")).contains("\"classes\": 10"));
    let ckpt = run.join("checkpoint.safetensors");
    assert_eq!(ddpm::checkpoint::load_for_sampling(&ckpt, true).unwrap().model.config.classes, 10);
    let sample = |out: &Path, extra: &[&str]| {
        let base = ["sample", "--device", "cpu", "--checkpoint", s(&ckpt), "--steps", "3", "--out", s(out)];
        ddpm(&[&base[..], extra].concat())
    };
    let one = dir.join("seven.safetensors");
    let r = sample(&one, &["--digit", "7", "--guidance", "2", "--n", "2"]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("digit 7, classifier-free guidance w = 2"), "{r:?}");
    succeeds(&r);
    let grid = dir.join("grid.safetensors");
    let r = sample(&grid, &["--n", "12"]);
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(
        err.contains("--n rounded up to 20") && err.contains("one row per digit") && err.contains("w = 3"),
        "{err}"
    );
    succeeds(&r);
    let t = ddpm::tensor_file::read_tensors(&grid).unwrap();
    assert_eq!(t.f32("samples").unwrap().shape(), &[20, 1, 32, 32]);

    // Refused before any sampling, leaving no output: digits outside 0-9, negative or non-finite guidance.
    let bad = dir.join("bad.png");
    for (flags, needle) in [
        (&["--digit", "10"][..], "--digit must be a digit from 0 to 9, got 10"),
        (&["--digit", "-1"], "--digit must be a digit from 0 to 9, got -1"),
        (&["--guidance", "-0.5"], "--guidance must be finite and >= 0, got -0.5"),
        (&["--guidance", "NaN"], "--guidance must be finite and >= 0, got NaN"),
        (&["--guidance", "inf"], "--guidance must be finite and >= 0, got inf"),
    ] {
        fails_with(&sample(&bad, flags), needle);
    }
    // --digit and --guidance on an unconditional checkpoint; --classes when resuming an unconditional run.
    let plain = dir.join("plain.safetensors");
    let config = ddpm::train::RunConfig {
        model: ddpm::nn::UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 },
        ..ddpm::train::RunConfig::cpu_default()
    };
    ddpm::checkpoint::save(&ddpm::train::TrainState::new(config).unwrap(), &plain).unwrap();
    for flags in [&["--digit", "3"][..], &["--guidance", "1"]] {
        let r = ddpm(&[&["sample", "--checkpoint", s(&plain), "--out", s(&bad)][..], flags].concat());
        fails_with(&r, "need a class-conditional checkpoint");
    }
    assert!(!bad.exists(), "no output from a refused request");
    let r = ddpm(&["train", "--resume", s(&plain), "--classes", "--out", s(&dir.join("r"))]);
    fails_with(&r, "--classes does not match");
    std::fs::remove_dir_all(&dir).ok();
}
