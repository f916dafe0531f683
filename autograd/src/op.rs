//! What the tape remembers about each recorded op: its inputs (as node ids, `None` for inputs
//! that need no gradient) and the tensors its backward rule reads.

use tensor::{AttentionParts, BinaryOp, KeyVisibility, ReduceOp, Tensor, UnaryOp};

use crate::param::ParamId;

/// Index of a node on its tape.
pub(crate) type NodeId = usize;

pub(crate) enum Op {
    /// An input of the computation: a parameter (gradient keyed by its id) or a plain leaf.
    Leaf {
        param: Option<ParamId>,
    },
    /// The input and output are kept only where the derivative reads them (`UnaryOp::keeps`).
    Unary {
        x: NodeId,
        op: UnaryOp,
        input: Option<Tensor>,
        output: Option<Tensor>,
    },
    /// The inputs are kept only when the derivative reads them (`BinaryOp::needs_inputs`).
    Binary {
        lhs: Option<NodeId>,
        rhs: Option<NodeId>,
        op: BinaryOp,
        inputs: Option<(Tensor, Tensor)>,
        shapes: (Vec<usize>, Vec<usize>),
    },
    /// `cond ? t : f`; the condition is a constant.
    Where {
        cond: Tensor,
        t: Option<NodeId>,
        f: Option<NodeId>,
        t_shape: Vec<usize>,
        f_shape: Vec<usize>,
    },
    /// A reduction; `output` is kept with `axis` as size 1.
    Reduce {
        x: NodeId,
        op: ReduceOp,
        axis: usize,
        keepdim: bool,
        input: Tensor,
        output: Tensor,
    },
    Softmax {
        x: NodeId,
        axis: usize,
        output: Tensor,
    },
    LayerNorm {
        x: Option<NodeId>,
        weight: Option<NodeId>,
        bias: Option<NodeId>,
        input: Tensor,
        weight_value: Tensor,
        mean: Tensor,
        rstd: Tensor,
    },
    /// `a b`, plus a bias added to every row and a residual of the product's shape where the
    /// op was [`crate::Var::matmul_plus`] (`bias` and `residual` are their nodes, `None` also
    /// where they need no gradient). Where `lhs_times` is given, `a` is an activation of
    /// `lhs`'s value and `lhs_times` its derivative there, so `lhs`'s gradient is
    /// `(g bᵀ) ⊙ lhs_times` ([`crate::GeluOfLinear::matmul_plus`]).
    Matmul {
        lhs: Option<NodeId>,
        rhs: Option<NodeId>,
        bias: Option<NodeId>,
        residual: Option<NodeId>,
        a: Tensor,
        b: Tensor,
        lhs_times: Option<Tensor>,
    },
    /// An elementwise function of `x` whose derivative there, `by`, its forward saved:
    /// `dx = g ⊙ by` ([`crate::GeluOfLinear::into_var`]).
    Times {
        x: NodeId,
        by: Tensor,
    },
    /// Rotation of channel pairs by fixed angles: the backward rotates back, so only the
    /// tables are kept.
    RotatePairs {
        x: NodeId,
        cos: Tensor,
        sin: Tensor,
    },
    /// Fused attention: the inputs, the output and its log-sum-exp, and which keys were seen.
    Attention {
        q: Option<NodeId>,
        k: Option<NodeId>,
        v: Option<NodeId>,
        values: [Tensor; 3],
        parts: AttentionParts,
        visibility: KeyVisibility,
    },
    Transpose {
        x: NodeId,
        a: usize,
        b: usize,
    },
    Permute {
        x: NodeId,
        dims: Vec<usize>,
    },
    Narrow {
        x: NodeId,
        axis: usize,
        start: usize,
        full: usize,
    },
    Broadcast {
        x: NodeId,
        shape: Vec<usize>,
    },
    /// Any change of shape that keeps row-major order (reshape, squeeze, unsqueeze, flatten).
    Reshape {
        x: NodeId,
        shape: Vec<usize>,
    },
    Cat {
        inputs: Vec<Option<NodeId>>,
        axis: usize,
        sizes: Vec<usize>,
    },
    /// `x` with entries `start..start + len` of `axis` replaced by `src`.
    Overwrite {
        x: Option<NodeId>,
        src: Option<NodeId>,
        axis: usize,
        start: usize,
        len: usize,
    },
    /// Rows `ids` of a `[vocab, dim]` table plus rows of `[N, dim]` (a token's embedding plus
    /// its position's, [`crate::Var::embedding_plus`]).
    EmbeddingPlus {
        table: Option<NodeId>,
        rows: Option<NodeId>,
        ids: Vec<usize>,
        vocab: usize,
        rows_shape: Vec<usize>,
    },
    IndexSelect {
        x: NodeId,
        axis: usize,
        indices: Vec<usize>,
        size: usize,
    },
    Gather {
        x: NodeId,
        axis: usize,
        indices: Vec<usize>,
        size: usize,
    },
}
