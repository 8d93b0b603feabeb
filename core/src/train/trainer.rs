//! The `Trainer`: one full training step (forward, loss, backward, update) on a batch,
//! and evaluation of a data set held in memory. It owns the optimizer, the schedule, the
//! iteration count and its [`TrainingPlan`] (rebuilt when the batch grows or the input
//! shape or architecture changes); the parameters stay with the caller and are passed
//! in by reference, so a classifier, a checkpoint or a data-parallel worker owns them.

use super::schedule::Schedule;
use super::sgd::Sgd;
use crate::layers::loss::softmax_cross_entropy;
use crate::params::Kind;
use crate::plan::{ExecutionPlan, LocalStep, PlanOptions, StepHooks, TrainingPlan};
use crate::{Error, Params, Result, Tensor};
use rayon::prelude::*;

/// A training loss above this is divergence, not learning: the mean cross-entropy of a
/// network that gives the right class a probability of e^-10000. (A fresh network
/// starts near ln(classes), about 2.3 for CIFAR-10 and 6.9 for ImageNet.)
pub const MAX_LOSS: f64 = 1e4;

/// A weight or batch-norm statistic larger than this in magnitude is divergence: trained
/// ResNets hold values below 1e3, and a running variance of 1e12 means activations of
/// 1e6 before normalisation.
pub const MAX_MAGNITUDE: f32 = 1e12;

/// Values per task of the passes over every parameter (the check, zeroing the gradients).
const PASS_CHUNK: usize = 1 << 16;

/// Checks that every weight and running statistic of `params` is finite and below
/// [`MAX_MAGNITUDE`]; the error names the first tensor that is not, and `iteration`.
pub fn check_params(params: &Params, iteration: u64) -> Result<()> {
    // NaN-aware: NaN is neither finite nor below the limit.
    let bad = |v: &[f32]| v.iter().position(|x| !x.is_finite() || x.abs() > MAX_MAGNITUDE);
    let (values, buffers) = (params.values(), params.buffers());
    // Every step scans every weight (ResNet-50: 25.6M): in parallel, in fixed chunks.
    let any_bad = |v: &[f32]| v.par_chunks(PASS_CHUNK).any(|c| bad(c).is_some());
    if !any_bad(values) && !any_bad(buffers) {
        return Ok(());
    }
    for e in params.entries() {
        let flat = match e.kind {
            Kind::Param => values,
            Kind::Buffer => buffers,
        };
        let t = &flat[e.offset..e.offset + e.len];
        if let Some(i) = bad(t) {
            return Err(Error::Diverged {
                iteration,
                what: format!("{} holds {:e} (at index {i})", e.name, t[i]),
            });
        }
    }
    Ok(())
}

/// What one training step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The iteration this step ran as (0 for the first).
    pub iteration: u64,
    pub loss: f64,
    /// Top-1 accuracy on the batch, in training mode.
    pub accuracy: f64,
    pub lr: f32,
}

/// Loss and accuracy over a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalStats {
    pub loss: f64,
    pub correct: usize,
    pub total: usize,
}

impl EvalStats {
    /// Top-1 accuracy in [0, 1].
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// An optimiser and its schedule, stepping through iterations on parameters it is lent.
#[derive(Debug)]
pub struct Trainer {
    pub sgd: Sgd,
    pub schedule: Schedule,
    /// Iterations done so far.
    pub iteration: u64,
    plan: Option<TrainingPlan>,
    /// Whether the training plan runs bf16 products ([`Trainer::use_bf16`]).
    bf16: bool,
    /// The inference plan of evaluations, with the architecture it was built for.
    eval_plan: Option<(crate::model::ResNetConfig, ExecutionPlan)>,
    dlogits: Vec<f32>,
}

impl Clone for Trainer {
    /// The optimizer state, schedule and iteration; plans are rebuilt on first use.
    fn clone(&self) -> Self {
        Trainer {
            sgd: self.sgd.clone(),
            schedule: self.schedule.clone(),
            iteration: self.iteration,
            plan: None,
            bf16: self.bf16,
            eval_plan: None,
            dlogits: Vec::new(),
        }
    }
}

impl Trainer {
    /// A trainer at iteration 0.
    pub fn new(sgd: Sgd, schedule: Schedule) -> Self {
        Trainer {
            sgd,
            schedule,
            iteration: 0,
            plan: None,
            bf16: false,
            eval_plan: None,
            dlogits: Vec::new(),
        }
    }

