//! Choosing where to compute: `cpu`, `opencl` (the first OpenCL device) or `opencl:N`.

use tensor::Device;

use crate::error::{Error, Result};

/// The device named by a `--device` value.
pub fn parse(spec: &str) -> Result<Device> {
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| Error::Input(format!("--device {spec}: {n} is not a device number")))?;
            (k, n)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" if ordinal == 0 => Ok(Device::Cpu),
        "opencl" => open_opencl(ordinal),
        _ => Err(Error::Input(format!("--device {spec}: expected cpu, opencl or opencl:N"))),
    }
}

#[cfg(feature = "opencl")]
fn open_opencl(ordinal: usize) -> Result<Device> {
    Ok(gpu::OpenClDevice::open(ordinal)?.device())
}

#[cfg(not(feature = "opencl"))]
fn open_opencl(_: usize) -> Result<Device> {
    Err(Error::Input("this build has no OpenCL support: rebuild with `--features opencl`".into()))
}

/// One line per device the build can use.
pub fn describe() -> Result<Vec<String>> {
    #[allow(unused_mut)]
    let mut out = vec!["cpu: the host, with SIMD kernels on all cores".to_string()];
    #[cfg(feature = "opencl")]
    for (info, _, _) in gpu::list_devices()? {
        out.push(format!("opencl:{}: {} ({})", info.ordinal, info.name, info.platform));
    }
    #[cfg(not(feature = "opencl"))]
    out.push("(OpenCL devices are listed by a build with `--features opencl`)".into());
    Ok(out)
}
