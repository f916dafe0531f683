//! A small image classification task the project draws itself (nothing is downloaded), for the
//! Perceiver image classifier: one of [`CLASSES`] shapes at a random position and size on a
//! noisy background, in one channel.
//!
//! The shapes are told apart by their outlines alone (filled disc, filled square, hollow
//! square, plus, cross, horizontal bar, vertical bar, triangle), so a model must relate pixels
//! to each other, not just count bright ones: through the Fourier position features it sees
//! where each pixel is.

use rand::Rng;

use super::{Batch, Images};

/// The shape names, in class order.
pub const CLASSES: [&str; 8] = ["disc", "square", "frame", "plus", "cross", "hbar", "vbar", "triangle"];

/// Whether pixel `(y, x)` (relative to the shape's centre, in units of its half-size `r`)
/// belongs to shape `class`.
fn inside(class: usize, y: f32, x: f32) -> bool {
    let (ay, ax) = (y.abs(), x.abs());
    match class {
        0 => y * y + x * x <= 1.0,
        1 => ay <= 0.8 && ax <= 0.8,
        2 => ay.max(ax) <= 1.0 && ay.max(ax) >= 0.6,
        3 => (ay <= 0.3 && ax <= 1.0) || (ax <= 0.3 && ay <= 1.0),
        4 => (ay - ax).abs() <= 0.35 && ay <= 1.0,
        5 => ay <= 0.35 && ax <= 1.0,
        6 => ax <= 0.35 && ay <= 1.0,
        _ => (-1.0..=1.0).contains(&y) && ax <= (y + 1.0) / 2.0,
    }
}

/// `count` images `[count, size, size, 1]` with values in about `[0, 1]` and their classes.
/// Each shape has a half-size of a fifth to a third of the image, lies wholly inside it, and
/// gets Gaussian noise of standard deviation `noise` on every pixel.
pub fn draw(count: usize, size: usize, noise: f32, rng: &mut impl Rng) -> (Images, Vec<usize>) {
    let mut pixels = Vec::with_capacity(count * size * size);
    let mut labels = Vec::with_capacity(count);
    let s = size as f32;
    for _ in 0..count {
        let class = rng.gen_range(0..CLASSES.len());
        let r = rng.gen_range(s / 5.0..=s / 3.0);
        let (cy, cx) = (rng.gen_range(r..=s - r), rng.gen_range(r..=s - r));
        for py in 0..size {
            for px in 0..size {
                let (y, x) = ((py as f32 + 0.5 - cy) / r, (px as f32 + 0.5 - cx) / r);
                let value = if inside(class, y, x) { 1.0 } else { 0.0 };
                let gauss: f32 = rng.sample(rand_distr::StandardNormal);
                pixels.push(value + noise * gauss);
            }
        }
        labels.push(class);
    }
    (Images { pixels, shape: [count, size, size, 1] }, labels)
}

/// A batch of `count` drawn images, each with its class as the one target.
pub fn batch(count: usize, size: usize, noise: f32, rng: &mut impl Rng) -> Batch {
    let (images, targets) = draw(count, size, noise, rng);
    Batch {
        ids: Vec::new(),
        batch: count,
        seq_len: 1,
        prefix_len: 0,
        targets,
        sequences: None,
        images: Some(images),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Every class is drawn and each image has its shape's pixels lit, while the area alone
    /// (a nearest-mean classifier on lit-pixel counts, fitted on one draw, tested on another)
    /// does not tell the classes apart: a model must use where the pixels are.
    #[test]
    fn shapes_are_drawn_and_distinguishable() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (train, labels) = draw(800, 16, 0.0, &mut rng);
        let (test, test_labels) = draw(400, 16, 0.0, &mut rng);
        let (train, test) = (train.pixels, test.pixels);
        let n = 16 * 16;
        let mut counts = [0usize; CLASSES.len()];
        for (i, &c) in labels.iter().enumerate() {
            counts[c] += 1;
            let lit = train[i * n..(i + 1) * n].iter().filter(|&&v| v > 0.5).count();
            assert!(lit >= 6, "image {i} ({}) has {lit} lit pixels", CLASSES[c]);
        }
        assert!(counts.iter().all(|&k| k > 60), "{counts:?}");
        // Nearest class mean by the count of lit pixels alone: shapes overlap in area.
        let area = |img: &[f32]| img.iter().filter(|&&v| v > 0.5).count() as f32;
        let mut mean = [0f32; CLASSES.len()];
        for (i, &c) in labels.iter().enumerate() {
            mean[c] += area(&train[i * n..(i + 1) * n]) / counts[c] as f32;
        }
        let right = test_labels
            .iter()
            .enumerate()
            .filter(|&(i, &c)| {
                let a = area(&test[i * n..(i + 1) * n]);
                let best =
                    (0..CLASSES.len()).min_by(|&p, &q| (mean[p] - a).abs().total_cmp(&(mean[q] - a).abs()));
                best == Some(c)
            })
            .count();
        let accuracy = right as f32 / test_labels.len() as f32;
        assert!(accuracy < 0.6, "pixel counting alone classifies {accuracy} of them");
    }
}
