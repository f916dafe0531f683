//! The `perceiver` command: train, evaluate, sample and verify Perceiver AR models.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use perceiver::config::AbsolutePositions;
use perceiver::data::copy;
use perceiver::distributed::Collective;
use perceiver::generate::{generate, Prediction, Sampling};
use perceiver::models::Model;
use perceiver::presets;
use perceiver::run_dir::RunDir;
use perceiver::snapshot::TextTokenizer;
use perceiver::sparse_transformer::{AttentionPattern, HeadLayout};
use perceiver::train::{self, Event, Metric, TaskConfig, TrainConfig, Trainer};
use perceiver::Result;

#[derive(Parser)]
#[command(name = "perceiver", version, about = "Train, evaluate, sample and verify Perceiver AR models")]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true, value_parser = parse::count)]
    threads: Option<usize>,
    /// Where to compute: cpu, opencl (the first OpenCL device) or opencl:N.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model: the copy task by default, or byte-level text with --data FILE.
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint on held-out data.
    Eval(EvalArgs),
    /// Sample a continuation of a prompt from a checkpoint.
    Generate(GenerateArgs),
    /// Time training steps at a benchmark shape: step-2k, long-131k, or a custom one.
    Bench(BenchArgs),
    /// Draw several runs' held-out results against training time into one SVG.
    Compare {
        /// Run directories (each with metrics.jsonl and a checkpoint naming its model).
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
        /// Title of the chart [default: what it draws].
        #[arg(long)]
        title: Option<String>,
        /// Copy-task runs: draw each model's minutes until every held-out sequence is exact
        /// against the bytes copied, instead of held-out results against time.
        #[arg(long)]
        solve_times: bool,
    },
    /// List the devices this build can compute on.
    Devices,
    /// Load a perceiver-io reference dump and compare logits, loss, gradients and greedy tokens.
    Verify {
        /// Directory with config.json, model.safetensors and case.safetensors.
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Family {
    /// Perceiver AR: autoregressive, on the copy task or on --data text.
    PerceiverAr,
    /// Perceiver IO: masked byte modelling (BERT) of --data.
    PerceiverIo,
    /// The Perceiver: classifying drawn shapes (no data needed).
    Perceiver,
    /// The Sparse Transformer: a decoder with factorized sparse attention, on the copy task or
    /// --data text.
    SparseTransformer,
    /// The dense decoder of the same size (every earlier position seen), on the same tasks.
    DenseDecoder,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum PatternKind {
    /// The latest `stride` positions and every `stride`-th one before them.
    Strided,
    /// The query's block and the last `summary` positions of every block.
    Fixed,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Layout {
    /// Every head attends to both parts of the pattern.
    Merged,
    /// Alternate layers take one part each.
    Interleaved,
    /// Alternate heads take one part each.
    Split,
}

#[derive(Clone, Copy, ValueEnum)]
enum Variant {
    /// The perceiver-io library's model (GELU, tied output, learned positions).
    PerceiverIo,
    /// The paper's model (squared ReLU, biases, sinusoidal positions, untied output).
    Paper,
}

#[derive(Clone, Copy, ValueEnum)]
enum Positions {
    None,
    Learned,
    Sinusoidal,
}

/// Numeric options are checked as they are parsed, so a bad value is an error naming the
/// option before anything runs.
mod parse {
    fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("`{s}` is not a number of the expected kind"))
    }

    /// An integer of at least 1.
    pub fn count(s: &str) -> Result<usize, String> {
        match number::<usize>(s)? {
            0 => Err("must be at least 1".into()),
            v => Ok(v),
        }
    }

    /// A step count of at least 1.
    pub fn steps(s: &str) -> Result<u64, String> {
        match number::<u64>(s)? {
            0 => Err("must be at least 1".into()),
            v => Ok(v),
        }
    }

    /// The copy task's k: at least 1, and small enough that its sequence length is a number.
    pub fn copy_bytes(s: &str) -> Result<usize, String> {
        match count(s)? {
            k if k > perceiver::presets::MAX_COPY_BYTES => Err("is beyond any memory".into()),
            k => Ok(k),
        }
    }

    /// A finite number above 0 (learning rate, minutes).
    pub fn positive(s: &str) -> Result<f64, String> {
        match number::<f64>(s)? {
            v if v.is_finite() && v > 0.0 => Ok(v),
            v => Err(format!("must be a finite number above 0, got {v}")),
        }
    }

    pub fn positive_f32(s: &str) -> Result<f32, String> {
        let v = positive(s)? as f32;
        if v > 0.0 && v.is_finite() {
            Ok(v)
        } else {
            Err(format!("{s} does not fit a positive f32"))
        }
    }

    /// A finite number of at least 0 (temperature; 0 is greedy).
    pub fn non_negative(s: &str) -> Result<f32, String> {
        match number::<f32>(s)? {
            v if v.is_finite() && v >= 0.0 => Ok(v),
            v => Err(format!("must be a finite number of at least 0, got {v}")),
        }
    }

    /// A dropout rate in [0, 1).
    pub fn rate(s: &str) -> Result<f32, String> {
        match number::<f32>(s)? {
            v if (0.0..1.0).contains(&v) => Ok(v),
            v => Err(format!("must be in [0, 1), got {v}")),
        }
    }

    /// A probability mass in (0, 1].
    pub fn mass(s: &str) -> Result<f32, String> {
        match number::<f32>(s)? {
            v if v > 0.0 && v <= 1.0 => Ok(v),
            v => Err(format!("must be in (0, 1], got {v}")),
        }
    }
}

/// The model and batch shape, for `train` and `bench`.
#[derive(Args)]
struct ShapeArgs {
    /// Longest input (prefix + latents); perceiver-io: the crop length; perceiver: the image side.
    #[arg(long, value_parser = parse::count)]
    context: Option<usize>,
    /// Latents (queries of the cross-attention).
    #[arg(long, value_parser = parse::count)]
    latents: Option<usize>,
    #[arg(long, value_parser = parse::count)]
    batch: Option<usize>,
    /// Model width.
    #[arg(long, value_parser = parse::count)]
    channels: Option<usize>,
    #[arg(long, value_parser = parse::count)]
    heads: Option<usize>,
    /// Self-attention layers after the cross-attention (per block for perceiver-io and perceiver).
    #[arg(long)]
    layers: Option<usize>,
}

impl ShapeArgs {
    fn any(&self) -> bool {
        [self.context, self.latents, self.batch, self.channels, self.heads, self.layers]
            .iter()
            .any(Option::is_some)
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Which model to train [default: perceiver-ar].
    #[arg(long, value_enum)]
    model: Option<Family>,
    /// A text file to model byte by byte (default: the copy task); perceiver-io masks its bytes.
    #[arg(long)]
    data: Option<PathBuf>,
    /// perceiver-io: the fraction of positions chosen for masking [default: 0.15].
    #[arg(long, value_parser = parse::rate)]
    mask_rate: Option<f32>,
    /// perceiver: the standard deviation of the Gaussian noise on every pixel [default: 0.25].
    #[arg(long, value_parser = parse::non_negative)]
    noise: Option<f32>,
    /// sparse-transformer: the attention pattern [default: strided].
    #[arg(long, value_enum)]
    pattern: Option<PatternKind>,
    /// sparse-transformer: the pattern's stride (strided) or block (fixed) [default: about
    /// the square root of the context].
    #[arg(long, value_parser = parse::count)]
    stride: Option<usize>,
    /// sparse-transformer, fixed pattern: summary positions per block [default: an eighth of
    /// the block, from 1 to 8 (the paper's 8 for blocks of 128); a summary growing with the
    /// block would make the summary keys a fixed fraction of all keys].
    #[arg(long, value_parser = parse::count)]
    summary: Option<usize>,
    /// sparse-transformer: how the pattern's two parts are spread over heads [default: merged].
    #[arg(long, value_enum)]
    head_layout: Option<Layout>,
    /// Copy task: number of random bytes to mirror [default: 16].
    #[arg(long, value_parser = parse::copy_bytes)]
    copy_bytes: Option<usize>,
    /// Which published model [default: perceiver-io].
    #[arg(long, value_enum)]
    variant: Option<Variant>,
    /// Absolute position information added to the embeddings (default: the variant's).
    #[arg(long, value_enum)]
    positions: Option<Positions>,
    #[command(flatten)]
    shape: ShapeArgs,
    #[arg(long, value_parser = parse::steps)]
    steps: Option<u64>,
    /// Stop after this many minutes of training.
    #[arg(long, value_parser = parse::positive)]
    minutes: Option<f64>,
    /// Peak learning rate.
    #[arg(long, value_parser = parse::positive_f32)]
    lr: Option<f32>,
    #[arg(long)]
    warmup: Option<u64>,
    /// Fraction of prefix positions dropped from the cross-attention in training.
    #[arg(long, value_parser = parse::rate)]
    cross_dropout: Option<f32>,
    /// Seed of the weights and of the data and dropout streams [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_parser = parse::steps)]
    eval_every: Option<u64>,
    #[arg(long, value_parser = parse::steps)]
    checkpoint_every: Option<u64>,
    /// Output directory (metrics, checkpoints, loss curve).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this directory (or checkpoint) exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Delete the run already in the output directory and start a new one there.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint directory or a run directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate with this many latents (default: the training latents).
    #[arg(long, value_parser = parse::count)]
    latents: Option<usize>,
    /// The text file, if it moved since training.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Text: windows step by this many bytes, each scoring only the bytes not yet scored, so
    /// every prediction has at least `context - latents` bytes before it (the paper's strided
    /// evaluation, appendix G) [default: half the latents].
    #[arg(long, value_parser = parse::count)]
    stride: Option<usize>,
    /// Evaluate at most this many batches (default: all held-out text, the training's copy batches).
    #[arg(long, value_parser = parse::count)]
    max_batches: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Latents: with the cache, the width of the latent buffer (refilled to half when full,
    /// appendix E.3); without it, each window's last M positions. At most the context
    /// [default: the training latents].
    #[arg(long, value_parser = parse::count)]
    latents: Option<usize>,
    /// Predict each token with a full forward pass over the window instead of the cached step.
    #[arg(long)]
    no_cache: bool,
    /// How the cache treats latents: `paper` (appendix E.3: a buffer of `--latents`, refilled
    /// at half) or `library` (the perceiver-io library's `generate`: `--latents` is the
    /// initial count [default 1], latents grow to max_latents, then the caches slide)
    /// [default: paper, library for a Hugging Face snapshot].
    #[arg(long, value_enum)]
    rule: Option<Rule>,
    /// Print one JSON object on the last line: `output_ids` (prompt then new ids) and
    /// `output_text`.
    #[arg(long)]
    json: bool,
    /// Logits are divided by this before sampling; 0 is greedy.
    #[arg(long, default_value_t = 0.8, value_parser = parse::non_negative)]
    temperature: f32,
    /// Sample among the k most likely tokens only.
    #[arg(long, value_parser = parse::count)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to p (nucleus sampling).
    #[arg(long, value_parser = parse::mass)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Rule {
    Paper,
    Library,
}

#[derive(Args)]
struct BenchArgs {
    /// step-2k (context 2048, 256 latents, batch 8) or long-131k (context 131072, 512
    /// latents, batch 1): a training step; generate: the step-2k model generating, cached
    /// and uncached; attention: one attention against the context (up to --context, default
    /// 65536; --channels 64 split over --heads 1), dense and sparse. The options below change
    /// the shape.
    #[arg(default_value = "step-2k")]
    preset: String,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = parse::count)]
    steps: usize,
    /// generate: tokens of the random prompt [default: the context].
    #[arg(long, value_parser = parse::count)]
    prompt_tokens: Option<usize>,
    /// generate: new tokens.
    #[arg(long, default_value_t = 1024, value_parser = parse::count)]
    new_tokens: usize,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn bench_generate(a: &BenchArgs, shape: &perceiver::bench::BenchShape) -> Result<bool> {
    use perceiver::bench::generate::{self, Phase};
    let prompt_tokens = a.prompt_tokens.unwrap_or(shape.context);
    eprintln!(
        "bench {}: context {}, {} latents, {} channels, {} heads, {} self-attention layers; {} new tokens after {} on {} threads",
        shape.preset,
        shape.context,
        shape.latents,
        shape.channels,
        shape.heads,
        shape.layers,
        a.new_tokens,
        prompt_tokens,
        rayon::current_num_threads()
    );
    let result = generate::run(shape, prompt_tokens, a.new_tokens, |phase, done| {
        if done % 128 == 0 || done == a.new_tokens {
            let what = match phase {
                Phase::Cached => "cached",
                Phase::Full => "uncached",
                Phase::Check => "checked against full passes",
            };
            eprintln!("{what}: {done} / {}", a.new_tokens);
        }
    })?;
    println!(
        "{}: cached {:.1} tokens/s, uncached {:.2} tokens/s, speedup {:.1}x ({} full passes for the cache); largest logit difference from the full pass {:.2e}",
        result.preset,
        result.cached_tokens_per_s,
        result.full_tokens_per_s,
        result.speedup,
        result.refills,
        result.max_logit_diff
    );
    if a.json {
        println!("{}", serde_json::to_string(&result).expect("serialisable"));
    }
    Ok(true)
}

/// `perceiver bench attention`: one attention's forward + backward against the context, for
/// the dense, strided and fixed patterns.
fn bench_attention(a: &BenchArgs, device: &tensor::Device) -> Result<bool> {
    let given = &a.shape;
    let (heads, channels) = (given.heads.unwrap_or(1), given.channels.unwrap_or(64));
    if !channels.is_multiple_of(heads) {
        return Err(perceiver::Error::Input(format!("--heads {heads} must divide --channels {channels}")));
    }
    let max_context = given.context.unwrap_or(65_536);
    eprintln!(
        "bench attention: contexts 1024..={max_context}, {heads} heads of {}, batch 1, forward + backward, median of {} on {}",
        channels / heads,
        a.steps,
        match device {
            tensor::Device::Cpu => format!("{} CPU threads", rayon::current_num_threads()),
            other => other.name(),
        }
    );
    let result = perceiver::bench::attention::run(
        device,
        max_context,
        heads,
        channels / heads,
        a.steps,
        |name, n, t| eprintln!("{name:>8} n = {n:>6}: {t:.4} s"),
    )?;
    for curve in &result.curves {
        println!(
            "{}: time grows as n^{:.2} (fitted over n = 1024..={max_context})",
            curve.pattern, curve.exponent
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&result).expect("serialisable"));
    }
    Ok(true)
}

fn bench_command(a: &BenchArgs, device: &tensor::Device) -> Result<bool> {
    use perceiver::bench::{self, BenchShape};
    if a.preset == "attention" {
        return bench_attention(a, device);
    }
    if *device != tensor::Device::Cpu {
        return Err(perceiver::Error::Input(format!(
            "--device {device}: bench {} runs on the CPU only (bench attention takes any device)",
            a.preset
        )));
    }
    let mut shape = BenchShape::preset(&a.preset)?;
    let given = &a.shape;
    shape.context = given.context.unwrap_or(shape.context);
    shape.latents = given.latents.unwrap_or(shape.latents);
    shape.batch = given.batch.unwrap_or(shape.batch);
    shape.channels = given.channels.unwrap_or(shape.channels);
    shape.heads = given.heads.unwrap_or(shape.heads);
    shape.layers = given.layers.unwrap_or(shape.layers);
    if given.any() {
        shape.preset = format!("{} (custom)", shape.preset);
    }
    if shape.preset.starts_with("generate") {
        return bench_generate(a, &shape);
    }
    eprintln!(
        "bench {}: context {}, {} latents, batch {}, {} channels, {} heads, {} self-attention layers; {} warm-up + {} timed steps on {} threads",
        shape.preset,
        shape.context,
        shape.latents,
        shape.batch,
        shape.channels,
        shape.heads,
        shape.layers,
        a.warmup,
        a.steps,
        rayon::current_num_threads()
    );
    let collective = collective()?;
    let leader = collective.rank() == 0;
    let result = bench::run(&shape, a.warmup, a.steps, &*collective, |i, s| {
        let what = if i < a.warmup { "warm-up" } else { "step" };
        if leader {
            eprintln!("{what} {}: {s:.3} s", i + 1);
        }
    })?;
    if !leader {
        return Ok(true);
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let ranks = match result.ranks {
        1 => String::new(),
        n => format!(" over {n} ranks"),
    };
    println!(
        "{}{ranks}: {:.3} s per step (median of {}), {:.1} GFLOP per step, {:.1} GFLOP/s; sgemm {:.1} GFLOP/s; ratio {:.3} (each step against the sgemm just before it); peak memory {} (live tensors {:.2} GiB)",
        result.preset,
        result.step_s,
        a.steps,
        result.gflop_per_step,
        result.gflops,
        result.sgemm_gflops,
        result.ratio,
        result.peak_rss_bytes.map_or("unknown".into(), |b| format!("{:.2} GiB", gib(b))),
        gib(result.peak_tensor_bytes)
    );
    if a.json {
        println!("{}", serde_json::to_string(&result).expect("serialisable"));
    }
    Ok(true)
}

/// The run configuration from the command line: the task's preset, then any overrides.
fn train_config(a: &TrainArgs) -> Result<(TrainConfig, PathBuf)> {
    let family = a.model.unwrap_or(Family::PerceiverAr);
    let refuse = |option: &str, family: &str| {
        Err(perceiver::Error::Input(format!("{option} does not apply to --model {family}")))
    };
    let ar_only = [
        ("--copy-bytes", a.copy_bytes.is_some()),
        ("--variant", a.variant.is_some()),
        ("--positions", a.positions.is_some()),
        ("--cross-dropout", a.cross_dropout.is_some()),
    ];
    let name = match family {
        Family::PerceiverAr => None,
        Family::PerceiverIo => Some("perceiver-io"),
        Family::Perceiver => Some("perceiver"),
        Family::SparseTransformer => Some("sparse-transformer"),
        Family::DenseDecoder => Some("dense-decoder"),
    };
    // The copy task's size applies to the decoders too; the rest is Perceiver AR's.
    let decoder = matches!(family, Family::SparseTransformer | Family::DenseDecoder);
    if let Some(name) = name {
        let given = ar_only.iter().skip(usize::from(decoder)).find(|(_, given)| *given);
        if let Some((option, _)) = given {
            return refuse(option, name);
        }
    }
    if family != Family::PerceiverIo && a.mask_rate.is_some() {
        return refuse("--mask-rate", "other than perceiver-io");
    }
    if family != Family::Perceiver && a.noise.is_some() {
        return refuse("--noise", "other than perceiver");
    }
    let sparse_options = [
        ("--pattern", a.pattern.is_some()),
        ("--stride", a.stride.is_some()),
        ("--summary", a.summary.is_some()),
        ("--head-layout", a.head_layout.is_some()),
    ];
    if family != Family::SparseTransformer {
        if let Some((option, _)) = sparse_options.iter().find(|(_, given)| *given) {
            return refuse(option, "other than sparse-transformer");
        }
    }
    let copy_bytes = a.copy_bytes.unwrap_or(presets::DEFAULT_COPY_BYTES);
    let mut preset = match (family, &a.data) {
        (Family::PerceiverAr | Family::SparseTransformer | Family::DenseDecoder, Some(_)) => presets::text(),
        (Family::PerceiverAr | Family::SparseTransformer | Family::DenseDecoder, None) => {
            presets::copy_task(copy_bytes)
        }
        (Family::PerceiverIo, _) => presets::masked_text(),
        (Family::Perceiver, Some(_)) => return refuse("--data", "perceiver (its shapes are drawn)"),
        (Family::Perceiver, None) => presets::shapes(),
    };
    let p = &mut preset;
    let given = &a.shape;
    p.context = given.context.unwrap_or(p.context);
    p.latents = given.latents.unwrap_or(p.latents);
    p.channels = given.channels.unwrap_or(p.channels);
    p.heads = given.heads.unwrap_or(p.heads);
    p.self_attention_layers = given.layers.unwrap_or(p.self_attention_layers);
    p.batch_size = given.batch.unwrap_or(p.batch_size);
    p.steps = a.steps.unwrap_or(p.steps);
    p.minutes = a.minutes.or(p.minutes);
    p.peak_lr = a.lr.unwrap_or(p.peak_lr);
    p.warmup = a.warmup.unwrap_or(p.warmup);
    p.eval_every = a.eval_every.unwrap_or(p.eval_every);
    p.checkpoint_every = a.checkpoint_every.unwrap_or(p.checkpoint_every);
    let seed = a.seed.unwrap_or(0);
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(preset.out));
    let config = match family {
        Family::PerceiverIo => {
            let data = a.data.clone().ok_or_else(|| {
                perceiver::Error::Input("--model perceiver-io needs --data FILE (a text file to mask)".into())
            })?;
            preset.masked_text_config(data, a.mask_rate.unwrap_or(0.15), seed)
        }
        Family::Perceiver => preset.shapes_config(a.noise.unwrap_or(0.25), seed),
        Family::DenseDecoder => preset.decoder_config(
            AttentionPattern::Dense,
            HeadLayout::Merged,
            a.data.clone(),
            copy_bytes,
            seed,
        ),
        Family::SparseTransformer => {
            let side = ((preset.context as f64).sqrt().round() as usize).max(1);
            let stride = a.stride.unwrap_or(side);
            let pattern = match a.pattern.unwrap_or(PatternKind::Strided) {
                PatternKind::Strided if a.summary.is_some() => {
                    return Err(perceiver::Error::Input("--summary applies to --pattern fixed only".into()))
                }
                PatternKind::Strided => AttentionPattern::Strided { stride },
                PatternKind::Fixed => AttentionPattern::Fixed {
                    block: stride,
                    summary: a.summary.unwrap_or((stride / 8).clamp(1, 8)),
                },
            };
            let layout = match a.head_layout.unwrap_or(Layout::Merged) {
                Layout::Merged => HeadLayout::Merged,
                Layout::Interleaved => HeadLayout::Interleaved,
                Layout::Split => HeadLayout::Split,
            };
            preset.decoder_config(pattern, layout, a.data.clone(), copy_bytes, seed)
        }
        Family::PerceiverAr => {
            let variant = match a.variant.unwrap_or(Variant::PerceiverIo) {
                Variant::PerceiverIo => presets::Variant::PerceiverIo,
                Variant::Paper => presets::Variant::Paper,
            };
            let mut config = preset.train_config(variant, a.data.clone(), copy_bytes, seed);
            let model = config.model.perceiver_ar_mut("Perceiver AR options")?;
            if let Some(p) = a.positions {
                model.absolute_positions = match p {
                    Positions::None => AbsolutePositions::None,
                    Positions::Learned => AbsolutePositions::Learned,
                    Positions::Sinusoidal => AbsolutePositions::Sinusoidal,
                };
            }
            if let Some(rate) = a.cross_dropout {
                model.cross_attend_dropout = rate;
            }
            config
        }
    };
    Ok((config, out))
}

/// A resumed run keeps its model, data and random streams; these options change only how
/// long and how it goes on, so they apply. Every other option would silently fork the run,
/// so giving one is an error naming it.
fn apply_resume_options(a: &TrainArgs, trainer: &mut Trainer, say: impl Fn(String)) -> Result<()> {
    let fixed = [
        ("--model", a.model.is_some()),
        ("--data", a.data.is_some()),
        ("--mask-rate", a.mask_rate.is_some()),
        ("--noise", a.noise.is_some()),
        ("--pattern", a.pattern.is_some()),
        ("--stride", a.stride.is_some()),
        ("--summary", a.summary.is_some()),
        ("--head-layout", a.head_layout.is_some()),
        ("--copy-bytes", a.copy_bytes.is_some()),
        ("--variant", a.variant.is_some()),
        ("--positions", a.positions.is_some()),
        ("--channels", a.shape.channels.is_some()),
        ("--heads", a.shape.heads.is_some()),
        ("--layers", a.shape.layers.is_some()),
        ("--latents", a.shape.latents.is_some()),
        ("--context", a.shape.context.is_some()),
        ("--batch", a.shape.batch.is_some()),
        ("--warmup", a.warmup.is_some()),
        ("--cross-dropout", a.cross_dropout.is_some()),
        ("--seed", a.seed.is_some()),
    ];
    let given: Vec<&str> = fixed.iter().filter(|(_, g)| *g).map(|(n, _)| *n).collect();
    if !given.is_empty() {
        return Err(perceiver::Error::Input(format!(
            "{}: cannot change when resuming, since the run's model, data and random streams depend on it; \
             --steps, --minutes, --lr, --eval-every and --checkpoint-every can",
            given.join(", ")
        )));
    }
    let c = &mut trainer.config;
    if let Some(steps) = a.steps {
        // The schedule stretches to the new length.
        say(format!("resuming with --steps {steps} (was {})", c.steps));
        c.steps = steps;
        c.schedule.total = steps;
    }
    if let Some(minutes) = a.minutes {
        say(format!("resuming with {minutes} more minutes"));
        c.time_budget_secs = Some(trainer.state.elapsed_secs + minutes * 60.0);
    }
    if let Some(lr) = a.lr {
        say(format!("resuming with --lr {lr} (was {})", c.schedule.peak));
        c.schedule.peak = lr;
    }
    if let Some(n) = a.eval_every {
        say(format!("resuming with --eval-every {n} (was {})", c.eval_every));
        c.eval_every = n;
    }
    if let Some(n) = a.checkpoint_every {
        say(format!("resuming with --checkpoint-every {n} (was {})", c.checkpoint_every));
        c.checkpoint_every = n;
    }
    Ok(())
}

fn describe(result: &train::EvalResult) -> String {
    if let Some(bits) = result.bits_per_masked_byte {
        return format!(
            "loss {:.4}, {bits:.3} bits per masked byte, accuracy {:.2} % of {} masked bytes",
            result.loss,
            100.0 * result.accuracy,
            result.tokens
        );
    }
    match (result.bits_per_byte, result.sequence_accuracy) {
        (Some(bpb), _) => format!("loss {:.4}, {bpb:.3} bits/byte over {} bytes", result.loss, result.tokens),
        (None, Some(seq)) => format!(
            "loss {:.4}, accuracy {:.2} % of {} tokens, {:.1} % of sequences exact",
            result.loss,
            100.0 * result.accuracy,
            result.tokens,
            100.0 * seq
        ),
        (None, None) => {
            format!("loss {:.4}, accuracy {:.2} % of {}", result.loss, 100.0 * result.accuracy, result.tokens)
        }
    }
}

/// The ranks of this run: MPI's world with the `mpi` feature (one process without `mpirun`),
/// else this process alone.
fn collective() -> Result<Box<dyn Collective>> {
    #[cfg(feature = "mpi")]
    return Ok(Box::new(perceiver::distributed::mpi_world::MpiWorld::init()?));
    #[cfg(not(feature = "mpi"))]
    Ok(Box::new(perceiver::distributed::Alone))
}

fn train_command(a: &TrainArgs, device: &tensor::Device) -> Result<bool> {
    let collective = collective()?;
    if collective.rank() > 0 {
        return train_follower(a, device, collective);
    }
    let setup = train_setup(a);
    // The other ranks wait for this: they start only if rank 0 could.
    if !collective.root_decides(setup.is_ok())? {
        return setup.map(|_| false);
    }
    let (mut trainer, run) = setup?;
    trainer.join(collective)?;
    train_leader(device, trainer, run)
}

/// A rank other than 0 of a data-parallel run: the same trainer as rank 0 (fresh from the same
/// options, or resumed from the same checkpoint), computing its share of each step; rank 0
/// logs, evaluates and writes.
fn train_follower(a: &TrainArgs, device: &tensor::Device, collective: Box<dyn Collective>) -> Result<bool> {
    let rank = collective.rank();
    if !collective.root_decides(false)? {
        return Err(perceiver::Error::Input(format!("rank {rank}: rank 0 could not start the run")));
    }
    let mut trainer = match &a.resume {
        Some(path) => {
            let (checkpoint, _) = perceiver::checkpoint::resolve(path)?;
            let mut trainer = Trainer::resume(&checkpoint)?;
            apply_resume_options(a, &mut trainer, |_| {})?;
            trainer
        }
        None => Trainer::new(train_config(a)?.0)?,
    };
    trainer.join(collective)?;
    trainer.to_device(device)?;
    train::run(&mut trainer, None, |_| {})?;
    Ok(true)
}

/// Rank 0's run directory and trainer: a fresh run, or a resumed one.
fn train_setup(a: &TrainArgs) -> Result<(Trainer, RunDir)> {
    Ok(match &a.resume {
        Some(path) => {
            // A run directory resumes in place; a checkpoint inside one resumes in its run.
            let home = if path.join("model.safetensors").exists() {
                path.ancestors().nth(2).unwrap_or(path).to_path_buf()
            } else {
                path.clone()
            };
            let same = |p: &Path| p.canonicalize().ok() == home.canonicalize().ok();
            let elsewhere = a.out.as_ref().filter(|out| !same(out));
            // The lock comes first: no other writer may move `latest` or prune while we read.
            let run = match elsewhere {
                // A new directory for the continued run, under the fresh-run rules.
                Some(out) => RunDir::create(out, a.overwrite)?,
                None => RunDir::resume(&home)?,
            };
            let (checkpoint, note) = perceiver::checkpoint::resolve(path)?;
            if let Some(note) = note {
                eprintln!("warning: {note}");
            }
            let mut trainer = Trainer::resume(&checkpoint)?;
            apply_resume_options(a, &mut trainer, |line| eprintln!("{line}"))?;
            run.forget_metrics_after(trainer.state.step)?;
            (trainer, run)
        }
        None => {
            let (config, out) = train_config(a)?;
            let trainer = Trainer::new(config)?;
            (trainer, RunDir::create(&out, a.overwrite)?)
        }
    })
}

/// Rank 0 (or the only process): trains with the progress bar, metrics, checkpoints and plot.
fn train_leader(device: &tensor::Device, mut trainer: Trainer, run: RunDir) -> Result<bool> {
    let out = run.path().to_path_buf();
    trainer.to_device(device)?;
    let c = &trainer.config;
    eprintln!(
        "{}, {}: {} parameters, {}, batch {}",
        c.task.describe(),
        c.model.family(),
        trainer.model.params().numel(),
        c.model.shape(),
        c.batch_size
    );
    let (_, ranks) = trainer.rank();
    if ranks > 1 {
        eprintln!(
            "data-parallel over {ranks} ranks: each computes {} or so rows of every batch",
            c.batch_size / ranks
        );
    }
    eprintln!("writing metrics, checkpoints and loss.svg to {}", out.display());
    let bar = ProgressBar::new(c.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(trainer.state.step);
    let metric = trainer.task.metric();
    // Lines go above the bar on a terminal, and to stderr as they are when there is no bar.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}")
        } else {
            bar.println(line)
        }
    };
    let mut smoothed: Option<f32> = None;
    let result = train::run(&mut trainer, Some(&run), |event| match event {
        Event::Step { stats, tokens_per_sec } => {
            let s = smoothed.map_or(stats.loss, |v| 0.95 * v + 0.05 * stats.loss);
            smoothed = Some(s);
            bar.set_position(stats.step);
            let shown = match metric {
                Metric::Bytes => format!("{:.3} bits/byte", s / std::f32::consts::LN_2),
                _ => format!("acc {:.1} %", 100.0 * stats.accuracy),
            };
            bar.set_message(format!("loss {s:.4} {shown} {:.1}k tok/s", tokens_per_sec / 1e3));
        }
        Event::Eval { step, result } => say(format!("step {step:>6} held out: {}", describe(result))),
        Event::Checkpoint { step, dir } => say(format!("step {step:>6} checkpoint {}", dir.display())),
        Event::Solved => say("held-out sequences all copied exactly: done".into()),
        Event::OutOfTime => say("time budget reached".into()),
    })?;
    bar.finish_and_clear();
    let svg = out.join("loss.svg");
    let title = match trainer.config.model.family() {
        "perceiver-ar" => "Perceiver AR training",
        "perceiver-io" => "Perceiver IO training (masked bytes)",
        "perceiver" => "Perceiver training (drawn shapes)",
        "sparse-transformer" => "Sparse Transformer training",
        _ => "Dense decoder training",
    };
    let drawn = perceiver::plot::loss_curve(&out.join("metrics.jsonl"), &svg, title)?;
    if let Some(r) = &result {
        println!(
            "final held out: {} (step {}, {:.0} s)",
            describe(r),
            trainer.state.step,
            trainer.state.elapsed_secs
        );
    }
    if drawn {
        println!("loss curve: {}", svg.display());
    } else {
        println!("no steps were run (the run is at step {} of {})", trainer.state.step, trainer.config.steps);
    }
    Ok(true)
}

