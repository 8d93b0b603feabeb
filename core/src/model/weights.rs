//! Weights by name: a network's tensors to and from a [`TensorFile`], the name mapping
//! that lets checkpoints of other implementations load (DataParallel's `module.`, the
//! CIFAR re-implementations' `linear` and `shortcut`), and inferring the architecture
//! from the names and shapes alone.

use super::config::{BlockKind, BottleneckStride, ResNetConfig, ShortcutOption, Stem};
use crate::io::TensorFile;
use crate::{Error, Result};

/// Name of the per-pixel mean image tensor that our files carry beside the weights.
pub const MEAN_IMAGE: &str = "preprocess.mean_image";

/// Rewrites names from other implementations to ours (torchvision's): drops a common
/// `module.` / `model.` prefix, renames `linear` to `fc` and `shortcut.N` to
/// `downsample.N`, and removes `num_batches_tracked` counters.
pub fn canonicalize_names(file: &mut TensorFile) {
    for prefix in ["module.", "model.", "net."] {
        if !file.tensors.is_empty() && file.tensors.iter().all(|t| t.name.starts_with(prefix)) {
            for t in &mut file.tensors {
                t.name = t.name[prefix.len()..].to_string();
            }
        }
    }
    file.tensors.retain(|t| !t.name.ends_with("num_batches_tracked"));
    for t in &mut file.tensors {
        if let Some(rest) = t.name.strip_prefix("linear.") {
            t.name = format!("fc.{rest}");
        }
        if t.name.contains(".shortcut.") {
            t.name = t.name.replace(".shortcut.", ".downsample.");
        }
    }
}

fn shape_of<'a>(file: &'a TensorFile, name: &str) -> Option<&'a [usize]> {
    file.get(name).map(|t| &t.shape[..])
}

/// Infers the architecture from tensor names and shapes (after [`canonicalize_names`]):
/// stem, block kind, blocks and widths per stage, shortcut option, classes. Files without
/// shortcut parameters cannot tell option A from a plain net; they are taken as option A.
pub fn infer_config(file: &TensorFile) -> Result<ResNetConfig> {
    let need = |name: &str| -> Result<&[usize]> {
        shape_of(file, name).ok_or_else(|| {
            Error::Load(format!(
                "cannot infer the architecture: no tensor \"{name}\" (found {} tensors, e.g. {})",
                file.len(),
                file.tensors
                    .iter()
                    .take(3)
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let conv1 = need("conv1.weight")?;
    let fc = need("fc.weight")?;
    if conv1.len() != 4 || fc.len() != 2 {
        return Err(Error::Load(format!(
            "conv1.weight must be 4-D and fc.weight 2-D, found {conv1:?} and {fc:?}"
        )));
    }
    let stem = match conv1[2] {
        3 => Stem::Cifar,
        7 => Stem::ImageNet,
        k => {
            return Err(Error::Load(format!(
                "conv1.weight has a {k}x{k} kernel; expected 3x3 (CIFAR) or 7x7 (ImageNet)"
            )))
        }
    };
    let block = if shape_of(file, "layer1.0.conv3.weight").is_some() {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let mut stage_blocks = Vec::new();
    let mut stage_widths = Vec::new();
    for stage in 1.. {
        let first = format!("layer{stage}.0.conv1.weight");
        let Some(shape) = shape_of(file, &first) else { break };
        let mut count = 0;
        while shape_of(file, &format!("layer{stage}.{count}.conv1.weight")).is_some() {
            count += 1;
        }
        stage_blocks.push(count);
        stage_widths.push(shape[0]);
    }
    if stage_blocks.is_empty() {
        return Err(Error::Load(
            "cannot infer the architecture: no layer1.0.conv1.weight".into(),
        ));
    }
    // Shortcut option: projections where the shape stays (C), only where it changes (B), none (A).
    let mut in_c = conv1[0];
    let (mut proj_same, mut proj_change, mut plain_change) = (false, false, false);
    for (s, (&n, &w)) in stage_blocks.iter().zip(&stage_widths).enumerate() {
        for b in 0..n {
            let out_c = w * block.expansion();
            let changes = (s > 0 && b == 0) || in_c != out_c;
            let has = shape_of(file, &format!("layer{}.{b}.downsample.0.weight", s + 1)).is_some();
            match (changes, has) {
                (true, true) => proj_change = true,
                (false, true) => proj_same = true,
                (true, false) => plain_change = true,
                (false, false) => {}
            }
            in_c = out_c;
        }
    }
    let shortcut = if proj_same {
        ShortcutOption::C
    } else if proj_change && !plain_change {
        ShortcutOption::B
    } else {
        ShortcutOption::A
    };
    let mut config = ResNetConfig {
        name: String::new(),
        stem,
        stem_width: conv1[0],
        block,
        stage_blocks,
        stage_widths,
        residual: true,
        shortcut,
        bottleneck_stride: BottleneckStride::Conv3x3,
        num_classes: fc[0],
        in_channels: conv1[1],
        input_size: if stem == Stem::Cifar { 32 } else { 224 },
    };
    config.name = zoo_name(&config).unwrap_or_else(|| "resnet-custom".into());
    Ok(config)
}

/// The zoo name of a structure when it is one of [`super::MODEL_NAMES`].
fn zoo_name(config: &ResNetConfig) -> Option<String> {
    super::MODEL_NAMES.iter().find_map(|name| {
        let z = ResNetConfig::named(name).ok()?;
        let same = z.stem == config.stem
            && z.block == config.block
            && z.stage_blocks == config.stage_blocks
            && z.stage_widths == config.stage_widths
            && z.stem_width == config.stem_width
            && z.residual == config.residual;
        same.then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::NamedTensor;
    use std::collections::BTreeMap;

    fn file_of(p: &crate::Params) -> TensorFile {
        TensorFile {
            tensors: p.to_named_tensors(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn infers_every_zoo_architecture_and_option() {
        for (name, option) in [
            ("resnet20", ShortcutOption::A),
            ("resnet56", ShortcutOption::A),
            ("resnet32", ShortcutOption::B),
            ("resnet18", ShortcutOption::B),
            ("resnet34", ShortcutOption::C),
            ("resnet50", ShortcutOption::B),
            ("resnet101", ShortcutOption::A),
        ] {
            let config = ResNetConfig::named(name).unwrap().with_shortcut(option).with_classes(7);
            let m = crate::Params::new(config.clone(), 0).unwrap();
            let inferred = infer_config(&file_of(&m)).unwrap();
            assert_eq!(inferred, config, "{name} {option:?}");
        }
    }

    #[test]
    fn loads_foreign_names() {
        let src = crate::Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        let mut file = file_of(&src);
        for t in &mut file.tensors {
            t.name = format!("module.{}", t.name.replace("fc.", "linear."));
        }
        file.tensors
            .push(NamedTensor::new("module.bn1.num_batches_tracked", vec![], vec![3.0]));
        canonicalize_names(&mut file);
        let mut dst = crate::Params::new(ResNetConfig::named("resnet8").unwrap(), 2).unwrap();
        dst.load_tensors(&file, &|_| false).unwrap();
        assert_eq!(dst.tensor("fc.weight"), src.tensor("fc.weight"));
        assert_eq!(
            dst.tensor("layer3.0.bn2.running_var"),
            src.tensor("layer3.0.bn2.running_var")
        );

        // Mismatches are reported together: `Params::load_tensors`' own test.
    }

    #[test]
    fn inference_explains_what_is_missing() {
        let err = infer_config(&TensorFile::default()).unwrap_err().to_string();
        assert!(err.contains("conv1.weight"), "{err}");
    }
}
