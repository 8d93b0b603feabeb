//! `TrainingPlan`: the training step of one network at one input shape and batch on the
//! channel-blocked layout of the inference plan, built once and reused every step. The
//! weights stay in [`Params`], which the plan reads and whose gradients and running
//! statistics it writes; the plan holds everything else.
//!
//! - One arena, laid out up front in fixed slots: a copy of the NCHW input (the stem's
//!   backward-filter reads it), every convolution's output `z` and its batch norm's
//!   output `y` (what backward reads again: batch norm recomputes `xhat` from `z`), every
//!   block's output, the features and logits, and five gradient slots as large as the
//!   largest activation, reused by every layer. A call with fewer images than the plan's
//!   batch runs on a prefix of every slot.
//! - Derived weights for every pass of every convolution (packed or Winograd-transformed
//!   forward filters; flipped and transposed filters for backward-data), remade once per
//!   [`Params::version`] of the weights, i.e. once per optimizer step.
//! - The algorithm of each pass, chosen by the inference plan's rule (`choose::auto`) on
//!   its geometry: the forward pass and the stride-1 backward-data (a forward convolution
//!   of the output gradient with the flipped, transposed filters) run the inference
//!   kernels; strided backward-data and backward-filter run their own blocked kernels.
//!
//! The step order is the paper's network: stem conv-BN-ReLU (and max pooling), blocks of
//! conv-BN(-ReLU) stages with the shortcut added before the last ReLU, global average
//! pooling, the classifier; backward walks it in reverse. Its twin, layer by layer in
//! NCHW, is [`super::train_nchw::NchwTrainingPlan`].

use super::choose::{self, Algo, ConvChoice};
use crate::aligned::{AlignedVec, LINE_BYTES};
use crate::kernels::blocked::bf16_filter_grad::pointwise_filter_grad;
use crate::kernels::blocked::bf16_tile_filter_grad;
use crate::kernels::blocked::data_grad::{
    as_forward, data_grad, data_grad_gather, data_grad_packed_len, data_grad_with, pack_data_grad_weights,
};
use crate::kernels::blocked::direct;
use crate::kernels::blocked::filter_grad::filter_grad;
use crate::kernels::blocked::moments::{Gather, GradSums, Moments};
use crate::kernels::blocked::norm;
use crate::kernels::blocked::pool::{
    global_avg_pool, global_avg_pool_backward, max_pool_backward, max_pool_with_argmax, zero_pad_shortcut,
    zero_pad_shortcut_backward_add,
};
use crate::kernels::blocked::winograd::{
    transform_flipped_filters, winograd_conv_gather, winograd_conv_with, Transformed,
};
use crate::kernels::blocked::winograd_filter_grad::{self, winograd_filter_grad};
use crate::kernels::blocked::{amx, bf16, bf16_data_grad, bf16_direct};
use crate::kernels::blocked::{BlockedEpilogue, Residual};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::pool::PoolGeometry;
use crate::kernels::winograd::WinogradTile;
use crate::layers::batchnorm::{update_running, EPS};
use crate::layers::{linear, pool, relu, Dims};
use crate::layout::Blocked;
use crate::model::{Arch, ConvBn, ResNetConfig, ShortcutKind};
use crate::params::Entry;
use crate::simd::{F32xBlock, BLOCK};
use crate::{Error, Params, Result};
use std::ops::Range;

/// A region of the arena holding up to `batch` images of `shape` (shape at batch 1).
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: usize,
    shape: Blocked,
}

impl Slot {
    fn per_image(&self) -> usize {
        self.shape.len()
    }

    /// The values of the first `n` images.
    fn at(self, n: usize) -> Range<usize> {
        self.offset..self.offset + n * self.per_image()
    }

    /// The shape of the first `n` images.
    fn shape(self, n: usize) -> Blocked {
        Blocked { n, ..self.shape }
    }
}

/// How backward-data of a convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataGradAlgo {
    /// Stride 1: a forward convolution of the output gradient with the flipped,
    /// transposed filters, by the given algorithm.
    Forward(Algo),
    /// Any stride: the blocked backward-data kernel.
    Strided,
}

impl DataGradAlgo {
    /// The name `resnet bench --layers --train` shows.
    pub fn name(self) -> &'static str {
        match self {
            DataGradAlgo::Forward(a) => a.name(),
            DataGradAlgo::Strided => "strided",
        }
    }
}

/// How backward-filter of a convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterGradAlgo {
    /// The blocked direct kernel (any shape).
    Direct,
    /// The Winograd adjoint (3x3 stride 1 pad 1, input in blocks of `BLOCK`).
    Winograd(WinogradTile),
    /// With bf16 products ([`TrainingPlan::use_bf16`]): the tile kernel
    /// [`bf16_tile_filter_grad::filter_grad`] where [`bf16_filter_grad_on_tiles`] says so,
    /// else (an unpadded 1x1 convolution) [`pointwise_filter_grad`].
    Bf16,
}

impl FilterGradAlgo {
    /// The name `resnet bench --layers --train` shows.
    pub fn name(self) -> &'static str {
        match self {
            FilterGradAlgo::Direct => "direct",
            FilterGradAlgo::Winograd(WinogradTile::F2) => "wino2",
            FilterGradAlgo::Winograd(WinogradTile::F4) => "wino4",
            FilterGradAlgo::Bf16 => "bf16",
        }
    }

    /// Every way that applies to `g` with input blocks of `in_block`.
    pub fn candidates(g: &ConvGeometry, in_block: usize) -> Vec<FilterGradAlgo> {
        let mut all = vec![FilterGradAlgo::Direct];
        if in_block == BLOCK && Algo::Winograd(WinogradTile::F4).applies(g) {
            all.extend([WinogradTile::F2, WinogradTile::F4].map(FilterGradAlgo::Winograd));
        }
        all
    }

    /// `dw += dL/dW` of `g` from `input` (blocks of `in_block`) and `dy` by this way.
    pub fn run(self, g: &ConvGeometry, input: &[f32], in_block: usize, dy: &[f32], dw: &mut [f32]) {
        match self {
            FilterGradAlgo::Direct => filter_grad::<F32xBlock>(g, input, in_block, dy, dw),
            FilterGradAlgo::Winograd(tile) => winograd_filter_grad::<F32xBlock>(g, tile, input, dy, dw),
            FilterGradAlgo::Bf16 if bf16_filter_grad_on_tiles(g, in_block) => {
                bf16_tile_filter_grad::filter_grad(g, input, dy, dw)
            }
            FilterGradAlgo::Bf16 => pointwise_filter_grad(g, input, dy, dw),
        }
    }
}

/// Fewest tiles per partial sum (`winograd_filter_grad::tiles_per_sum`) for which
/// [`filter_grad_algo`] picks Winograd: with fewer, summing the tasks' partial products
/// (`a^2 x K x C` each) costs as much as it saves. Measured (`examples/fgrad_bench.rs`,
/// 2 threads, ms, direct / F(2x2) / F(4x4)): ResNet-20 b128 1.40/1.03/0.64 (16
/// channels, 2048 F(4x4) tiles a task), 1.13/0.73/0.51 (32, 512), 1.13/0.71/0.54 (64,
/// 128); ResNet-50 b8 3.72/2.16/1.45 (64 at 56x56, 392), 3.61/2.27/1.74 (128 at 28x28,
/// 98), 3.54/2.93/4.51 (256 at 14x14: F(2x2) 98 tiles a task, F(4x4) 32),
/// 3.72/6.62/9.74 (512 at 7x7: 32 and 8). Since the layers whose partial sums outgrow
/// the L2 sum over all the call's tiles at once (by positions), ResNet-50's 256- and
/// 512-channel layers take Winograd too (two Zen 4 cores, ms, direct / F(2x2) /
/// F(4x4)): at b16 16.3-18.5/10.0-11.6/8.3-11.3 (256 at 14x14) and
/// 15.0-17.1/12.5-22.7/10.8 (512 at 7x7: 256 and 64 tiles); at b8 8.1-8.2/7.1-7.2/8.8
/// (512 at 7x7: F(4x4)'s 32 tiles are too few, F(2x2)'s 128 are not).
pub const MIN_WINOGRAD_GRAD_TILES: usize = 64;

/// Most floats of partial sums (64 MB) a Winograd backward-filter call may use: F(4x4)'s
/// one `W` of ResNet-50's 512-channel layers is 38 MB.
pub const MAX_WINOGRAD_GRAD_PARTIALS: usize = 1 << 24;

/// How the plan runs backward-filter of `g` with input blocks of `in_block`: the
/// largest Winograd tile that sums at least [`MIN_WINOGRAD_GRAD_TILES`] tiles per
/// partial sum within [`MAX_WINOGRAD_GRAD_PARTIALS`], else the direct kernel.
pub fn filter_grad_algo(g: &ConvGeometry, in_block: usize) -> FilterGradAlgo {
    FilterGradAlgo::candidates(g, in_block)
        .into_iter()
        .rev()
        .find(|a| match a {
            FilterGradAlgo::Direct => true,
            // Never a candidate: `use_bf16` gives it.
            FilterGradAlgo::Bf16 => false,
            FilterGradAlgo::Winograd(tile) => {
                winograd_filter_grad::tiles_per_sum(g, *tile, BLOCK) >= MIN_WINOGRAD_GRAD_TILES
                    && winograd_filter_grad::partial_floats(g, *tile, BLOCK) <= MAX_WINOGRAD_GRAD_PARTIALS
            }
        })
        .unwrap_or(FilterGradAlgo::Direct)
}

