//! One AdamW step in one pass (the arithmetic is [`crate::adamw::AdamWStep::apply`]): each
//! thread takes a run of elements and writes the new parameter and moments side by side, so
//! nothing but the three outputs is allocated.

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
