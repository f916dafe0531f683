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
//! `latest` naming a complete checkpoint; should `latest` still be damaged (emptied by hand, a
//! full disk), loading falls back to the newest complete checkpoint and says so. Writing
//! needs the run's lock ([`RunDir`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nn::checkpoint::{read_safetensors, write_atomic, write_safetensors};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::run_dir::RunDir;
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
    /// Set when `latest` was unusable and an older complete checkpoint was loaded instead.
    pub note: Option<String>,
}

fn json_write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Json { path: path.to_path_buf(), source: e })?;
    Ok(write_atomic(path, text.as_bytes())?)
}

fn json_read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
}

/// `(step, copy)` of a checkpoint directory name `step-N` or `step-N.K`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("step-")?;
    match rest.split_once('.') {
        Some((step, copy)) => Some((step.parse().ok()?, copy.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// Writes a checkpoint of `step` into the run `run`, points `latest` at it, and keeps the
/// newest `keep` checkpoints. Saving a step that already has a checkpoint writes a new copy
/// (`step-N.1`, …) so the one `latest` names is never touched before `latest` moves. Parameters
/// or moments that are not finite are refused: a checkpoint is always one worth resuming.
pub fn save(
    run: &RunDir,
    config: &TrainConfig,
    state: &RunState,
    params: &[(String, tensor::Tensor)],
    optimizer: &[(String, tensor::Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    for (name, t) in params.iter().chain(optimizer) {
        if let Some(bad) = t.to_vec()?.into_iter().find(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "not writing a checkpoint of step {}: {name} holds {bad}",
                state.step
            )));
        }
    }
    let out = run.path();
    let root = out.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let base = format!("step-{:08}", state.step);
    let name = (0..)
        .map(|k| if k == 0 { base.clone() } else { format!("{base}.{k}") })
        .find(|n| !root.join(n).exists())
        .expect("a free name");
    // The process id keeps temporaries apart even if two writers ever met here.
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    write_safetensors(&tmp.join("model.safetensors"), params, HashMap::new())?;
    write_safetensors(&tmp.join("optimizer.safetensors"), optimizer, HashMap::new())?;
    json_write(&tmp.join("config.json"), config)?;
    json_write(&tmp.join("state.json"), state)?;
    let dir = root.join(&name);
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    // The rename must be on disk before `latest` can name it.
    std::fs::File::open(&root).and_then(|d| d.sync_all()).map_err(|e| Error::io(&root, e))?;
    write_atomic(&out.join("latest"), format!("checkpoints/{name}").as_bytes())?;
    // Drop all but the newest `keep` complete checkpoints, by step number.
    let mut all = complete_checkpoints(&root)?;
    all.sort();
    for (_, old) in all.iter().rev().skip(keep.max(1)) {
        if *old != dir {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dir)
}

/// The files every complete checkpoint has.
const FILES: [&str; 4] = ["model.safetensors", "optimizer.safetensors", "config.json", "state.json"];

fn is_complete(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).is_file())
}

/// The complete checkpoints under `root` (`step-N` directories), with their `(step, copy)`.
fn complete_checkpoints(root: &Path) -> Result<Vec<((u64, u64), PathBuf)>> {
    Ok(std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((parse_name(&p.file_name()?.to_string_lossy())?, p)))
        .filter(|(_, p)| is_complete(p))
        .collect())
}

/// The checkpoint directory named by `path`: a checkpoint itself, or a run directory whose
/// `latest` file names one. When `latest` is missing, empty, unreadable or names no complete
/// checkpoint, the newest complete checkpoint of the run is used instead, and the second value
/// says so (and why).
pub fn resolve(path: &Path) -> Result<(PathBuf, Option<String>)> {
    if path.join("model.safetensors").exists() {
        return Ok((path.to_path_buf(), None));
    }
    let (latest, root) = (path.join("latest"), path.join("checkpoints"));
    if !latest.exists() && !root.is_dir() {
        return Err(Error::Input(format!(
            "{}: neither a checkpoint (no model.safetensors) nor a run directory (no latest, no checkpoints/)",
            path.display()
        )));
    }
    let problem = match std::fs::read_to_string(&latest) {
        Err(e) => format!("{}: {e}", latest.display()),
        Ok(text) if text.trim().is_empty() => format!("{} is empty", latest.display()),
        Ok(text) => {
            let dir = path.join(text.trim());
            if is_complete(&dir) {
                return Ok((dir, None));
            }
            format!("{} names {}, which is not a complete checkpoint", latest.display(), text.trim())
        }
    };
    let newest = if root.is_dir() { complete_checkpoints(&root)?.into_iter().max() } else { None };
    match newest {
        Some((_, dir)) => {
            let note = format!("{problem}; using the newest complete checkpoint, {}", dir.display());
            Ok((dir, Some(note)))
        }
        None => Err(Error::Input(format!("{problem}, and {} holds no complete checkpoint", root.display()))),
    }
}

/// Loads the checkpoint at (or named by) `path`; its config is validated, and errors name the
/// file they come from.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let (dir, note) = resolve(path)?;
    let config_path = dir.join("config.json");
    let config: TrainConfig = json_read(&config_path)?;
    config.validate().map_err(|e| Error::Input(format!("{}: {e}", config_path.display())))?;
    Ok(Checkpoint {
        config,
        state: json_read(&dir.join("state.json"))?,
        params: read_safetensors(&dir.join("model.safetensors"))?.floats,
        optimizer: read_safetensors(&dir.join("optimizer.safetensors"))?.floats,
        dir,
        note,
    })
}
