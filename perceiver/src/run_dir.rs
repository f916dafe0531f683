//! A run directory held for writing: one training process at a time, and never a silent
//! takeover of an earlier run.
//!
//! ```text
//! OUT/.lock            held (flock) by the process writing OUT; says who that is
//! OUT/metrics.jsonl    one JSON object per logged step and evaluation
//! OUT/loss.svg         the curves
//! OUT/latest, OUT/checkpoints/   see crate::checkpoint
//! ```
//!
//! [`RunDir`] is the only way to write into a run: it takes an exclusive lock on `OUT/.lock`
//! for as long as it lives (the operating system's `flock`, through `std::fs::File::try_lock`,
//! so a crashed holder releases it with its last file descriptor), and a second writer gets an
//! error naming the holder's process id and command. Holding the lock, it may clean up what a
//! killed run left behind (half-written checkpoint directories), since no live process can own
//! it. A fresh run refuses a directory that already holds a run unless asked to overwrite it;
//! a resumed run forgets the metrics lines written after the checkpoint it resumes from, so
//! that they are logged once, by the steps that are now run again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nn::checkpoint::write_atomic;

use crate::error::{Error, Result};

/// The files of a run, as opposed to anything else a person keeps in the directory.
const RUN_FILES: [&str; 4] = ["latest", "checkpoints", "metrics.jsonl", "loss.svg"];

/// An exclusively locked run directory.
pub struct RunDir {
    path: PathBuf,
    /// Holds the lock until dropped.
    _lock: File,
}

impl RunDir {
    /// Opens `path` for a fresh run. A directory that already holds a run is refused (naming
    /// `--resume` and `--overwrite`) unless `overwrite`, which first deletes that run's files
    /// (and nothing else in the directory).
    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        let run = Self::lock(path)?;
        if run.holds_a_run() {
            if !overwrite {
                return Err(Error::Input(format!(
                    "{} already holds a run (checkpoints or metrics): continue it with --resume {0}, \
                     start over with --overwrite, or choose another --out",
                    path.display()
                )));
            }
            for name in RUN_FILES {
                let p = path.join(name);
                let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                match removed {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                    _ => {}
                }
            }
        }
        run.clean_stale_temporaries()?;
        Ok(run)
    }

    /// Opens `path` to continue the run there. Once the checkpoint to continue from is
    /// loaded (under the lock, so no other writer can prune it meanwhile), call
    /// [`RunDir::forget_metrics_after`] with its step.
    pub fn resume(path: &Path) -> Result<Self> {
        let run = Self::lock(path)?;
        run.clean_stale_temporaries()?;
        Ok(run)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether any file of a run is here.
    pub fn holds_a_run(&self) -> bool {
        RUN_FILES.iter().any(|f| self.path.join(f).exists())
    }

    /// Creates `path` if needed and takes its lock, or says who holds it.
    fn lock(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock_path = path.join(".lock");
        // Not truncated on open: until the lock is ours, the text in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Input(format!(
                    "{} is in use by another process ({}); wait for it to finish or choose another --out",
                    path.display(),
                    describe_holder(&holder)
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let command: Vec<String> = std::env::args().collect();
        let text = format!("pid {}\nstarted {started}\ncommand {}\n", std::process::id(), command.join(" "));
        let written =
            file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(text.as_bytes()));
        written.map_err(|e| Error::io(&lock_path, e))?;
        Ok(RunDir { path: path.to_path_buf(), _lock: file })
    }

    /// Removes the temporary files and directories a killed writer left (`.step-N.tmp-PID`,
    /// `.latest.tmp-PID`, ...). Only the lock holder may do this: a live writer's temporaries
    /// are never touched, since a live writer holds the lock.
    fn clean_stale_temporaries(&self) -> Result<()> {
        for dir in [self.path.clone(), self.path.join("checkpoints")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !(name.starts_with('.') && name.contains(".tmp")) {
                    continue;
                }
                let p = entry.path();
                let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                removed.map_err(|e| Error::io(&p, e))?;
            }
        }
        Ok(())
    }

    /// Rewrites `metrics.jsonl` without the lines of steps after `step` (and without a torn
    /// last line): a run resumed from the checkpoint of `step` logs those steps again.
    pub fn forget_metrics_after(&self, step: u64) -> Result<()> {
        let path = self.path.join("metrics.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                let v: Option<serde_json::Value> = serde_json::from_str(line).ok();
                v.and_then(|v| v.get("step")?.as_f64()).is_some_and(|s| s <= step as f64)
            })
            .flat_map(|line| [line, "\n"])
            .collect();
        if kept.len() != text.len() {
            write_atomic(&path, kept.as_bytes())?;
        }
        Ok(())
    }
}

/// "pid 123, `perceiver train ...`, started 42 s ago" from the lock file's text.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(str::trim));
    let mut parts = vec![format!("pid {}", field("pid ").unwrap_or("unknown"))];
    if let Some(cmd) = field("command ") {
        parts.push(format!("`{cmd}`"));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(started) = field("started ").and_then(|s| s.parse::<u64>().ok()) {
        parts.push(format!("started {} s ago", now.saturating_sub(started)));
    }
    parts.join(", ")
}
