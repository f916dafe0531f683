//! Kernel benchmark: the tensor API against the raw kernels under it, in one run, on 2 threads.
//!
//! - matmul through `Tensor::matmul` against direct `matrixmultiply::sgemm` calls on the same
//!   shapes. The raw baseline gets the same two threads the tensor API uses: each thread calls
//!   single-threaded sgemm on half the rows (or half the batches) into a preallocated output.
//!   The single-thread raw rate is printed for context.
//! - add, exp, sum and softmax over 16M contiguous f32 as GB/s of memory traffic, next to a
//!   plain parallel copy measured in the same run, and exp next to a scalar `f32::exp` loop.
//!
//! Every figure is the median of repeated runs after a warm-up. Run with
//! `cargo bench -p tensor --bench kernels`.

use std::hint::black_box;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tensor::Tensor;

mod common;
use common::{median_secs, paired_median_secs, raw_sgemm, Mat};

const THREADS: usize = 2;

/// One product `[m,k] x [k,n]` (per batch); `transpose` says which operands are stored
/// transposed and multiplied through a transposed view (a linear layer's `x Wᵀ`, its weight
/// gradient `dyᵀ x`).
fn matmul_case(
    name: &str,
    batch: &[usize],
    (m, k, n): (usize, usize, usize),
    transpose: (bool, bool),
) -> (f64, f64) {
    let (transpose_a, transpose_b) = transpose;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batches: usize = batch.iter().product();
    let a_stored = if transpose_a { [batch, &[k, m]].concat() } else { [batch, &[m, k]].concat() };
    let a_store = Tensor::randn(&a_stored, 1.0, &mut rng);
    let a = if transpose_a { a_store.t().unwrap() } else { a_store.clone() };
    // The transposed case stores b as [n, k] and multiplies by its transpose view.
    let b_stored = if transpose_b { [batch, &[n, k]].concat() } else { [batch, &[k, n]].concat() };
    let b_store = Tensor::randn(&b_stored, 1.0, &mut rng);
    let b = if transpose_b { b_store.t().unwrap() } else { b_store.clone() };
    let flops = 2.0 * (batches * m * k * n) as f64;
    let budget = Duration::from_millis(1500);

    let (ad, bd) = (a_store.to_vec().unwrap(), b_store.to_vec().unwrap());
    let am = if transpose_a { Mat { rs: 1, cs: m as isize } } else { Mat { rs: k as isize, cs: 1 } };
    let bm = if transpose_b { Mat { rs: 1, cs: k as isize } } else { Mat { rs: n as isize, cs: 1 } };
    let mut c = vec![0.0f32; batches * m * n];
    let (api, raw) = paired_median_secs(
        budget,
        || drop(black_box(a.matmul(&b).unwrap())),
        || raw_sgemm(THREADS, batches, m, k, n, &ad, am, &bd, bm, &mut c),
    );
    let raw1 = median_secs(budget, || raw_sgemm(1, batches, m, k, n, &ad, am, &bd, bm, &mut c));
    let (g_api, g_raw, g_raw1) = (flops / api / 1e9, flops / raw / 1e9, flops / raw1 / 1e9);
    println!(
        "| {name:<32} | {g_api:>7.1} | {g_raw:>7.1} | {:>6.1} % | {g_raw1:>7.1} |",
        100.0 * g_api / g_raw
    );
    (g_api, g_raw)
}

fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global().expect("rayon pool");
    println!("tensor kernels, {THREADS} threads, medians\n");
    println!("| matmul                           | tensor GFLOP/s | raw sgemm GFLOP/s | tensor/raw | raw 1-thread |");
    println!("|---|---:|---:|---:|---:|");
    let mut worst: f64 = f64::INFINITY;
    let (plain, b_t, a_t) = ((false, false), (false, true), (true, false));
    for (name, batch, shape, t) in [
        ("square 512", vec![], (512, 512, 512), plain),
        ("square 1024", vec![], (1024, 1024, 1024), plain),
        ("4096x256 @ 256x768", vec![], (4096, 256, 768), plain),
        ("4096x768 @ 768x256", vec![], (4096, 768, 256), plain),
        ("[8,8,256,32] @ [8,8,32,256]", vec![8, 8], (256, 32, 256), plain),
        ("1024x1024 @ (1024x1024)ᵀ view", vec![], (1024, 1024, 1024), b_t),
        ("[8,8,256,256] @ [8,8,256,32]", vec![8, 8], (256, 256, 32), plain),
        // The linear layers of a step-2k step: forward x Wᵀ, input gradient dy W, weight
        // gradient dyᵀ x, over 2048 latent rows (16384 context rows for the cross k/v).
        ("q/k/v/o fwd 2048x256 @ (256x256)ᵀ", vec![], (2048, 256, 256), b_t),
        ("cross k/v fwd 16384x256 @ (256x256)ᵀ", vec![], (16384, 256, 256), b_t),
        ("fc1 fwd 2048x256 @ (1024x256)ᵀ", vec![], (2048, 256, 1024), b_t),
        ("fc2 fwd 2048x1024 @ (256x1024)ᵀ", vec![], (2048, 1024, 256), b_t),
        ("fc1 dx 2048x1024 @ 1024x256", vec![], (2048, 1024, 256), plain),
        ("q dW (2048x256)ᵀ @ 2048x256", vec![], (256, 2048, 256), a_t),
        ("cross k dW (16384x256)ᵀ @ 16384x256", vec![], (256, 16384, 256), a_t),
        ("fc1 dW (2048x1024)ᵀ @ 2048x256", vec![], (1024, 2048, 256), a_t),
        ("fc2 dW (2048x256)ᵀ @ 2048x1024", vec![], (256, 2048, 1024), a_t),
    ] {
        let (api, raw) = matmul_case(name, &batch, shape, t);
        worst = worst.min(api / raw);
    }
    println!("\nworst tensor/raw ratio: {:.1} % (target: at least 90 %)\n", 100.0 * worst);

    let n = 16 << 20;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = Tensor::rand_uniform(&[n / 4096, 4096], -4.0, 4.0, &mut rng);
    let y = Tensor::rand_uniform(&[n / 4096, 4096], -4.0, 4.0, &mut rng);
    let xd = x.to_vec().unwrap();
    let bytes = (n * 4) as f64;
    let budget = Duration::from_millis(2000);
    let gbs = |traffic: f64, secs: f64| traffic / secs / 1e9;

    let mut dst = vec![0.0f32; n];
    let copy = median_secs(budget, || {
        dst.par_chunks_mut(1 << 16).zip(xd.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
    });
    let copy_gbs = gbs(2.0 * bytes, copy);
    let add = gbs(3.0 * bytes, median_secs(budget, || drop(black_box(x.add(&y).unwrap()))));
    let exp_t = median_secs(budget, || drop(black_box(x.exp().unwrap())));
    let sum = gbs(bytes, median_secs(budget, || drop(black_box(x.sum(1).unwrap()))));
    let softmax = gbs(2.0 * bytes, median_secs(budget, || drop(black_box(x.softmax(1).unwrap()))));
    let scalar_exp = median_secs(budget, || {
        for (d, s) in dst.iter_mut().zip(&xd) {
            *d = s.exp();
        }
        black_box(&dst);
    });
    println!("| 16M f32 [4096 x 4096], last axis | GB/s | vs copy |");
    println!("|---|---:|---:|");
    println!("| parallel copy (read + write) | {copy_gbs:.1} | 100 % |");
    for (name, v) in
        [("add (2 reads + write)", add), ("sum (read)", sum), ("softmax (read + write)", softmax)]
    {
        println!("| {name} | {v:.1} | {:.0} % |", 100.0 * v / copy_gbs);
    }
    let exp_gbs = gbs(2.0 * bytes, exp_t);
    println!("| exp (read + write) | {exp_gbs:.1} | {:.0} % |", 100.0 * exp_gbs / copy_gbs);
    println!(
        "\nexp: {:.2} Gelem/s vs scalar f32::exp loop {:.2} Gelem/s: {:.1}x (target: at least 4x)",
        n as f64 / exp_t / 1e9,
        n as f64 / scalar_exp / 1e9,
        scalar_exp / exp_t
    );
    println!(
        "add at {:.0} % and sum at {:.0} % of copy bandwidth (target: at least 50 %)",
        100.0 * add / copy_gbs,
        100.0 * sum / copy_gbs
    );
}
