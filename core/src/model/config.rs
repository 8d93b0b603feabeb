//! What a ResNet is made of, and the named networks of the paper (Table 1, section 4.2).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The shortcut options of section 3.3 (Table 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShortcutOption {
    /// Identity shortcuts; zero-padding (and subsampling) where dimensions grow. No parameters.
    A,
    /// Projection (1x1 conv + BN) where dimensions change, identity elsewhere.
    B,
    /// Projection on every shortcut.
    C,
}

impl std::str::FromStr for ShortcutOption {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "A" | "a" => Ok(ShortcutOption::A),
            "B" | "b" => Ok(ShortcutOption::B),
            "C" | "c" => Ok(ShortcutOption::C),
            _ => Err(Error::Config(format!(
                "shortcut option must be A, B or C, found \"{s}\""
            ))),
        }
    }
}

/// Two 3x3 convolutions (Figure 5 left) or the 1x1-3x3-1x1 bottleneck (Figure 5 right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    /// Output channels over the block's inner width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Where a downsampling bottleneck puts its stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BottleneckStride {
    /// On the 3x3 convolution, as torchvision ("ResNet v1.5"), so its weights load.
    Conv3x3,
    /// On the first 1x1 convolution, the paper's original placement.
    Conv1x1,
}

/// The first layers before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stem {
    /// CIFAR: one 3x3 convolution of stride 1, BN, ReLU.
    Cifar,
    /// ImageNet: a 7x7 convolution of stride 2, BN, ReLU, 3x3 max pooling of stride 2.
    ImageNet,
}

/// Everything that determines a ResNet's structure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Zoo name, e.g. `resnet20`.
    pub name: String,
    pub stem: Stem,
    /// Output channels of the stem convolution.
    pub stem_width: usize,
    pub block: BlockKind,
    /// Blocks in each stage; stages after the first start with stride 2.
    pub stage_blocks: Vec<usize>,
    /// Inner width of each stage's blocks (outputs are `width * expansion`).
    pub stage_widths: Vec<usize>,
    /// False for the plain networks of section 4 (no shortcuts at all).
    pub residual: bool,
    pub shortcut: ShortcutOption,
    pub bottleneck_stride: BottleneckStride,
    pub num_classes: usize,
    pub in_channels: usize,
    /// The input side the network is meant for (32 or 224); others also work.
    pub input_size: usize,
}

/// The largest structure [`ResNetConfig::validate`] accepts, so that sizes read from a
/// file's metadata cannot ask for absurd allocations before the file's tensors are
/// compared with them: stages (the zoo has 3 or 4).
pub const MAX_STAGES: usize = 16;
/// Blocks in one stage (resnet1202 has 200).
pub const MAX_BLOCKS_PER_STAGE: usize = 1024;
/// Channels of the stem and inner width of a stage (the zoo's widest is 512).
pub const MAX_WIDTH: usize = 16384;
/// Input channels (images have 3).
pub const MAX_IN_CHANNELS: usize = 64;
/// Output classes (ImageNet-21k has 21,841).
pub const MAX_CLASSES: usize = 1 << 20;
/// Side of the input image the network is meant for (the zoo uses 32 and 224): an RGB
/// image of this side is 48 MB of u8.
pub const MAX_INPUT_SIZE: usize = 4096;

/// Every name that [`ResNetConfig::named`] knows.
pub const MODEL_NAMES: &[&str] = &[
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet1202",
    "plain8",
    "plain14",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "plain18",
    "plain34",
];

impl ResNetConfig {
    /// The CIFAR network of section 4.2 with `6n + 2` layers (16, 32, 64 filters).
    pub fn cifar(n: usize, residual: bool) -> Self {
        let depth = 6 * n + 2;
        ResNetConfig {
            name: format!("{}{depth}", if residual { "resnet" } else { "plain" }),
            stem: Stem::Cifar,
            stem_width: 16,
            block: BlockKind::Basic,
            stage_blocks: vec![n; 3],
            stage_widths: vec![16, 32, 64],
            residual,
            shortcut: ShortcutOption::A,
            bottleneck_stride: BottleneckStride::Conv3x3,
            num_classes: 10,
            in_channels: 3,
            input_size: 32,
        }
    }

    /// The ImageNet networks of Table 1 (shortcut option B by default).
    pub fn imagenet(depth: usize, residual: bool) -> Result<Self> {
        let (block, blocks) = match depth {
            18 => (BlockKind::Basic, vec![2, 2, 2, 2]),
            34 => (BlockKind::Basic, vec![3, 4, 6, 3]),
            50 => (BlockKind::Bottleneck, vec![3, 4, 6, 3]),
            101 => (BlockKind::Bottleneck, vec![3, 4, 23, 3]),
            152 => (BlockKind::Bottleneck, vec![3, 8, 36, 3]),
            _ => {
                return Err(Error::Config(format!(
                    "no ImageNet ResNet of depth {depth} (Table 1 has 18, 34, 50, 101, 152)"
                )))
            }
        };
        Ok(ResNetConfig {
            name: format!("{}{depth}", if residual { "resnet" } else { "plain" }),
            stem: Stem::ImageNet,
            stem_width: 64,
            block,
            stage_blocks: blocks,
            stage_widths: vec![64, 128, 256, 512],
            residual,
            shortcut: ShortcutOption::B,
            bottleneck_stride: BottleneckStride::Conv3x3,
            num_classes: 1000,
            in_channels: 3,
            input_size: 224,
        })
    }

