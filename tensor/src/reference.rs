//! Naive reference kernels, written straight from the definitions.
//!
//! Each reads its inputs one element at a time through [`Tensor::get`] (plain index
//! arithmetic over the layout), computes in f64, and knows nothing about SIMD, threads or
//! runs. They are slow on purpose: tests hold every optimised kernel to them.

use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::error::Result;
use crate::layout::broadcast_shape;
use crate::tensor::Tensor;

/// Calls `f` with every multi-index of `shape`, in row-major order.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut index = vec![0; shape.len()];
    loop {
        f(&index);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// Reads `t` at `index` of a broadcast `shape` (numpy rules).
fn get_broadcast(t: &Tensor, index: &[usize]) -> f64 {
    let lead = index.len() - t.rank();
    let own: Vec<usize> =
        t.shape().iter().enumerate().map(|(d, &n)| if n == 1 { 0 } else { index[lead + d] }).collect();
    t.get(&own).expect("in bounds") as f64
}

fn collect(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Tensor {
    let mut out = Vec::with_capacity(shape.iter().product());
    for_each_index(shape, |i| out.push(f(i) as f32));
    Tensor::from_vec(out, shape).expect("shape matches")
}

/// `erf` in f64.
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// One unary op on one value, in f64: the op's `exact` definition in [`crate::op_table`].
pub fn unary_value(op: UnaryOp, x: f64) -> f64 {
    op.exact(x)
}

pub fn unary(x: &Tensor, op: UnaryOp) -> Tensor {
    collect(x.shape(), |i| unary_value(op, x.get(i).unwrap() as f64))
}

/// One binary op on two values, in f64: the op's `exact` definition.
pub fn binary_value(op: BinaryOp, a: f64, b: f64) -> f64 {
    op.exact(a, b)
}

pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let shape = broadcast_shape("reference::binary", a.shape(), b.shape())?;
    Ok(collect(&shape, |i| binary_value(op, get_broadcast(a, i), get_broadcast(b, i))))
}

/// Values of `x` along `axis` at the other coordinates of `index` (whose `axis` entry is ignored).
fn fiber(x: &Tensor, axis: usize, index: &[usize]) -> Vec<f64> {
    let mut i = index.to_vec();
    (0..x.shape()[axis])
        .map(|k| {
            i[axis] = k;
            x.get(&i).unwrap() as f64
        })
        .collect()
}

/// Reduces `axis`, keeping it as size 1.
pub fn reduce(x: &Tensor, axis: usize, op: ReduceOp) -> Tensor {
    let mut shape = x.shape().to_vec();
    shape[axis] = 1;
    collect(&shape, |i| op.exact(&fiber(x, axis, i)))
}

pub fn softmax(x: &Tensor, axis: usize) -> Tensor {
    collect(x.shape(), |i| {
        let v = fiber(x, axis, i);
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = v.iter().map(|y| (y - m).exp()).sum();
        (v[i[axis]] - m).exp() / z
    })
}

/// Layer norm over the last axis.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Tensor {
    let axis = x.rank() - 1;
    collect(x.shape(), |i| {
        let v = fiber(x, axis, i);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n;
        let c = i[axis];
        (v[c] - mean) / (var + eps as f64).sqrt() * w.get(&[c]).unwrap() as f64 + b.get(&[c]).unwrap() as f64
    })
}

/// Batched matmul with broadcast batch axes, as a triple loop.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    let batch = broadcast_shape("reference::matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let shape = [batch.clone(), vec![m, n]].concat();
    Ok(collect(&shape, |i| {
        let nb = batch.len();
        let pick = |t: &Tensor, r: usize, c: usize| {
            let tb = t.rank() - 2;
            let mut idx: Vec<usize> =
                (0..tb).map(|d| if t.shape()[d] == 1 { 0 } else { i[nb - tb + d] }).collect();
            idx.extend([r, c]);
            t.get(&idx).unwrap() as f64
        };
        (0..k).map(|p| pick(a, i[nb], p) * pick(b, p, i[nb + 1])).sum()
    }))
}

/// Attention `softmax(q kᵀ) v` per head, from the definitions: every score computed, hidden
/// ones set to the most negative f32 (as `masked_fill` does), then softmax and the weighted sum.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, vis: &crate::attention::KeyVisibility) -> Tensor {
    let (b, h, l, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (n, dv) = (k.shape()[2], v.shape()[3]);
    let mut out = Vec::with_capacity(b * h * l * dv);
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..l {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        if !vis.sees(bi, hi, i, j, n) {
                            return -f32::MAX as f64;
                        }
                        (0..d)
                            .map(|c| {
                                q.get(&[bi, hi, i, c]).unwrap() as f64
                                    * k.get(&[bi, hi, j, c]).unwrap() as f64
                            })
                            .sum()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = weights.iter().sum();
                for c in 0..dv {
                    let o: f64 =
                        (0..n).map(|j| weights[j] / z * v.get(&[bi, hi, j, c]).unwrap() as f64).sum();
                    out.push(o as f32);
                }
            }
        }
    }
    Tensor::from_vec(out, &[b, h, l, dv]).expect("shape matches")
}
