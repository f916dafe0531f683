//! `Tensor`: shared, immutable f32 storage plus a [`Layout`] that says which elements it shows.
//!
//! Cloning a tensor or taking a view copies only the layout; the storage is reference counted.
//! Nothing mutates a tensor after it is made, so views can be handed around freely and an
//! autograd tape can keep the inputs of an op for its backward without copies. (The one
//! in-place op, [`Tensor::write_narrow`] for key/value caches, copies storage that anything
//! else shares before writing, so it keeps this promise.)

use std::fmt;
use std::sync::Arc;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::backend::{Device, DynStorage, Operand, Storage};
use crate::bail;
use crate::cpu::CpuStorage;
use crate::error::{fmt_shape, Error, Result};
use crate::layout::Layout;

/// An n-dimensional array of f32 on some [`Device`].
#[derive(Clone)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
}

impl Tensor {
    /// Wraps storage and a layout that fits in it. Backends use this for their outputs.
    pub fn from_storage(storage: Storage, layout: Layout) -> Result<Tensor> {
        let len = storage.backend().len();
        if layout.storage_extent() > len {
            bail!(
                "from_storage",
                "layout {} reaches past a storage of {len} elements",
                fmt_shape(layout.shape())
            );
        }
        Ok(Tensor { storage: Arc::new(storage), layout })
    }

    /// This tensor as an operand of a device op (its layout checked against its storage).
    pub(crate) fn operand(&self) -> Result<Operand<'_>> {
        Operand::of(self, &self.layout)
    }

    /// This tensor read through `layout` (a broadcast of its own) as an operand.
    pub(crate) fn operand_as<'a>(&'a self, layout: &'a Layout) -> Result<Operand<'a>> {
        Operand::of(self, layout)
    }

    /// The device ops of this tensor's storage.
    pub(crate) fn kernels(&self) -> &dyn DynStorage {
        self.storage.backend()
    }

    /// Contiguous output storage of `shape` (what every op returns).
    pub(crate) fn from_output(storage: Storage, shape: &[usize]) -> Tensor {
        debug_assert_eq!(storage.backend().len(), shape.iter().product::<usize>());
        Tensor { storage: Arc::new(storage), layout: Layout::contiguous(shape) }
    }

    /// A kernel's output seen through `layout`, which reaches every element of the storage
    /// once (a permutation of its contiguous layout).
    pub(crate) fn from_output_as(storage: Storage, layout: Layout) -> Tensor {
        debug_assert_eq!(storage.backend().len(), layout.numel());
        Tensor { storage: Arc::new(storage), layout }
    }

    /// A tensor on the CPU holding `data` in row-major order.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if data.len() != numel {
            bail!(
                "from_vec",
                "{} values do not fill shape {} ({numel} elements)",
                data.len(),
                fmt_shape(shape)
            );
        }
        Ok(Tensor::from_output(Storage::Cpu(CpuStorage::new(data)), shape))
    }

    /// A copy of `data` on the CPU.
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A 0-dimensional tensor.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::full(value, &[])
    }

    pub fn full(value: f32, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        // Zeros come from the pool already zero (fresh pages) without a pass over them here.
        let data = if value.to_bits() == 0 {
            crate::cpu::pool::zeroed(n)
        } else {
            let mut data = crate::cpu::pool::uninit(n);
            data.fill(value);
            data
        };
        Tensor::from_output(Storage::Cpu(CpuStorage::new(data)), shape)
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(0.0, shape)
    }

    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(1.0, shape)
    }

    /// `0, 1, ..., n-1`.
    pub fn arange(n: usize) -> Tensor {
        Tensor::from_output(Storage::Cpu(CpuStorage::new((0..n).map(|i| i as f32).collect())), &[n])
    }

    /// Samples from a normal distribution with mean 0 and standard deviation `std`.
    pub fn randn(shape: &[usize], std: f32, rng: &mut impl Rng) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| std * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
            .collect();
        Tensor::from_output(Storage::Cpu(CpuStorage::new(data)), shape)
    }

    /// Samples uniformly from `[low, high)`.
    pub fn rand_uniform(shape: &[usize], low: f32, high: f32, rng: &mut impl Rng) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| rng.gen_range(low..high)).collect();
        Tensor::from_output(Storage::Cpu(CpuStorage::new(data)), shape)
    }

    /// Zeros of this tensor's shape on its device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape()).to_device(&self.device())
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn device(&self) -> Device {
        self.storage.device()
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// Size of `axis`, or an error naming the shape.
    pub fn dim(&self, axis: usize) -> Result<usize> {
        self.layout.check_axis("dim", axis)?;
        Ok(self.shape()[axis])
    }

    /// True when both tensors view the same storage allocation.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// The elements in row-major order, copied to the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.kernels().to_host(self.operand()?)
    }

    /// The value of a tensor with exactly one element.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            bail!(
                "to_scalar",
                "tensor of shape {} has {} elements, not 1",
                fmt_shape(self.shape()),
                self.numel()
            );
        }
        Ok(self.to_vec()?[0])
    }

    /// The element at a multi-index.
    pub fn get(&self, index: &[usize]) -> Result<f32> {
        if index.len() != self.rank() || index.iter().zip(self.shape()).any(|(i, d)| i >= d) {
            bail!("get", "index {index:?} out of bounds for shape {}", fmt_shape(self.shape()));
        }
        match self.storage.as_cpu() {
            Some(cpu) => Ok(cpu.as_slice()[self.layout.position(index)]),
            None => {
                let one = Layout::from_parts(vec![], vec![], self.layout.position(index));
                Ok(self.kernels().to_host(self.operand_as(&one)?)?[0])
            }
        }
    }

    /// A copy on `device` (the same tensor if it is already there). Moving between devices is
    /// always explicit; ops on tensors of different devices are errors.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device() == *device {
            return Ok(self.clone());
        }
        let host = self.to_vec()?;
        Ok(Tensor::from_output(device.upload(&host)?, self.shape()))
    }

    /// Errors unless `other` is on this tensor's device.
    pub(crate) fn same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        let (a, b) = (self.device(), other.device());
        if a != b {
            return Err(Error::new(op, format!("operands on different devices: {a} and {b}")));
        }
        Ok(())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{}", fmt_shape(self.shape()))?;
        if self.device() != Device::Cpu {
            write!(f, " on {}", self.device())?;
        }
        match self.to_vec() {
            Ok(v) if v.len() <= 16 => write!(f, " {v:?}"),
            Ok(v) => write!(f, " [{}, {}, ... {}]", v[0], v[1], v[v.len() - 1]),
            Err(e) => write!(f, " <{e}>"),
        }
    }
}
