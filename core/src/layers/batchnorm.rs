//! Batch normalisation over the channels of an NCHW activation, with PyTorch's semantics:
//! batch statistics in training (biased variance for normalising, unbiased for the
//! running average, momentum 0.1), running statistics in evaluation, eps 1e-5; the ReLU
//! after most batch norms fused into the same pass. [`forward_train`], [`forward_eval`]
//! and [`backward`]; the sums run in `kernels::norm`.

use crate::kernels::norm::{channel_moments, grad_sums, input_grad, normalize, NormGeometry};

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
    for c in 0..channels {
        saved.mean[c] = mean[c] as f32;
        saved.inv_std[c] = (1.0 / (var[c] + EPS as f64).sqrt()) as f32;
        update_running(mean[c], var[c], count, &mut running_mean[c], &mut running_var[c]);
    }
    normalize(g, x, saved.mean, saved.inv_std, gamma, beta, relu, xhat, y);
}

/// Moves one channel's running statistics towards a batch's `mean` and biased `var`
/// over `count` values, as PyTorch does: momentum 0.1, the variance made unbiased.
pub fn update_running(mean: f64, var: f64, count: f64, running_mean: &mut f32, running_var: &mut f32) {
    let m = MOMENTUM as f64;
    let unbiased = if count > 1.0 { var * count / (count - 1.0) } else { var };
    *running_mean = ((1.0 - m) * *running_mean as f64 + m * mean) as f32;
    *running_var = ((1.0 - m) * *running_var as f64 + m * unbiased) as f32;
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
