//! Hostile inputs to the library: reference dumps that must not pass `verify`, run directories
//! that must not be shared or lose work, configs that must be refused by name, and random or
//! mutated bytes fed to every loader (checkpoints, dumps, Hugging Face snapshots), which must
//! give errors, never panics.
//!
//! The command-line side (option values, takeovers, locks across processes) is in
//! `perceiver/tests/hostile_cli.rs`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nn::checkpoint::{read_safetensors, write_tensor_file, TensorFile};
use perceiver::checkpoint;
use perceiver::run_dir::RunDir;
use perceiver::train::{self, TrainConfig, Trainer};
use perceiver::verify::{verify_dump, VerifyReport};
use perceiver::{PerceiverAr, PerceiverArConfig};
use proptest::prelude::*;
use tensor::Tensor;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/perceiver-io-clm")
}

/// A fresh, empty scratch directory.
fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("perceiver-hostile-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the reference dump with its case file edited.
fn dump_with_case(edit: impl FnOnce(&mut TensorFile)) -> PathBuf {
    let dir = scratch("dump");
    copy_dir(&fixture(), &dir);
    let mut case = read_safetensors(&dir.join("case.safetensors")).unwrap();
    edit(&mut case);
    write_tensor_file(&dir.join("case.safetensors"), &case).unwrap();
    dir
}

/// A copy of the reference dump with its config.json edited.
fn dump_with_config(edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = scratch("dump");
    copy_dir(&fixture(), &dir);
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

/// The report of a dump that must run but must not pass.
fn failing_report(dir: &Path) -> VerifyReport {
    let report = verify_dump(dir).unwrap_or_else(|e| panic!("verify should report, not fail: {e}"));
    assert!(!report.passed(), "a bad reference passed:\n{report}");
    std::fs::remove_dir_all(dir).unwrap();
    report
}

fn verify_error(dir: &Path) -> String {
    let e = match verify_dump(dir) {
        Ok(report) => panic!("expected an error, got a report:\n{report}"),
        Err(e) => e.to_string(),
    };
    std::fs::remove_dir_all(dir).unwrap();
    e
}

#[test]
fn verify_rejects_logits_of_any_other_shape() {
    let logits = read_safetensors(&fixture().join("case.safetensors")).unwrap().floats["logits"].clone();
    let values = logits.to_vec().unwrap();
    assert_eq!(logits.shape(), &[2, 8, 64]);
    let resized = |n: usize| values.iter().cycle().take(n).copied().collect::<Vec<f32>>();
    for shape in [vec![1, 8, 64], vec![10], vec![0], vec![3, 8, 64], vec![2, 4, 128]] {
        let t = Tensor::from_vec(resized(shape.iter().product()), &shape).unwrap();
        let report = failing_report(&dump_with_case(|case| {
            case.floats.insert("logits".into(), t);
        }));
        let problem = report.logits.problem.as_deref().unwrap_or_default();
        assert!(problem.contains(&format!("reference {shape:?}")), "{shape:?}: {report}");
        assert!(format!("{report}").contains("FAIL logits"), "{report}");
    }
}

#[test]
fn verify_treats_nan_as_a_failure() {
    let report = failing_report(&dump_with_case(|case| {
        let mut v = case.floats["logits"].to_vec().unwrap();
        v[5] = f32::NAN;
        case.floats.insert("logits".into(), Tensor::from_vec(v, &[2, 8, 64]).unwrap());
    }));
    assert!(report.logits.problem.as_deref().unwrap().contains("element 5 is NaN"), "{report}");

    let name = "grad.output_adapter.bias";
    let report = failing_report(&dump_with_case(|case| {
        let t = &case.floats[name];
        let mut v = t.to_vec().unwrap();
        v[0] = f32::NAN;
        let shape = t.shape().to_vec();
        case.floats.insert(name.into(), Tensor::from_vec(v, &shape).unwrap());
    }));
    let failed: Vec<&str> = report.failures().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(failed, [name], "{report}");

    let report = failing_report(&dump_with_case(|case| {
        case.floats.insert("loss".into(), Tensor::from_vec(vec![f32::NAN], &[1]).unwrap());
    }));
    assert!(!report.loss.passed(), "{report}");
}

#[test]
fn verify_requires_exactly_the_models_gradients() {
    // None at all: every one of the 36 parameters is reported missing.
    let report = failing_report(&dump_with_case(|case| case.floats.retain(|k, _| !k.starts_with("grad."))));
    assert_eq!(report.grads.len(), 36, "{report}");
    assert!(report.grads.iter().all(|g| g.problem.as_deref().unwrap().contains("no gradient")));

    // One missing.
    let report = failing_report(&dump_with_case(|case| {
        case.floats.remove("grad.output_adapter.bias");
    }));
    assert_eq!(report.failures().len(), 1, "{report}");
    assert_eq!(report.failures()[0].name, "output.bias");

    // One the model does not have.
    let report = failing_report(&dump_with_case(|case| {
        case.floats.insert("grad.decoder.extra.weight".into(), Tensor::zeros(&[3]));
    }));
    let failures = report.failures();
    assert_eq!(failures.len(), 1, "{report}");
    assert!(failures[0].problem.as_deref().unwrap().contains("no such parameter"), "{report}");

    // One of the wrong shape.
    let report = failing_report(&dump_with_case(|case| {
        let t = case.floats["grad.output_adapter.bias"].reshape(&[8, 8]).unwrap();
        case.floats.insert("grad.output_adapter.bias".into(), t);
    }));
    assert!(report.failures()[0].problem.as_deref().unwrap().contains("[8, 8]"), "{report}");
}

#[test]
fn verify_fails_cleanly_on_malformed_cases() {
    // A loss of shape [0] fails its comparison.
    let report = failing_report(&dump_with_case(|case| {
        case.floats.insert("loss".into(), Tensor::from_vec(vec![], &[0]).unwrap());
    }));
    assert!(report.loss.problem.as_deref().unwrap().contains("[0]"), "{report}");

    // 1-D input ids cannot be a batch.
    let e = verify_error(&dump_with_case(|case| {
        let ids = case.ints.get_mut("input_ids").unwrap();
        ids.1 = vec![ids.0.len()];
    }));
    assert!(e.contains("input_ids") && e.contains("[48]"), "{e}");

    // Labels of the wrong shape.
    let e = verify_error(&dump_with_case(|case| {
        let labels = case.ints.get_mut("labels").unwrap();
        labels.0.truncate(4);
        labels.1 = vec![4];
    }));
    assert!(e.contains("labels") && e.contains("[4]"), "{e}");

    // A prompt longer than the row it comes from.
    let e = verify_error(&dump_with_config(|v| v["case"]["gen_prompt"] = 1000.into()));
    assert!(e.contains("gen_prompt 1000"), "{e}");

    // A greedy reference of the wrong length fails without generating.
    let report = failing_report(&dump_with_case(|case| {
        let g = case.ints.get_mut("greedy").unwrap();
        g.0.truncate(7);
        g.1 = vec![7];
    }));
    assert!(report.greedy_problem.is_some() && report.greedy.is_empty(), "{report}");

    // A config with no heads.
    let e = verify_error(&dump_with_config(|v| v["config"]["num_heads"] = 0.into()));
    assert!(e.contains("heads must be at least 1"), "{e}");
}

#[test]
fn configs_are_refused_by_name_not_by_panic() {
    let e = PerceiverArConfig::perceiver_io(11, 12, 6, 16, 0, 1).validate().unwrap_err().to_string();
    assert!(e.contains("heads must be at least 1"), "{e}");
    let e = PerceiverArConfig::paper(11, 12, 6, 16, 0, 1).validate().unwrap_err().to_string();
    assert!(e.contains("heads must be at least 1"), "{e}");
    let mut c = PerceiverArConfig::perceiver_io(11, 12, 6, 16, 2, 1);
    c.init_scale = f32::NAN;
    assert!(c.validate().unwrap_err().to_string().contains("init_scale"));
    // A model far beyond any memory is refused before anything is allocated.
    let c = PerceiverArConfig::perceiver_io(256, 64, 8, 1 << 40, 1, 2);
    let e = PerceiverAr::new(c, 0).err().unwrap().to_string();
    assert!(e.contains("not enough memory") && e.contains(&format!("channels {}", 1u64 << 40)), "{e}");
    let mut t = small_config(3);
    t.batch_size = 1 << 40;
    let e = Trainer::new(t).err().unwrap().to_string();
    assert!(e.contains("not enough memory") && e.contains("batch 1099511627776"), "{e}");
}

proptest! {
    #![proptest_config(tests::proptest_config(32))]

    /// The memory checks count parameters without building the model: the count must be exact.
    #[test]
    fn parameter_count_is_exact(paper in any::<bool>(), options in any::<u16>(), heads in 1usize..4, layers in 0usize..3) {
        let channels = heads * 4;
        let mut c = tests::model_config(paper, 13, 9, 4, channels, heads, layers);
        c.mlp_bias = options & 1 != 0;
        c.cross_qkv_bias = options & 2 != 0;
        c.cross_out_bias = options & 4 != 0;
        c.self_qkv_bias = options & 8 != 0;
        c.self_out_bias = options & 16 != 0;
        c.output_norm = options & 32 != 0;
        c.tied_output = options & 64 != 0;
        c.output_bias = options & 128 != 0;
        c.cross_widening = 1 + (options as usize >> 8) % 3;
        c.self_widening = 1 + (options as usize >> 10) % 3;
        let model = PerceiverAr::new(c.clone(), 0).unwrap();
        prop_assert_eq!(c.parameter_count(), model.params.numel() as u128);
    }
}

/// A tiny copy-task run (k = 3, 16 channels) that evaluates and checkpoints every 5 steps.
fn small_config(steps: u64) -> TrainConfig {
    let mut config = tests::copy_run(3, 16, 2, 4, steps, 1);
    (config.eval_every, config.checkpoint_every, config.eval_batches) = (5, 5, 1);
    config.stop_when_solved = false;
    config
}

#[test]
fn one_writer_per_run_directory() {
    let out = scratch("lock");
    let held = RunDir::create(&out, false).unwrap();
    for e in [RunDir::create(&out, true).err().unwrap(), RunDir::resume(&out).err().unwrap()] {
        let e = e.to_string();
        assert!(
            e.contains("in use by another process") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
    }
    drop(held);
    RunDir::resume(&out).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_checkpoint_is_never_written_with_non_finite_parameters() {
    let out = scratch("nan");
    let mut trainer = Trainer::new(small_config(5)).unwrap();
    let run = RunDir::create(&out, false).unwrap();
    trainer.step().unwrap();
    let good = trainer.save(&run).unwrap();
    let name = trainer.model.params().iter().next().unwrap().name.clone();
    let shape = trainer.model.params().by_name(&name).unwrap().value.shape().to_vec();
    let mut values = vec![0.5; shape.iter().product()];
    values[1] = f32::INFINITY;
    trainer.model.params_mut().set_by_name(&name, Tensor::from_vec(values, &shape).unwrap()).unwrap();
    let e = trainer.save(&run).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("inf"), "{e}");
    assert_eq!(checkpoint::resolve(&out).unwrap(), (good, None), "latest still names the good one");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_resumed_run_logs_each_step_once_and_clears_what_a_kill_left() {
    let out = scratch("relog");
    let mut trainer = Trainer::new(small_config(15)).unwrap();
    train::run(&mut trainer, Some(&RunDir::create(&out, false).unwrap()), |_| {}).unwrap();
    // As if killed after logging step 15 but before its checkpoint landed: latest names step 10,
    // and a half-written checkpoint directory is left behind.
    std::fs::remove_dir_all(out.join("checkpoints/step-00000015")).unwrap();
    std::fs::write(out.join("latest"), "checkpoints/step-00000010").unwrap();
    let stale = out.join("checkpoints/.step-00000015.tmp-4242");
    std::fs::create_dir_all(&stale).unwrap();

    let run = RunDir::resume(&out).unwrap();
    assert!(!stale.exists(), "stale temporaries are removed at start");
    let mut resumed = Trainer::resume(&out).unwrap();
    run.forget_metrics_after(resumed.state.step).unwrap();
    train::run(&mut resumed, Some(&run), |_| {}).unwrap();
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut logged: Vec<(String, u64)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["kind"].as_str().unwrap().to_string(), v["step"].as_u64().expect("integer steps"))
        })
        .collect();
    let count = logged.len();
    logged.sort();
    logged.dedup();
    assert_eq!(logged.len(), count, "a step was logged twice:\n{text}");
    // Steps 11-15 were logged before the kill and again after resuming: once each in the end.
    assert!(logged.contains(&("train".into(), 10)) && logged.contains(&("eval".into(), 15)), "{text}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_bad_field_in_a_checkpoints_config_is_named_with_its_file() {
    let out = scratch("zero-batch");
    let mut trainer = Trainer::new(small_config(5)).unwrap();
    trainer.step().unwrap();
    let dir = trainer.save(&RunDir::create(&out, false).unwrap()).unwrap();
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["batch_size"] = 0.into();
    std::fs::write(&path, v.to_string()).unwrap();
    for e in [train::load_model(&out).err().unwrap(), Trainer::resume(&out).err().unwrap()] {
        let e = e.to_string();
        assert!(e.contains("config.json") && e.contains("batch_size must be at least 1"), "{e}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// A small complete checkpoint, made once per test process.
fn checkpoint_fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("fuzz-source");
        let mut trainer = Trainer::new(small_config(5)).unwrap();
        trainer.step().unwrap();
        trainer.save(&RunDir::create(&out, false).unwrap()).unwrap();
        out
    })
}

/// What happens to the bytes of one file.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replaced by random bytes.
    Random(Vec<u8>),
    /// Cut after this fraction of its length.
    Truncate(f64),
    /// These bytes (at fractions of the length) xor'd with a value.
    Flip(Vec<(f64, u8)>),
    /// Random bytes inserted at a fraction of the length.
    Insert(f64, Vec<u8>),
}

impl Mutation {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let at = |f: f64| ((bytes.len() as f64 * f) as usize).min(bytes.len());
        match self {
            Mutation::Random(r) => r.clone(),
            Mutation::Truncate(f) => bytes[..at(*f)].to_vec(),
            Mutation::Flip(flips) => {
                let mut out = bytes.to_vec();
                for &(f, x) in flips {
                    if let Some(b) = out.get_mut(at(f)) {
                        *b ^= x.max(1);
                    }
                }
                out
            }
            Mutation::Insert(f, extra) => [&bytes[..at(*f)], &extra[..], &bytes[at(*f)..]].concat(),
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Mutation::Random),
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..6).prop_map(Mutation::Flip),
        (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(f, b)| Mutation::Insert(f, b)),
    ]
}