/// `perceiver compare`: each run labelled by its model family and parameter count.
fn compare_command(runs: &[PathBuf], out: &Path, title: Option<&str>, solve_times: bool) -> Result<bool> {
    let mut labelled = Vec::new();
    let mut copy_runs = Vec::new();
    for run in runs {
        let ck = perceiver::checkpoint::load(run)?;
        let family = ck.config.model.family();
        if !solve_times {
            let params: usize = ck.params.values().map(|t| t.numel()).sum();
            labelled.push((format!("{family} ({:.2}M)", params as f64 / 1e6), run.clone()));
            continue;
        }
        let TaskConfig::Copy { k } = ck.config.task else {
            return Err(perceiver::Error::Input(format!(
                "{}: --solve-times compares copy-task runs, this one is {}",
                run.display(),
                ck.config.task.describe()
            )));
        };
        copy_runs.push(perceiver::plot::CopyRun { model: family.to_string(), k, dir: run.clone() });
    }
    if solve_times {
        let title = title.unwrap_or("The copy task: minutes until solved against bytes copied");
        for note in perceiver::plot::copy_solve_times(&copy_runs, out, title)? {
            println!("{note}");
        }
    } else {
        perceiver::plot::compare_runs(
            &labelled,
            out,
            title.unwrap_or("Held-out results against training time"),
        )?;
    }
    println!("{}", out.display());
    Ok(true)
}

