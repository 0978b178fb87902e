//! The `ddpm` binary refuses, before any network call, every request that could not finish or that would replace a
//! file it did not write, with a message naming the flag or the file; and it never aborts on a size it cannot
//! allocate. Each test replays a way a run used to be lost. The last tests run `invert`, `interpolate` and
//! `sample --trajectory` end to end on a tiny untrained checkpoint, after their refusals.

use std::collections::BTreeMap;
mod common;

use common::cli::{ddpm, parse_error, refused, s, scratch, stderr, succeeds};
use std::path::Path;
use std::process::{Command, Output};

use ddpm::nn::UNetConfig;
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::train::{RunConfig, TrainState};
use ddpm::Tensor;

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

/// The MNIST test images (raw, 28x28 u8) in the repository's data folder.
fn mnist_test() -> ddpm::data::Mnist {
    ddpm::data::load_split(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist"), ddpm::data::Split::Test).unwrap()
}

/// Writes a `w x h` PNG of `color` (8-bit samples) at `path`.
fn write_png(path: &Path, (w, h): (u32, u32), color: png::ColorType, pixels: &[u8]) {
    let mut enc = png::Encoder::new(std::fs::File::create(path).unwrap(), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(pixels).unwrap();
}

/// The width and height of the PNG at `path`, and its frame count (1 for a still image).
fn png_frames(path: &Path) -> (u32, u32, u32) {
    let mut reader = png::Decoder::new(std::fs::File::open(path).unwrap()).read_info().unwrap();
    let (w, h) = (reader.info().width, reader.info().height);
    let declared = reader.info().animation_control().map_or(1, |a| a.num_frames);
    let mut buf = vec![0; reader.output_buffer_size()];
    let mut decoded = 0;
    while reader.next_frame(&mut buf).is_ok() {
        decoded += 1;
    }
    assert_eq!(decoded, declared, "{}: frames decoded vs declared", path.display());
    (w, h, decoded)
}

#[test]
fn invert_refuses_bad_images_and_outputs_before_any_compute() {
    let dir = scratch("invert-refuse");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let out = dir.join("noise.safetensors");
    let invert = |extra: &[&str]| {
        ddpm(
            &[&["invert", "--device", "cpu", "--checkpoint", s(&ckpt), "--steps", "2", "--out", s(&out)][..], extra]
                .concat(),
        )
    };
    let not_started = |r: &Output, needles: &[&str]| {
        refused(r, needles);
        assert!(!stderr(r).contains("inverting "), "refused only after the inversion started: {}", stderr(r));
        assert!(!out.exists(), "an output was written");
    };
    not_started(&invert(&["--indices", "3,10000"]), &["--indices 10000", "has 10000 images"]);
    not_started(&invert(&["--count", "10001"]), &["--count 10001", "has 10000 images"]);
    not_started(&invert(&["--count", "0"]), &["--count must be at least 1"]);
    // A PNG of the wrong size, of colour, of 16-bit samples; a file that is no PNG at all.
    let small = dir.join("small.png");
    write_png(&small, (27, 27), png::ColorType::Grayscale, &[0; 27 * 27]);
    not_started(&invert(&["--png", s(&small)]), &["--png", "small.png", "27x27", "28x28 or 32x32"]);
    let rgb = dir.join("rgb.png");
    write_png(&rgb, (28, 28), png::ColorType::Rgb, &[0; 28 * 28 * 3]);
    not_started(&invert(&["--png", s(&rgb)]), &["--png", "rgb.png", "Rgb", "8-bit grayscale"]);
    let text = dir.join("text.png");
    std::fs::write(&text, "not a png").unwrap();
    not_started(&invert(&["--png", s(&small), s(&text)]), &["small.png"]);
    not_started(&invert(&["--png", s(&text)]), &["--png", "text.png", "not a readable PNG"]);
    not_started(&invert(&["--png", s(&dir.join("missing.png"))]), &["--png", "missing.png", "cannot read"]);
    // A missing checkpoint, a missing data folder.
    let missing = dir.join("missing.safetensors");
    let r = ddpm(&["invert", "--device", "cpu", "--checkpoint", s(&missing), "--count", "1", "--out", s(&out)]);
    not_started(&r, &["--checkpoint", "missing.safetensors", "cannot read"]);
    not_started(&invert(&["--count", "1", "--data", s(&dir.join("nowhere"))]), &["--data", "nowhere"]);
    // Outputs: the wrong extension, a file it did not write, the checkpoint, --grid over --out.
    not_started(&invert(&["--count", "1", "--grid", s(&dir.join("g.jpg"))]), &["--grid", "g.jpg", ".png"]);
    let r = ddpm(&["invert", "--device", "cpu", "--checkpoint", s(&ckpt), "--count", "1", "--out", s(&ckpt)]);
    refused(&r, &["--out", "is the file --checkpoint reads"]);
    std::fs::write(&out, "my notes").unwrap();
    refused(&invert(&["--count", "1"]), &["--out", "not a noise file", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"my notes");
    std::fs::remove_file(&out).unwrap();
    parse_error(&invert(&[]), &["--indices", "--count", "--png"]);
    parse_error(&invert(&["--count", "2", "--indices", "1"]), &["cannot be used with"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// `invert` writes the noise that `sample --noise FILE --sampler ddim --no-clamp` turns back into the images, with
/// the round-trip error it printed; a 28x28 grayscale PNG of a test digit inverts to the same noise as its index
/// (the same preprocessing); a noise file is replaced by the next run without --force.
#[test]
fn invert_round_trips_through_sample_and_reads_pngs_as_mnist() {
    let dir = scratch("invert");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let (out, grid) = (dir.join("noise.safetensors"), dir.join("roundtrip.png"));
    let c = s(&ckpt);
    let invert = |extra: &[&str]| {
        ddpm(&[&["invert", "--device", "cpu", "--checkpoint", c, "--steps", "3", "--out", s(&out)][..], extra].concat())
    };
    let r = invert(&["--indices", "0,7,3", "--grid", s(&grid)]);
    succeeds(&r);
    let printed: f64 = String::from_utf8_lossy(&r.stdout)
        .split("[-1, 1]): ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no error printed: {}", String::from_utf8_lossy(&r.stdout)));
    let noise = read_tensors(&out).unwrap().f32("noise").unwrap().clone();
    assert_eq!(noise.shape(), &[3, 1, 32, 32]);
    // Originals above reconstructions: one row of three pairs.
    assert_eq!(png_frames(&grid), (3 * 34 + 2, 2 * 34 + 2, 1));
    let samples = dir.join("recon.safetensors");
    let r = ddpm(&[
        "sample",
        "--device",
        "cpu",
        "--checkpoint",
        c,
        "--noise",
        s(&out),
        "--sampler",
        "ddim",
        "--no-clamp",
        "--steps",
        "3",
        "--out",
        s(&samples),
    ]);
    succeeds(&r);
    let recon = read_tensors(&samples).unwrap().f32("samples").unwrap().clone();
    let test =
        ddpm::data::load_dataset(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist"), ddpm::data::Split::Test)
            .unwrap();
    let per = 32 * 32;
    let x0: Vec<f32> = [0usize, 7, 3].iter().flat_map(|&i| test.images.data()[i * per..][..per].to_vec()).collect();
    let err = ddpm::diffusion::RoundTripError::new(&Tensor::new(&[3, 1, 32, 32], x0).unwrap(), &recon).unwrap();
    assert!((err.mean() - printed).abs() < 1e-5, "printed {printed}, sample's reconstruction {}", err.mean());
    // Test digit 7 as a 28x28 PNG inverts to the noise of --indices 7, bit for bit.
    let m = mnist_test();
    let png7 = dir.join("seven.png");
    write_png(&png7, (28, 28), png::ColorType::Grayscale, &m.images[7 * 784..8 * 784]);
    succeeds(&invert(&["--indices", "7"]));
    let by_index = read_tensors(&out).unwrap().f32("noise").unwrap().clone();
    assert_eq!(by_index.data(), &noise.data()[per..2 * per], "one image alone and in a batch of three");
    succeeds(&invert(&["--png", s(&png7)]));
    assert_eq!(read_tensors(&out).unwrap().f32("noise").unwrap().data(), by_index.data(), "PNG vs index");
    std::fs::remove_dir_all(&dir).ok();
}

/// A class-conditional checkpoint inverts and regenerates unconditionally (its null label), and says so.
#[test]
fn invert_runs_a_class_conditional_checkpoint_with_its_null_label() {
    let dir = scratch("invert-conditional");
    let ckpt = dir.join("checkpoint.safetensors");
    let config = RunConfig {
        model: UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 10 },
        timesteps: 200,
        ..RunConfig::cpu_default()
    };
    ddpm::checkpoint::save(&TrainState::new(config).unwrap(), &ckpt).unwrap();
    let out = dir.join("noise.safetensors");
    let r = ddpm(&[
        "invert",
        "--device",
        "cpu",
        "--checkpoint",
        s(&ckpt),
        "--count",
        "2",
        "--steps",
        "2",
        "--out",
        s(&out),
    ]);
    succeeds(&r);
    assert!(stderr(&r).contains("class-conditional checkpoint: inverting and regenerating with its null label"));
    assert_eq!(read_tensors(&out).unwrap().f32("noise").unwrap().shape(), &[2, 1, 32, 32]);
    std::fs::remove_dir_all(&dir).ok();
}

/// `sample --trajectory` writes an APNG of x_T and the grid after every network call; its file is checked as --out
/// is, before any compute.
#[test]
fn sample_trajectory_is_an_animated_png_of_every_step() {
    let dir = scratch("trajectory");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let (out, traj) = (dir.join("grid.png"), dir.join("traj.png"));
    let sample = |t: &Path, extra: &[&str]| {
        let base = ["sample", "--device", "cpu", "--checkpoint", s(&ckpt), "--n", "3", "--out", s(&out)];
        ddpm(&[&base[..], &["--trajectory", s(t)], extra].concat())
    };
    refused(&sample(&dir.join("t.gif"), &[]), &["--trajectory", "t.gif", ".png"]);
    refused(&sample(&out, &[]), &["--out and --trajectory both name"]);
    let notes = dir.join("notes.png");
    std::fs::write(&notes, "my notes").unwrap();
    refused(&sample(&notes, &[]), &["--trajectory", "notes.png", "not a PNG image"]);
    assert!(!out.exists());
    for (steps, sampler) in [("4", "ddim"), ("3", "dpm++2m")] {
        succeeds(&sample(&traj, &["--steps", steps, "--sampler", sampler]));
        // T = 200: DDIM-4's grid is 0, 50, 100, 150 and 199 (5 calls); DPM-Solver++ makes exactly --steps calls.
        let calls = if sampler == "ddim" { 5 } else { 3 };
        assert_eq!(png_frames(&traj), (3 * 34 + 2, 36, calls + 1), "{sampler}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `interpolate` writes one row of --frames regenerated frames; it refuses fewer than two frames and an index past
/// the test set.
#[test]
fn interpolate_writes_one_row_of_frames() {
    let dir = scratch("interpolate");
    let ckpt = dir.join("checkpoint.safetensors");
    tiny_checkpoint(&ckpt, |_| {});
    let out = dir.join("row.png");
    let interpolate = |extra: &[&str]| {
        let base = ["interpolate", "--device", "cpu", "--checkpoint", s(&ckpt), "--steps", "2", "--out", s(&out)];
        ddpm(&[&base[..], extra].concat())
    };
    refused(&interpolate(&["--from", "1", "--to", "2", "--frames", "1"]), &["--frames must be at least 2"]);
    refused(&interpolate(&["--from", "1", "--to", "10000"]), &["--to 10000", "has 10000 images"]);
    assert!(!out.exists());
    succeeds(&interpolate(&["--from", "1", "--to", "2", "--frames", "5"]));
    assert_eq!(png_frames(&out), (5 * 34 + 2, 36, 1));
    std::fs::remove_dir_all(&dir).ok();
}