/// One convolution and its batch norm, as the plan runs them.
#[derive(Clone, Debug)]
pub struct TrainConv {
    /// The convolution's torchvision name (`layer1.0.conv2`).
    pub name: String,
    /// Its batch norm's name.
    pub bn: String,
    /// The geometry at the plan's full batch.
    pub geometry: ConvGeometry,
    /// Channels per block of its input: 1 for the stem, which reads NCHW.
    pub in_block: usize,
    /// The forward pass's algorithm.
    pub forward: Algo,
    /// The backward-data pass's algorithm (`None` for the stem, whose input needs no
    /// gradient).
    pub data_grad: Option<DataGradAlgo>,
    /// The backward-filter pass's algorithm.
    pub filter_grad: FilterGradAlgo,
    /// Whether a ReLU follows the batch norm (fused into it).
    pub relu: bool,
    weight: Range<usize>,
    gamma: Range<usize>,
    beta: Range<usize>,
    running_mean: Range<usize>,
    running_var: Range<usize>,
    /// Where its forward and backward-data weights lie in the plan's derived weights.
    fwd_weights: Range<usize>,
    data_weights: Range<usize>,
    /// With bf16 products ([`TrainingPlan::use_bf16`]): where the packed bf16 copies of
    /// those Winograd filters lie in the plan's bf16 weights (empty: f32 products).
    fwd_bf16: Range<usize>,
    data_bf16: Range<usize>,
    z: Slot,
    y: Slot,
    /// Per padded channel: the batch mean and `1 / sqrt(var + eps)` the forward pass used.
    mean: Range<usize>,
    inv_std: Range<usize>,
    /// Per padded channel: the batch norm's `gamma * inv_std` and `beta - mean * that`.
    scale: Range<usize>,
    shift: Range<usize>,
}

/// What a convolution's backward-data adds as it stores the input's gradient (one run as
/// a stride-1 forward convolution, see [`TrainConv::fuses_data_grad`]): an identity shortcut's
/// gradient, and the backward of the ReLU that produced the convolution's input.
#[derive(Clone, Copy, Debug, Default)]
struct DataGradEpilogue {
    residual: Option<Slot>,
    relu_output: Option<Slot>,
}

impl TrainConv {
    /// Whether its backward-data can apply a [`DataGradEpilogue`].
    fn fuses_data_grad(&self) -> bool {
        match self.data_grad {
            // Winograd, the stride-1 direct form and the bf16 kernels.
            Some(DataGradAlgo::Forward(_)) => true,
            _ => false,
        }
    }

    fn geometry_at(&self, n: usize) -> ConvGeometry {
        ConvGeometry {
            batch: n,
            ..self.geometry
        }
    }

    /// Whether the forward pass runs with bf16 products ([`TrainingPlan::use_bf16`]), by
    /// the scheme of `forward` ([`bf16_name`]).
    pub fn forward_bf16(&self) -> bool {
        !self.fwd_bf16.is_empty()
    }

    /// Whether backward-data runs with bf16 products.
    pub fn data_grad_bf16(&self) -> bool {
        !self.data_bf16.is_empty()
    }

    /// The geometry of its stride-1 backward-data as a forward convolution.
    fn data_geometry(&self, n: usize) -> ConvGeometry {
        as_forward(&self.geometry_at(n)).expect("a forward-form backward-data has a stride-1 geometry")
    }
}

#[derive(Clone, Copy, Debug)]
enum Shortcut {
    None,
    Identity,
    ZeroPad {
        stride: usize,
    },
    /// Index of the projection's convolution in `convs`.
    Projection(usize),
}

#[derive(Clone, Debug)]
struct Block {
    /// Indices of the stages in `convs`.
    stages: Range<usize>,
    shortcut: Shortcut,
    input: Slot,
    out: Slot,
}

/// What the steps write besides the arena: derived weights and small scratch.
struct Work {
    arena: AlignedVec<f32>,
    argmax: Vec<u32>,
    derived: AlignedVec<f32>,
    /// Packed bf16 copies of the Winograd filters of convolutions with bf16 products.
    derived_bf16: AlignedVec<u16>,
    /// The weights' [`Params::version`] `derived` was made from.
    derived_from: Option<u64>,
    /// Flipped, transposed OIHW filters of one convolution while its backward-data
    /// weights are made.
    /// Per padded channel f64 sums and per-task partials of the batch norms.
    sums: [Vec<f64>; 2],
    partials: Vec<f64>,
    /// Per padded channel f32 coefficients of the batch norms.
    coef: [Vec<f32>; 3],
}

/// A network's training step laid out for one input shape and batch (see the module
/// documentation).
pub struct TrainingPlan {
    config: ResNetConfig,
    batch: usize,
    height: usize,
    width: usize,
    convs: Vec<TrainConv>,
    blocks: Vec<Block>,
    /// The NCHW input, as a slot of blocks of one channel.
    input: Slot,
    pool: Option<(PoolGeometry, Slot)>,
    /// The input of the first block (stem output, after pooling).
    body_input: Slot,
    features: usize,
    classes: usize,
    fc_weight: Range<usize>,
    fc_bias: Range<usize>,
    feature_slot: Range<usize>,
    logit_slot: Range<usize>,
    pad: Slot,
    /// Gradient slots: two that alternate between blocks, the gradient at a block's
    /// sum, and two within a block; each holds the largest activation.
    grads: [Slot; 5],
    work: Work,
    /// Images of the last training forward pass (0: none, backward cannot run).
    last_n: usize,
}

impl std::fmt::Debug for TrainingPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainingPlan")
            .field("model", &self.config.name)
            .field("batch", &self.batch)
            .field("input", &(self.height, self.width))
            .field("arena_bytes", &(self.work.arena.len() * 4))
            .finish_non_exhaustive()
    }
}

/// Floats of one cache line: every slot, fixed range and derived range starts on one.
const LINE_FLOATS: usize = LINE_BYTES / std::mem::size_of::<f32>();

/// Lays slots out one after another.
struct Layout {
    batch: usize,
    len: usize,
    largest: usize,
    derived: usize,
}

impl Layout {
    fn slot(&mut self, shape: Blocked) -> Slot {
        self.len = self.len.next_multiple_of(LINE_FLOATS);
        let s = Slot {
            offset: self.len,
            shape: Blocked { n: 1, ..shape },
        };
        self.len += s.per_image() * self.batch;
        self.largest = self.largest.max(s.per_image());
        s
    }

    fn fixed(&mut self, len: usize) -> Range<usize> {
        self.len = self.len.next_multiple_of(LINE_FLOATS) + len;
        self.len - len..self.len
    }

    fn derived(&mut self, len: usize) -> Range<usize> {
        self.derived = self.derived.next_multiple_of(LINE_FLOATS) + len;
        self.derived - len..self.derived
    }
}

pub(super) fn entry<'a>(entries: &'a [Entry], name: &str) -> Result<&'a Entry> {
    entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| Error::Config(format!("no tensor {name}")))
}

pub(super) fn range(e: &Entry) -> Range<usize> {
    e.offset..e.offset + e.len
}

/// Input channels from which [`TrainingPlan::use_bf16`] gives a convolution bf16
/// products: with fewer, F(2x2) with bf16 products is no faster than F(4x4) in f32
/// (`wino_bench`, 2 threads, ms: ResNet-20 b128 16 channels 1.035 against 0.759, 32:
/// 0.546 against 0.457, 64: 0.417 against 0.427; ResNet-50 b8 128 channels 1.030
/// against 1.252, 256: 1.107 against 1.708, 512: 1.209 against 2.347).
pub const BF16_MIN_CHANNELS: usize = 128;

/// The filters a Winograd convolution runs with: the packed bf16 copy when there is one.
fn transformed<'a>(f32s: &'a [f32], bf16s: &'a [u16]) -> Transformed<'a> {
    if bf16s.is_empty() {
        Transformed::F32(f32s)
    } else {
        Transformed::Bf16(bf16s)
    }
}

/// Packs the Winograd filters `u` of a convolution of `c` input and `k` output channels
/// into `out`, its bf16 copy (nothing when `out` is empty: f32 products).
fn pack_bf16(tile: WinogradTile, c: usize, k: usize, u: &[f32], out: &mut [u16]) {
    if !out.is_empty() {
        let a = tile.alpha();
        bf16::pack_filters(u, a * a, k.div_ceil(BLOCK), c.next_multiple_of(BLOCK), out);
    }
}

