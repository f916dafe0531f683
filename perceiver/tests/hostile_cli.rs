//! The `perceiver` binary against a hostile user: every bad option value is refused before
//! anything runs, with a message naming the option; a run directory is never taken over or
//! shared; sizes that cannot fit and files that cannot be data are errors, never aborts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn perceiver(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_perceiver")).args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs and expects a clean failure (exit code 1 or clap's 2, never a panic or a signal)
/// whose message contains every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_perceiver")).args(args).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "{args:?}: exit {:?}, want a clean error:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: the message does not name {n:?}:\n{stderr}");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perceiver-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A tiny copy-task run (k = 4), a few seconds at most.
const TINY: [&str; 10] =
    ["--copy-bytes", "4", "--channels", "16", "--heads", "2", "--layers", "1", "--threads", "1"];

fn train_tiny(out: &Path, extra: &[&str]) -> (bool, String, String) {
    let o = out.to_str().unwrap();
    perceiver(&[&["train"], &TINY[..], &["--out", o], extra].concat())
}

#[test]
fn numeric_options_are_checked_when_parsed() {
    let out = scratch("numbers");
    let o = out.to_str().unwrap();
    for (option, value) in [
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--minutes", "-5"),
        ("--minutes", "nan"),
        ("--minutes", "inf"),
        ("--heads", "0"),
        ("--channels", "0"),
        ("--batch", "0"),
        ("--steps", "0"),
        ("--latents", "0"),
        ("--context", "0"),
        ("--copy-bytes", "0"),
        ("--cross-dropout", "1"),
        ("--cross-dropout", "-0.1"),
        ("--cross-dropout", "nan"),
        ("--eval-every", "0"),
        ("--checkpoint-every", "0"),
        ("--threads", "0"),
    ] {
        let arg = format!("{option}={value}");
        refused(&["train", &arg, "--out", o], &[option]);
    }
    for (option, value) in [
        ("--top-p", "2"),
        ("--top-p", "nan"),
        ("--top-p", "0"),
        ("--temperature", "-1"),
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--top-k", "0"),
    ] {
        let arg = format!("{option}={value}");
        refused(&["generate", "--checkpoint", o, "--prompt", "x", &arg], &[option]);
    }
    refused(&["eval", "--checkpoint", o, "--latents", "0"], &["--latents"]);
    assert!(!out.exists(), "nothing was written for a refused command");
}

