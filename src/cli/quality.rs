//! `ddpm quality`: every number of `docs/quality.md` from one command. On an unconditional model, FID against
//! the number of network calls for DDIM (η = 0 and 1), DPM-Solver++(2M) and its SDE variant, with DDPM-1000 as
//! the reference row; on a class-conditional model, how often the classifier sees the requested digit, and FID,
//! at several guidance weights; and the DDIM inversion round trip's error on the first test digits.

use super::checks::{self, Kind};
use super::eval::{check_n, draw, grid_file, sampler_name, ScoringArgs};
use super::invert::{mnist_test, pairs_grid, roundtrip_on, test_images};
use super::quality_rows::{self, Done};
use super::sample::{check_memory, load_model, Guidance, PRETRAINED_COND, PRETRAINED_UNCOND};
use super::{on_backend, Device};
use anyhow::{bail, Context, Result};
use clap::Args;
use ddpm::atomic_write::write_atomic;
use ddpm::backend::Backend;
use ddpm::checkpoint::SamplingModel;
use ddpm::diffusion::{regeneration_kind, RoundTripError, SamplerKind, Spacing};
use ddpm::eval::Evaluator;
use ddpm::image::save_grid_png;
use ddpm::tensor::Tensor;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct QualityArgs {
    /// The unconditional model of the solver rows and the DDPM row.
    #[arg(long, default_value = PRETRAINED_UNCOND)]
    uncond: PathBuf,
    /// The class-conditional model (`train --classes`) of the guidance rows.
    #[arg(long, default_value = PRETRAINED_COND)]
    cond: PathBuf,
    /// Images per row, compared with as many real test images; a guidance row draws n/10 of each digit.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Images of the DDPM-1000 row [default: --n]. DDPM makes 1000 network calls per image; with a smaller n every
    /// solver row is also scored on its first ddpm-n images, so that it can be compared with DDPM at equal n.
    #[arg(long)]
    ddpm_n: Option<usize>,
    /// Network calls of the solver rows, comma-separated (DDIM's grid adds one at T-1 where it lacks it).
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,50")]
    calls: Vec<usize>,
    /// Guidance weights of the conditional rows, comma-separated, each >= 0.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    guidance: Vec<f32>,
    /// DDIM steps (η = 0) of the guidance rows, as `ddpm sample` draws by default.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Test digits of the inversion rows, the first of the MNIST test set in --data; 0 leaves the rows out.
    #[arg(long, default_value_t = 100)]
    invert_n: usize,
    /// DDIM steps of the inversion rows, comma-separated: each row inverts the digits on the unconditional model
    /// with that many steps and regenerates them with as many (η = 0, no clamp).
    #[arg(long, value_delimiter = ',', default_value = "10,20,50,100")]
    invert_steps: Vec<usize>,
    /// Seed of the initial noise and the per-step noise (the same for every row).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    scoring: ScoringArgs,
    /// The Markdown file to write; the grids go into a folder beside it named after it (quality.md -> quality/).
    /// Rewritten after every row, so a stopped run keeps the rows it finished. An existing file is replaced only if
    /// `ddpm quality` or `ddpm sampler-table` wrote it.
    #[arg(long, default_value = "quality.md")]
    out: PathBuf,
    #[command(flatten)]
    run: super::RunArgs,
    /// Replace --out and the grids even when they are files this command did not write.
    #[arg(long)]
    force: bool,
}

/// One row of the tables, before it runs.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// A sampler on the unconditional model.
    Solver(SamplerKind),
    /// The conditional model's DDIM with this guidance weight, n/10 images of each digit.
    Guided(f32),
    /// The unconditional model's DDIM inversion and regeneration of the first test digits with this many steps.
    Invert(usize),
}