/// The algorithm whose products run in bf16 for the forward pass of `g` (input blocks of
/// `in_block`) that runs `forward` in f32, under [`TrainingPlan::use_bf16`]'s rule:
/// `Direct` ([`bf16_direct_kernel`]) for any unpadded 1x1 convolution of blocked input
/// (1.42x to 2.12x the f32 direct kernel on ResNet-50 b16 shapes, 2 threads; the strided
/// ones read the input pixels under the output's) and, where the CPU has AMX tiles, for
/// every other convolution of blocked input ([`bf16_direct::direct`]: ResNet-50 b16's 3x3
/// layers 1.5-2.4x f32 F(4x4) and 3.2x the f32 direct stride-2 kernel, ResNet-20 b128's
/// 1.4x F(4x4) but at 8x8, where F(4x4) was 1.1x faster: `resnet bench --layers --train
/// --precision bf16` times both, 2 threads of the Intel host); without AMX, F(2x2) for a
/// Winograd convolution of [`BF16_MIN_CHANNELS`] input channels or more (F(4x4) magnifies
/// bf16's rounding); `None`: the pass stays f32.
pub fn bf16_forward(g: &ConvGeometry, forward: Algo, in_block: usize) -> Option<Algo> {
    match forward {
        _ if unpadded_1x1(g, in_block) => Some(Algo::Direct),
        _ if in_block == BLOCK && amx::available() => Some(Algo::Direct),
        Algo::Winograd(_) if g.in_channels >= BF16_MIN_CHANNELS => Some(Algo::Winograd(WinogradTile::F2)),
        _ => None,
    }
}

/// [`bf16_forward`]'s rule for backward-data, run as `data_grad` in f32: the transposed
/// 1x1 kernel for a stride-1 1x1 convolution; with AMX the tile kernels for any other,
/// the direct one on the flipped weights at stride 1, the polyphase one
/// ([`bf16_data_grad::data_grad_strided`]) at larger strides; without, F(2x2) for a
/// Winograd one of [`BF16_MIN_CHANNELS`] output channels or more.
pub fn bf16_data_grad(g: &ConvGeometry, data_grad: Option<DataGradAlgo>, in_block: usize) -> Option<Algo> {
    match data_grad? {
        _ if unpadded_1x1(g, in_block) && g.stride == 1 => Some(Algo::Direct),
        _ if in_block == BLOCK && amx::available() => Some(Algo::Direct),
        DataGradAlgo::Forward(Algo::Winograd(_)) if g.out_channels >= BF16_MIN_CHANNELS => {
            Some(Algo::Winograd(WinogradTile::F2))
        }
        _ => None,
    }
}

/// Length of the bf16 weights of a pass that [`bf16_forward`] or [`bf16_data_grad`] runs
/// `Direct` (`flipped`: the backward-data of the forward convolution `g`).
fn bf16_direct_len(g: &ConvGeometry, flipped: bool) -> usize {
    match (g.kernel_h, g.kernel_w, flipped) {
        (1, 1, false) => bf16::pointwise_len(g.in_channels, g.out_channels),
        (1, 1, true) => bf16::pointwise_len(g.out_channels, g.in_channels),
        _ => bf16_direct::direct_len(g, flipped),
    }
}

/// Packs OIHW `weight` for [`bf16_direct_kernel`] (see [`bf16_direct_len`]), or for a
/// strided convolution's backward-data ([`bf16_data_grad::data_grad_strided`]).
fn pack_bf16_direct(weight: &[f32], g: &ConvGeometry, flipped: bool, out: &mut [u16]) {
    match (g.kernel_h, g.kernel_w) {
        _ if flipped && g.stride > 1 => bf16_data_grad::pack_data_grad_strided(weight, g, out),
        (1, 1) => bf16::pack_pointwise(weight, g.in_channels, g.out_channels, flipped, out),
        _ => bf16_direct::pack_direct(weight, g, flipped, out),
    }
}

/// The bf16 kernel of a `Direct` pass of geometry `run` (for backward-data, the forward
/// geometry [`as_forward`] gives), with its epilogue and gather: [`bf16::pointwise_with`]
/// for an unpadded 1x1 convolution, else [`bf16_direct::direct_with`].
pub fn bf16_direct_kernel(
    run: &ConvGeometry,
    x: &[f32],
    w16: &[u16],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Option<Gather>,
) {
    if run.kernel_h == 1 && run.kernel_w == 1 && run.pad == 0 {
        bf16::pointwise_with(run, x, w16, ep, out, gather)
    } else {
        bf16_direct::direct_with(run, x, w16, ep, out, gather)
    }
}

/// Fewest input channels for which a backward-filter runs on the AMX tiles
/// ([`bf16_filter_grad_on_tiles`]). Its tiles take 32 input x 32 output channels of one
/// tap, so 16 channels fill half of each: measured against f32 (`resnet bench --layers
/// --train --precision bf16`, 2 threads of the Intel host), ResNet-20's 16- and
/// 32-channel layers ran at 0.55-0.87x the f32 kernels, its 64-channel ones 0.95-1.06x,
/// ResNet-50 b16's 3x3 layers 1.15-1.9x (64 to 512 channels) and its strided ones
/// 1.8-2.2x.
pub const BF16_TILE_FILTER_MIN_CHANNELS: usize = 64;

/// Whether backward-filter of `g` runs in bf16 ([`FilterGradAlgo::Bf16`]) under
/// [`TrainingPlan::use_bf16`]: every unpadded 1x1 convolution of blocked input, and every
/// other one [`bf16_filter_grad_on_tiles`] takes.
pub fn bf16_filter_grad(g: &ConvGeometry, in_block: usize) -> bool {
    unpadded_1x1(g, in_block) || bf16_filter_grad_on_tiles(g, in_block)
}

/// Whether a bf16 backward-filter of `g` runs on the AMX tiles
/// ([`bf16_tile_filter_grad`]) rather than on `vdpbf16ps` ([`pointwise_filter_grad`], the
/// unpadded 1x1 convolutions only): where the CPU has the tiles, for blocked input of
/// [`BF16_TILE_FILTER_MIN_CHANNELS`] channels or more, but the strided 1x1 convolutions,
/// of whose polyphase planes the tile kernel would read one in four. Measured on
/// ResNet-50 b16 (2 threads, the Intel host, alternating call by call), the tiles against
/// `vdpbf16ps` on the 1x1 layers: stride 1 1.10-1.27x, stride 2 0.75-0.77x.
pub fn bf16_filter_grad_on_tiles(g: &ConvGeometry, in_block: usize) -> bool {
    let strided_1x1 = g.kernel_h == 1 && g.kernel_w == 1 && g.stride > 1;
    in_block == BLOCK && amx::available() && g.in_channels >= BF16_TILE_FILTER_MIN_CHANNELS && !strided_1x1
}

fn unpadded_1x1(g: &ConvGeometry, in_block: usize) -> bool {
    g.kernel_h == 1 && g.kernel_w == 1 && g.pad == 0 && in_block == BLOCK
}

/// The name `resnet bench --layers --train` gives a pass with bf16 products by `algo`
/// (from [`bf16_forward`] or [`bf16_data_grad`]).
pub fn bf16_name(algo: Algo) -> &'static str {
    match algo {
        Algo::Direct => "bf16",
        Algo::Winograd(WinogradTile::F2) => "bf16-wino2",
        Algo::Winograd(WinogradTile::F4) => "bf16-wino4",
        Algo::WinogradS2(_) => "bf16-s2",
    }
}

/// A gradient slot holding `shape` (at batch 1) instead of its own.
fn as_shape(s: Slot, shape: Blocked) -> Slot {
    Slot { shape, ..s }
}

