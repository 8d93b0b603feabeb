//! What several subcommands share: loading weights with the user's overrides, opening
//! data sets with a progress bar, parsing `R,G,B` triples.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use resnet_core::classifier::{Classifier, LoadOptions};
use resnet_core::data::cifar::Split;
use resnet_core::data::folder::ImageFit;
use resnet_core::data::open::open_dataset_with;
use resnet_core::data::Dataset;
use resnet_core::model::ShortcutOption;
use std::path::Path;

/// Options for loading weights, shared by `classify`, `eval` and `convert`.
#[derive(Args, Clone, Debug)]
pub struct WeightArgs {
    /// Zoo name (resnet20, plain20, resnet50, ...) instead of the architecture in or inferred from the file.
    #[arg(long)]
    pub model: Option<String>,
    /// Shortcut option instead of the file's or inferred one.
    #[arg(long)]
    pub shortcut: Option<ShortcutOption>,
    /// Channel means in [0, 1] units, e.g. 0.485,0.456,0.406 (needs --std).
    #[arg(long, value_parser = parse_triple, requires = "std")]
    pub mean: Option<[f32; 3]>,
    /// Channel standard deviations in [0, 1] units, e.g. 0.229,0.224,0.225 (needs --mean).
    #[arg(long, value_parser = parse_triple, requires = "mean")]
    pub std: Option<[f32; 3]>,
}

/// Parses `a,b,c` into three floats.
pub fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("expected three numbers like 0.485,0.456,0.406, found \"{s}\": {e}"))?;
    <[f32; 3]>::try_from(v).map_err(|v| format!("expected three numbers, found {}", v.len()))
}

/// Reads and loads a weight file (our safetensors or a PyTorch checkpoint).
pub fn load_classifier(path: &Path, args: &WeightArgs) -> Result<Classifier> {
    let opts = LoadOptions {
        model: args.model.clone(),
        shortcut: args.shortcut,
        mean_std: args.mean.zip(args.std),
    };
    let bytes = std::fs::read(path).with_context(|| format!("cannot read weights {}", path.display()))?;
    Classifier::load_owned(bytes, &opts).with_context(|| format!("cannot load {}", path.display()))
}

/// A progress bar with a rate and ETA, hidden when `quiet`.
pub fn progress_bar(total: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Opens split `split` of the data set at `path`, showing decoding progress.
pub fn open_data(path: &Path, split: Split, quiet: bool) -> Result<Dataset> {
    open_data_with(path, split, None, quiet)
}

/// [`open_data`] with image-folder images fitted to a model's input first.
pub fn open_data_with(path: &Path, split: Split, fit: Option<ImageFit>, quiet: bool) -> Result<Dataset> {
    if !path.exists() {
        bail!(
            "no data set at {} (expected a CIFAR-10 binary folder or tarball, or an image folder)",
            path.display()
        );
    }
    let bar = progress_bar(0, "decoding", quiet);
    let data = open_dataset_with(path, split, fit, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("cannot load {}", path.display()))?;
    bar.finish_and_clear();
    Ok(data)
}