/// The samplers of the solver rows at `calls` network calls, in the table's order.
/// DPM-Solver++ runs with both spacings the papers use: uniform log-SNR (ours by default) and uniform t.
fn solvers(calls: usize) -> [SamplerKind; SOLVERS.len()] {
    let (log_snr, uniform_t) = (Spacing::LogSnr, Spacing::UniformT);
    [
        SamplerKind::Ddim { steps: calls, eta: 0.0, clamp: true },
        SamplerKind::Ddim { steps: calls, eta: 1.0, clamp: true },
        SamplerKind::DpmPp2m { steps: calls, spacing: log_snr, clamp: true },
        SamplerKind::DpmPp2m { steps: calls, spacing: uniform_t, clamp: true },
        SamplerKind::DpmPp2mSde { steps: calls, spacing: log_snr, clamp: true },
        SamplerKind::DpmPp2mSde { steps: calls, spacing: uniform_t, clamp: true },
    ]
}

/// The sampler of the guidance rows: DDIM with `steps` steps, η = 0, as `ddpm sample` draws by default.
fn guided_kind(steps: usize) -> SamplerKind {
    SamplerKind::Ddim { steps, eta: 0.0, clamp: true }
}

/// The summary table's label of each of [`solvers`]'s samplers, in its order.
const SOLVERS: [&str; 6] = [
    "DDIM (η = 0)",
    "DDIM (η = 1)",
    "DPM-Solver++(2M), log-SNR spacing",
    "DPM-Solver++(2M), uniform t",
    "SDE-DPM-Solver++(2M), log-SNR spacing",
    "SDE-DPM-Solver++(2M), uniform t",
];

/// What the tables need to know besides the rows.
struct Plan {
    uncond: SamplingModel,
    cond: SamplingModel,
    ddpm_n: usize,
    jobs: Vec<Job>,
    grid_dir: PathBuf,
    /// The test digits of the inversion rows, preprocessed as for training (none without inversion rows).
    digits: Option<Tensor>,
}

impl Plan {
    /// The images, the model and the guidance of `job`.
    fn of(&self, job: Job, n: usize) -> (usize, &SamplingModel, Option<Guidance>) {
        match job {
            Job::Solver(SamplerKind::Ddpm) => (self.ddpm_n, &self.uncond, None),
            Job::Solver(_) => (n, &self.uncond, None),
            Job::Invert(_) => (self.invert_n(), &self.uncond, None),
            Job::Guided(w) => {
                let classes = self.cond.model.config.classes;
                let per_class = n / classes;
                (n, &self.cond, Some(Guidance { classes: (0..n).map(|i| i / per_class).collect(), w }))
            }
        }
    }

    /// How many test digits the inversion rows invert (0 without them).
    fn invert_n(&self) -> usize {
        self.digits.as_ref().map_or(0, |d| d.shape()[0])
    }

    /// The path of the grid `file` relative to the table.
    fn link(&self, file: &str) -> String {
        format!("{}/{file}", self.grid_dir.file_name().map_or(String::new(), |f| f.to_string_lossy().into()))
    }

    /// The row's name, as the tables and its grid file are named.
    fn name(&self, job: Job, steps: usize) -> String {
        match job {
            Job::Solver(kind) => sampler_name(kind, self.uncond.timesteps),
            Job::Guided(w) => format!("DDIM-{steps} guided w={w}"),
            Job::Invert(s) => format!("DDIM-{s} round trip of {}", self.invert_n()),
        }
    }
}

