//! The `Trainer`: one full training step (forward, loss, backward, update) on a batch,
//! and evaluation of a data set held in memory.

use super::schedule::Schedule;
use super::sgd::Sgd;
use crate::layers::loss::softmax_cross_entropy;
use crate::layers::{fit, Mode};
use crate::model::ResNet;
use crate::{Error, Result, Tensor};

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

/// A model, its optimiser and its schedule, stepping through iterations.
#[derive(Clone, Debug)]
pub struct Trainer {
    pub model: ResNet,
    pub sgd: Sgd,
    pub schedule: Schedule,
    /// Iterations done so far.
    pub iteration: u64,
    dlogits: Vec<f32>,
}

impl Trainer {
    /// A trainer at iteration 0.
    pub fn new(model: ResNet, sgd: Sgd, schedule: Schedule) -> Self {
        Trainer {
            model,
            sgd,
            schedule,
            iteration: 0,
            dlogits: Vec::new(),
        }
    }

    /// One SGD step on `images` (NCHW, already normalised) with `labels`. A NaN or
    /// infinite loss returns `Error::Diverged` and leaves the parameters untouched.
    pub fn step(&mut self, images: &Tensor, labels: &[u32]) -> Result<StepStats> {
        let (loss, correct) = self.compute_gradients(images, labels)?;
        let lr = self.apply_gradients();
        Ok(StepStats {
            iteration: self.iteration - 1,
            loss,
            accuracy: correct as f64 / labels.len().max(1) as f64,
            lr,
        })
    }

    /// Forward and backward on a batch without updating: leaves the batch-mean gradients
    /// in the parameters and returns (loss, correct predictions). Data-parallel training
    /// averages these across workers, then calls [`Trainer::apply_gradients`].
    pub fn compute_gradients(&mut self, images: &Tensor, labels: &[u32]) -> Result<(f64, usize)> {
        let n = images.shape().first().copied().unwrap_or(0);
        if n != labels.len() {
            return Err(Error::Shape(format!(
                "a batch of {n} images needs {n} labels, found {}",
                labels.len()
            )));
        }
        let classes = self.model.config.num_classes;
        let logits = self.model.forward(images, Mode::Train)?;
        fit(&mut self.dlogits, logits.len());
        let out = softmax_cross_entropy(logits, labels, classes, &mut self.dlogits)?;
        if !out.loss.is_finite() {
            return Err(Error::Diverged {
                iteration: self.iteration,
                loss: out.loss,
            });
        }
        self.model.zero_grad();
        self.model.backward(&self.dlogits);
        Ok((out.loss, out.correct))
    }

    /// One SGD update from the gradients held in the parameters, at the schedule's rate
    /// for the current iteration; advances the iteration and returns the rate used.
    pub fn apply_gradients(&mut self) -> f32 {
        let lr = self.schedule.lr(self.iteration);
        self.sgd.step(&mut self.model, lr);
        self.iteration += 1;
        lr
    }

    /// Loss and top-1 accuracy in evaluation mode over `images` (N x C x H x W) in
    /// batches of `batch`.
    pub fn evaluate(&mut self, images: &Tensor, labels: &[u32], batch: usize) -> Result<EvalStats> {
        evaluate(&mut self.model, images, labels, batch, &mut self.dlogits)
    }
}

/// Evaluation-mode loss and accuracy of `model` over an in-memory data set.
pub fn evaluate(
    model: &mut ResNet,
    images: &Tensor,
    labels: &[u32],
    batch: usize,
    scratch: &mut Vec<f32>,
) -> Result<EvalStats> {
    let shape = images.shape();
    if shape.len() != 4 || shape[0] != labels.len() {
        return Err(Error::Shape(format!(
            "evaluation needs N x C x H x W images and N labels, found shape {shape:?} and {} labels",
            labels.len()
        )));
    }
    let per_image: usize = shape[1..].iter().product();
    let batch = batch.max(1);
    let classes = model.config.num_classes;
    let mut stats = EvalStats {
        loss: 0.0,
        correct: 0,
        total: 0,
    };
    for (chunk, lab) in images.data().chunks(batch * per_image).zip(labels.chunks(batch)) {
        let t = Tensor::new(vec![lab.len(), shape[1], shape[2], shape[3]], chunk.to_vec())?;
        let logits = model.forward(&t, Mode::Eval)?;
        fit(scratch, logits.len());
        let out = softmax_cross_entropy(logits, lab, classes, scratch)?;
        stats.loss += out.loss * lab.len() as f64;
        stats.correct += out.correct;
        stats.total += lab.len();
    }
    stats.loss /= stats.total.max(1) as f64;
    Ok(stats)
}
