//! The per-layer table of a network (output shapes, parameters, multiply-adds) and the
//! geometry of every convolution, walked from its [`Arch`].

use super::arch::{Arch, ConvBn, ShortcutKind};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::pool::PoolGeometry;
use crate::{Error, Result};
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

/// The 3x3 stride-2 max pooling of ImageNet stems.
pub fn stem_pool(batch: usize, (c, h, w): (usize, usize, usize)) -> Result<PoolGeometry> {
    PoolGeometry::new(batch, c, h, w, 3, 2, 1)
        .ok_or_else(|| Error::Shape(format!("max pooling: input of {h}x{w} is too small")))
}

impl Arch {
    /// The geometry of every convolution for a batch of `batch` images of `h x w`, with
    /// its name, in execution order; errors name the first layer the input is too small for.
    pub fn conv_geometries(&self, batch: usize, h: usize, w: usize) -> Result<Vec<(String, ConvGeometry)>> {
        let mut out = Vec::new();
        let g = self.stem.geometry(batch, self.stem.in_channels, h, w)?;
        out.push((self.stem.conv.clone(), g));
        let mut d = (g.out_channels, g.out_h, g.out_w);
        if self.maxpool {
            let p = stem_pool(batch, d)?;
            d = (d.0, p.out_h, p.out_w);
        }
        for block in &self.blocks {
            let block_in = d;
            for conv in &block.stages {
                let g = conv.geometry(batch, d.0, d.1, d.2)?;
                out.push((conv.conv.clone(), g));
                d = (g.out_channels, g.out_h, g.out_w);
            }
            if let ShortcutKind::Projection(p) = &block.shortcut {
                out.push((p.conv.clone(), p.geometry(batch, block_in.0, block_in.1, block_in.2)?));
            }
        }
        Ok(out)
    }

    /// The distinct geometries of [`Arch::conv_geometries`], each with the names of the
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
        let geoms: std::collections::HashMap<String, ConvGeometry> =
            self.conv_geometries(1, h, w)?.into_iter().collect();
        let mut rows = Vec::new();
        let push_conv = |rows: &mut Vec<LayerInfo>, c: &ConvBn| -> (usize, usize, usize) {
            let g = geoms[&c.conv];
            let pad = if c.pad > 0 {
                format!(" pad {}", c.pad)
            } else {
                String::new()
            };
            let output = [g.out_channels, g.out_h, g.out_w];
            rows.push(LayerInfo {
                name: c.conv.clone(),
                kind: format!("conv {k}x{k}/{s}{pad}", k = c.kernel, s = c.stride),
                output,
                params: c.weight_shape().iter().product(),
                macs: g.macs(),
            });
            rows.push(LayerInfo {
                name: c.bn.clone(),
                kind: "batchnorm".into(),
                output,
                params: 2 * c.out_channels,
                macs: 0,
            });
            (g.out_channels, g.out_h, g.out_w)
        };
        let mut d = push_conv(&mut rows, &self.stem);
        if self.maxpool {
            let p = stem_pool(1, d)?;
            d = (d.0, p.out_h, p.out_w);
            rows.push(LayerInfo {
                name: "maxpool".into(),
                kind: format!("maxpool {k}x{k}/{}", p.stride, k = p.kernel),
                output: [d.0, d.1, d.2],
                params: 0,
                macs: 0,
            });
        }
        for block in &self.blocks {
            let block_in = d;
            for conv in &block.stages {
                d = push_conv(&mut rows, conv);
            }
            match &block.shortcut {
                ShortcutKind::Projection(p) => {
                    push_conv(&mut rows, p);
                }
                ShortcutKind::ZeroPad { stride } => rows.push(LayerInfo {
                    name: format!("{}.shortcut", block.name),
                    kind: format!(
                        "option A: subsample /{stride}, zero-pad {} to {} channels",
                        block_in.0, d.0
                    ),
                    output: [d.0, d.1, d.2],
                    params: 0,
                    macs: 0,
                }),
                ShortcutKind::Identity | ShortcutKind::None => {}
            }
        }
        rows.push(LayerInfo {
            name: "avgpool".into(),
            kind: "global average pool".into(),
            output: [d.0, 1, 1],
            params: 0,
            macs: 0,
        });
        rows.push(LayerInfo {
            name: "fc".into(),
            kind: "linear".into(),
            output: [self.classes, 1, 1],
            params: self.features * self.classes + self.classes,
            macs: (self.features * self.classes) as u64,
        });
        Ok(rows)
    }
}
