//! Training checkpoints: a directory per checkpoint, written so that a crash never destroys the
//! previous one.
//!
//! ```text
//! OUT/checkpoints/step-00001000/   model.safetensors   parameters by name
//!                                  optimizer.safetensors  AdamW moments (m.<name>, v.<name>)
//!                                  config.json         the run's TrainConfig (model included)
//!                                  state.json          step, random generators, elapsed time
//! OUT/latest                       "checkpoints/step-00001000"
//! ```
//!
//! A checkpoint is written into a hidden temporary directory, flushed, and renamed into place;
//! only then is `latest` replaced (itself by an atomic rename). A crash at any point leaves
//! `latest` naming a complete checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nn::checkpoint::{read_safetensors, write_atomic, write_safetensors};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::TrainConfig;

/// Everything besides tensors needed to continue a run exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    pub step: u64,
    pub data_rng: ChaCha8Rng,
    pub dropout_rng: ChaCha8Rng,
    pub elapsed_secs: f64,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: TrainConfig,
    pub state: RunState,
    pub params: HashMap<String, tensor::Tensor>,
    pub optimizer: HashMap<String, tensor::Tensor>,
}

fn json_write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(write_atomic(path, text.as_bytes())?)
}

fn json_read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes a checkpoint of `step` under `out`, points `out/latest` at it, and keeps the newest
/// `keep` checkpoints.
pub fn save(
    out: &Path,
    config: &TrainConfig,
    state: &RunState,
    params: &[(String, tensor::Tensor)],
    optimizer: &[(String, tensor::Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    let root = out.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_safetensors(&tmp.join("model.safetensors"), params, HashMap::new())?;
    write_safetensors(
        &tmp.join("optimizer.safetensors"),
        optimizer,
        HashMap::new(),
    )?;
    json_write(&tmp.join("config.json"), config)?;
    json_write(&tmp.join("state.json"), state)?;
    let dir = root.join(&name);
    if dir.exists() {
        // Re-saving the same step: the new copy replaces it only once complete.
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(
        &out.join("latest"),
        format!("checkpoints/{name}").as_bytes(),
    )?;
    // Drop all but the newest `keep` complete checkpoints.
    let mut all: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    all.sort();
    for old in all.iter().rev().skip(keep.max(1)) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dir)
}

/// The checkpoint directory named by `path`: a checkpoint itself, or a run directory whose
/// `latest` file names one.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("model.safetensors").exists() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join("latest");
    if latest.exists() {
        let rel = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
        return Ok(path.join(rel.trim()));
    }
    Err(Error::Input(format!(
        "{}: neither a checkpoint (no model.safetensors) nor a run directory (no latest)",
        path.display()
    )))
}

/// Loads the checkpoint at (or named by) `path`.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    Ok(Checkpoint {
        config: json_read(&dir.join("config.json"))?,
        state: json_read(&dir.join("state.json"))?,
        params: read_safetensors(&dir.join("model.safetensors"))?.floats,
        optimizer: read_safetensors(&dir.join("optimizer.safetensors"))?.floats,
        dir,
    })
}
