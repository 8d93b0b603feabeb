//! `NchwTrainingPlan`: the first design's training schedule, layer by layer in NCHW: the
//! twin that the blocked [`TrainingPlan`](super::TrainingPlan) is tested against. Like it, it keeps the weights in [`Params`], which it
//! reads and whose gradients and running statistics it writes, found by the entry
//! offsets of [`Params::layout_of`]; the plan holds everything else.
//!
//! - One arena (llm.c's single allocation), laid out up front in fixed slots: the input
//!   copy, every batch norm's `xhat` and output, every block's output (what backward
//!   reads again), the saved per-channel mean and `1/std`, a scratch slot for the
//!   convolution output that the batch norm consumes at once, the features and logits,
//!   and five gradient slots as large as the largest activation, reused by every layer.
//!   A call with fewer images than the plan's batch runs on a prefix of every slot.
//! - The algorithm of each pass of each convolution, chosen by `kernels::plan` (the
//!   NCHW chooser) when the plan is built; workspaces (Winograd filters rebuilt every
//!   step, backward-filter partials) reused across calls, so a steady-state step
//!   allocates nothing.
//!
//! Activations are NCHW here (moving training to the blocked layout of inference is a
//! later step). The step order is the paper's network: stem conv-BN-ReLU (and max
//! pooling), blocks of conv-BN(-ReLU) stages with the shortcut added before the last
//! ReLU, global average pooling, the classifier; backward walks it in reverse, each layer
//! through the forward/backward pair of its file in `layers`.

use super::train::{entry, range, split, split_grads, Stats};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::norm::NormGeometry;
use crate::kernels::pool::PoolGeometry;
use crate::layers::conv::{self, ConvAlgos, ConvWorkspace};
use crate::layers::{batchnorm, linear, pool, relu, shortcut, Dims};
use crate::model::{Arch, ConvBn, ResNetConfig, ShortcutKind};
use crate::params::Entry;
use crate::{Error, Params, Result};
use std::ops::Range;

/// A region of the arena with `per_image` values for each of up to `batch` images.
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: usize,
    per_image: usize,
}

impl Slot {
    /// The values of the first `n` images.
    fn at(self, n: usize) -> Range<usize> {
        self.offset..self.offset + n * self.per_image
    }
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
    /// The algorithm of each pass at the full batch.
    pub algos: ConvAlgos,
    /// Whether a ReLU follows the batch norm (fused into it).
    pub relu: bool,
    weight: Range<usize>,
    gamma: Range<usize>,
    beta: Range<usize>,
    running_mean: Range<usize>,
    running_var: Range<usize>,
    xhat: Slot,
    y: Slot,
    mean: Range<usize>,
    inv_std: Range<usize>,
}

impl TrainConv {
    fn geometry_at(&self, n: usize) -> ConvGeometry {
        ConvGeometry {
            batch: n,
            ..self.geometry
        }
    }

    fn algos_at(&self, g: &ConvGeometry) -> ConvAlgos {
        if g.batch == self.geometry.batch {
            self.algos
        } else {
            ConvAlgos::choose(g)
        }
    }

    fn norm_at(&self, n: usize) -> NormGeometry {
        NormGeometry {
            batch: n,
            channels: self.geometry.out_channels,
            plane: self.geometry.out_h * self.geometry.out_w,
        }
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
    /// Per-image dimensions (`n` is 1) of the input and output.
    in_dims: Dims,
    out_dims: Dims,
    out: Slot,
}

/// What the steps write besides the arena: workspaces and small scratch.
struct Work {
    arena: Vec<f32>,
    argmax: Vec<u32>,
    /// f64 scratch for batch-norm sums, two per channel.
    moments: Vec<f64>,
    ws: ConvWorkspace,
}

/// A network's training step laid out for one input shape and batch (see the module
/// documentation).
pub struct NchwTrainingPlan {
    config: ResNetConfig,
    batch: usize,
    height: usize,
    width: usize,
    convs: Vec<TrainConv>,
    blocks: Vec<Block>,
    input: Slot,
    pool: Option<(PoolGeometry, Slot)>,
    /// The input of the first block (stem output, after pooling).
    body_input: Slot,
    features: usize,
    classes: usize,
    fc_weight: Range<usize>,
    fc_bias: Range<usize>,
    feature_slot: Slot,
    logit_slot: Slot,
    scratch: Slot,
    pad: Slot,
    /// Gradient slots: two that alternate between layers, the gradient at a block's
    /// sum, and two within a block.
    grads: [Slot; 5],
    work: Work,
    /// Images of the last training forward pass (0: none, backward cannot run).
    last_n: usize,
}

impl std::fmt::Debug for NchwTrainingPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NchwTrainingPlan")
            .field("model", &self.config.name)
            .field("batch", &self.batch)
            .field("input", &(self.height, self.width))
            .field("arena_bytes", &(self.work.arena.len() * 4))
            .finish_non_exhaustive()
    }
}

