//! `resnet eval`: accuracy of weights on a data set.

use crate::load::{load_classifier, open_data_with, progress_bar, WeightArgs};
use anyhow::{bail, Result};
use clap::Args;
use resnet_core::data::cifar::Split;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `resnet eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Weights: our safetensors or a PyTorch checkpoint (.pth, .pt, .th).
    #[arg(long)]
    weights: PathBuf,
    /// A CIFAR-10 binary folder or tarball, or an image folder (ROOT/test/<class>/*).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    load: WeightArgs,
    /// Which split to evaluate.
    #[arg(long, default_value = "test", value_parser = ["test", "train"])]
    split: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Evaluates and prints the figures.
pub fn run(args: EvalArgs) -> Result<()> {
    let mut model = load_classifier(&args.weights, &args.load)?;
    let split = if args.split == "train" {
        Split::Train
    } else {
        Split::Test
    };
    // Image folders of any image size: each image gets the model's resize and crop.
    let fit = |img| model.fit_image(img);
    let data = open_data_with(&args.data, split, Some(&fit), args.quiet || args.json)?;
    if data.is_empty() {
        bail!("the data set at {} is empty", args.data.display());
    }
    if data.classes != model.classes[..data.classes.len().min(model.classes.len())] {
        eprintln!(
            "warning: the data set's classes ({}) differ from the model's ({}); labels are compared by index",
            data.classes.join(", "),
            model.classes.join(", ")
        );
    }
    let bar = progress_bar(data.len(), "evaluating", args.quiet || args.json);
    let start = Instant::now();
    let eval = model.evaluate(&data, args.batch, &mut |done, _| bar.set_position(done as u64))?;
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let per_class = eval.per_class();
    let top1 = eval.top1 as f64 / eval.total as f64;
    let top5 = eval.top5 as f64 / eval.total as f64;
    if args.json {
        let doc = serde_json::json!({
            "model": model.config().name,
            "images": eval.total,
            "top1": top1,
            "top5": top5,
            "loss": eval.loss,
            "per_class": model.classes.iter().zip(&per_class).map(|(c, a)| serde_json::json!({"class": c, "accuracy": a})).collect::<Vec<_>>(),
            "confusion": eval.confusion,
            "images_per_second": eval.total as f64 / secs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{} on {} images of {}",
        model.config().name,
        eval.total,
        args.data.display()
    );
    println!(
        "top-1 {:.2} %   top-5 {:.2} %   loss {:.4}",
        100.0 * top1,
        100.0 * top5,
        eval.loss
    );
    println!("{:.0} images/s ({secs:.1} s)", eval.total as f64 / secs);
    let shown = model.classes.len().min(20);
    println!(
        "\nper-class top-1 and confusion (rows: true class, columns: predicted){}:",
        if shown < model.classes.len() {
            " for the first 20 classes"
        } else {
            ""
        }
    );
    let w = model.classes[..shown].iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    print!("{:<w$} {:>7}", "class", "acc %");
    for i in 0..shown {
        print!(" {i:>5}");
    }
    println!();
    for (i, class) in model.classes[..shown].iter().enumerate() {
        print!("{class:<w$} {:>7.2}", 100.0 * per_class[i]);
        for j in 0..shown {
            print!(" {:>5}", eval.confusion[i][j]);
        }
        println!();
    }
    Ok(())
}