impl TrainingPlan {
    /// Plans training steps of `config` on up to `batch` NCHW images of `height x width`.
    pub fn new(config: &ResNetConfig, batch: usize, height: usize, width: usize) -> Result<Self> {
        let arch = Arch::of(config)?;
        if batch == 0 || height == 0 || width == 0 {
            return Err(Error::Shape(format!(
                "a plan needs at least one image of at least 1x1, found batch {batch} of {height}x{width}"
            )));
        }
        let entries = Params::layout_of(config)?;
        let mut lay = Layout {
            batch,
            len: 0,
            largest: 0,
            derived: 0,
        };
        let mut convs = Vec::new();
        let input = lay.slot(Blocked::nchw(1, config.in_channels, height, width));
        let stem_out = add_conv(&mut convs, &entries, &mut lay, batch, &arch.stem, input.shape, true)?;
        let mut d = stem_out;
        let mut body_input = convs[0].y;
        let mut pool = None;
        if arch.maxpool {
            let g = pool::stem_max_pool(Dims::new(batch, d.c, d.h, d.w))?;
            let slot = lay.slot(d.with_hw(g.out_h, g.out_w));
            pool = Some((g, slot));
            body_input = slot;
            d = slot.shape;
        }
        let mut blocks = Vec::new();
        let mut cur = body_input;
        for b in &arch.blocks {
            let first = convs.len();
            let last = b.stages.len() - 1;
            let mut x = d;
            for (i, s) in b.stages.iter().enumerate() {
                x = add_conv(&mut convs, &entries, &mut lay, batch, s, x, i < last)?;
            }
            let stages = first..convs.len();
            let shortcut = match &b.shortcut {
                ShortcutKind::None => Shortcut::None,
                ShortcutKind::Identity => Shortcut::Identity,
                ShortcutKind::ZeroPad { stride } => Shortcut::ZeroPad { stride: *stride },
                ShortcutKind::Projection(p) => {
                    add_conv(&mut convs, &entries, &mut lay, batch, p, d, false)?;
                    Shortcut::Projection(convs.len() - 1)
                }
            };
            let out = lay.slot(x);
            blocks.push(Block {
                stages,
                shortcut,
                input: cur,
                out,
            });
            cur = out;
            d = x;
        }
        let feature_slot = lay.fixed(batch * arch.features);
        let logit_slot = lay.fixed(batch * arch.classes);
        let largest = Blocked::nchw(1, lay.largest, 1, 1);
        let pad = lay.slot(largest);
        let grads = [(); 5].map(|_| lay.slot(largest));
        let channels = arch
            .convs()
            .map(|c| c.out_channels.div_ceil(BLOCK) * BLOCK)
            .max()
            .unwrap_or(0);
        let argmax = pool.map_or(0, |(_, s): (PoolGeometry, Slot)| batch * s.per_image());
        let derived = lay.derived;
        Ok(TrainingPlan {
            config: config.clone(),
            batch,
            height,
            width,
            convs,
            blocks,
            input,
            pool,
            body_input,
            features: arch.features,
            classes: arch.classes,
            fc_weight: range(entry(&entries, "fc.weight")?),
            fc_bias: range(entry(&entries, "fc.bias")?),
            feature_slot,
            logit_slot,
            pad,
            grads,
            work: Work {
                arena: AlignedVec::zeroed(lay.len),
                argmax: vec![0; argmax],
                derived: AlignedVec::zeroed(derived),
                derived_bf16: AlignedVec::new(),
                derived_from: None,
                sums: [vec![0.0; channels], vec![0.0; channels]],
                partials: Vec::new(),
                coef: [vec![0.0; channels], vec![0.0; channels], vec![0.0; channels]],
            },
            last_n: 0,
        })
    }

    /// The most images one step takes.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The input size the plan was built for, `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The architecture the plan runs.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Every convolution in the order the forward pass runs them.
    pub fn convs(&self) -> &[TrainConv] {
        &self.convs
    }

    /// Runs backward-filter of every convolution `algo` applies to by `algo` instead of
    /// the plan's choice (the tests compare each way with the NCHW twin).
    pub fn force_filter_grad(&mut self, algo: FilterGradAlgo) {
        for c in &mut self.convs {
            if FilterGradAlgo::candidates(&c.geometry, c.in_block).contains(&algo) {
                c.filter_grad = algo;
            }
        }
    }

    /// Gives bf16 products (`--precision bf16`) to the passes [`bf16_forward`],
    /// [`bf16_data_grad`] and [`bf16_filter_grad`] name: every pass of the unpadded 1x1
    /// convolutions but the strided ones' backward-data ([`bf16::pointwise`],
    /// [`pointwise_filter_grad`]); with AMX tiles, the forward and backward-data of every
    /// other convolution of blocked input ([`bf16_direct::direct`],
    /// [`bf16_data_grad::data_grad_strided`]), and the backward-filter of every convolution
    /// [`bf16_filter_grad_on_tiles`] takes ([`bf16_tile_filter_grad`]: 64 input channels
    /// or more, the stride-1 1x1 ones included); without, the forward and backward-data of the Winograd
    /// convolutions wide enough to gain ([`BF16_MIN_CHANNELS`] channels or more), which
    /// switch to F(2x2). Returns how many passes switched. F(4x4) is never used with bf16:
    /// its output transform magnifies bf16's rounding to 5-9 % of the output's scale,
    /// against 0.3-0.5 % for F(2x2) (the kernels' tests). Fails without AVX512_BF16 or on
    /// a build whose blocks are not 16 lanes.
    pub fn use_bf16(&mut self) -> Result<usize> {
        if !bf16::available() || BLOCK != bf16::LANES {
            return Err(Error::Config(
                "bf16 products need an x86-64 CPU with AVX-512F and AVX512_BF16 (and a build with 16-lane blocks)"
                    .into(),
            ));
        }
        let mut packed = self.work.derived_bf16.len();
        let mut switched = 0;
        // The next `len` values of the bf16 weights, for one more pass in bf16.
        let mut claim = |len: usize| {
            packed = packed.next_multiple_of(LINE_BYTES / std::mem::size_of::<u16>()) + len;
            packed - len..packed
        };
        for c in &mut self.convs {
            let g = c.geometry;
            if c.fwd_bf16.is_empty() {
                c.fwd_bf16 = match bf16_forward(&g, c.forward, c.in_block) {
                    Some(algo @ Algo::Winograd(_)) => {
                        c.forward = algo;
                        let len = choose::derived_len(algo, &g, c.in_block);
                        c.fwd_weights = c.fwd_weights.start..c.fwd_weights.start + len;
                        claim(len)
                    }
                    Some(Algo::Direct) => {
                        if let Algo::Winograd(_) = c.forward {
                            c.forward = Algo::Direct;
                            let len = choose::derived_len(Algo::Direct, &g, c.in_block);
                            c.fwd_weights = c.fwd_weights.start..c.fwd_weights.start + len;
                        }
                        claim(bf16_direct_len(&g, false))
                    }
                    // The stride-2 transform has no bf16 form.
                    Some(Algo::WinogradS2(_)) | None => 0..0,
                };
                switched += usize::from(!c.fwd_bf16.is_empty());
            }
            if bf16_filter_grad(&g, c.in_block) && c.filter_grad != FilterGradAlgo::Bf16 {
                c.filter_grad = FilterGradAlgo::Bf16;
                switched += 1;
            }
            if c.data_bf16.is_empty() {
                c.data_bf16 = match bf16_data_grad(&g, c.data_grad, c.in_block) {
                    Some(algo @ Algo::Winograd(_)) => {
                        c.data_grad = Some(DataGradAlgo::Forward(algo));
                        let len = choose::derived_len(algo, &as_forward(&g).expect("stride 1"), BLOCK);
                        c.data_weights = c.data_weights.start..c.data_weights.start + len;
                        claim(len)
                    }
                    Some(Algo::Direct) => {
                        // At stride 1, run as a forward convolution, which fuses its
                        // epilogue (whichever f32 form the plan had chosen).
                        if as_forward(&g).is_some() {
                            c.data_grad = Some(DataGradAlgo::Forward(Algo::Direct));
                            let len = data_grad_packed_len(&g, BLOCK);
                            c.data_weights = c.data_weights.start..c.data_weights.start + len;
                        }
                        claim(bf16_direct_len(&g, true))
                    }
                    // The stride-2 transform has no bf16 form.
                    Some(Algo::WinogradS2(_)) | None => 0..0,
                };
                switched += usize::from(!c.data_bf16.is_empty());
            }
        }
        self.work.derived_bf16.resize_zeroed(packed);
        self.work.derived_from = None;
        Ok(switched)
    }

    /// Bytes of the arena (activations, saved statistics and gradients).
    pub fn arena_bytes(&self) -> usize {
        self.work.arena.len() * std::mem::size_of::<f32>()
    }

    /// Bytes of the weights derived for the kernels (remade every optimizer step).
    pub fn derived_weight_bytes(&self) -> usize {
        self.work.derived.len() * std::mem::size_of::<f32>()
    }

    fn check(&self, params: &Params) -> Result<()> {
        if params.config() != &self.config {
            return Err(Error::Config(format!(
                "a training plan for {} cannot run the parameters of {}",
                self.config.name,
                params.config().name
            )));
        }
        Ok(())
    }

    /// Remakes the derived weights when the weights changed since they were made.
    fn derive(&mut self, params: &Params) {
        if self.work.derived_from == Some(params.version()) {
            return;
        }
        let w = &mut self.work;
        let values = params.values();
        for c in &self.convs {
            let weight = &values[c.weight.clone()];
            let g = &c.geometry;
            match c.forward {
                // A direct pass with bf16 products never reads its f32 weights.
                Algo::Direct if !c.fwd_bf16.is_empty() => {
                    pack_bf16_direct(weight, g, false, &mut w.derived_bf16[c.fwd_bf16.clone()])
                }
                algo => {
                    let out = &mut w.derived[c.fwd_weights.clone()];
                    choose::derive_weights_into(algo, g, weight, None, c.in_block, out);
                    if let Algo::Winograd(tile) = algo {
                        let out16 = &mut w.derived_bf16[c.fwd_bf16.clone()];
                        pack_bf16(tile, g.in_channels, g.out_channels, out, out16);
                    }
                }
            }
            match c.data_grad {
                Some(DataGradAlgo::Forward(Algo::Winograd(tile))) => {
                    let out = &mut w.derived[c.data_weights.clone()];
                    transform_flipped_filters(weight, g.in_channels, g.out_channels, tile, BLOCK, out);
                    pack_bf16(
                        tile,
                        g.out_channels,
                        g.in_channels,
                        out,
                        &mut w.derived_bf16[c.data_bf16.clone()],
                    );
                }
                Some(_) if !c.data_bf16.is_empty() => {
                    pack_bf16_direct(weight, g, true, &mut w.derived_bf16[c.data_bf16.clone()])
                }
                // The direct form is the backward-data kernel's own stride-1 path.
                Some(_) => pack_data_grad_weights(weight, g, BLOCK, &mut w.derived[c.data_weights.clone()]),
                None => {}
            }
        }
        w.derived_from = Some(params.version());
    }