/// Lays slots out one after another.
struct Layout {
    batch: usize,
    len: usize,
    largest: usize,
}

impl Layout {
    fn slot(&mut self, per_image: usize) -> Slot {
        let s = Slot {
            offset: self.len,
            per_image,
        };
        self.len += per_image * self.batch;
        self.largest = self.largest.max(per_image);
        s
    }

    fn fixed(&mut self, len: usize) -> Range<usize> {
        self.len += len;
        self.len - len..self.len
    }
}

impl NchwTrainingPlan {
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
        };
        let mut convs = Vec::new();
        let add_conv = |lay: &mut Layout, convs: &mut Vec<TrainConv>, spec: &ConvBn, x: Dims, relu: bool| {
            add_conv(convs, &entries, lay, batch, spec, x, relu)
        };
        let input_dims = Dims::new(1, config.in_channels, height, width);
        let input = lay.slot(input_dims.len());
        let mut d = add_conv(&mut lay, &mut convs, &arch.stem, input_dims, true)?;
        let mut body_input = convs[0].y;
        let mut pool = None;
        if arch.maxpool {
            let g = pool::stem_max_pool(Dims { n: batch, ..d })?;
            let out = Dims::new(1, d.c, g.out_h, g.out_w);
            let slot = lay.slot(out.len());
            pool = Some((g, slot));
            body_input = slot;
            d = out;
        }
        let mut blocks = Vec::new();
        let mut cur = body_input;
        for b in &arch.blocks {
            let first = convs.len();
            let last = b.stages.len() - 1;
            let mut x = d;
            for (i, s) in b.stages.iter().enumerate() {
                x = add_conv(&mut lay, &mut convs, s, x, i < last)?;
            }
            let stages = first..convs.len();
            let shortcut = match &b.shortcut {
                ShortcutKind::None => Shortcut::None,
                ShortcutKind::Identity => Shortcut::Identity,
                ShortcutKind::ZeroPad { stride } => Shortcut::ZeroPad { stride: *stride },
                ShortcutKind::Projection(p) => {
                    add_conv(&mut lay, &mut convs, p, d, false)?;
                    Shortcut::Projection(convs.len() - 1)
                }
            };
            let out = lay.slot(x.len());
            blocks.push(Block {
                stages,
                shortcut,
                input: cur,
                in_dims: d,
                out_dims: x,
                out,
            });
            cur = out;
            d = x;
        }
        let feature_slot = lay.slot(arch.features);
        let logit_slot = lay.slot(arch.classes);
        let largest = lay.largest;
        let scratch = lay.slot(largest);
        let pad = lay.slot(largest);
        let grads = [(); 5].map(|_| lay.slot(largest));
        let channels = arch.convs().map(|c| c.out_channels).max().unwrap_or(0);
        let argmax = pool.map_or(0, |(g, _)| g.batch * g.channels * g.out_h * g.out_w);
        Ok(NchwTrainingPlan {
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
            scratch,
            pad,
            grads,
            work: Work {
                arena: vec![0.0; lay.len],
                argmax: vec![0; argmax],
                moments: vec![0.0; 2 * channels],
                ws: ConvWorkspace::default(),
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

    /// Bytes of the arena (activations, saved statistics and gradients).
    pub fn arena_bytes(&self) -> usize {
        self.work.arena.len() * std::mem::size_of::<f32>()
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

    /// The training-mode forward pass on `n` NCHW images (`n` at most the plan's batch):
    /// batch statistics in every batch norm, whose running statistics in `params` move
    /// towards them (momentum 0.1, unbiased variance). Keeps what [`NchwTrainingPlan::backward`]
    /// needs and returns the logits, `n x classes`.
    pub fn forward_train(&mut self, params: &mut Params, input: &[f32], n: usize) -> Result<&[f32]> {
        self.check(params)?;
        self.last_n = 0;
        let (values, buffers) = params.values_and_buffers_mut();
        self.run_forward(values, Stats::Train(buffers), input, n)?;
        self.last_n = n;
        Ok(&self.work.arena[self.logit_slot.at(n)])
    }

    /// The evaluation-mode forward pass (running statistics, `params` untouched), layer
    /// by layer without folding: the unfused twin that the inference plan's folded and
    /// fused convolutions are tested against. Leaves nothing for backward.
    pub fn forward_eval(&mut self, params: &Params, input: &[f32], n: usize) -> Result<&[f32]> {
        self.check(params)?;
        self.last_n = 0;
        self.run_forward(params.values(), Stats::Eval(params.buffers()), input, n)?;
        Ok(&self.work.arena[self.logit_slot.at(n)])
    }

    fn run_forward(&mut self, values: &[f32], mut buffers: Stats, input: &[f32], n: usize) -> Result<()> {
        let buffers = &mut buffers;
        let per_image = self.input.per_image;
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
        stage_forward(&self.convs[0], n, self.input.at(n), self.scratch, w, values, buffers);
        if let Some((g, out)) = &self.pool {
            let g = PoolGeometry { batch: n, ..*g };
            let [x, y] = split(&mut w.arena, [self.convs[0].y.at(n), out.at(n)]);
            pool::max_forward(&g, x, y, &mut w.argmax[..out.at(n).len()]);
        }
        for b in &self.blocks {
            let mut x = b.input.at(n);
            for i in b.stages.clone() {
                stage_forward(&self.convs[i], n, x, self.scratch, w, values, buffers);
                x = self.convs[i].y.at(n);
            }
            let last = &self.convs[b.stages.end - 1];
            match b.shortcut {
                Shortcut::None => {
                    let [y, out] = split(&mut w.arena, [last.y.at(n), b.out.at(n)]);
                    relu::relu_forward(y, out);
                }
                Shortcut::Identity => {
                    let [y, s, out] = split(&mut w.arena, [last.y.at(n), b.input.at(n), b.out.at(n)]);
                    relu::add_relu(y, s, out);
                }
                Shortcut::ZeroPad { stride } => {
                    let len = n * b.out_dims.len();
                    let pad = self.pad.offset..self.pad.offset + len;
                    let [x, p] = split(&mut w.arena, [b.input.at(n), pad.clone()]);
                    let (ind, outd) = (Dims { n, ..b.in_dims }, Dims { n, ..b.out_dims });
                    shortcut::option_a_forward(x, ind, outd, stride, p);
                    let [y, p, out] = split(&mut w.arena, [last.y.at(n), pad, b.out.at(n)]);
                    relu::add_relu(y, p, out);
                }
                Shortcut::Projection(p) => {
                    let proj = &self.convs[p];
                    stage_forward(proj, n, b.input.at(n), self.scratch, w, values, buffers);
                    let [y, s, out] = split(&mut w.arena, [last.y.at(n), proj.y.at(n), b.out.at(n)]);
                    relu::add_relu(y, s, out);
                }
            }
        }
        let last = self.blocks.last().map_or(self.body_input, |b| b.out);
        let plane = last.per_image / self.features;
        let [x, f, logits] = split(
            &mut w.arena,
            [last.at(n), self.feature_slot.at(n), self.logit_slot.at(n)],
        );
        pool::avg_forward(plane, x, f);
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
    /// the last [`NchwTrainingPlan::forward_train`]) and accumulates every parameter's
    /// gradient into `params.grads_mut()`.
    pub fn backward(&mut self, params: &mut Params, dlogits: &[f32]) -> Result<()> {
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
        let [mut g0, mut g1, sum, a, b] = self.grads.map(|s| s.at(n));
        let last = self.blocks.last().map_or(self.body_input, |b| b.out);
        {
            let (dw, db) = split_grads(grads, &self.fc_weight, &self.fc_bias);
            let dfeat = g0.start..g0.start + n * self.features;
            let [f, df] = split(&mut w.arena, [self.feature_slot.at(n), dfeat.clone()]);
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
            let [df, dx] = split(&mut w.arena, [dfeat, g1.start..g1.start + last.at(n).len()]);
            pool::avg_backward(last.per_image / self.features, df, dx);
        }
        // Invariant: g1 holds the gradient of the current block's output.
        for blk in self.blocks.iter().rev() {
            let len = n * blk.out_dims.len();
            let (dout, dsum) = (g1.start..g1.start + len, sum.start..sum.start + len);
            let [y, dout, dsum_s] = split(&mut w.arena, [blk.out.at(n), dout, dsum.clone()]);
            relu::relu_backward(y, dout, dsum_s);
            let x_in = blk.input.at(n);
            let dx = g0.start..g0.start + n * blk.in_dims.len();
            let stages = blk.stages.clone();
            let mut dy = dsum.clone();
            for i in stages.clone().rev() {
                let c = &self.convs[i];
                let (x, dxi) = if i == stages.start {
                    (x_in.clone(), dx.clone())
                } else {
                    let prev = &self.convs[i - 1];
                    (prev.y.at(n), b.start..b.start + prev.y.at(n).len())
                };
                stage_backward(c, n, x, dy.clone(), a.clone(), Some(dxi.clone()), w, values, grads);
                if i != stages.start {
                    let [y, d] = split(&mut w.arena, [self.convs[i - 1].y.at(n), dxi.clone()]);
                    relu::relu_backward_inplace(y, d);
                }
                dy = dxi;
            }
            match blk.shortcut {
                Shortcut::None => {}
                Shortcut::Identity => {
                    let [d, s] = split(&mut w.arena, [dx.clone(), dsum]);
                    relu::add_assign(d, s);
                }
                Shortcut::ZeroPad { stride } => {
                    let [d, s] = split(&mut w.arena, [dx.clone(), dsum]);
                    let (ind, outd) = (Dims { n, ..blk.in_dims }, Dims { n, ..blk.out_dims });
                    shortcut::option_a_backward_add(s, ind, outd, stride, d);
                }
                Shortcut::Projection(p) => {
                    let db = b.start..b.start + dx.len();
                    stage_backward(
                        &self.convs[p],
                        n,
                        x_in,
                        dsum,
                        a.clone(),
                        Some(db.clone()),
                        w,
                        values,
                        grads,
                    );
                    let [d, s] = split(&mut w.arena, [dx.clone(), db]);
                    relu::add_assign(d, s);
                }
            }
            std::mem::swap(&mut g0, &mut g1);
        }
        let stem = &self.convs[0];
        if let Some((g, out)) = &self.pool {
            let g = PoolGeometry { batch: n, ..*g };
            let dy = g1.start..g1.start + out.at(n).len();
            let dx = g0.start..g0.start + stem.y.at(n).len();
            let [dy, dx] = split(&mut w.arena, [dy, dx]);
            pool::max_backward(&g, dy, &w.argmax[..out.at(n).len()], dx);
            std::mem::swap(&mut g0, &mut g1);
        }
        let dy = g1.start..g1.start + stem.y.at(n).len();
        let [y, d] = split(&mut w.arena, [stem.y.at(n), dy.clone()]);
        relu::relu_backward_inplace(y, d);
        stage_backward(stem, n, self.input.at(n), dy, g0, None, w, values, grads);
        Ok(())
    }
}

/// Plans the convolution `spec` on `x` (per-image dimensions) followed by its batch norm
/// (and a ReLU); returns the per-image output dimensions.
fn add_conv(
    convs: &mut Vec<TrainConv>,
    entries: &[Entry],
    lay: &mut Layout,
    batch: usize,
    spec: &ConvBn,
    x: Dims,
    relu: bool,
) -> Result<Dims> {
    let g = spec.geometry(batch, x.c, x.h, x.w)?;
    let out = Dims::new(1, g.out_channels, g.out_h, g.out_w);
    let bn = |field: &str| entry(entries, &format!("{}.{field}", spec.bn)).map(range);
    convs.push(TrainConv {
        name: spec.conv.clone(),
        bn: spec.bn.clone(),
        geometry: g,
        algos: ConvAlgos::choose(&g),
        relu,
        weight: range(entry(entries, &format!("{}.weight", spec.conv))?),
        gamma: bn("weight")?,
        beta: bn("bias")?,
        running_mean: bn("running_mean")?,
        running_var: bn("running_var")?,
        xhat: lay.slot(out.len()),
        y: lay.slot(out.len()),
        mean: lay.fixed(out.c),
        inv_std: lay.fixed(out.c),
    });
    Ok(out)
}

/// Convolution `x -> scratch`, then training-mode batch norm (and ReLU) into the stage's
/// `xhat` and `y`.
fn stage_forward(
    c: &TrainConv,
    n: usize,
    x: Range<usize>,
    scratch: Slot,
    w: &mut Work,
    values: &[f32],
    stats: &mut Stats,
) {
    let g = c.geometry_at(n);
    let algos = c.algos_at(&g);
    let out = scratch.offset..scratch.offset + c.y.at(n).len();
    let [x, y] = split(&mut w.arena, [x, out.clone()]);
    conv::forward(&g, algos.forward, x, &values[c.weight.clone()], None, &mut w.ws, y);
    let [conv_out, xhat, y, mean, inv_std] = split(
        &mut w.arena,
        [out, c.xhat.at(n), c.y.at(n), c.mean.clone(), c.inv_std.clone()],
    );
    let (g, gamma, beta) = (c.norm_at(n), &values[c.gamma.clone()], &values[c.beta.clone()]);
    let saved = batchnorm::Saved { mean, inv_std };
    match stats {
        Stats::Train(buffers) => {
            let [rm, rv] = split(buffers, [c.running_mean.clone(), c.running_var.clone()]);
            let m = &mut w.moments;
            batchnorm::forward_train(&g, conv_out, gamma, beta, rm, rv, c.relu, m, saved, xhat, y);
        }
        Stats::Eval(buffers) => {
            let (rm, rv) = (&buffers[c.running_mean.clone()], &buffers[c.running_var.clone()]);
            batchnorm::forward_eval(&g, conv_out, gamma, beta, rm, rv, c.relu, saved, xhat, y);
        }
    }
}

/// Backward through a stage: `dy` (the gradient of its batch norm's output, before the
/// fused ReLU) through the batch norm into `tmp`, then through the convolution whose
/// input was `x`, into `dx` when given. `dx` may be `dy`'s slot.
#[allow(clippy::too_many_arguments)]
fn stage_backward(
    c: &TrainConv,
    n: usize,
    x: Range<usize>,
    dy: Range<usize>,
    tmp: Range<usize>,
    dx: Option<Range<usize>>,
    w: &mut Work,
    values: &[f32],
    grads: &mut [f32],
) {
    let out_len = c.y.at(n).len();
    let dy = dy.start..dy.start + out_len;
    let tmp = tmp.start..tmp.start + out_len;
    {
        let [dy, xhat, inv_std, t] = split(&mut w.arena, [dy, c.xhat.at(n), c.inv_std.clone(), tmp.clone()]);
        let (dgamma, dbeta) = split_grads(grads, &c.gamma, &c.beta);
        batchnorm::backward(
            &c.norm_at(n),
            dy,
            xhat,
            inv_std,
            &values[c.gamma.clone()],
            true,
            dgamma,
            dbeta,
            &mut w.moments,
            t,
        );
    }
    let g = c.geometry_at(n);
    let algos = c.algos_at(&g);
    let weight = &values[c.weight.clone()];
    let dw = &mut grads[c.weight.clone()];
    match dx {
        Some(dx) => {
            let dx = dx.start..dx.start + n * g.in_image();
            let [x, t, dx] = split(&mut w.arena, [x, tmp, dx]);
            conv::backward(&g, algos, x, weight, t, dw, None, Some(dx), &mut w.ws);
        }
        None => {
            let [x, t] = split(&mut w.arena, [x, tmp]);
            conv::backward(&g, algos, x, weight, t, dw, None, None, &mut w.ws);
        }
    }
}
