//! The fused attention against what it replaces: the naive f64 definition
//! (`tensor::reference::attention`), the composition `matmul → masked_fill → softmax → matmul`
//! on the tape (outputs and every gradient), and finite differences. Shapes cross the kernel's
//! query and key blocks (`tensor::cpu::attention::{QUERY_BLOCK, KEY_BLOCK}`: 128 and 256); visibility covers causal offsets, kept-key positions, hidden keys and
//! queries that see no key at all, and the Sparse Transformer's patterns (strided, fixed,
//! merged or interleaved across heads).

use std::sync::Arc;

use autograd::{check_gradients, GradCheck, Tape, Var};
use proptest::prelude::*;
use tensor::{reference, KeyVisibility, Result, Tensor};
use tests::{assert_close, uniform, visibility, with_pattern};

/// The composition the fused op replaces (as nn's attention did it).
fn composed(q: &Var, k: &Var, v: &Var, mask: &Tensor) -> Result<Var> {
    q.matmul(&k.t()?)?.masked_fill(mask, -f32::MAX)?.softmax(3)?.matmul(v)
}

/// `[B, H, T, D]` inputs, the query tensor built as a transposed view (heads split from
/// `[B, T, H, D]` storage, as the model makes them).
fn inputs(b: usize, h: usize, l: usize, n: usize, d: usize, dv: usize, seed: u64) -> [Tensor; 3] {
    let q = uniform(&[b, l, h, d], -1.5, 1.5, seed).permute(&[0, 2, 1, 3]).unwrap();
    let k = uniform(&[b, h, n, d], -1.5, 1.5, seed + 1);
    let v = uniform(&[b, h, n, dv], -1.0, 1.0, seed + 2);
    [q, k, v]
}

