//! Attention benchmark: the fused attention's forward and backward on the shapes of the
//! `perceiver bench` presets, as a fraction of a plain matrix product's rate measured
//! alternately in the same run (so both see the same machine), on 2 threads.
//!
//! The FLOPs counted are those of the block products the kernel runs over the visible
//! (query, key) pairs: `2·D` per pair for each of the forward's `S = Q Kᵀ` and `O = P V`, and
//! for each of the backward's five (`S` again, `dV`, `dP`, `dQ`, `dK`). The reference is a
//! `[4096, 256] · [256, 768]` product through `Tensor::matmul` (a linear layer's shape).
//!
//! Operands are laid out as in the model: `[B, T, H·D]` projections viewed as `[B, H, T, D]`.
//! Run with `cargo bench -p tensor --bench attention`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::{KeyVisibility, Tensor};

const THREADS: usize = 2;
const HEADS: usize = 8;
const HEAD_DIM: usize = 32;

/// Medians of `f` and `g` run alternately, at least 5 rounds and about `budget` of time.
fn paired_median_secs(budget: Duration, mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    f();
    g();
    let (mut tf, mut tg) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while tf.len() < 5 || (start.elapsed() < budget && tf.len() < 200) {
        let t = Instant::now();
        f();
        tf.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        g();
        tg.push(t.elapsed().as_secs_f64());
    }
    for v in [&mut tf, &mut tg] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    (tf[tf.len() / 2], tg[tg.len() / 2])
}

/// `[B, T, H·D]` of standard normals viewed as heads `[B, H, T, D]`.
fn heads(b: usize, t: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let x = Tensor::randn(&[b, t, HEADS * HEAD_DIM], 0.5, rng);
    x.reshape(&[b, t, HEADS, HEAD_DIM]).unwrap().permute(&[0, 2, 1, 3]).unwrap()
}

fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global().expect("rayon pool");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (x, w) = (Tensor::randn(&[4096, 256], 1.0, &mut rng), Tensor::randn(&[256, 768], 1.0, &mut rng));
    let matmul_flops = 2.0 * 4096.0 * 256.0 * 768.0;
    let matmul = || drop(black_box(x.matmul(&w).unwrap()));

    println!("fused attention, {THREADS} threads, {HEADS} heads of {HEAD_DIM}, medians\n");
    println!("| case | pass | GFLOP/s | matmul GFLOP/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    // (name, batch, queries, keys): causal, the queries the last of the keys' positions.
    for (name, batch, l, n) in [
        ("step-2k cross", 8, 256, 2048),
        ("step-2k self", 8, 256, 256),
        ("long cross (32k keys)", 1, 512, 32768),
    ] {
        let (q, k, v) = (heads(batch, l, &mut rng), heads(batch, n, &mut rng), heads(batch, n, &mut rng));
        let vis = KeyVisibility::causal(n - l);
        let pairs: usize = batch * HEADS * (0..l).map(|i| (n - l + i + 1).min(n)).sum::<usize>();
        let per_product = 2.0 * (pairs * HEAD_DIM) as f64;
        let parts = q.attention_with_stats(&k, &v, &vis).unwrap();
        let d_out = Tensor::randn(parts.out.shape(), 1.0, &mut rng);
        let budget = Duration::from_millis(3000);
        let forward = || drop(black_box(q.attention_with_stats(&k, &v, &vis).unwrap()));
        let backward = || drop(black_box(q.attention_backward(&k, &v, &parts, &d_out, &vis).unwrap()));
        for (pass, products, secs) in [
            ("forward", 2.0, paired_median_secs(budget, forward, matmul)),
            ("backward", 5.0, paired_median_secs(budget, backward, matmul)),
        ] {
            let rate = products * per_product / secs.0 / 1e9;
            let reference = matmul_flops / secs.1 / 1e9;
            println!("| {name} | {pass} | {rate:.1} | {reference:.1} | {:.3} |", rate / reference);
        }
    }
}
