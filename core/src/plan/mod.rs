//! `ExecutionPlan`: everything it takes to run one network at one input shape, built once
//! and reused: the steps in order, the algorithm chosen for every convolution, one arena
//! for every activation (offsets planned from lifetimes, `arena`), and the weights derived
//! for the kernels (batch norm folded in, filters packed in blocks or Winograd-transformed),
//! which are keyed by the [`Params::version`] they were made from and rebuilt when it
//! changes, so a stale copy is never used.
//!
//! Inside a plan activations are channel-blocked ([`Blocked`], `BLOCK` channels a vector);
//! the stem reads the caller's NCHW input directly and the head writes plain logits, so
//! nothing is reordered at all. Inference folds every batch norm into its convolution and
//! fuses the residual add and ReLU into the convolution's store.

pub mod arena;
pub mod choose;
pub mod train;
pub mod train_nchw;

pub use choose::{Algo, ConvChoice};
pub use train::{LocalStep, StepHooks, TrainingPlan};

use crate::aligned::{AlignedVec, LINE_BYTES};
use crate::kernels::blocked::dense::dense;
use crate::kernels::blocked::pool::{global_avg_pool, max_pool, zero_pad_shortcut};
use crate::kernels::blocked::{BlockedEpilogue, Residual};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::pool::PoolGeometry;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::model::{Arch, ConvBn, ResNetConfig, ShortcutKind};
use crate::simd::{F32xBlock, BLOCK};
use crate::{Error, Params, Result};
use std::ops::Range;

/// Batch norm's epsilon, as PyTorch's default.
const BN_EPS: f64 = 1e-5;

/// How a plan is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// How each convolution's algorithm is picked.
    pub conv: ConvChoice,
}

/// One convolution of a plan, as `resnet bench --layers` shows it.
#[derive(Clone, Debug)]
pub struct PlannedConv {
    /// The convolution's torchvision name (`layer1.0.conv2`).
    pub name: String,
    /// Its batch norm's name.
    pub bn: String,
    /// The geometry at the plan's full batch.
    pub geometry: ConvGeometry,
    pub algo: Algo,
    /// Channels per block of its input: 1 for the stem, which reads NCHW.
    pub in_block: usize,
    weights: Range<usize>,
    bias: Range<usize>,
}

/// Where a step reads its input.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The caller's NCHW input.
    Input,
    /// An arena buffer.
    Buf(usize),
}

/// Where a convolution's residual comes from.
#[derive(Clone, Copy, Debug)]
enum Add {
    None,
    /// The output buffer's own contents (an identity or precomputed shortcut).
    InPlace,
}

#[derive(Clone, Debug)]
enum Step {
    Conv {
        conv: usize,
        input: Source,
        out: usize,
        add: Add,
        relu: bool,
    },
    MaxPool {
        input: usize,
        out: usize,
        pool: PoolGeometry,
    },
    ZeroPad {
        input: usize,
        out: usize,
        stride: usize,
    },
    Head {
        input: usize,
    },
}

impl Step {
    /// The buffer the step writes (the head writes the plan's logits instead).
    fn output(&self) -> Option<usize> {
        match *self {
            Step::Conv { out, .. } | Step::MaxPool { out, .. } | Step::ZeroPad { out, .. } => Some(out),
            Step::Head { .. } => None,
        }
    }
}

/// Which leading steps of a plan run on groups of images rather than on the whole batch,
/// and how many images a group has.
///
/// Layer by layer, a large batch's activations (ResNet-50 at batch 8: 25.7 MB each in its
/// first stage; ResNet-20 at batch 128: 8.4 MB) stream through memory at every step. Run
/// on a group of images whose activations fit in the caches, each step reads what the step
/// before wrote from there; the price is reading the step's weights once per group. So the
/// steps whose activations (input and output, at the plan's batch) outweigh their derived
/// weights `weight_ratio` times or more run in groups, from the first step to the first
/// that does not (pooling and shortcut steps have no weights), and a group holds as many
/// images as keep every output of those steps within `group_bytes`.
#[derive(Clone, Copy, Debug)]
struct Grouping {
    weight_ratio: usize,
    group_bytes: usize,
}

