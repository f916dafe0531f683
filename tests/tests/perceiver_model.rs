//! Perceiver AR as a whole: agreement with the perceiver-io reference dump, the causal invariant,
//! a finite-difference check of every parameter, and clear errors for bad configs and inputs.

use std::path::PathBuf;

use autograd::{GradCheck, Tape, Var};
use nn::attention::{causal_mask, AttendOptions, Attention, AttentionBiases};
use nn::loss::{cross_entropy, CrossEntropy};
use nn::mlp::Activation;
use nn::{Builder, Ctx, ParamStore};
use perceiver::config::{AbsolutePositions, CrossAttendDropout, LatentKeyNorm};
use perceiver::{Input, PerceiverAr, PerceiverArConfig};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tensor::Tensor;

/// The perceiver-io dump of ../shared/fixtures (the model card's model at toy size), copied
/// into the repository so the tests need nothing beside it.
fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/perceiver-io-clm")
}

#[test]
fn agrees_with_the_perceiver_io_reference_dump() {
    let report = perceiver::verify::verify_dump(&fixture()).expect("the dump loads");
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.logits.max_abs_error < 1e-5 && report.loss.max_abs_error < 1e-5);
    assert_eq!(report.grads.len(), 36, "every parameter's gradient is compared");
    assert!(report.grads.iter().all(|g| g.passed() && g.max_abs_error.is_finite()));
}

/// More dumps made with tools/make_reference_dump.py from other library configs: no absolute
/// positions with rotary over whole heads in every layer, output norm without bias, rotary in
/// the cross layer only, greedy decoding past the context window, three heads, no prefix.
#[test]
fn agrees_with_perceiver_io_across_configs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    // The perceiver-io dumps (the hf-* snapshots are tested in snapshot.rs).
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("perceiver-io-")))
        .collect();
    dumps.sort();
    assert!(dumps.len() >= 4, "expected the dumps in {}", root.display());
    for dir in dumps {
        let report =
            perceiver::verify::verify_dump(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(report.passed(), "{}:\n{report}", dir.display());
    }
}

/// Logits of a model on one batch, in inference mode.
fn logits(model: &PerceiverAr, ids: &[usize], batch: usize, prefix_len: usize) -> Vec<f32> {
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let input = Input { ids, batch, seq_len: ids.len() / batch, prefix_len };
    model.forward(&ctx, &input).unwrap().value().to_vec().unwrap()
}

/// A small config of either family with randomised options.
fn small_config(paper: bool, options: u32) -> PerceiverArConfig {
    let mut c = tests::model_config(paper, 11, 12, 6, 16, 2, 2);
    c.init_scale = 0.5;
    c.rotary_dims = [0, 2, 4, 8][(options & 3) as usize];
    c.rotary_self_layers = [None, Some(0), Some(1)][((options >> 2) % 3) as usize];
    c.rotary_cross = options & 16 == 0;
    c.absolute_positions =
        [AbsolutePositions::None, AbsolutePositions::Learned, AbsolutePositions::Sinusoidal]
            [((options >> 5) % 3) as usize];
    c.output_norm = options & 128 != 0;
    c.tied_output = options & 256 != 0;
    c.latent_key_norm = if options & 512 != 0 { LatentKeyNorm::Kv } else { LatentKeyNorm::Query };
    c
}

proptest! {
    #![proptest_config(tests::proptest_config(48))]

    /// Changing the token at position t never changes a logit at a position before t.
    #[test]
    fn changing_a_token_never_changes_earlier_logits(
        paper in any::<bool>(), options in any::<u32>(), seed in any::<u64>(),
        seq_len in 2usize..=12, prefix in 0usize..12, t in 0usize..12, batch in 1usize..3,
    ) {
        let config = small_config(paper, options);
        let model = PerceiverAr::new(config, seed).unwrap();
        let prefix_len = prefix % seq_len;
        let t = t % seq_len;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 1);
        let ids: Vec<usize> = (0..batch * seq_len).map(|_| rng.gen_range(0..11)).collect();
        let mut changed = ids.clone();
        for b in 0..batch {
            changed[b * seq_len + t] = (ids[b * seq_len + t] + 1 + rng.gen_range(0..10)) % 11;
        }
        let (a, b) = (logits(&model, &ids, batch, prefix_len), logits(&model, &changed, batch, prefix_len));
        let latents = seq_len - prefix_len;
        let vocab = 11;
        for bi in 0..batch {
            for i in 0..latents {
                // Latent i sits at position prefix_len + i and sees tokens up to there.
                let row = |v: &[f32]| v[(bi * latents + i) * vocab..][..vocab].to_vec();
                if prefix_len + i < t {
                    prop_assert_eq!(row(&a), row(&b), "latent {} changed by token {}", i, t);
                }
            }
        }
        // And the change is visible where it may be (the check above is not vacuous).
        if t >= prefix_len {
            let i = t - prefix_len;
            let at = |v: &[f32]| v[i * vocab..][..vocab].to_vec();
            prop_assert_ne!(at(&a), at(&b));
        }
    }

    /// The cross layer alone, for every prefix length: output i only depends on keys 0..=P+i.
    #[test]
    fn cross_attention_is_causal_for_every_prefix_length(seed in any::<u64>(), n in 1usize..10) {
        let mut store = ParamStore::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let attention = Attention::new(&mut Builder::new(&mut store, &mut rng), 8, 8, 2, AttentionBiases { qkv: true, out: true }, 0.5).unwrap();
        let x = Tensor::randn(&[1, n, 8], 1.0, &mut rng);
        for p in 0..n {
            for t in 0..n {
                let mut data = x.to_vec().unwrap();
                for c in 0..8 { data[t * 8 + c] += 1.0; }
                let y = Tensor::from_vec(data, &[1, n, 8]).unwrap();
                let run = |input: &Tensor| {
                    let tape = Tape::inference();
                    let mut r = ChaCha8Rng::seed_from_u64(0);
                    let ctx = Ctx::new(&tape, &store, false, &mut r);
                    let kv = Var::constant(input.clone());
                    let q = kv.narrow(1, p, n - p).unwrap();
                    let mask = causal_mask(n - p, n).unwrap();
                    attention.forward(&ctx, &q, &kv, &AttendOptions { mask: Some(&mask), ..Default::default() }).unwrap().value().to_vec().unwrap()
                };
                let (a, b) = (run(&x), run(&y));
                for i in 0..n - p {
                    if p + i < t {
                        prop_assert_eq!(&a[i * 8..(i + 1) * 8], &b[i * 8..(i + 1) * 8], "prefix {}: query {} saw key {}", p, i, t);
                    }
                }
            }
        }
    }
}