/// Loads the model of a checkpoint or run, warning when its `latest` was unusable.
fn load_model(path: &Path) -> Result<(Model, TrainConfig)> {
    let (dir, note) = perceiver::checkpoint::resolve(path)?;
    if let Some(note) = note {
        eprintln!("warning: {note}");
    }
    train::load_model(&dir)
}

fn eval_command(a: &EvalArgs, device: &tensor::Device) -> Result<bool> {
    if perceiver::snapshot::is_snapshot(&a.checkpoint) {
        return eval_snapshot(a, device);
    }
    let (mut model, mut config) = load_model(&a.checkpoint)?;
    model.to_device(device)?;
    match (&a.data, config.task.data_path_mut()) {
        (Some(path), Some(p)) => *p = path.clone(),
        (Some(_), None) => {
            return Err(perceiver::Error::Input(format!(
                "--data: the {} reads no data file",
                config.task.describe()
            )))
        }
        (None, _) => {}
    }
    let task = train::Task::load(&config.task, &config.model)?;
    let reads_file = matches!(task.metric(), Metric::Bytes | Metric::MaskedBytes);
    if reads_file {
        // The whole held-out tail unless told otherwise.
        config.eval_batches = a.max_batches.unwrap_or(usize::MAX / config.batch_size.max(1));
    } else if let Some(n) = a.max_batches {
        config.eval_batches = n;
    }
    // Text defaults to the paper's stride, half the latents; the copy task has no stride.
    let latents = match config.model.sequence() {
        Some((_, max_latents)) => Some(a.latents.unwrap_or(max_latents)),
        None => a.latents,
    };
    let stride = match (a.stride, latents) {
        (Some(s), _) => Some(s),
        (None, Some(latents)) if task.is_text() => Some((latents / 2).max(1)),
        _ => None,
    };
    let batches = task.eval_batches(&config, latents, stride)?;
    let result = train::evaluate(&model, task.metric(), &batches)?;
    if a.json {
        let mut v = serde_json::to_value(&result).expect("serialisable");
        if let (Some(s), Some(obj)) = (stride, v.as_object_mut()) {
            obj.insert("stride".into(), s.into());
        }
        println!("{v}");
    } else {
        let stride = stride.map_or(String::new(), |s| format!(", stride {s}"));
        match latents {
            Some(latents) => println!("{latents} latents{stride}: {}", describe(&result)),
            None => println!("{}", describe(&result)),
        }
    }
    Ok(true)
}