    /// The training-mode forward pass on `n` NCHW images (`n` at most the plan's batch):
    /// batch statistics in every batch norm, whose running statistics in `params` move
    /// towards them (momentum 0.1, unbiased variance). Keeps what [`TrainingPlan::backward`]
    /// needs and returns the logits, `n x classes`.
    pub fn forward_train(&mut self, params: &mut Params, input: &[f32], n: usize) -> Result<&[f32]> {
        self.forward_train_with(params, input, n, &mut LocalStep)
    }

    /// [`TrainingPlan::forward_train`] on this process's part of a global batch: every
    /// batch norm's moments go through `hooks` (see [`StepHooks::batch_moments`]).
    pub fn forward_train_with(
        &mut self,
        params: &mut Params,
        input: &[f32],
        n: usize,
        hooks: &mut dyn StepHooks,
    ) -> Result<&[f32]> {
        self.check(params)?;
        self.last_n = 0;
        self.derive(params);
        let (values, buffers) = params.values_and_buffers_mut();
        self.run_forward(values, Stats::Train(buffers), input, n, hooks)?;
        // Only the running statistics changed: the derived weights still hold.
        self.work.derived_from = Some(params.version());
        self.last_n = n;
        Ok(&self.work.arena[self.logit_slot.start..][..n * self.classes])
    }

    /// The evaluation-mode forward pass (running statistics, `params` untouched), layer
    /// by layer without folding: the unfused twin that the inference plan's folded and
    /// fused convolutions are tested against. Leaves nothing for backward.
    pub fn forward_eval(&mut self, params: &Params, input: &[f32], n: usize) -> Result<&[f32]> {
        self.check(params)?;
        self.last_n = 0;
        self.derive(params);
        self.run_forward(params.values(), Stats::Eval(params.buffers()), input, n, &mut LocalStep)?;
        Ok(&self.work.arena[self.logit_slot.start..][..n * self.classes])
    }

    fn run_forward(
        &mut self,
        values: &[f32],
        mut stats: Stats,
        input: &[f32],
        n: usize,
        hooks: &mut dyn StepHooks,
    ) -> Result<()> {
        let stats = &mut stats;
        let per_image = self.input.per_image();
        if n == 0 || n > self.batch || input.len() != n * per_image {
            return Err(Error::Shape(format!(
                "the plan takes 1 to {} images of {} x {} x {}, found {} values for {n} images",
                self.batch,
                self.config.in_channels,
                self.height,
                self.width,
                input.len()
            )));
        }
        let w = &mut self.work;
        w.arena[self.input.at(n)].copy_from_slice(input);
        stage_forward(&self.convs[0], n, self.input, Out::Own, w, values, stats, hooks);
        if let Some((g, out)) = &self.pool {
            let g = PoolGeometry { batch: n, ..*g };
            let y = self.convs[0].y;
            let [x, o] = split(&mut w.arena, [y.at(n), out.at(n)]);
            max_pool_with_argmax(&g, y.shape(n), x, o, &mut w.argmax[..out.at(n).len()]);
        }
        for b in &self.blocks {
            // The shortcut first, so that the last stage's batch norm adds it and applies
            // the block's ReLU in the same pass, straight into the block's output.
            let residual = match b.shortcut {
                Shortcut::None => None,
                Shortcut::Identity => Some(b.input),
                Shortcut::ZeroPad { stride } => {
                    let pad = as_shape(self.pad, b.out.shape);
                    let [x, p] = split(&mut w.arena, [b.input.at(n), pad.at(n)]);
                    zero_pad_shortcut(b.input.shape(n), x, b.out.shape(n), stride, p);
                    Some(pad)
                }
                Shortcut::Projection(p) => {
                    let proj = &self.convs[p];
                    stage_forward(proj, n, b.input, Out::Own, w, values, stats, hooks);
                    Some(proj.y)
                }
            };
            let mut x = b.input;
            for i in b.stages.clone() {
                let out = if i + 1 == b.stages.end {
                    Out::Block { residual, out: b.out }
                } else {
                    Out::Own
                };
                stage_forward(&self.convs[i], n, x, out, w, values, stats, hooks);
                x = self.convs[i].y;
            }
        }
        let last = self.blocks.last().map_or(self.body_input, |b| b.out);
        let feats = self.feature_slot.start..self.feature_slot.start + n * self.features;
        let logits = self.logit_slot.start..self.logit_slot.start + n * self.classes;
        let [x, f, logits] = split(&mut w.arena, [last.at(n), feats, logits]);
        global_avg_pool::<F32xBlock>(last.shape(n), x, f);
        linear::forward(
            f,
            &values[self.fc_weight.clone()],
            &values[self.fc_bias.clone()],
            n,
            self.features,
            self.classes,
            logits,
        );
        Ok(())
    }

    /// Back-propagates `dlogits` (the gradient of the loss with respect to the logits of
    /// the last [`TrainingPlan::forward_train`]) and accumulates every parameter's
    /// gradient into `params.grads_mut()`.
    pub fn backward(&mut self, params: &mut Params, dlogits: &[f32]) -> Result<()> {
        self.backward_with(params, dlogits, &mut LocalStep)
    }

    /// [`TrainingPlan::backward`] on this process's part of a global batch: every batch
    /// norm's sums go through `hooks` (see [`StepHooks::grad_sums`]), and each tensor's
    /// gradient is handed to [`StepHooks::grads_final`] as soon as it is complete.
    pub fn backward_with(&mut self, params: &mut Params, dlogits: &[f32], hooks: &mut dyn StepHooks) -> Result<()> {
        self.check(params)?;
        let n = self.last_n;
        if n == 0 {
            return Err(Error::Shape("backward needs a training forward pass first".into()));
        }
        if dlogits.len() != n * self.classes {
            return Err(Error::Shape(format!(
                "expected {} logit gradients, found {}",
                n * self.classes,
                dlogits.len()
            )));
        }
        let (values, grads) = params.values_and_grads();
        let w = &mut self.work;
        let [mut g0, mut g1, sum, a, b] = self.grads;
        let last = self.blocks.last().map_or(self.body_input, |b| b.out);
        {
            let (dw, db) = split_grads(grads, &self.fc_weight, &self.fc_bias);
            let dfeat = g0.offset..g0.offset + n * self.features;
            let feats = self.feature_slot.start..self.feature_slot.start + n * self.features;
            let [f, df] = split(&mut w.arena, [feats, dfeat.clone()]);
            linear::backward(
                f,
                &values[self.fc_weight.clone()],
                dlogits,
                n,
                self.features,
                self.classes,
                dw,
                db,
                df,
            );
            hooks.grads_final(grads, self.fc_weight.clone());
            hooks.grads_final(grads, self.fc_bias.clone());
            let dx = as_shape(g1, last.shape);
            let [df, dx] = split(&mut w.arena, [dfeat, dx.at(n)]);
            global_avg_pool_backward(last.shape(n), df, dx);
        }
        // Invariant: g1 holds the gradient of the current block's output, or, when
        // `through_relu`, already its gradient through the block's final ReLU. When
        // `sums_ready`, the backward-data that stored the gradient the next stage reads
        // has gathered that stage's batch-norm gradient sums into `w.sums`.
        let mut through_relu = false;
        let mut sums_ready = false;
        for (bi, blk) in self.blocks.iter().enumerate().rev() {
            let dout = as_shape(g1, blk.out.shape);
            let dsum = if through_relu {
                dout
            } else {
                // The block's final ReLU, and the sums of its last batch norm (which has
                // no ReLU of its own) in the same pass.
                let dsum = as_shape(sum, blk.out.shape);
                let last = &self.convs[blk.stages.end - 1];
                assert!(!last.relu, "a block's last batch norm leaves the ReLU to the block");
                let [y, d, s, z, mean] = split(
                    &mut w.arena,
                    [blk.out.at(n), dout.at(n), dsum.at(n), last.z.at(n), last.mean.clone()],
                );
                let [s_dy, s_dyz] = &mut w.sums;
                let shape = blk.out.shape(n);
                norm::relu_backward_grad_sums::<F32xBlock>(shape, y, d, s, z, mean, &mut w.partials, s_dy, s_dyz);
                sums_ready = true;
                dsum
            };
            let dx = as_shape(g0, blk.input.shape);
            let stages = blk.stages.clone();
            // An identity shortcut's gradient is added, and the previous block's final
            // ReLU applied, as the first convolution's backward-data stores its result.
            let fused = matches!(blk.shortcut, Shortcut::Identity) && self.convs[stages.start].fuses_data_grad();
            let mut dy = dsum;
            for i in stages.clone().rev() {
                let c = &self.convs[i];
                // The stage that reads this backward-data's result: the block's previous
                // one, or through the fused epilogue the previous block's last.
                let (x, dxi, ep, reader) = if i == stages.start {
                    let ep = DataGradEpilogue {
                        residual: fused.then_some(dsum),
                        relu_output: (fused && bi > 0).then_some(blk.input),
                    };
                    let reader = (fused && bi > 0).then(|| &self.convs[self.blocks[bi - 1].stages.end - 1]);
                    (blk.input, dx, ep, reader)
                } else {
                    let prev = &self.convs[i - 1];
                    (
                        prev.y,
                        as_shape(b, prev.y.shape),
                        DataGradEpilogue::default(),
                        Some(prev),
                    )
                };
                sums_ready = stage_backward(
                    c,
                    n,
                    (x, dy, as_shape(a, c.z.shape)),
                    Some(DataGrad {
                        dx: dxi,
                        fused: ep,
                        reader,
                    }),
                    sums_ready,
                    w,
                    values,
                    grads,
                    hooks,
                );
                dy = dxi;
            }
            through_relu = fused && bi > 0;
            match blk.shortcut {
                Shortcut::None => {}
                Shortcut::Identity if fused => {}
                Shortcut::Identity => {
                    let [d, s] = split(&mut w.arena, [dx.at(n), dsum.at(n)]);
                    relu::add_assign(d, s);
                }
                Shortcut::ZeroPad { stride } => {
                    let [d, s] = split(&mut w.arena, [dx.at(n), dsum.at(n)]);
                    zero_pad_shortcut_backward_add(dx.shape(n), d, dsum.shape(n), stride, s);
                }
                Shortcut::Projection(p) => {
                    let proj = &self.convs[p];
                    let db = as_shape(b, blk.input.shape);
                    let data = DataGrad {
                        dx: db,
                        fused: DataGradEpilogue::default(),
                        reader: None,
                    };
                    stage_backward(
                        proj,
                        n,
                        (blk.input, dsum, as_shape(a, proj.z.shape)),
                        Some(data),
                        false,
                        w,
                        values,
                        grads,
                        hooks,
                    );
                    let [d, s] = split(&mut w.arena, [dx.at(n), db.at(n)]);
                    relu::add_assign(d, s);
                }
            }
            std::mem::swap(&mut g0, &mut g1);
        }
        let stem = &self.convs[0];
        if let Some((_, out)) = &self.pool {
            let dy = as_shape(g1, out.shape);
            let dx = as_shape(g0, stem.y.shape);
            let [d, x] = split(&mut w.arena, [dy.at(n), dx.at(n)]);
            max_pool_backward(stem.y.shape(n), out.shape(n), d, &w.argmax[..out.at(n).len()], x);
            std::mem::swap(&mut g0, &mut g1);
        }
        let dy = as_shape(g1, stem.y.shape);
        // The stem's gradient comes from the max pool's backward, or (ResNet-20) from the
        // first block's backward-data, which gathers no sums for it.
        stage_backward(
            stem,
            n,
            (self.input, dy, as_shape(g0, stem.z.shape)),
            None,
            false,
            w,
            values,
            grads,
            hooks,
        );
        Ok(())
    }
}

