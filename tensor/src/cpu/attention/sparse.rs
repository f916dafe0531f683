//! Sparse patterns at `O(n^1.5)`: the attention of one head is split into sweeps, each of
//! which visits only blocks it mostly uses.
//!
//! A block kernel over positions in order wastes the far parts of a pattern: the strided
//! pattern's columns (`(p − k) mod ℓ = 0`) and the fixed pattern's summaries (`k mod ℓ ≥ ℓ − c`)
//! reach back over the whole sequence, so every key block holds a few used keys and every block
//! would be computed and masked: `O(n²)`. Instead, with `W` the reach of the pattern's near
//! parts (the local window, the block, or 1 for the query itself):
//!
//! * the **near sweep** takes the pairs the pattern allows with `p − k < W`: key blocks within
//!   `W` of the query block, `O(n·W)`;
//! * a **column sweep** per residue `r` of stride `ℓ` gathers the queries and the keys whose
//!   positions are `≡ r (mod ℓ)`: every pair of a group is in a column, so the group is a plain
//!   causal attention of `n/ℓ` queries on `n/ℓ` keys (shifted by `W`), and the `ℓ` groups cost
//!   `O(n²/ℓ)`;
//! * a **summary sweep** gathers the summary keys, `n·c/ℓ` of them, which every query sees
//!   beyond `W`: `O(n²·c/ℓ)`.
//!
//! With `ℓ ≈ √n` every sweep is `O(n^1.5)`. The sweeps' pair sets are disjoint (a far sweep
//! takes only `p − k ≥ W`, and a key an earlier far part allows is left to that part), so each
//! sweep's normalised output and log-sum-exp merge into the whole softmax exactly as the blocks
//! of one sweep do: `lse = log(e^{lse₁} + e^{lse₂})`, `o = (e^{lse₁} o₁ + e^{lse₂} o₂) / e^{lse}`.
//! The backward needs no merging: with the final `lse` and `Δ`, each sweep's gradient terms are
//! those of its pairs, added into the head's gradients.

use super::super::few_rows::Strided as Matrix;
use super::sweep::{Block, Rows, Rule};
use crate::attention::KeyVisibility;
use crate::sparse_pattern::SparsePart;

/// How a head's pattern splits: the reach of its near parts and its far parts, in order.
pub(super) struct Split {
    /// `W`: the near sweep takes the pairs with `p − k < W`.
    pub band: usize,
    /// The parts that reach beyond `W`: one far sweep (or one group of sweeps) each.
    pub far: Vec<SparsePart>,
}

impl Split {
    /// The split of head `h`'s pattern; `None` without a pattern.
    pub fn of(vis: &KeyVisibility, h: usize) -> Option<Split> {
        let pattern = vis.pattern_of(h)?;
        let mut band = 1; // the query's own position
        let mut far = Vec::new();
        for &part in &pattern.parts {
            match part {
                SparsePart::Local { window } => band = band.max(window),
                SparsePart::SameBlock { block } => band = band.max(block),
                SparsePart::Columns { .. } | SparsePart::Summary { .. } => far.push(part),
            }
        }
        Some(Split { band, far })
    }

    /// The far sweeps of batch row `b` (of `l` queries and `n` keys): for each far part, its
    /// groups of gathered queries and keys. Hidden keys are left out; empty groups too.
    pub fn groups(&self, vis: &KeyVisibility, b: usize, l: usize, n: usize) -> Vec<Group> {
        let visible_keys = (0..n).filter(|&j| !vis.is_hidden(b, j, n));
        let mut groups = Vec::new();
        // A group of the f-th far part leaves to the f parts before it what they allow.
        for (earlier, &part) in self.far.iter().enumerate() {
            match part {
                SparsePart::Columns { stride } => {
                    let mut by_residue: Vec<Group> = (0..stride).map(|_| Group::new(earlier)).collect();
                    for i in 0..l {
                        let p = vis.query_position(i);
                        by_residue[p % stride].add_query(i, p);
                    }
                    for j in visible_keys.clone() {
                        let k = vis.key_position(b, j, n);
                        by_residue[k % stride].add_key(j, k);
                    }
                    groups.extend(by_residue.into_iter().filter(|g| !g.is_empty()));
                }
                SparsePart::Summary { block, summary } => {
                    let mut group = Group::new(earlier);
                    for i in 0..l {
                        group.add_query(i, vis.query_position(i));
                    }
                    for j in visible_keys.clone() {
                        let k = vis.key_position(b, j, n);
                        if k % block >= block - summary {
                            group.add_key(j, k);
                        }
                    }
                    if !group.is_empty() {
                        groups.push(group);
                    }
                }
                SparsePart::Local { .. } | SparsePart::SameBlock { .. } => {
                    unreachable!("near parts have no far sweep")
                }
            }
        }
        groups
    }
}

/// One far sweep: the head's queries and keys it gathers (indices and positions, in order),
/// and how many far parts come before its own.
pub(super) struct Group {
    pub queries: Vec<usize>,
    pub keys: Vec<usize>,
    query_positions: Vec<usize>,
    key_positions: Vec<usize>,
    earlier_parts: usize,
}

