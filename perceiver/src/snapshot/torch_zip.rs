//! Reading PyTorch's `pytorch_model.bin`: the zip archive that `torch.save` writes for a state
//! dict, read without running any of it.
//!
//! The archive holds one top folder (its name varies) with `data.pkl`, a pickle of the state
//! dict; `data/<key>`, the raw little-endian bytes of each storage; and small entries such as
//! `byteorder` and `version`. Every tensor in the pickle is a call
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, and
//! its storage is a persistent id `('storage', torch.FloatStorage, key, location, numel)` that
//! names the `data/<key>` entry. The pickle is read by `snapshot/pickle.rs`, which never runs
//! anything; this file finds the entries and builds the tensors.
//!
//! Only float32 storages are read. Any other dtype, a truncated or malformed pickle, a missing
//! or wrongly sized storage entry, or a view that reaches past its storage is an error naming
//! the file, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use nn::checkpoint::TensorFile;
use tensor::Tensor;
use zip::result::ZipError;
use zip::ZipArchive;

use super::pickle::{Msg, TensorRef, Unpickler, Value};
use crate::error::{Error, Result};

/// Reads the state dict in `path` (the zip format of `torch.save`) as f32 tensors keyed by
/// their state-dict names. Every format problem is an [`Error::Data`] naming the file.
pub fn read_pytorch_bin(path: &Path) -> Result<TensorFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let floats = read_archive(BufReader::new(file))
        .map_err(|message| Error::Data { path: path.to_path_buf(), message })?;
    Ok(TensorFile { path: path.to_path_buf(), floats, ..Default::default() })
}

fn read_archive<R: Read + Seek>(reader: R) -> Msg<HashMap<String, Tensor>> {
    let mut zip = ZipArchive::new(reader).map_err(|e| {
        format!("not a zip archive ({e}); only the zip format of torch.save (PyTorch 1.6 and later) is read")
    })?;
    let prefix = archive_prefix(&zip)?;

    if let Some(order) = read_entry(&mut zip, &format!("{prefix}byteorder"))? {
        if order.trim_ascii() != b"little" {
            let order = String::from_utf8_lossy(&order);
            return Err(format!("byteorder is {order:?}; only little-endian checkpoints are supported"));
        }
    }
    let pickle = read_entry(&mut zip, &format!("{prefix}data.pkl"))?
        .ok_or_else(|| format!("no entry {prefix}data.pkl"))?;
    let root = Unpickler::new(&pickle).load()?;
    let tensors = state_dict(&root)?;

    // Read each storage once, however many tensors view it (tied weights share one).
    let mut by_storage: BTreeMap<&str, Vec<(&str, &TensorRef)>> = BTreeMap::new();
    for (name, t) in &tensors {
        by_storage.entry(&t.storage.key).or_default().push((name, t));
    }
    let mut floats = HashMap::with_capacity(tensors.len());
    for (key, views) in by_storage {
        let entry = format!("{prefix}data/{key}");
        let bytes = read_entry(&mut zip, &entry)?
            .ok_or_else(|| format!("missing storage entry {entry} (the data of {})", views[0].0))?;
        let values: Vec<f32> =
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        for (name, t) in views {
            let expected = t.storage.numel.checked_mul(4);
            if expected != Some(bytes.len()) {
                return Err(format!(
                    "storage entry {entry} holds {} bytes, but tensor {name} claims {} float32 values",
                    bytes.len(),
                    t.storage.numel
                ));
            }
            let data = gather(&values, t).map_err(|e| format!("tensor {name}: {e}"))?;
            let tensor = Tensor::from_vec(data, &t.shape).map_err(|e| format!("tensor {name}: {e}"))?;
            floats.insert(name.to_string(), tensor);
        }
    }
    Ok(floats)
}