pub fn run(a: QualityArgs) -> Result<()> {
    check_n("--n", a.n)?;
    let ddpm_n = a.ddpm_n.unwrap_or(a.n);
    check_n("--ddpm-n", ddpm_n)?;
    if ddpm_n > a.n {
        bail!("--ddpm-n {ddpm_n} must not exceed --n {}: the solver rows are scored on their first ddpm-n images", a.n);
    }
    if a.calls.is_empty() || a.calls.contains(&0) {
        bail!("--calls must list network calls of at least 1, e.g. 5,10,20,50");
    }
    if a.invert_n > 0 && (a.invert_steps.is_empty() || a.invert_steps.contains(&0)) {
        bail!("--invert-steps must list DDIM steps of at least 1, e.g. 10,20,50,100 (or leave the rows out with --invert-n 0)");
    }
    if let Some(w) = a.guidance.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        bail!("--guidance must list finite weights >= 0, got {w}");
    }
    checks::readable_file("--uncond", &a.uncond)?;
    checks::readable_file("--cond", &a.cond)?;
    let inputs = [a.scoring.check()?, ("--uncond", a.uncond.as_path()), ("--cond", a.cond.as_path())];
    checks::extension("--out", &a.out, &["md"])?;
    checks::output("--out", &a.out, Kind::Table, &inputs, a.force)?;
    let device = a.run.resolve()?;
    let uncond = load_model(&a.uncond, true)?;
    let cond = load_model(&a.cond, true)?;
    if uncond.model.config.classes > 0 {
        bail!("--uncond {}: a class-conditional model; the solver rows need an unconditional one", a.uncond.display());
    }
    let classes = cond.model.config.classes;
    if classes == 0 {
        bail!("--cond {}: an unconditional model; the guidance rows need `ddpm train --classes`", a.cond.display());
    }
    if !a.n.is_multiple_of(classes) {
        bail!(
            "--n {}: the guidance rows draw n/{classes} images of each digit, so n must be a multiple of {classes}",
            a.n
        );
    }
    let mut jobs: Vec<Job> = a.calls.iter().flat_map(|&c| solvers(c)).map(Job::Solver).collect();
    jobs.push(Job::Solver(SamplerKind::Ddpm));
    jobs.extend(a.guidance.iter().map(|&w| Job::Guided(w)));
    if a.invert_n > 0 {
        jobs.extend(a.invert_steps.iter().map(|&s| Job::Invert(s)));
    }
    for job in &jobs {
        let (kind, t, flag) = match *job {
            Job::Solver(kind) => (kind, uncond.timesteps, "--calls"),
            Job::Guided(_) => (guided_kind(a.steps), cond.timesteps, "--steps"),
            Job::Invert(s) => (regeneration_kind(s), uncond.timesteps, "--invert-steps"),
        };
        kind.validate(t).with_context(|| format!("{flag}: {}", sampler_name(kind, t)))?;
    }
    check_memory(&device, &format!("--n {} (twice that per guided call)", a.n), 2 * a.n, &cond.model.config)?;
    check_memory(&device, &format!("--invert-n {}", a.invert_n), a.invert_n, &uncond.model.config)?;
    let digits = match a.invert_n {
        0 => None,
        n => {
            let test = mnist_test(&a.scoring.data)?;
            if n > test.n {
                bail!("--invert-n {n}: the MNIST test set in {} has {} images", a.scoring.data.display(), test.n);
            }
            Some(test_images(&test, &(0..n).collect::<Vec<_>>(), "--invert-n")?.images)
        }
    };
    let grid_dir = a.out.with_extension("");
    if grid_dir.exists() && !grid_dir.is_dir() {
        bail!("--out {}: the grids go into {}, which is not a folder", a.out.display(), grid_dir.display());
    }
    let plan = Plan { uncond, cond, ddpm_n, jobs, grid_dir, digits };
    for &job in &plan.jobs {
        let grid = plan.grid_dir.join(grid_file(&plan.name(job, a.steps)));
        checks::output("--out (its grids)", &grid, Kind::Png, &inputs, a.force)?;
    }
    on_backend!(device, |b| run_on(b, &a, &device, &plan))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// Runs the rows cheapest first (so that a run stopped early has the most rows), with the classifier on `b`,