/// Finite differences on every element of every parameter of a small model, for both variants.
#[test]
fn whole_model_gradients_match_finite_differences() {
    for paper in [false, true] {
        let mut config = tests::model_config(paper, 7, 6, 3, 8, 2, 1);
        config.init_scale = 0.3;
        config.rotary_dims = 2;
        config.output_norm = true;
        // Finite differences need a smooth function: GELU everywhere.
        config.activation = Activation::Gelu;
        let model = PerceiverAr::new(config, 5).unwrap();
        let ids = [1, 4, 2, 6, 0, 3, 5, 5, 1, 2, 3, 4];
        let targets = [2, 6, 0, 2, 3, 4];
        let check = GradCheck { eps: 1e-2, atol: 2e-3, rtol: 2e-2, seed: 1 };
        let report = tests::check_every_parameter(&model.params, &check, |ctx| {
            let input = Input { ids: &ids, batch: 2, seq_len: 6, prefix_len: 3 };
            let logits = model.forward(ctx, &input)?;
            Ok(cross_entropy(&logits, &targets, CrossEntropy { ignore_index: None, z_loss: 1e-3 })?)
        })
        .unwrap_or_else(|e| panic!("paper={paper}: {e}"));
        assert!(
            report.checked == model.params.numel(),
            "checked {} of {}",
            report.checked,
            model.params.numel()
        );
    }
}

#[test]
fn bad_configs_and_inputs_are_named() {
    let mut c = PerceiverArConfig::perceiver_io(11, 12, 6, 16, 3, 1);
    let e = PerceiverAr::new(c.clone(), 0).err().unwrap().to_string();
    assert!(e.contains("heads (3) must divide channels (16)"), "{e}");
    c.heads = 2;
    c.max_latents = 13;
    let e = PerceiverAr::new(c.clone(), 0).err().unwrap().to_string();
    assert!(e.contains("max_latents (13)") && e.contains("max_seq_len (12)"), "{e}");
    c.max_latents = 6;
    c.cross_attend_dropout_kind = CrossAttendDropout::Bernoulli;
    let model = PerceiverAr::new(c, 0).unwrap();
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let e = model
        .forward(&ctx, &Input { ids: &[1; 13], batch: 1, seq_len: 13, prefix_len: 2 })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("exceeds max_seq_len 12"), "{e}");
    let e = model
        .forward(&ctx, &Input { ids: &[1; 4], batch: 1, seq_len: 4, prefix_len: 4 })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("leaves no latents"), "{e}");
    let e = model
        .forward(&ctx, &Input { ids: &[11; 4], batch: 1, seq_len: 4, prefix_len: 1 })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token id 11"), "{e}");
}

#[test]
fn a_truncated_or_mismatched_dump_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("perceiver-bad-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "case.safetensors"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    // Truncate the weights.
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = perceiver::verify::verify_dump(&dir).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
    // A tensor of the wrong shape.
    let mut weights = nn::checkpoint::read_safetensors(&fixture().join("model.safetensors")).unwrap();
    weights.floats.insert("output_adapter.bias".into(), Tensor::zeros(&[3]));
    let named: Vec<(String, Tensor)> = weights.floats.into_iter().collect();
    nn::checkpoint::write_safetensors(&dir.join("model.safetensors"), &named, Default::default()).unwrap();
    let e = perceiver::verify::verify_dump(&dir).err().unwrap().to_string();
    assert!(e.contains("output_adapter.bias") && e.contains("[3]"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
