//! Training the encoder-decoder family end to end, through the same `Trainer`, checkpoints and
//! evaluation as Perceiver AR: Perceiver IO learns to read masked bytes from their context, the
//! Perceiver learns the drawn shapes far above chance, both resume bit for bit, and a task
//! given the wrong kind of model is refused by name.

use std::path::PathBuf;

use perceiver::models::{Model, ModelConfig};
use perceiver::presets;
use perceiver::run_dir::RunDir;
use perceiver::train::{self, Metric, TaskConfig, TrainConfig, Trainer};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perceiver-encoder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A text of runs: 200 copies of one random letter, then 200 of another, and so on. A masked
/// byte is (almost always) the byte around it, which only a model that reads its context can
/// know: the letters' frequencies alone give about log2(26) = 4.7 bits.
fn runs_text() -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    (0..300).flat_map(|_| [rng.gen_range(b'a'..=b'z'); 200]).collect()
}

fn text_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("runs.txt");
    std::fs::write(&path, runs_text()).unwrap();
    path
}

/// A small masked-bytes run: crops of 64 bytes, 16 latents of 64 channels.
fn small_masked(data: PathBuf, steps: u64) -> TrainConfig {
    let mut p = presets::masked_text();
    (p.context, p.latents, p.channels, p.heads, p.self_attention_layers) = (64, 16, 64, 4, 2);
    (p.batch_size, p.steps, p.minutes, p.eval_every, p.eval_batches) = (16, steps, None, steps, 4);
    (p.peak_lr, p.warmup) = (2e-3, 20);
    p.masked_text_config(data, 0.15, 5)
}

/// A small shapes run: 12×12 images, 16 latents of 64 channels.
fn small_shapes(steps: u64) -> TrainConfig {
    let mut p = presets::shapes();
    (p.context, p.latents, p.channels, p.heads, p.self_attention_layers) = (12, 16, 64, 4, 1);
    (p.batch_size, p.steps, p.minutes, p.eval_every, p.eval_batches) = (32, steps, None, steps, 8);
    (p.peak_lr, p.warmup) = (2e-3, 20);
    p.shapes_config(0.2, 3)
}

/// Entropy in bits of the byte frequencies of `bytes`: what predicting a masked byte without
/// looking at its neighbours can reach at best.
fn unigram_bits(bytes: &[u8]) -> f32 {
    let mut counts = [0usize; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    -counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n * (c as f64 / n).log2()).sum::<f64>() as f32
}

