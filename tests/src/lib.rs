//! Helpers shared by the cross-crate tests: random shapes, and inputs that arrive as
//! contiguous tensors or as transposed, sliced and broadcast views of a base tensor.
//!
//! A [`Viewed`] input is a contiguous *base* tensor plus a [`Recipe`] that turns it into a view
//! of the wanted shape. Kernel tests apply the recipe to a `Tensor`, so kernels see strided
//! inputs; gradient tests apply it to a `Var` inside the checked function, so the gradient
//! flows back through the view's own backward rule to the base, whose elements the checker
//! perturbs.

use autograd::Var;
use std::sync::Arc;

use nn::optim::{AdamWConfig, Decay, Schedule};
use perceiver::data::copy::{CopyTask, VOCAB};
use perceiver::train::{TaskConfig, TrainConfig};
use perceiver::PerceiverArConfig;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tensor::{Device, KeyVisibility, Result, SparsePattern, Tensor};

/// How a base tensor becomes the input an op sees.
#[derive(Clone, Debug)]
pub enum Recipe {
    /// The base itself.
    Contiguous,
    /// `base.transpose(a, b)`; the base has axes `a` and `b` swapped.
    Transposed(usize, usize),
    /// `base.narrow(axis, before, len)`; the base is longer along `axis` by `before + after`.
    Sliced { axis: usize, before: usize, after: usize },
    /// `base.broadcast_to(shape)`; the base has size 1 along `axis`.
    Broadcast { axis: usize },
    /// `base.broadcast_to(shape)`; the base lacks the leading axis.
    BroadcastLeading,
}

/// A base tensor and the recipe that views it as the input.
#[derive(Clone, Debug)]
pub struct Viewed {
    pub base: Tensor,
    pub recipe: Recipe,
    pub shape: Vec<usize>,
}

impl Viewed {
    /// The input as a (possibly strided) tensor.
    pub fn tensor(&self) -> Tensor {
        self.apply(&self.base).expect("recipe fits base")
    }

    /// The recipe applied to any tensor of the base's shape.
    pub fn apply(&self, t: &Tensor) -> Result<Tensor> {
        match self.recipe {
            Recipe::Contiguous => Ok(t.clone()),
            Recipe::Transposed(a, b) => t.transpose(a, b),
            Recipe::Sliced { axis, before, .. } => t.narrow(axis, before, self.shape[axis]),
            Recipe::Broadcast { .. } | Recipe::BroadcastLeading => t.broadcast_to(&self.shape),
        }
    }

    /// The recipe applied on the tape, for gradient checks.
    pub fn apply_var(&self, v: &Var) -> Result<Var> {
        match self.recipe {
            Recipe::Contiguous => Ok(v.clone()),
            Recipe::Transposed(a, b) => v.transpose(a, b),
            Recipe::Sliced { axis, before, .. } => v.narrow(axis, before, self.shape[axis]),
            Recipe::Broadcast { .. } | Recipe::BroadcastLeading => v.broadcast_to(&self.shape),
        }
    }
}

/// Values drawn uniformly from `[low, high)` with a seed.
pub fn uniform(shape: &[usize], low: f32, high: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::rand_uniform(shape, low, high, &mut rng)
}

/// Values in `[low, high)` kept at least `gap` away from every point in `avoid` (for ops with
/// kinks or singularities, where finite differences are meaningless).
pub fn uniform_avoiding(shape: &[usize], low: f32, high: f32, avoid: &[f32], gap: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| loop {
            let x: f32 = rng.gen_range(low..high);
            if avoid.iter().all(|a| (x - a).abs() > gap) {
                break x;
            }
        })
        .collect();
    Tensor::from_vec(data, shape).unwrap()
}

/// A recipe that can produce a view of `shape`, and the base shape it needs.
fn recipe_for(shape: &[usize], pick: usize, a: usize, b: usize, pad: (usize, usize)) -> (Recipe, Vec<usize>) {
    let rank = shape.len();
    let mut base = shape.to_vec();
    let recipe = match pick % 5 {
        1 if rank >= 2 => {
            let (a, b) = (a % rank, b % rank);
            base.swap(a, b);
            Recipe::Transposed(a, b)
        }
        2 if rank >= 1 => {
            let axis = a % rank;
            base[axis] += pad.0 + pad.1;
            Recipe::Sliced { axis, before: pad.0, after: pad.1 }
        }
        3 if rank >= 1 => {
            let axis = a % rank;
            base[axis] = 1;
            Recipe::Broadcast { axis }
        }
        4 if rank >= 2 => {
            base.remove(0);
            Recipe::BroadcastLeading
        }
        _ => Recipe::Contiguous,
    };
    (recipe, base)
}

/// Inputs of `shape` in any of the layouts above, with values uniform in `[low, high)`.
pub fn viewed(shape: Vec<usize>, low: f32, high: f32) -> impl Strategy<Value = Viewed> {
    viewed_from(5, shape, low, high)
}