    /// Runs the products of the wide Winograd convolutions in bf16 from the next step on
    /// (`--precision bf16`, see [`TrainingPlan::use_bf16`]); fails at once on a CPU
    /// without AVX512_BF16. Weights, gradients, statistics and sums stay f32.
    pub fn use_bf16(&mut self) -> Result<()> {
        if !crate::kernels::blocked::bf16::available() || crate::simd::BLOCK != crate::kernels::blocked::bf16::LANES {
            return Err(Error::Config(
                "--precision bf16 needs an x86-64 CPU with AVX-512F and AVX512_BF16".into(),
            ));
        }
        self.bf16 = true;
        self.plan = None;
        Ok(())
    }

    /// The training plan of the last step, if any.
    pub fn plan(&self) -> Option<&TrainingPlan> {
        self.plan.as_ref()
    }

    /// One SGD step of `params` on `images` (NCHW, already normalised) with `labels`. A
    /// non-finite loss or one above [`MAX_LOSS`] returns `Error::Diverged` before the
    /// weights are updated; weights or running statistics that become non-finite or
    /// exceed [`MAX_MAGNITUDE`] return it after (see [`check_params`]).
    pub fn step(&mut self, params: &mut Params, images: &Tensor, labels: &[u32]) -> Result<StepStats> {
        let (loss, correct) = self.compute_gradients(params, images, labels)?;
        let lr = self.apply_gradients(params);
        check_params(params, self.iteration - 1)?;
        Ok(StepStats {
            iteration: self.iteration - 1,
            loss,
            accuracy: correct as f64 / labels.len().max(1) as f64,
            lr,
        })
    }

    /// Forward and backward on a batch without updating: leaves the batch-mean gradients
    /// in `params` (replacing what was there) and returns (loss, correct predictions).
    /// Data-parallel training averages these across workers, then calls
    /// [`Trainer::apply_gradients`]. The running statistics move as in any training pass.
    pub fn compute_gradients(&mut self, params: &mut Params, images: &Tensor, labels: &[u32]) -> Result<(f64, usize)> {
        let n = labels.len();
        self.forward_backward(params, images, labels, n, &mut LocalStep, true)
    }

    /// Forward and backward on this process's part (`images`, `labels`) of a global batch
    /// of `global` images that data-parallel processes split among themselves. The
    /// gradients left in `params` (replacing what was there) are this part's share of the
    /// global batch's mean gradient, i.e. the part's mean times `n / global`, so that the
    /// processes' gradients add up to the global mean; `hooks` see every batch norm's
    /// statistics and each gradient as soon as it is final (see [`StepHooks`]). The loss
    /// is not checked here (the processes decide together whether it diverged): returns
    /// the part's mean loss and its correct predictions.
    pub fn compute_share_gradients(
        &mut self,
        params: &mut Params,
        images: &Tensor,
        labels: &[u32],
        global: usize,
        hooks: &mut dyn StepHooks,
    ) -> Result<(f64, usize)> {
        if global < labels.len() {
            return Err(Error::Shape(format!(
                "a part of {} images cannot belong to a global batch of {global}",
                labels.len()
            )));
        }
        self.forward_backward(params, images, labels, global, hooks, false)
    }

