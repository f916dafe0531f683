//! The `perceiver` command: train, evaluate, sample and verify Perceiver AR models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "perceiver",
    version,
    about = "Train, evaluate, sample and verify Perceiver AR models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a perceiver-io reference dump and compare logits, loss, gradients and greedy tokens.
    Verify {
        /// Directory with config.json, model.safetensors and case.safetensors.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify { dir } => perceiver::verify::verify_dump(&dir).map(|report| {
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
