//! The `perceiver` binary as a person uses it: help on every subcommand, a short training run,
//! evaluation as JSON, generation, resuming, and clear errors.

use std::path::PathBuf;
use std::process::Command;

fn perceiver(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_perceiver")).args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["train", "eval", "generate", "verify", "bench", "compare", "devices"] {
        let (ok, stdout, _) = perceiver(&[sub, "--help"]);
        assert!(ok && stdout.contains("Usage: perceiver"), "{sub} --help:\n{stdout}");
    }
}

#[test]
fn train_eval_generate_and_resume_from_the_command_line() {
    let out = std::env::temp_dir().join(format!("perceiver-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_str().unwrap();
    let small = [
        "train",
        "--copy-bytes",
        "4",
        "--channels",
        "32",
        "--heads",
        "2",
        "--layers",
        "1",
        "--eval-every",
        "10",
        "--threads",
        "1",
        "--out",
        o,
    ];
    let (ok, stdout, stderr) = perceiver(&[&small[..], &["--steps", "20"]].concat());
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("final held out") && stderr.contains("copy task (k = 4)"), "{stdout}\n{stderr}");
    for f in ["metrics.jsonl", "loss.svg", "latest"] {
        assert!(PathBuf::from(o).join(f).exists(), "{f} written");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));

    let (ok, stdout, stderr) = perceiver(&["eval", "--checkpoint", o, "--json", "--latents", "7"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["latents"], 7);
    assert!(v["accuracy"].as_f64().is_some() && v["sequence_accuracy"].as_f64().is_some());

    let (ok, stdout, stderr) = perceiver(&[
        "generate",
        "--checkpoint",
        o,
        "--prompt",
        "abcd",
        "--tokens",
        "5",
        "--temperature",
        "0",
    ]);
    assert!(ok && stdout.starts_with("abcd"), "{stdout}\n{stderr}");
    // Any number of latents up to the context; more is refused by name.
    let gen = |latents: &str| {
        perceiver(&[
            "generate",
            "--checkpoint",
            o,
            "--prompt",
            "ab",
            "--tokens",
            "3",
            "--temperature",
            "0",
            "--latents",
            latents,
        ])
    };
    let (ok, stdout, stderr) = gen("2");
    assert!(ok && stdout.starts_with("ab"), "{stdout}\n{stderr}");
    // Cached by default; `--no-cache` predicts with full passes and prints as many tokens.
    let (ok, cached, stderr) = perceiver(&["generate", "--checkpoint", o, "--prompt", "ab", "--tokens", "6"]);
    assert!(ok, "{stderr}");
    let (ok, full, stderr) =
        perceiver(&["generate", "--checkpoint", o, "--prompt", "ab", "--tokens", "6", "--no-cache"]);
    assert!(ok && full.starts_with("ab") && cached.starts_with("ab"), "{full}\n{stderr}");
    let (ok, _, stderr) = gen("100");
    assert!(!ok && stderr.contains("--latents 100 exceeds the model's context of 9"), "{stderr}");

    // Resume to 30 steps: the run continues from step 20.
    let (ok, stdout, stderr) = perceiver(&["train", "--resume", o, "--steps", "30", "--threads", "1"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("step 30"), "{stdout}");

    // Errors name what was wrong.
    let (ok, _, stderr) = perceiver(&["eval", "--checkpoint", "/nonexistent/run"]);
    assert!(!ok && stderr.contains("/nonexistent/run"), "{stderr}");
    // Fewer latents than mirrored bytes: every mirrored position is still scored, in passes.
    let (ok, stdout, stderr) = perceiver(&["eval", "--checkpoint", o, "--latents", "2", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["latents"], 2);
    let (ok, _, stderr) =
        perceiver(&["train", "--channels", "30", "--heads", "4", "--steps", "1", "--out", o]);
    assert!(!ok && stderr.contains("heads (4) must divide channels (30)"), "{stderr}");
    let empty = out.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, stderr) =
        perceiver(&["train", "--data", empty.to_str().unwrap(), "--steps", "1", "--out", o]);
    assert!(!ok && stderr.contains("empty.txt") && stderr.contains("empty"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--model perceiver-io` (masked bytes of a file) and `--model perceiver` (drawn shapes):
/// training, evaluation as JSON, and what does not apply to them refused by name.
#[test]
fn the_encoder_decoder_models_train_and_evaluate_from_the_command_line() {
    let out = std::env::temp_dir().join(format!("perceiver-cli-encoders-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let text = out.join("text.txt");
    std::fs::write(&text, "It was the best of times, it was the worst of times. ".repeat(200)).unwrap();
    let small = ["--channels", "32", "--heads", "2", "--layers", "1", "--latents", "8", "--batch", "4"];
    let common = ["--steps", "6", "--eval-every", "3", "--threads", "1"];
    let masked_run = out.join("masked");
    let masked = [
        &["train", "--model", "perceiver-io", "--data", text.to_str().unwrap(), "--context", "32"][..],
        &small,
        &common,
        &["--out", masked_run.to_str().unwrap()],
    ]
    .concat();
    let (ok, stdout, stderr) = perceiver(&masked);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("bits per masked byte") && stderr.contains("masked bytes of"),
        "{stdout}\n{stderr}"
    );
    let (ok, stdout, stderr) = perceiver(&["eval", "--checkpoint", masked_run.to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(v["bits_per_masked_byte"].as_f64().is_some() && v["accuracy"].as_f64().is_some(), "{v}");

    let shapes_run = out.join("shapes");
    let shapes = [
        &["train", "--model", "perceiver", "--context", "12"][..],
        &small,
        &common,
        &["--out", shapes_run.to_str().unwrap()],
    ]
    .concat();
    let (ok, stdout, stderr) = perceiver(&shapes);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("drawn shapes (12x12"), "{stderr}");
    let (ok, stdout, stderr) = perceiver(&["eval", "--checkpoint", shapes_run.to_str().unwrap(), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["tokens"], 32, "the held-out images: 8 batches of 4");

    // Generation is Perceiver AR's; options of other models are refused by name.
    let (ok, _, stderr) =
        perceiver(&["generate", "--checkpoint", shapes_run.to_str().unwrap(), "--prompt", "a"]);
    assert!(!ok && stderr.contains("generate needs a Perceiver AR checkpoint"), "{stderr}");
    let (ok, _, stderr) = perceiver(&["train", "--model", "perceiver", "--copy-bytes", "3"]);
    assert!(!ok && stderr.contains("--copy-bytes does not apply to --model perceiver"), "{stderr}");
    let (ok, _, stderr) = perceiver(&["train", "--model", "perceiver-io"]);
    assert!(!ok && stderr.contains("needs --data"), "{stderr}");
    let (ok, _, stderr) =
        perceiver(&["eval", "--checkpoint", shapes_run.to_str().unwrap(), "--latents", "3"]);
    assert!(!ok && stderr.contains("latents apply to Perceiver AR only"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--model sparse-transformer` and `--model dense-decoder` train on the copy task and
/// evaluate; options of other models are refused by name.
#[test]
fn the_decoders_train_and_evaluate_from_the_command_line() {
    let out = std::env::temp_dir().join(format!("perceiver-cli-decoders-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let small = ["--copy-bytes", "4", "--channels", "32", "--heads", "2", "--layers", "1", "--steps", "4"];
    for (model, extra) in [
        (
            "sparse-transformer",
            &["--pattern", "fixed", "--stride", "4", "--summary", "1", "--head-layout", "split"][..],
        ),
        ("dense-decoder", &[][..]),
    ] {
        let run = out.join(model);
        let args = [&["train", "--model", model, "--out", run.to_str().unwrap()][..], &small, extra].concat();
        let (ok, stdout, stderr) = perceiver(&args);
        assert!(ok, "{model}: {stdout}\n{stderr}");
        assert!(stderr.contains(&format!("copy task (k = 4), {model}")), "{stderr}");
        let (ok, stdout, stderr) = perceiver(&["eval", "--checkpoint", run.to_str().unwrap(), "--json"]);
        assert!(ok, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
        assert!(v["sequence_accuracy"].as_f64().is_some(), "{v}");
        // Generation through the decoder's cache, and without it: the same greedy tokens while
        // the window (BOS, 4 prompt bytes, 3 new) fits the context of 9.
        let generate = |cache: bool| {
            let mut args = vec!["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", "abcd"];
            args.extend(["--tokens", "3", "--temperature", "0", "--json"]);
            if !cache {
                args.push("--no-cache");
            }
            let (ok, stdout, stderr) = perceiver(&args);
            assert!(ok, "{model}: {stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).expect("JSON");
            v["output_ids"].clone()
        };
        assert_eq!(generate(true), generate(false), "{model}");
    }
    // Both runs in one chart, labelled by model.
    let svg = out.join("compare.svg");
    let (a, b) = (out.join("sparse-transformer"), out.join("dense-decoder"));
    let (ok, _, stderr) =
        perceiver(&["compare", a.to_str().unwrap(), b.to_str().unwrap(), "--out", svg.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.contains("sparse-transformer (") && drawn.contains("dense-decoder ("), "{drawn}");
    // Minutes to solve against k: four steps solve nothing, and the error says how far each got.
    let (ok, _, stderr) = perceiver(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--solve-times",
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("none of the runs solved the copy task"), "{stderr}");
    assert!(stderr.contains("sparse-transformer k = 4: not solved"), "{stderr}");
    let (ok, _, stderr) = perceiver(&["train", "--model", "dense-decoder", "--stride", "3"]);
    assert!(!ok && stderr.contains("--stride does not apply"), "{stderr}");
    let (ok, _, stderr) = perceiver(&["train", "--model", "sparse-transformer", "--summary", "2"]);
    assert!(!ok && stderr.contains("--summary applies to --pattern fixed only"), "{stderr}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bench_reports_json_on_its_last_line() {
    let (ok, stdout, stderr) = perceiver(&[
        "bench",
        "step-2k",
        "--context",
        "64",
        "--latents",
        "16",
        "--batch",
        "1",
        "--channels",
        "16",
        "--heads",
        "2",
        "--layers",
        "1",
        "--warmup",
        "0",
        "--steps",
        "2",
        "--json",
        "--threads",
        "1",
    ]);
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().expect("output");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON on the last line");
    for key in ["preset", "step_s", "gflops", "sgemm_gflops", "ratio", "peak_rss_bytes"] {
        assert!(v.get(key).is_some(), "{key} missing: {last}");
    }
    assert_eq!(v["preset"], "step-2k (custom)");
    assert!(v["step_s"].as_f64().unwrap() > 0.0 && v["ratio"].as_f64().unwrap() > 0.0, "{last}");
    // One ratio per timed step (each against the sgemm measured just before it); `ratio` is
    // their median.
    let ratios: Vec<f64> =
        v["ratios"].as_array().expect("ratios").iter().map(|r| r.as_f64().unwrap()).collect();
    assert_eq!(ratios.len(), 2, "{last}");
    assert!(ratios.contains(&v["ratio"].as_f64().unwrap()), "{last}");
    let (ok, _, stderr) = perceiver(&["bench", "huge"]);
    assert!(!ok && stderr.contains("unknown bench preset \"huge\""), "{stderr}");
    // The attention curves: five patterns, two contexts each, and their fitted exponents.
    let args = ["bench", "attention", "--context", "2048", "--channels", "16", "--steps", "1", "--json"];
    let (ok, stdout, stderr) = perceiver(&args);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).expect("JSON");
    assert_eq!(v["device"], "cpu", "{v}");
    let curves = v["curves"].as_array().expect("curves");
    assert_eq!(curves.len(), 5, "{v}");
    for c in curves {
        assert_eq!(c["points"].as_array().unwrap().len(), 2, "{c}");
        assert!(c["exponent"].as_f64().unwrap().is_finite(), "{c}");
    }
    let (ok, _, stderr) = perceiver(&["bench", "attention", "--context", "1024"]);
    assert!(!ok && stderr.contains("at least two contexts"), "{stderr}");
    // The step and generation benches run on the CPU: another device is refused, not ignored.
    // (Without the opencl feature, parsing the device already refuses it.)
    let (ok, _, stderr) = perceiver(&["--device", "opencl", "bench", "step-2k"]);
    assert!(!ok && stderr.contains("opencl"), "{stderr}");
}

/// The model card's usage, translated: a Hugging Face snapshot with its tokenizer, the library's
/// generation rule by default; greedy output equals the library's (the fixture's expected.json).
#[test]
fn generate_from_a_hugging_face_snapshot() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf-perceiver-ar-clm");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == "The king is" && c["num_latents"] == 2)
        .expect("the case");
    let d = dir.to_str().unwrap();
    let args = ["generate", "--checkpoint", d, "--prompt", "The king is", "--latents", "2", "--tokens", "16"];
    let (ok, stdout, stderr) = perceiver(&[&args[..], &["--temperature", "0", "--json"]].concat());
    assert!(ok, "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).expect("JSON last");
    assert_eq!(last["output_ids"], case["output_ids"]);
    assert_eq!(last["output_text"], case["output_text"]);
    // The text streams before the JSON line.
    assert!(stdout.starts_with(case["output_text"].as_str().unwrap()), "{stdout}");
    // Sampling as the model card does (top-k 20) runs, and the paper's rule is there too.
    let (ok, _, stderr) = perceiver(&[&args[..], &["--top-k", "20", "--seed", "3"]].concat());
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = perceiver(&[&args[..], &["--rule", "paper", "--temperature", "0"]].concat());
    assert!(ok, "{stderr}");
    // Evaluation of the snapshot on a text file, through its tokenizer.
    let text = std::env::temp_dir().join(format!("perceiver-cli-snapshot-{}.txt", std::process::id()));
    std::fs::write(&text, "ROMEO:\nI am here.\n\nFirst Citizen:\nWe are all resolved.\n".repeat(8)).unwrap();
    let (ok, stdout, stderr) =
        perceiver(&["eval", "--checkpoint", d, "--data", text.to_str().unwrap(), "--latents", "8", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(v["bits_per_token"].as_f64().is_some_and(|b| b > 0.0) && v["stride"] == 4, "{v}");
    let (ok, _, stderr) = perceiver(&["eval", "--checkpoint", d]);
    assert!(!ok && stderr.contains("--data"), "{stderr}");
    // The library's limits on the initial latents.
    let (ok, _, stderr) =
        perceiver(&["generate", "--checkpoint", d, "--prompt", "The king is", "--latents", "17"]);
    assert!(!ok && stderr.contains("--latents 17"), "{stderr}");
}