/// rewriting the table after each.
fn run_on<B: Backend>(b: &B, a: &QualityArgs, device: &Device, plan: &Plan) -> Result<()> {
    std::fs::create_dir_all(&plan.grid_dir)
        .with_context(|| format!("{}: cannot create the grid folder", plan.grid_dir.display()))?;
    let ns = if plan.ddpm_n == a.n { vec![a.n] } else { vec![a.n, plan.ddpm_n] };
    let evaluators = Evaluator::load_many(b, &a.scoring.classifier, &a.scoring.data, &ns)?;
    // Cost in images through the network: calls times images, twice the images for a guided call.
    let sched = plan.uncond.schedule.build(plan.uncond.timesteps)?;
    let cost = |job: Job| {
        let calls = match job {
            Job::Solver(kind) => kind.timesteps(&sched).len(),
            Job::Guided(_) => 2 * a.steps,
            Job::Invert(s) => 2 * regeneration_kind(s).timesteps(&sched).len(),
        };
        calls * plan.of(job, a.n).0
    };
    let mut order: Vec<usize> = (0..plan.jobs.len()).collect();
    order.sort_by_key(|&i| cost(plan.jobs[i]));
    let settings = settings(a, device, plan)?;
    let rows_file = plan.grid_dir.join("rows.tsv");
    let before = quality_rows::load(&rows_file, &settings);
    let names: Vec<String> = plan.jobs.iter().map(|&job| plan.name(job, a.steps)).collect();
    let mut done: Vec<Option<Done>> = names.iter().map(|name| before.get(name).cloned()).collect();
    let kept = done.iter().flatten().count();
    if kept > 0 {
        eprintln!("{kept} rows measured before with the same settings are kept ({})", rows_file.display());
    }
    let todo: Vec<usize> = order.into_iter().filter(|&i| done[i].is_none()).collect();
    for i in todo {
        let (job, name) = (plan.jobs[i], &names[i]);
        let row = match job {
            Job::Invert(steps) => invert_row(b, plan, (&sched, steps), name)?,
            Job::Solver(kind) => sample_row(a, device, plan, &evaluators, (job, kind), name)?,
            Job::Guided(_) => sample_row(a, device, plan, &evaluators, (job, guided_kind(a.steps)), name)?,
        };
        done[i] = Some(row);
        let finished: Vec<(String, &Done)> =
            names.iter().zip(&done).filter_map(|(name, d)| Some((name.clone(), d.as_ref()?))).collect();
        quality_rows::save(&rows_file, &settings, &finished)?;
        write_tables(a, plan, &b.describe(), &done)?;
    }
    write_tables(a, plan, &b.describe(), &done)
}

/// Samples the row of `job` (a solver or guidance row) with `kind` and scores it with the evaluator of its n,
/// saving its grid.
fn sample_row<B: Backend>(
    a: &QualityArgs,
    device: &Device,
    plan: &Plan,
    evaluators: &[Evaluator<B>],
    (job, kind): (Job, SamplerKind),
    name: &str,
) -> Result<Done> {
    let evaluator = |n: usize| evaluators.iter().find(|e| e.n() == n).expect("an evaluator for every n");
    let (n, m, guidance) = plan.of(job, a.n);
    eprintln!("{name}: sampling {n} images");
    let (images, calls, seconds) = draw(device, m, (kind, guidance.as_ref()), n, a.seed)?;
    let q = evaluator(n).score(&images)?;
    let file = grid_file(name);
    match &guidance {
        // A row per digit, the first ten of each.
        Some(g) => {
            let per_class = n / m.model.config.classes;
            let rows: Vec<usize> = (0..g.classes.len()).filter(|i| i % per_class < 10.min(per_class)).collect();
            save_grid_png(&plan.grid_dir.join(&file), &ddpm::eval::gather(&images, &rows)?, 10.min(per_class))?
        }
        None => save_grid_png(&plan.grid_dir.join(&file), &images.head(64.min(n))?, 8)?,
    }
    eprintln!("{name}: FID {:.2} (floor {:.2} at n = {n}), {seconds:.1} s", q.fid, q.fid_floor);
    let mut row = Done::of(&q, (calls, seconds), plan.link(&file));
    match (job, &guidance) {
        (Job::Solver(_), _) if n > plan.ddpm_n => {
            let small = evaluator(plan.ddpm_n).score(&images.head(plan.ddpm_n)?)?;
            row.small = Some([small.fid, small.fid_floor]);
        }
        (Job::Guided(_), Some(g)) => {
            row.accuracy = accuracy_per_digit(&q.predicted, &g.classes, m.model.config.classes)
        }
        _ => {}
    }
    Ok(row)
}

