//! `resnet`: train, evaluate and inspect the ResNets of He et al. (2015) on CPUs.

mod info;

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info(args) => info::run(args),
    }
}
