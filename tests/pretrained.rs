//! Weights outside checkpoints: `ddpm export` writes weights that sample exactly as their checkpoint's EMA weights
//! do, `ddpm sample` with no --checkpoint uses the shipped ones in data/pretrained/, and `ddpm quality` writes
//! every row of its tables and refuses what it cannot measure before sampling.

mod common;

use common::cli::{ddpm, ddpm_in, refused, s, scratch, succeeds};
use ddpm::diffusion::ScheduleKind;
use ddpm::nn::UNetConfig;
use ddpm::tensor_file::read_tensors;
use ddpm::train::{RunConfig, TrainState};
use std::path::Path;

/// A checkpoint of an untrained tiny UNet (T = 200) with `classes` classes and `schedule`, whose EMA weights
/// differ from its live ones.
fn tiny_checkpoint(path: &Path, classes: usize, schedule: ScheduleKind) {
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes },
        timesteps: 200,
        schedule,
        ..RunConfig::cpu_default()
    };
    let mut state = TrainState::new(config).unwrap();
    for t in &mut state.ema.shadow {
        t.data_mut().iter_mut().for_each(|v| *v *= 0.9);
    }
    ddpm::checkpoint::save(&state, path).unwrap();
}

fn samples(path: &Path) -> Vec<f32> {
    read_tensors(path).unwrap().f32("samples").unwrap().data().to_vec()
}

