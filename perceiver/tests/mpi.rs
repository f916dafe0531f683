//! Data-parallel training under `mpirun` (a build with `--features mpi`; CI runs it with Open
//! MPI and two ranks): two ranks reach the parameters one process reaches with the same global
//! batch and seed, and a job that loses a rank stops with an error, keeps its last checkpoint,
//! and resumed under MPI ends exactly where an uninterrupted run ends.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nn::checkpoint::read_safetensors;

const BIN: &str = env!("CARGO_BIN_EXE_perceiver");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perceiver-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `mpirun -np N perceiver --threads 1 ARGS` (root allowed: CI runs as root).
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &ranks.to_string(), "--oversubscribe", BIN, "--threads", "1"])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The parameters of the newest checkpoint of run `dir`, by name.
fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let latest = std::fs::read_to_string(dir.join("latest")).unwrap();
    let file = read_safetensors(&dir.join(latest.trim()).join("model.safetensors")).unwrap();
    let mut out: Vec<(String, Vec<f32>)> =
        file.floats.iter().map(|(k, v)| (k.clone(), v.to_vec().unwrap())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest difference between two runs' parameters, relative to each tensor's largest
/// magnitude.
fn max_relative_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (params(a), params(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            x.iter().zip(y).fold(0.0f32, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0.0, f32::max)
}

const COPY_RUN: [&str; 6] = ["--copy-bytes", "8", "--batch", "8", "--eval-every", "1000"];

#[test]
fn two_ranks_reach_the_parameters_of_one_process() {
    let (one, two) = (scratch("one"), scratch("two"));
    let steps = ["train", "--steps", "50", "--out"];
    let out =
        Command::new(BIN).args(["--threads", "1"]).args(steps).arg(&one).args(COPY_RUN).output().unwrap();
    check(out, "one process");
    check(mpirun(2, &steps).arg(&two).args(COPY_RUN).output().unwrap(), "two ranks");
    let diff = max_relative_difference(&one, &two);
    println!("largest relative difference after 50 steps: {diff:e}");
    assert!(diff <= 1e-5, "two ranks drifted {diff} from one process");
    // Only rank 0 writes: one metrics line per logged step, one checkpoint directory.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"step\":50,")).count(), 2, "{metrics}");
    for dir in [one, two] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_dead_rank_stops_the_job_and_a_resumed_run_continues_exactly() {
    let (whole, broken) = (scratch("whole"), scratch("broken"));
    let args = ["train", "--steps", "300", "--checkpoint-every", "20", "--out"];
    check(mpirun(2, &args).arg(&whole).args(COPY_RUN).output().unwrap(), "uninterrupted");

    // The same run, one of its rank processes killed once a checkpoint exists.
    let job = mpirun(2, &args)
        .arg(&broken)
        .args(COPY_RUN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !broken.join("checkpoints/step-00000040").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pattern = format!("{BIN} --threads 1 train .*{}", broken.display());
    let killed = Command::new("pkill").args(["-KILL", "-n", "-f", &pattern]).status().unwrap();
    assert!(killed.success(), "no rank process found");
    let out = job.wait_with_output().unwrap();
    assert!(!out.status.success(), "the job went on without a rank");
    assert!(!out.stderr.is_empty(), "the job stopped without saying why");

    // Its newest complete checkpoint loads, and resuming it under MPI ends where the
    // uninterrupted run ended, bit for bit.
    let step = std::fs::read_to_string(broken.join("latest")).unwrap();
    assert!(step.contains("step-"), "{step}");
    let resumed = mpirun(2, &["train", "--resume"]).arg(&broken).output().unwrap();
    check(resumed, "resumed");
    assert_eq!(params(&whole), params(&broken), "the resumed run differs from the uninterrupted one");
    for dir in [whole, broken] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
