//! Absolute position information added to token embeddings.
//!
//! - Learned: a `[max_len, dim]` table, row `p` added at position `p` (perceiver-io).
//! - Sinusoidal (Vaswani et al., 2017): channel `2i` is `sin(p / 10000^(2i/dim))` and `2i+1` the
//!   matching cosine; nothing to learn (one option of the Perceiver AR paper).

use tensor::Tensor;

/// `[n, dim]` sinusoidal encodings of positions `0..n`.
pub fn sinusoidal(n: usize, dim: usize) -> Tensor {
    let mut data = vec![0.0f32; n * dim];
    for p in 0..n {
        for i in 0..dim / 2 {
            let angle = p as f64 / 10000f64.powf(2.0 * i as f64 / dim as f64);
            data[p * dim + 2 * i] = angle.sin() as f32;
            data[p * dim + 2 * i + 1] = angle.cos() as f32;
        }
    }
    Tensor::from_vec(data, &[n, dim]).expect("shape matches")
}