impl Default for Grouping {
    /// Measured (`resnet bench`, 2 threads, 8 interleaved rounds, median images/s):
    /// ResNet-20 at batch 128 8705 on the whole batch, 10098 in groups of 1 MB (16
    /// images), 10052 with 512 KB (8 images), 9561 with 2 MB; ResNet-50 at batch 8 55.4
    /// and 58.3 (the stem to layer2.1.conv1 in single images). Re-timed on a host whose
    /// caches were busier (3 rounds, median ms): ResNet-20 b128 16.21 with 1 MB, 15.30
    /// with 512 KB, 15.17 with 256 KB; ResNet-56 b128 43.0, 41.4, 40.9; ResNet-50 b8 118
    /// with each. 512 KB is as fast as 1 MB on a quiet host and faster on a busy one.
    /// ResNet-50's layer3 and layer4, whose weights outweigh their activations at batch 8,
    /// measured faster on the whole batch.
    fn default() -> Self {
        Grouping {
            weight_ratio: 4,
            group_bytes: 512 << 10,
        }
    }
}

impl Grouping {
    /// How many leading steps run in groups, and the images of a group: `(0, batch)`
    /// when every step runs on the whole batch.
    fn of(&self, steps: &[Step], shapes: &[Blocked], convs: &[PlannedConv], batch: usize) -> (usize, usize) {
        let bytes = |b: usize| shapes[b].len() * std::mem::size_of::<f32>();
        let grouped = steps
            .iter()
            .take_while(|step| match **step {
                Step::Conv { conv, input, out, .. } => {
                    let read = match input {
                        Source::Buf(b) => bytes(b),
                        Source::Input => 0,
                    };
                    let weights = convs[conv].weights.len() * std::mem::size_of::<f32>();
                    read + bytes(out) >= self.weight_ratio * weights
                }
                Step::MaxPool { .. } | Step::ZeroPad { .. } => true,
                Step::Head { .. } => false,
            })
            .count();
        let per_image = steps[..grouped]
            .iter()
            .filter_map(Step::output)
            .map(|b| bytes(b) / shapes[b].n.max(1))
            .max()
            .unwrap_or(0);
        let images = (self.group_bytes / per_image.max(1)).clamp(1, batch);
        if grouped == 0 || images >= batch {
            (0, batch)
        } else {
            (grouped, images)
        }
    }
}

/// Bytes a plan holds, for `resnet bench`'s memory line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanMemory {
    /// The activation arena.
    pub arena: usize,
    /// The largest single activation (the arena's lower bound is about twice this).
    pub largest_activation: usize,
    /// Folded, packed and transformed weights.
    pub derived_weights: usize,
}

/// A network prepared for one input shape and batch (see the module documentation).
pub struct ExecutionPlan {
    config: ResNetConfig,
    /// The most images one call takes; fewer run on a prefix of every buffer.
    batch: usize,
    height: usize,
    width: usize,
    convs: Vec<PlannedConv>,
    steps: Vec<Step>,
    /// Shape and arena offset of each buffer: at the full batch, or for the buffers used
    /// only by the steps run in image groups, at one group's images.
    buffers: Vec<(Blocked, usize)>,
    /// Which buffers hold one image group (see `Grouping`), indexed like `buffers`.
    per_group: Vec<bool>,
    /// Leading steps run in image groups, and the images of a group.
    grouped_steps: usize,
    group_images: usize,
    arena: AlignedVec<f32>,
    derived: AlignedVec<f32>,
    /// The [`Params::version`] `derived` was made from.
    derived_from: Option<u64>,
    features: AlignedVec<f32>,
    logits: AlignedVec<f32>,
    /// Seconds of each step in the last call, when profiling is on.
    step_seconds: Option<Vec<f64>>,
}

/// Collects steps and buffer lifetimes while the plan is laid out.
struct Builder {
    steps: Vec<Step>,
    shapes: Vec<Blocked>,
    lives: Vec<arena::Lifetime>,
    convs: Vec<PlannedConv>,
    derived_len: usize,
    choice: ConvChoice,
}

impl Builder {
    fn buffer(&mut self, shape: Blocked) -> usize {
        self.shapes.push(shape);
        let step = self.steps.len();
        self.lives.push(arena::Lifetime {
            len: shape.len(),
            first: step,
            last: step,
        });
        self.shapes.len() - 1
    }