#[test]
fn sizes_that_cannot_fit_are_refused_by_name() {
    let out = scratch("sizes");
    let o = out.to_str().unwrap();
    refused(
        &["train", "--channels", "1000000000000", "--heads", "1", "--out", o],
        &["not enough memory", "channels 1000000000000"],
    );
    refused(&["train", "--copy-bytes", "100000", "--out", o], &["not enough memory", "k = 100000"]);
    refused(&["train", "--data", "/dev/zero", "--out", o], &["/dev/zero", "not a regular file"]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_fresh_run_never_takes_over_an_existing_one() {
    let out = scratch("takeover");
    let (ok, _, stderr) = train_tiny(&out, &["--steps", "10"]);
    assert!(ok, "{stderr}");
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();

    // Refused, naming the ways forward; the old run is untouched.
    refused(
        &[&["train"], &TINY[..], &["--out", out.to_str().unwrap(), "--steps", "5"]].concat(),
        &["already holds a run", "--resume", "--overwrite"],
    );
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), latest);

    // --overwrite starts over: only the new run's lines and checkpoints remain.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let (ok, _, stderr) = train_tiny(&out, &["--steps", "5", "--overwrite"]);
    assert!(ok, "{stderr}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().all(|l| !l.contains("\"step\":10")), "{metrics}");
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap(), "checkpoints/step-00000005");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine", "other files are kept");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_second_writer_is_told_who_holds_the_run() {
    let out = scratch("lock");
    let o = out.to_str().unwrap();
    /// Kills the background run however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_perceiver"))
            .args(
                [&["train"], &TINY[..], &["--out", o, "--steps", "100000", "--eval-every", "100000"]]
                    .concat(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait until the first process holds the lock (its pid is written once it does).
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = first.0.id().to_string();
    while !std::fs::read_to_string(out.join(".lock")).unwrap_or_default().contains(&pid) {
        assert!(Instant::now() < deadline, "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = [&["train"], &TINY[..], &["--out", o, "--steps", "5"]].concat();
    refused(&second, &["in use by another process", &format!("pid {pid}")]);
    let resume = ["train", "--resume", o, "--steps", "5"];
    refused(&resume, &["in use by another process", &format!("pid {pid}")]);
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // The lock dies with its holder: the run can be resumed (or here, overwritten) at once.
    let (ok, _, stderr) = train_tiny(&out, &["--steps", "3", "--overwrite"]);
    assert!(ok, "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn resuming_applies_or_refuses_every_option() {
    let out = scratch("resume-options");
    let o = out.to_str().unwrap();
    let (ok, _, stderr) = train_tiny(&out, &["--steps", "10", "--eval-every", "5"]);
    assert!(ok, "{stderr}");
    for option in [
        &["--batch", "4"][..],
        &["--channels", "32"],
        &["--seed", "3"],
        &["--warmup", "7"],
        &["--copy-bytes", "5"],
        &["--variant", "paper"],
    ] {
        refused(&[&["train", "--resume", o], option].concat(), &[option[0], "cannot change when resuming"]);
    }
    let (ok, stdout, stderr) = perceiver(&[
        "train",
        "--resume",
        o,
        "--steps",
        "12",
        "--lr",
        "0.0005",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("--lr 0.0005 (was 0.001)") && stderr.contains("--steps 12 (was 10)"), "{stderr}");
    let config = std::fs::read_to_string(out.join("checkpoints/step-00000012/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["schedule"]["peak"].as_f64().unwrap() as f32, 0.0005);
    assert_eq!(config["checkpoint_every"], 1);
    assert!(out.join("checkpoints/step-00000011").exists(), "a checkpoint every step now");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_damaged_latest_falls_back_to_the_newest_complete_checkpoint() {
    let out = scratch("latest");
    let o = out.to_str().unwrap();
    let (ok, _, stderr) = train_tiny(&out, &["--steps", "6", "--checkpoint-every", "3"]);
    assert!(ok, "{stderr}");
    for damage in ["", "checkpoints/step-00000099", "\u{0}\u{1}garbage"] {
        std::fs::write(out.join("latest"), damage).unwrap();
        let (ok, stdout, stderr) = perceiver(&["eval", "--checkpoint", o, "--json", "--threads", "1"]);
        assert!(ok, "{damage:?}: {stderr}");
        assert!(stderr.contains("latest") && stderr.contains("step-00000006"), "{damage:?}: {stderr}");
        assert!(stdout.contains("accuracy"), "{stdout}");
    }
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    refused(&["eval", "--checkpoint", o], &["latest", "no complete checkpoint"]);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn steps_reached_writes_no_phantom_plot() {
    let out = scratch("no-steps");
    let o = out.to_str().unwrap();
    let (ok, _, stderr) = train_tiny(&out, &["--steps", "4"]);
    assert!(ok, "{stderr}");
    std::fs::remove_file(out.join("loss.svg")).unwrap();
    // Resuming a finished run runs no step: it says so, and names no plot it did not draw.
    let (ok, stdout, stderr) = perceiver(&["train", "--resume", o, "--threads", "1"]);
    assert!(ok, "{stderr}");
    let claims_plot = stdout.contains("loss curve:");
    assert_eq!(claims_plot, out.join("loss.svg").exists(), "{stdout}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn strided_evaluation_of_text() {
    let out = scratch("stride");
    std::fs::create_dir_all(&out).unwrap();
    let data = out.join("text.txt");
    let text: String = (0..400).map(|i| format!("line {i}: to be or not to be\n")).collect();
    std::fs::write(&data, text).unwrap();
    let run = out.join("run");
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let (ok, _, stderr) = perceiver(&[
        "train",
        "--data",
        d,
        "--context",
        "32",
        "--latents",
        "8",
        "--channels",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--steps",
        "3",
        "--threads",
        "1",
        "--out",
        r,
    ]);
    assert!(ok, "{stderr}");
    let eval = |extra: &[&str]| {
        perceiver(&[&["eval", "--checkpoint", r, "--json", "--threads", "1"], extra].concat())
    };
    // The default stride is half the latents; every held-out byte after the first prefix is
    // scored once whatever the stride.
    let (ok, stdout, stderr) = eval(&[]);
    assert!(ok, "{stderr}");
    let default: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(default["stride"], 4);
    for stride in ["1", "8"] {
        let (ok, stdout, stderr) = eval(&["--stride", stride]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["tokens"], default["tokens"], "stride {stride}");
    }
    refused(&["eval", "--checkpoint", r, "--stride", "9"], &["stride must be in 1..=8"]);
    std::fs::remove_dir_all(&out).unwrap();
}