    /// A network of the zoo by name (see [`MODEL_NAMES`]).
    pub fn named(name: &str) -> Result<Self> {
        let unknown = || {
            Error::Config(format!(
                "unknown model \"{name}\"; known models: {}",
                MODEL_NAMES.join(", ")
            ))
        };
        if !MODEL_NAMES.contains(&name) {
            return Err(unknown());
        }
        let (residual, depth) = if let Some(d) = name.strip_prefix("resnet") {
            (true, d)
        } else if let Some(d) = name.strip_prefix("plain") {
            (false, d)
        } else {
            return Err(unknown());
        };
        let depth: usize = depth.parse().map_err(|_| unknown())?;
        match depth {
            18 | 34 | 50 | 101 | 152 => ResNetConfig::imagenet(depth, residual),
            d if d >= 8 && (d - 2) % 6 == 0 => Ok(ResNetConfig::cifar((d - 2) / 6, residual)),
            _ => Err(unknown()),
        }
    }

    /// Replaces the shortcut option.
    pub fn with_shortcut(mut self, shortcut: ShortcutOption) -> Self {
        self.shortcut = shortcut;
        self
    }

    /// Replaces the number of classes.
    pub fn with_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Checks that the structure can be built and stays within the documented limits
    /// ([`MAX_STAGES`], [`MAX_BLOCKS_PER_STAGE`], [`MAX_WIDTH`], [`MAX_IN_CHANNELS`],
    /// [`MAX_CLASSES`], [`MAX_INPUT_SIZE`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("model {}: {m}", self.name)));
        let limit = |what: &str, found: usize, max: usize| {
            if found == 0 || found > max {
                bad(format!("{what} must be between 1 and {max}, found {found}"))
            } else {
                Ok(())
            }
        };
        limit("the number of stages", self.stage_blocks.len(), MAX_STAGES)?;
        for (&b, &w) in self.stage_blocks.iter().zip(&self.stage_widths) {
            limit("blocks per stage", b, MAX_BLOCKS_PER_STAGE)?;
            limit("a stage width", w, MAX_WIDTH)?;
        }
        limit("the stem width", self.stem_width, MAX_WIDTH)?;
        limit("input channels", self.in_channels, MAX_IN_CHANNELS)?;
        limit("classes", self.num_classes, MAX_CLASSES)?;
        limit("the input size", self.input_size, MAX_INPUT_SIZE)?;
        if self.stage_blocks.is_empty() || self.stage_blocks.len() != self.stage_widths.len() {
            return bad(format!(
                "needs one width per stage, found {} stages and {} widths",
                self.stage_blocks.len(),
                self.stage_widths.len()
            ));
        }
        if self.stage_blocks.contains(&0) || self.stage_widths.contains(&0) {
            return bad("every stage needs at least one block and one channel".into());
        }
        if self.num_classes == 0 || self.in_channels == 0 || self.stem_width == 0 {
            return bad("classes, input channels and stem width must be positive".into());
        }
        let mut c = self.stem_width;
        for &w in &self.stage_widths {
            let out = w * self.block.expansion();
            if out < c && self.residual && self.shortcut == ShortcutOption::A {
                return bad(format!("option-A shortcuts cannot narrow {c} channels to {out}"));
            }
            c = out;
        }
        Ok(())
    }

    /// Channels that reach the classifier.
    pub fn feature_channels(&self) -> usize {
        self.stage_widths.last().copied().unwrap_or(0) * self.block.expansion()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves_and_others_fail() {
        for name in MODEL_NAMES {
            let c = ResNetConfig::named(name).unwrap();
            assert_eq!(&c.name, name);
            c.validate().unwrap();
        }
        let err = ResNetConfig::named("resnet21").unwrap_err().to_string();
        assert!(err.contains("resnet21") && err.contains("resnet20"), "{err}");
        assert!(ResNetConfig::named("vgg16").is_err());
        assert!("D".parse::<ShortcutOption>().is_err());
    }

    #[test]
    fn sizes_beyond_the_documented_limits_are_refused() {
        let base = ResNetConfig::named("resnet20").unwrap();
        type Change = fn(&mut ResNetConfig);
        let cases: [(&str, Change); 6] = [
            ("blocks per stage", |c| c.stage_blocks[0] = 1_000_000_000),
            ("a stage width", |c| c.stage_widths[2] = 1 << 20),
            ("classes", |c| c.num_classes = 1 << 40),
            ("the input size", |c| c.input_size = 1 << 31),
            ("the number of stages", |c| {
                c.stage_blocks = vec![1; 100];
                c.stage_widths = vec![16; 100];
            }),
            ("input channels", |c| c.in_channels = 1 << 30),
        ];
        for (what, change) in cases {
            let mut c = base.clone();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(what) && err.contains("must be between 1 and"), "{err}");
        }
    }
}
