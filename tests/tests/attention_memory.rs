//! No `[n, n]` tensor: the fused attention's forward and backward hold memory that grows with
//! the inputs, never with the score matrix, for dense causal attention and for the Sparse
//! Transformer's patterns. Measured with the CPU storage's count of live tensor bytes (its own
//! test binary, so no other test's tensors are counted) and with the process's peak resident
//! memory (which also sees the kernels' scratch buffers).

use autograd::Tape;
use tensor::cpu::pool;
use tensor::{KeyVisibility, SparsePattern};
use tests::uniform;

/// Peak resident memory of this process in bytes (`VmHWM`), where Linux reports it.
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<usize>().ok()? * 1024)
}

#[test]
fn attention_never_holds_the_score_matrix() {
    let (heads, n, d) = (2, 8192, 8);
    // One head's score matrix in f32: 256 MiB. Inputs, outputs and gradients: 2 MiB in all.
    let scores = n * n * 4;
    let visibilities = [
        ("dense causal", KeyVisibility::causal(0)),
        ("strided", KeyVisibility::sparse(SparsePattern::strided(90))),
        ("fixed", KeyVisibility::sparse(SparsePattern::fixed(90, 8))),
    ];
    for (name, vis) in visibilities {
        let shape = [1, heads, n, d];
        let (q, k, v) =
            (uniform(&shape, -1.0, 1.0, 1), uniform(&shape, -1.0, 1.0, 2), uniform(&shape, -1.0, 1.0, 3));
        let weights = uniform(&shape, -1.0, 1.0, 4);
        let (rss_before, live_before) = (peak_rss(), pool::live_bytes());
        pool::reset_peak_live_bytes();
        let tape = Tape::new();
        let (qv, kv, vv) = (tape.leaf(&q), tape.leaf(&k), tape.leaf(&v));
        let loss = qv.attention(&kv, &vv, &vis).unwrap().mul(&autograd::Var::constant(weights)).unwrap();
        let loss = loss.sum_all().unwrap();
        let grads = tape.backward(&loss).unwrap();
        assert!(grads.wrt(&qv).is_some() && grads.wrt(&kv).is_some() && grads.wrt(&vv).is_some());
        let grown = pool::peak_live_bytes() - live_before;
        let inputs = 3 * heads * n * d * 4;
        assert!(grown < 8 * inputs, "{name}: live tensors grew by {grown} bytes for inputs of {inputs}");
        if let (Some(before), Some(after)) = (rss_before, peak_rss()) {
            let grown = after.saturating_sub(before);
            assert!(grown < scores / 4, "{name}: peak resident memory grew by {grown} bytes");
        }
    }
}
