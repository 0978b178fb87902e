//! Crash-safe file output: a file is either the complete old version or the complete new one, never half written.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Symbolic links followed before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Writes `path` by running `write` on a temporary file in the same directory (`.NAME.tmp-PID-N`), flushing and
/// syncing it, then renaming it onto `path`. When `path` is a symbolic link the write goes through it: the
/// temporary file is made beside the link's final target and renamed onto that, so the link survives. Creates
/// the parent directory if missing. On any error the temporary file is removed and `path` is left untouched;
/// errors name the file. Temporary files that killed writers of the same name left behind are removed first.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let target = resolve_links(path)?;
    let name = target.file_name().ok_or_else(|| Error::file(path, "not a file name"))?.to_string_lossy().into_owned();
    // The temp file must live in the target's directory: rename is only atomic within one filesystem.
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create directory: {e}")))?;
    remove_stale_temps(dir, &name);
    let tmp = temp_path(dir, &name);
    let result = write_then_rename(path, &target, &tmp, write);
    if result.is_err() {
        // Best effort: the temp file may not exist if creating it was what failed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The file a write to `path` lands in: `path` itself, or the final target of the chain of symbolic links it
/// starts (which need not exist yet). `Err` for a loop or an over-long chain.
pub fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = fs::read_link(&p).map_err(|e| Error::file(&p, format!("cannot read symbolic link: {e}")))?;
                p = match p.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::file(path, format!("more than {MAX_LINKS} levels of symbolic links")))
}

/// The prefix of every temp name for `name`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// A temp name unique within this process (pid + counter), so concurrent writers of one path do not collide.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}{}-{n}", temp_prefix(name), std::process::id()))
}

/// Removes the temp files of `name` in `dir` whose writer process no longer exists (it was killed mid-write).
/// Best effort, and only where `/proc` tells which processes exist: a live writer's file is never touched.
fn remove_stale_temps(dir: &Path, name: &str) {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    let prefix = temp_prefix(name);
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else { continue };
        let Some((pid, n)) = rest.split_once('-') else { continue };
        let counter_ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
        let (Ok(pid), true) = (pid.parse::<u32>(), counter_ok) else { continue };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `tmp` and renames it onto `target`; errors name `path`, the file the caller asked for.
fn write_then_rename(
    path: &Path,
    target: &Path,
    tmp: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let io_err = |what: &str, e: std::io::Error| Error::file(path, format!("{what} failed: {e}"));
    let file = File::create(tmp).map_err(|e| io_err("creating temporary file", e))?;
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out.into_inner().map_err(|e| io_err("write", e.into_error()))?;
    file.sync_all().map_err(|e| io_err("sync", e))?;
    fs::rename(tmp, target).map_err(|e| io_err("rename", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ddpm-atomic-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(path: &Path, bytes: &[u8]) -> Result<()> {
        write_atomic(path, |w| w.write_all(bytes).map_err(|e| Error::file(path, e.to_string())))
    }

    #[cfg(unix)]
    #[test]
    fn writes_through_a_symlink_chain_to_its_target() {
        let d = scratch("link");
        fs::create_dir_all(d.join("real")).unwrap();
        let target = d.join("real/out.png");
        fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink("real/out.png", d.join("link1")).unwrap();
        std::os::unix::fs::symlink(d.join("link1"), d.join("link2")).unwrap();
        put(&d.join("link2"), b"new").unwrap();
        assert!(fs::symlink_metadata(d.join("link2")).unwrap().file_type().is_symlink(), "the link was replaced");
        assert!(fs::symlink_metadata(d.join("link1")).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(fs::read(&target).unwrap(), b"new");
        // A dangling link is written through too: its target is created.
        std::os::unix::fs::symlink("real/new.png", d.join("dangling")).unwrap();
        put(&d.join("dangling"), b"x").unwrap();
        assert_eq!(fs::read(d.join("real/new.png")).unwrap(), b"x");
        // A loop is an error naming the file, not a hang.
        std::os::unix::fs::symlink(d.join("loop"), d.join("loop")).unwrap();
        let e = put(&d.join("loop"), b"x").unwrap_err().to_string();
        assert!(e.contains("levels of symbolic links"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_killed_writers_temp_file_is_removed_by_the_next_write() {
        let d = scratch("stale");
        // A pid above Linux's maximum (2^22) never names a live process.
        let stale = d.join(".out.bin.tmp-9999999-0");
        let other = d.join(".other.bin.tmp-9999999-0");
        let unrelated = d.join(".out.bin.tmp-notes");
        for f in [&stale, &other, &unrelated] {
            fs::write(f, b"half").unwrap();
        }
        put(&d.join("out.bin"), b"done").unwrap();
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists(), "the stale temp file is still there");
        }
        assert!(other.exists() && unrelated.exists(), "only this file's temp files are cleaned");
        assert_eq!(fs::read(d.join("out.bin")).unwrap(), b"done");
        fs::remove_dir_all(&d).unwrap();
    }
}
