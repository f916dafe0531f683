//! Cached generation (appendix E.3 of the paper) against full forward passes.
//!
//! Each prediction of [`CachedGenerator`] names the full forward pass it must equal: the window
//! `tokens[split.start..]` of the sequence so far, its first `split.prefix_len` positions as
//! prefix and the rest as latents, the logits read at the last latent. That pass is fixed at
//! each refill (start and prefix; the refill's latents are half the buffer) and gains one
//! latent per cached step. These tests run many steps through several refills, with the window
//! sliding past `max_seq_len`, for both model variants, and compare every step's logits with
//! that pass within 1e-5.

use autograd::Tape;
use nn::Ctx;
use perceiver::generate::{full_pass_logits, generate, CachedGenerator, Prediction, Sampling, Split};
use perceiver::model::KvCache;
use perceiver::{Input, PerceiverAr};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VOCAB: usize = 19;

fn model(paper: bool, context: usize, latents: usize, seed: u64) -> PerceiverAr {
    let mut config = tests::model_config(paper, VOCAB, context, latents, 16, 2, 2);
    config.init_scale = 0.3; // logits far from uniform, so a wrong key shows
    PerceiverAr::new(config, seed).unwrap()
}

/// Logits of the last latent of the full forward pass that `split` names.
fn full_pass(model: &PerceiverAr, tokens: &[usize], split: Split) -> Vec<f32> {
    full_pass_logits(model, tokens, split).unwrap()
}

/// The largest difference between `a` and the reference `b`, relative to `b`'s largest
/// magnitude when that is above 1 (f32 rounding grows with the values rounded: the cached and
/// full passes sum in different orders).
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

/// What a run of cached generation did.
#[derive(Default, Debug)]
struct Run {
    refills: usize,
    cached_steps: usize,
    slid: bool,
    worst: f32,
}

/// Prompts with `prompt_len` random tokens, pushes `steps` more, and checks every prediction
/// against its full pass; also checks the buffer's rule (latents never above `width`, the
/// window never above the context, refills exactly when the buffer is full or the window
/// would overflow).
fn run(model: &PerceiverAr, width: usize, prompt_len: usize, steps: usize, seed: u64) -> Run {
    let context = model.config.max_seq_len;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tokens: Vec<usize> = (0..prompt_len).map(|_| rng.gen_range(0..VOCAB)).collect();
    let mut generator = CachedGenerator::new(model, width).unwrap();
    let mut step = generator.prompt(&tokens).unwrap();
    let mut r = Run::default();
    let mut latents = 0;
    for i in 0..=steps {
        let Split { start, prefix_len } = step.split;
        let window = tokens.len() - start;
        assert!(window <= context, "step {i}: window {window} over the context {context}");
        let step_latents = window - prefix_len;
        assert!(step_latents <= width, "step {i}: {step_latents} latents in a buffer of {width}");
        if step.refilled {
            assert_eq!(
                step_latents,
                (width / 2).max(1).min(tokens.len()),
                "step {i}: a refill holds half the buffer"
            );
            r.refills += 1;
            r.slid |= start > 0;
        } else {
            assert_eq!(step_latents, latents + 1, "step {i}: a cached step adds one latent");
            r.cached_steps += 1;
        }
        latents = step_latents;
        let diff = max_diff(&step.logits, &full_pass(model, &tokens, step.split));
        assert!(
            diff <= 1e-5,
            "step {i} ({:?}, refilled {}): logits differ by {diff}",
            step.split,
            step.refilled
        );
        r.worst = r.worst.max(diff);
        if i < steps {
            let next = rng.gen_range(0..VOCAB);
            tokens.push(next);
            step = generator.push(next).unwrap();
        }
    }
    assert_eq!(generator.tokens(), &tokens[..]);
    assert_eq!(generator.refills, r.refills);
    r
}

#[test]
fn every_cached_step_equals_its_full_pass_for_both_variants() {
    for paper in [false, true] {
        // Context 24, buffer 8: refills every 4 tokens, the window slides after about 20.
        let m = model(paper, 24, 8, 7);
        let r = run(&m, 8, 5, 70, 1);
        println!("paper {paper}: {r:?}");
        assert!(r.refills >= 10 && r.cached_steps >= 40 && r.slid, "{r:?}");
    }
}

