//! Training end to end: the copy task is learned, checkpoints round-trip, a resumed run is
//! bit-identical to an uninterrupted one, an interrupted write never loses the previous
//! checkpoint, and malformed inputs are named in their errors.

use std::path::{Path, PathBuf};

use autograd::Tape;
use nn::Ctx;
use perceiver::checkpoint;
use perceiver::data::copy::CopyTask;
use perceiver::models::Model;
use perceiver::run_dir::RunDir;
use perceiver::train::{self, TaskConfig, TrainConfig, Trainer};
use perceiver::PerceiverArConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::Tensor;

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perceiver-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Perceiver AR model of a run's config.
fn ar(config: &mut TrainConfig) -> &mut PerceiverArConfig {
    config.model.perceiver_ar_mut("these tests").unwrap()
}

/// A small copy-task run: k = 6 bytes mirrored, a 64-channel model.
fn small_copy_config(steps: u64, seed: u64) -> TrainConfig {
    tests::copy_run(6, 64, 4, 32, steps, seed)
}

#[test]
fn a_small_model_learns_the_copy_task_to_100_percent() {
    let out = scratch("copy");
    let mut trainer = Trainer::new(small_copy_config(800, 7)).unwrap();
    let result = train::run(&mut trainer, Some(&RunDir::create(&out, false).unwrap()), |_| {})
        .unwrap()
        .expect("evaluated");
    println!("copy task: step {}, held out {result:?}", trainer.state.step);
    assert_eq!(result.accuracy, 1.0, "held-out token accuracy {result:?}");
    assert_eq!(result.sequence_accuracy, Some(1.0));
    assert!(trainer.state.step < 800, "solved before the step limit (stopped at {})", trainer.state.step);
    // The held-out stream is separate from training: another trainer sees the same held-out set.
    let again = Trainer::new(small_copy_config(800, 7)).unwrap();
    assert_eq!(
        again.task.eval_batches(&again.config, Some(7), None).unwrap(),
        trainer.task.eval_batches(&trainer.config, Some(7), None).unwrap()
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_paper_variant_learns_the_copy_task_too() {
    // Squared ReLU, biases, sinusoidal positions (token embeddings scaled by √C), untied output.
    let out = scratch("copy-paper");
    let mut config = small_copy_config(1500, 7);
    let m = ar(&mut config);
    *m = tests::model_config(true, m.vocab_size, m.max_seq_len, m.max_latents, 64, 4, 1);
    m.cross_attend_dropout = 0.0;
    let mut trainer = Trainer::new(config).unwrap();
    let result = train::run(&mut trainer, Some(&RunDir::create(&out, false).unwrap()), |_| {})
        .unwrap()
        .expect("evaluated");
    println!("paper variant: step {}, held out {result:?}", trainer.state.step);
    assert_eq!(result.sequence_accuracy, Some(1.0), "held out {result:?} at step {}", trainer.state.step);
    std::fs::remove_dir_all(&out).unwrap();
}

/// The paper's copy setting: fewer latents (3) than mirrored bytes (6). Training cuts each
/// batch at a random point of the mirror; held-out evaluation scores every mirrored position.
#[test]
fn fewer_latents_than_mirrored_bytes_still_learn_the_copy_task() {
    let out = scratch("copy-few-latents");
    let mut config = small_copy_config(1500, 7);
    ar(&mut config).max_latents = 3;
    let mut trainer = Trainer::new(config).unwrap();
    let result = train::run(&mut trainer, Some(&RunDir::create(&out, false).unwrap()), |_| {})
        .unwrap()
        .expect("evaluated");
    println!("3 latents: step {}, held out {result:?}", trainer.state.step);
    // 4 batches of 32 sequences, each with 6 mirrored bytes and the end marker scored once.
    assert_eq!(result.tokens, 4 * 32 * 7);
    assert_eq!(result.sequence_accuracy, Some(1.0), "held out {result:?} at step {}", trainer.state.step);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn held_out_copy_passes_score_every_mirrored_position_once() {
    use perceiver::data::IGNORE;
    let task = CopyTask { k: 10 };
    for latents in [1, 3, 4, 10, 11] {
        let batches = task.held_out(2, 3, latents, 5);
        let mut scored = std::collections::HashMap::new();
        for b in &batches {
            assert_eq!(b.latents(), latents.min(b.seq_len));
            let ids = b.sequences.clone().unwrap_or_else(|| (0..b.batch).collect());
            for (row, &seq) in ids.iter().enumerate() {
                for (j, &t) in b.targets[row * b.latents()..(row + 1) * b.latents()].iter().enumerate() {
                    if t != IGNORE {
                        let pos = b.prefix_len + j;
                        assert!(pos >= 10, "position {pos} before the mirror scored");
                        *scored.entry((seq, pos)).or_insert(0) += 1;
                    }
                }
            }
        }
        if latents < 11 {
            // Six sequences, positions 10..=20 (the mirror and the end marker), once each.
            assert_eq!(scored.len(), 6 * 11, "latents {latents}");
            assert!(scored.values().all(|&c| c == 1), "latents {latents}");
        }
    }
}

fn logits(model: &Model, ids: &[usize]) -> Vec<f32> {
    let Model::PerceiverAr(model) = model else { panic!("a Perceiver AR model") };
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let input = perceiver::Input { ids, batch: 1, seq_len: ids.len(), prefix_len: 6 };
    model.forward(&ctx, &input).unwrap().value().to_vec().unwrap()
}

#[test]
fn a_checkpoint_round_trip_gives_the_same_logits() {
    let out = scratch("roundtrip");
    let mut trainer = Trainer::new(small_copy_config(5, 1)).unwrap();
    for _ in 0..5 {
        trainer.step().unwrap();
    }
    let dir = trainer.save(&RunDir::create(&out, false).unwrap()).unwrap();
    let (loaded, config) = train::load_model(&out).unwrap();
    assert_eq!(config, trainer.config);
    assert_eq!(checkpoint::resolve(&out).unwrap(), (dir, None));
    let ids = [256, 1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1];
    assert_eq!(logits(&loaded, &ids), logits(&trainer.model, &ids));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn resuming_matches_an_uninterrupted_run_exactly() {
    let out = scratch("resume");
    let mut config = small_copy_config(24, 3);
    config.stop_when_solved = false;
    ar(&mut config).cross_attend_dropout = 0.3; // exercises the dropout random stream too
    ar(&mut config).attention_dropout = 0.1;
    tests::assert_resumes_exactly(config, 24, 10, &out);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn an_interrupted_checkpoint_write_keeps_the_previous_one() {
    let out = scratch("crash");
    let mut trainer = Trainer::new(small_copy_config(5, 1)).unwrap();
    trainer.step().unwrap();
    let run = RunDir::create(&out, false).unwrap();
    let good = trainer.save(&run).unwrap();
    // A crash while writing the next checkpoint leaves a partial temporary directory behind.
    drop(run);
    let partial = out.join("checkpoints/.step-00000002.tmp-99999");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"\x10\x00\x00").unwrap();
    assert_eq!(checkpoint::resolve(&out).unwrap(), (good, None));
    let loaded = checkpoint::load(&out).unwrap();
    assert_eq!(loaded.state.step, 1);
    // The run resumes (which clears the leftovers) and its next save succeeds.
    let run = RunDir::resume(&out).unwrap();
    trainer.step().unwrap();
    let next = trainer.save(&run).unwrap();
    assert_eq!(checkpoint::load(&out).unwrap().state.step, 2);
    assert!(next.exists() && !partial.exists());
    std::fs::remove_dir_all(&out).unwrap();
}

fn err_of<T>(r: perceiver::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_inputs_are_named() {
    let out = scratch("malformed");
    let mut trainer = Trainer::new(small_copy_config(5, 1)).unwrap();
    trainer.step().unwrap();
    let dir = trainer.save(&RunDir::create(&out, false).unwrap()).unwrap();

    // A truncated weights file.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_of(train::load_model(&out));
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");

    // A tensor of the wrong shape.
    let mut tensors: Vec<(String, Tensor)> =
        trainer.model.params().iter().map(|p| (p.name.clone(), p.value.clone())).collect();
    tensors[0].1 = Tensor::zeros(&[2, 2]);
    let name = tensors[0].0.clone();
    nn::checkpoint::write_safetensors(&weights, &tensors, Default::default()).unwrap();
    let e = err_of(train::load_model(&out));
    assert!(e.contains(&name) && e.contains("[2, 2]"), "{e}");

    // A config whose heads do not divide the channels, and latents beyond the context.
    let mut bad = small_copy_config(5, 1);
    ar(&mut bad).heads = 5;
    assert!(err_of(Trainer::new(bad)).contains("heads (5) must divide channels (64)"));
    let mut bad = small_copy_config(5, 1);
    let m = ar(&mut bad);
    m.max_latents = m.max_seq_len + 1;
    assert!(err_of(Trainer::new(bad)).contains("max_latents"));

    // An empty data file, and one shorter than a context.
    let empty = out.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let mut text = small_copy_config(5, 1);
    text.task = TaskConfig::Text { path: empty.clone(), valid_fraction: 0.1, min_len: 4 };
    ar(&mut text).vocab_size = 256;
    let e = err_of(Trainer::new(text.clone()));
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");
    let short = out.join("short.txt");
    std::fs::write(&short, b"to be or not").unwrap();
    text.task = TaskConfig::Text { path: short, valid_fraction: 0.1, min_len: 4 };
    let e = err_of(Trainer::new(text));
    assert!(e.contains("short.txt") && e.contains("too few"), "{e}");

    // A path that is neither a checkpoint nor a run.
    let e = err_of(train::load_model(Path::new("/nonexistent/run")));
    assert!(e.contains("/nonexistent/run"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn saving_a_step_twice_keeps_the_first_copy_until_latest_moves() {
    let out = scratch("resave");
    let mut trainer = Trainer::new(small_copy_config(5, 1)).unwrap();
    trainer.step().unwrap();
    let run = RunDir::create(&out, false).unwrap();
    let first = trainer.save(&run).unwrap();
    let second = trainer.save(&run).unwrap();
    assert_ne!(first, second);
    assert_eq!(checkpoint::resolve(&out).unwrap(), (second, None));
    assert!(first.exists(), "the copy latest named was not deleted before latest moved");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn held_out_windows_score_every_byte_after_the_first_prefix_once() {
    use perceiver::data::text::TextData;
    use perceiver::data::IGNORE;
    // 250 distinct bytes, so a window can be located by its ids.
    let data: Vec<u8> = (0..250u32).map(|i| (i * 7 % 251) as u8).collect();
    // Any stride up to the latents: each byte after the first prefix scored exactly once, and
    // with a stride S every window after the first scores only its last S latents.
    for stride in [16, 8, 5, 1] {
        let windows = TextData::eval_windows(&data, 40, 16, stride, usize::MAX);
        let mut seen = vec![0; data.len()];
        for (w_index, w) in windows.iter().enumerate() {
            // Recover the window's start from its ids, then mark the bytes its latents score.
            let start = (0..=data.len() - 41)
                .find(|&s| data[s..s + 40].iter().map(|&b| b as usize).eq(w.ids.iter().copied()))
                .unwrap();
            let mut scored = 0;
            for (j, &t) in w.targets.iter().enumerate() {
                if t != IGNORE {
                    let byte = start + 40 - 16 + 1 + j;
                    assert_eq!(t, data[byte] as usize);
                    seen[byte] += 1;
                    scored += 1;
                }
            }
            if w_index > 0 && w_index + 1 < windows.len() {
                assert_eq!(scored, stride, "stride {stride}, window {w_index}");
            }
        }
        assert!(
            seen[..25].iter().all(|&c| c == 0) && seen[25..].iter().all(|&c| c == 1),
            "stride {stride}: {seen:?}"
        );
    }
    // No held-out part at all is refused up front.
    let file = std::env::temp_dir().join(format!("perceiver-vf-{}.txt", std::process::id()));
    std::fs::write(&file, vec![b'a'; 1000]).unwrap();
    let e = TextData::load(&file, 0.0, 10).err().unwrap().to_string();
    assert!(e.contains("held-out fraction"), "{e}");
    std::fs::remove_file(&file).unwrap();
}
