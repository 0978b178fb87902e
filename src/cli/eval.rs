//! `ddpm eval` and `ddpm sampler-table`: sample quality in numbers (see `ddpm::eval`).

use super::checks::{self, Kind};
use super::sample::{check_memory, generate, load_model, Guidance, SamplerArgs};
use super::{on_backend, Device};
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use ddpm::atomic_write::write_atomic;
use ddpm::backend::Backend;
use ddpm::checkpoint::SamplingModel;
use ddpm::diffusion::{initial_noise, SamplerKind};
use ddpm::eval::{Evaluator, Quality};
use ddpm::image::save_grid_png;
use ddpm::nn::DEFAULT_WEIGHTS;
use ddpm::tensor_file::read_tensors;
use ddpm::Tensor;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the classifier and the real images come from: flags every scoring command shares.
#[derive(Args, Debug, Clone)]
pub struct ScoringArgs {
    /// Weights of the MNIST classifier whose features FID is measured in (`ddpm train-classifier` writes them).
    #[arg(long, default_value = DEFAULT_WEIGHTS)]
    pub classifier: PathBuf,
    /// Folder with the MNIST IDX files; the test set is the real reference.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
}

/// Images in the MNIST test set, the real reference: FID at n compares with n of them and needs n more for the
/// floor.
const MNIST_TEST: usize = 10_000;

impl ScoringArgs {
    /// Checks that the classifier and the data can be read; also returns the classifier as an input no output
    /// may replace.
    pub(super) fn check(&self) -> Result<(&'static str, &Path)> {
        checks::readable_file("--classifier", &self.classifier)?;
        checks::readable_dir("--data", &self.data)?;
        Ok(("--classifier", self.classifier.as_path()))
    }
}

/// `Err` naming `flag` unless FID can be measured at `n`.
pub(super) fn check_n(flag: &str, n: usize) -> Result<()> {
    if n < 2 {
        bail!("{flag} must be at least 2");
    }
    if n > MNIST_TEST / 2 {
        bail!(
            "{flag} {n}: FID at n needs 2n real test images (the reference and the real-vs-real floor) and MNIST's \
             test set has {MNIST_TEST}; use {flag} <= {}",
            MNIST_TEST / 2
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["samples", "checkpoint"])))]
pub struct EvalArgs {
    /// A safetensors file with a tensor `samples` [n,1,32,32] in [-1,1] (what `ddpm sample --out X.safetensors` writes).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// A checkpoint to draw the samples from, with the sampler flags below.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Images to score, compared with as many real test images [default: 1000 from a checkpoint, all in --samples].
    /// FID depends on n: compare FIDs only at equal n, and against the real-vs-real floor printed beside them.
    #[arg(long)]
    n: Option<usize>,
    #[command(flatten)]
    sampling: SamplerArgs,
    #[command(flatten)]
    scoring: ScoringArgs,
    /// Also write the first 64 scored images as a PNG grid.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: super::RunArgs,
    /// Replace --grid even when it is a file this command reads or one that is not a PNG.
    #[arg(long)]
    force: bool,
}

/// Reads the tensor `samples` of `path`, checks it holds images in [-1, 1], and keeps the first `n` (all if `None`).
fn read_samples(path: &Path, n: Option<usize>) -> Result<Tensor> {
    let f = read_tensors(path)?;
    let samples = f.f32("samples")?;
    let m = match samples.shape() {
        &[m, 1, 32, 32] => m,
        s => bail!("{}: tensor `samples` has shape {s:?}, expected [n, 1, 32, 32]", path.display()),
    };
    // Samples are clamped to [-1, 1]; a file in [0, 1] or [0, 255] would be scored as garbage without this check.
    if let Some(bad) = samples.data().iter().find(|v| v.is_nan() || v.abs() > 1.0 + 1e-4) {
        bail!("{}: tensor `samples` holds {bad}, outside the model's pixel range [-1, 1]", path.display());
    }
    let n = n.unwrap_or(m);
    if n > m {
        bail!("--n {n}: {} holds only {m} images", path.display());
    }
    Ok(samples.head(n)?)
}

/// The images to score, how they were made, and the seconds sampling took (0 for a file).
struct Scored {
    images: Tensor,
    source: String,
    sampler: String,
    calls: usize,
    seconds: f64,
}