/// What `generate` needs of a checkpoint: the model, how text becomes its tokens, and the
/// defaults of its kind.
struct Generation {
    model: perceiver::PerceiverAr,
    /// A snapshot's tokenizer; without one, tokens are bytes.
    tokenizer: Option<TextTokenizer>,
    /// The copy task's model: its prompt starts with BOS, and EOS ends the output.
    copy_task: bool,
    /// How a full pass splits a window of this length when `--latents` is not given.
    default_prefix_len: Box<dyn Fn(usize) -> usize>,
    default_rule: Rule,
}

/// What a checkpoint generates with.
enum Loaded {
    PerceiverAr(Box<Generation>),
    /// A Sparse Transformer or dense decoder; `copy_task` as in [`Generation`].
    Decoder {
        model: Box<perceiver::sparse_transformer::SparseTransformer>,
        copy_task: bool,
    },
}

/// A Hugging Face snapshot (by its files) or one of this project's checkpoints.
fn load_for_generation(path: &Path) -> Result<Loaded> {
    if perceiver::snapshot::is_snapshot(path) {
        let snap = perceiver::snapshot::load(path)?;
        let max_latents = snap.model.config.max_latents;
        return Ok(Loaded::PerceiverAr(Box::new(Generation {
            model: snap.model,
            tokenizer: snap.tokenizer,
            copy_task: false,
            default_prefix_len: Box::new(move |len| len - len.min(max_latents)),
            default_rule: Rule::Library,
        })));
    }
    let (model, config) = load_model(path)?;
    let copy_task = matches!(config.task, TaskConfig::Copy { .. });
    if let Model::SparseTransformer(model) = model {
        return Ok(Loaded::Decoder { model, copy_task });
    }
    let model = model.into_perceiver_ar("generate")?;
    let (task, model_config) = (config.task.clone(), model.config.clone());
    Ok(Loaded::PerceiverAr(Box::new(Generation {
        model,
        tokenizer: None,
        copy_task,
        default_prefix_len: Box::new(move |len| task.prefix_len(len, &model_config)),
        default_rule: Rule::Paper,
    })))
}

