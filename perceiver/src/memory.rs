//! Refusing work that cannot fit, before anything large is allocated.
//!
//! A mistyped option (`--channels 1000000000000`, `--copy-bytes 100000`) would otherwise end in
//! an allocation abort or in the kernel's out-of-memory killer, with no word about which option
//! was wrong. So the sizes a run implies are computed first, in `u128` (no config can overflow
//! them), from lower bounds that count only tensors which must exist, and compared with the
//! memory this machine has available now. A lower bound can only refuse what truly cannot
//! run; it lets through some runs that will still not fit, but never the absurd ones.

use crate::error::{Error, Result};

/// Bytes of memory available now: `MemAvailable` of `/proc/meminfo`. `None` where that cannot
/// be read (not Linux): then nothing is refused.
pub fn available() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` in binary units, for messages (`23.1 GiB`, `4.6 EiB`).
pub fn human(bytes: u128) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] {
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
        value /= 1024.0;
    }
    format!("{value:.1} EiB")
}

/// An error when `bytes` exceed the memory available; `what` says what needs them and which
/// options set its size.
pub fn ensure_fits(bytes: u128, what: impl FnOnce() -> String) -> Result<()> {
    match available() {
        Some(free) if bytes > free => Err(Error::Memory(format!(
            "{} needs at least {}, but this machine has {} available",
            what(),
            human(bytes),
            human(free)
        ))),
        _ => Ok(()),
    }
}