    /// Settles the algorithms the whole plan decides ([`choose::fit_in_cache`], under
    /// the automatic choice), then places every convolution's derived weights and bias,
    /// each range starting a cache line (see `crate::aligned`).
    fn place_weights(&mut self) {
        if self.choice == ConvChoice::Auto {
            let layers: Vec<_> = self.convs.iter().map(|c| (c.geometry, c.in_block)).collect();
            let mut algos: Vec<_> = self.convs.iter().map(|c| c.algo).collect();
            choose::fit_in_cache(&layers, &mut algos);
            for (c, a) in self.convs.iter_mut().zip(algos) {
                c.algo = a;
            }
        }
        let line = LINE_BYTES / std::mem::size_of::<f32>();
        for c in &mut self.convs {
            let start = self.derived_len.next_multiple_of(line);
            c.weights = start..start + choose::derived_len(c.algo, &c.geometry, c.in_block);
            let bias_start = c.weights.end.next_multiple_of(line);
            c.bias = bias_start..bias_start + c.geometry.out_channels.next_multiple_of(BLOCK);
            self.derived_len = c.bias.end;
        }
    }

    /// Marks `buf` as used by the step about to be pushed.
    fn use_buf(&mut self, buf: usize) {
        self.lives[buf].last = self.steps.len();
    }

    fn source_shape(&self, src: Source, input: Blocked) -> Blocked {
        match src {
            Source::Input => input,
            Source::Buf(b) => self.shapes[b],
        }
    }

    /// A convolution step from `src` into `out` (a new buffer when `None`); returns the
    /// output buffer.
    fn conv(
        &mut self,
        spec: &ConvBn,
        src: Source,
        input: Blocked,
        out: Option<usize>,
        add: Add,
        relu: bool,
    ) -> Result<usize> {
        let x = self.source_shape(src, input);
        let g = spec.geometry(x.n, x.c, x.h, x.w)?;
        let in_block = x.block;
        // Winograd reads blocked inputs only; the stem's NCHW input goes direct.
        let algo = if in_block == BLOCK {
            choose::choose(self.choice, &g)
        } else {
            Algo::Direct
        };
        let shape = Blocked::new(x.n, g.out_channels, g.out_h, g.out_w, BLOCK);
        self.convs.push(PlannedConv {
            name: spec.conv.clone(),
            bn: spec.bn.clone(),
            geometry: g,
            algo,
            in_block,
            // Placed by `place_weights` once every algorithm is settled.
            weights: 0..0,
            bias: 0..0,
        });
        let out = match out {
            Some(o) => {
                if self.shapes[o] != shape {
                    return Err(Error::Shape(format!(
                        "{}: output {shape:?} does not match its shortcut {:?}",
                        spec.conv, self.shapes[o]
                    )));
                }
                o
            }
            None => self.buffer(shape),
        };
        if let Source::Buf(b) = src {
            self.use_buf(b);
        }
        self.use_buf(out);
        self.steps.push(Step::Conv {
            conv: self.convs.len() - 1,
            input: src,
            out,
            add,
            relu,
        });
        Ok(out)
    }
}

impl std::fmt::Debug for ExecutionPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionPlan")
            .field("model", &self.config.name)
            .field("batch", &self.batch)
            .field("input", &(self.height, self.width))
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

impl ExecutionPlan {
    /// Plans inference of `config` on up to `batch` NCHW images of `height x width`.
    pub fn inference(
        config: &ResNetConfig,
        batch: usize,
        height: usize,
        width: usize,
        opts: PlanOptions,
    ) -> Result<Self> {
        Self::inference_grouped(config, batch, height, width, opts, Grouping::default())
    }

