//! Masked byte modelling (BERT, Devlin et al. 2019), the task a Perceiver IO language model
//! trains on: some bytes of a crop are hidden and the model predicts them from the rest, every
//! output position at once (one output query per position).
//!
//! Each position is chosen with probability `rate` (15 %). A chosen byte becomes [`MASK`] 80 %
//! of the time, a random byte 10 %, and stays itself 10 % (so the model cannot assume an
//! unmasked byte is right); only chosen positions are scored. Bytes are tokens `0..=255`, and
//! [`MASK`] is token 256.

use rand::Rng;

use super::{Batch, IGNORE};

/// The mask token, after the 256 bytes.
pub const MASK: usize = 256;
pub const VOCAB: usize = 257;

/// One masked crop: the model's input and the target at each position (`None`: not scored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masked {
    pub input: Vec<usize>,
    pub targets: Vec<Option<usize>>,
}

/// Masks `bytes` as BERT does, choosing each position with probability `rate`. At least one
/// position is chosen, so every crop scores something.
pub fn mask(bytes: &[u8], rate: f64, rng: &mut impl Rng) -> Masked {
    let mut input: Vec<usize> = bytes.iter().map(|&b| usize::from(b)).collect();
    let mut targets = vec![None; bytes.len()];
    let mut chosen: Vec<usize> = (0..bytes.len()).filter(|_| rng.gen_bool(rate)).collect();
    if chosen.is_empty() && !bytes.is_empty() {
        chosen.push(rng.gen_range(0..bytes.len()));
    }
    for i in chosen {
        targets[i] = Some(input[i]);
        let r: f64 = rng.gen();
        if r < 0.8 {
            input[i] = MASK;
        } else if r < 0.9 {
            input[i] = rng.gen_range(0..256);
        }
    }
    Masked { input, targets }
}

/// A batch of masked crops `data[start..start + len]`, one row per start: the masked bytes
/// are the ids, and each chosen position's original byte its target.
pub fn batch(data: &[u8], starts: &[usize], len: usize, rate: f64, rng: &mut impl Rng) -> Batch {
    let mut ids = Vec::with_capacity(starts.len() * len);
    let mut targets = Vec::with_capacity(starts.len() * len);
    for &start in starts {
        let crop = mask(&data[start..start + len], rate, rng);
        ids.extend(crop.input);
        targets.extend(crop.targets.into_iter().map(|t| t.unwrap_or(IGNORE)));
    }
    Batch { ids, batch: starts.len(), seq_len: len, prefix_len: 0, targets, sequences: None, images: None }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn about_fifteen_percent_are_chosen_and_most_are_masked() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let m = mask(&bytes, 0.15, &mut rng);
        let chosen: Vec<usize> = (0..bytes.len()).filter(|&i| m.targets[i].is_some()).collect();
        let rate = chosen.len() as f64 / bytes.len() as f64;
        assert!((rate - 0.15).abs() < 0.005, "{rate}");
        let masked = chosen.iter().filter(|&&i| m.input[i] == MASK).count() as f64 / chosen.len() as f64;
        let kept = chosen.iter().filter(|&&i| m.input[i] == usize::from(bytes[i])).count() as f64
            / chosen.len() as f64;
        assert!((masked - 0.8).abs() < 0.01 && (kept - 0.1).abs() < 0.01 + 1.0 / 256.0, "{masked} {kept}");
        // Targets are the original bytes; unchosen positions are untouched.
        for ((&byte, target), &input) in bytes.iter().zip(&m.targets).zip(&m.input) {
            match target {
                Some(t) => assert_eq!(*t, usize::from(byte)),
                None => assert_eq!(input, usize::from(byte)),
            }
        }
    }

    #[test]
    fn every_crop_scores_something() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for len in 1..20 {
            let m = mask(&vec![7u8; len], 0.0, &mut rng);
            assert_eq!(m.targets.iter().filter(|t| t.is_some()).count(), 1);
        }
    }
}
