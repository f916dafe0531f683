//! Held-out evaluation: the mean cross-entropy of the scored targets, the fraction predicted
//! right (argmax), and the summary each task is judged by.

use std::collections::BTreeMap;

use autograd::Tape;
use nn::Ctx;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tensor::Tensor;

use crate::data::{Batch, IGNORE};
use crate::error::{Error, Result};
use crate::models::Model;

/// What a task's held-out result is summarised by, besides loss and accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The copy task: the fraction of sequences with every scored token right.
    Sequences,
    /// Next-token prediction of text: bits per token (bits per byte for byte-level text).
    Bytes,
    /// Masked bytes: bits per masked byte.
    MaskedBytes,
    /// Classification: accuracy alone.
    Classes,
}

/// Held-out results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalResult {
    pub loss: f32,
    /// Fraction of scored tokens predicted right (argmax).
    pub accuracy: f32,
    /// Copy task: fraction of sequences with every mirrored token right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_accuracy: Option<f32>,
    /// Text: loss in bits per byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f32>,
    /// Masked bytes: loss in bits per masked byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_masked_byte: Option<f32>,
    /// Scored targets: tokens, masked bytes or images.
    pub tokens: usize,
    /// Perceiver AR's latents (targets per row for the other tasks).
    pub latents: usize,
}

/// Loss (summed over scored targets), correct predictions and per-row all-correct flags.
pub(super) fn score(logits: &Tensor, batch: &Batch) -> Result<(f64, usize, Vec<bool>)> {
    let vocab = *logits.shape().last().unwrap();
    let values = logits.to_vec()?;
    let per_row = batch.latents();
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut rows_ok = vec![true; batch.batch];
    for (i, &t) in batch.targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let row = &values[i * vocab..(i + 1) * vocab];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let lse = m as f64 + row.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>().ln();
        loss += lse - row[t] as f64;
        let argmax = row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
        if argmax == t {
            correct += 1;
        } else {
            rows_ok[i / per_row] = false;
        }
    }
    Ok((loss, correct, rows_ok))
}

/// Evaluates `model` on held-out batches, summarised by `metric`.
pub fn evaluate(model: &Model, metric: Metric, batches: &[Batch]) -> Result<EvalResult> {
    let (mut loss, mut correct, mut tokens) = (0.0f64, 0, 0);
    // Whether every scored token of each sequence was right (a sequence may span batches).
    let mut exact: BTreeMap<usize, bool> = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for batch in batches {
        let tape = Tape::inference();
        let ctx = Ctx::new(&tape, model.params(), false, &mut rng);
        let logits = model.logits(&ctx, batch)?;
        let (l, c, ok) = score(logits.value(), batch)?;
        loss += l;
        correct += c;
        tokens += batch.scored();
        let next = exact.len();
        for (row, ok) in ok.into_iter().enumerate() {
            let id = batch.sequences.as_ref().map_or(next + row, |ids| ids[row]);
            *exact.entry(id).or_insert(true) &= ok;
        }
    }
    let (rows, rows_ok) = (exact.len(), exact.values().filter(|&&o| o).count());
    if tokens == 0 {
        return Err(Error::Input("no held-out tokens to evaluate".into()));
    }
    let mean = (loss / tokens as f64) as f32;
    let bits = mean / std::f32::consts::LN_2;
    Ok(EvalResult {
        loss: mean,
        accuracy: correct as f32 / tokens as f32,
        sequence_accuracy: (metric == Metric::Sequences).then(|| rows_ok as f32 / rows as f32),
        bits_per_byte: (metric == Metric::Bytes).then_some(bits),
        bits_per_masked_byte: (metric == Metric::MaskedBytes).then_some(bits),
        tokens,
        latents: batches.first().map_or(0, |b| b.latents()),
    })
}
