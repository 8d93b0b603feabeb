//! `resnet info`: the layer table of a zoo model.

use anyhow::Result;
use clap::Args;
use resnet_core::model::{Arch, ResNetConfig, ShortcutOption};

/// Arguments of `resnet info`.
#[derive(Args)]
pub struct InfoArgs {
    /// Model name, e.g. resnet20, resnet50, plain34.
    #[arg(long)]
    model: String,
    /// Shortcut option of section 3.3 (default: A for CIFAR nets, B for ImageNet nets).
    #[arg(long)]
    shortcut: Option<ShortcutOption>,
    /// Input side in pixels (default: 32 for CIFAR nets, 224 for ImageNet nets).
    #[arg(long)]
    size: Option<usize>,
    /// Number of classes (default: 10 for CIFAR nets, 1000 for ImageNet nets).
    #[arg(long)]
    classes: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the table.
pub fn run(args: InfoArgs) -> Result<()> {
    let mut config = ResNetConfig::named(&args.model)?;
    if let Some(s) = args.shortcut {
        config = config.with_shortcut(s);
    }
    if let Some(c) = args.classes {
        config = config.with_classes(c);
    }
    let size = args.size.unwrap_or(config.input_size);
    let rows = Arch::of(&config)?.layer_table(size, size)?;
    let params: usize = rows.iter().map(|r| r.params).sum();
    let macs: u64 = rows.iter().map(|r| r.macs).sum();
    if args.json {
        let doc = serde_json::json!({
            "model": config.name,
            "config": config,
            "input": [config.in_channels, size, size],
            "layers": rows,
            "total_params": params,
            "total_macs": macs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{} ({:?} shortcuts{}), input {}x{}x{}, {} classes",
        config.name,
        config.shortcut,
        if config.residual { "" } else { ", plain: no shortcuts" },
        config.in_channels,
        size,
        size,
        config.num_classes
    );
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(5);
    let kind_w = rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<name_w$}  {:<kind_w$}  {:>14}  {:>10}  {:>14}",
        "layer", "kind", "output", "params", "mult-adds"
    );
    for r in &rows {
        let shape = format!("{}x{}x{}", r.output[0], r.output[1], r.output[2]);
        println!(
            "{:<name_w$}  {:<kind_w$}  {:>14}  {:>10}  {:>14}",
            r.name,
            r.kind,
            shape,
            group(r.params as u64),
            group(r.macs)
        );
    }
    println!(
        "total: {} parameters, {} multiply-adds per image ({:.1} M)",
        group(params as u64),
        group(macs),
        macs as f64 / 1e6
    );
    Ok(())
}

/// `1234567` as `1,234,567`.
fn group(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
