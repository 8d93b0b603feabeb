//! Stochastic gradient descent with momentum and weight decay, exactly as PyTorch's
//! `torch.optim.SGD` (dampening 0): `g = grad + wd * p; v = mu * v + g; p -= lr * v`
//! (or `p -= lr * (g + mu * v)` with Nesterov), the first step setting `v = g`. Weight
//! decay applies to every parameter, batch-norm and classifier biases included.
//!
//! One pass over the flat values and gradients of [`Params`], with one flat velocity
//! laid out the same way; the elementwise update is split among threads in fixed
//! chunks, so the result does not depend on the split.

use crate::Params;
use rayon::prelude::*;

/// Values per task: large enough to amortise a task, small enough to use every thread
/// on a ResNet-20 (270k parameters).
const CHUNK: usize = 1 << 14;

/// SGD state: hyper-parameters and the velocity.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// Velocities laid out as [`Params::values`]; empty until the first step, and
    /// always without momentum.
    pub velocity: Vec<f32>,
}

impl Sgd {
    /// The paper's optimiser: momentum 0.9, weight decay 1e-4 (pass them explicitly).
    pub fn new(momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            weight_decay,
            nesterov: false,
            velocity: Vec::new(),
        }
    }

    /// Updates every parameter of `params` from its gradient with learning rate `lr`.
    pub fn step(&mut self, params: &mut Params, lr: f32) {
        let (mu, wd, nesterov) = (self.momentum, self.weight_decay, self.nesterov);
        let (values, grads) = params.values_and_grads_mut();
        if mu == 0.0 {
            values
                .par_chunks_mut(CHUNK)
                .zip(grads.par_chunks(CHUNK))
                .for_each(|(w, g)| {
                    for (w, &grad) in w.iter_mut().zip(g) {
                        *w -= lr * (grad + wd * *w);
                    }
                });
            return;
        }
        let fresh = self.velocity.is_empty();
        if fresh {
            self.velocity.resize(values.len(), 0.0);
        }
        values
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(self.velocity.par_chunks_mut(CHUNK))
            .for_each(|((w, g), v)| {
                for ((w, &grad), vj) in w.iter_mut().zip(g).zip(v.iter_mut()) {
                    let g = grad + wd * *w;
                    *vj = if fresh { g } else { mu * *vj + g };
                    *w -= lr * if nesterov { g + mu * *vj } else { *vj };
                }
            });
    }
}