/// `n` images from the checkpoint `m` with `kind`, from the initial noise of `seed`, guided when `guidance` says
/// so, with the number of network calls and the wall time.
pub(super) fn draw(
    device: &Device,
    m: &SamplingModel,
    (kind, guidance): (SamplerKind, Option<&Guidance>),
    n: usize,
    seed: u64,
) -> Result<(Tensor, usize, f64)> {
    let start = Instant::now();
    let x_t = initial_noise(seed, n, m.model.config.in_ch, 32, 32);
    let (images, calls) = generate(device, m, kind, x_t, seed, guidance)?;
    Ok((images, calls, start.elapsed().as_secs_f64()))
}

/// A sampler's name as the tables print it: `DDPM-1000`, `DDIM-50`, `DDIM-50 (η=1)`, `DPM++2M-20 (logsnr)`, with
/// `no clamp` among the notes in parentheses when the sampler does not clamp.
pub(super) fn sampler_name(kind: SamplerKind, timesteps: usize) -> String {
    let (base, mut notes) = match kind {
        SamplerKind::Ddpm => (format!("DDPM-{timesteps}"), vec![]),
        SamplerKind::Ddim { steps, eta, .. } => {
            (format!("DDIM-{steps}"), if eta == 0.0 { vec![] } else { vec![format!("η={eta}")] })
        }
        SamplerKind::DpmPp2m { steps, spacing, .. } => (format!("DPM++2M-{steps}"), vec![spacing.name().to_string()]),
        SamplerKind::DpmPp2mSde { steps, spacing, .. } => {
            (format!("DPM++2M-SDE-{steps}"), vec![spacing.name().to_string()])
        }
    };
    if !kind.clamps() {
        notes.push("no clamp".to_string());
    }
    if notes.is_empty() {
        base
    } else {
        format!("{base} ({})", notes.join(", "))
    }
}

/// Where the images to score come from: read already, or a checkpoint loaded and checked, not yet sampled.
enum Source {
    File(Tensor),
    Model(Box<SamplingModel>, SamplerKind, usize),
}

pub fn run(a: EvalArgs) -> Result<()> {
    if let Some(n) = a.n {
        check_n("--n", n)?;
    }
    let mut inputs = vec![a.scoring.check()?];
    for (flag, path) in [("--samples", &a.samples), ("--checkpoint", &a.checkpoint)] {
        if let Some(p) = path {
            checks::readable_file(flag, p)?;
            inputs.push((flag, p.as_path()));
        }
    }
    if let Some(grid) = &a.grid {
        checks::extension("--grid", grid, &["png"])?;
        checks::output("--grid", grid, Kind::Png, &inputs, a.force)?;
    }
    let device = a.run.resolve()?;
    let source = match (&a.samples, &a.checkpoint) {
        (Some(path), _) => Source::File(read_samples(path, a.n)?),
        (None, Some(ckpt)) => {
            let m = load_model(ckpt, !a.sampling.no_ema)?;
            let kind = a.sampling.kind()?;
            kind.validate(m.timesteps).context("bad sampler settings")?;
            let n = a.n.unwrap_or(1000);
            check_memory(&device, &format!("--n {n}"), n, &m.model.config)?;
            Source::Model(Box::new(m), kind, n)
        }
        (None, None) => unreachable!("clap requires --samples or --checkpoint"),
    };
    on_backend!(device, |b| eval_on(b, &a, &device, source))
}

/// Scores `source` with the classifier on `b`: the classifier and the real images are loaded before any sampling,
/// so that a problem with them costs no sampling time.
fn eval_on<B: Backend>(b: &B, a: &EvalArgs, device: &Device, source: Source) -> Result<()> {
    let n = match &source {
        Source::File(images) => images.shape()[0],
        Source::Model(.., n) => *n,
    };
    check_n("--n", n)?;
    let evaluator = Evaluator::load(b, &a.scoring.classifier, &a.scoring.data, n)?;
    let scored = match source {
        Source::File(images) => {
            let path = a.samples.as_ref().expect("a file source comes from --samples");
            Scored { images, source: path.display().to_string(), sampler: "file".into(), calls: 0, seconds: 0.0 }
        }
        Source::Model(m, kind, n) => {
            let ckpt = a.checkpoint.as_ref().expect("a model source comes from --checkpoint");
            eprintln!(
                "sampling {n} images with {} from {} ({})",
                sampler_name(kind, m.timesteps),
                ckpt.display(),
                m.description
            );
            let (images, calls, seconds) = draw(device, &m, (kind, None), n, a.sampling.seed)?;
            Scored {
                images,
                source: ckpt.display().to_string(),
                sampler: sampler_name(kind, m.timesteps),
                calls,
                seconds,
            }
        }
    };
    if let Some(grid) = &a.grid {
        save_grid_png(grid, &scored.images.head(64)?, 8)?;
    }
    let q = evaluator.score(&scored.images)?;
    if a.json {
        println!("{}", json_line(&q, &scored));
    } else {
        print!("{}", report(&q, &scored));
    }
    Ok(())
}

