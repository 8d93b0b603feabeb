//! `resnet classify`: top-k classes of image files.

use crate::load::{load_classifier, WeightArgs};
use anyhow::{Context, Result};
use clap::Args;
use resnet_core::data::image::decode_image;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `resnet classify`.
#[derive(Args)]
pub struct ClassifyArgs {
    /// Weights: our safetensors or a PyTorch checkpoint (.pth, .pt, .th).
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    load: WeightArgs,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// JPEG or PNG files of any size.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// Classifies the images one at a time (each decoded, classified and dropped before
/// the next is read, so memory holds one image whatever their number), printing each
/// result as it comes; `--json` prints them together at the end.
pub fn run(args: ClassifyArgs) -> Result<()> {
    let mut model = load_classifier(&args.weights, &args.load)?;
    let start = Instant::now();
    let mut doc = Vec::new();
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let image = decode_image(&bytes, &path.display().to_string())?;
        drop(bytes);
        let preds = model
            .classify(std::slice::from_ref(&image), args.top)
            .with_context(|| format!("cannot classify {}", path.display()))?
            .pop()
            .unwrap_or_default();
        if args.json {
            doc.push(serde_json::json!({
                "image": path.display().to_string(),
                "predictions": preds.iter().map(|p| serde_json::json!({
                    "index": p.index, "label": p.label, "probability": p.probability
                })).collect::<Vec<_>>(),
            }));
        } else {
            println!("{}", path.display());
            for p in &preds {
                println!("  {:>7.3} %  {} ({})", 100.0 * p.probability, p.label, p.index);
            }
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"results": doc, "milliseconds": ms}))?
        );
    } else {
        println!(
            "{} image(s) with {} in {ms:.1} ms",
            args.images.len(),
            model.config().name
        );
    }
    Ok(())
}