/// A Hugging Face snapshot on the whole of `--data`, tokenized by its tokenizer (bytes without
/// one), in strided windows of its context: loss and bits per token.
fn eval_snapshot(a: &EvalArgs, device: &tensor::Device) -> Result<bool> {
    let snap = perceiver::snapshot::load(&a.checkpoint)?;
    let mut model = snap.model;
    model.to_device(device)?;
    let path = a.data.as_ref().ok_or_else(|| {
        perceiver::Error::Input("evaluating a Hugging Face snapshot needs --data FILE (a text file)".into())
    })?;
    let data = perceiver::data::text::read_data_file(path)?;
    let text = String::from_utf8_lossy(&data);
    let tokens = match &snap.tokenizer {
        Some(t) => t.encode(&text)?,
        None => data.iter().map(|&b| usize::from(b)).collect(),
    };
    if tokens.len() < 2 {
        return Err(perceiver::Error::Data { path: path.clone(), message: "fewer than two tokens".into() });
    }
    let seq_len = model.config.max_seq_len.min(tokens.len() - 1);
    let latents = a.latents.unwrap_or(model.config.max_latents).min(seq_len);
    let stride = a.stride.unwrap_or((latents / 2).max(1));
    if stride > latents {
        return Err(perceiver::Error::Input(format!("--stride {stride} exceeds the {latents} latents")));
    }
    let max = a.max_batches.unwrap_or(usize::MAX);
    let windows = perceiver::data::text::TextData::eval_windows(&tokens, seq_len, latents, stride, max);
    let result = train::evaluate(&Model::PerceiverAr(Box::new(model)), Metric::Bytes, &windows)?;
    let bits = result.bits_per_byte.unwrap_or(f32::NAN);
    if a.json {
        let v = serde_json::json!({
            "loss": result.loss, "bits_per_token": bits, "accuracy": result.accuracy,
            "tokens": result.tokens, "latents": latents, "stride": stride,
        });
        println!("{v}");
    } else {
        println!(
            "{latents} latents, stride {stride}: loss {:.4}, {bits:.3} bits/token over {} tokens",
            result.loss, result.tokens
        );
    }
    Ok(true)
}

