//! # gpu: tensor's device trait on OpenCL
//!
//! [`OpenClDevice`] is one OpenCL device with its context, queue and the program of every
//! kernel (`kernels/*.cl`, named like their CPU counterparts), built once. Its storage,
//! [`OpenClStorage`], implements `tensor::BackendStorage`, so every op of `tensor` (and so every
//! layer and the whole model) runs on it unchanged: put tensors there with
//! `tensor.to_device(&device)`. Mixing devices in one op is an error, never an implicit copy.
//!
//! Kernels receive each operand's layout (shape, strides, offset) by value, so transposed,
//! sliced and broadcast views work without copies, as on the CPU. The matrix product is tiled in
//! local memory; reductions, softmax and layer norm give each row a work-group of
//! [`program::ROW_GROUP`] work-items. The elementwise ops and the constants shared with the
//! kernels come from one place each ([`program`]).

mod device;
mod layout_arg;
pub mod program;
mod storage;

pub use device::{list_devices, DeviceInfo, OpenClDevice};
pub use storage::OpenClStorage;