/// Plans the convolution `spec` on `x` (per-image shape) followed by its batch norm (and
/// a ReLU); returns the per-image output shape.
fn add_conv(
    convs: &mut Vec<TrainConv>,
    entries: &[Entry],
    lay: &mut Layout,
    batch: usize,
    spec: &ConvBn,
    x: Blocked,
    relu: bool,
) -> Result<Blocked> {
    let g = spec.geometry(batch, x.c, x.h, x.w)?;
    let out = Blocked::new(1, g.out_channels, g.out_h, g.out_w, BLOCK);
    let in_block = x.block;
    let forward = forward_algo(&g, in_block);
    let data_grad = if in_block == BLOCK { data_grad_algo(&g) } else { None };
    let fwd_weights = lay.derived(choose::derived_len(forward, &g, in_block));
    let data_weights = lay.derived(match data_grad {
        Some(DataGradAlgo::Forward(a @ Algo::Winograd(_))) => {
            choose::derived_len(a, &as_forward(&g).expect("stride 1"), BLOCK)
        }
        Some(_) => data_grad_packed_len(&g, BLOCK),
        None => 0,
    });
    let bn = |field: &str| entry(entries, &format!("{}.{field}", spec.bn)).map(range);
    let channels = out.padded_channels();
    convs.push(TrainConv {
        name: spec.conv.clone(),
        bn: spec.bn.clone(),
        geometry: g,
        in_block,
        forward,
        data_grad,
        filter_grad: filter_grad_algo(&g, in_block),
        relu,
        weight: range(entry(entries, &format!("{}.weight", spec.conv))?),
        gamma: bn("weight")?,
        beta: bn("bias")?,
        running_mean: bn("running_mean")?,
        running_var: bn("running_var")?,
        fwd_weights,
        data_weights,
        fwd_bf16: 0..0,
        data_bf16: 0..0,
        z: lay.slot(out),
        y: lay.slot(out),
        mean: lay.fixed(channels),
        inv_std: lay.fixed(channels),
        scale: lay.fixed(channels),
        shift: lay.fixed(channels),
    });
    Ok(out)
}

/// The running statistics a forward pass uses: updated from the batch's in training,
/// read in evaluation.
pub(super) enum Stats<'a> {
    Train(&'a mut [f32]),
    Eval(&'a [f32]),
}

/// What a data-parallel training step shares with the other processes while it runs
/// (`resnet train` over MPI). The plan calls these hooks with this process's part of the
/// global batch; for synchronised batch norm they turn per-process statistics into the
/// global batch's, so that every process normalises as one process would on the whole
/// batch. [`LocalStep`] keeps everything local (one process).
pub trait StepHooks {
    /// A training batch norm's moments: per channel, `mean` and biased `var` over `count`
    /// local values, replaced by those over the global batch; returns the global count
    /// (which also moves the running statistics).
    fn batch_moments(&mut self, count: f64, mean: &mut [f64], var: &mut [f64]) -> f64;
    /// A batch norm's backward sums: per channel, `sum(dy)` and `sum(dy * (z - mean))`
    /// over `count` local values, replaced by the global batch's sums; returns the global
    /// count. (The gradients of gamma and beta take the local sums before this call: the
    /// gradient reduction adds them up.)
    fn grad_sums(&mut self, count: f64, sum_dy: &mut [f64], sum_dy_zc: &mut [f64]) -> f64;
    /// `grads[range]` of the flat gradients is final for this backward pass: nothing
    /// adds to it again, so it can be sent while the pass goes on.
    fn grads_final(&mut self, grads: &[f32], range: Range<usize>);
}

/// The hooks of a step in one process: statistics stay local, gradients stay put.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalStep;

impl StepHooks for LocalStep {
    fn batch_moments(&mut self, count: f64, _mean: &mut [f64], _var: &mut [f64]) -> f64 {
        count
    }

    fn grad_sums(&mut self, count: f64, _sum_dy: &mut [f64], _sum_dy_zc: &mut [f64]) -> f64 {
        count
    }

    fn grads_final(&mut self, _grads: &[f32], _range: Range<usize>) {}
}

/// Disjoint mutable views of the arena (slots never overlap; a panic here is a bug in
/// the plan's layout).
pub(super) fn split<const N: usize>(arena: &mut [f32], ranges: [Range<usize>; N]) -> [&mut [f32]; N] {
    // Carved with `split_at_mut` in address order rather than `get_disjoint_mut`, which
    // the threaded wasm build's compiler (Rust 1.85) lacks.
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges[i].start);
    let mut views: [Option<&mut [f32]>; N] = std::array::from_fn(|_| None);
    let (mut rest, mut offset) = (arena, 0);
    for i in order {
        let range = &ranges[i];
        assert!(
            offset <= range.start && range.start <= range.end,
            "the plan's slots are disjoint"
        );
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - offset);
        let (view, tail) = tail.split_at_mut(range.len());
        views[i] = Some(view);
        (rest, offset) = (tail, range.end);
    }
    views.map(|view| view.expect("every range is placed"))
}

pub(super) fn split_grads<'a>(
    grads: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    let [a, b] = split(grads, [a.clone(), b.clone()]);
    (a, b)
}

/// Where a stage's batch norm writes.
#[derive(Clone, Copy)]
enum Out {
    /// Its own output slot `y`, with its own ReLU if it has one.
    Own,
    /// A block's output: plus the shortcut `residual` if any, then the block's ReLU.
    Block { residual: Option<Slot>, out: Slot },
}

