//! Finding OpenCL devices, and one device's context, queue and program.

use std::sync::{Arc, Weak};

use ocl::{Context, Device as ClDevice, Platform, Program, Queue};
use tensor::{BackendDevice, BackendStorage, Device, Result, Storage};

use crate::storage::OpenClStorage;

pub(crate) fn cl_err(e: impl std::fmt::Display) -> tensor::Error {
    tensor::Error::new("opencl", e.to_string())
}

/// One OpenCL device as `perceiver devices` lists it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Position in the list, as in `--device opencl:N`.
    pub ordinal: usize,
    pub platform: String,
    pub name: String,
}

/// Every OpenCL device of every platform. With no OpenCL platform installed this is a clear
/// error (`Platform::list` would panic; the platform ids are read directly instead).
pub fn list_devices() -> Result<Vec<(DeviceInfo, Platform, ClDevice)>> {
    let ids = ocl::core::get_platform_ids().map_err(|e| {
        tensor::Error::new(
            "opencl",
            format!("no OpenCL platform found ({e}); install an ICD such as pocl-opencl-icd"),
        )
    })?;
    if ids.is_empty() {
        return Err(tensor::Error::new(
            "opencl",
            "no OpenCL platform found; install an ICD such as pocl-opencl-icd",
        ));
    }
    let mut out = Vec::new();
    for id in ids {
        let platform = Platform::new(id);
        let pname = platform.name().unwrap_or_else(|_| "unknown platform".into());
        for device in ClDevice::list_all(platform).map_err(cl_err)? {
            let name = device.name().unwrap_or_else(|_| "unknown device".into());
            out.push((DeviceInfo { ordinal: out.len(), platform: pname.clone(), name }, platform, device));
        }
    }
    if out.is_empty() {
        return Err(tensor::Error::new("opencl", "OpenCL platforms are installed but report no devices"));
    }
    Ok(out)
}

/// An OpenCL device ready to run kernels.
#[derive(Debug)]
pub struct OpenClDevice {
    pub info: DeviceInfo,
    pub(crate) queue: Queue,
    pub(crate) program: Program,
    /// This device's own `Arc`, so storage made through `&self` can hold it.
    me: Weak<OpenClDevice>,
}

impl OpenClDevice {
    /// Opens device `ordinal` of [`list_devices`] and builds the kernels for it.
    pub fn open(ordinal: usize) -> Result<Arc<OpenClDevice>> {
        let mut all = list_devices()?;
        if ordinal >= all.len() {
            return Err(tensor::Error::new(
                "opencl",
                format!("no OpenCL device {ordinal}: {} found", all.len()),
            ));
        }
        let (info, platform, device) = all.swap_remove(ordinal);
        let context = Context::builder().platform(platform).devices(device).build().map_err(cl_err)?;
        let queue = Queue::new(&context, device, None).map_err(cl_err)?;
        let program = Program::builder()
            .src(crate::program::source())
            .cmplr_opt(crate::program::compiler_options())
            .devices(device)
            .build(&context)
            .map_err(|e| {
                tensor::Error::new("opencl", format!("building the kernels for {}: {e}", info.name))
            })?;
        Ok(Arc::new_cyclic(|me| OpenClDevice { info, queue, program, me: me.clone() }))
    }

    pub(crate) fn handle(&self) -> Arc<OpenClDevice> {
        self.me.upgrade().expect("a device outlives its own methods")
    }

    /// Runs kernel `name` over `global` work-items (with `local` work-groups if given); `args`
    /// sets its arguments in order.
    pub(crate) fn launch<'b>(
        &'b self,
        name: &str,
        global: [usize; 3],
        local: Option<[usize; 3]>,
        args: impl FnOnce(&mut ocl::builders::KernelBuilder<'b>),
    ) -> Result<()> {
        if global.contains(&0) {
            return Ok(());
        }
        let mut builder: ocl::builders::KernelBuilder<'b> = ocl::Kernel::builder();
        builder.program(&self.program).name(name).queue(self.queue.clone()).global_work_size(global);
        if let Some(l) = local {
            builder.local_work_size(l);
        }
        args(&mut builder);
        let kernel = builder.build().map_err(cl_err)?;
        // SAFETY: every kernel checks its global id against the element count it is given;
        // output buffers are allocated with that count, and input buffers are read only at the
        // positions of their layouts, which `tensor::Operand` guarantees lie inside them.
        unsafe { kernel.enq().map_err(cl_err) }
    }

    /// Waits until every enqueued kernel has finished (for timing; results read back to the
    /// host are always complete).
    pub fn synchronize(&self) -> Result<()> {
        self.queue.finish().map_err(cl_err)
    }

    /// This device as a `tensor::Device`.
    pub fn device(self: &Arc<Self>) -> Device {
        Device::Ext(self.clone())
    }
}

impl BackendDevice for OpenClDevice {
    fn name(&self) -> String {
        format!("opencl:{}", self.info.ordinal)
    }
    fn upload(&self, data: &[f32]) -> Result<Storage> {
        OpenClStorage::from_host(&self.handle(), data).map(BackendStorage::into_storage)
    }
    fn zeros(&self, len: usize) -> Result<Storage> {
        OpenClStorage::filled(&self.handle(), len, 0.0).map(BackendStorage::into_storage)
    }
}
