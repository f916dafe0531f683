//! Hugging Face snapshots of the seed model card's format (`tests/fixtures/hf-perceiver-ar-clm*`,
//! copied from ../shared/fixtures): every case of their expected.json, made with the
//! perceiver-io library's `model.generate`, reproduced token for token and as text, from the
//! safetensors snapshot and from the `pytorch_model.bin` one; and snapshots with missing,
//! corrupted or unknown contents refused with errors naming the file.

use std::path::{Path, PathBuf};

use perceiver::generate::{generate, Prediction, Sampling};
use perceiver::snapshot;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

struct Case {
    prompt: String,
    prompt_ids: Vec<usize>,
    num_latents: usize,
    max_new_tokens: usize,
    output_ids: Vec<usize>,
    output_text: String,
}

fn cases(dir: &Path) -> Vec<Case> {
    let json: Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            prompt_ids: ids(&c["prompt_ids"]),
            num_latents: c["num_latents"].as_u64().unwrap() as usize,
            max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
            output_ids: ids(&c["output_ids"]),
            output_text: c["output_text"].as_str().unwrap().to_string(),
        })
        .collect()
}

fn reproduces_the_library(dir: &Path) {
    let snap = snapshot::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let tokenizer = snap.tokenizer.as_ref().expect("the fixture has a tokenizer");
    let cases = cases(dir);
    assert!(cases.len() >= 10);
    for c in &cases {
        let prompt_ids = tokenizer.encode(&c.prompt).unwrap();
        assert_eq!(prompt_ids, c.prompt_ids, "{:?}: prompt ids", c.prompt);
        let prediction = Prediction::Library { latents: c.num_latents };
        let out =
            generate(&snap.model, &prompt_ids, c.max_new_tokens, Sampling::GREEDY, 0, prediction, |_| {})
                .unwrap();
        assert_eq!(out, c.output_ids, "{:?} with {} latents: output ids", c.prompt, c.num_latents);
        assert_eq!(tokenizer.decode(&out).unwrap(), c.output_text, "{:?}: text", c.prompt);
    }
}

#[test]
fn a_safetensors_snapshot_generates_what_the_library_generates() {
    reproduces_the_library(&fixture("hf-perceiver-ar-clm"));
}

#[test]
fn a_pytorch_bin_snapshot_generates_what_the_library_generates() {
    reproduces_the_library(&fixture("hf-perceiver-ar-clm-bin"));
}

/// A scratch copy of the safetensors fixture that a test may damage.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perceiver-snapshot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(fixture("hf-perceiver-ar-clm").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The error of loading `dir`, which must fail.
fn refusal(dir: &Path) -> String {
    match snapshot::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_snapshots_are_refused_naming_the_file() {
    // No weights at all.
    let dir = scratch("no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = refusal(&dir);
    assert!(e.contains("model.safetensors") && e.contains("pytorch_model.bin"), "{e}");

    // Truncated weights.
    let dir = scratch("truncated");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(refusal(&dir).contains("model.safetensors"));

    // A model_config field this project does not know.
    let dir = scratch("unknown-field");
    let mut config: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    config["model_config"]["num_cross_attention_heads"] = 3.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = refusal(&dir);
    assert!(e.contains("config.json") && e.contains("num_cross_attention_heads"), "{e}");

    // A model_config value of the wrong type, and a missing one.
    let dir = scratch("bad-value");
    config["model_config"].as_object_mut().unwrap().remove("num_cross_attention_heads");
    config["model_config"]["num_heads"] = "four".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = refusal(&dir);
    assert!(e.contains("config.json") && e.contains("num_heads"), "{e}");
    config["model_config"].as_object_mut().unwrap().remove("num_heads");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert!(refusal(&dir).contains("num_heads"));

    // Not JSON, and no config at all.
    let dir = scratch("bad-json");
    std::fs::write(dir.join("config.json"), "{ model_config").unwrap();
    assert!(refusal(&dir).contains("config.json"));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(refusal(&dir).contains("config.json"));
    assert!(!snapshot::is_snapshot(&dir));

    // A corrupted tokenizer.
    let dir = scratch("tokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": 7}").unwrap();
    assert!(refusal(&dir).contains("tokenizer.json"));
}

/// A `pytorch_model.bin` whose pickle calls `os.system` is refused before anything runs, with
/// the file and the global named.
#[test]
fn a_pickle_that_calls_anything_is_refused() {
    use std::io::Write;
    let dir = scratch("pickle");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    // PROTO 2; GLOBAL os system; SHORT_BINUNICODE "echo pwned"; TUPLE1; REDUCE; STOP.
    let mut pickle = vec![0x80, 2];
    pickle.extend(b"cos\nsystem\n");
    pickle.push(0x8c);
    pickle.push(10);
    pickle.extend(b"echo pwned");
    pickle.extend([0x85, b'R', b'.']);
    let file = std::fs::File::create(dir.join("pytorch_model.bin")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&pickle).unwrap();
    zip.finish().unwrap();
    let e = refusal(&dir);
    assert!(e.contains("pytorch_model.bin") && e.contains("os.system"), "{e}");
}
