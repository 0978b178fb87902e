//! Checks a command runs before its first network call, so that no compute is spent on a run that cannot finish:
//! inputs readable, outputs writable, of a known kind and not replacing a file the command did not write, and
//! requests that fit in memory. Each error names the flag and the file.

use anyhow::{bail, Result};
use ddpm::atomic_write::resolve_links;
use ddpm::nn::UNetConfig;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// `Err` naming `flag` unless `path` is a file this process can open for reading.
pub fn readable_file(flag: &str, path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Err(e) => bail!("{flag} {}: cannot read: {e}", path.display()),
        Ok(m) if m.is_dir() => bail!("{flag} {}: is a directory, not a file", path.display()),
        Ok(_) => match File::open(path) {
            Err(e) => bail!("{flag} {}: cannot read: {e}", path.display()),
            Ok(_) => Ok(()),
        },
    }
}

/// `Err` naming `flag` unless `path` is a folder this process can list.
pub fn readable_dir(flag: &str, path: &Path) -> Result<()> {
    match fs::read_dir(path) {
        Err(e) => bail!("{flag} {}: cannot read the folder: {e}", path.display()),
        Ok(_) => Ok(()),
    }
}

/// The kinds of file a command writes, and so may replace without `--force`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A PNG image (a sample grid).
    Png,
    /// A safetensors file holding only the tensor `samples` (what `ddpm sample` writes).
    Samples,
    /// A Markdown table written by `ddpm sampler-table` or `ddpm quality`.
    Table,
    /// A safetensors file holding only the tensor `noise` (what `ddpm invert` writes).
    Noise,
    /// Weights written by `ddpm export`.
    Weights,
}

/// The start of the line `ddpm sampler-table` and `ddpm quality` write into their tables, by which they recognise
/// them.
pub const TABLE_MARK: &str = "<!-- written by `ddpm ";

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Png => "a PNG image",
            Kind::Samples => "a samples file (a safetensors file holding only the tensor `samples`)",
            Kind::Table => "a table written by `ddpm sampler-table` or `ddpm quality`",
            Kind::Noise => "a noise file (a safetensors file holding only the tensor `noise`)",
            Kind::Weights => "weights written by `ddpm export`",
        }
    }

    /// Whether the existing file `path` is of this kind.
    fn matches(self, path: &Path) -> bool {
        match self {
            Kind::Png => {
                let mut magic = [0u8; 8];
                File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x89PNG\r\n\x1a\n"
            }
            Kind::Samples => only_tensor(path, "samples"),
            Kind::Noise => only_tensor(path, "noise"),
            Kind::Table => fs::read_to_string(path).is_ok_and(|t| t.contains(TABLE_MARK)),
            Kind::Weights => ddpm::tensor_file::read_tensors(path)
                .is_ok_and(|f| f.metadata.get("format").map(String::as_str) == Some(ddpm::checkpoint::WEIGHTS_FORMAT)),
        }
    }
}

/// Whether `path` is a safetensors file holding the one tensor `name`.
fn only_tensor(path: &Path, name: &str) -> bool {
    ddpm::tensor_file::read_tensors(path).is_ok_and(|f| f.tensors.len() == 1 && f.tensors.contains_key(name))
}

