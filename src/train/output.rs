//! What a training run writes: the layout of its output folder, and its CSV log.

use super::StepStats;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A run's output folder and the names of the files in it.
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

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The run's checkpoint, rewritten at every checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.safetensors")
    }

    /// Whether the folder already holds a run (a checkpoint), which a fresh run must not overwrite.
    pub fn holds_run(&self) -> bool {
        self.checkpoint().exists()
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
    pub const HEADER: &str = "step,epoch,loss,grad_norm,lr,fid";

    /// Opens the log at `path` for appending. A run that continues (`continuing`) appends to the rows already
    /// there; the header is written when the run starts afresh or the file is new.
    pub fn open(path: &Path, continuing: bool) -> Result<Self> {
        let fresh = !continuing || !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
        if fresh {
            writeln!(file, "{}", Self::HEADER).map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        }
        Ok(RunLog { path: path.to_path_buf(), file })
    }

    /// Appends `row`; the FID with 4 decimals, or an empty field.
    pub fn append(&mut self, row: &LogRow) -> Result<()> {
        let fid = row.fid.map_or(String::new(), |f| format!("{f:.4}"));
        let LogRow { step, epoch, stats, lr, .. } = row;
        writeln!(self.file, "{step},{epoch},{},{},{lr},{fid}", stats.loss, stats.grad_norm)
            .map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
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