/// Convolution `x -> z`, then batch norm (and ReLU) `z -> y` (or into a block's output,
/// see [`Out`]): batch statistics in training (saved, and moving the running ones),
/// running statistics in evaluation.
#[allow(clippy::too_many_arguments)]
fn stage_forward(
    c: &TrainConv,
    n: usize,
    x: Slot,
    out: Out,
    w: &mut Work,
    values: &[f32],
    stats: &mut Stats,
    hooks: &mut dyn StepHooks,
) {
    let g = c.geometry_at(n);
    let ep = BlockedEpilogue {
        bias: None,
        residual: Residual::None,
        relu: false,
        relu_output: None,
    };
    // In training, the convolution gathers the batch norm's statistics as it stores.
    let bf16_products = matches!(c.forward, Algo::Direct) && !c.fwd_bf16.is_empty();
    let fused_moments = matches!(stats, Stats::Train(_));
    {
        let [x, z] = split(&mut w.arena, [x.at(n), c.z.at(n)]);
        let weights = &w.derived[c.fwd_weights.clone()];
        let filters = transformed(weights, &w.derived_bf16[c.fwd_bf16.clone()]);
        let [s_mean, s_var] = &mut w.sums;
        match c.forward {
            Algo::Winograd(tile) if fused_moments => {
                let moments = Moments {
                    partials: &mut w.partials,
                    mean: s_mean,
                    var: s_var,
                };
                winograd_conv_gather::<F32xBlock>(&g, tile, x, filters, &ep, z, Gather::Moments(moments))
            }
            Algo::Winograd(tile) => winograd_conv_with::<F32xBlock>(&g, tile, x, filters, &ep, z),
            Algo::Direct if bf16_products => {
                let gather = fused_moments.then(|| {
                    Gather::Moments(Moments {
                        partials: &mut w.partials,
                        mean: s_mean,
                        var: s_var,
                    })
                });
                bf16_direct_kernel(&g, x, &w.derived_bf16[c.fwd_bf16.clone()], &ep, z, gather)
            }
            Algo::Direct if fused_moments => {
                let moments = Moments {
                    partials: &mut w.partials,
                    mean: s_mean,
                    var: s_var,
                };
                direct::direct_conv_gather::<F32xBlock>(&g, x, c.in_block, weights, &ep, z, Gather::Moments(moments))
            }
            Algo::Direct | Algo::WinogradS2(_) => choose::run_conv(c.forward, &g, x, c.in_block, weights, &ep, z),
        }
    }
    let shape = c.z.shape(n);
    let channels = g.out_channels;
    let (dest, residual) = match out {
        Out::Own => (c.y, None),
        Out::Block { residual, out } => (out, residual),
    };
    let res_range = residual.map_or(0..0, |r| as_shape(r, c.z.shape).at(n));
    let [z, y, mean, inv_std, scale, shift, res] = split(
        &mut w.arena,
        [
            c.z.at(n),
            as_shape(dest, c.z.shape).at(n),
            c.mean.clone(),
            c.inv_std.clone(),
            c.scale.clone(),
            c.shift.clone(),
            res_range,
        ],
    );
    let (gamma, beta) = (&values[c.gamma.clone()], &values[c.beta.clone()]);
    match stats {
        Stats::Train(buffers) => {
            let [s_mean, s_var] = &mut w.sums;
            if !fused_moments {
                norm::moments::<F32xBlock>(shape, z, &mut w.partials, s_mean, s_var);
            }
            let [rm, rv] = split(buffers, [c.running_mean.clone(), c.running_var.clone()]);
            let local = (n * g.out_h * g.out_w) as f64;
            let count = hooks.batch_moments(local, &mut s_mean[..channels], &mut s_var[..channels]);
            mean.fill(0.0);
            inv_std.fill(0.0);
            for ch in 0..channels {
                mean[ch] = s_mean[ch] as f32;
                inv_std[ch] = (1.0 / (s_var[ch] + EPS as f64).sqrt()) as f32;
                update_running(s_mean[ch], s_var[ch], count, &mut rm[ch], &mut rv[ch]);
            }
        }
        Stats::Eval(buffers) => {
            let (rm, rv) = (&buffers[c.running_mean.clone()], &buffers[c.running_var.clone()]);
            mean.fill(0.0);
            inv_std.fill(0.0);
            for ch in 0..channels {
                mean[ch] = rm[ch];
                inv_std[ch] = (1.0 / (rv[ch] as f64 + EPS as f64).sqrt()) as f32;
            }
        }
    }
    scale.fill(0.0);
    shift.fill(0.0);
    for ch in 0..channels {
        scale[ch] = gamma[ch] * inv_std[ch];
        shift[ch] = beta[ch] - mean[ch] * scale[ch];
    }
    let relu = c.relu || matches!(out, Out::Block { .. });
    let res = residual.map(|_| &*res);
    norm::apply::<F32xBlock>(shape, z, scale, shift, res, relu, y);
}

/// Where a stage's backward-data puts the gradient of its input.
struct DataGrad<'a> {
    dx: Slot,
    /// What its epilogue adds and masks.
    fused: DataGradEpilogue,
    /// The stage that reads `dx` as the gradient of its output, unchanged, whose batch
    /// norm's gradient sums the backward-data gathers as it stores when its kernel can.
    reader: Option<&'a TrainConv>,
}

/// Backward through a stage: `dy` (the gradient of the stage's output `y`, after its
/// fused ReLU if any) through the ReLU and batch norm into `dz`, then through the
/// convolution whose input was `x`: the filter gradient, and the input gradient when
/// `data` is given. With `sums_ready`, `w.sums` already holds the batch norm's gradient
/// sums (gathered by the backward-data that stored `dy`). Returns whether this stage's
/// backward-data gathered its reader's sums into `w.sums`.
#[allow(clippy::too_many_arguments)]
fn stage_backward(
    c: &TrainConv,
    n: usize,
    (x, dy, dz): (Slot, Slot, Slot),
    data: Option<DataGrad>,
    sums_ready: bool,
    w: &mut Work,
    values: &[f32],
    grads: &mut [f32],
    hooks: &mut dyn StepHooks,
) -> bool {
    let g = c.geometry_at(n);
    let shape = c.z.shape(n);
    let channels = g.out_channels;
    let dy = as_shape(dy, c.z.shape);
    {
        let [d, z, mean, inv_std, scale, shift, t] = split(
            &mut w.arena,
            [
                dy.at(n),
                c.z.at(n),
                c.mean.clone(),
                c.inv_std.clone(),
                c.scale.clone(),
                c.shift.clone(),
                dz.at(n),
            ],
        );
        let (scale, shift) = (&*scale, &*shift);
        let mask = c.relu.then_some(norm::FusedRelu { scale, shift });
        let [s_dy, s_dyz] = &mut w.sums;
        if !sums_ready {
            norm::grad_sums::<F32xBlock>(shape, d, mask, z, mean, &mut w.partials, s_dy, s_dyz);
        }
        let (dgamma, dbeta) = split_grads(grads, &c.gamma, &c.beta);
        let gamma = &values[c.gamma.clone()];
        // gamma and beta take this process's sums; the input gradient needs the batch's.
        for ch in 0..channels {
            dbeta[ch] += s_dy[ch] as f32;
            dgamma[ch] += (s_dyz[ch] * inv_std[ch] as f64) as f32;
        }
        let local = (n * g.out_h * g.out_w) as f64;
        let count = hooks
            .grad_sums(local, &mut s_dy[..channels], &mut s_dyz[..channels])
            .max(1.0);
        let [k, k2, mdy] = &mut w.coef;
        k.fill(0.0);
        k2.fill(0.0);
        mdy.fill(0.0);
        for ch in 0..channels {
            let is = inv_std[ch] as f64;
            k[ch] = gamma[ch] * inv_std[ch];
            k2[ch] = (gamma[ch] as f64 * is * is * is * s_dyz[ch] / count) as f32;
            mdy[ch] = (s_dy[ch] / count) as f32;
        }
        norm::input_grad::<F32xBlock>(shape, d, mask, z, mean, k, k2, mdy, t);
    }
    {
        let [x, t] = split(&mut w.arena, [x.at(n), dz.at(n)]);
        c.filter_grad.run(&g, x, c.in_block, t, &mut grads[c.weight.clone()]);
    }
    for tensor in [&c.gamma, &c.beta, &c.weight] {
        hooks.grads_final(grads, tensor.clone());
    }
    let (Some(DataGrad { dx, fused, reader }), Some(algo)) = (data, c.data_grad) else {
        return false;
    };
    let shape = Blocked::new(1, g.in_channels, g.in_h, g.in_w, BLOCK);
    let dx = as_shape(dx, shape);
    // The fused slots (or empty ranges, which overlap nothing).
    let at = |s: Option<Slot>| s.map_or(0..0, |s| as_shape(s, shape).at(n));
    let reader = reader.filter(|_| c.fuses_data_grad());
    let of_reader = |f: fn(&TrainConv) -> Range<usize>| reader.map_or(0..0, f);
    let [t, o, residual, relu_output, z, mean, scale, shift] = split(
        &mut w.arena,
        [
            dz.at(n),
            dx.at(n),
            at(fused.residual),
            at(fused.relu_output),
            at(reader.map(|r| r.z)),
            of_reader(|r| r.mean.clone()),
            of_reader(|r| r.scale.clone()),
            of_reader(|r| r.shift.clone()),
        ],
    );
    let weights = &w.derived[c.data_weights.clone()];
    let filters = transformed(weights, &w.derived_bf16[c.data_bf16.clone()]);
    assert!(
        c.fuses_data_grad() || (fused.residual.is_none() && fused.relu_output.is_none()),
        "a backward-data that cannot fuse its epilogue was given one"
    );
    let ep = BlockedEpilogue {
        bias: None,
        residual: match fused.residual {
            Some(_) => Residual::From(residual),
            None => Residual::None,
        },
        relu: false,
        relu_output: fused.relu_output.map(|_| &*relu_output),
    };
    let [s_dy, s_dyz] = &mut w.sums;
    let gather = reader.map(|r| {
        Gather::GradSums(GradSums {
            z,
            mean,
            relu: r.relu.then_some(norm::FusedRelu { scale, shift }),
            partials: &mut w.partials,
            sum_dy: s_dy,
            sum_dy_zc: s_dyz,
        })
    });
    let gathered = gather.is_some();
    match (algo, gather) {
        (DataGradAlgo::Forward(Algo::Winograd(tile)), Some(gather)) => {
            winograd_conv_gather::<F32xBlock>(&c.data_geometry(n), tile, t, filters, &ep, o, gather);
        }
        (DataGradAlgo::Forward(Algo::Winograd(tile)), None) => {
            winograd_conv_with::<F32xBlock>(&c.data_geometry(n), tile, t, filters, &ep, o);
        }
        (DataGradAlgo::Forward(_), gather) if !c.data_bf16.is_empty() => {
            let w16 = &w.derived_bf16[c.data_bf16.clone()];
            bf16_direct_kernel(&c.data_geometry(n), t, w16, &ep, o, gather)
        }
        (_, gather) if !c.data_bf16.is_empty() => {
            let w16 = &w.derived_bf16[c.data_bf16.clone()];
            bf16_data_grad::data_grad_strided(&g, t, w16, &ep, o, gather)
        }
        (_, Some(gather)) => data_grad_gather::<F32xBlock>(&g, t, weights, &ep, o, gather),
        _ => data_grad_with::<F32xBlock>(&g, t, weights, &ep, o),
    }
    gathered
}

