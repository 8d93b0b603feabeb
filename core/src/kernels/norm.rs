//! Batch normalisation over NCHW (Ioffe & Szegedy 2015): per-channel statistics in f64,
//! parallel over channels so every reduction has a fixed order.

use rayon::prelude::*;

/// Sizes of a batch-norm call: `batch` images of `channels` planes of `plane` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormGeometry {
    pub batch: usize,
    pub channels: usize,
    pub plane: usize,
}

impl NormGeometry {
    /// Values that each channel's statistics are taken over.
    pub fn count(&self) -> usize {
        self.batch * self.plane
    }
}

/// The planes of channel `c`, one per image.
fn planes_of<'a>(g: &NormGeometry, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    let (channels, plane) = (g.channels, g.plane);
    (0..g.batch).map(move |n| &x[(n * channels + c) * plane..(n * channels + c + 1) * plane])
}

/// Per-channel mean and biased variance of `x`, accumulated in f64.
pub fn channel_moments(g: &NormGeometry, x: &[f32], mean: &mut [f64], var: &mut [f64]) {
    let count = g.count().max(1) as f64;
    mean.par_iter_mut()
        .zip(var.par_iter_mut())
        .enumerate()
        .for_each(|(c, (m, v))| {
            let sum: f64 = planes_of(g, x, c)
                .map(|p| p.iter().map(|&a| a as f64).sum::<f64>())
                .sum();
            let mu = sum / count;
            let sq: f64 = planes_of(g, x, c)
                .map(|p| p.iter().map(|&a| (a as f64 - mu).powi(2)).sum::<f64>())
                .sum();
            *m = mu;
            *v = sq / count;
        });
}

/// `xhat = (x - mean) * inv_std`, `y = gamma * xhat + beta` per channel.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    g: &NormGeometry,
    x: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    xhat: &mut [f32],
    y: &mut [f32],
) {
    let plane = g.plane.max(1);
    y.par_chunks_mut(plane)
        .zip(xhat.par_chunks_mut(plane))
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(i, ((y, xh), x))| {
            let c = i % g.channels;
            let (m, s, ga, be) = (mean[c], inv_std[c], gamma[c], beta[c]);
            for ((y, xh), &x) in y.iter_mut().zip(xh.iter_mut()).zip(x) {
                *xh = (x - m) * s;
                *y = ga * *xh + be;
            }
        });
}

/// Per-channel `sum(dy)` and `sum(dy * xhat)` in f64: the gradients of beta and gamma.
pub fn grad_sums(g: &NormGeometry, dy: &[f32], xhat: &[f32], sum_dy: &mut [f64], sum_dy_xhat: &mut [f64]) {
    sum_dy
        .par_iter_mut()
        .zip(sum_dy_xhat.par_iter_mut())
        .enumerate()
        .for_each(|(c, (s, sx))| {
            let mut a = 0f64;
            let mut b = 0f64;
            for (d, xh) in planes_of(g, dy, c).zip(planes_of(g, xhat, c)) {
                for (&d, &xh) in d.iter().zip(xh) {
                    a += d as f64;
                    b += d as f64 * xh as f64;
                }
            }
            *s = a;
            *sx = b;
        });
}

/// Input gradient of training-mode batch norm:
/// `dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))`.
/// With `batch_stats == false` (eval mode, fixed statistics) it is `gamma * inv_std * dy`.
#[allow(clippy::too_many_arguments)]
pub fn input_grad(
    g: &NormGeometry,
    dy: &[f32],
    xhat: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    sum_dy: &[f64],
    sum_dy_xhat: &[f64],
    batch_stats: bool,
    dx: &mut [f32],
) {
    let plane = g.plane.max(1);
    let count = g.count().max(1) as f64;
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks(plane))
        .zip(xhat.par_chunks(plane))
        .enumerate()
        .for_each(|(i, ((dx, dy), xh))| {
            let c = i % g.channels;
            let k = gamma[c] * inv_std[c];
            if batch_stats {
                let mdy = (sum_dy[c] / count) as f32;
                let mdyx = (sum_dy_xhat[c] / count) as f32;
                for ((dx, &dy), &xh) in dx.iter_mut().zip(dy).zip(xh) {
                    *dx = k * (dy - mdy - xh * mdyx);
                }
            } else {
                for (dx, &dy) in dx.iter_mut().zip(dy) {
                    *dx = k * dy;
                }
            }
        });
}