/// Inverts the plan's test digits with `steps`-step DDIM on the unconditional model and regenerates them, saving
/// a grid of the first 20 above their reconstructions.
fn invert_row<B: Backend>(
    b: &B,
    plan: &Plan,
    (sched, steps): (&ddpm::diffusion::Schedule, usize),
    name: &str,
) -> Result<Done> {
    let digits = plan.digits.as_ref().context("an inversion row without test digits (--invert-n 0)")?;
    eprintln!("{name}: inverting and regenerating {} test digits", digits.shape()[0]);
    let start = Instant::now();
    let (_, recon) = roundtrip_on(b, &plan.uncond, (sched, steps), digits, &mut |_, _| {})?;
    let seconds = start.elapsed().as_secs_f64();
    let error = RoundTripError::new(digits, &recon)?;
    let shown = 20.min(digits.shape()[0]);
    let (pairs, cols) = pairs_grid(&digits.head(shown)?, &recon.head(shown)?)?;
    let file = grid_file(name);
    save_grid_png(&plan.grid_dir.join(&file), &pairs, cols)?;
    let (mean, worst) = (error.mean(), error.worst().1);
    eprintln!("{name}: mean absolute error {mean:.4}, worst digit {worst:.4}, {seconds:.1} s");
    let calls = 2 * regeneration_kind(steps).timesteps(sched).len();
    Ok(Done { calls, seconds, grid: plan.link(&file), roundtrip: Some([mean, worst]), ..Done::default() })
}

/// What the numbers depend on besides the row itself: the models (their files, what they are, and a checksum of
/// their weights), the sizes, the seed, the classifier and the data, and where the sampling runs (the same
/// settings on another device give other bits).
fn settings(a: &QualityArgs, device: &Device, plan: &Plan) -> Result<String> {
    let model = |path: &std::path::Path, m: &SamplingModel| -> Result<String> {
        // FNV-1a over the weights' bits: a model retrained into the same file is not mistaken for the old one.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for (_, t) in m.params.iter() {
            for v in t.to_vec()? {
                hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3);
            }
        }
        Ok(format!("{} ({}, weights {hash:016x})", path.display(), m.description))
    };
    Ok(format!(
        "uncond {}; cond {}; n {}; ddpm-n {}; seed {}; classifier {}; data {}; device {} {}",
        model(&a.uncond, &plan.uncond)?,
        model(&a.cond, &plan.cond)?,
        a.n,
        plan.ddpm_n,
        a.seed,
        a.scoring.classifier.display(),
        a.scoring.data.display(),
        device.name(),
        device.precision().name()
    ))
}

/// The floor as the tables print it: `mean (min–max)`.
fn floor(f: &[f64; 3]) -> String {
    format!("{:.2} ({:.2}–{:.2})", f[0], f[1], f[2])
}

/// The fraction of each digit's images that the classifier assigns to it (`expected[i]` is image i's digit).
fn accuracy_per_digit(predicted: &[usize], expected: &[usize], classes: usize) -> Vec<f64> {
    (0..classes)
        .map(|d| {
            let (hit, all) = expected
                .iter()
                .zip(predicted)
                .filter(|(e, _)| **e == d)
                .fold((0, 0), |(h, n), (e, p)| (h + usize::from(e == p), n + 1));
            hit as f64 / all.max(1) as f64
        })
        .collect()
}

