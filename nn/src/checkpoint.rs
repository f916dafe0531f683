//! Reading and writing tensors as safetensors files, and writing files so that a crash never
//! leaves a half-written one in place.
//!
//! [`write_atomic`] writes to a temporary file in the same directory, flushes it to disk, and
//! renames it over the target: a reader sees either the old file or the new one, never a mix.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use tensor::Tensor;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A tensor's little-endian bytes as a safetensors view.
struct RawView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for RawView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_view(t: &Tensor) -> Result<RawView> {
    let bytes = t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(RawView { dtype: Dtype::F32, shape: t.shape().to_vec(), bytes })
}

fn serialize_atomic(
    path: &Path,
    views: Vec<(String, RawView)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let meta = if metadata.is_empty() { None } else { Some(metadata) };
    let bytes = safetensors::serialize(views, &meta)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Writes named f32 tensors (and string metadata) to `path`, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors.iter().map(|(name, t)| Ok((name.clone(), f32_view(t)?))).collect::<Result<_>>()?;
    serialize_atomic(path, views, metadata)
}

/// Writes a whole [`TensorFile`] (f32 tensors, integer tensors as I64, metadata) to `path`,
/// atomically: what [`read_safetensors`] read comes back the same.
pub fn write_tensor_file(path: &Path, file: &TensorFile) -> Result<()> {
    let mut views = Vec::with_capacity(file.floats.len() + file.ints.len());
    for (name, t) in &file.floats {
        views.push((name.clone(), f32_view(t)?));
    }
    for (name, (values, shape)) in &file.ints {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        views.push((name.clone(), RawView { dtype: Dtype::I64, shape: shape.clone(), bytes }));
    }
    serialize_atomic(path, views, file.metadata.clone())
}

/// The contents of a safetensors file: f32 tensors, integer tensors (token ids) and metadata.
#[derive(Default)]
pub struct TensorFile {
    pub path: PathBuf,
    pub floats: HashMap<String, Tensor>,
    /// Integer tensors (I64, I32; U8 and BOOL masks) as (values, shape).
    pub ints: HashMap<String, (Vec<i64>, Vec<usize>)>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// The f32 tensor `name`, or an error naming the file and the tensor.
    pub fn float(&self, name: &str) -> Result<&Tensor> {
        self.floats
            .get(name)
            .ok_or_else(|| Error::Param(format!("{}: no f32 tensor named {name}", self.path.display())))
    }

    /// The integer tensor `name`.
    pub fn int(&self, name: &str) -> Result<&(Vec<i64>, Vec<usize>)> {
        self.ints
            .get(name)
            .ok_or_else(|| Error::Param(format!("{}: no integer tensor named {name}", self.path.display())))
    }
}

/// Reads a safetensors file; a truncated or malformed file is an error naming the path.
pub fn read_safetensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |message: String| Error::Safetensors { path: path.to_path_buf(), message };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let mut out = TensorFile {
        path: path.to_path_buf(),
        metadata: meta.metadata().clone().unwrap_or_default(),
        ..Default::default()
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let values =
                    data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                out.floats.insert(name, Tensor::from_vec(values, &shape)?);
            }
            Dtype::I64 => {
                let values =
                    data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                out.ints.insert(name, (values, shape));
            }
            Dtype::I32 => {
                let values =
                    data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect();
                out.ints.insert(name, (values, shape));
            }
            // Masks (padding flags) are stored as bytes.
            Dtype::U8 | Dtype::BOOL => {
                out.ints.insert(name, (data.iter().map(|&b| i64::from(b)).collect(), shape));
            }
            other => {
                return Err(bad(format!(
                    "tensor {name} has dtype {other:?}; only F32, I64, I32, U8 and BOOL are supported"
                )))
            }
        }
    }
    Ok(out)
}
