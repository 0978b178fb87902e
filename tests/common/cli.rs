//! Running the `ddpm` binary from a test: in the repository's root (or a given folder), with scratch folders per
//! test binary, and the assertions on how a run ended.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `ddpm args` in `dir`.
pub fn ddpm_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).current_dir(dir).output().unwrap()
}

/// Runs `ddpm args` in the repository's root, where the default paths (data/mnist, data/pretrained) are.
pub fn ddpm(args: &[&str]) -> Output {
    ddpm_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// An empty folder for the test `name`, unique to this test binary and process.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-{}-{}-{name}", env!("CARGO_CRATE_NAME"), std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success; returns stderr, where the commands say what they did.
pub fn succeeds(out: &Output) -> String {
    let err = stderr(out);
    assert!(out.status.success(), "{err}");
    err
}

/// Asserts a clean failure before any sampling: exit status `code` (not a signal), stderr containing each of
/// `needles`, no panic, and no line saying that sampling starts.
pub fn fails(out: &Output, code: i32, needles: &[&str]) {
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
pub fn refused(out: &Output, needles: &[&str]) {
    fails(out, 1, needles)
}

/// A refusal by the argument parser (exit status 2).
pub fn parse_error(out: &Output, needles: &[&str]) {
    fails(out, 2, needles)
}
