//! Reading safetensors files (the format of PyTorch state dicts, our checkpoints and the golden tensors).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// One stored tensor, by element type.
#[derive(Clone, Debug)]
pub enum Stored {
    F32(Tensor),
    I64 { shape: Vec<usize>, data: Vec<i64> },
    U8 { shape: Vec<usize>, data: Vec<u8> },
}

/// The tensors of a safetensors file, by name.
#[derive(Clone, Debug)]
pub struct TensorFile {
    /// The file, for error messages.
    pub path: std::path::PathBuf,
    pub tensors: HashMap<String, Stored>,
    /// The file's `__metadata__` strings.
    pub metadata: HashMap<String, String>,
}

/// Reads every f32, i64 and u8 tensor of the safetensors file at `path`; any other dtype, or a file that is not
/// valid safetensors, is an error naming the file.
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, format!("bad safetensors header: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let stored = match view.dtype() {
            Dtype::F32 => {
                let data = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                Stored::F32(Tensor::new(&shape, data)?)
            }
            Dtype::I64 => {
                let data = raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
                Stored::I64 { shape, data }
            }
            Dtype::U8 => Stored::U8 { shape, data: raw.to_vec() },
            other => return Err(Error::file(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        tensors.insert(name, stored);
    }
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(TensorFile { path: path.to_path_buf(), tensors, metadata })
}

impl TensorFile {
    /// The f32 tensor `name`; `Err` naming the file when it is missing or of another type.
    pub fn f32(&self, name: &str) -> Result<&Tensor> {
        match self.tensors.get(name) {
            Some(Stored::F32(t)) => Ok(t),
            Some(_) => Err(Error::file(&self.path, format!("tensor `{name}` is not float32"))),
            None => Err(Error::file(&self.path, format!("no tensor `{name}`"))),
        }
    }

    /// The i64 tensor `name` as a flat vector.
    pub fn i64(&self, name: &str) -> Result<&[i64]> {
        match self.tensors.get(name) {
            Some(Stored::I64 { data, .. }) => Ok(data),
            Some(_) => Err(Error::file(&self.path, format!("tensor `{name}` is not int64"))),
            None => Err(Error::file(&self.path, format!("no tensor `{name}`"))),
        }
    }

    /// All f32 tensors whose name starts with `prefix`, keyed by the rest of the name.
    pub fn f32_with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| match (k.strip_prefix(prefix), v) {
                (Some(rest), Stored::F32(t)) => Some((rest.to_string(), t.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Writes f32 tensors (and string metadata) to a safetensors file at `path`, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, t)| t.data().iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, t.shape().to_vec(), b)
                .map_err(|e| Error::file(path, format!("tensor `{n}`: {e}")))?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let buf =
        safetensors::serialize(views, metadata).map_err(|e| Error::file(path, format!("cannot serialise: {e}")))?;
    crate::atomic_write::write_atomic(path, |w| {
        w.write_all(&buf).map_err(|e| Error::file(path, format!("write failed: {e}")))
    })
}
