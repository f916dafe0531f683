//! Byte-level text: every byte is a token (vocabulary 256), so any file works and results are
//! reported in bits per byte.
//!
//! The last `valid_fraction` of the file is held out. Training crops start at random offsets
//! and have random lengths, so the prefix length varies from step to step and short prompts
//! work at generation time; evaluation slides a window over the held-out tail so that every
//! byte after the first window's prefix is predicted exactly once.

use std::path::Path;

use rand::Rng;

use super::Batch;
use crate::error::{Error, Result};

pub const VOCAB: usize = 256;

pub struct TextData {
    pub train: Vec<u8>,
    pub valid: Vec<u8>,
}

impl TextData {
    /// Reads `path` and holds out its tail; errors name the file when it is too short to use.
    pub fn load(path: &Path, valid_fraction: f32, min_len: usize) -> Result<Self> {
        let data_err = |message: String| Error::Data { path: path.to_path_buf(), message };
        let bytes = read_data_file(path)?;
        if !(valid_fraction > 0.0 && valid_fraction < 1.0) {
            return Err(Error::Config(format!(
                "the held-out fraction must be in (0, 1), got {valid_fraction}"
            )));
        }
        let split = bytes.len() - (bytes.len() as f64 * valid_fraction as f64) as usize;
        let (train, valid) = bytes.split_at(split);
        if train.len() <= min_len || valid.len() <= min_len {
            return Err(data_err(format!(
                "{} bytes are too few: training and held-out parts each need more than {min_len} bytes (one context)",
                bytes.len()
            )));
        }
        Ok(TextData { train: train.to_vec(), valid: valid.to_vec() })
    }

    /// A training batch: one random length in `[min_len, max_len]` for the whole batch, random
    /// offsets, and `min(latents, len)` latents each predicting the next byte.
    pub fn batch(
        &self,
        batch: usize,
        min_len: usize,
        max_len: usize,
        latents: usize,
        rng: &mut impl Rng,
    ) -> Batch {
        let len = rng.gen_range(min_len.max(1)..=max_len);
        let latents = latents.min(len);
        let mut ids = Vec::with_capacity(batch * len);
        let mut targets = Vec::with_capacity(batch * latents);
        for _ in 0..batch {
            let start = rng.gen_range(0..self.train.len() - len);
            let crop = &self.train[start..start + len + 1];
            ids.extend(crop[..len].iter().map(|&b| b as usize));
            targets.extend(crop[len - latents + 1..].iter().map(|&b| b as usize));
        }
        Batch { ids, batch, seq_len: len, prefix_len: len - latents, targets, sequences: None, images: None }
    }

    /// Windows over `data` of length `seq_len` with `latents` latents, stepping by `stride`
    /// (at most `latents`; the paper's appendix G strided evaluation): the first window scores
    /// all its latents, each later one only the bytes not scored yet (its last `stride`), so
    /// each byte after the first prefix is predicted exactly once, a smaller stride giving each
    /// prediction more preceding context. At most `max_windows` windows; a last window,
    /// aligned to the end of `data`, scores the bytes the stride did not reach.
    pub fn eval_windows<T: Copy + Into<usize>>(
        data: &[T],
        seq_len: usize,
        latents: usize,
        stride: usize,
        max_windows: usize,
    ) -> Vec<Batch> {
        debug_assert!((1..=latents).contains(&stride), "stride {stride} must be in 1..={latents}");
        let window = |start: usize, scored_until: Option<usize>| {
            let crop = &data[start..start + seq_len + 1];
            // Latent j predicts data[first + j].
            let first = start + seq_len - latents + 1;
            Batch {
                ids: crop[..seq_len].iter().map(|&b| b.into()).collect(),
                batch: 1,
                seq_len,
                prefix_len: seq_len - latents,
                targets: (0..latents)
                    .map(|j| {
                        if scored_until.is_some_and(|u| first + j <= u) {
                            super::IGNORE
                        } else {
                            data[first + j].into()
                        }
                    })
                    .collect(),
                sequences: None,
                images: None,
            }
        };
        let mut out = Vec::new();
        let mut start = 0;
        let mut scored_until = None;
        while start + seq_len < data.len() && out.len() < max_windows {
            out.push(window(start, scored_until));
            scored_until = Some(start + seq_len);
            start += stride.max(1);
        }
        if let Some(until) = scored_until {
            if until + 1 < data.len() && out.len() < max_windows {
                out.push(window(data.len() - 1 - seq_len, Some(until)));
            }
        }
        out
    }
}

/// The bytes of a data file: a regular, non-empty file that fits in memory twice (the file,
/// then what is made of it). A device or a pipe (`/dev/zero`, `/dev/stdin`) could be read
/// forever, so it is refused.
pub fn read_data_file(path: &Path) -> Result<Vec<u8>> {
    let data_err = |message: String| Error::Data { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(data_err("not a regular file (a directory, device or pipe cannot be a data set)".into()));
    }
    crate::memory::ensure_fits(2 * meta.len() as u128, || format!("the data file of {} bytes", meta.len()))
        .map_err(|e| data_err(e.to_string()))?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(data_err("the file is empty".into()));
    }
    Ok(bytes)
}