    /// [`ExecutionPlan::inference`] with the image-group rule's sizes given (the tests
    /// group small networks).
    fn inference_grouped(
        config: &ResNetConfig,
        batch: usize,
        height: usize,
        width: usize,
        opts: PlanOptions,
        grouping: Grouping,
    ) -> Result<Self> {
        let arch = Arch::of(config)?;
        if batch == 0 || height == 0 || width == 0 {
            return Err(Error::Shape(format!(
                "a plan needs at least one image of at least 1x1, found batch {batch} of {height}x{width}"
            )));
        }
        let input = Blocked::nchw(batch, config.in_channels, height, width);
        let mut b = Builder {
            steps: Vec::new(),
            shapes: Vec::new(),
            lives: Vec::new(),
            convs: Vec::new(),
            derived_len: 0,
            choice: opts.conv,
        };
        let mut cur = b.conv(&arch.stem, Source::Input, input, None, Add::None, true)?;
        if arch.maxpool {
            let x = b.shapes[cur];
            let pool = PoolGeometry::new(x.n, x.c, x.h, x.w, 3, 2, 1)
                .ok_or_else(|| Error::Shape(format!("max pooling: input of {}x{} is too small", x.h, x.w)))?;
            let out = b.buffer(x.with_hw(pool.out_h, pool.out_w));
            b.use_buf(cur);
            b.steps.push(Step::MaxPool { input: cur, out, pool });
            cur = out;
        }
        for block in &arch.blocks {
            let x = cur;
            let last = block.stages.len() - 1;
            let mut t = Source::Buf(x);
            for stage in &block.stages[..last] {
                t = Source::Buf(b.conv(stage, t, input, None, Add::None, true)?);
            }
            // The shortcut goes where the block's output will be, and the last stage adds
            // itself onto it in place.
            let (out, add) = match &block.shortcut {
                ShortcutKind::None => (None, Add::None),
                ShortcutKind::Identity => (Some(x), Add::InPlace),
                ShortcutKind::ZeroPad { stride } => {
                    let xs = b.shapes[x];
                    let h = (xs.h - 1) / stride + 1;
                    let w = (xs.w - 1) / stride + 1;
                    let shape = Blocked::new(xs.n, block.out_channels, h, w, BLOCK);
                    let out = b.buffer(shape);
                    b.use_buf(x);
                    b.steps.push(Step::ZeroPad {
                        input: x,
                        out,
                        stride: *stride,
                    });
                    (Some(out), Add::InPlace)
                }
                ShortcutKind::Projection(p) => {
                    let out = b.conv(p, Source::Buf(x), input, None, Add::None, false)?;
                    (Some(out), Add::InPlace)
                }
            };
            cur = b.conv(&block.stages[last], t, input, out, add, true)?;
        }
        b.use_buf(cur);
        b.steps.push(Step::Head { input: cur });
        b.place_weights();
        // Buffers used only by the grouped steps hold one group; those they hand on to the
        // later steps hold the whole batch and stay put while the groups run.
        let (grouped_steps, group_images) = grouping.of(&b.steps, &b.shapes, &b.convs, batch);
        let mut per_group = vec![false; b.shapes.len()];
        if grouped_steps > 0 {
            for (i, life) in b.lives.iter_mut().enumerate() {
                if life.last < grouped_steps {
                    per_group[i] = true;
                    b.shapes[i].n = group_images;
                    life.len = b.shapes[i].len();
                } else if life.first < grouped_steps {
                    life.first = 0;
                }
            }
        }
        let layout = arena::place(&b.lives);
        let buffers = b.shapes.iter().copied().zip(layout.offsets).collect();
        Ok(ExecutionPlan {
            config: config.clone(),
            batch,
            height,
            width,
            convs: b.convs,
            steps: b.steps,
            buffers,
            per_group,
            grouped_steps,
            group_images,
            arena: AlignedVec::zeroed(layout.total),
            derived: AlignedVec::zeroed(b.derived_len),
            derived_from: None,
            features: AlignedVec::zeroed(batch * arch.features),
            logits: AlignedVec::zeroed(batch * arch.classes),
            step_seconds: None,
        })
    }

    /// The most images one call takes.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The input size the plan was built for, `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Every convolution with its chosen algorithm, in execution order.
    pub fn convs(&self) -> &[PlannedConv] {
        &self.convs
    }

    /// Times every step of the following calls (a clock read per step) or stops.
    pub fn set_profiling(&mut self, on: bool) {
        self.step_seconds = on.then(|| vec![0.0; self.steps.len()]);
    }

    /// Each step of the last call with its seconds, named by the layer it runs
    /// (`layer1.0.conv2`, `maxpool`, `layer2.0.shortcut`, `avgpool+fc`); empty unless
    /// profiling is on.
    pub fn step_profile(&self) -> Vec<(String, f64)> {
        let Some(times) = &self.step_seconds else {
            return Vec::new();
        };
        self.steps
            .iter()
            .zip(times)
            .map(|(step, &t)| {
                let name = match step {
                    Step::Conv { conv, .. } => self.convs[*conv].name.clone(),
                    Step::MaxPool { .. } => "maxpool".to_string(),
                    Step::ZeroPad { out, .. } => format!("shortcut to buffer {out}"),
                    Step::Head { .. } => "avgpool+fc".to_string(),
                };
                (name, t)
            })
            .collect()
    }

    /// What the plan holds in memory.
    pub fn memory(&self) -> PlanMemory {
        let f = std::mem::size_of::<f32>();
        PlanMemory {
            arena: self.arena.len() * f,
            largest_activation: self.buffers.iter().map(|(s, _)| s.len()).max().unwrap_or(0) * f,
            derived_weights: self.derived.len() * f,
        }
    }

