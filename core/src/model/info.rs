//! The per-layer table of a network: output shapes, parameters and multiply-adds.

use super::block::Shortcut;
use super::resnet::ResNet;
use crate::kernels::im2col::ConvGeometry;
use crate::layers::batchnorm::BatchNorm2d;
use crate::layers::conv::Conv2d;
use crate::layers::Dims;
use crate::Result;
use serde::Serialize;

/// One row of the table that `resnet info` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerInfo {
    /// torchvision-style name (`layer2.0.conv1`).
    pub name: String,
    /// What the layer does (`conv 3x3/2`, `batchnorm`, ...).
    pub kind: String,
    /// Output shape of one image: channels, height, width (height and width 1 for vectors).
    pub output: [usize; 3],
    /// Trainable values.
    pub params: usize,
    /// Multiply-adds per image.
    pub macs: u64,
}

fn conv_row(name: String, conv: &Conv2d, input: Dims) -> Result<(LayerInfo, Dims)> {
    let out = conv.out_dims(input)?;
    let kind = format!(
        "conv {k}x{k}/{s}{}",
        if conv.padding > 0 {
            format!(" pad {}", conv.padding)
        } else {
            String::new()
        },
        k = conv.kernel,
        s = conv.stride
    );
    let params = conv.weight.value.len() + conv.bias.as_ref().map_or(0, |b| b.value.len());
    let row = LayerInfo {
        name,
        kind,
        output: [out.c, out.h, out.w],
        params,
        macs: conv.macs_per_image(input)?,
    };
    Ok((row, out))
}

fn bn_row(name: String, bn: &BatchNorm2d, d: Dims) -> LayerInfo {
    LayerInfo {
        name,
        kind: "batchnorm".into(),
        output: [d.c, d.h, d.w],
        params: 2 * bn.channels,
        macs: 0,
    }
}

impl ResNet {
    /// The geometry of every convolution for a batch of `batch` images of `h x w`, with
    /// its name, in execution order (benchmarks time each shape this way).
    pub fn conv_geometries(&self, batch: usize, h: usize, w: usize) -> Result<Vec<(String, ConvGeometry)>> {
        let mut out = Vec::new();
        let mut d = self.check_input(&[batch.max(1), self.config.in_channels, h, w])?;
        out.push(("conv1".to_string(), self.conv1.geometry(d)?));
        d = self.conv1.out_dims(d)?;
        if let Some(mp) = &self.maxpool {
            d = mp.out_dims(d)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let block_in = d;
            for (j, conv) in block.convs.iter().enumerate() {
                out.push((format!("{}.conv{}", self.block_name(i), j + 1), conv.geometry(d)?));
                d = conv.out_dims(d)?;
            }
            if let Shortcut::Projection { conv, .. } = &block.shortcut {
                out.push((format!("{}.downsample.0", self.block_name(i)), conv.geometry(block_in)?));
            }
        }
        Ok(out)
    }

    /// The distinct geometries of [`ResNet::conv_geometries`], each with the names of the
    /// convolutions that have it, in order of first use.
    pub fn distinct_conv_geometries(
        &self,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<(ConvGeometry, Vec<String>)>> {
        let mut seen: Vec<(ConvGeometry, Vec<String>)> = Vec::new();
        for (name, g) in self.conv_geometries(batch, h, w)? {
            match seen.iter_mut().find(|(s, _)| *s == g) {
                Some((_, names)) => names.push(name),
                None => seen.push((g, vec![name])),
            }
        }
        Ok(seen)
    }

    /// The table of every layer for one `h x w` image.
    pub fn layer_table(&self, h: usize, w: usize) -> Result<Vec<LayerInfo>> {
        let mut rows = Vec::new();
        let input = self.check_input(&[1, self.config.in_channels, h, w])?;
        let (row, mut d) = conv_row("conv1".into(), &self.conv1, input)?;
        rows.push(row);
        rows.push(bn_row("bn1".into(), &self.bn1, d));
        if let Some(mp) = &self.maxpool {
            d = mp.out_dims(d)?;
            rows.push(LayerInfo {
                name: "maxpool".into(),
                kind: format!("maxpool {k}x{k}/{}", mp.stride, k = mp.kernel),
                output: [d.c, d.h, d.w],
                params: 0,
                macs: 0,
            });
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let prefix = self.block_name(i);
            let block_in = d;
            for (j, (conv, bn)) in block.convs.iter().zip(&block.bns).enumerate() {
                let (row, out) = conv_row(format!("{prefix}.conv{}", j + 1), conv, d)?;
                rows.push(row);
                rows.push(bn_row(format!("{prefix}.bn{}", j + 1), bn, out));
                d = out;
            }
            match &block.shortcut {
                Shortcut::Projection { conv, bn } => {
                    let (row, out) = conv_row(format!("{prefix}.downsample.0"), conv, block_in)?;
                    rows.push(row);
                    rows.push(bn_row(format!("{prefix}.downsample.1"), bn, out));
                }
                Shortcut::ZeroPad { stride } => rows.push(LayerInfo {
                    name: format!("{prefix}.shortcut"),
                    kind: format!(
                        "option A: subsample /{stride}, zero-pad {} to {} channels",
                        block_in.c, d.c
                    ),
                    output: [d.c, d.h, d.w],
                    params: 0,
                    macs: 0,
                }),
                Shortcut::Identity | Shortcut::None => {}
            }
        }
        rows.push(LayerInfo {
            name: "avgpool".into(),
            kind: "global average pool".into(),
            output: [d.c, 1, 1],
            params: 0,
            macs: 0,
        });
        rows.push(LayerInfo {
            name: "fc".into(),
            kind: "linear".into(),
            output: [self.fc.out_features, 1, 1],
            params: self.fc.weight.value.len() + self.fc.bias.value.len(),
            macs: (self.fc.in_features * self.fc.out_features) as u64,
        });
        Ok(rows)
    }
}
