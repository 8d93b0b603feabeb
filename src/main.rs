//! `resnet`: train, evaluate and inspect the ResNets of He et al. (2015) on CPUs.

mod classify;
mod convert;
mod eval;
mod fsutil;
mod info;
mod load;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "resnet",
    version,
    about = "Train and run the ResNets of He et al. (2015) on CPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's layer table: output shapes, parameters, multiply-adds.
    Info(info::InfoArgs),
    /// Top-k classes of images with trained weights.
    Classify(classify::ClassifyArgs),
    /// Accuracy, per-class accuracy and confusion matrix of weights on a data set.
    Eval(eval::EvalArgs),
    /// Convert weights (PyTorch checkpoints, safetensors) to our self-describing safetensors.
    Convert(convert::ConvertArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Convert(args) => convert::run(args),
    }
}
