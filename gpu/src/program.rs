//! The OpenCL program: the kernel files, the elementwise ops generated from `tensor`'s op
//! table, and the constants that Rust and OpenCL C share, handed to the compiler as defines.
//!
//! Nothing is kept in step by hand: `apply_unary` and `apply_binary` (one `case` per op, with
//! the codes of `UnaryOp::code` and `BinaryOp::code`) are written from the tables in
//! `tensor::op_table`, and `MAX_RANK`, `ROW_GROUP`, `TILE`, `ATTENTION_MAX_DIM`, `SPARSE_MAX_PARTS` and the
//! reduction codes exist only
//! here, as Rust constants, reaching the kernels as `-D NAME=value`.

use tensor::{BinaryOp, ReduceOp, UnaryOp};

/// Largest rank a kernel accepts (the `Layout` struct's array length).
pub const MAX_RANK: usize = 8;
/// Work-items per row in the row kernels (reductions, softmax, layer norm): one work-group
/// per row, each work-item striding over the columns.
pub const ROW_GROUP: usize = 64;
/// The matrix product's tile: each work-group computes a `TILE x TILE` block of the output.
pub const TILE: usize = 16;
/// The largest head dimension the attention kernels hold in registers.
pub const ATTENTION_MAX_DIM: usize = 128;
/// The most parts a sparse attention pattern may have on OpenCL (the paper's patterns have 2).
pub const SPARSE_MAX_PARTS: usize = 4;

/// The kernel files, in compile order (the common header first).
const FILES: [&str; 8] = [
    include_str!("../kernels/common.cl"),
    include_str!("../kernels/elementwise.cl"),
    include_str!("../kernels/reduce.cl"),
    include_str!("../kernels/softmax.cl"),
    include_str!("../kernels/layer_norm.cl"),
    include_str!("../kernels/matmul.cl"),
    include_str!("../kernels/index.cl"),
    include_str!("../kernels/attention.cl"),
];

/// The whole program source: the common header, the generated elementwise functions, then
/// the kernels.
pub fn source() -> String {
    let (common, kernels) = FILES.split_first().expect("kernel files");
    let mut s = String::from(*common);
    s.push_str("\n// Generated from tensor::op_table.\n");
    s.push_str(&UnaryOp::opencl_source());
    s.push_str(&BinaryOp::opencl_source());
    for k in kernels {
        s.push('\n');
        s.push_str(k);
    }
    s
}

/// The compiler options: every shared constant as a define.
pub fn compiler_options() -> String {
    let mut defines = vec![
        format!("-D MAX_RANK={MAX_RANK}"),
        format!("-D ROW_GROUP={ROW_GROUP}"),
        format!("-D TILE={TILE}"),
        format!("-D ATTENTION_MAX_DIM={ATTENTION_MAX_DIM}"),
        format!("-D SPARSE_MAX_PARTS={SPARSE_MAX_PARTS}"),
    ];
    for &op in ReduceOp::ALL {
        defines.push(format!("-D REDUCE_{}={}", op.name().to_uppercase(), op as i32));
    }
    defines.join(" ")
}
