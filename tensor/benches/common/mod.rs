//! What the benches share: medians of repeated runs, and plain `sgemm` (one single-threaded
//! call per thread of the rayon pool, so nothing else competes for the cores) as the rate other
//! kernels are measured against.

// Each bench compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Median seconds of `f` and of `g`, run alternately (so both see the same machine) for at
/// least 5 rounds and ~`budget` of time.
pub fn paired_median_secs(budget: Duration, mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    f(); // warm-up
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

/// Median seconds of `f` over repeated runs (at least 5 runs and ~`budget` of time).
pub fn median_secs(budget: Duration, mut f: impl FnMut()) -> f64 {
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
pub struct Mat {
    pub rs: isize,
    pub cs: isize,
}

/// Raw sgemm of `batches` products `[m,k] x [k,n]`, split over `threads` threads by rows when
/// there is one batch, by batches otherwise.
#[allow(clippy::too_many_arguments)]
pub fn raw_sgemm(
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
        rayon::scope(|s| {
            for (t, ct) in c.chunks_mut(half * n).enumerate() {
                let rows = t * half..(t * half + ct.len() / n);
                s.spawn(move |_| one(rows, 0, ct));
            }
        });
    } else {
        let per = batches.div_ceil(threads);
        rayon::scope(|s| {
            for (t, ct) in c.chunks_mut(per * c_step).enumerate() {
                s.spawn(move |_| {
                    for (j, cj) in ct.chunks_mut(c_step).enumerate() {
                        one(0..m, t * per + j, cj);
                    }
                });
            }
        });
    }
}
