//! What a training run writes: the layout of its output folder, and its CSV log.

use super::StepStats;
use crate::atomic_write::write_atomic;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A run's output folder and the names of the files in it. Checkpoints are kept as `checkpoint-STEP.safetensors`
/// (the last few), `checkpoint.safetensors` (the latest, a hard link to or copy of the newest of those) and
/// `checkpoint-best.safetensors` (the one with the lowest FID, when FID is checked).
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The folder `root`, created (with its parents) if missing.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::file(&root, format!("cannot create the output folder: {e}")))?;
        Ok(RunDir { root })
    }

    /// The folder `root` for a run that starts afresh, created if missing. Refused when it holds a run (a
    /// checkpoint), which the new run would overwrite, or a run's leftovers without a checkpoint (a log, grids),
    /// which it would mix with its own.
    pub fn for_new_run(root: impl Into<PathBuf>) -> Result<Self> {
        let dir = RunDir::create(root)?;
        if dir.holds_run() {
            return Err(Error::file(
                &dir.root,
                format!(
                    "already holds a run; continue it with `ddpm train --resume {}`, or choose another --out",
                    dir.checkpoint().display()
                ),
            ));
        }
        let leftovers = dir.run_files();
        if !leftovers.is_empty() {
            return Err(Error::file(
                &dir.root,
                format!(
                    "holds files of an earlier run ({}) but no checkpoint to continue it from; choose another --out, \
                     or remove them",
                    file_names(&leftovers)
                ),
            ));
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The latest checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.safetensors")
    }

    /// The checkpoint of step `step`, kept until newer ones replace it.
    pub fn step_checkpoint(&self, step: u64) -> PathBuf {
        self.root.join(format!("checkpoint-{step}.safetensors"))
    }

    /// The checkpoint with the lowest FID so far.
    pub fn best_checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint-best.safetensors")
    }

    /// The run's configuration, as JSON for people to read (the checkpoints hold it too).
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// Whether the folder already holds a run (a checkpoint), which a fresh run must not overwrite.
    pub fn holds_run(&self) -> bool {
        self.checkpoint().exists()
    }

    /// `(step, path)` of every `checkpoint-STEP.safetensors` in the folder, by step.
    pub fn step_checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut found: Vec<(u64, PathBuf)> = self
            .entries()
            .into_iter()
            .filter_map(|name| {
                let step = name.strip_prefix("checkpoint-")?.strip_suffix(".safetensors")?.parse().ok()?;
                Some((step, self.root.join(name)))
            })
            .collect();
        found.sort();
        found
    }

    /// The files in the folder that a run writes (checkpoints, log, configuration, grids, loss curve).
    pub fn run_files(&self) -> Vec<PathBuf> {
        let ours = |n: &str| {
            matches!(n, "log.csv" | "config.json" | "loss_curve.png")
                || (n.starts_with("checkpoint") && n.ends_with(".safetensors"))
                || (n.starts_with("samples_") && n.ends_with(".png"))
        };
        let mut files: Vec<PathBuf> =
            self.entries().into_iter().filter(|n| ours(n)).map(|n| self.root.join(n)).collect();
        files.sort();
        files
    }

    /// The names of the folder's entries (none if it cannot be read).
    fn entries(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.root) else { return Vec::new() };
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
    }

    /// The CSV log.
    pub fn log(&self) -> PathBuf {
        self.root.join("log.csv")
    }

    /// The DDIM-50 grid at the end of epoch `epoch`.
    pub fn epoch_grid(&self, epoch: u64) -> PathBuf {
        self.root.join(format!("samples_epoch{epoch:03}.png"))
    }

    /// The final DDIM-50 grid.
    pub fn ddim_grid(&self) -> PathBuf {
        self.root.join("samples_ddim.png")
    }

    /// The final DDPM grid.
    pub fn ddpm_grid(&self) -> PathBuf {
        self.root.join("samples_ddpm.png")
    }

    /// The plot of the logged losses.
    pub fn loss_curve(&self) -> PathBuf {
        self.root.join("loss_curve.png")
    }
}

/// `a, b, c` of the files' names, at most four of them.
fn file_names(files: &[PathBuf]) -> String {
    let mut names: Vec<String> =
        files.iter().take(4).map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    if files.len() > 4 {
        names.push("...".into());
    }
    names.join(", ")
}

/// Makes `link` name the same contents as `target` (in the same folder), atomically: a hard link, or a copy where
/// the file system has none. `link` is never half written.
pub fn link_or_copy(target: &Path, link: &Path) -> Result<()> {
    let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let made = std::fs::hard_link(target, &tmp).or_else(|_| std::fs::copy(target, &tmp).map(|_| ()));
    let result = made.and_then(|_| std::fs::rename(&tmp, link));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::file(link, format!("cannot write from {}: {e}", target.display())))
}

