//! The assembled network: stem, residual stages, global average pooling, classifier.

use super::block::{Block, BlockScratch};
use super::config::{ResNetConfig, Stem};
use crate::layers::batchnorm::BatchNorm2d;
use crate::layers::conv::Conv2d;
use crate::layers::linear::Linear;
use crate::layers::pool::{GlobalAvgPool, MaxPool2d};
use crate::layers::relu::relu_backward_inplace;
use crate::layers::{fit, Dims, Mode, Param, Slot, Visitor};
use crate::rng::Rng;
use crate::{Error, Result, Tensor};

/// A ResNet (or plain network) with its activations, ready for forward and backward.
#[derive(Clone, Debug)]
pub struct ResNet {
    pub config: ResNetConfig,
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub maxpool: Option<MaxPool2d>,
    /// Blocks of all stages in order; [`ResNet::block_name`] names them.
    pub blocks: Vec<Block>,
    block_names: Vec<String>,
    pub fc: Linear,
    avgpool: GlobalAvgPool,
    input: Vec<f32>,
    input_dims: Dims,
    stem_act: Vec<f32>,
    stem_dims: Dims,
    grads: [Vec<f32>; 2],
    scratch: BlockScratch,
    /// Inference folds batch norms into convolutions (see [`ResNet::set_fold_bn`]).
    fold_bn: bool,
    /// Whether the last forward pass kept what backward needs.
    backward_ready: bool,
}

impl ResNet {
    /// Builds and initialises the network described by `config` (He init, BN 1 and 0).
    pub fn new(config: ResNetConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let (k, s, p) = match config.stem {
            Stem::Cifar => (3, 1, 1),
            Stem::ImageNet => (7, 2, 3),
        };
        let conv1 = Conv2d::new(config.in_channels, config.stem_width, k, s, p, false, &mut rng);
        let bn1 = BatchNorm2d::new(config.stem_width);
        let maxpool = (config.stem == Stem::ImageNet).then(|| MaxPool2d::new(3, 2, 1));
        let mut blocks = Vec::new();
        let mut block_names = Vec::new();
        let mut in_c = config.stem_width;
        for (stage, (&count, &width)) in config.stage_blocks.iter().zip(&config.stage_widths).enumerate() {
            for b in 0..count {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let block = Block::new(
                    config.block,
                    in_c,
                    width,
                    stride,
                    config.residual,
                    config.shortcut,
                    config.bottleneck_stride,
                    &mut rng,
                );
                in_c = width * config.block.expansion();
                blocks.push(block);
                block_names.push(format!("layer{}.{b}", stage + 1));
            }
        }
        let fc = Linear::new(in_c, config.num_classes, &mut rng);
        Ok(ResNet {
            config,
            conv1,
            bn1,
            maxpool,
            blocks,
            block_names,
            fc,
            avgpool: GlobalAvgPool::default(),
            input: Vec::new(),
            input_dims: Dims::default(),
            stem_act: Vec::new(),
            stem_dims: Dims::default(),
            grads: [Vec::new(), Vec::new()],
            scratch: BlockScratch::default(),
            fold_bn: true,
            backward_ready: false,
        })
    }

    /// A network holding the tensors of `params` (the trainer's copy of them).
    pub fn from_params(params: &crate::Params) -> Result<Self> {
        let mut net = ResNet::new(params.config().clone(), 0)?;
        net.copy_from_params(params);
        Ok(net)
    }

    /// Overwrites every tensor and gradient with its namesake in `params` (same
    /// architecture).
    pub fn copy_from_params(&mut self, params: &crate::Params) {
        self.visit(&mut |name, slot| {
            let src = params.tensor(name);
            match slot {
                Slot::Param(p) => p.value.copy_from_slice(src),
                Slot::Buffer(_, b) => b.copy_from_slice(src),
            }
        });
        self.set_gradients_flat(params.grads()).expect("same architecture");
    }