    /// Forward, loss and backward, the logit gradients scaled to a global batch of
    /// `global`; with `check_loss`, a diverged loss is an error before backward runs.
    fn forward_backward(
        &mut self,
        params: &mut Params,
        images: &Tensor,
        labels: &[u32],
        global: usize,
        hooks: &mut dyn StepHooks,
        check_loss: bool,
    ) -> Result<(f64, usize)> {
        let [n, _, h, w] = *images.shape() else {
            return Err(Error::Shape(format!(
                "input must be N x C x H x W, found shape {:?}",
                images.shape()
            )));
        };
        if n != labels.len() {
            return Err(Error::Shape(format!(
                "a batch of {n} images needs {n} labels, found {}",
                labels.len()
            )));
        }
        let fits = |p: &TrainingPlan| p.config() == params.config() && p.batch() >= n && p.input_size() == (h, w);
        if !self.plan.as_ref().is_some_and(fits) {
            self.plan = None;
            let mut plan = TrainingPlan::new(params.config(), n, h, w)?;
            if self.bf16 {
                plan.use_bf16()?;
            }
            self.plan = Some(plan);
        }
        let plan = self.plan.as_mut().expect("planned above");
        let classes = params.config().num_classes;
        let logits = plan.forward_train_with(params, images.data(), n, hooks)?;
        self.dlogits.resize(logits.len(), 0.0);
        let out = softmax_cross_entropy(logits, labels, classes, &mut self.dlogits)?;
        // NaN-aware: NaN is not finite.
        if check_loss && (!out.loss.is_finite() || out.loss > MAX_LOSS) {
            return Err(Error::Diverged {
                iteration: self.iteration,
                what: format!("the loss is {} (the limit is {MAX_LOSS})", out.loss),
            });
        }
        if global != n {
            // The loss's gradient is a mean over the part's n images; the global batch's
            // is over `global`.
            let share = (n as f64 / global as f64) as f32;
            self.dlogits.iter_mut().for_each(|d| *d *= share);
        }
        // The gradients are summed into: zeroed first, in parallel (ResNet-50: 100 MB).
        params.grads_mut().par_chunks_mut(PASS_CHUNK).for_each(|g| g.fill(0.0));
        plan.backward_with(params, &self.dlogits, hooks)?;
        Ok((out.loss, out.correct))
    }

    /// One SGD update of `params` from the gradients they hold, at the schedule's rate for
    /// the current iteration; advances the iteration and returns the rate used.
    pub fn apply_gradients(&mut self, params: &mut Params) -> f32 {
        let lr = self.schedule.lr(self.iteration);
        self.sgd.step(params, lr);
        self.iteration += 1;
        lr
    }

    /// Loss and top-1 accuracy in evaluation mode (running statistics, through an
    /// inference plan) over `images` (N x C x H x W) in batches of `batch`.
    pub fn evaluate(&mut self, params: &Params, images: &Tensor, labels: &[u32], batch: usize) -> Result<EvalStats> {
        let shape = images.shape();
        if shape.len() != 4 || shape[0] != labels.len() {
            return Err(Error::Shape(format!(
                "evaluation needs N x C x H x W images and N labels, found shape {shape:?} and {} labels",
                labels.len()
            )));
        }
        let (h, w) = (shape[2], shape[3]);
        let per_image: usize = shape[1..].iter().product();
        let batch = batch.max(1).min(labels.len().max(1));
        let fits = |(c, p): &(_, ExecutionPlan)| c == params.config() && p.batch() >= batch && p.input_size() == (h, w);
        if !self.eval_plan.as_ref().is_some_and(fits) {
            self.eval_plan = None;
            let plan = ExecutionPlan::inference(params.config(), batch, h, w, PlanOptions::default())?;
            self.eval_plan = Some((params.config().clone(), plan));
        }
        let plan = &mut self.eval_plan.as_mut().expect("planned above").1;
        let classes = params.config().num_classes;
        let mut stats = EvalStats {
            loss: 0.0,
            correct: 0,
            total: 0,
        };
        for (chunk, lab) in images.data().chunks(batch * per_image).zip(labels.chunks(batch)) {
            let logits = plan.forward(params, chunk, lab.len())?;
            self.dlogits.resize(logits.len(), 0.0);
            let out = softmax_cross_entropy(logits, lab, classes, &mut self.dlogits)?;
            stats.loss += out.loss * lab.len() as f64;
            stats.correct += out.correct;
            stats.total += lab.len();
        }
        stats.loss /= stats.total.max(1) as f64;
        Ok(stats)
    }
}
