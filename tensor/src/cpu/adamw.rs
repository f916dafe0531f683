//! One AdamW step in one pass (the arithmetic is [`crate::adamw::AdamWStep::apply`]): each
//! thread takes a run of elements and writes the new parameter and moments side by side, into
//! three new buffers or over the old values. The step is bound by memory: in place it moves
//! seven floats per element (four read, three written); into new buffers, ten, as each output
//! line is fetched before it is written.

use rayon::prelude::*;

use crate::adamw::AdamWStep;

/// Elements per task: large enough that splitting costs nothing next to the arithmetic.
const CHUNK: usize = 1 << 14;

/// The new `[x, m, v]` from the contiguous slices `[x, g, m, v]` of one length.
pub(crate) fn step(inputs: [&[f32]; 4], step: &AdamWStep) -> [Vec<f32>; 3] {
    let [x, g, m, v] = inputs;
    let n = x.len();
    let (mut xo, mut mo, mut vo) = (super::pool::uninit(n), super::pool::uninit(n), super::pool::uninit(n));
    xo.par_chunks_mut(CHUNK)
        .zip(mo.par_chunks_mut(CHUNK))
        .zip(vo.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((xo, mo), vo))| {
            let start = c * CHUNK;
            for i in 0..xo.len() {
                let j = start + i;
                [xo[i], mo[i], vo[i]] = step.apply(x[j], g[j], m[j], v[j]);
            }
        });
    [xo, mo, vo]
}

/// [`step`] written over `x`, `m` and `v` (all of `g`'s length).
pub(crate) fn step_in_place(
    (x, g): (&mut [f32], &[f32]),
    (m, v): (&mut [f32], &mut [f32]),
    step: &AdamWStep,
) {
    assert!(x.len() == g.len() && m.len() == g.len() && v.len() == g.len(), "adamw: one length");
    x.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((x, m), v), g)| {
            for (((x, m), v), &g) in x.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                [*x, *m, *v] = step.apply(*x, g, *m, *v);
            }
        });
}