    /// Copies every tensor and gradient into `params` (same architecture).
    pub fn copy_into_params(&mut self, params: &mut crate::Params) {
        self.visit(&mut |name, slot| {
            let dst = params.get_mut(name).expect("same architecture");
            match slot {
                Slot::Param(p) => dst.copy_from_slice(&p.value),
                Slot::Buffer(_, b) => dst.copy_from_slice(b),
            }
        });
        let grads = self.gradients_flat();
        params.set_grads(&grads).expect("same architecture");
    }

    /// The torchvision-style name of block `i` (`layer2.0`).
    pub fn block_name(&self, i: usize) -> &str {
        &self.block_names[i]
    }

    /// Checks that `input` is an `N x in_channels x H x W` batch this network can take.
    pub fn check_input(&self, shape: &[usize]) -> Result<Dims> {
        let [n, c, h, w] = shape else {
            return Err(Error::Shape(format!(
                "input must be N x C x H x W, found shape {shape:?}"
            )));
        };
        if *c != self.config.in_channels || *n == 0 {
            return Err(Error::Shape(format!(
                "input must be N x {} x H x W with N > 0, found {shape:?}",
                self.config.in_channels
            )));
        }
        let dims = Dims::new(*n, *c, *h, *w);
        // Walk the shapes once so that a too-small image fails here with a clear message.
        let mut d = self.conv1.out_dims(dims)?;
        if let Some(mp) = &self.maxpool {
            d = mp.out_dims(d)?;
        }
        for b in &self.blocks {
            d = b.out_dims(d)?;
        }
        Ok(dims)
    }

