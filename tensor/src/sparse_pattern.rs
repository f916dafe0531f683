//! Factorized sparse attention patterns (Child et al., 2019, "Generating Long Sequences with
//! Sparse Transformers", section 4.2): rules on positions that let a query at position `p` see
//! only about `√n` of the `p + 1` keys at positions `k ≤ p`.
//!
//! | pattern | first part | second part |
//! |---|---|---|
//! | strided, stride `ℓ` | [`SparsePart::Local`]: the `ℓ` latest keys, `p − k < ℓ` | [`SparsePart::Columns`]: every `ℓ`-th key back, `(p − k) mod ℓ = 0` |
//! | fixed, block `ℓ`, `c` summary keys | [`SparsePart::SameBlock`]: keys of the query's block, `⌊k/ℓ⌋ = ⌊p/ℓ⌋` | [`SparsePart::Summary`]: the last `c` keys of every block, `k mod ℓ ≥ ℓ − c` |
//!
//! A [`SparsePattern`] is a union of parts: the paper's *merged* heads give every head both
//! parts; *interleaved* heads give each head one part (a pattern per head, see
//! [`crate::KeyVisibility::pattern`]). Every part is causal: no key after the query is seen.
//! And every pattern lets a query see its own position: otherwise a head of summary keys alone
//! would leave the first queries with no key at all, and attention's rule for such a query
//! (average every value, as softmax over equal scores does) would look ahead.
//!
//! Kernels never build the `[n, n]` mask. For a block of queries and a block of keys,
//! [`SparsePattern::reach`] says from the blocks' position ranges alone whether no pair, every
//! pair or only some pairs are allowed, so a kernel skips the blocks a pattern never reaches
//! and masks element by element only the blocks it partly reaches. That suffices for the
//! parts near the diagonal; the far parts (columns, summaries) touch every key block, so the
//! CPU kernel gathers their keys into blocks of their own (`cpu/attention/sparse.rs`) and the
//! OpenCL kernels walk each part's positions directly: either way a query costs `O(√n)`.

/// One rule of a sparse pattern; see the module's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparsePart {
    /// The `window` latest positions: `p − k < window`.
    Local { window: usize },
    /// Every `stride`-th position back from the query: `(p − k) mod stride = 0`.
    Columns { stride: usize },
    /// The positions of the query's own block of `block`: `⌊k / block⌋ = ⌊p / block⌋`.
    SameBlock { block: usize },
    /// The last `summary` positions of every block of `block`: `k mod block ≥ block − summary`.
    Summary { block: usize, summary: usize },
}

/// How the pairs of a query block and a key block fare under a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// No query of the block sees any key of the block.
    None,
    /// Every query of the block sees every key of the block.
    All,
    /// Some pairs: decide per element.
    Some,
}

impl SparsePart {
    /// Whether a query at position `p` sees a key at position `k`.
    pub fn allows(self, p: usize, k: usize) -> bool {
        if k > p {
            return false;
        }
        match self {
            SparsePart::Local { window } => p - k < window,
            SparsePart::Columns { stride } => (p - k).is_multiple_of(stride),
            SparsePart::SameBlock { block } => k / block == p / block,
            SparsePart::Summary { block, summary } => k % block >= block - summary,
        }
    }

    /// The pairs of queries at positions `qa..=qb` and keys at positions within `ka..=kb`.
    /// `None` and `All` are exact (every key position of the block lies in `ka..=kb`); `Some`
    /// may be said of a block no pair of which is allowed when the key positions have gaps,
    /// which only costs a masked block.
    pub fn reach(self, (qa, qb): (usize, usize), (ka, kb): (usize, usize)) -> Reach {
        if ka > qb {
            return Reach::None; // every key after every query
        }
        // Query-minus-key distances of the block's pairs, where the key is not later.
        let (lo, hi) = (qa.saturating_sub(kb), qb - ka);
        let causal_all = kb <= qa;
        match self {
            SparsePart::Local { window } if lo >= window => Reach::None,
            SparsePart::Local { window } if causal_all && hi < window => Reach::All,
            SparsePart::Columns { stride } if lo.next_multiple_of(stride) > hi => Reach::None,
            // Every distance a multiple: stride 1, or a single pair.
            SparsePart::Columns { stride } if causal_all && (stride == 1 || lo == hi) => Reach::All,
            SparsePart::SameBlock { block } if ka / block > qb / block || kb / block < qa / block => {
                Reach::None
            }
            SparsePart::SameBlock { block } if causal_all && ka / block == qb / block => Reach::All,
            SparsePart::Summary { block, summary } => {
                let last = kb.min(qb);
                let first_summary =
                    if ka % block >= block - summary { ka } else { ka - ka % block + (block - summary) };
                if first_summary > last {
                    Reach::None
                } else if causal_all
                    && (summary == block || (ka / block == kb / block && ka % block >= block - summary))
                {
                    Reach::All
                } else {
                    Reach::Some
                }
            }
            _ => Reach::Some,
        }
    }