/// `generate` with a decoder (Sparse Transformer or dense decoder): through its key/value
/// cache, or a full pass per token with `--no-cache`.
fn generate_with_decoder(
    a: &GenerateArgs,
    device: &tensor::Device,
    mut model: Box<perceiver::sparse_transformer::SparseTransformer>,
    copy_task: bool,
) -> Result<bool> {
    let given = [("--latents", a.latents.is_some()), ("--rule", a.rule.is_some())];
    if let Some((option, _)) = given.iter().find(|(_, g)| *g) {
        return Err(perceiver::Error::Input(format!("{option} applies to Perceiver AR checkpoints only")));
    }
    model.params.to_device(device)?;
    let sampling = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    emit_generation(a, None, copy_task, |prompt, on_token| {
        perceiver::generate::generate_with_decoder(
            &model,
            prompt,
            a.tokens,
            sampling,
            a.seed,
            !a.no_cache,
            on_token,
        )
    })
}

/// Encodes the prompt, runs `run` on it, and prints the text as tokens arrive (and the JSON
/// object at the end with `--json`).
fn emit_generation(
    a: &GenerateArgs,
    tokenizer: Option<&TextTokenizer>,
    copy_task: bool,
    run: impl FnOnce(&[usize], &mut dyn FnMut(usize)) -> Result<Vec<usize>>,
) -> Result<bool> {
    let mut prompt = match tokenizer {
        Some(t) => t.encode(&a.prompt)?,
        None => a.prompt.bytes().map(usize::from).collect(),
    };
    if copy_task {
        prompt.insert(0, copy::BOS);
    }
    // Text is printed as it is generated; a closed pipe (`| head`) ends the program quietly,
    // like other command-line tools.
    let mut out = TextOut { tokenizer, ids: prompt.clone(), shown: String::new(), ended: false };
    out.show()?;
    let mut failure = None;
    let tokens = run(&prompt, &mut |t| {
        if failure.is_none() {
            failure = out.push(t, copy_task).err();
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    println!();
    if a.json {
        let v = serde_json::json!({ "output_ids": tokens, "output_text": out.text()? });
        println!("{v}");
    }
    Ok(true)
}

fn generate_command(a: &GenerateArgs, device: &tensor::Device) -> Result<bool> {
    let loaded = load_for_generation(&a.checkpoint)?;
    let Generation { mut model, tokenizer, copy_task, default_prefix_len, default_rule } = match loaded {
        Loaded::PerceiverAr(g) => *g,
        Loaded::Decoder { model, copy_task } => return generate_with_decoder(a, device, model, copy_task),
    };
    model.to_device(device)?;
    let context = model.config.max_seq_len;
    if let Some(m) = a.latents.filter(|&m| m > context) {
        return Err(perceiver::Error::Input(format!(
            "--latents {m} exceeds the model's context of {context}"
        )));
    }
    // Without the cache: split windows as training did, or with the latents asked for.
    let split = |len: usize| match a.latents {
        Some(m) => len - len.min(m),
        None => default_prefix_len(len),
    };
    let prediction = match (a.no_cache, a.rule.unwrap_or(default_rule)) {
        (true, _) => Prediction::Full { prefix_len: &split },
        (false, Rule::Paper) => Prediction::Cached { latents: a.latents.unwrap_or(model.config.max_latents) },
        (false, Rule::Library) => Prediction::Library { latents: a.latents.unwrap_or(1) },
    };
    let sampling = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    emit_generation(a, tokenizer.as_ref(), copy_task, |prompt, on_token| {
        generate(&model, prompt, a.tokens, sampling, a.seed, prediction, on_token)
    })
}

/// Generated text on its way to stdout: ids decoded by the tokenizer (the whole sequence each
/// time, printing what was added) or bytes.
struct TextOut<'a> {
    tokenizer: Option<&'a TextTokenizer>,
    ids: Vec<usize>,
    shown: String,
    /// The copy task's EOS was generated: nothing after it is text.
    ended: bool,
}

impl TextOut<'_> {
    fn text(&self) -> Result<String> {
        match self.tokenizer {
            Some(t) => t.decode(&self.ids),
            None => {
                let bytes: Vec<u8> = self.ids.iter().filter(|&&t| t < 256).map(|&t| t as u8).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    fn push(&mut self, token: usize, copy_task: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if copy_task && token == copy::EOS {
            self.ended = true;
            return Ok(());
        }
        self.ids.push(token);
        self.show()
    }

    /// Prints what the text gained since last time.
    fn show(&mut self) -> Result<()> {
        let text = self.text()?;
        // A piece of a multi-byte character or a token that merges with the next can change
        // the text's end; print once the text extends what was shown.
        if let Some(new) = text.strip_prefix(self.shown.as_str()) {
            let mut stdout = std::io::stdout();
            if stdout.write_all(new.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                std::process::exit(0);
            }
            self.shown = text;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: --threads {n}: {e}");
            return ExitCode::FAILURE;
        }
    }
    run(&cli)
}

fn run(cli: &Cli) -> ExitCode {
    let device = match perceiver::devices::parse(&cli.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<bool> = match &cli.command {
        Command::Train(a) => train_command(a, &device),
        Command::Eval(a) => eval_command(a, &device),
        Command::Generate(a) => generate_command(a, &device),
        Command::Bench(a) => bench_command(a, &device),
        Command::Compare { runs, out, title, solve_times } => {
            compare_command(runs, out, title.as_deref(), *solve_times)
        }
        Command::Devices => perceiver::devices::describe().map(|lines| {
            lines.iter().for_each(|l| println!("{l}"));
            true
        }),
        Command::Verify { dir } => perceiver::verify::verify_dump(dir).map(|report| {
            println!("{report}");
            report.passed()
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("verification failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