/// The file a mutation hits, relative to a run directory or to a dump.
const RUN_FILES: [&str; 5] = [
    "latest",
    "checkpoints/step-00000001/model.safetensors",
    "checkpoints/step-00000001/optimizer.safetensors",
    "checkpoints/step-00000001/config.json",
    "checkpoints/step-00000001/state.json",
];
const DUMP_FILES: [&str; 3] = ["config.json", "model.safetensors", "case.safetensors"];
/// Files of a Hugging Face snapshot (the `pytorch_model.bin` one, whose pickle is parsed here).
const SNAPSHOT_FILES: [&str; 3] = ["config.json", "pytorch_model.bin", "tokenizer.json"];

proptest! {
    #![proptest_config(tests::proptest_config(48))]

    /// Every loader, given damaged bytes, returns (an error, or for a harmless change a value),
    /// and never panics. Bytes that are wholly random are always an error.
    #[test]
    fn damaged_files_give_errors_never_panics(target in 0usize..11, m in mutation()) {
        let dir = scratch("fuzz");
        let (runs, dumps) = (RUN_FILES.len(), RUN_FILES.len() + DUMP_FILES.len());
        let file = if target < runs {
            copy_dir(checkpoint_fixture(), &dir);
            RUN_FILES[target]
        } else if target < dumps {
            copy_dir(&fixture(), &dir);
            DUMP_FILES[target - runs]
        } else {
            copy_dir(&fixture().with_file_name("hf-perceiver-ar-clm-bin"), &dir);
            SNAPSHOT_FILES[target - dumps]
        };
        let path = dir.join(file);
        let original = std::fs::read(&path).unwrap();
        let damaged = m.apply(&original);
        std::fs::write(&path, &damaged).unwrap();
        let outcome: Result<(), String> = if target < runs {
            let loaded = train::load_model(&dir).map(|_| ()).map_err(|e| e.to_string());
            let resumed = Trainer::resume(&dir).map(|_| ()).map_err(|e| e.to_string());
            loaded.and(resumed)
        } else if target < dumps {
            verify_dump(&dir).map(|_| ()).map_err(|e| e.to_string())
        } else {
            perceiver::snapshot::load(&dir).map(|_| ()).map_err(|e| e.to_string())
        };
        // `latest` falls back to the one complete checkpoint, so damage there is harmless.
        if matches!(m, Mutation::Random(_)) && file != "latest" && damaged != original {
            prop_assert!(outcome.is_err(), "random bytes in {} were accepted", file);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
