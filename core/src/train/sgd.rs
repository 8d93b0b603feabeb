//! Stochastic gradient descent with momentum and weight decay, exactly as PyTorch's
//! `torch.optim.SGD` (dampening 0): `g = grad + wd * p; v = mu * v + g; p -= lr * v`
//! (or `p -= lr * (g + mu * v)` with Nesterov), the first step setting `v = g`.

use crate::model::ResNet;

/// SGD state: hyper-parameters and one velocity buffer per parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// Velocities in the order of `ResNet::for_each_param`; empty until the first step.
    pub velocity: Vec<Vec<f32>>,
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

    /// Updates every parameter of `model` from its gradient with learning rate `lr`.
    pub fn step(&mut self, model: &mut ResNet, lr: f32) {
        let first = self.velocity.is_empty();
        let (mu, wd, nesterov) = (self.momentum, self.weight_decay, self.nesterov);
        let mut i = 0;
        let velocity = &mut self.velocity;
        model.for_each_param(&mut |p| {
            if first {
                velocity.push(Vec::new());
            }
            let v = &mut velocity[i];
            i += 1;
            let fresh = v.is_empty();
            if fresh && mu != 0.0 {
                v.resize(p.value.len(), 0.0);
            }
            if mu == 0.0 {
                for (w, &grad) in p.value.iter_mut().zip(&p.grad) {
                    *w -= lr * (grad + wd * *w);
                }
                return;
            }
            for ((w, &grad), vj) in p.value.iter_mut().zip(&p.grad).zip(v.iter_mut()) {
                let g = grad + wd * *w;
                *vj = if fresh { g } else { mu * *vj + g };
                *w -= lr * if nesterov { g + mu * *vj } else { *vj };
            }
        });
    }
}