/// One row of the log: a step's numbers, and the FID when the step ended with a check.
#[derive(Clone, Copy, Debug)]
pub struct LogRow {
    /// Steps taken, this one included.
    pub step: u64,
    /// The epoch the step belonged to.
    pub epoch: u64,
    pub stats: StepStats,
    pub lr: f64,
    pub fid: Option<f64>,
}

/// The CSV log, one row per step, appended to as training goes (unbuffered, so an interrupted run keeps every row
/// it wrote).
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    file: File,
}

impl RunLog {
    /// The column names, the log's first line.
    pub const HEADER: &str = "step,epoch,loss,grad_norm,lr,unix_time,fid";

    /// Starts a new log at `path` (the header alone), replacing any file there.
    pub fn create(path: &Path) -> Result<Self> {
        Self::with_text(path, format!("{}\n", Self::HEADER))
    }

    /// Opens the log at `path` to continue a run from its checkpoint of step `step`: the rows after that step
    /// (written after the checkpoint, by a run that went on or was interrupted) are dropped, so that the log ends
    /// up as the uninterrupted run's. `keep_last_fid` false blanks the FID of the row of step `step`, which a run
    /// that ended there measured but the longer run does not. A missing log starts anew.
    pub fn resume(path: &Path, step: u64, keep_last_fid: bool) -> Result<Self> {
        let old = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
        };
        Self::with_text(path, truncated(&old, step, keep_last_fid))
    }

    /// Writes `text` to `path` (atomically), then opens it for appending.
    fn with_text(path: &Path, text: String) -> Result<Self> {
        write_atomic(path, |w| {
            w.write_all(text.as_bytes()).map_err(|e| Error::file(path, format!("cannot write: {e}")))
        })?;
        let file =
            OpenOptions::new().append(true).open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        Ok(RunLog { path: path.to_path_buf(), file })
    }

    /// Appends `row`, stamped with the wall-clock time it is written (seconds since 1970, UTC, to 0.1 s: the one
    /// column that differs between identical runs); the FID with 4 decimals, or an empty field.
    pub fn append(&mut self, row: &LogRow) -> Result<()> {
        let fid = row.fid.map_or(String::new(), |f| format!("{f:.4}"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let LogRow { step, epoch, stats, lr, .. } = row;
        writeln!(self.file, "{step},{epoch},{},{},{lr},{now:.1},{fid}", stats.loss, stats.grad_norm)
            .map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }

    /// The lowest FID in the file, if any row has one.
    pub fn best_fid(&self) -> Option<f64> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines().skip(1).filter_map(|l| l.rsplit(',').next()?.parse::<f64>().ok()).min_by(f64::total_cmp)
    }

    /// `(step, loss)` of every row in the file, for the loss curve (rows that do not parse are skipped).
    pub fn losses(&self) -> Vec<(f64, f64)> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let mut it = l.split(',');
                let step = it.next()?.parse().ok()?;
                let _epoch = it.next()?;
                Some((step, it.next()?.parse().ok()?))
            })
            .collect()
    }
}

/// The log `text` with the header and the rows up to step `step` only; the FID of that step's row blanked unless
/// `keep_last_fid`.
fn truncated(text: &str, step: u64, keep_last_fid: bool) -> String {
    let mut out = format!("{}\n", RunLog::HEADER);
    for line in text.lines().skip(1) {
        let Some(s) = line.split(',').next().and_then(|s| s.parse::<u64>().ok()) else { continue };
        if s > step {
            break;
        }
        // A row of a log from before the time column gets an empty one, before the FID.
        let line = match line.rfind(',') {
            Some(i) if line.matches(',').count() == 5 => format!("{},{}", &line[..i], &line[i..]),
            _ => line.to_string(),
        };
        match line.rfind(',') {
            Some(i) if s == step && !keep_last_fid => out.push_str(&line[..=i]),
            _ => out.push_str(&line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_rows_up_to_the_step() {
        let h = "step,epoch,loss,grad_norm,lr,unix_time,fid\n";
        let log = format!("{h}1,0,1,2,0.1,7.5,\n2,0,1,2,0.1,8.5,55.5000\n3,1,1,2,0.1,9.5,\n");
        assert_eq!(truncated(&log, 2, true), format!("{h}1,0,1,2,0.1,7.5,\n2,0,1,2,0.1,8.5,55.5000\n"));
        assert_eq!(truncated(&log, 2, false), format!("{h}1,0,1,2,0.1,7.5,\n2,0,1,2,0.1,8.5,\n"));
        assert_eq!(truncated(&log, 9, true), log);
        assert_eq!(truncated("", 3, true), h);
        // A log from before the time column: its rows get an empty one.
        let old = "step,epoch,loss,grad_norm,lr,fid\n1,0,1,2,0.1,\n2,0,1,2,0.1,55.5000\n";
        assert_eq!(truncated(old, 2, true), format!("{h}1,0,1,2,0.1,,\n2,0,1,2,0.1,,55.5000\n"));
    }
}
