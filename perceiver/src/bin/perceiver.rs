//! The `perceiver` command: train, evaluate, sample and verify Perceiver AR models.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nn::optim::{AdamWConfig, Decay, Schedule};
use perceiver::config::{AbsolutePositions, CrossAttendDropout};
use perceiver::data::copy;
use perceiver::generate::{generate, Sampling};
use perceiver::train::{self, Event, TaskConfig, TrainConfig, Trainer};
use perceiver::{PerceiverArConfig, Result};

#[derive(Parser)]
#[command(name = "perceiver", version, about = "Train, evaluate, sample and verify Perceiver AR models")]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true)]
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
    Train(TrainArgs),
    /// Evaluate a checkpoint on held-out data.
    Eval(EvalArgs),
    /// Sample a continuation of a prompt from a checkpoint.
    Generate(GenerateArgs),
    /// List the devices this build can compute on.
    Devices,
    /// Load a perceiver-io reference dump and compare logits, loss, gradients and greedy tokens.
    Verify {
        /// Directory with config.json, model.safetensors and case.safetensors.
        dir: PathBuf,
    },
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

#[derive(Args)]
struct TrainArgs {
    /// A text file to model byte by byte (default: the copy task).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Copy task: number of random bytes to mirror.
    #[arg(long, default_value_t = 16)]
    copy_bytes: usize,
    #[arg(long, value_enum, default_value_t = Variant::PerceiverIo)]
    variant: Variant,
    /// Absolute position information added to the embeddings (default: the variant's).
    #[arg(long, value_enum)]
    positions: Option<Positions>,
    /// Model width.
    #[arg(long)]
    channels: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    /// Self-attention layers after the cross-attention.
    #[arg(long)]
    layers: Option<usize>,
    /// Latents (queries of the cross-attention) in training.
    #[arg(long)]
    latents: Option<usize>,
    /// Longest input (prefix + latents).
    #[arg(long)]
    context: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after this many minutes of training.
    #[arg(long)]
    minutes: Option<f64>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    warmup: Option<u64>,
    /// Fraction of prefix positions dropped from the cross-attention in training.
    #[arg(long)]
    cross_dropout: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Output directory (metrics, checkpoints, loss curve).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this directory (or checkpoint) exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint directory or a run directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate with this many latents (default: the training latents).
    #[arg(long)]
    latents: Option<usize>,
    /// The text file, if it moved since training.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate at most this many batches (default: all held-out text, the training's copy batches).
    #[arg(long)]
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
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The run configuration from the command line: the task's preset, then any overrides.
fn train_config(a: &TrainArgs) -> Result<(TrainConfig, PathBuf)> {
    let text = a.data.is_some();
    // Presets: a copy-task model that solves k = 16 in minutes; a text model for ~15 minutes.
    let (vocab, context, latents, channels, heads, layers) = if text {
        (perceiver::data::text::VOCAB, 256, 64, 192, 6, 3)
    } else {
        let task = copy::CopyTask { k: a.copy_bytes };
        (copy::VOCAB, task.seq_len(), task.min_latents(), 128, 4, 2)
    };
    let (context, latents) = (a.context.unwrap_or(context), a.latents.unwrap_or(latents));
    let (channels, heads, layers) =
        (a.channels.unwrap_or(channels), a.heads.unwrap_or(heads), a.layers.unwrap_or(layers));
    let mut model = match a.variant {
        Variant::PerceiverIo => {
            PerceiverArConfig::perceiver_io(vocab, context, latents, channels, heads, layers)
        }
        Variant::Paper => PerceiverArConfig::paper(vocab, context, latents, channels, heads, layers),
    };
    if let Some(p) = a.positions {
        model.absolute_positions = match p {
            Positions::None => AbsolutePositions::None,
            Positions::Learned => AbsolutePositions::Learned,
            Positions::Sinusoidal => AbsolutePositions::Sinusoidal,
        };
    }
    model.cross_attend_dropout = a.cross_dropout.unwrap_or(if text { 0.1 } else { 0.0 });
    if model.cross_attend_dropout_kind == CrossAttendDropout::Bernoulli && a.cross_dropout.is_none() {
        model.cross_attend_dropout = 0.0;
    }
    let steps = a.steps.unwrap_or(3000);
    let lr = a.lr.unwrap_or(if text { 2e-3 } else { 1e-3 });
    let task = match &a.data {
        Some(path) => {
            TaskConfig::Text { path: path.clone(), valid_fraction: 0.1, min_len: (context / 4).max(1) }
        }
        None => TaskConfig::Copy { k: a.copy_bytes },
    };
    let config = TrainConfig {
        task,
        model,
        batch_size: a.batch.unwrap_or(if text { 16 } else { 32 }),
        steps,
        time_budget_secs: a.minutes.or(text.then_some(14.0)).map(|m| m * 60.0),
        schedule: Schedule {
            peak: lr,
            warmup: a.warmup.unwrap_or(100),
            total: steps,
            decay: Decay::Cosine,
            min_ratio: 0.1,
        },
        adamw: AdamWConfig { weight_decay: 0.01, ..Default::default() },
        clip: Some(1.0),
        z_loss: 1e-4,
        eval_every: a.eval_every.unwrap_or(if text { 250 } else { 100 }),
        eval_batches: if text { 8 } else { 4 },
        checkpoint_every: a.checkpoint_every.unwrap_or(500),
        stop_when_solved: !text,
        seed: a.seed,
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(if text { "runs/text" } else { "runs/copy" }));
    Ok((config, out))
}

fn describe(result: &train::EvalResult) -> String {
    match (result.bits_per_byte, result.sequence_accuracy) {
        (Some(bpb), _) => format!("loss {:.4}, {bpb:.3} bits/byte over {} bytes", result.loss, result.tokens),
        (None, Some(seq)) => format!(
            "loss {:.4}, accuracy {:.2} % of {} tokens, {:.1} % of sequences exact",
            result.loss,
            100.0 * result.accuracy,
            result.tokens,
            100.0 * seq
        ),
        (None, None) => format!("loss {:.4}, accuracy {:.2} %", result.loss, 100.0 * result.accuracy),
    }
}

fn train_command(a: &TrainArgs, device: &tensor::Device) -> Result<bool> {
    let (mut trainer, out) = match &a.resume {
        Some(dir) => {
            let trainer = Trainer::resume(dir)?;
            let out = a.out.clone().unwrap_or_else(|| {
                // A run directory resumes in place; a checkpoint inside one resumes in its run.
                if dir.join("latest").exists() {
                    dir.clone()
                } else {
                    dir.ancestors().nth(2).unwrap_or(dir).to_path_buf()
                }
            });
            (trainer, out)
        }
        None => {
            let (config, out) = train_config(a)?;
            (Trainer::new(config)?, out)
        }
    };
    trainer.to_device(device)?;
    if a.resume.is_some() {
        // Resuming can extend a run: more steps (the schedule stretches to them) or more time.
        if let Some(steps) = a.steps {
            trainer.config.steps = steps;
            trainer.config.schedule.total = steps;
        }
        if let Some(minutes) = a.minutes {
            trainer.config.time_budget_secs = Some(trainer.state.elapsed_secs + minutes * 60.0);
        }
    }
    let c = &trainer.config;
    eprintln!(
        "{}: {} parameters, context {}, {} latents, {} channels, {} heads, {} self-attention layers, batch {}",
        match &c.task {
            TaskConfig::Copy { k } => format!("copy task (k = {k})"),
            TaskConfig::Text { path, .. } => format!("text {}", path.display()),
        },
        trainer.model.params.numel(),
        c.model.max_seq_len,
        c.model.max_latents,
        c.model.channels,
        c.model.heads,
        c.model.self_attention_layers,
        c.batch_size
    );
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
    let is_text = trainer.task.is_text();
    // Lines go above the bar on a terminal, and to stderr as they are when there is no bar.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}")
        } else {
            bar.println(line)
        }
    };
    let mut smoothed: Option<f32> = None;
    let result = train::run(&mut trainer, &out, |event| match event {
        Event::Step { stats, tokens_per_sec } => {
            let s = smoothed.map_or(stats.loss, |v| 0.95 * v + 0.05 * stats.loss);
            smoothed = Some(s);
            bar.set_position(stats.step);
            let metric = if is_text {
                format!("{:.3} bits/byte", s / std::f32::consts::LN_2)
            } else {
                format!("acc {:.1} %", 100.0 * stats.accuracy)
            };
            bar.set_message(format!("loss {s:.4} {metric} {:.1}k tok/s", tokens_per_sec / 1e3));
        }
        Event::Eval { step, result } => say(format!("step {step:>6} held out: {}", describe(result))),
        Event::Checkpoint { step, dir } => say(format!("step {step:>6} checkpoint {}", dir.display())),
        Event::Solved => say("held-out sequences all copied exactly: done".into()),
        Event::OutOfTime => say("time budget reached".into()),
    })?;
    bar.finish_and_clear();
    let svg = out.join("loss.svg");
    perceiver::plot::loss_curve(&out.join("metrics.jsonl"), &svg, "Perceiver AR training")?;
    if let Some(r) = &result {
        println!(
            "final held out: {} (step {}, {:.0} s)",
            describe(r),
            trainer.state.step,
            trainer.state.elapsed_secs
        );
    }
    println!("loss curve: {}", svg.display());
    Ok(true)
}