impl Group {
    fn new(earlier_parts: usize) -> Self {
        Group {
            queries: Vec::new(),
            keys: Vec::new(),
            query_positions: Vec::new(),
            key_positions: Vec::new(),
            earlier_parts,
        }
    }
    fn add_query(&mut self, i: usize, p: usize) {
        self.queries.push(i);
        self.query_positions.push(p);
    }
    fn add_key(&mut self, j: usize, k: usize) {
        self.keys.push(j);
        self.key_positions.push(k);
    }
    fn is_empty(&self) -> bool {
        self.queries.is_empty() || self.keys.is_empty()
    }

    /// The rule of this group under `split`: a pair is used when `p − k ≥ W` and no earlier far
    /// part allows it (the group's own part allows every causal pair it gathered).
    pub fn rule<'a>(&'a self, split: &'a Split) -> GroupRule<'a> {
        GroupRule { group: self, band: split.band, earlier: &split.far[..self.earlier_parts] }
    }
}

/// The [`Rule`] of a far sweep.
pub(super) struct GroupRule<'a> {
    group: &'a Group,
    band: usize,
    earlier: &'a [SparsePart],
}

impl Rule for GroupRule<'_> {
    fn block(&self, (i0, i1): (usize, usize), (j0, j1): (usize, usize)) -> Block {
        let (qp, kp) = (&self.group.query_positions, &self.group.key_positions);
        // Positions increase along the gathered queries and do not decrease along the keys.
        if kp[j0] + self.band > qp[i1 - 1] {
            Block::Hidden
        } else if self.earlier.is_empty() && kp[j1 - 1] + self.band <= qp[i0] {
            Block::Visible
        } else {
            Block::Mixed
        }
    }
    fn sees(&self, i: usize, j: usize) -> bool {
        let (p, k) = (self.group.query_positions[i], self.group.key_positions[j]);
        k + self.band <= p && !self.earlier.iter().any(|part| part.allows(p, k))
    }
    /// With no earlier part to leave pairs to, a query sees the gathered keys at least `W`
    /// before it: a prefix of any block.
    fn run(&self, i: usize, (j0, j1): (usize, usize)) -> Option<(usize, usize)> {
        if !self.earlier.is_empty() {
            return None;
        }
        let p = self.group.query_positions[i];
        Some((j0, j0 + self.group.key_positions[j0..j1].partition_point(|&k| k + self.band <= p)))
    }
}

/// Rows `rows` of `m` (`cols` columns each), copied into `out` (row-major, its old contents
/// dropped; its allocation is reused from group to group).
pub(super) fn gather_into(m: Matrix, rows: &[usize], cols: usize, out: &mut Vec<f32>) {
    out.clear();
    for &r in rows {
        let start = m.offset + r * m.row_stride;
        out.extend((0..cols).map(|c| m.data[start + c * m.col_stride]));
    }
}

/// `buf` as `len` zeros, reusing its allocation.
pub(super) fn zeros(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(len, 0.0);
    buf
}

/// Adds row `t` of `part` (`cols` columns) into row `rows[t]` of `into`.
pub(super) fn scatter_add(part: &[f32], rows: &[usize], cols: usize, into: &mut [f32]) {
    for (&r, src) in rows.iter().zip(part.chunks(cols)) {
        into[r * cols..(r + 1) * cols].iter_mut().zip(src).for_each(|(a, b)| *a += b);
    }
}

/// The gathered `q`, `k` and `v` rows of one group at a time, as a sweep reads them; a head
/// refills one `Gathered` for each of its groups.
#[derive(Default)]
pub(super) struct Gathered {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Gathered {
    /// Takes the group's rows of the head's `q`, `k` and `v`, and gives them as a sweep's rows.
    pub fn refill(&mut self, group: &Group, head: Rows) -> Rows<'_> {
        gather_into(head.q, &group.queries, head.d, &mut self.q);
        gather_into(head.k, &group.keys, head.d, &mut self.k);
        gather_into(head.v, &group.keys, head.dv, &mut self.v);
        Rows {
            q: Matrix::contiguous(&self.q, head.d),
            k: Matrix::contiguous(&self.k, head.d),
            v: Matrix::contiguous(&self.v, head.dv),
            queries: group.queries.len(),
            keys: group.keys.len(),
            d: head.d,
            dv: head.dv,
        }
    }
}

/// Merges one sweep's normalised output `part_out` `[rows, dv]` and log-sum-exp `part_lse`
/// into rows `rows` of the running `out` `[L, dv]` and `lse` `[L]`.
pub(super) fn merge(
    (out, lse): (&mut [f32], &mut [f32]),
    rows: &[usize],
    (part_out, part_lse): (&[f32], &[f32]),
    dv: usize,
) {
    for ((&r, &lp), src) in rows.iter().zip(part_lse).zip(part_out.chunks(dv)) {
        if lp == f32::NEG_INFINITY {
            continue; // the sweep gave this query nothing
        }
        let dst = &mut out[r * dv..(r + 1) * dv];
        let lo = lse[r];
        if lo == f32::NEG_INFINITY {
            dst.copy_from_slice(src);
            lse[r] = lp;
            continue;
        }
        let m = lo.max(lp);
        let (a, c) = ((lo - m).exp(), (lp - m).exp());
        let total = a + c;
        dst.iter_mut().zip(src).for_each(|(x, y)| *x = (*x * a + y * c) / total);
        lse[r] = m + total.ln();
    }
}