/// Seconds per call (the best of `reps` after one warm-up, random data) of every
/// candidate for each training pass of `g` with input blocks of `in_block`: forward and
/// backward-data per algorithm, backward-filter; `with_bf16` (on CPUs with AVX512_BF16)
/// adds each pass with bf16 products where [`TrainingPlan::use_bf16`] would use them.
/// `resnet bench --layers --train` prints them beside the plan's choices.
pub fn time_passes(g: &ConvGeometry, in_block: usize, reps: usize, with_bf16: bool) -> PassTimings {
    let forward = choose::time_candidates(g, in_block, reps);
    let mut rng = crate::rng::Rng::new(3);
    let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
    let input = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, in_block);
    let output = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, BLOCK);
    let (x, dy) = (random(input.len()), random(output.len()));
    let weight = random(g.out_channels * g.in_channels * g.kernel_h * g.kernel_w);
    let best_of = |f: &mut dyn FnMut()| {
        let mut best = f64::INFINITY;
        for rep in 0..=reps.max(1) {
            let t = std::time::Instant::now();
            f();
            if rep > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        best
    };
    let mut dw = vec![0.0; weight.len()];
    let mut filter_grad_s: Vec<(FilterGradAlgo, f64)> = FilterGradAlgo::candidates(g, in_block)
        .into_iter()
        .map(|a| (a, best_of(&mut || a.run(g, &x, in_block, &dy, &mut dw))))
        .collect();
    let with_bf16 = with_bf16 && bf16::available() && BLOCK == bf16::LANES;
    if with_bf16 && bf16_filter_grad(g, in_block) {
        let a = FilterGradAlgo::Bf16;
        filter_grad_s.push((a, best_of(&mut || a.run(g, &x, in_block, &dy, &mut dw))));
    }
    let mut z = vec![0.0; output.len()];
    let forward_bf16 = with_bf16
        .then(|| bf16_forward(g, forward_algo(g, in_block), in_block))
        .flatten()
        .map(|algo| {
            let s = match algo {
                Algo::Winograd(tile) => {
                    let u = choose::derive_weights(algo, g, &weight, None, in_block);
                    let mut u16s = vec![0; u.len()];
                    pack_bf16(tile, g.in_channels, g.out_channels, &u, &mut u16s);
                    let ep = BlockedEpilogue::default();
                    best_of(&mut || winograd_conv_with::<F32xBlock>(g, tile, &x, Transformed::Bf16(&u16s), &ep, &mut z))
                }
                Algo::Direct | Algo::WinogradS2(_) => {
                    // `bf16_forward` gives the stride-2 transform no bf16 form: only
                    // `Direct` comes here.
                    let mut w16 = vec![0; bf16_direct_len(g, false)];
                    pack_bf16_direct(&weight, g, false, &mut w16);
                    best_of(&mut || bf16_direct_kernel(g, &x, &w16, &BlockedEpilogue::default(), &mut z, None))
                }
            };
            (algo, s)
        });
    let mut data_grad_s = Vec::new();
    let mut data_grad_bf16 = None;
    if in_block == BLOCK {
        if let Some(t) = as_forward(g) {
            for (a, s) in choose::time_candidates(&t, BLOCK, reps) {
                data_grad_s.push((DataGradAlgo::Forward(a), s));
            }
        }
        let mut packed = vec![0.0; data_grad_packed_len(g, BLOCK)];
        pack_data_grad_weights(&weight, g, BLOCK, &mut packed);
        let mut dx = vec![0.0; Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, BLOCK).len()];
        let s = best_of(&mut || data_grad::<F32xBlock>(g, &dy, &packed, &mut dx));
        data_grad_s.push((DataGradAlgo::Strided, s));
        if with_bf16 {
            data_grad_bf16 = bf16_data_grad(g, data_grad_algo(g), in_block).map(|algo| {
                let ep = BlockedEpilogue::default();
                let s = match (algo, as_forward(g)) {
                    (Algo::Winograd(tile), Some(t)) => {
                        let mut u = vec![0.0; choose::derived_len(algo, &t, BLOCK)];
                        transform_flipped_filters(&weight, g.in_channels, g.out_channels, tile, BLOCK, &mut u);
                        let mut u16s = vec![0; u.len()];
                        pack_bf16(tile, g.out_channels, g.in_channels, &u, &mut u16s);
                        best_of(&mut || {
                            winograd_conv_with::<F32xBlock>(&t, tile, &dy, Transformed::Bf16(&u16s), &ep, &mut dx)
                        })
                    }
                    (_, forward) => {
                        let mut w16 = vec![0; bf16_direct_len(g, true)];
                        pack_bf16_direct(&weight, g, true, &mut w16);
                        best_of(&mut || match forward {
                            Some(t) => bf16_direct_kernel(&t, &dy, &w16, &ep, &mut dx, None),
                            None => bf16_data_grad::data_grad_strided(g, &dy, &w16, &ep, &mut dx, None),
                        })
                    }
                };
                (algo, s)
            });
        }
    }
    PassTimings {
        forward,
        data_grad: data_grad_s,
        filter_grad: filter_grad_s,
        forward_bf16,
        data_grad_bf16,
    }
}

/// What [`time_passes`] measured.
#[derive(Clone, Debug)]
pub struct PassTimings {
    /// Forward, per algorithm.
    pub forward: Vec<(Algo, f64)>,
    /// Backward-data, per way of running it (empty for the stem).
    pub data_grad: Vec<(DataGradAlgo, f64)>,
    /// Backward-filter, per algorithm (with bf16, [`FilterGradAlgo::Bf16`] too
    /// where it applies).
    pub filter_grad: Vec<(FilterGradAlgo, f64)>,
    /// With bf16 asked for and where [`bf16_forward`] applies: the forward pass with bf16
    /// products.
    pub forward_bf16: Option<(Algo, f64)>,
    /// The same for backward-data ([`bf16_data_grad`]).
    pub data_grad_bf16: Option<(Algo, f64)>,
}

/// How the plan runs the forward pass of `g` with input blocks of `in_block`: the
/// inference rule on blocked input, except that the direct kernel runs the stride-2
/// layers the inference plan gives the stride-2 transform (which has no form that
/// gathers a batch norm's moments as it stores); the direct kernel on the NCHW stem input.
pub fn forward_algo(g: &ConvGeometry, in_block: usize) -> Algo {
    match choose::choose(ConvChoice::Auto, g) {
        Algo::Winograd(tile) if in_block == BLOCK => Algo::Winograd(tile),
        _ => Algo::Direct,
    }
}

/// How the plan runs backward-data of `g` (input in blocks of `BLOCK`): stride-1 square
/// kernels as a forward convolution by the inference rule, the rest by the strided kernel.
pub fn data_grad_algo(g: &ConvGeometry) -> Option<DataGradAlgo> {
    Some(as_forward(g).map_or(DataGradAlgo::Strided, |t| {
        DataGradAlgo::Forward(choose::choose(ConvChoice::Auto, &t))
    }))
}