/// The archive's top folder with its trailing `/` (whatever `torch.save` named it), found as
/// the one folder holding a `data.pkl`.
fn archive_prefix<R: Read + Seek>(zip: &ZipArchive<R>) -> Msg<String> {
    let mut prefixes: Vec<&str> = zip
        .file_names()
        .filter_map(|name| name.strip_suffix("data.pkl"))
        .filter(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    match prefixes[..] {
        [prefix] => Ok(prefix.to_string()),
        [] => Err("no data.pkl in the archive: not a state dict saved by torch.save".into()),
        _ => Err(format!("several data.pkl entries in the archive ({})", prefixes.join(", "))),
    }
}

/// The bytes of entry `name`, or `None` when the archive has no such entry.
fn read_entry<R: Read + Seek>(zip: &mut ZipArchive<R>, name: &str) -> Msg<Option<Vec<u8>>> {
    let mut entry = match zip.by_name(name) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("zip entry {name}: {e}")),
    };
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).map_err(|e| format!("zip entry {name}: {e}"))?;
    Ok(Some(bytes))
}

/// The top-level dict of the pickle, as its tensors by name (a repeated key keeps its last
/// value, as in Python).
fn state_dict(root: &Value) -> Msg<BTreeMap<String, Rc<TensorRef>>> {
    let Value::Dict(dict) = root else {
        return Err(format!("data.pkl holds {}, not a state dict", root.kind()));
    };
    let mut tensors = BTreeMap::new();
    for (key, value) in dict.borrow().iter() {
        let Value::Str(name) = key else {
            return Err(format!("data.pkl: a state-dict key is {}, not a string", key.kind()));
        };
        let Value::Tensor(t) = value else {
            return Err(format!("data.pkl: {name} is {}, not a tensor", value.kind()));
        };
        tensors.insert(name.to_string(), t.clone());
    }
    Ok(tensors)
}

