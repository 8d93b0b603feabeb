//! `BatchNorm2d` with PyTorch's semantics: batch statistics in training (biased variance
//! for normalising, unbiased for the running average, momentum 0.1), running statistics
//! in evaluation, eps 1e-5.

use super::{fit, join, Dims, Mode, Param, Slot, Visitor};
use crate::kernels::norm::{channel_moments, grad_sums, input_grad, normalize, NormGeometry};

/// Batch normalisation over the channels of an NCHW activation.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub channels: usize,
    /// gamma, initialised to 1.
    pub weight: Param,
    /// beta, initialised to 0.
    pub bias: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    /// Training batches seen (PyTorch's `num_batches_tracked`).
    pub num_batches_tracked: u64,
    pub momentum: f32,
    pub eps: f32,
    /// The output of the last forward pass.
    pub out: Vec<f32>,
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    mean_f32: Vec<f32>,
    mean: Vec<f64>,
    var: Vec<f64>,
    sum_dy: Vec<f64>,
    sum_dy_xhat: Vec<f64>,
    last: Option<(NormGeometry, Mode)>,
    /// `scale` and `shift` of [`BatchNorm2d::eval_affine`].
    affine: (Vec<f32>, Vec<f32>),
}

impl BatchNorm2d {
    /// A batch norm with gamma 1, beta 0, running mean 0 and variance 1.
    pub fn new(channels: usize) -> Self {
        BatchNorm2d {
            channels,
            weight: Param::filled(vec![channels], 1.0),
            bias: Param::filled(vec![channels], 0.0),
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            num_batches_tracked: 0,
            momentum: 0.1,
            eps: 1e-5,
            out: Vec::new(),
            xhat: Vec::new(),
            inv_std: vec![0.0; channels],
            mean_f32: vec![0.0; channels],
            mean: vec![0.0; channels],
            var: vec![0.0; channels],
            sum_dy: vec![0.0; channels],
            sum_dy_xhat: vec![0.0; channels],
            last: None,
            affine: (vec![0.0; channels], vec![0.0; channels]),
        }
    }

    /// Normalises `x` into `self.out`. In `Mode::Train` it also updates the running statistics.
    pub fn forward(&mut self, x: &[f32], dims: Dims, mode: Mode) {
        self.forward_impl(x, dims, mode, false);
    }

    /// [`BatchNorm2d::forward`] followed by a ReLU in the same pass: `self.out` is then
    /// the activation, and [`BatchNorm2d::backward`] wants the gradient before the ReLU.
    pub fn forward_relu(&mut self, x: &[f32], dims: Dims, mode: Mode) {
        self.forward_impl(x, dims, mode, true);
    }

    fn forward_impl(&mut self, x: &[f32], dims: Dims, mode: Mode, relu: bool) {
        assert_eq!(dims.c, self.channels, "BatchNorm2d: channel count");
        let g = NormGeometry {
            batch: dims.n,
            channels: dims.c,
            plane: dims.plane(),
        };
        match mode {
            Mode::Train => {
                channel_moments(&g, x, &mut self.mean, &mut self.var);
                let count = g.count() as f64;
                let m = self.momentum as f64;
                for c in 0..self.channels {
                    self.mean_f32[c] = self.mean[c] as f32;
                    self.inv_std[c] = (1.0 / (self.var[c] + self.eps as f64).sqrt()) as f32;
                    let unbiased = if count > 1.0 {
                        self.var[c] * count / (count - 1.0)
                    } else {
                        self.var[c]
                    };
                    self.running_mean[c] = ((1.0 - m) * self.running_mean[c] as f64 + m * self.mean[c]) as f32;
                    self.running_var[c] = ((1.0 - m) * self.running_var[c] as f64 + m * unbiased) as f32;
                }
                self.num_batches_tracked += 1;
            }
            Mode::Eval => {
                for c in 0..self.channels {
                    self.mean_f32[c] = self.running_mean[c];
                    self.inv_std[c] = (1.0 / (self.running_var[c] as f64 + self.eps as f64).sqrt()) as f32;
                }
            }
        }
        fit(&mut self.out, dims.len());
        fit(&mut self.xhat, dims.len());
        normalize(
            &g,
            x,
            &self.mean_f32,
            &self.inv_std,
            &self.weight.value,
            &self.bias.value,
            relu,
            &mut self.xhat,
            &mut self.out,
        );
        self.last = Some((g, mode));
    }

    /// The evaluation-mode transform as `y = scale * x + shift` per channel, for folding
    /// into the convolution before it.
    pub fn eval_affine(&mut self) -> (&[f32], &[f32]) {
        let (scale, shift) = &mut self.affine;
        for c in 0..self.channels {
            let inv_std = 1.0 / (self.running_var[c] as f64 + self.eps as f64).sqrt();
            let s = self.weight.value[c] as f64 * inv_std;
            scale[c] = s as f32;
            shift[c] = (self.bias.value[c] as f64 - self.running_mean[c] as f64 * s) as f32;
        }
        (scale, shift)
    }

