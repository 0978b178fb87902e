//! Reading safetensors files (the format of PyTorch state dicts, our checkpoints and the golden tensors).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap, HashSet};
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
///
/// The bytes depend only on the arguments: the header lists `__metadata__` first, in key order, then the tensors
/// in name order, as `safetensors::serialize` orders them, whose metadata order varies from run to run.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, &Tensor)],
    metadata: Option<BTreeMap<String, String>>,
) -> Result<()> {
    let buf = serialize(tensors, metadata.as_ref()).map_err(|m| Error::file(path, m))?;
    crate::atomic_write::write_atomic(path, |w| {
        w.write_all(&buf).map_err(|e| Error::file(path, format!("write failed: {e}")))
    })
}

/// The safetensors file of `tensors` (all F32, stored one after another in name order) and `metadata`: an 8-byte
/// little-endian header length, the JSON header padded with spaces to a multiple of 8 bytes, the data.
fn serialize(
    tensors: &[(String, &Tensor)],
    metadata: Option<&BTreeMap<String, String>>,
) -> std::result::Result<Vec<u8>, String> {
    let mut names = HashSet::new();
    let mut entries = Vec::new();
    if let Some(m) = metadata {
        let fields: Vec<String> = m.iter().map(|(k, v)| format!("{}:{}", json_string(k), json_string(v))).collect();
        entries.push(format!("\"__metadata__\":{{{}}}", fields.join(",")));
    }
    let mut sorted: Vec<&(String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut offset = 0;
    for (name, t) in &sorted {
        if name == "__metadata__" || !names.insert(name.as_str()) {
            return Err(format!("cannot serialise: tensor name `{name}` is reserved or repeated"));
        }
        let shape: Vec<String> = t.shape().iter().map(usize::to_string).collect();
        let end = offset + 4 * t.data().len();
        entries.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json_string(name),
            shape.join(",")
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut buf = Vec::with_capacity(8 + header.len() + offset);
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(&header);
    for (_, t) in &sorted {
        buf.extend(t.data().iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(buf)
}

/// `s` as a JSON string literal, escaped as serde_json (and so the `safetensors` crate) escapes it.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    /// The `safetensors` crate's own bytes for the same tensors and metadata (of at most one key, whose order
    /// cannot vary).
    fn reference(tensors: &[(String, &Tensor)], metadata: Option<&BTreeMap<String, String>>) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> =
            tensors.iter().map(|(_, t)| t.data().iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, t), b)| (n.clone(), TensorView::new(Dtype::F32, t.shape().to_vec(), b).unwrap()));
        safetensors::serialize(views, metadata.map(|m| m.clone().into_iter().collect())).unwrap()
    }

    #[test]
    fn writes_what_the_safetensors_crate_writes() {
        let a = Tensor::new(&[2, 3], (0..6).map(|i| i as f32 - 2.5).collect()).unwrap();
        let b = Tensor::new(&[1], vec![7.0]).unwrap();
        let c = Tensor::zeros(&[0, 4]);
        let tensors = vec![("z.weight".to_string(), &a), ("a \"q\"\\".to_string(), &b), ("m".to_string(), &c)];
        let meta: BTreeMap<String, String> = [("format".to_string(), "x\ny\t\u{1}".to_string())].into();
        assert_eq!(serialize(&tensors, None).unwrap(), reference(&tensors, None));
        assert_eq!(serialize(&tensors, Some(&meta)).unwrap(), reference(&tensors, Some(&meta)));
        let read = SafeTensors::deserialize(&serialize(&tensors, Some(&meta)).unwrap()).unwrap().tensors().len();
        assert_eq!(read, 3);
    }

    #[test]
    fn metadata_is_written_in_key_order() {
        let t = Tensor::zeros(&[1]);
        let meta: BTreeMap<String, String> =
            ["b", "c", "a"].iter().map(|k| (k.to_string(), k.to_uppercase())).collect();
        let buf = serialize(&[("t".to_string(), &t)], Some(&meta)).unwrap();
        let header = std::str::from_utf8(&buf[8..]).unwrap();
        assert!(header.starts_with(r#"{"__metadata__":{"a":"A","b":"B","c":"C"},"t":"#), "{header}");
        let repeated = serialize(&[("t".to_string(), &t), ("t".to_string(), &t)], None);
        assert!(repeated.unwrap_err().contains("repeated"));
    }
}