#[test]
fn exported_weights_sample_as_their_checkpoints_ema_weights() {
    let dir = scratch("export");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, 0, ScheduleKind::Cosine);
    let weights = dir.join("weights.safetensors");
    let export = |out: &Path, extra: &[&str]| {
        ddpm(&[&["export", "--checkpoint", s(&ckpt), "--out", s(out)][..], extra].concat())
    };
    let err = succeeds(&export(&weights, &[]));
    assert!(err.contains("EMA weights after step 0"), "{err}");
    let m = ddpm::checkpoint::load_for_sampling(&weights, true).unwrap();
    assert_eq!((m.schedule, m.timesteps), (ScheduleKind::Cosine, 200));
    assert!(m.description.starts_with("exported EMA weights after step 0"), "{}", m.description);

    let sample = |from: &Path, out: &Path, extra: &[&str]| {
        let base = ["sample", "--device", "cpu", "--checkpoint", s(from), "--steps", "3", "--n", "2", "--out", s(out)];
        succeeds(&ddpm(&[&base[..], extra].concat()))
    };
    let (a, b, live) = (dir.join("a.safetensors"), dir.join("b.safetensors"), dir.join("live.safetensors"));
    sample(&ckpt, &a, &[]);
    sample(&weights, &b, &[]);
    sample(&ckpt, &live, &["--no-ema"]);
    assert_eq!(samples(&a), samples(&b), "the exported weights must sample as the checkpoint's EMA weights");
    assert_ne!(samples(&a), samples(&live), "the live weights differ from the EMA weights here");

    // Its own file it rewrites; the checkpoint it reads, and a file of another kind, it keeps.
    succeeds(&export(&weights, &[]));
    refused(&export(&ckpt, &[]), &["is the file --checkpoint reads"]);
    let notes = dir.join("notes.safetensors");
    std::fs::write(&notes, "my notes").unwrap();
    refused(&export(&notes, &[]), &["notes.safetensors", "not weights written by `ddpm export`"]);
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes");
    refused(&export(&dir.join("w.png"), &[]), &["--out", "must end in .safetensors"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sample_without_a_checkpoint_uses_the_shipped_weights() {
    let dir = scratch("shipped");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, classes) in [("uncond", 0), ("cond", 10)] {
        let m = ddpm::checkpoint::load_for_sampling(&root.join(format!("data/pretrained/{file}.safetensors")), true)
            .unwrap();
        // The CPU recipe's model, after its 11250 steps.
        assert_eq!(m.model.config, UNetConfig { in_ch: 1, base: 16, t_dim: 64, classes });
        assert!(m.description.starts_with("exported EMA weights after step 11250"), "{}", m.description);
    }
    let out = dir.join("x.png");
    let base = ["sample", "--device", "cpu", "--steps", "2", "--n", "2", "--out", s(&out)];
    let err = succeeds(&ddpm(&base));
    assert!(err.contains("using the shipped unconditional weights data/pretrained/uncond.safetensors"), "{err}");
    let err = succeeds(&ddpm(&[&base[..], &["--digit", "3"]].concat()));
    assert!(err.contains("using the shipped class-conditional weights data/pretrained/cond.safetensors"), "{err}");
    // Away from the repository's root the shipped files are not found: a clear error, no output.
    std::fs::remove_file(&out).unwrap();
    refused(&ddpm_in(&dir, &base), &["no --checkpoint given", "data/pretrained/uncond.safetensors", "are not here"]);
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quality_writes_every_row_and_refuses_what_it_cannot_measure() {
    let dir = scratch("quality");
    let (uncond, cond) = (dir.join("uncond.safetensors"), dir.join("cond.safetensors"));
    tiny_checkpoint(&uncond, 0, ScheduleKind::Linear);
    tiny_checkpoint(&cond, 10, ScheduleKind::Linear);
    let out = dir.join("q.md");
    // Small settings, each replaced when `extra` names its flag.
    let quality_of = |(u, c): (&Path, &Path), extra: &[&str]| {
        let mut args = vec!["quality", "--device", "cpu", "--uncond", s(u), "--cond", s(c)];
        let defaults = [("--n", "10"), ("--ddpm-n", "4"), ("--calls", "2,3"), ("--guidance", "0,2"), ("--steps", "3")];
        let defaults = defaults.into_iter().chain([("--invert-n", "3"), ("--invert-steps", "2,4")]);
        for (flag, value) in defaults.chain([("--out", s(&out))]) {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        ddpm(&[&args[..], extra].concat())
    };
    let quality = |extra: &[&str]| quality_of((&uncond, &cond), extra);
    succeeds(&quality(&[]));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("not run"), "{text}");
    for row in ["| DDIM (η = 0) |", "| SDE-DPM-Solver++(2M), uniform t |", "| DDPM-200 | 200 | – |", "| 2 | ", "| 0 | "]
    {
        assert!(text.contains(row), "{row:?} missing from {text}");
    }
    assert!(text.contains("FID of the first 4"), "{text}");
    assert!(text.contains("DDIM round trip of the first 3 test digits") && text.contains("| 4 | 10 | "), "{text}");
    for grid in [
        "ddpm-200.png",
        "ddim-2.png",
        "dpm++2m-3logsnr.png",
        "dpm++2m-sde-2uniform-t.png",
        "ddim-3guidedw2.png",
        "ddim-4roundtripof3.png",
    ] {
        assert!(dir.join("q").join(grid).exists(), "{grid}");
    }
    // A guidance grid is a row per digit, one image each at n = 10: ten images of 32 pixels and 2 of padding.
    let png =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join("q/ddim-3guidedw2.png")).unwrap()));
    let info = png.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (34 + 2, 34 * 10 + 2));
    // A second run keeps the rows measured with the same settings and samples only the new ones; its own table it
    // rewrites.
    let err = succeeds(&quality(&[]));
    assert!(
        err.contains("17 rows measured before with the same settings are kept")
            && !err.contains("sampling")
            && !err.contains("inverting"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    let err = succeeds(&quality(&["--guidance", "0,2,5"]));
    assert!(err.contains("w=5: sampling") && err.matches("sampling").count() == 1, "{err}");
    // Other settings measure every row again.
    let err = succeeds(&quality(&["--seed", "1"]));
    assert!(!err.contains("measured before") && err.matches("sampling").count() == 15, "{err}");

    // Refused before any sampling.
    let refuse = |extra: &[&str], needles: &[&str]| {
        let before = std::fs::read(&out).unwrap();
        refused(&quality(extra), needles);
        assert_eq!(std::fs::read(&out).unwrap(), before);
    };
    refuse(&["--ddpm-n", "20"], &["--ddpm-n 20 must not exceed --n 10"]);
    refuse(&["--n", "15", "--ddpm-n", "15"], &["--n 15", "multiple of 10"]);
    refuse(&["--guidance", "-1"], &["--guidance must list finite weights >= 0, got -1"]);
    refuse(&["--calls", "0"], &["--calls must list network calls of at least 1"]);
    refuse(&["--calls", "300"], &["--calls", "steps must be in 1..=200"]);
    refuse(&["--invert-steps", "2,0"], &["--invert-steps must list DDIM steps of at least 1"]);
    refuse(&["--invert-steps", "201"], &["--invert-steps", "steps must be in 1..=200"]);
    refuse(&["--invert-n", "10001"], &["--invert-n 10001", "has 10000 images"]);
    let mixed = dir.join("mixed.md");
    refused(&quality_of((&cond, &cond), &["--out", s(&mixed)]), &["--uncond", "a class-conditional model"]);
    refused(&quality_of((&uncond, &uncond), &["--out", s(&mixed)]), &["--cond", "an unconditional model"]);
    assert!(!mixed.exists());
    let notes = dir.join("notes.md");
    std::fs::write(&notes, "# my notes\n").unwrap();
    refused(&quality_of((&uncond, &cond), &["--out", s(&notes)]), &["notes.md", "not a table written by"]);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "# my notes\n");
    std::fs::remove_dir_all(&dir).ok();
}