    /// Rebuilds the derived weights when `params` is not what they were made from.
    fn derive(&mut self, params: &Params) -> Result<()> {
        if params.config() != &self.config {
            return Err(Error::Config(format!(
                "the plan was built for {} and cannot run the parameters of {}",
                self.config.name,
                params.config().name
            )));
        }
        if self.derived_from == Some(params.version()) {
            return Ok(());
        }
        let derived = &mut self.derived;
        for c in &self.convs {
            let gamma = params.tensor(&format!("{}.weight", c.bn));
            let beta = params.tensor(&format!("{}.bias", c.bn));
            let mean = params.tensor(&format!("{}.running_mean", c.bn));
            let var = params.tensor(&format!("{}.running_var", c.bn));
            let mut scale = vec![0.0; gamma.len()];
            let bias = &mut derived[c.bias.clone()];
            bias.fill(0.0);
            for k in 0..gamma.len() {
                let s = gamma[k] as f64 / (var[k] as f64 + BN_EPS).sqrt();
                scale[k] = s as f32;
                bias[k] = (beta[k] as f64 - mean[k] as f64 * s) as f32;
            }
            let weight = params.tensor(&format!("{}.weight", c.name));
            choose::derive_weights_into(
                c.algo,
                &c.geometry,
                weight,
                Some(&scale),
                c.in_block,
                &mut derived[c.weights.clone()],
            );
        }
        self.derived_from = Some(params.version());
        Ok(())
    }

    /// Logits (`n x classes`, row-major) of `n <= batch` NCHW images in `input`, with
    /// every batch norm in evaluation mode.
    pub fn forward(&mut self, params: &Params, input: &[f32], n: usize) -> Result<&[f32]> {
        let want = n * self.config.in_channels * self.height * self.width;
        if n == 0 || n > self.batch || input.len() != want {
            return Err(Error::Shape(format!(
                "the plan takes 1 to {} images of {}x{}x{} ({} values each), found {} values for {n} images",
                self.batch,
                self.config.in_channels,
                self.height,
                self.width,
                want / n.max(1),
                input.len()
            )));
        }
        self.derive(params)?;
        split::team(|| self.run_steps(params, input, n));
        Ok(&self.logits[..n * self.config.num_classes])
    }

    /// Runs every step of the plan on `n` images of `input` (checked by `forward`): the
    /// grouped steps once per image group, then the rest on all `n`.
    fn run_steps(&mut self, params: &Params, input: &[f32], n: usize) {
        if let Some(times) = self.step_seconds.as_mut() {
            times.fill(0.0);
        }
        let mut first = 0;
        while first < n && self.grouped_steps > 0 {
            let images = first..n.min(first + self.group_images);
            for index in 0..self.grouped_steps {
                self.timed_step(index, params, input, images.clone());
            }
            first = images.end;
        }
        for index in self.grouped_steps..self.steps.len() {
            self.timed_step(index, params, input, 0..n);
        }
    }

    /// [`ExecutionPlan::run_step`], its time added to the profile when profiling.
    fn timed_step(&mut self, index: usize, params: &Params, input: &[f32], images: Range<usize>) {
        let started = self.step_seconds.is_some().then(std::time::Instant::now);
        self.run_step(index, params, input, images);
        if let (Some(t), Some(times)) = (started, self.step_seconds.as_mut()) {
            times[index] += t.elapsed().as_secs_f64();
        }
    }

    /// Buffer `buf` holding `images`: its shape at that many images and its arena range
    /// (a group's buffer holds them from its start, a whole-batch buffer at their place in
    /// the batch).
    fn region(&self, buf: usize, images: &Range<usize>) -> (Blocked, Range<usize>) {
        let (shape, offset) = self.buffers[buf];
        let skip = if self.per_group[buf] { 0 } else { images.start };
        let start = offset + skip * shape.image_len();
        let shape = Blocked {
            n: images.len(),
            ..shape
        };
        (shape, start..start + shape.len())
    }