/// `Err` naming both flags when two outputs of one command name the same file (one would overwrite the other).
pub fn distinct_outputs(outputs: &[(&str, &Path)]) -> Result<()> {
    for (i, (flag, path)) in outputs.iter().enumerate() {
        let target = resolve_links(path)?;
        for (other, other_path) in &outputs[i + 1..] {
            if resolve_links(other_path)? == target {
                bail!("{flag} and {other} both name {}; give each its own file", path.display());
            }
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same existing file (through links too).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(a), fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
    }
}

/// Checks that the output `path` of `flag` can be written and may be: its folder exists or can be made and is
/// writable, it is not a folder, it is none of the command's `inputs` (flag, path), and an existing file there is
/// of `kind` (a grid over an earlier grid is fine). The last two give way to `force`. Writes follow symbolic
/// links, so the checks apply to the link's target.
pub fn output(flag: &str, path: &Path, kind: Kind, inputs: &[(&str, &Path)], force: bool) -> Result<()> {
    let shown = path.display();
    let target = writable(flag, path)?;
    if !target.exists() || force {
        return Ok(());
    }
    if let Some((input, _)) = inputs.iter().find(|(_, p)| same_file(&target, p)) {
        bail!("{flag} {shown} is the file {input} reads; refusing to overwrite it (--force overwrites it)");
    }
    if !kind.matches(&target) {
        bail!(
            "{flag} {shown}: the existing file is not {}; refusing to replace it (--force replaces it)",
            kind.describe()
        );
    }
    Ok(())
}

/// Checks that the output `path` of `flag` is not a folder and that its folder exists or can be made and is
/// writable; returns the file a write lands in (through symbolic links).
pub fn writable(flag: &str, path: &Path) -> Result<PathBuf> {
    let target = resolve_links(path)?;
    if target.is_dir() {
        bail!("{flag} {}: is a folder; name a file in it instead", path.display());
    }
    writable_folder(flag, path, &target)?;
    Ok(target)
}

/// Checks that the folder `target` (the resolved output of `flag`) goes into is, or can be made, a writable
/// folder, by creating and removing a probe file in its nearest existing ancestor.
fn writable_folder(flag: &str, path: &Path, target: &Path) -> Result<()> {
    let shown = path.display();
    let mut dir: PathBuf = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    while !dir.exists() {
        match dir.parent() {
            Some(d) if !d.as_os_str().is_empty() => dir = d.to_path_buf(),
            _ if dir != Path::new(".") => dir = PathBuf::from("."),
            _ => bail!("{flag} {shown}: the current folder no longer exists"),
        }
    }
    if !dir.is_dir() {
        bail!("{flag} {shown}: {} is not a folder", dir.display());
    }
    let probe = dir.join(format!(".ddpm-write-check-{}", std::process::id()));
    match File::options().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("{flag} {shown}: cannot write in {}: {e}", dir.display()),
    }
}

/// `Err` naming `flag` unless `path`'s extension is one of `allowed` (without the dot).
pub fn extension(flag: &str, path: &Path, allowed: &[&str]) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str());
    if ext.is_some_and(|e| allowed.contains(&e)) {
        return Ok(());
    }
    let list = allowed.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(" or ");
    bail!("{flag} {}: the file name must end in {list}", path.display())
}

/// Bytes per image the UNet's inference forward pass keeps alive at its peak, as a multiple of `base` (every
/// activation is kept until the pass ends): about 95 KiB·base, measured as the growth of the peak resident set of
/// `ddpm bench --what sample` from n = 64 to 256 at base 16 and 32, plus 25% headroom.
const FORWARD_BYTES_PER_BASE: u128 = 120 * 1024;

/// Memory, in bytes, that sampling `n` images from a UNet of `config` on the CPU needs at its peak: the noise,
/// the images, and the forward pass's activations.
pub fn sampling_bytes(n: usize, config: &UNetConfig) -> u128 {
    let image = 4 * config.in_ch as u128 * 32 * 32;
    n as u128 * (3 * image + FORWARD_BYTES_PER_BASE * config.base as u128) + model_bytes(config)
}

/// Bytes of a UNet's parameters: about 773·base² in the convolutions, 40·base·t_dim in the blocks' time
/// projections and 20·t_dim² in the time MLP, four bytes each.
pub fn model_bytes(config: &UNetConfig) -> u128 {
    let (b, t) = (config.base as u128, config.t_dim as u128);
    4 * (773 * b * b + 40 * b * t + 20 * t * t)
}

/// Memory, in bytes, that holding `n` images of one channel on the host needs (the noise and the images, as a run
/// on a GPU keeps them).
pub fn host_image_bytes(n: usize) -> u128 {
    n as u128 * 3 * 4 * 32 * 32
}

/// The memory this machine can give a process without swapping (`MemAvailable` in `/proc/meminfo`), if known.
fn available_memory() -> Option<u128> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where memory is not known, requests above this are refused as surely mistaken.
const UNKNOWN_MEMORY_CAP: u128 = 1 << 40;

/// `Err` saying what `what` needs and what there is when `bytes` will not fit in this machine's memory.
pub fn fits_in_memory(what: &str, bytes: u128) -> Result<()> {
    let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
    match available_memory() {
        Some(avail) if bytes > avail => bail!(
            "{what} needs about {:.1} GiB of memory and this machine has {:.1} GiB available; ask for fewer",
            gib(bytes),
            gib(avail)
        ),
        None if bytes > UNKNOWN_MEMORY_CAP => {
            bail!(
                "{what} needs about {:.1} GiB of memory, more than any machine this runs on; ask for fewer",
                gib(bytes)
            )
        }
        _ => Ok(()),
    }
}