/// The human-readable report.
fn report(q: &Quality, s: &Scored) -> String {
    let hist = q.classes.histogram.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" ");
    let made = if s.calls > 0 {
        format!(" ({}, {} network calls, {:.1} s)", s.sampler, s.calls, s.seconds)
    } else {
        String::new()
    };
    format!(
        "scored {n} images from {src}{made}\n\
         FID                 {fid:9.3}   against {n} real test images, in the classifier's 128 features\n\
         real-vs-real floor  {floor:9.3}   mean FID of sets of {n} other real test images (range {lo:.2}-{hi:.2}):\n\
         \x20                               FID at small n is biased upward, so compare FIDs only at equal n\n\
         confidence          {conf:9.4}   mean max softmax (real test images: {rconf:.4})\n\
         class entropy       {ent:9.4}   of the predicted digits (ln 10 = 2.3026 is uniform; real: {rent:.4})\n\
         predicted 0..9      {hist}\n",
        n = q.n,
        src = s.source,
        fid = q.fid,
        floor = q.fid_floor,
        lo = q.fid_floor_range.0,
        hi = q.fid_floor_range.1,
        conf = q.classes.confidence,
        rconf = q.real_classes.confidence,
        ent = q.classes.entropy,
        rent = q.real_classes.entropy,
    )
}

/// One JSON object on one line (strings here never need escaping beyond quotes and backslashes).
fn json_line(q: &Quality, s: &Scored) -> String {
    let esc = |t: &str| t.replace('\\', "\\\\").replace('"', "\\\"");
    let hist = q.classes.histogram.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    format!(
        "{{\"source\":\"{}\",\"sampler\":\"{}\",\"n\":{},\"fid\":{:.6},\"fid_floor\":{:.6},\"fid_floor_min\":{:.6},\"fid_floor_max\":{:.6},\"confidence\":{:.6},\"real_confidence\":{:.6},\"class_entropy\":{:.6},\"real_class_entropy\":{:.6},\"class_histogram\":[{hist}],\"network_calls\":{},\"sampling_seconds\":{:.3}}}",
        esc(&s.source),
        esc(&s.sampler),
        q.n,
        q.fid,
        q.fid_floor,
        q.fid_floor_range.0,
        q.fid_floor_range.1,
        q.classes.confidence,
        q.real_classes.confidence,
        q.classes.entropy,
        q.real_classes.entropy,
        s.calls,
        s.seconds
    )
}

#[derive(Args, Debug)]
pub struct TableArgs {
    /// The checkpoint to score.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images per sampler (and real test images compared with).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Images for the DDPM row only [default: --n]. DDPM makes T network calls per image, 20x DDIM-50's; a
    /// smaller n keeps it affordable on a CPU, and the row then gets its own floor at that n.
    #[arg(long)]
    ddpm_n: Option<usize>,
    /// Seed of the initial noise and the per-step noise (the same for every sampler).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    scoring: ScoringArgs,
    /// The Markdown file to write [default: quality.md in the checkpoint's folder]; the grids go into a folder
    /// beside it named after it (DIR/quality.md -> DIR/quality/). Rewritten after every row, so a stopped run keeps
    /// the rows it finished. An existing file is replaced only if this command wrote it.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run: super::RunArgs,
    /// Replace --out and the grids even when they are files this command did not write.
    #[arg(long)]
    force: bool,
}

/// The blog post's sampler table, in its order: DDPM-1000, DDIM-100/50/20/10 (η = 0), DDIM-50 with η = 1.
const TABLE: [SamplerKind; 6] = [
    SamplerKind::Ddpm,
    SamplerKind::Ddim { steps: 100, eta: 0.0, clamp: true },
    SamplerKind::Ddim { steps: 50, eta: 0.0, clamp: true },
    SamplerKind::Ddim { steps: 20, eta: 0.0, clamp: true },
    SamplerKind::Ddim { steps: 10, eta: 0.0, clamp: true },
    SamplerKind::Ddim { steps: 50, eta: 1.0, clamp: true },
];