    /// A description of what is wrong with the part's sizes, if anything.
    fn problem(self) -> Option<String> {
        match self {
            SparsePart::Local { window: 0 } => Some("a local window of 0 positions".into()),
            SparsePart::Columns { stride: 0 } => Some("a column stride of 0".into()),
            SparsePart::SameBlock { block: 0 } | SparsePart::Summary { block: 0, .. } => {
                Some("a block of 0 positions".into())
            }
            SparsePart::Summary { block, summary } if summary == 0 || summary > block => {
                Some(format!("{summary} summary positions for blocks of {block} (need 1..={block})"))
            }
            _ => None,
        }
    }
}

/// A union of [`SparsePart`]s: a key is seen when any part allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparsePattern {
    pub parts: Vec<SparsePart>,
}

impl SparsePattern {
    /// The strided pattern with stride `stride`, both parts merged into one head.
    pub fn strided(stride: usize) -> Self {
        SparsePattern { parts: vec![SparsePart::Local { window: stride }, SparsePart::Columns { stride }] }
    }

    /// The fixed pattern with blocks of `block` and `summary` summary positions, merged.
    pub fn fixed(block: usize, summary: usize) -> Self {
        SparsePattern { parts: vec![SparsePart::SameBlock { block }, SparsePart::Summary { block, summary }] }
    }

    /// One part alone (an interleaved head).
    pub fn only(part: SparsePart) -> Self {
        SparsePattern { parts: vec![part] }
    }

    /// Whether a query at position `p` sees a key at position `k`: its own position, or one a
    /// part allows.
    pub fn allows(&self, p: usize, k: usize) -> bool {
        k == p || self.parts.iter().any(|part| part.allows(p, k))
    }

    /// The union of the parts' [`SparsePart::reach`] and the query's own position.
    pub fn reach(&self, queries: (usize, usize), keys: (usize, usize)) -> Reach {
        let mut reach = Reach::None;
        let itself = SparsePart::Local { window: 1 };
        for part in self.parts.iter().chain([&itself]) {
            match part.reach(queries, keys) {
                Reach::All => return Reach::All,
                Reach::Some => reach = Reach::Some,
                Reach::None => {}
            }
        }
        reach
    }

    /// A description of what is wrong with the pattern, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.parts.is_empty() {
            return Some("a sparse pattern with no parts sees nothing".into());
        }
        self.parts.iter().find_map(|p| p.problem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `reach` against every pair of small blocks, for every kind of part: `None` and `All`
    /// must be exact, `Some` must have at least one allowed and one refused pair when the key
    /// positions are contiguous (so no block a pattern never reaches is visited).
    #[test]
    fn reach_agrees_with_allows_on_every_pair() {
        let parts = [
            SparsePart::Local { window: 1 },
            SparsePart::Local { window: 3 },
            SparsePart::Columns { stride: 1 },
            SparsePart::Columns { stride: 3 },
            SparsePart::SameBlock { block: 4 },
            SparsePart::Summary { block: 4, summary: 1 },
            SparsePart::Summary { block: 5, summary: 2 },
            SparsePart::Summary { block: 3, summary: 3 },
        ];
        for part in parts {
            for (qa, qb) in (0..14).flat_map(|a| (a..14).map(move |b| (a, b))) {
                for (ka, kb) in (0..14).flat_map(|a| (a..14).map(move |b| (a, b))) {
                    let pairs: Vec<bool> =
                        (qa..=qb).flat_map(|p| (ka..=kb).map(move |k| part.allows(p, k))).collect();
                    let want = match (pairs.iter().any(|&a| a), pairs.iter().all(|&a| a)) {
                        (false, _) => Reach::None,
                        (true, true) => Reach::All,
                        (true, false) => Reach::Some,
                    };
                    let got = part.reach((qa, qb), (ka, kb));
                    assert_eq!(got, want, "{part:?}: queries {qa}..={qb}, keys {ka}..={kb}");
                }
            }
        }
    }

    #[test]
    fn the_patterns_see_about_the_square_root_of_the_keys() {
        let n = 1024;
        for pattern in [SparsePattern::strided(32), SparsePattern::fixed(32, 4)] {
            let seen = (0..=n - 1).filter(|&k| pattern.allows(n - 1, k)).count();
            assert!((32..=32 + 32 * 4).contains(&seen), "{pattern:?} sees {seen} of {n}");
            // Never a key after the query.
            assert!((0..n).all(|p| !pattern.allows(p, p + 1)));
        }
        // A head of summary keys alone still sees its own position.
        let summary = SparsePattern::only(SparsePart::Summary { block: 8, summary: 2 });
        assert!(summary.allows(3, 3) && !summary.allows(3, 2) && summary.allows(9, 7));
        assert_eq!(summary.reach((0, 3), (0, 3)), Reach::Some);
        assert!(SparsePattern { parts: vec![SparsePart::Summary { block: 4, summary: 5 }] }
            .problem()
            .is_some());
    }
}
