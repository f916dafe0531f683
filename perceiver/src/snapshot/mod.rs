//! Hugging Face snapshots of perceiver-io causal language models: the format of the seed model
//! card's `krasserm/perceiver-ar-clm-base`.
//!
//! A snapshot is a directory:
//! * `config.json`: a transformers config whose `model_config` object is the library's
//!   `CausalLanguageModelConfig` (mapped by [`crate::import::config_from_library`], which
//!   refuses fields it does not know);
//! * the weights, `model.safetensors` or, in older snapshots, `pytorch_model.bin` (PyTorch's
//!   zip of pickles, read by [`torch_zip`] without executing anything), named
//!   `backend_model.<the library's parameter names>`;
//! * optionally `tokenizer.json`, a Hugging Face `tokenizers` tokenizer.
//!
//! [`is_snapshot`] tells one from this project's own checkpoints by those files.

use std::path::{Path, PathBuf};

use nn::checkpoint::{read_safetensors, TensorFile};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::import::{config_from_library, load_library_weights};
use crate::model::PerceiverAr;

mod pickle;
pub mod torch_zip;

/// The prefix of every weight name in a snapshot (the library's model is its `backend_model`).
const PREFIX: &str = "backend_model.";

/// A loaded snapshot.
pub struct Snapshot {
    pub dir: PathBuf,
    pub model: PerceiverAr,
    /// `tokenizer.json`, when the snapshot has one.
    pub tokenizer: Option<TextTokenizer>,
}

/// A Hugging Face tokenizer (`tokenizer.json`): text to token ids and back.
pub struct TextTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            message: format!("not a tokenizer: {e}"),
        })?;
        Ok(TextTokenizer { path: path.to_path_buf(), inner })
    }

    /// The ids of `text`, without special tokens added (as the model card's usage encodes).
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().iter().map(|&id| id as usize).collect())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| self.error(format!("token id {id} out of range"))))
            .collect::<Result<Vec<u32>>>()?;
        self.inner.decode(&ids, true).map_err(|e| self.error(e))
    }

    fn error(&self, e: impl std::fmt::Display) -> Error {
        Error::Data { path: self.path.clone(), message: e.to_string() }
    }
}

/// Whether `dir` holds a Hugging Face snapshot: a `config.json` with a `model_config` object.
/// (This project's checkpoints have their own `config.json`, without that field.)
pub fn is_snapshot(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|v| v.get("model_config").is_some_and(Value::is_object))
}

/// Loads the model (and tokenizer) of the snapshot in `dir`; every problem is an error naming
/// the file and what is wrong with it.
pub fn load(dir: &Path) -> Result<Snapshot> {
    let config_path = dir.join("config.json");
    let bytes = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Json { path: config_path.clone(), source: e })?;
    let bad_config = |message: String| Error::Data { path: config_path.clone(), message };
    let model_config = json
        .get("model_config")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_config("no model_config object: not a perceiver-io snapshot".into()))?;
    let config = config_from_library(&Value::Object(model_config.clone()))
        .map_err(|e| bad_config(format!("model_config: {e}")))?;
    let mut model = PerceiverAr::new(config, 0)?;

    let weights = read_weights(dir)?;
    load_library_weights(&mut model, &weights)?;

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = match tokenizer_path.exists() {
        true => Some(TextTokenizer::from_file(&tokenizer_path)?),
        false => None,
    };
    Ok(Snapshot { dir: dir.to_path_buf(), model, tokenizer })
}

/// The weights under the library's names: `model.safetensors`, else `pytorch_model.bin`,
/// with the `backend_model.` prefix taken off every name.
fn read_weights(dir: &Path) -> Result<TensorFile> {
    let (safetensors, bin) = (dir.join("model.safetensors"), dir.join("pytorch_model.bin"));
    let file = if safetensors.exists() {
        read_safetensors(&safetensors)?
    } else if bin.exists() {
        torch_zip::read_pytorch_bin(&bin)?
    } else {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            message: "no weights: neither model.safetensors nor pytorch_model.bin".into(),
        });
    };
    let mut floats = std::collections::HashMap::new();
    for (name, tensor) in file.floats {
        let Some(library_name) = name.strip_prefix(PREFIX) else {
            return Err(Error::Data {
                path: file.path.clone(),
                message: format!("tensor {name} is not under {PREFIX}"),
            });
        };
        floats.insert(library_name.to_string(), tensor);
    }
    if let Some((name, _)) = file.ints.iter().next() {
        return Err(Error::Data {
            path: file.path.clone(),
            message: format!("integer tensor {name} in the weights"),
        });
    }
    Ok(TensorFile { path: file.path, floats, ints: Default::default(), metadata: file.metadata })
}