#[test]
fn a_prompt_longer_than_the_context_starts_with_a_sliding_window() {
    let m = model(false, 16, 6, 3);
    let r = run(&m, 6, 40, 20, 2);
    assert!(r.slid && r.refills >= 5, "{r:?}");
}

proptest! {
    #![proptest_config(tests::proptest_config(10))]

    /// Any buffer width from 1 to the context (odd ones too), any prompt length.
    #[test]
    fn any_buffer_width_and_prompt(paper in any::<bool>(), width in 1usize..=12, prompt_len in 1usize..30, seed in any::<u64>()) {
        let m = model(paper, 12, 4, seed);
        let r = run(&m, width, prompt_len, 30, seed);
        prop_assert!(r.worst <= 1e-5);
    }
}

/// Greedy generation through the cache picks the tokens that the full passes it equals
/// pick (each step's argmax), and the uncached path still runs.
#[test]
fn greedy_generation_through_the_cache() {
    let m = model(true, 20, 6, 11);
    let prompt = [1, 2, 3, 4, 5, 6, 7];
    let cached =
        generate(&m, &prompt, 30, Sampling::GREEDY, 0, Prediction::Cached { latents: 6 }, |_| {}).unwrap();
    let mut generator = CachedGenerator::new(&m, 6).unwrap();
    let mut step = generator.prompt(&prompt).unwrap();
    let mut tokens = prompt.to_vec();
    for _ in 0..30 {
        let full = full_pass(&m, &tokens, step.split);
        let next = perceiver::generate::pick(&full, Sampling::GREEDY, &mut ChaCha8Rng::seed_from_u64(0));
        tokens.push(next);
        step = generator.push(next).unwrap();
    }
    assert_eq!(cached, tokens);
    let split = |len: usize| len - len.min(6);
    let full =
        generate(&m, &prompt, 30, Sampling::GREEDY, 0, Prediction::Full { prefix_len: &split }, |_| {})
            .unwrap();
    assert_eq!(full.len(), cached.len());
}

#[test]
fn the_cache_refuses_what_it_cannot_hold() {
    let m = model(false, 10, 4, 5);
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &m.params, false, &mut rng);
    let mut cache = KvCache::new(&m, 1, 4).unwrap();
    let ids = [1, 2, 3, 4, 5, 6];
    m.forward_cached(&ctx, &Input { ids: &ids, batch: 1, seq_len: 6, prefix_len: 3 }, &mut cache).unwrap();
    let err = |r: perceiver::Result<_>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    // A prefix after latents, more latents than the buffer, more positions than the context.
    assert!(err(m.forward_cached(
        &ctx,
        &Input { ids: &ids[..2], batch: 1, seq_len: 2, prefix_len: 1 },
        &mut cache
    ))
    .contains("prefix"));
    assert!(err(m.forward_cached(
        &ctx,
        &Input { ids: &ids[..2], batch: 1, seq_len: 2, prefix_len: 0 },
        &mut cache
    ))
    .contains("latents"));
    m.forward_cached(&ctx, &Input { ids: &ids[..1], batch: 1, seq_len: 1, prefix_len: 0 }, &mut cache)
        .unwrap();
    let mut cache = KvCache::new(&m, 1, 10).unwrap();
    m.forward_cached(&ctx, &Input { ids: &ids, batch: 1, seq_len: 6, prefix_len: 0 }, &mut cache).unwrap();
    assert!(err(m.forward_cached(
        &ctx,
        &Input { ids: &ids[..5], batch: 1, seq_len: 5, prefix_len: 0 },
        &mut cache
    ))
    .contains("max_seq_len"));
    assert!(CachedGenerator::new(&m, 0).is_err() && CachedGenerator::new(&m, 11).is_err());
    let mut training = ChaCha8Rng::seed_from_u64(0);
    let train_ctx = Ctx::new(&tape, &m.params, true, &mut training);
    let mut cache = KvCache::new(&m, 1, 4).unwrap();
    assert!(err(m.forward_cached(
        &train_ctx,
        &Input { ids: &ids[..1], batch: 1, seq_len: 1, prefix_len: 0 },
        &mut cache
    ))
    .contains("inference"));
}
