//! A residual block (Figure 2 and 5): a chain of conv-BN(-ReLU) stages, the shortcut
//! added after the last BN, then ReLU. Basic blocks chain two 3x3 convolutions,
//! bottlenecks 1x1, 3x3, 1x1. Plain networks use the same chain without the shortcut.

use super::config::{BlockKind, BottleneckStride, ShortcutOption};
use crate::layers::batchnorm::BatchNorm2d;
use crate::layers::conv::Conv2d;
use crate::layers::relu::{add_assign, add_relu, relu_backward, relu_backward_inplace, relu_forward};
use crate::layers::shortcut::{option_a_backward_add, option_a_forward};
use crate::layers::{fit, join, Dims, Mode, Visitor};
use crate::rng::Rng;
use crate::Result;

/// The path that carries a block's input to its output.
// A network has a handful of projections, so their size in the enum costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Shortcut {
    /// Plain networks: no shortcut.
    None,
    /// `x` itself.
    Identity,
    /// Option A: subsample by `stride` and zero-pad the new channels.
    ZeroPad { stride: usize },
    /// Options B and C: 1x1 convolution and batch norm (`downsample.0`, `downsample.1`).
    Projection { conv: Conv2d, bn: BatchNorm2d },
}

/// What `shortcut` carries from the block input `x` to the block output of shape `dims`
/// (`None` for plain blocks); option A pads into `padded`, and a projection's batch norm
/// is folded into its convolution when `folded`.
fn shortcut_output<'a>(
    shortcut: &'a mut Shortcut,
    padded: &'a mut Vec<f32>,
    x: &'a [f32],
    input: Dims,
    dims: Dims,
    mode: Mode,
    folded: bool,
) -> Result<Option<&'a [f32]>> {
    Ok(match shortcut {
        Shortcut::None => None,
        Shortcut::Identity => Some(x),
        Shortcut::ZeroPad { stride } => {
            fit(padded, dims.len());
            option_a_forward(x, input, dims, *stride, padded);
            Some(padded)
        }
        Shortcut::Projection { conv, bn } => {
            if folded {
                let (scale, shift) = bn.eval_affine();
                conv.forward_folded(x, input, scale, shift, None, false)?;
                Some(&conv.out)
            } else {
                let d = conv.forward(x, input, mode)?;
                bn.forward(&conv.out, d, mode);
                Some(&bn.out)
            }
        }
    })
}

/// One residual (or plain) block.
#[derive(Clone, Debug)]
pub struct Block {
    pub kind: BlockKind,
    /// `conv1`, `conv2` (and `conv3` for bottlenecks).
    pub convs: Vec<Conv2d>,
    /// `bn1`, `bn2` (and `bn3`).
    pub bns: Vec<BatchNorm2d>,
    pub shortcut: Shortcut,
    /// Inference folds each batch norm into its convolution and fuses the residual add
    /// and ReLUs into the convolutions' stores (on by default; off gives the layer-by-layer
    /// reference).
    pub fold_bn: bool,
    /// The block's output of the last forward pass, after the final ReLU.
    pub out: Vec<f32>,
    padded: Vec<f32>,
    in_dims: Dims,
    out_dims: Dims,
}

/// Scratch gradients shared by all blocks of a network during backward.
#[derive(Default, Debug, Clone)]
pub struct BlockScratch {
    sum: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Block {
    /// A block from `in_c` channels to `width * expansion`, downsampling by `stride`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: BlockKind,
        in_c: usize,
        width: usize,
        stride: usize,
        residual: bool,
        option: ShortcutOption,
        bottleneck_stride: BottleneckStride,
        rng: &mut Rng,
    ) -> Self {
        let out_c = width * kind.expansion();
        let convs = match kind {
            BlockKind::Basic => vec![
                Conv2d::new(in_c, width, 3, stride, 1, false, rng),
                Conv2d::new(width, width, 3, 1, 1, false, rng),
            ],
            BlockKind::Bottleneck => {
                let (s1, s3) = match bottleneck_stride {
                    BottleneckStride::Conv3x3 => (1, stride),
                    BottleneckStride::Conv1x1 => (stride, 1),
                };
                vec![
                    Conv2d::new(in_c, width, 1, s1, 0, false, rng),
                    Conv2d::new(width, width, 3, s3, 1, false, rng),
                    Conv2d::new(width, out_c, 1, 1, 0, false, rng),
                ]
            }
        };
        let bns = convs.iter().map(|c| BatchNorm2d::new(c.out_channels)).collect();
        let changes = stride != 1 || in_c != out_c;
        let shortcut = match (residual, option) {
            (false, _) => Shortcut::None,
            (true, ShortcutOption::A) if changes => Shortcut::ZeroPad { stride },
            (true, ShortcutOption::A) | (true, ShortcutOption::B) if !changes => Shortcut::Identity,
            _ => Shortcut::Projection {
                conv: Conv2d::new(in_c, out_c, 1, stride, 0, false, rng),
                bn: BatchNorm2d::new(out_c),
            },
        };
        Block {
            kind,
            convs,
            bns,
            shortcut,
            fold_bn: true,
            out: Vec::new(),
            padded: Vec::new(),
            in_dims: Dims::default(),
            out_dims: Dims::default(),
        }
    }