/// One finished row.
struct Row {
    name: String,
    calls: usize,
    seconds: f64,
    q: Quality,
    grid: String,
}

/// The grid file of a row: `ddim-50.png`, `ddim-50eta1.png`, `ddpm-1000.png`.
pub(super) fn grid_file(name: &str) -> String {
    format!("{}.png", name.to_lowercase().replace([' ', '(', ')', '=', ','], "").replace('η', "eta"))
}

pub fn run_table(mut a: TableArgs) -> Result<()> {
    check_n("--n", a.n)?;
    let ddpm_n = a.ddpm_n.unwrap_or(a.n);
    check_n("--ddpm-n", ddpm_n)?;
    checks::readable_file("--checkpoint", &a.checkpoint)?;
    let inputs = [a.scoring.check()?, ("--checkpoint", a.checkpoint.as_path())];
    let out = match &a.out {
        Some(out) => out.clone(),
        None => a.checkpoint.with_file_name("quality.md"),
    };
    checks::extension("--out", &out, &["md"])?;
    checks::output("--out", &out, Kind::Table, &inputs, a.force)?;
    let device = a.run.resolve()?;
    let m = load_model(&a.checkpoint, true)?;
    let (flag, most) = if ddpm_n > a.n { ("--ddpm-n", ddpm_n) } else { ("--n", a.n) };
    check_memory(&device, &format!("{flag} {most}"), most, &m.model.config)?;
    for kind in TABLE {
        kind.validate(m.timesteps).with_context(|| {
            format!("{}: the table's {} needs more timesteps", a.checkpoint.display(), sampler_name(kind, m.timesteps))
        })?;
    }
    let grid_dir = out.with_extension("");
    if grid_dir.exists() && !grid_dir.is_dir() {
        bail!("--out {}: the grids go into {}, which is not a folder", out.display(), grid_dir.display());
    }
    for kind in TABLE {
        let grid = grid_dir.join(grid_file(&sampler_name(kind, m.timesteps)));
        checks::output("--out (its grids)", &grid, Kind::Png, &inputs, a.force)?;
    }
    a.out = Some(out);
    // Cheapest first, so that a run stopped early has the most rows.
    let mut order: Vec<usize> = (0..TABLE.len()).collect();
    order.sort_by_key(|&i| match TABLE[i] {
        SamplerKind::Ddpm => m.timesteps * ddpm_n,
        SamplerKind::Ddim { steps, .. }
        | SamplerKind::DpmPp2m { steps, .. }
        | SamplerKind::DpmPp2mSde { steps, .. } => steps * a.n,
    });
    on_backend!(device, |b| table_on(b, &a, &device, &m, ddpm_n, order))?;
    eprintln!("wrote {}", a.out_path().display());
    Ok(())
}

impl TableArgs {
    /// `--out`, resolved to its default by [`run_table`].
    fn out_path(&self) -> &Path {
        self.out.as_deref().expect("run_table sets --out")
    }
}

/// Runs the rows of [`TABLE`] in `order`, with the classifier on `b`, rewriting the table after each.
fn table_on<B: Backend>(
    b: &B,
    a: &TableArgs,
    device: &Device,
    m: &SamplingModel,
    ddpm_n: usize,
    order: Vec<usize>,
) -> Result<()> {
    let grid_dir = a.out_path().with_extension("");
    std::fs::create_dir_all(&grid_dir)
        .with_context(|| format!("{}: cannot create the grid folder", grid_dir.display()))?;
    let mut rows: Vec<Option<Row>> = (0..TABLE.len()).map(|_| None).collect();
    // One evaluator per n in the table: the DDPM row's n may differ.
    let ns = if ddpm_n == a.n { vec![a.n] } else { vec![a.n, ddpm_n] };
    let evaluators = Evaluator::load_many(b, &a.scoring.classifier, &a.scoring.data, &ns)?;
    for i in order {
        let kind = TABLE[i];
        let n = if kind == SamplerKind::Ddpm { ddpm_n } else { a.n };
        let ev = evaluators.iter().find(|e| e.n() == n).expect("an evaluator for every n in the table");
        let name = sampler_name(kind, m.timesteps);
        eprintln!("{name}: sampling {n} images");
        let (images, calls, seconds) = draw(device, m, (kind, None), n, a.seed)?;
        let q = ev.score(&images)?;
        let file = grid_file(&name);
        save_grid_png(&grid_dir.join(&file), &images.head(64)?, 8)?;
        eprintln!("{name}: FID {:.2} (floor {:.2} at n = {n}), {seconds:.1} s", q.fid, q.fid_floor);
        let grid =
            format!("{}/{file}", grid_dir.file_name().map_or(String::new(), |f| f.to_string_lossy().into_owned()));
        rows[i] = Some(Row { name, calls, seconds, q, grid });
        write_table(a, m, &b.describe(), &rows)?;
    }
    Ok(())
}