    /// Runs the network on an NCHW batch and returns the logits (`N x num_classes`).
    pub fn forward(&mut self, input: &Tensor, mode: Mode) -> Result<&[f32]> {
        let dims = self.check_input(input.shape())?;
        fit(&mut self.input, dims.len());
        self.input.copy_from_slice(input.data());
        self.input_dims = dims;
        let folded = mode == Mode::Eval && self.fold_bn;
        let d = if folded {
            let (scale, shift) = self.bn1.eval_affine();
            let d = self.conv1.forward_folded(&self.input, dims, scale, shift, None, true)?;
            std::mem::swap(&mut self.stem_act, &mut self.conv1.out);
            d
        } else {
            let d = self.conv1.forward(&self.input, dims, mode)?;
            self.bn1.forward_relu(&self.conv1.out, d, mode);
            std::mem::swap(&mut self.stem_act, &mut self.bn1.out);
            d
        };
        self.backward_ready = !folded;
        self.stem_dims = d;
        let mut dims = d;
        if let Some(mp) = &mut self.maxpool {
            dims = mp.forward(&self.stem_act, d)?;
        }
        for i in 0..self.blocks.len() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = match before.last() {
                Some(b) => &b.out[..],
                None => stem_output(&self.maxpool, &self.stem_act),
            };
            dims = rest[0].forward(x, dims, mode)?;
        }
        let last = self
            .blocks
            .last()
            .map_or(stem_output(&self.maxpool, &self.stem_act), |b| &b.out[..]);
        self.avgpool.forward(last, dims);
        self.fc.forward(&self.avgpool.out, dims.n);
        Ok(&self.fc.out)
    }

    /// Chooses whether `Mode::Eval` folds every batch norm into its convolution and
    /// fuses residual adds and ReLUs into the convolutions (the default), or runs layer by
    /// layer as in training (the reference the fused path is tested against).
    pub fn set_fold_bn(&mut self, on: bool) {
        self.fold_bn = on;
        self.blocks.iter_mut().for_each(|b| b.fold_bn = on);
    }

    /// Back-propagates `dlogits` (the gradient of the loss with respect to the logits of
    /// the last forward pass), accumulating every parameter's gradient. The forward pass
    /// must have been `Mode::Train`, or `Mode::Eval` with folding off.
    pub fn backward(&mut self, dlogits: &[f32]) {
        assert!(
            self.backward_ready,
            "ResNet::backward needs a forward pass that was not folded for inference"
        );
        let [g0, g1] = &mut self.grads;
        self.fc.backward(&self.avgpool.out, dlogits, g0);
        self.avgpool.backward(g0, g1);
        // Invariant: g1 holds the gradient of the current block's output.
        for i in (0..self.blocks.len()).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = match before.last() {
                Some(b) => &b.out[..],
                None => stem_output(&self.maxpool, &self.stem_act),
            };
            rest[0].backward(x, g1, g0, &mut self.scratch);
            std::mem::swap(g0, g1);
        }
        if let Some(mp) = &self.maxpool {
            mp.backward(g1, g0);
            std::mem::swap(g0, g1);
        }
        relu_backward_inplace(&self.stem_act, g1);
        self.bn1.backward(g1, g0);
        self.conv1.backward(&self.input, g0, None);
    }

    /// Visits every tensor with torchvision's names, in a fixed order.
    pub fn visit(&mut self, f: &mut Visitor) {
        self.conv1.visit("conv1", f);
        self.bn1.visit("bn1", f);
        for (block, name) in self.blocks.iter_mut().zip(&self.block_names) {
            block.visit(name, f);
        }
        self.fc.visit("fc", f);
    }

    /// Calls `f` on every trainable parameter, in the order of [`ResNet::visit`].
    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.visit(&mut |_, slot| {
            if let Slot::Param(p) = slot {
                f(p)
            }
        });
    }

    /// Number of trainable values.
    pub fn param_count(&mut self) -> usize {
        let mut n = 0;
        self.for_each_param(&mut |p| n += p.value.len());
        n
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        self.for_each_param(&mut |p| p.grad.fill(0.0));
    }

    /// All parameter gradients concatenated in [`ResNet::for_each_param`] order, e.g. to
    /// average them across data-parallel workers.
    pub fn gradients_flat(&mut self) -> Vec<f32> {
        let mut out = Vec::new();
        self.for_each_param(&mut |p| out.extend_from_slice(&p.grad));
        out
    }

    /// Replaces every parameter gradient from a vector laid out as [`ResNet::gradients_flat`].
    pub fn set_gradients_flat(&mut self, flat: &[f32]) -> Result<()> {
        let total = self.param_count();
        if flat.len() != total {
            return Err(Error::Shape(format!(
                "expected {total} gradient values, found {}",
                flat.len()
            )));
        }
        let mut at = 0;
        self.for_each_param(&mut |p| {
            let n = p.grad.len();
            p.grad.copy_from_slice(&flat[at..at + n]);
            at += n;
        });
        Ok(())
    }

    /// All batch-norm running statistics concatenated in [`ResNet::visit`] order.
    pub fn buffers_flat(&mut self) -> Vec<f32> {
        let mut out = Vec::new();
        self.visit(&mut |_, slot| {
            if let Slot::Buffer(_, b) = slot {
                out.extend_from_slice(b);
            }
        });
        out
    }

    /// Replaces the running statistics from a vector laid out as [`ResNet::buffers_flat`].
    pub fn set_buffers_flat(&mut self, flat: &[f32]) -> Result<()> {
        let total = self.buffers_flat().len();
        if flat.len() != total {
            return Err(Error::Shape(format!(
                "expected {total} running-statistic values, found {}",
                flat.len()
            )));
        }
        let mut at = 0;
        self.visit(&mut |_, slot| {
            if let Slot::Buffer(_, b) = slot {
                let n = b.len();
                b.copy_from_slice(&flat[at..at + n]);
                at += n;
            }
        });
        Ok(())
    }

    /// The names and shapes of every tensor, parameters and buffers alike.
    pub fn tensor_names(&mut self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.visit(&mut |name, slot| {
            let shape = match slot {
                Slot::Param(p) => p.shape.clone(),
                Slot::Buffer(s, _) => s.to_vec(),
            };
            out.push((name.to_string(), shape));
        });
        out
    }
}

fn stem_output<'a>(maxpool: &'a Option<MaxPool2d>, stem_act: &'a [f32]) -> &'a [f32] {
    match maxpool {
        Some(mp) => &mp.out,
        None => stem_act,
    }
}
