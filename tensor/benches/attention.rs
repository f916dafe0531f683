//! Attention benchmark: the fused attention's forward and backward on the shapes of the
//! `perceiver bench` presets, as a fraction of a plain matrix product's rate measured
//! alternately in the same run (so both see the same machine), on 2 threads.
//!
//! The FLOPs counted are those of the block products the kernel runs over the visible
//! (query, key) pairs: `2·D` per pair for each of the forward's `S = Q Kᵀ` and `O = P V`, and
//! for each of the backward's five (`S` again, `dV`, `dP`, `dQ`, `dK`). The reference is
//! `sgemm` of `[4096, 256] · [256, 768]` (a linear layer's shape), half the rows on each
//! thread, into an output allocated once.
//!
//! Operands are laid out as in the model: `[B, T, H·D]` projections viewed as `[B, H, T, D]`.
//! Run with `cargo bench -p tensor --bench attention [-- WORD]`: with a word, only the cases
//! whose name contains it.

use std::hint::black_box;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::{KeyVisibility, Tensor};

mod common;
use common::{paired_median_secs, raw_sgemm, Mat};

const THREADS: usize = 2;
const HEADS: usize = 8;
const HEAD_DIM: usize = 32;

/// `[B, T, H·D]` of standard normals viewed as heads `[B, H, T, D]`.
fn heads(b: usize, t: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let x = Tensor::randn(&[b, t, HEADS * HEAD_DIM], 0.5, rng);
    x.reshape(&[b, t, HEADS, HEAD_DIM]).unwrap().permute(&[0, 2, 1, 3]).unwrap()
}

fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global().expect("rayon pool");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, k, n) = (4096, 256, 768);
    let x = Tensor::randn(&[m, k], 1.0, &mut rng).to_vec().unwrap();
    let w = Tensor::randn(&[k, n], 1.0, &mut rng).to_vec().unwrap();
    let mut y = vec![0.0; m * n];
    let (xm, wm) = (Mat { rs: k as isize, cs: 1 }, Mat { rs: n as isize, cs: 1 });
    let matmul_flops = 2.0 * (m * k * n) as f64;
    let mut matmul = || raw_sgemm(THREADS, 1, m, k, n, &x, xm, &w, wm, &mut y);

    println!("fused attention, {THREADS} threads, {HEADS} heads of {HEAD_DIM}, medians\n");
    println!("| case | pass | GFLOP/s | sgemm GFLOP/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    // (name, batch, queries, keys, scale of the queries): causal, the queries the last of the
    // keys' positions. Scores spread by about 1.4 (standard deviation); the sharp case's by
    // about 85, as a trained model's can, so that most weights lie below e^-87 of their row's
    // largest.
    for (name, batch, l, n, sharpness) in [
        ("step-2k cross", 8, 256, 2048, 1.0),
        ("step-2k self", 8, 256, 256, 1.0),
        ("long cross (32k keys)", 1, 512, 32768, 1.0),
        ("step-2k cross, sharp", 8, 256, 2048, 60.0),
    ] {
        if std::env::args().skip(1).any(|word| !word.starts_with('-') && !name.contains(&word)) {
            continue;
        }
        let (q, k, v) = (heads(batch, l, &mut rng), heads(batch, n, &mut rng), heads(batch, n, &mut rng));
        let q = q.mul_scalar(sharpness).unwrap();
        let vis = KeyVisibility::causal(n - l);
        let pairs: usize = batch * HEADS * (0..l).map(|i| (n - l + i + 1).min(n)).sum::<usize>();
        let per_product = 2.0 * (pairs * HEAD_DIM) as f64;
        let parts = q.attention_with_stats(&k, &v, &vis).unwrap();
        let d_out = Tensor::randn(parts.out.shape(), 1.0, &mut rng);
        let budget = Duration::from_millis(3000);
        let forward = || drop(black_box(q.attention_with_stats(&k, &v, &vis).unwrap()));
        let backward = || drop(black_box(q.attention_backward(&k, &v, &parts, &d_out, &vis).unwrap()));
        for (pass, products, secs) in [
            ("forward", 2.0, paired_median_secs(budget, forward, &mut matmul)),
            ("backward", 5.0, paired_median_secs(budget, backward, &mut matmul)),
        ] {
            let rate = products * per_product / secs.0 / 1e9;
            let reference = matmul_flops / secs.1 / 1e9;
            println!("| {name} | {pass} | {rate:.1} | {reference:.1} | {:.3} |", rate / reference);
        }
    }
}