/// Writes the tables of the rows finished so far (atomically); `device` is where the sampling ran.
fn write_tables(a: &QualityArgs, plan: &Plan, device: &str, done: &[Option<Done>]) -> Result<()> {
    let mut md = String::new();
    let ddpm_small = plan.ddpm_n < a.n;
    // The floor at ddpm-n, from whichever row was scored there first.
    let small_floor = done.iter().flatten().find_map(|d| d.small.map(|s| s[1]));
    let small_col = match (ddpm_small, small_floor) {
        (false, _) => String::new(),
        (true, Some(f)) => format!(" FID of the first {} (floor {f:.2}) |", plan.ddpm_n),
        (true, None) => format!(" FID of the first {} |", plan.ddpm_n),
    };
    let small_rule = if ddpm_small { "---|" } else { "" };
    // The summary: FID at n of each sampler against its calls.
    md.push_str("## Unconditional model: FID against network calls\n\n| sampler \\ network calls |");
    for c in &a.calls {
        let _ = write!(md, " {c} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(a.calls.len()));
    md.push('\n');
    for (s, label) in SOLVERS.iter().enumerate() {
        let _ = write!(md, "| {label} |");
        for (k, _) in a.calls.iter().enumerate() {
            let cell = done[k * SOLVERS.len() + s].as_ref().map_or("not run".to_string(), |d| format!("{:.2}", d.fid));
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    let ddpm = plan.jobs.iter().position(|j| matches!(j, Job::Solver(SamplerKind::Ddpm))).expect("a DDPM row");
    let ddpm_cell = done[ddpm].as_ref().map_or("not run".to_string(), |d| format!("{:.2}", d.fid));
    let _ = writeln!(md, "\nReference: DDPM-{} scores {ddpm_cell} at n = {}.\n", plan.uncond.timesteps, plan.ddpm_n);
    // Every solver row in full.
    let _ = writeln!(
        md,
        "| sampler | network calls | FID at n = {} |{small_col} real-vs-real floor at the row's n (range) | confidence | class entropy | wall-clock | grid |",
        a.n
    );
    let _ = writeln!(md, "|---|---|---|{small_rule}---|---|---|---|---|");
    for (job, d) in plan.jobs.iter().zip(done) {
        let Job::Solver(kind) = *job else { continue };
        let name = sampler_name(kind, plan.uncond.timesteps);
        let Some(d) = d else {
            let _ = writeln!(md, "| {name} | | not run | | | | | | |");
            continue;
        };
        // The DDPM row is scored at ddpm-n only: its FID goes in that column.
        let (fid, small) = match (d.small, kind) {
            (_, SamplerKind::Ddpm) if ddpm_small => ("–".to_string(), format!(" {:.2} |", d.fid)),
            (Some(s), _) => (format!("{:.2}", d.fid), format!(" {:.2} |", s[0])),
            (None, _) => (format!("{:.2}", d.fid), String::new()),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {fid} |{small} {} | {:.4} | {:.4} | {:.0} s | [grid]({}) |",
            d.calls,
            floor(&d.floor),
            d.confidence,
            d.entropy,
            d.seconds,
            d.grid
        );
    }
    // The guidance rows.
    let classes = plan.cond.model.config.classes;
    let _ = writeln!(
        md,
        "\n## Class-conditional model: classifier-free guidance (DDIM-{}, η = 0, {} images of each digit)\n",
        a.steps,
        a.n / classes
    );
    md.push_str("| guidance w | classified as the requested digit | worst digit | FID at n | confidence | class entropy | wall-clock | grid |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for (job, d) in plan.jobs.iter().zip(done) {
        let Job::Guided(w) = *job else { continue };
        let Some(d) = d else {
            let _ = writeln!(md, "| {w} | not run | | | | | | |");
            continue;
        };
        let acc = &d.accuracy;
        let mean = acc.iter().sum::<f64>() / acc.len() as f64;
        let (worst, lo) =
            acc.iter().enumerate().fold((0, f64::INFINITY), |b, (k, &v)| if v < b.1 { (k, v) } else { b });
        let _ = writeln!(
            md,
            "| {w} | {:.1}% | {worst} ({:.1}%) | {:.2} | {:.4} | {:.4} | {:.0} s | [grid]({}) |",
            100.0 * mean,
            100.0 * lo,
            d.fid,
            d.confidence,
            d.entropy,
            d.seconds,
            d.grid
        );
    }
    // The inversion rows.
    if let Some(digits) = &plan.digits {
        let _ = writeln!(
            md,
            "\n## Inversion: DDIM round trip of the first {} test digits (unconditional model)\n\n\
             Each digit is inverted to x_T with DDIM (η = 0, no clamp) and regenerated from it with as many steps. \
             The error is the mean absolute difference from the digit, in the model's [-1, 1] units, of the \
             reconstruction clamped to [-1, 1].\n",
            digits.shape()[0]
        );
        md.push_str("| DDIM steps | network calls (both ways) | mean absolute error | worst digit's | wall-clock | grid (digits above their reconstructions) |\n");
        md.push_str("|---|---|---|---|---|---|\n");
        for (job, d) in plan.jobs.iter().zip(done) {
            let Job::Invert(steps) = *job else { continue };
            match d.as_ref().and_then(|d| Some((d, d.roundtrip?))) {
                Some((d, [mean, worst])) => {
                    let _ = writeln!(
                        md,
                        "| {steps} | {} | {mean:.4} | {worst:.4} | {:.0} s | [grid]({}) |",
                        d.calls, d.seconds, d.grid
                    );
                }
                None => {
                    let _ = writeln!(md, "| {steps} | | not run | | | |");
                }
            }
        }
    }
    let header = format!(
        "# Sample quality: fewer network calls, and guidance\n\n\
         {mark}quality`; rerun it rather than editing the tables -->\n\
         Command: `ddpm quality --uncond {uncond} --cond {cond} --n {n}{ddpm_n} --calls {calls} --guidance {guidance} \
         --steps {steps}{invert}` (seed {seed} for every row).\n\
         Unconditional model: {udesc}. Conditional model: {cdesc}.\n\n\
         FID is measured in the 128 penultimate features of our own MNIST classifier (`{classifier}`) against as many\n\
         real test images, so it compares rows with each other, not with published FIDs; compare rows only at equal\n\
         n, against the real-vs-real floor at that n. Wall-clock is sampling only, on {device}.\n\n",
        mark = checks::TABLE_MARK,
        uncond = a.uncond.display(),
        cond = a.cond.display(),
        n = a.n,
        ddpm_n = a.ddpm_n.map_or(String::new(), |d| format!(" --ddpm-n {d}")),
        calls = a.calls.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
        guidance = a.guidance.iter().map(f32::to_string).collect::<Vec<_>>().join(","),
        steps = a.steps,
        invert = match a.invert_n {
            0 => " --invert-n 0".to_string(),
            n => format!(
                " --invert-n {n} --invert-steps {}",
                a.invert_steps.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            ),
        },
        seed = a.seed,
        udesc = plan.uncond.description,
        cdesc = plan.cond.description,
        classifier = a.scoring.classifier.display(),
    );
    let text = format!("{header}{md}");
    write_atomic(&a.out, |w| {
        w.write_all(text.as_bytes()).map_err(|e| ddpm::Error::file(&a.out, format!("write failed: {e}")))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::accuracy_per_digit;

    #[test]
    fn accuracy_counts_each_digit_against_its_own_images() {
        let expected = [0, 0, 1, 1, 2, 2];
        let predicted = [0, 1, 1, 1, 0, 0];
        assert_eq!(accuracy_per_digit(&predicted, &expected, 3), vec![0.5, 1.0, 0.0]);
    }
}