    /// Runs step `index` on the images `images` of the call.
    fn run_step(&mut self, index: usize, params: &Params, input: &[f32], images: Range<usize>) {
        let n = images.len();
        match self.steps[index] {
            Step::Conv {
                conv,
                input: src,
                out,
                add,
                relu,
            } => {
                let c = &self.convs[conv];
                let g = ConvGeometry { batch: n, ..c.geometry };
                let (_, y_range) = self.region(out, &images);
                let ep = BlockedEpilogue {
                    bias: Some(&self.derived[c.bias.clone()]),
                    residual: match add {
                        Add::None => Residual::None,
                        Add::InPlace => Residual::InPlace,
                    },
                    relu,
                    relu_output: None,
                };
                let weights = &self.derived[c.weights.clone()];
                match src {
                    Source::Input => {
                        let image = g.in_image();
                        let x = &input[images.start * image..images.end * image];
                        choose::run_conv(c.algo, &g, x, c.in_block, weights, &ep, &mut self.arena[y_range]);
                    }
                    Source::Buf(b) => {
                        let (_, x_range) = self.region(b, &images);
                        let (x, y) = two_regions(&mut self.arena, x_range, y_range);
                        choose::run_conv(c.algo, &g, x, c.in_block, weights, &ep, y);
                    }
                }
            }
            Step::MaxPool { input: i, out, pool } => {
                let ((ishape, x_range), (_, y_range)) = (self.region(i, &images), self.region(out, &images));
                let (x, y) = two_regions(&mut self.arena, x_range, y_range);
                max_pool::<F32xBlock>(&PoolGeometry { batch: n, ..pool }, ishape, x, y);
            }
            Step::ZeroPad { input: i, out, stride } => {
                let ((ishape, x_range), (oshape, y_range)) = (self.region(i, &images), self.region(out, &images));
                let (x, y) = two_regions(&mut self.arena, x_range, y_range);
                zero_pad_shortcut(ishape, x, oshape, stride, y);
            }
            Step::Head { input: i } => {
                let (shape, x_range) = self.region(i, &images);
                let classes = self.config.num_classes;
                let features = &mut self.features[images.start * shape.c..images.end * shape.c];
                global_avg_pool::<F32xBlock>(shape, &self.arena[x_range], features);
                let logits = &mut self.logits[images.start * classes..images.end * classes];
                let (w, b) = (params.tensor("fc.weight"), params.tensor("fc.bias"));
                dense::<F32xBlock>(n, shape.c, features, w, b, logits);
            }
        }
    }
}