#[test]
fn perceiver_io_learns_to_read_a_masked_byte_from_its_context() {
    let out = scratch("masked");
    let data = text_file(&out);
    let mut trainer = Trainer::new(small_masked(data, 200)).unwrap();
    assert_eq!(trainer.task.metric(), Metric::MaskedBytes);
    let result = train::run(&mut trainer, Some(&RunDir::create(&out.join("run"), false).unwrap()), |_| {})
        .unwrap()
        .expect("evaluated");
    let baseline = unigram_bits(&runs_text());
    println!("masked bytes: {result:?}; byte frequencies alone: {baseline:.3} bits");
    let bits = result.bits_per_masked_byte.expect("bits per masked byte");
    assert!(result.bits_per_byte.is_none() && result.sequence_accuracy.is_none());
    assert!(bits < baseline / 3.0, "{bits} bits per masked byte against {baseline} from frequencies");
    assert!(result.accuracy > 0.75, "held-out accuracy {}", result.accuracy);
    // Every evaluation scores the same held-out masks.
    let again = trainer.task.eval_batches(&trainer.config, None, None).unwrap();
    let first = trainer.task.eval_batches(&trainer.config, None, None).unwrap();
    assert_eq!(again, first);
    assert!(first.iter().all(|b| b.prefix_len == 0 && b.seq_len == 64));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_perceiver_learns_the_drawn_shapes_far_above_chance() {
    let out = scratch("shapes");
    let mut trainer = Trainer::new(small_shapes(400)).unwrap();
    let result = train::run(&mut trainer, Some(&RunDir::create(&out, false).unwrap()), |_| {})
        .unwrap()
        .expect("evaluated");
    println!("shapes: {result:?}");
    assert_eq!(result.tokens, 8 * 32, "one target per held-out image");
    // Chance is 1/8.
    assert!(result.accuracy > 0.4, "held-out accuracy {}", result.accuracy);
    // The checkpoint loads into the same model.
    let (loaded, config) = train::load_model(&out).unwrap();
    assert_eq!(config, trainer.config);
    assert!(matches!(loaded, Model::PerceiverIo(_)));
    let batches = trainer.task.eval_batches(&config, None, None).unwrap();
    let reloaded = train::evaluate(&loaded, Metric::Classes, &batches).unwrap();
    assert_eq!(reloaded.accuracy, result.accuracy);
    assert_eq!(reloaded.loss, result.loss);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn both_resume_exactly_where_an_uninterrupted_run_would_be() {
    let dir = scratch("resume");
    let data = text_file(&dir);
    for (name, mut config) in [("masked", small_masked(data, 12)), ("shapes", small_shapes(12))] {
        if let ModelConfig::PerceiverIo(c) = &mut config.model {
            c.dropout = 0.1; // the dropout stream is part of what resumes
        }
        tests::assert_resumes_exactly(config, 12, 5, &dir.join(name));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_task_given_the_wrong_model_is_refused_by_name() {
    let err = |c: TrainConfig| Trainer::new(c).err().expect("refused").to_string();
    // The copy task with a Perceiver IO model.
    let mut config = small_shapes(1);
    config.task = TaskConfig::Copy { k: 4 };
    let e = err(config);
    assert!(e.contains("copy task") && e.contains("perceiver model"), "{e}");
    // Shapes of another size than the model reads.
    let mut config = small_shapes(1);
    config.task = TaskConfig::Shapes { size: 16, noise: 0.1 };
    let e = err(config);
    assert!(e.contains("[16, 16, 1]"), "{e}");
    // Masked bytes need a vocabulary with the mask token.
    let dir = scratch("wrong");
    let mut config = small_masked(text_file(&dir), 1);
    if let ModelConfig::PerceiverIo(c) = &mut config.model {
        c.input =
            perceiver::perceiver_io::InputConfig::Tokens { vocab_size: 256, max_seq_len: 64, channels: 64 };
    }
    let e = err(config);
    assert!(e.contains("vocabulary of 257"), "{e}");
    // A Perceiver AR option asked of another model.
    let mut config = small_shapes(1);
    let e = config.model.perceiver_ar_mut("--positions").err().unwrap().to_string();
    assert!(e.contains("--positions") && e.contains("perceiver"), "{e}");
    // A masking rate out of range.
    let mut config = small_masked(text_file(&dir), 1);
    if let TaskConfig::MaskedText { rate, .. } = &mut config.task {
        *rate = 1.5;
    }
    assert!(err(config).contains("masking rate"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Checkpoints from before the model families hold a bare Perceiver AR config; they still
/// load, and new ones name their family.
#[test]
fn model_configs_name_their_family_and_old_ones_still_read() {
    let config = tests::copy_run(4, 32, 2, 8, 1, 0);
    let tagged = serde_json::to_value(&config).unwrap();
    assert!(tagged["model"]["perceiver_ar"].is_object(), "{}", tagged["model"]);
    let mut legacy = tagged.clone();
    legacy["model"] = tagged["model"]["perceiver_ar"].clone();
    for json in [tagged, legacy] {
        let back: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
    }
    let shapes = small_shapes(1);
    let back: TrainConfig = serde_json::from_value(serde_json::to_value(&shapes).unwrap()).unwrap();
    assert_eq!(back, shapes);
    let mut unknown = serde_json::to_value(&shapes).unwrap();
    unknown["model"] = serde_json::json!({ "transformer": {} });
    let e = serde_json::from_value::<TrainConfig>(unknown).err().unwrap().to_string();
    assert!(e.contains("unknown model family `transformer`"), "{e}");
}