/// Like [`viewed`] but never broadcast (for inputs whose gradient check needs every logical
/// element to be independent, or for ops whose inputs must not alias).
pub fn viewed_no_broadcast(shape: Vec<usize>, low: f32, high: f32) -> impl Strategy<Value = Viewed> {
    viewed_from(3, shape, low, high)
}

/// Picks among the first `kinds` recipes (contiguous, transposed, sliced, broadcast, leading).
fn viewed_from(kinds: usize, shape: Vec<usize>, low: f32, high: f32) -> impl Strategy<Value = Viewed> {
    (0..kinds, 0usize..8, 0usize..8, 0usize..3, 0usize..3, any::<u64>()).prop_map(
        move |(pick, a, b, p0, p1, seed)| {
            let (recipe, base_shape) = recipe_for(&shape, pick, a, b, (p0, p1));
            Viewed { base: uniform(&base_shape, low, high, seed), recipe, shape: shape.clone() }
        },
    )
}

/// Shapes of rank `ranks` with each dimension in `dims`.
pub fn shape(
    ranks: std::ops::RangeInclusive<usize>,
    dims: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = Vec<usize>> {
    ranks.prop_flat_map(move |r| prop::collection::vec(dims.clone(), r))
}

/// Asserts two tensors have one shape and agree elementwise within `atol + rtol * |want|`.
pub fn assert_close(got: &Tensor, want: &Tensor, atol: f32, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    let (g, w) = (got.to_vec().unwrap(), want.to_vec().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a - b).abs() <= atol + rtol * b.abs() || (a.is_nan() && b.is_nan()) || a == b;
        assert!(ok, "element {i} of {:?}: got {a}, want {b} (atol {atol}, rtol {rtol})", got.shape());
    }
}

/// The devices the device suite runs on: the CPU, and with the `opencl` feature the first OpenCL
/// device. With the feature on and no OpenCL platform this panics with the reason: a green run
/// must mean the kernels ran.
pub fn devices() -> Vec<Device> {
    #[allow(unused_mut)]
    let mut out = vec![Device::Cpu];
    #[cfg(feature = "opencl")]
    out.push(opencl_device());
    out
}

/// The first OpenCL device, opened (and its kernels built) once per test process.
#[cfg(feature = "opencl")]
pub fn opencl_device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| match gpu::OpenClDevice::open(0) {
            Ok(d) => d.device(),
            Err(e) => panic!("the opencl feature is on but no OpenCL device could be opened: {e}"),
        })
        .clone()
}

/// A small Perceiver AR config of either published variant (`paper` or perceiver-io).
pub fn model_config(
    paper: bool,
    vocab: usize,
    context: usize,
    latents: usize,
    channels: usize,
    heads: usize,
    layers: usize,
) -> PerceiverArConfig {
    if paper {
        PerceiverArConfig::paper(vocab, context, latents, channels, heads, layers)
    } else {
        PerceiverArConfig::perceiver_io(vocab, context, latents, channels, heads, layers)
    }
}

/// The small copy-task runs the training tests share: `k` bytes mirrored, a perceiver-io
/// model with `channels` channels, `heads` heads and one self-attention layer, no cross-attend
/// dropout, a cosine schedule peaking at 3e-3 after a short warmup, evaluation every 50 steps,
/// stopping once solved. Tests change what they need after.
pub fn copy_run(
    k: usize,
    channels: usize,
    heads: usize,
    batch_size: usize,
    steps: u64,
    seed: u64,
) -> TrainConfig {
    let task = CopyTask { k };
    let mut model =
        PerceiverArConfig::perceiver_io(VOCAB, task.seq_len(), task.min_latents(), channels, heads, 1);
    model.cross_attend_dropout = 0.0;
    let warmup = (steps / 5).clamp(1, 30);
    TrainConfig {
        task: TaskConfig::Copy { k },
        model: perceiver::models::ModelConfig::PerceiverAr(model),
        batch_size,
        steps,
        time_budget_secs: None,
        schedule: Schedule { peak: 3e-3, warmup, total: steps, decay: Decay::Cosine, min_ratio: 0.1 },
        adamw: AdamWConfig::default(),
        clip: Some(1.0),
        z_loss: 1e-4,
        eval_every: 50,
        eval_batches: 4,
        checkpoint_every: 1000,
        stop_when_solved: true,
        seed,
    }
}

