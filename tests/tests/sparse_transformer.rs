//! The Sparse Transformer as a model: finite differences on every parameter for each pattern
//! and head layout, the causal invariant (a token never changes the logits before it), and
//! training through the same `Trainer` as Perceiver AR: the copy task is learned and the
//! checkpoint reloads to the same held-out result.

use autograd::{GradCheck, Tape};
use nn::loss::{cross_entropy, CrossEntropy};
use nn::Ctx;
use perceiver::models::{Model, ModelConfig};
use perceiver::run_dir::RunDir;
use perceiver::sparse_transformer::{
    AttentionPattern, HeadLayout, SparseTransformer, SparseTransformerConfig,
};
use perceiver::train::{self, Trainer};
use perceiver::Input;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small(pattern: AttentionPattern, head_layout: HeadLayout) -> SparseTransformerConfig {
    SparseTransformerConfig {
        vocab_size: 7,
        max_seq_len: 12,
        max_latents: 12,
        channels: 8,
        heads: 2,
        layers: 2,
        widening: 2,
        pattern,
        head_layout,
        dropout: 0.0,
        init_scale: 0.3,
    }
}

const PATTERNS: [AttentionPattern; 3] = [
    AttentionPattern::Dense,
    AttentionPattern::Strided { stride: 3 },
    AttentionPattern::Fixed { block: 4, summary: 1 },
];

fn logits(model: &SparseTransformer, ids: &[usize], prefix_len: usize) -> Vec<f32> {
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let input = Input { ids, batch: 1, seq_len: ids.len(), prefix_len };
    model.forward(&ctx, &input).unwrap().value().to_vec().unwrap()
}

#[test]
fn finite_differences_on_every_parameter() {
    for pattern in PATTERNS {
        for layout in [HeadLayout::Merged, HeadLayout::Interleaved, HeadLayout::Split] {
            let model = SparseTransformer::new(small(pattern, layout), 3).unwrap();
            let ids = [1, 4, 2, 6, 0, 3, 5, 5, 1, 2, 3, 0, 6, 1, 2, 4, 4, 0, 1, 5];
            let targets: Vec<usize> = ids.iter().map(|&t| (t + 1) % 7).collect();
            let targets = [&targets[2..10], &targets[12..]].concat();
            let check = GradCheck { eps: 5e-3, atol: 2e-3, rtol: 2e-2, seed: 1 };
            let report = tests::check_every_parameter(&model.params, &check, |ctx| {
                let input = Input { ids: &ids, batch: 2, seq_len: 10, prefix_len: 2 };
                let logits = model.forward(ctx, &input)?;
                Ok(cross_entropy(&logits, &targets, CrossEntropy { ignore_index: None, z_loss: 0.0 })?)
            })
            .unwrap_or_else(|e| panic!("{pattern:?} {layout:?}: {e}"));
            assert_eq!(report.checked, model.params.numel());
        }
    }
}

proptest! {
    #![proptest_config(tests::proptest_config(24))]

    /// Changing token `t` never changes the logits of the positions before it.
    #[test]
    fn a_token_never_changes_the_logits_before_it(
        pattern in 0usize..3, layout in 0usize..3, ids in prop::collection::vec(0usize..7, 2..13),
        t in any::<prop::sample::Index>(), new in 0usize..7, seed in 0u64..4,
    ) {
        let layout = [HeadLayout::Merged, HeadLayout::Interleaved, HeadLayout::Split][layout];
        let model = SparseTransformer::new(small(PATTERNS[pattern], layout), seed).unwrap();
        let t = t.index(ids.len());
        let mut changed = ids.clone();
        changed[t] = new;
        let (before, after) = (logits(&model, &ids, 0), logits(&model, &changed, 0));
        prop_assert_eq!(&before[..t * 7], &after[..t * 7]);
    }
}

#[test]
fn learns_the_copy_task_and_reloads_from_its_checkpoint() {
    let out = std::env::temp_dir().join(format!("perceiver-sparse-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut preset = perceiver::presets::copy_task(6);
    (preset.channels, preset.heads, preset.self_attention_layers, preset.steps) = (64, 4, 1, 800);
    let pattern = AttentionPattern::Strided { stride: 4 };
    let config = preset.decoder_config(pattern, HeadLayout::Merged, None, 6, 7);
    let mut trainer = Trainer::new(config).unwrap();
    let result = train::run(&mut trainer, Some(&RunDir::create(&out, false).unwrap()), |_| {})
        .unwrap()
        .expect("evaluated");
    println!("sparse transformer, copy task: step {}, {result:?}", trainer.state.step);
    assert_eq!(result.sequence_accuracy, Some(1.0), "{result:?}");
    let (loaded, config) = train::load_model(&out).unwrap();
    assert!(matches!(&loaded, Model::SparseTransformer(_)));
    assert!(matches!(config.model, ModelConfig::SparseTransformer(_)));
    let batches = trainer.task.eval_batches(&config, None, None).unwrap();
    let again = train::evaluate(&loaded, train::Metric::Sequences, &batches).unwrap();
    assert_eq!((again.loss, again.accuracy), (result.loss, result.accuracy));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_configs_are_refused_by_name() {
    let mut c = small(AttentionPattern::Fixed { block: 4, summary: 5 }, HeadLayout::Merged);
    let e = SparseTransformer::new(c.clone(), 0).err().unwrap().to_string();
    assert!(e.contains("5 summary positions for blocks of 4"), "{e}");
    c.pattern = AttentionPattern::Strided { stride: 2 };
    c.head_layout = HeadLayout::Split;
    c.heads = 1;
    let e = SparseTransformer::new(c, 0).err().unwrap().to_string();
    assert!(e.contains("split heads need at least 2 heads"), "{e}");
}

#[test]
fn resumes_exactly_where_an_uninterrupted_run_would_be() {
    let out = std::env::temp_dir().join(format!("perceiver-sparse-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut preset = perceiver::presets::copy_task(6);
    (preset.channels, preset.heads, preset.self_attention_layers) = (32, 2, 1);
    let pattern = AttentionPattern::Fixed { block: 4, summary: 1 };
    let mut config = preset.decoder_config(pattern, HeadLayout::Split, None, 6, 2);
    config.stop_when_solved = false;
    if let ModelConfig::SparseTransformer(c) = &mut config.model {
        c.dropout = 0.1; // the dropout stream is part of what resumes
    }
    tests::assert_resumes_exactly(config, 10, 4, &out);
    std::fs::remove_dir_all(&out).unwrap();
}

/// Every cached step's logits equal the full forward pass over the window it stands for
/// (`tokens[start..]`), through refills when the window fills: 30 steps past a context of 12.
#[test]
fn cached_generation_equals_full_passes_through_refills() {
    for pattern in PATTERNS {
        for layout in [HeadLayout::Merged, HeadLayout::Split] {
            let model = SparseTransformer::new(small(pattern, layout), 4).unwrap();
            let mut generator = perceiver::generate::DecoderGenerator::new(&model).unwrap();
            let mut tokens = vec![1, 3, 5];
            let mut cached = generator.prompt(&tokens).unwrap();
            let mut starts = Vec::new();
            for step in 0..30 {
                let start = generator.start();
                starts.push(start);
                let full = logits(&model, &tokens[start..], tokens.len() - start - 1);
                let diff = cached.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(diff < 1e-5, "{pattern:?} {layout:?} step {step}: {diff}");
                let next = (step * 3 + 1) % 7;
                tokens.push(next);
                cached = generator.push(next).unwrap();
            }
            assert!(starts.iter().any(|&s| s > 0), "the window restarted: {starts:?}");
        }
    }
}