/// The floor as the table prints it: `mean (min–max)`.
pub(super) fn floor(q: &Quality) -> String {
    format!("{:.2} ({:.2}–{:.2})", q.fid_floor, q.fid_floor_range.0, q.fid_floor_range.1)
}

/// Writes the Markdown table of the rows finished so far (atomically); `device` is where the sampling ran.
fn write_table(a: &TableArgs, m: &SamplingModel, device: &str, rows: &[Option<Row>]) -> Result<()> {
    let mut md = String::new();
    md.push_str("| sampler | network calls | n | FID | real-vs-real floor at n (range) | confidence | class entropy | wall-clock | grid |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    // One real-images row per n in the table (the DDPM row may have its own).
    let mut reals: Vec<&Quality> = Vec::new();
    for r in rows.iter().flatten() {
        if !reals.iter().any(|q| q.n == r.q.n) {
            reals.push(&r.q);
        }
    }
    reals.sort_by_key(|q| std::cmp::Reverse(q.n));
    for q in reals {
        md.push_str(&format!(
            "| real test images | – | {} | {:.2} (= floor) | {} | {:.4} | {:.4} | – | – |\n",
            q.n,
            q.fid_floor,
            floor(q),
            q.real_classes.confidence,
            q.real_classes.entropy
        ));
    }
    for (kind, row) in TABLE.iter().zip(rows) {
        match row {
            Some(r) => md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {:.4} | {:.4} | {:.0} s | [grid]({}) |\n",
                r.name,
                r.calls,
                r.q.n,
                r.q.fid,
                floor(&r.q),
                r.q.classes.confidence,
                r.q.classes.entropy,
                r.seconds,
                r.grid
            )),
            None => md.push_str(&format!("| {} | | | not run | | | | | |\n", sampler_name(*kind, m.timesteps))),
        }
    }
    let header = format!(
        "# Sample quality: the blog post's sampler table, measured\n\n\
         {mark}sampler-table`; rerun it rather than editing the table -->\n\
         Command: `ddpm sampler-table --checkpoint {ckpt} --n {n}{ddpm_n}` (seed {seed} for every sampler).\n\
         Checkpoint: {desc}.\n\n\
         - **FID** is the Fréchet distance between the samples and as many real MNIST test images, in the 128\n\
         \x20 penultimate features of our own MNIST classifier (`{classifier}`), not Inception's: the numbers are\n\
         \x20 comparable with each other, not with published FIDs.\n\
         - FID from n images is biased upward, so each row shows the **floor**: the mean FID of up to 4 sets of n\n\
         \x20 *other* real test images against the same reference, with its range. A perfect sampler scores in that\n\
         \x20 range; compare rows only at equal n.\n\
         - **Confidence** is the classifier's mean max-softmax probability; **class entropy** that of its\n\
         \x20 predicted digits (ln 10 = 2.3026 when all ten are equally frequent).\n\
         - Wall-clock is sampling only, on {device} of the machine the command ran on.\n\n",
        ckpt = a.checkpoint.display(),
        n = a.n,
        ddpm_n = a.ddpm_n.map_or(String::new(), |d| format!(" --ddpm-n {d}")),
        seed = a.seed,
        desc = m.description,
        classifier = a.scoring.classifier.display(),
        mark = checks::TABLE_MARK,
    );
    let text = format!("{header}{md}");
    let out = a.out_path();
    write_atomic(out, |w| {
        w.write_all(text.as_bytes()).map_err(|e| ddpm::Error::file(out, format!("write failed: {e}")))
    })?;
    Ok(())
}