fn eval_command(a: &EvalArgs, device: &tensor::Device) -> Result<bool> {
    let (mut model, mut config) = train::load_model(&a.checkpoint)?;
    model.to_device(device)?;
    if let (Some(path), TaskConfig::Text { path: p, .. }) = (&a.data, &mut config.task) {
        *p = path.clone();
    }
    let task = train::Task::load(&config.task, &config.model)?;
    let latents = a.latents.unwrap_or(config.model.max_latents);
    if task.is_text() {
        // The whole held-out tail unless told otherwise.
        config.eval_batches = a.max_batches.unwrap_or(usize::MAX / config.batch_size.max(1));
    } else if let Some(n) = a.max_batches {
        config.eval_batches = n;
    }
    let batches = task.eval_batches(&config, latents)?;
    let result = train::evaluate(&model, &task, &batches)?;
    if a.json {
        println!("{}", serde_json::to_string(&result).expect("serialisable"));
    } else {
        println!("{} latents: {}", latents, describe(&result));
    }
    Ok(true)
}

fn generate_command(a: &GenerateArgs, device: &tensor::Device) -> Result<bool> {
    let (mut model, config) = train::load_model(&a.checkpoint)?;
    model.to_device(device)?;
    let copy_task = matches!(config.task, TaskConfig::Copy { .. });
    // Split windows into prefix and latents as training did (the text file is not needed).
    let split = |len: usize| config.task.prefix_len(len, &config.model);
    let mut prompt: Vec<usize> = a.prompt.bytes().map(usize::from).collect();
    if copy_task {
        prompt.insert(0, copy::BOS);
    }
    let sampling = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    let mut stdout = std::io::stdout();
    if stdout.write_all(a.prompt.as_bytes()).is_err() {
        std::process::exit(0);
    }
    let mut ended = false;
    generate(&model, &prompt, a.tokens, sampling, a.seed, &split, |t| {
        if ended {
            return;
        }
        if t < 256 {
            // A closed pipe (`| head`) ends the program quietly, like other command-line tools.
            if stdout.write_all(&[t as u8]).and_then(|_| stdout.flush()).is_err() {
                std::process::exit(0);
            }
        } else if t == copy::EOS {
            ended = true;
        }
    })?;
    let _ = writeln!(stdout);
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global() {
            eprintln!("error: --threads {n}: {e}");
            return ExitCode::FAILURE;
        }
    }
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