proptest! {
    #![proptest_config(tests::proptest_config(24))]

    /// Forward against the f64 definition, across block boundaries.
    #[test]
    fn fused_forward_matches_the_definition(
        b in 1usize..3, h in 1usize..3, l in 1usize..300, n in 1usize..600, d in 1usize..6, dv in 1usize..5,
        causal in any::<bool>(), positions in any::<bool>(), hidden in 0u8..3, pattern in 0u8..5,
        seed in any::<u64>(),
    ) {
        let [q, k, v] = inputs(b, h, l, n, d, dv, seed);
        let vis = with_pattern(visibility(b, l, n, causal, positions, hidden, seed), h, pattern, seed);
        let got = q.attention(&k, &v, &vis).unwrap();
        assert_close(&got, &reference::attention(&q, &k, &v, &vis), 2e-5, 2e-5);
    }

    /// Outputs and the gradients of q, k and v against the composition on the tape.
    #[test]
    fn fused_gradients_match_the_composition(
        b in 1usize..3, h in 1usize..3, l in 1usize..200, n in 1usize..550, d in 1usize..5,
        causal in any::<bool>(), positions in any::<bool>(), hidden in 0u8..3, pattern in 0u8..5,
        seed in any::<u64>(),
    ) {
        let [q, k, v] = inputs(b, h, l, n, d, d, seed);
        let vis = with_pattern(visibility(b, l, n, causal, positions, hidden, seed), h, pattern, seed);
        let mask = nn::attention::dense_mask(&vis, b, h, l, n).unwrap();
        let weights = uniform(&[b, h, l, d], -1.0, 1.0, seed + 3);
        let run = |fused: bool| {
            let tape = Tape::new();
            let (qv, kv, vv) = (tape.leaf(&q), tape.leaf(&k), tape.leaf(&v));
            let out = if fused { qv.attention(&kv, &vv, &vis) } else { composed(&qv, &kv, &vv, &mask) }.unwrap();
            let loss = out.mul(&Var::constant(weights.clone())).unwrap().sum_all().unwrap();
            let value = out.value().clone();
            let grads = tape.backward(&loss).unwrap();
            let wrt = |x: &Var| grads.wrt(x).cloned().unwrap_or_else(|| Tensor::zeros(x.shape()));
            (value, [wrt(&qv), wrt(&kv), wrt(&vv)])
        };
        let ((fused_out, fused_grads), (want_out, want_grads)) = (run(true), run(false));
        assert_close(&fused_out, &want_out, 1e-5, 1e-5);
        for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(fused_grads.iter().zip(&want_grads)) {
            prop_assert_eq!(g.shape(), w.shape(), "{}", name);
            assert_close(g, w, 2e-5, 2e-5);
        }
    }

    /// Sparse attention is causal: changing the key and value at position `t` changes no
    /// output before `t`, whatever the pattern (self-attention, queries at positions `0..n`).
    #[test]
    fn sparse_attention_never_looks_ahead(
        h in 1usize..4, n in 2usize..400, d in 1usize..5, pattern in 1u8..5, t in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let t = t.index(n);
        let [q, k, v] = inputs(1, h, n, n, d, d, seed);
        let vis = with_pattern(KeyVisibility::causal(0), h, pattern, seed);
        let before = q.attention(&k, &v, &vis).unwrap();
        let bump = |x: &Tensor, s: u64| {
            let mut values = x.to_vec().unwrap();
            let dim = x.shape()[3];
            let fresh = uniform(&[1, h, 1, dim], -2.0, 2.0, s).to_vec().unwrap();
            for hh in 0..h {
                values[(hh * n + t) * dim..(hh * n + t + 1) * dim].copy_from_slice(&fresh[hh * dim..(hh + 1) * dim]);
            }
            Tensor::from_vec(values, x.shape()).unwrap()
        };
        let after = q.attention(&bump(&k, seed + 7), &bump(&v, seed + 8), &vis).unwrap();
        let (before, after) = (before.narrow(2, 0, t).unwrap(), after.narrow(2, 0, t).unwrap());
        prop_assert_eq!(before.to_vec().unwrap(), after.to_vec().unwrap());
    }

    /// Finite differences through the fused op, with strided inputs.
    #[test]
    fn fused_attention_has_exact_gradients(
        b in 1usize..3, h in 1usize..3, l in 1usize..5, n in 1usize..6, d in 1usize..4,
        causal in any::<bool>(), positions in any::<bool>(), hidden in 0u8..2, pattern in 0u8..5,
        seed in any::<u64>(),
    ) {
        let [q, k, v] = inputs(b, h, l, n, d, d, seed);
        let vis = with_pattern(visibility(b, l, n, causal, positions, hidden, seed), h, pattern, seed);
        check_gradients(|x| x[0].attention(&x[1], &x[2], &vis), &[q, k, v], &GradCheck::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

#[test]
fn attention_inputs_are_checked() {
    // Patterns: as many as the heads (or one), with sizes that make sense.
    let [q, k, v] = inputs(1, 3, 4, 4, 2, 2, 1);
    let two = KeyVisibility {
        pattern: Some(Arc::from(vec![tensor::SparsePattern::strided(2); 2])),
        ..Default::default()
    };
    let e = q.attention(&k, &v, &two).unwrap_err().to_string();
    assert!(e.contains("2 sparse patterns for 3 heads"), "{e}");
    let e = q
        .attention(&k, &v, &KeyVisibility::sparse(tensor::SparsePattern::fixed(4, 5)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 summary positions for blocks of 4"), "{e}");
    let [q, k, v] = inputs(2, 2, 3, 5, 4, 4, 1);
    let e = q.attention(&k.narrow(3, 0, 3).unwrap(), &v, &KeyVisibility::all()).unwrap_err().to_string();
    assert!(e.starts_with("attention:") && e.contains("share channels"), "{e}");
    let vis = KeyVisibility { key_positions: Some(Arc::from(vec![0, 2, 1, 3, 4])), ..Default::default() };
    let e = q.attention(&k, &v, &vis).unwrap_err().to_string();
    assert!(e.contains("must not decrease"), "{e}");
    let vis = KeyVisibility { hidden_keys: Some(Arc::from(vec![false; 7])), ..Default::default() };
    let e = q.attention(&k, &v, &vis).unwrap_err().to_string();
    assert!(e.contains("7 hidden-key flags for 2 rows of 5 keys"), "{e}");
}