    /// Output dimensions for `input`.
    pub fn out_dims(&self, input: Dims) -> Result<Dims> {
        self.convs.iter().try_fold(input, |d, c| c.out_dims(d))
    }

    /// Computes `self.out` from `x`.
    pub fn forward(&mut self, x: &[f32], input: Dims, mode: Mode) -> Result<Dims> {
        if mode == Mode::Eval && self.fold_bn {
            return self.forward_folded(x, input);
        }
        let last = self.convs.len() - 1;
        let mut dims = input;
        for i in 0..=last {
            let (done, rest) = self.bns.split_at_mut(i);
            // Inner stages end in a ReLU, fused into the batch norm: its output is the
            // next convolution's input.
            let src: &[f32] = if i == 0 { x } else { &done[i - 1].out };
            dims = self.convs[i].forward(src, dims, mode)?;
            if i < last {
                rest[0].forward_relu(&self.convs[i].out, dims, mode);
            } else {
                rest[0].forward(&self.convs[i].out, dims, mode);
            }
        }
        fit(&mut self.out, dims.len());
        match shortcut_output(&mut self.shortcut, &mut self.padded, x, input, dims, mode, false)? {
            Some(s) => add_relu(&self.bns[last].out, s, &mut self.out),
            None => relu_forward(&self.bns[last].out, &mut self.out),
        }
        self.in_dims = input;
        self.out_dims = dims;
        Ok(dims)
    }

    /// Inference with every batch norm folded into its convolution: each stage's BN and
    /// ReLU, and the last stage's residual add and ReLU, happen as the convolution stores
    /// its output. Leaves nothing for backward.
    fn forward_folded(&mut self, x: &[f32], input: Dims) -> Result<Dims> {
        let dims = self.out_dims(input)?;
        let residual = shortcut_output(&mut self.shortcut, &mut self.padded, x, input, dims, Mode::Eval, true)?;
        let last = self.convs.len() - 1;
        let mut d = input;
        for i in 0..=last {
            let (done, rest) = self.convs.split_at_mut(i);
            let src: &[f32] = if i == 0 { x } else { &done[i - 1].out };
            let (scale, shift) = self.bns[i].eval_affine();
            let added = if i == last { residual } else { None };
            d = rest[0].forward_folded(src, d, scale, shift, added, true)?;
        }
        std::mem::swap(&mut self.out, &mut self.convs[last].out);
        self.in_dims = input;
        self.out_dims = dims;
        Ok(dims)
    }

    /// Accumulates parameter gradients and writes the input gradient into `dx`.
    /// `x` is the input of the last forward pass, `dout` the gradient of `self.out`.
    pub fn backward(&mut self, x: &[f32], dout: &[f32], dx: &mut Vec<f32>, s: &mut BlockScratch) {
        let last = self.convs.len() - 1;
        fit(&mut s.sum, dout.len());
        relu_backward(&self.out, dout, &mut s.sum);
        self.bns[last].backward(&s.sum, &mut s.a);
        for i in (0..=last).rev() {
            if i == 0 {
                self.convs[0].backward(x, &s.a, Some(dx));
            } else {
                self.convs[i].backward(&self.bns[i - 1].out, &s.a, Some(&mut s.b));
                relu_backward_inplace(&self.bns[i - 1].out, &mut s.b);
                self.bns[i - 1].backward(&s.b, &mut s.a);
            }
        }
        match &mut self.shortcut {
            Shortcut::None => {}
            Shortcut::Identity => add_assign(dx, &s.sum),
            Shortcut::ZeroPad { stride } => option_a_backward_add(&s.sum, self.in_dims, self.out_dims, *stride, dx),
            Shortcut::Projection { conv, bn } => {
                bn.backward(&s.sum, &mut s.a);
                conv.backward(x, &s.a, Some(&mut s.b));
                add_assign(dx, &s.b);
            }
        }
    }

    /// Visits the block's tensors with torchvision's names.
    pub fn visit(&mut self, prefix: &str, f: &mut Visitor) {
        for (i, (conv, bn)) in self.convs.iter_mut().zip(&mut self.bns).enumerate() {
            conv.visit(&join(prefix, &format!("conv{}", i + 1)), f);
            bn.visit(&join(prefix, &format!("bn{}", i + 1)), f);
        }
        if let Shortcut::Projection { conv, bn } = &mut self.shortcut {
            conv.visit(&join(prefix, "downsample.0"), f);
            bn.visit(&join(prefix, "downsample.1"), f);
        }
    }
}