    /// Accumulates gamma and beta gradients and writes the input gradient into `dx`.
    pub fn backward(&mut self, dy: &[f32], dx: &mut Vec<f32>) {
        let (g, mode) = self.last.expect("BatchNorm2d::backward called before forward");
        grad_sums(&g, dy, &self.xhat, &mut self.sum_dy, &mut self.sum_dy_xhat);
        let (sum_dy, sum_dy_xhat) = (&self.sum_dy, &self.sum_dy_xhat);
        for c in 0..self.channels {
            self.bias.grad[c] += sum_dy[c] as f32;
            self.weight.grad[c] += sum_dy_xhat[c] as f32;
        }
        fit(dx, dy.len());
        input_grad(
            &g,
            dy,
            &self.xhat,
            &self.inv_std,
            &self.weight.value,
            sum_dy,
            sum_dy_xhat,
            mode == Mode::Train,
            dx,
        );
    }

    /// Visits `weight`, `bias`, `running_mean` and `running_var`.
    pub fn visit(&mut self, prefix: &str, f: &mut Visitor) {
        f(&join(prefix, "weight"), Slot::Param(&mut self.weight));
        f(&join(prefix, "bias"), Slot::Param(&mut self.bias));
        let shape = [self.channels];
        f(
            &join(prefix, "running_mean"),
            Slot::Buffer(&shape, &mut self.running_mean),
        );
        f(
            &join(prefix, "running_var"),
            Slot::Buffer(&shape, &mut self.running_var),
        );
    }
}

/// Batch norm's epsilon, as PyTorch's default (an f32, as PyTorch stores it).
pub const EPS: f32 = 1e-5;

/// The running statistics' momentum, as PyTorch's default.
pub const MOMENTUM: f32 = 0.1;

/// What the forward pass keeps for the backward pass, per channel, besides `xhat`.
pub struct Saved<'a> {
    /// The mean the input was normalised with.
    pub mean: &'a mut [f32],
    /// `1 / sqrt(var + eps)` it was normalised with.
    pub inv_std: &'a mut [f32],
}

/// Training-mode batch norm: normalises `x` with its batch statistics (mean and biased
/// variance, accumulated in f64 into `moments`, `2 * channels` values of scratch),
/// writes `xhat` and `y = gamma * xhat + beta` (then `max(0, y)` with `relu`), keeps the
/// mean and `inv_std` in `saved`, and moves the running statistics towards the batch's
/// (momentum 0.1, unbiased variance) as PyTorch does.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    relu: bool,
    moments: &mut [f64],
    saved: Saved,
    xhat: &mut [f32],
    y: &mut [f32],
) {
    let channels = g.channels;
    let (mean, var) = moments[..2 * channels].split_at_mut(channels);
    channel_moments(g, x, mean, var);
    let count = g.count() as f64;
    let m = MOMENTUM as f64;
    for c in 0..channels {
        saved.mean[c] = mean[c] as f32;
        saved.inv_std[c] = (1.0 / (var[c] + EPS as f64).sqrt()) as f32;
        let unbiased = if count > 1.0 {
            var[c] * count / (count - 1.0)
        } else {
            var[c]
        };
        running_mean[c] = ((1.0 - m) * running_mean[c] as f64 + m * mean[c]) as f32;
        running_var[c] = ((1.0 - m) * running_var[c] as f64 + m * unbiased) as f32;
    }
    normalize(g, x, saved.mean, saved.inv_std, gamma, beta, relu, xhat, y);
}

/// Evaluation-mode batch norm (running statistics), layer by layer: the unfolded twin of
/// the inference plan's folded convolutions, and what the gradient checks differentiate.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    relu: bool,
    saved: Saved,
    xhat: &mut [f32],
    y: &mut [f32],
) {
    for c in 0..g.channels {
        saved.mean[c] = running_mean[c];
        saved.inv_std[c] = (1.0 / (running_var[c] as f64 + EPS as f64).sqrt()) as f32;
    }
    normalize(g, x, saved.mean, saved.inv_std, gamma, beta, relu, xhat, y);
}

/// Accumulates `dgamma += sum(dy * xhat)` and `dbeta += sum(dy)` and writes the input
/// gradient `dx` (through the batch statistics when `batch_stats`, else through fixed
/// ones). `dy` is the gradient of the output before any fused ReLU; `sums` is `2 *
/// channels` values of f64 scratch.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &NormGeometry,
    dy: &[f32],
    xhat: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    batch_stats: bool,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    sums: &mut [f64],
    dx: &mut [f32],
) {
    let channels = g.channels;
    let (sum_dy, sum_dy_xhat) = sums[..2 * channels].split_at_mut(channels);
    grad_sums(g, dy, xhat, sum_dy, sum_dy_xhat);
    for c in 0..channels {
        dbeta[c] += sum_dy[c] as f32;
        dgamma[c] += sum_dy_xhat[c] as f32;
    }
    input_grad(g, dy, xhat, inv_std, gamma, sum_dy, sum_dy_xhat, batch_stats, dx);
}
