//! Sample-quality numbers (`ddpm::eval`, `ddpm eval`) on inputs whose answer is known without them: real test
//! images must score at the real-vs-real floor, noise far above it, and bad sample files must be clean errors.

use ddpm::backend::Cpu;
use ddpm::data::{load_dataset, Split};
use ddpm::eval::{gather, real_order, Evaluator, FLOOR_SETS};
use ddpm::nn::{Classifier, DEFAULT_WEIGHTS};
use ddpm::{rng, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// n = 300 keeps the test at a few seconds; FID's small-n bias is then large, which is why the comparisons
/// below are against the floor at the same n, never against 0.
const N: usize = 300;

/// Real digits the evaluator has not seen: it takes `real_order[0..(1 + FLOOR_SETS)·N]`, these are the last N.
fn held_out_real(test: &Tensor) -> Tensor {
    let len = test.shape()[0];
    assert!((2 + FLOOR_SETS) * N <= len);
    gather(test, &real_order(len)[len - N..]).unwrap()
}

fn evaluator() -> (Evaluator<Cpu>, Tensor) {
    let (model, params) = Classifier::load(&root().join(DEFAULT_WEIGHTS)).unwrap();
    let test = load_dataset(&root().join("data/mnist"), Split::Test).unwrap();
    (Evaluator::new(model, params, &test.images, N).unwrap(), test.images)
}

#[test]
fn real_images_score_at_the_floor_and_noise_far_above_it() {
    let (ev, test) = evaluator();
    let held_out = held_out_real(&test);
    let real = ev.score(&held_out).unwrap();
    // Real images differ from the reference by sampling noise only. Over 31 disjoint real sets at this n, FID
    // ranged over 0.75–1.55x the floor (their mean), hence a factor of 2 either way.
    assert!(
        real.fid < 2.0 * real.fid_floor && real.fid_floor < 2.0 * real.fid,
        "real images: FID {} vs floor {}",
        real.fid,
        real.fid_floor
    );
    assert!(real.fid_floor_range.0 <= real.fid_floor && real.fid_floor <= real.fid_floor_range.1);
    assert!(real.classes.confidence > 0.95, "the classifier is confident on real digits: {}", real.classes.confidence);
    assert!(
        real.classes.entropy > 2.2,
        "real test digits are nearly uniform over classes: H = {}",
        real.classes.entropy
    );

    let mut noise = Tensor::zeros(&[N, 1, 32, 32]);
    noise
        .data_mut()
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (rng::uniform_u32x4(5, 0, i as u64)[0] >> 8) as f32 / 8_388_608.0 - 1.0);
    let q = ev.score(&noise).unwrap();
    assert!(
        q.fid > 20.0 * q.fid_floor,
        "uniform noise must be far from real digits: FID {} vs floor {}",
        q.fid,
        q.fid_floor
    );
    // Wrong n: FIDs at different n are not comparable, so it is refused.
    assert!(ev.score(&noise.head(N - 1).unwrap()).is_err());
}

#[test]
fn too_large_an_n_is_refused() {
    let (model, params) = Classifier::load(&root().join(DEFAULT_WEIGHTS)).unwrap();
    let test = Tensor::zeros(&[10, 1, 32, 32]);
    let err = Evaluator::new(model, params, &test, 6).err().expect("6 + 6 > 10 test images").to_string();
    assert!(err.contains("2 <= n <= 5"), "{err}");
}

fn ddpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).current_dir(root()).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-eval-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_samples(path: &Path, t: &Tensor) {
    ddpm::tensor_file::write_tensors(path, &[("samples".into(), t)], None).unwrap();
}

/// The value of `"key":<number>` in a one-line JSON object.
fn json_number(line: &str, key: &str) -> f64 {
    let at = line.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len() + 3;
    line[at..].split([',', '}']).next().unwrap().parse().unwrap()
}

#[test]
fn eval_cli_scores_a_samples_file_and_rejects_bad_ones() {
    let dir = scratch("cli");
    let test = load_dataset(&root().join("data/mnist"), Split::Test).unwrap().images;
    let real = dir.join("real.safetensors");
    write_samples(&real, &held_out_real(&test));
    let r = ddpm(&["eval", "--samples", real.to_str().unwrap(), "--device", "cpu", "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let line = String::from_utf8(r.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "--json prints one line: {line}");
    assert_eq!(json_number(&line, "n"), N as f64);
    let (fid, floor) = (json_number(&line, "fid"), json_number(&line, "fid_floor"));
    assert!(fid < 2.0 * floor, "real images via the CLI: FID {fid}, floor {floor}");

    let fails_with = |args: &[&str], needle: &str| {
        let r = ddpm(args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && !err.contains("panicked") && err.contains(needle), "{args:?}: {err}");
    };
    let in_01 = dir.join("in01.safetensors");
    write_samples(&in_01, &Tensor::full(&[4, 1, 32, 32], 1.5));
    fails_with(&["eval", "--samples", in_01.to_str().unwrap(), "--device", "cpu"], "outside the model's pixel range");
    let shape = dir.join("shape.safetensors");
    write_samples(&shape, &Tensor::zeros(&[4, 1, 28, 28]));
    fails_with(&["eval", "--samples", shape.to_str().unwrap(), "--device", "cpu"], "expected [n, 1, 32, 32]");
    fails_with(
        &["eval", "--samples", real.to_str().unwrap(), "--n", "5000", "--device", "cpu"],
        "holds only 300 images",
    );
    fails_with(&["eval", "--device", "cpu"], "--samples");
    fails_with(
        &["eval", "--samples", real.to_str().unwrap(), "--classifier", "nope.safetensors", "--device", "cpu"],
        "nope.safetensors",
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The classifier scores in f32 whatever the precision of the backend it is given, so the same images get the same
/// FID, to the bit, from a bf16 GPU backend (on the emulator) as from an f32 one: FIDs of bf16 and f32 runs are
/// measured by the same instrument.
#[test]
fn fid_does_not_depend_on_the_backends_precision() {
    use ddpm::backend::{Gpu, Precision};
    let n = 8;
    let test = load_dataset(&root().join("data/mnist"), Split::Test).unwrap().images;
    let len = test.shape()[0];
    let images = gather(&test, &real_order(len)[len - n..]).unwrap();
    let emu = Gpu::new(ddpm::gpu::emu::Emulator::new());
    let fid = |p: Precision| {
        let ev = Evaluator::load(
            &emu.clone().with_precision(p),
            &root().join(DEFAULT_WEIGHTS),
            &root().join("data/mnist"),
            n,
        )
        .unwrap();
        ev.score(&images).unwrap().fid
    };
    let (bf16, fp32) = (fid(Precision::Bf16), fid(Precision::Fp32));
    assert_eq!(bf16.to_bits(), fp32.to_bits(), "FID {bf16} under bf16, {fp32} under fp32");
}