/// The elements of view `t` of `storage`, in row-major order. Checks that the view stays
/// inside the storage before touching it.
fn gather(storage: &[f32], t: &TensorRef) -> Msg<Vec<f32>> {
    let numel = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let numel = numel.ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    if numel > storage.len() {
        return Err(format!(
            "shape {:?} has {numel} elements, but its storage {} holds {}",
            t.shape,
            t.storage.key,
            storage.len()
        ));
    }
    // The stride of an axis of size 1 is never used; zero keeps the walk below in range.
    let stride: Vec<usize> =
        t.shape.iter().zip(&t.stride).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    // Strides are never negative, so the farthest element is the one at the last index.
    let last = t
        .shape
        .iter()
        .zip(&stride)
        .try_fold(t.offset, |at, (&d, &s)| (d - 1).checked_mul(s)?.checked_add(at));
    match last {
        Some(last) if last < storage.len() => {}
        _ => {
            return Err(format!(
                "offset {} with shape {:?} and stride {:?} reaches past its storage {} ({} elements)",
                t.offset,
                t.shape,
                t.stride,
                t.storage.key,
                storage.len()
            ))
        }
    }
    let mut contiguous = 1;
    let is_contiguous = t.shape.iter().zip(&stride).rev().all(|(&d, &s)| {
        let ok = d == 1 || s == contiguous;
        contiguous *= d;
        ok
    });
    if is_contiguous {
        return Ok(storage[t.offset..t.offset + numel].to_vec());
    }
    // Walk the index like an odometer; `at` is the storage position of `index`.
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.shape.len()];
    let mut at = t.offset;
    for _ in 0..numel {
        out.push(storage[at]);
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            at += stride[axis];
            if index[axis] < t.shape[axis] {
                break;
            }
            at -= stride[axis] * t.shape[axis];
            index[axis] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    use super::*;
    use crate::snapshot::pickle::op;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    /// A temporary file that is removed when dropped.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp_path(tag: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempFile(
            std::env::temp_dir().join(format!("perceiver-torch-zip-{}-{n}-{tag}.bin", std::process::id())),
        )
    }

    /// A zip archive of stored `entries`, as torch.save writes it.
    fn write_zip(tag: &str, entries: &[(&str, &[u8])]) -> TempFile {
        let file = temp_path(tag);
        let mut zip = ZipWriter::new(File::create(&file.0).unwrap());
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for (name, bytes) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        file
    }

    fn error_of(path: &Path) -> String {
        match read_pytorch_bin(path) {
            Ok(_) => panic!("{} read without an error", path.display()),
            Err(e) => e.to_string(),
        }
    }

    fn unicode(s: &str) -> Vec<u8> {
        let mut out = vec![op::BINUNICODE];
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
        out
    }

    fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }

    fn int_tuple(values: &[u8]) -> Vec<u8> {
        let mut out = vec![op::MARK];
        for &v in values {
            out.extend([op::BININT1, v]);
        }
        out.push(op::TUPLE);
        out
    }

    /// The pickle of `{"w": tensor}` where the tensor views storage "0" (of `numel` values of
    /// `storage_type`) at `offset` with `shape` and `stride`.
    fn state_dict_pickle(storage_type: &str, numel: u8, offset: u8, shape: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = vec![op::PROTO, 2, op::EMPTY_DICT];
        p.extend(unicode("w"));
        p.extend(global("torch._utils", "_rebuild_tensor_v2"));
        p.extend([op::MARK, op::MARK]);
        p.extend(unicode("storage"));
        p.extend(global("torch", storage_type));
        p.extend(unicode("0"));
        p.extend(unicode("cpu"));
        p.extend([op::BININT1, numel, op::TUPLE, op::BINPERSID]);
        p.extend([op::BININT1, offset]);
        p.extend(int_tuple(shape));
        p.extend(int_tuple(stride));
        p.push(op::NEWFALSE);
        p.extend(global("collections", "OrderedDict"));
        p.extend([op::EMPTY_TUPLE, op::REDUCE, op::TUPLE, op::REDUCE, op::SETITEM, op::STOP]);
        p
    }

    fn storage_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn fixture_matches_its_safetensors() {
        let bin =
            read_pytorch_bin(Path::new(&format!("{FIXTURES}/hf-perceiver-ar-clm-bin/pytorch_model.bin")))
                .unwrap();
        let st = nn::checkpoint::read_safetensors(Path::new(&format!(
            "{FIXTURES}/hf-perceiver-ar-clm/model.safetensors"
        )))
        .unwrap();
        let mut names: Vec<_> = bin.floats.keys().collect();
        let mut expected: Vec<_> = st.floats.keys().collect();
        names.sort();
        expected.sort();
        assert_eq!(names, expected);
        assert!(names.contains(&&"backend_model.input_adapter.txt_embedding.weight".to_string()));
        for (name, want) in &st.floats {
            let got = &bin.floats[name];
            assert_eq!(got.shape(), want.shape(), "{name}");
            let (got, want) = (got.to_vec().unwrap(), want.to_vec().unwrap());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{name}");
        }
    }

    #[test]
    fn reads_views_with_offset_and_strides() {
        // A transposed 2x2 view starting at element 1 of [0, 1, 2, 3, 4, 5].
        let pickle = state_dict_pickle("FloatStorage", 6, 1, &[2, 2], &[1, 2]);
        let data = storage_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let file = write_zip(
            "strided",
            &[("archive/data.pkl", &pickle), ("archive/byteorder", b"little"), ("archive/data/0", &data)],
        );
        let read = read_pytorch_bin(&file.0).unwrap();
        let w = &read.floats["w"];
        assert_eq!(w.shape(), &[2, 2]);
        assert_eq!(w.to_vec().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn refuses_other_globals() {
        let mut pickle = vec![op::PROTO, 2];
        pickle.extend(global("os", "system"));
        pickle.extend(unicode("echo hello"));
        pickle.extend([op::TUPLE1, op::REDUCE, op::STOP]);
        let file = write_zip("os-system", &[("archive/data.pkl", &pickle)]);
        let message = error_of(&file.0);
        assert!(message.contains(&file.0.display().to_string()), "{message}");
        assert!(message.contains("refuses to load global os.system"), "{message}");
    }

    #[test]
    fn unknown_opcode_is_an_error() {
        let file = write_zip("opcode", &[("archive/data.pkl", &[op::PROTO, 2, 0xff, op::STOP])]);
        let message = error_of(&file.0);
        assert!(message.contains("opcode 0xff") && message.contains("byte 2"), "{message}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let pickle = state_dict_pickle("FloatStorage", 2, 0, &[2], &[1]);
        for n in 0..pickle.len() {
            assert!(Unpickler::new(&pickle[..n]).load().is_err(), "{n} bytes");
        }
        let cut = &pickle[..pickle.len() / 2];
        let file = write_zip("truncated", &[("archive/data.pkl", cut)]);
        let message = error_of(&file.0);
        assert!(message.contains("data.pkl") && message.contains("truncated"), "{message}");
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let mut pickle = vec![op::PROTO, 2, op::NONE];
        pickle.extend(std::iter::repeat_n(op::TUPLE1, 1_000_000));
        pickle.push(op::STOP);
        let value = Unpickler::new(&pickle).load().unwrap();
        assert!(matches!(value, Value::Tuple(_)));
        assert!(state_dict(&value).err().unwrap().contains("not a state dict"));
    }

    #[test]
    fn missing_storage_is_an_error() {
        let pickle = state_dict_pickle("FloatStorage", 2, 0, &[2], &[1]);
        let file = write_zip("no-storage", &[("archive/data.pkl", &pickle)]);
        let message = error_of(&file.0);
        assert!(message.contains("missing storage entry archive/data/0"), "{message}");
    }

    #[test]
    fn wrong_storage_length_is_an_error() {
        let pickle = state_dict_pickle("FloatStorage", 3, 0, &[2], &[1]);
        let data = storage_bytes(&[1.0, 2.0]);
        let file = write_zip("short-storage", &[("archive/data.pkl", &pickle), ("archive/data/0", &data)]);
        let message = error_of(&file.0);
        assert!(message.contains("holds 8 bytes") && message.contains("3 float32 values"), "{message}");
    }

    #[test]
    fn views_past_the_storage_are_errors() {
        let data = storage_bytes(&[1.0, 2.0, 3.0, 4.0]);
        for (shape, stride, what) in [
            (&[2u8, 2][..], &[3u8, 1][..], "reaches past"),
            (&[3, 3][..], &[0, 0][..], "has 9 elements"),
            (&[2, 200][..], &[255, 255][..], "has 400 elements"),
        ] {
            let pickle = state_dict_pickle("FloatStorage", 4, 0, shape, stride);
            let file = write_zip("past", &[("archive/data.pkl", &pickle), ("archive/data/0", &data)]);
            let message = error_of(&file.0);
            assert!(message.contains("tensor w") && message.contains(what), "{message}");
        }
    }

    #[test]
    fn other_dtypes_are_errors() {
        let pickle = state_dict_pickle("LongStorage", 2, 0, &[2], &[1]);
        let file = write_zip("long", &[("archive/data.pkl", &pickle), ("archive/data/0", &[0; 16])]);
        let message = error_of(&file.0);
        assert!(message.contains("int64") && message.contains("only float32"), "{message}");
    }

    #[test]
    fn big_endian_is_an_error() {
        let pickle = state_dict_pickle("FloatStorage", 1, 0, &[1], &[1]);
        let file = write_zip("big-endian", &[("archive/data.pkl", &pickle), ("archive/byteorder", b"big")]);
        assert!(error_of(&file.0).contains("only little-endian"));
    }

    #[test]
    fn non_zip_is_an_error() {
        let file = temp_path("not-zip");
        std::fs::write(&file.0, b"this is not a zip archive").unwrap();
        let message = error_of(&file.0);
        assert!(message.contains(&file.0.display().to_string()), "{message}");
        assert!(message.contains("not a zip archive"), "{message}");

        let empty = write_zip("no-pickle", &[("archive/version", b"3\n")]);
        assert!(error_of(&empty.0).contains("no data.pkl"));
    }
}
