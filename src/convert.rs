//! `resnet convert`: any weights the engine reads into our self-describing safetensors.

use crate::load::{load_classifier, WeightArgs};
use anyhow::{Context, Result};
use clap::Args;
use resnet_core::data::augment::Normalization;
use std::path::PathBuf;

/// Arguments of `resnet convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Input weights: our safetensors or a PyTorch checkpoint (.pth, .pt, .th).
    input: PathBuf,
    /// Output file (.safetensors).
    output: PathBuf,
    #[command(flatten)]
    load: WeightArgs,
}

/// Converts and writes atomically.
pub fn run(args: ConvertArgs) -> Result<()> {
    let model = load_classifier(&args.input, &args.load)?;
    let bytes = model.to_safetensors()?;
    crate::fsutil::write_atomic(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let params = model.params.param_count();
    let c = model.config();
    let norm = match &model.normalization {
        Normalization::PerChannel { mean, std } => format!("mean {mean:?} std {std:?}"),
        Normalization::PerPixelMean { .. } => "per-pixel mean image".to_string(),
    };
    println!(
        "{}: {} ({:?} shortcuts, {} stages {:?}, {} classes, {} parameters), preprocessing {norm}",
        args.output.display(),
        c.name,
        c.shortcut,
        c.stage_blocks.len(),
        c.stage_blocks,
        c.num_classes,
        params
    );
    Ok(())
}
