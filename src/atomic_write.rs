//! Crash-safe file output: a file is either the complete old version or the complete new one, never half written.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Writes `path` by running `write` on a temporary file in the same directory (`.NAME.tmp-PID-N`), flushing and
/// syncing it, then renaming it onto `path`. Creates the parent directory if missing. On any error the temporary
/// file is removed and `path` is left untouched; errors name the file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file name"))?;
    // The temp file must live in the target's directory: rename is only atomic within one filesystem.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create directory: {e}")))?;
    let tmp = temp_path(dir, &name.to_string_lossy());
    let result = write_then_rename(path, &tmp, write);
    if result.is_err() {
        // Best effort: the temp file may not exist if creating it was what failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A temp name unique within this process (pid + counter), so concurrent writers of one path do not collide.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn write_then_rename(path: &Path, tmp: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let io_err = |what: &str, e: std::io::Error| Error::file(path, format!("{what} failed: {e}"));
    let file = File::create(tmp).map_err(|e| io_err("creating temporary file", e))?;
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| io_err("write", e.into_error()))?;
    file.sync_all().map_err(|e| io_err("sync", e))?;
    fs::rename(tmp, path).map_err(|e| io_err("rename", e))
}
