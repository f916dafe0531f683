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
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tensor::Tensor;

const THREADS: usize = 2;

/// Median seconds of `f` over repeated runs (at least 5 runs and ~`budget` of time).
fn median_secs(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// A matrix view for raw sgemm: pointer offset, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat {
    rs: isize,
    cs: isize,
}

/// Raw sgemm of `batches` products `[m,k] x [k,n]`, split over `threads` threads by rows when
/// there is one batch, by batches otherwise.
#[allow(clippy::too_many_arguments)]
fn raw_sgemm(
    threads: usize,
    batches: usize,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    am: Mat,
    b: &[f32],
    bm: Mat,
    c: &mut [f32],
) {
    let (a_step, b_step, c_step) = (m * k, k * n, m * n);
    let one = |rows: std::ops::Range<usize>, i: usize, c: &mut [f32]| {
        // SAFETY: a, b and c hold `batches` contiguous matrices of the sizes above, the strides
        // describe them, and each call writes only its own rows of c.
        unsafe {
            matrixmultiply::sgemm(
                rows.len(),
                k,
                n,
                1.0,
                a.as_ptr().add(i * a_step).offset(rows.start as isize * am.rs),
                am.rs,
                am.cs,
                b.as_ptr().add(i * b_step),
                bm.rs,
                bm.cs,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    };
    if threads == 1 {
        for (i, ci) in c.chunks_mut(c_step).enumerate() {
            one(0..m, i, ci);
        }
    } else if batches == 1 {
        let half = m.div_ceil(threads);
        std::thread::scope(|s| {
            for (t, ct) in c.chunks_mut(half * n).enumerate() {
                let rows = t * half..(t * half + ct.len() / n);
                s.spawn(move || one(rows, 0, ct));
            }
        });
    } else {
        let per = batches.div_ceil(threads);
        std::thread::scope(|s| {
            for (t, ct) in c.chunks_mut(per * c_step).enumerate() {
                s.spawn(move || {
                    for (j, cj) in ct.chunks_mut(c_step).enumerate() {
                        one(0..m, t * per + j, cj);
                    }
                });
            }
        });
    }
}

fn matmul_case(name: &str, batch: &[usize], m: usize, k: usize, n: usize, transpose_b: bool) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batches: usize = batch.iter().product();
    let a = Tensor::randn(&[batch, &[m, k]].concat(), 1.0, &mut rng);
    // The transposed case stores b as [n, k] and multiplies by its transpose view.
    let b_stored = if transpose_b { [batch, &[n, k]].concat() } else { [batch, &[k, n]].concat() };
    let b_store = Tensor::randn(&b_stored, 1.0, &mut rng);
    let b = if transpose_b { b_store.t().unwrap() } else { b_store.clone() };
    let flops = 2.0 * (batches * m * k * n) as f64;
    let budget = Duration::from_millis(1500);

    let api = median_secs(budget, || {
        black_box(a.matmul(&b).unwrap());
    });
    let (ad, bd) = (a.to_vec().unwrap(), b_store.to_vec().unwrap());
    let am = Mat { rs: k as isize, cs: 1 };
    let bm = if transpose_b { Mat { rs: 1, cs: k as isize } } else { Mat { rs: n as isize, cs: 1 } };
    let mut c = vec![0.0f32; batches * m * n];
    let raw = median_secs(budget, || raw_sgemm(THREADS, batches, m, k, n, &ad, am, &bd, bm, &mut c));
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
    for (name, batch, m, k, n, t) in [
        ("square 512", vec![], 512, 512, 512, false),
        ("square 1024", vec![], 1024, 1024, 1024, false),
        ("4096x256 @ 256x768", vec![], 4096, 256, 768, false),
        ("4096x768 @ 768x256", vec![], 4096, 768, 256, false),
        ("[8,8,256,32] @ [8,8,32,256]", vec![8, 8], 256, 32, 256, false),
        ("1024x1024 @ (1024x1024)ᵀ view", vec![], 1024, 1024, 1024, true),
        ("[8,8,256,256] @ [8,8,256,32]", vec![8, 8], 256, 256, 32, false),
    ] {
        let (api, raw) = matmul_case(name, &batch, m, k, n, t);
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
