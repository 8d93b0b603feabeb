//! `resnet data fetch cifar10`: download, verify and extract the official CIFAR-10 binary data.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use resnet::fetch::{fetch_cifar10, FetchOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `resnet data`.
#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a data set (resuming a partial download), verify its checksum, extract it.
    Fetch(FetchArgs),
}

#[derive(Args)]
struct FetchArgs {
    /// Data set name; only cifar10 is known.
    name: String,
    /// Folder to put the archive and the extracted files in.
    #[arg(long, default_value = "data")]
    dir: PathBuf,
    /// Download from this address instead of the official one (a mirror).
    #[arg(long)]
    url: Option<String>,
    /// Expected MD5 of the archive when --url points at a different file.
    #[arg(long)]
    md5: Option<String>,
    /// Seconds to wait for the connection and for each read.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Runs `resnet data ...`.
pub fn run(args: DataArgs) -> Result<()> {
    let DataCommand::Fetch(f) = args.command;
    if f.name != "cifar10" {
        bail!("unknown data set \"{}\"; known: cifar10", f.name);
    }
    let mut opts = FetchOptions::cifar10(&f.dir);
    if let Some(url) = f.url {
        opts.url = url;
    }
    if let Some(md5) = f.md5 {
        opts.md5 = md5;
    }
    opts.timeout = Duration::from_secs(f.timeout);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("downloading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let dir = fetch_cifar10(&opts, &mut |done, total| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let dir = dir?;
    println!("CIFAR-10 is ready in {}", dir.display());
    Ok(())
}
