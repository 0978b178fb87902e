//! The `ddpm` binary refuses, before any network call, every request that could not finish or that would replace a
//! file it did not write, with a message naming the flag or the file; and it never aborts on a size it cannot
//! allocate. Each test replays a way a run used to be lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ddpm::nn::UNetConfig;
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::train::{RunConfig, TrainState};
use ddpm::Tensor;

fn ddpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-inputs-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure before any sampling: exit status `code` (not a signal), stderr containing each of
/// `needles`, no panic, and no line saying that sampling starts.
fn fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "expected a clean error exit; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let started = err.lines().any(|l| l.starts_with("sampling ") || l.contains(": sampling "));
    assert!(!started, "refused only after sampling started: {err}");
    for needle in needles {
        assert!(err.contains(needle), "stderr should contain {needle:?}: {err}");
    }
}

/// A refusal by the command (exit status 1).
fn refused(out: &Output, needles: &[&str]) {
    fails(out, 1, needles)
}

/// A refusal by the argument parser (exit status 2).
fn parse_error(out: &Output, needles: &[&str]) {
    fails(out, 2, needles)
}

fn succeeds(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// A tiny checkpoint of ours (base 8, t_dim 4, T = 200, untrained) at `path`; `edit` may change the state first.
fn tiny_checkpoint(path: &Path, edit: impl FnOnce(&mut TrainState)) {
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 },
        timesteps: 200,
        ..RunConfig::cpu_default()
    };
    let mut state = TrainState::new(config).unwrap();
    edit(&mut state);
    ddpm::checkpoint::save(&state, path).unwrap();
}

/// Rewrites the checkpoint at `path` with metadata `key` set to `value`.
fn set_metadata(path: &Path, key: &str, value: &str) {
    let f = read_tensors(path).unwrap();
    let tensors = f.f32_with_prefix("");
    let named: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let mut meta: BTreeMap<String, String> = f.metadata.clone().into_iter().collect();
    meta.insert(key.into(), value.into());
    write_tensors(path, &named, Some(meta)).unwrap();
}

