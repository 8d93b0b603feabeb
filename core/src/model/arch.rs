//! The structure of a ResNet as data: every convolution with its batch norm and
//! torchvision names, block by block. `Params` lays its tensors out from it and the
//! execution plan schedules its steps from it, so the architecture is walked in one place.

use super::config::{BlockKind, BottleneckStride, ResNetConfig, ShortcutOption, Stem};
use crate::kernels::im2col::ConvGeometry;
use crate::{Error, Result};

/// One convolution (no bias) followed by a batch norm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvBn {
    /// The convolution's name, e.g. `layer2.0.conv1` or `layer2.0.downsample.0`.
    pub conv: String,
    /// Its batch norm's name, e.g. `layer2.0.bn1` or `layer2.0.downsample.1`.
    pub bn: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvBn {
    fn new(conv: String, bn: String, in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        ConvBn {
            conv,
            bn,
            in_channels,
            out_channels,
            kernel,
            stride,
            pad: kernel / 2,
        }
    }

    /// The geometry of this convolution on `batch` images of `c x h x w`; errors name
    /// the layer (wrong channel count, an input smaller than the kernel).
    pub fn geometry(&self, batch: usize, c: usize, h: usize, w: usize) -> Result<ConvGeometry> {
        if c != self.in_channels {
            return Err(Error::Shape(format!(
                "{}: expects {} input channels, found {c}",
                self.conv, self.in_channels
            )));
        }
        ConvGeometry::new(
            batch,
            c,
            h,
            w,
            self.out_channels,
            (self.kernel, self.kernel),
            self.stride,
            self.pad,
        )
        .map_err(|e| Error::Shape(format!("{}: {e}", self.conv)))
    }

    /// The shape of the convolution's weight, `[out, in, k, k]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.out_channels, self.in_channels, self.kernel, self.kernel]
    }
}

/// What carries a block's input to its output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShortcutKind {
    /// Plain networks: none.
    None,
    /// The input itself.
    Identity,
    /// Option A: subsample by `stride`, zero-pad the new channels.
    ZeroPad { stride: usize },
    /// Options B and C: a 1x1 convolution and batch norm.
    Projection(ConvBn),
}

/// One residual (or plain) block: its chain of conv-BN stages (ReLU between them) and
/// its shortcut; the output is `relu(last stage + shortcut)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockArch {
    /// `layer1.0`, ...
    pub name: String,
    pub stages: Vec<ConvBn>,
    pub shortcut: ShortcutKind,
    pub in_channels: usize,
    pub out_channels: usize,
}

/// The whole network: stem, blocks, classifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    pub stem: ConvBn,
    /// ImageNet stems end in a 3x3 stride-2 max pooling.
    pub maxpool: bool,
    pub blocks: Vec<BlockArch>,
    /// Features into the classifier `fc`.
    pub features: usize,
    pub classes: usize,
}

impl Arch {
    /// The structure `config` describes (validated first).
    pub fn of(config: &ResNetConfig) -> Result<Arch> {
        config.validate()?;
        let k = match config.stem {
            Stem::Cifar => 3,
            Stem::ImageNet => 7,
        };
        let stem_stride = if config.stem == Stem::ImageNet { 2 } else { 1 };
        let stem = ConvBn::new(
            "conv1".into(),
            "bn1".into(),
            config.in_channels,
            config.stem_width,
            k,
            stem_stride,
        );
        let mut blocks = Vec::new();
        let mut in_c = config.stem_width;
        for (stage, (&count, &width)) in config.stage_blocks.iter().zip(&config.stage_widths).enumerate() {
            for b in 0..count {
                let name = format!("layer{}.{b}", stage + 1);
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let out_c = width * config.block.expansion();
                let stage_conv = |i: usize, cin, cout, k, s| {
                    ConvBn::new(format!("{name}.conv{i}"), format!("{name}.bn{i}"), cin, cout, k, s)
                };
                let stages = match config.block {
                    BlockKind::Basic => vec![stage_conv(1, in_c, width, 3, stride), stage_conv(2, width, width, 3, 1)],
                    BlockKind::Bottleneck => {
                        let (s1, s3) = match config.bottleneck_stride {
                            BottleneckStride::Conv3x3 => (1, stride),
                            BottleneckStride::Conv1x1 => (stride, 1),
                        };
                        vec![
                            stage_conv(1, in_c, width, 1, s1),
                            stage_conv(2, width, width, 3, s3),
                            stage_conv(3, width, out_c, 1, 1),
                        ]
                    }
                };
                let changes = stride != 1 || in_c != out_c;
                let shortcut = match (config.residual, config.shortcut) {
                    (false, _) => ShortcutKind::None,
                    (true, ShortcutOption::A) if changes => ShortcutKind::ZeroPad { stride },
                    (true, ShortcutOption::A) | (true, ShortcutOption::B) if !changes => ShortcutKind::Identity,
                    _ => ShortcutKind::Projection(ConvBn::new(
                        format!("{name}.downsample.0"),
                        format!("{name}.downsample.1"),
                        in_c,
                        out_c,
                        1,
                        stride,
                    )),
                };
                blocks.push(BlockArch {
                    name,
                    stages,
                    shortcut,
                    in_channels: in_c,
                    out_channels: out_c,
                });
                in_c = out_c;
            }
        }
        Ok(Arch {
            stem,
            maxpool: config.stem == Stem::ImageNet,
            blocks,
            features: in_c,
            classes: config.num_classes,
        })
    }

    /// Every convolution in the order of torchvision's state dict: the stem, then each
    /// block's stages and its projection.
    pub fn convs(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| {
            let proj = match &b.shortcut {
                ShortcutKind::Projection(p) => Some(p),
                _ => None,
            };
            b.stages.iter().chain(proj)
        }))
    }
}