/// A [`KeyVisibility`] for `batch` rows of `n` keys and `l` queries, from random choices:
/// causal (queries the last `l` positions, or later), kept-key positions with gaps, and
/// hidden keys (`hidden` 1: some per row; 2: every key of the first row, so its queries see
/// nothing).
pub fn visibility(
    batch: usize,
    l: usize,
    n: usize,
    causal: bool,
    positions: bool,
    hidden: u8,
    seed: u64,
) -> KeyVisibility {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vis = KeyVisibility::default();
    if causal {
        // Queries are the last `l` positions of `n` (Perceiver AR), or shifted later still.
        vis.causal = Some(n.saturating_sub(l) + rng.gen_range(0..3));
    }
    if positions {
        // Kept prefix positions: strictly increasing, with gaps.
        let rows: Vec<usize> = (0..batch)
            .flat_map(|_| {
                let mut p = 0;
                (0..n)
                    .map(|_| {
                        p += rng.gen_range(0..3);
                        p
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        vis.key_positions = Some(Arc::from(rows));
    }
    match hidden {
        0 => {}
        // Some keys hidden in each row.
        1 => vis.hidden_keys = Some(Arc::from((0..batch * n).map(|_| rng.gen_bool(0.3)).collect::<Vec<_>>())),
        // Every key of the first row hidden: its queries see nothing.
        _ => {
            vis.hidden_keys =
                Some(Arc::from((0..batch * n).map(|i| i < n || rng.gen_bool(0.2)).collect::<Vec<_>>()))
        }
    }
    vis
}

/// `vis` with a sparse pattern of kind `kind` for `heads` heads: 0 none, 1 the strided pattern
/// (merged heads), 2 the fixed pattern (merged), 3 interleaved heads (head `h` takes part
/// `h mod 2` of a strided or fixed pattern), 4 every part of both at once (two near parts and
/// two far ones, which the kernel must keep disjoint), with random sizes.
pub fn with_pattern(mut vis: KeyVisibility, heads: usize, kind: u8, seed: u64) -> KeyVisibility {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005b_a25e);
    let stride = rng.gen_range(1..7);
    let block = rng.gen_range(1..9);
    let summary = rng.gen_range(1..=block);
    let merged = match rng.gen_bool(0.5) {
        true => SparsePattern::strided(stride),
        false => SparsePattern::fixed(block, summary),
    };
    let patterns = match kind {
        0 => return vis,
        1 => vec![SparsePattern::strided(stride)],
        2 => vec![SparsePattern::fixed(block, summary)],
        3 => (0..heads).map(|h| SparsePattern::only(merged.parts[h % 2])).collect(),
        _ => {
            let (strided, fixed) = (SparsePattern::strided(stride), SparsePattern::fixed(block, summary));
            vec![SparsePattern { parts: [strided.parts, fixed.parts].concat() }]
        }
    };
    vis.pattern = Some(Arc::from(patterns));
    vis
}

/// Finite differences on every element of every parameter of a model: `loss` runs the model
/// with `params` bound to the checker's variables and returns a scalar.
pub fn check_every_parameter(
    params: &nn::ParamStore,
    config: &autograd::GradCheck,
    loss: impl Fn(&nn::Ctx) -> perceiver::Result<Var>,
) -> Result<autograd::GradCheckReport> {
    let ids: Vec<_> = params.iter().map(|p| p.id).collect();
    let values: Vec<Tensor> = params.iter().map(|p| p.value.clone()).collect();
    autograd::check_gradients(
        |vars| {
            let tape = vars[0].tape().unwrap_or_else(autograd::Tape::inference);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let mut ctx = nn::Ctx::new(&tape, params, false, &mut rng);
            for (id, v) in ids.iter().zip(vars) {
                ctx.bind(*id, v.clone());
            }
            loss(&ctx).map_err(|e| tensor::Error::new("model", e.to_string()))
        },
        &values,
        config,
    )
}

/// Trains `config` for `total` steps straight; then again for `first` steps, saves a
/// checkpoint into `out`, resumes from it in a new trainer and trains the rest. Panics unless
/// both end with bit-identical parameters.
pub fn assert_resumes_exactly(config: TrainConfig, total: u64, first: u64, out: &std::path::Path) {
    use perceiver::train::Trainer;
    let params_of = |t: &Trainer| -> Vec<(String, Vec<f32>)> {
        t.model.params().iter().map(|p| (p.name.clone(), p.value.to_vec().unwrap())).collect()
    };
    let mut straight = Trainer::new(config.clone()).unwrap();
    for _ in 0..total {
        straight.step().unwrap();
    }
    let mut interrupted = Trainer::new(config).unwrap();
    for _ in 0..first {
        interrupted.step().unwrap();
    }
    interrupted.save(&perceiver::run_dir::RunDir::create(out, false).unwrap()).unwrap();
    drop(interrupted);
    let mut resumed = Trainer::resume(out).unwrap();
    assert_eq!(resumed.state.step, first);
    for _ in first..total {
        resumed.step().unwrap();
    }
    assert!(params_of(&resumed) == params_of(&straight), "parameters differ after resuming");
}

/// A proptest config with `default` cases, or `PROPTEST_CASES` when set (an explicit count in a
/// test's config would otherwise override the variable): `PROPTEST_CASES=1000 cargo test`
/// stresses every property.
pub fn proptest_config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, max_global_rejects: 4096, ..ProptestConfig::default() }
}