/// Two disjoint regions of the arena, one to read and one to write. The planner never
/// gives a step's input and output overlapping ranges (both are alive at that step).
fn two_regions(arena: &mut [f32], read: Range<usize>, write: Range<usize>) -> (&[f32], &mut [f32]) {
    assert!(
        read.end <= write.start || write.end <= read.start,
        "plan: a step's input and output overlap"
    );
    if read.start < write.start {
        let (a, b) = arena.split_at_mut(write.start);
        (&a[read], &mut b[..write.end - write.start])
    } else {
        let (a, b) = arena.split_at_mut(read.start);
        (&b[..read.end - read.start], &mut a[write])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::max_rel_err;
    use crate::kernels::winograd::WinogradTile;
    use crate::model::ShortcutOption;
    use crate::rng::Rng;

    /// Parameters with batch norms far from the identity, so that folding is exercised.
    fn random_params(config: &ResNetConfig, seed: u64) -> Params {
        let mut p = Params::new(config.clone(), seed).unwrap();
        let mut rng = Rng::new(seed + 100);
        let names: Vec<String> = p.entries().iter().map(|e| e.name.clone()).collect();
        for name in names {
            let t = p.get_mut(&name).unwrap();
            if name.ends_with("running_var") {
                t.iter_mut().for_each(|v| *v = 0.5 + rng.uniform() as f32);
            } else if name.ends_with("running_mean")
                || (name.contains("bn") || name.contains("downsample.1")) && name.ends_with("bias")
            {
                t.iter_mut().for_each(|v| *v = 0.2 * rng.normal() as f32);
            } else if name.contains("bn") && name.ends_with("weight") {
                t.iter_mut().for_each(|v| *v = 0.8 + 0.4 * rng.uniform() as f32);
            }
        }
        p
    }

    /// The unfused layer-by-layer NCHW forward in evaluation mode (the training plan's):
    /// the reference of this test.
    fn reference_logits(p: &Params, input: &[f32], n: usize, size: usize) -> Vec<f32> {
        let mut plan = TrainingPlan::new(p.config(), n, size, size).unwrap();
        plan.forward_eval(p, input, n).unwrap().to_vec()
    }

    #[test]
    fn deep_cifar_nets_at_batch_1_keep_their_filters_within_the_cache_budget() {
        let (f2, f4) = (Algo::Winograd(WinogradTile::F2), Algo::Winograd(WinogradTile::F4));
        // How many of a stage's stride-1 3x3 layers run F(2x2), and how many there are.
        let f2_of = |model: &str, batch: usize, stage: &str| -> (usize, usize) {
            let config = ResNetConfig::named(model).unwrap();
            let plan = ExecutionPlan::inference(&config, batch, 32, 32, PlanOptions::default()).unwrap();
            let algos: Vec<Algo> = plan
                .convs()
                .iter()
                .filter(|c| c.name.starts_with(stage) && c.algo != Algo::Direct)
                .map(|c| c.algo)
                .collect();
            (algos.iter().filter(|&&a| a == f2).count(), algos.len())
        };
        // ResNet-56's derived weights fit: F(4x4) everywhere; ResNet-110's do not, so most
        // layers of its 8x8 stage (4 tiles a layer) take F(2x2), but not at batch 8.
        assert_eq!(f2_of("resnet56", 1, "layer3").0, 0);
        let (moved, of) = f2_of("resnet110", 1, "layer3");
        assert!(moved * 4 >= of * 3, "{moved} of {of}");
        assert_eq!(f2_of("resnet110", 1, "layer1").0, 0);
        assert_eq!(f2_of("resnet110", 8, "layer3").0, 0);
        // Forcing an algorithm is not overridden (where it applies: the stride-2 layers
        // keep the rule's choice).
        let config = ResNetConfig::named("resnet110").unwrap();
        let opts = PlanOptions {
            conv: ConvChoice::Force(f4),
        };
        let plan = ExecutionPlan::inference(&config, 1, 32, 32, opts).unwrap();
        assert!(plan
            .convs()
            .iter()
            .filter(|c| c.algo != Algo::Direct && f4.applies(&c.geometry))
            .all(|c| c.algo == f4));
    }

    #[test]
    fn inference_matches_the_layer_by_layer_forward_for_every_algorithm_and_shortcut() {
        let cases = [
            (ResNetConfig::named("resnet8").unwrap(), 32, 3),
            (
                ResNetConfig::named("resnet8").unwrap().with_shortcut(ShortcutOption::B),
                20,
                2,
            ),
            (
                ResNetConfig::named("resnet8").unwrap().with_shortcut(ShortcutOption::C),
                17,
                1,
            ),
            (ResNetConfig::named("plain8").unwrap(), 32, 2),
            (ResNetConfig::named("resnet18").unwrap().with_classes(10), 64, 2),
            (ResNetConfig::named("resnet50").unwrap().with_classes(10), 40, 1),
        ];
        for (config, size, n) in cases {
            let p = random_params(&config, 11);
            let mut rng = Rng::new(3);
            let x: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.normal() as f32).collect();
            let want = reference_logits(&p, &x, n, size);
            for choice in [
                ConvChoice::Auto,
                ConvChoice::Force(Algo::Direct),
                ConvChoice::Force(Algo::Winograd(WinogradTile::F2)),
                ConvChoice::Force(Algo::Winograd(WinogradTile::F4)),
                ConvChoice::Force(Algo::WinogradS2(WinogradTile::F2)),
                ConvChoice::Force(Algo::WinogradS2(WinogradTile::F4)),
            ] {
                let mut plan =
                    ExecutionPlan::inference(&config, n + 1, size, size, PlanOptions { conv: choice }).unwrap();
                let got = plan.forward(&p, &x, n).unwrap().to_vec();
                let err = max_rel_err(&got, &want);
                println!("{} {size}x{size} b{n} {choice:?}: max rel err {err:.2e}", config.name);
                assert!(err < 2e-4, "{} {choice:?}: {err}", config.name);
            }
        }
    }

    /// A plan's forward runs its loops on a team (`split::team`) inside a pool; the same
    /// loops as plain rayon tasks (the plan's steps called without a team) give the same
    /// bits.
    #[test]
    fn a_team_gives_the_logits_of_plain_rayon_tasks() {
        let config = ResNetConfig::named("resnet18").unwrap().with_classes(10);
        let p = random_params(&config, 4);
        let x: Vec<f32> = (0..3 * 48 * 48).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut plan = ExecutionPlan::inference(&config, 1, 48, 48, PlanOptions::default()).unwrap();
        let with_team = pool.install(|| plan.forward(&p, &x, 1).unwrap().to_vec());
        let without = pool.install(|| {
            plan.run_steps(&p, &x, 1);
            plan.logits[..10].to_vec()
        });
        assert_eq!(with_team, without);
        assert!(with_team.iter().all(|v| v.is_finite()));
    }

    /// Steps run in image groups (groups of 2 here, the last one short) give the logits
    /// of the whole batch at once, with an arena that holds one group's activations for
    /// the grouped steps.
    #[test]
    fn image_groups_give_the_logits_of_the_whole_batch() {
        for (config, size) in [
            (ResNetConfig::named("resnet18").unwrap().with_classes(10), 40),
            (
                ResNetConfig::named("resnet8").unwrap().with_shortcut(ShortcutOption::A),
                16,
            ),
        ] {
            let p = random_params(&config, 9);
            let mut rng = Rng::new(5);
            let x: Vec<f32> = (0..5 * 3 * size * size).map(|_| rng.normal() as f32).collect();
            let mut whole = ExecutionPlan::inference(&config, 5, size, size, PlanOptions::default()).unwrap();
            assert_eq!(whole.grouped_steps, 0, "{}: no grouping at these sizes", config.name);
            // Every step but the head in groups of 2 images.
            let most = (0..whole.steps.len() - 1)
                .map(|i| {
                    let b = whole.steps[i].output().unwrap();
                    whole.buffers[b].0.image_len() * 4
                })
                .max()
                .unwrap();
            let grouping = Grouping {
                weight_ratio: 0,
                group_bytes: most * 2,
            };
            let mut grouped =
                ExecutionPlan::inference_grouped(&config, 5, size, size, PlanOptions::default(), grouping).unwrap();
            assert_eq!(grouped.grouped_steps, grouped.steps.len() - 1, "{}", config.name);
            assert_eq!(grouped.group_images, 2);
            assert!(grouped.memory().arena < whole.memory().arena, "{}", config.name);
            for n in [5, 3, 1] {
                let want = whole.forward(&p, &x[..n * 3 * size * size], n).unwrap().to_vec();
                let got = grouped.forward(&p, &x[..n * 3 * size * size], n).unwrap().to_vec();
                let err = max_rel_err(&got, &want);
                assert!(err < 1e-6, "{} b{n}: {err}", config.name);
            }
        }
    }

    #[test]
    fn derived_weights_follow_the_params_version() {
        let config = ResNetConfig::named("resnet8").unwrap();
        let mut p = random_params(&config, 5);
        let x = vec![0.5; 2 * 3 * 16 * 16];
        let mut plan = ExecutionPlan::inference(&config, 2, 16, 16, PlanOptions::default()).unwrap();
        let before = plan.forward(&p, &x, 2).unwrap().to_vec();
        // Doubling the last batch norm's scale changes the logits only if the plan
        // notices the new version and folds again.
        p.get_mut("layer3.0.bn2.weight")
            .unwrap()
            .iter_mut()
            .for_each(|v| *v *= 2.0);
        let after = plan.forward(&p, &x, 2).unwrap().to_vec();
        assert_ne!(before, after);
        assert_eq!(after, reference_logits_plan(&config, &p, &x));
        let other = Params::new(ResNetConfig::named("resnet14").unwrap(), 1).unwrap();
        let err = plan.forward(&other, &x, 2).unwrap_err().to_string();
        assert!(err.contains("built for resnet8"), "{err}");
        let err = plan.forward(&p, &x[1..], 2).unwrap_err().to_string();
        assert!(err.contains("takes 1 to 2 images"), "{err}");
    }

    fn reference_logits_plan(config: &ResNetConfig, p: &Params, x: &[f32]) -> Vec<f32> {
        let mut fresh = ExecutionPlan::inference(config, 2, 16, 16, PlanOptions::default()).unwrap();
        fresh.forward(p, x, 2).unwrap().to_vec()
    }

    #[test]
    fn arena_holds_about_two_activations_not_all_of_them() {
        let config = ResNetConfig::named("resnet50").unwrap();
        let plan = ExecutionPlan::inference(&config, 1, 224, 224, PlanOptions::default()).unwrap();
        let m = plan.memory();
        let all: usize = plan.buffers.iter().map(|(s, _)| s.len() * 4).sum();
        println!(
            "resnet50 b1: arena {} MB, largest activation {} MB, all activations {} MB",
            m.arena >> 20,
            m.largest_activation >> 20,
            all >> 20
        );
        assert!(m.arena <= 3 * m.largest_activation, "{m:?}");
        assert!(m.arena * 4 < all);
    }
}
