//! `resnet`: train, evaluate and inspect the ResNets of He et al. (2015) on CPUs.

mod bench;
mod classify;
#[cfg(feature = "mpi")]
mod cluster;
mod convert;
mod data_cmd;
mod eval;
mod fsutil;
mod info;
mod load;
mod metrics;
mod plot;
mod reproduce;
mod train;

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
    /// Train a ResNet on CIFAR-10 with the paper's recipe.
    Train(train::TrainArgs),
    /// Download data sets.
    Data(data_cmd::DataArgs),
    /// Reproduce the paper's CIFAR-10 Figure 6 or Table 6: train the set of nets (resumable),
    /// then draw the figure and write the table beside the paper's numbers.
    Reproduce(reproduce::ReproduceArgs),
    /// Overlay the training curves of several runs in one SVG.
    Plot(plot::PlotArgs),
    /// Print a model's layer table: output shapes, parameters, multiply-adds.
    Info(info::InfoArgs),
    /// Top-k classes of images with trained weights.
    Classify(classify::ClassifyArgs),
    /// Accuracy, per-class accuracy and confusion matrix of weights on a data set.
    Eval(eval::EvalArgs),
    /// Throughput of inference or training steps on random data.
    Bench(bench::BenchArgs),
    /// Convert weights (PyTorch checkpoints, safetensors) to our self-describing safetensors.
    Convert(convert::ConvertArgs),
    /// Under mpirun: the time of an allreduce across the ranks, against message size.
    #[cfg(feature = "mpi")]
    MpiBench(cluster::MpiBenchArgs),
}

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`resnet info ... | head -1`)
    // would panic; restore the default, which ends the process quietly as other
    // command-line tools do.
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any thread exists; `signal` with
    // `SIG_DFL` installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line: what failed, then why.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::Data(args) => data_cmd::run(args),
        Command::Info(args) => info::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Bench(args) => bench::run(args),
        #[cfg(feature = "mpi")]
        Command::MpiBench(args) => cluster::bench(args),
    }
}