#[test]
fn sample_never_replaces_a_file_it_reads_or_did_not_write() {
    let dir = scratch("replace");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let before = std::fs::read(&ckpt).unwrap();
    let c = s(&ckpt);
    let sample = |out: &Path, extra: &[&str]| {
        ddpm(
            &[
                &["sample", "--device", "cpu", "--checkpoint", c, "--steps", "2", "--n", "2", "--out", s(out)][..],
                extra,
            ]
            .concat(),
        )
    };
    refused(&sample(&ckpt, &[]), &["--out", "is the file --checkpoint reads", "--force"]);
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the checkpoint was changed");
    // Another checkpoint, or any safetensors file that is not a samples file, is not replaced either.
    let other = dir.join("other.safetensors");
    std::fs::copy(&ckpt, &other).unwrap();
    refused(&sample(&other, &[]), &["other.safetensors", "not a samples file"]);
    // Through a symbolic link too.
    #[cfg(unix)]
    {
        let link = dir.join("link.safetensors");
        std::os::unix::fs::symlink(&ckpt, &link).unwrap();
        refused(&sample(&link, &[]), &["is the file --checkpoint reads"]);
    }
    // --noise is an input as well.
    let noise = dir.join("noise.safetensors");
    write_tensors(&noise, &[("noise".into(), &Tensor::zeros(&[2, 1, 32, 32]))], None).unwrap();
    refused(&sample(&noise, &["--noise", s(&noise)]), &["is the file --noise reads"]);
    // A samples file over a samples file, and a grid over a grid, are fine.
    let samples = dir.join("samples.safetensors");
    succeeds(&sample(&samples, &[]));
    succeeds(&sample(&samples, &[]));
    let grid = dir.join("grid.png");
    succeeds(&sample(&grid, &[]));
    succeeds(&sample(&grid, &[]));
    // A .png that is not a PNG is not replaced.
    let notes = dir.join("notes.png");
    std::fs::write(&notes, "my notes").unwrap();
    refused(&sample(&notes, &[]), &["notes.png", "not a PNG image"]);
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes");
    // --force overrides.
    succeeds(&sample(&other, &["--force"]));
    assert_eq!(read_tensors(&other).unwrap().f32("samples").unwrap().shape(), &[2, 1, 32, 32]);
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sampler_table_writes_beside_the_checkpoint_and_keeps_foreign_files() {
    let dir = scratch("table");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let table_n = |n: &str, extra: &[&str]| {
        ddpm(&[&["sampler-table", "--device", "cpu", "--checkpoint", s(&ckpt), "--n", n][..], extra].concat())
    };
    let table = |extra: &[&str]| table_n("2", extra);
    // The default --out is the checkpoint's folder: a file there that the command did not write is kept.
    let quality = dir.join("quality.md");
    std::fs::write(&quality, "# my notes\n").unwrap();
    refused(&table(&[]), &["quality.md", "not a table written by `ddpm sampler-table`"]);
    assert_eq!(std::fs::read_to_string(&quality).unwrap(), "# my notes\n");
    std::fs::remove_file(&quality).unwrap();
    succeeds(&table(&[]));
    let text = std::fs::read_to_string(&quality).unwrap();
    assert!(text.contains("| DDIM-10 |") && text.contains("[grid](quality/ddim-10.png)"), "{text}");
    assert!(dir.join("quality/ddpm-200.png").exists());
    // Its own table, and its grids, it rewrites.
    succeeds(&table(&[]));
    // A grid file that is not a PNG is kept.
    std::fs::write(dir.join("quality/ddim-20.png"), "not a png").unwrap();
    refused(&table(&[]), &["ddim-20.png", "not a PNG image"]);
    // The output must be Markdown, and FID needs n <= 5000.
    refused(&table(&["--out", s(&dir.join("t.txt"))]), &["--out", "must end in .md"]);
    refused(&table_n("6000", &[]), &["--n 6000", "use --n <= 5000"]);
    refused(&table(&["--ddpm-n", "1"]), &["--ddpm-n must be at least 2"]);
    // A model with too few timesteps for the table's DDIM-100 is refused before its cheaper rows are run.
    let short = dir.join("short.safetensors");
    tiny_checkpoint(&short, |st| st.config.timesteps = 60);
    let r = ddpm(&[
        "sampler-table",
        "--device",
        "cpu",
        "--checkpoint",
        s(&short),
        "--n",
        "2",
        "--out",
        s(&dir.join("s.md")),
    ]);
    refused(&r, &["DDIM steps must be in 1..=60"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_and_sample_check_every_input_and_output_before_sampling() {
    let dir = scratch("early");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let c = s(&ckpt);
    let eval =
        |extra: &[&str]| ddpm(&[&["eval", "--device", "cpu", "--checkpoint", c, "--steps", "2"][..], extra].concat());
    refused(&eval(&["--n", "6000"]), &["--n 6000", "use --n <= 5000"]);
    refused(&eval(&["--n", "1"]), &["--n must be at least 2"]);
    refused(
        &eval(&["--n", "4", "--classifier", s(&dir.join("none.safetensors"))]),
        &["--classifier", "none.safetensors"],
    );
    refused(&eval(&["--n", "4", "--data", s(&dir.join("nodata"))]), &["--data", "nodata"]);
    // A classifier file that is not one is found when it is loaded, before sampling.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, "junk").unwrap();
    refused(&eval(&["--n", "4", "--classifier", s(&junk)]), &["junk.safetensors"]);
    refused(&eval(&["--n", "4", "--grid", s(&dir.join("g.jpg"))]), &["--grid", "must end in .png"]);
    let folder = dir.join("folder.png");
    std::fs::create_dir_all(&folder).unwrap();
    refused(&eval(&["--n", "4", "--grid", s(&folder)]), &["--grid", "is a folder"]);
    refused(&eval(&["--n", "4", "--grid", s(&ckpt)]), &["--grid", "must end in .png"]);
    // An output folder that cannot be made: its parent is a file.
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    refused(&eval(&["--n", "4", "--grid", s(&file.join("g.png"))]), &["--grid", "is not a folder"]);
    let sample = |out: &Path| ddpm(&["sample", "--device", "cpu", "--checkpoint", c, "--steps", "2", "--out", s(out)]);
    refused(&sample(&folder), &["--out", "is a folder"]);
    refused(&sample(&file.join("sub/x.png")), &["--out", "is not a folder"]);
    refused(&ddpm(&["sample", "--checkpoint", s(&dir.join("missing.safetensors"))]), &["--checkpoint", "missing"]);
    // A good request still works, and writes its grid.
    let grid = dir.join("deep/er/g.png");
    let r = eval(&["--n", "4", "--grid", s(&grid), "--json"]);
    succeeds(&r);
    assert!(String::from_utf8_lossy(&r.stdout).contains("\"n\":4"));
    assert!(grid.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sizes_that_cannot_be_allocated_are_refused_not_aborted() {
    let dir = scratch("sizes");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let c = s(&ckpt);
    let out = dir.join("x.png");
    let sample = |ckpt: &str, extra: &[&str]| {
        ddpm(&[&["sample", "--device", "cpu", "--checkpoint", ckpt, "--out", s(&out)][..], extra].concat())
    };
    refused(&sample(c, &["--n", "1000000000"]), &["--n 1000000000 needs about", "GiB"]);
    // Damaged metadata: sizes the weights in the file do not back.
    for (key, value, needle) in [
        ("base", "1099511627776", "base 1099511627776"),
        ("t_dim", "1099511627776", "t_dim 1099511627776"),
        ("in_ch", "3", "in_ch 3"),
        ("timesteps", "1099511627776", "timesteps = 1099511627776"),
        ("base", "-8", "`base` = \"-8\""),
    ] {
        let bad = dir.join(format!("bad-{key}.safetensors"));
        std::fs::copy(&ckpt, &bad).unwrap();
        set_metadata(&bad, key, value);
        refused(&sample(s(&bad), &[]), &["bad-", needle]);
        refused(&ddpm(&["eval", "--device", "cpu", "--checkpoint", s(&bad), "--n", "4"]), &[needle]);
        // Resuming reads the same sizes through the same checks.
        refused(&ddpm(&["train", "--device", "cpu", "--resume", s(&bad), "--out", s(&dir.join("resumed"))]), &[needle]);
    }
    // A plain state dict whose time MLP is declared [0, 2^40]: no data, but a t_dim no model could hold.
    let golden = read_tensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/weights.safetensors")).unwrap();
    let mut tensors = golden.f32_with_prefix("");
    tensors.insert("time.mlp.0.weight".into(), Tensor::zeros(&[0, 1 << 40]));
    let named: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let plain = dir.join("plain.safetensors");
    write_tensors(&plain, &named, None).unwrap();
    refused(&sample(s(&plain), &[]), &["time.mlp.0.weight", "[0, 1099511627776]"]);
    // bench's sizes too.
    let r = ddpm(&["bench", "--device", "cpu", "--base", "1099511627776", "--iters", "1"]);
    refused(&r, &["needs about"]);
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn negative_numbers_parse_as_values_and_are_refused_by_their_flag() {
    let dir = scratch("negative");
    let r = ddpm(&["train-classifier", "--data", s(&dir), "--out", s(&dir.join("c.safetensors")), "--lr", "-1"]);
    refused(&r, &["--lr must be positive, got -1"]);
    // train's own range checks are its business; here only that the parser takes the value.
    let r = ddpm(&["train", "--device", "cpu", "--lr", "-1", "--out", s(&dir.join("run"))]);
    let err = stderr(&r);
    assert!(!r.status.success() && !err.contains("unexpected argument"), "{err}");
    assert!(err.contains("lr"), "{err}");
    let r = ddpm(&["sample", "--checkpoint", "x.safetensors", "--n", "-5"]);
    parse_error(&r, &["invalid value '-5' for '--n <N>'"]);
    let r = ddpm(&["sample", "--checkpoint", "x.safetensors", "--seed", "-1"]);
    parse_error(&r, &["invalid value '-1' for '--seed <SEED>'"]);
    // train-classifier checks its folder and its output before reading the data.
    let tc = |out: &Path| ddpm(&["train-classifier", "--device", "cpu", "--data", s(&dir), "--out", s(out)]);
    refused(&tc(&dir.join("weights.bin")), &["--out", "must end in .safetensors"]);
    let folder = dir.join("folder.safetensors");
    std::fs::create_dir_all(&folder).unwrap();
    refused(&tc(&folder), &["--out", "is a folder"]);
    let r = ddpm(&["train-classifier", "--data", s(&dir.join("none")), "--out", s(&dir.join("c.safetensors"))]);
    refused(&r, &["--data", "none"]);
    // A flag's name still is one.
    parse_error(&ddpm(&["sample", "--checkpoint", "x.safetensors", "--n", "--out"]), &["--n"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn a_symlinked_out_is_written_through_and_a_killed_writes_temp_file_is_cleaned() {
    let dir = scratch("symlink");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    std::fs::create_dir_all(dir.join("keep")).unwrap();
    let target = dir.join("keep/grid.png");
    let link = dir.join("grid.png");
    std::os::unix::fs::symlink("keep/grid.png", &link).unwrap();
    // A writer killed mid-write left its temporary file beside the target (a pid above Linux's maximum).
    let stale = dir.join("keep/.grid.png.tmp-9999999-0");
    std::fs::write(&stale, "half").unwrap();
    let r =
        ddpm(&["sample", "--device", "cpu", "--checkpoint", s(&ckpt), "--steps", "2", "--n", "2", "--out", s(&link)]);
    succeeds(&r);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced by a file");
    assert!(std::fs::read(&target).unwrap().starts_with(b"\x89PNG"), "the link's target was not written");
    assert!(!stale.exists(), "the stale temporary file is still there");
    let left: Vec<_> = std::fs::read_dir(dir.join("keep")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec!["grid.png"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn non_finite_weights_are_refused() {
    let dir = scratch("nan");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |st| {
        st.params.tensors_mut()[3].data_mut()[0] = f32::NAN;
        st.ema.shadow[3].data_mut()[0] = f32::INFINITY;
    });
    let c = s(&ckpt);
    refused(
        &ddpm(&["sample", "--device", "cpu", "--checkpoint", c, "--out", s(&dir.join("x.png"))]),
        &["holds inf", "diverged"],
    );
    refused(
        &ddpm(&["sample", "--device", "cpu", "--checkpoint", c, "--no-ema", "--out", s(&dir.join("x.png"))]),
        &["holds NaN", "live (non-EMA) weights"],
    );
    refused(&ddpm(&["eval", "--device", "cpu", "--checkpoint", c, "--n", "4"]), &["holds inf"]);
    refused(&ddpm(&["sampler-table", "--device", "cpu", "--checkpoint", c, "--n", "2"]), &["holds inf"]);
    assert!(!dir.join("x.png").exists() && !dir.join("quality.md").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn info_says_where_commands_run_and_with_how_many_threads() {
    let r = ddpm(&["info"]);
    succeeds(&r);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("train and sample (--device auto) run on "), "{text}");
    assert!(text.contains("CPU threads: "), "{text}");
    let r = Command::new(env!("CARGO_BIN_EXE_ddpm")).arg("info").env("RAYON_NUM_THREADS", "3").output().unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("CPU threads: 3") && text.contains("--device cpu runs on the CPU with 3 threads"), "{text}");
}
