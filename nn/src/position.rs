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

/// Fourier position features of a grid (Perceiver, Jaegle et al. 2021, section 3.2), the
/// perceiver-io library's `FourierPositionEncoding`: `[Π shape, d·(2·bands + 1)]` for a grid
/// of `d = shape.len()` axes, row-major over the grid.
///
/// Each axis `i` of size `s_i` has coordinates `p_i` evenly spaced on `[-1, 1]` and `bands`
/// frequencies `f` evenly spaced on `[1, s_i / 2]` (up to the axis's Nyquist frequency). A
/// position's features are its coordinates `p`, then `sin(π p_i f)` for every axis and band,
/// then `cos(π p_i f)` in the same order.
pub fn fourier(shape: &[usize], bands: usize) -> Tensor {
    let d = shape.len();
    // torch.linspace in f32, as the library computes it.
    let linspace = |start: f32, end: f32, steps: usize| -> Vec<f32> {
        match steps {
            0 => vec![],
            1 => vec![start],
            _ => {
                let step = (end - start) / (steps - 1) as f32;
                // The first half counts up from `start`, the second down from `end`.
                (0..steps)
                    .map(|i| {
                        if i < steps / 2 {
                            start + step * i as f32
                        } else {
                            end - step * (steps - 1 - i) as f32
                        }
                    })
                    .collect()
            }
        }
    };
    let coords: Vec<Vec<f32>> = shape.iter().map(|&s| linspace(-1.0, 1.0, s)).collect();
    let freqs: Vec<Vec<f32>> = shape.iter().map(|&s| linspace(1.0, s as f32 / 2.0, bands)).collect();
    let n: usize = shape.iter().product();
    let width = d * (2 * bands + 1);
    let mut data = Vec::with_capacity(n * width);
    let mut index = vec![0usize; d];
    for _ in 0..n {
        let p: Vec<f32> = (0..d).map(|i| coords[i][index[i]]).collect();
        data.extend(&p);
        for trig in [f64::sin, f64::cos] {
            for i in 0..d {
                for &f in &freqs[i] {
                    let grid = p[i] * f; // f32, then times π in f32 as torch does
                    data.push(trig((std::f32::consts::PI * grid) as f64) as f32);
                }
            }
        }
        // Next grid index, row-major.
        for axis in (0..d).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Tensor::from_vec(data, &[n, width]).expect("shape matches")
}
