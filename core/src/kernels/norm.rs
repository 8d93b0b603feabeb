//! Batch normalisation over NCHW (Ioffe & Szegedy 2015): per-channel statistics in f64,
//! parallel over channels so every reduction has a fixed order.
//!
//! The sums run in vectors of f32 partial sums over short blocks, each block's lanes then
//! added into an f64 total: an f64 add per value is a serial chain the compiler must not
//! reorder or vectorise, while f32 partials of `BLOCK_STEPS` (16) values per lane lose
//! well under 1e-6 relative.

use crate::simd::{self, F32x, LANES};
use rayon::prelude::*;

/// Independent vector accumulators of [`reduce`] (FP add latency x ports).
const CHAINS: usize = 4;

/// Vector steps of [`reduce`] summed in f32 before the partials are added into f64.
const BLOCK_STEPS: usize = 16;

/// `sum_i term(i)` over `0..len` in a fixed order: `vec_term(i)` gives the terms of
/// `i..i + LANES` as a vector, `scalar_term(i)` one term (for the tail).
#[inline(always)]
fn reduce(len: usize, vec_term: impl Fn(usize) -> F32x, scalar_term: impl Fn(usize) -> f32) -> f64 {
    let step = CHAINS * LANES;
    let whole = len - len % step;
    let mut total = 0f64;
    let mut i = 0;
    while i < whole {
        let end = (i + BLOCK_STEPS * step).min(whole);
        let mut acc = [F32x::ZERO; CHAINS];
        while i < end {
            for (c, a) in acc.iter_mut().enumerate() {
                *a += vec_term(i + c * LANES);
            }
            i += step;
        }
        total += acc.iter().flat_map(|a| a.to_array()).map(|v| v as f64).sum::<f64>();
    }
    total + (whole..len).map(|i| scalar_term(i) as f64).sum::<f64>()
}

/// `sum(x)` in f64, vectorised by [`reduce`].
fn sum(x: &[f32]) -> f64 {
    reduce(x.len(), |i| simd::load(&x[i..]), |i| x[i])
}

/// `sum((x - mu)^2)` in f64, vectorised by [`reduce`].
fn sum_sq_dev(x: &[f32], mu: f32) -> f64 {
    let m = F32x::splat(mu);
    reduce(
        x.len(),
        |i| {
            let d = simd::load(&x[i..]) - m;
            d * d
        },
        |i| (x[i] - mu) * (x[i] - mu),
    )
}

/// `sum(a * b)` in f64, vectorised by [`reduce`].
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let b = &b[..a.len()];
    reduce(a.len(), |i| simd::load(&a[i..]) * simd::load(&b[i..]), |i| a[i] * b[i])
}

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
            let total: f64 = planes_of(g, x, c).map(sum).sum();
            let mu = total / count;
            let sq: f64 = planes_of(g, x, c).map(|p| sum_sq_dev(p, mu as f32)).sum();
            *m = mu;
            *v = sq / count;
        });
}

/// `xhat = (x - mean) * inv_std`, `y = gamma * xhat + beta` per channel, then
/// `y = max(0, y)` with `relu` (the ReLU after most batch norms, in the same pass).
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    g: &NormGeometry,
    x: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
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
                let v = ga * *xh + be;
                // NaN stays NaN, as in PyTorch.
                *y = if relu && v < 0.0 { 0.0 } else { v };
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
            let (mut a, mut b) = (0f64, 0f64);
            for (d, xh) in planes_of(g, dy, c).zip(planes_of(g, xhat, c)) {
                a += sum(d);
                b += dot(d, xh);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Planes of 1, 7, LANES * CHAINS - 1 and several blocks' worth of values, with a
    /// large common offset that a careless f32 variance would lose.
    #[test]
    fn vectorised_sums_match_plain_f64_sums() {
        let mut rng = Rng::new(9);
        for &(batch, channels, plane) in &[(3, 2, 1), (2, 3, 7), (2, 2, 4 * LANES - 1), (3, 2, 2000)] {
            let g = NormGeometry { batch, channels, plane };
            let n = batch * channels * plane;
            let x: Vec<f32> = (0..n).map(|_| 100.0 + rng.normal() as f32).collect();
            let dy: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let (mut mean, mut var) = (vec![0.0; channels], vec![0.0; channels]);
            channel_moments(&g, &x, &mut mean, &mut var);
            let (mut sdy, mut sdyx) = (vec![0.0; channels], vec![0.0; channels]);
            grad_sums(&g, &dy, &x, &mut sdy, &mut sdyx);
            for c in 0..channels {
                let idx: Vec<usize> = (0..batch)
                    .flat_map(|b| ((b * channels + c) * plane..(b * channels + c + 1) * plane).collect::<Vec<_>>())
                    .collect();
                let count = idx.len() as f64;
                let mu = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / count;
                let v = idx.iter().map(|&i| (x[i] as f64 - mu).powi(2)).sum::<f64>() / count;
                let s: f64 = idx.iter().map(|&i| dy[i] as f64).sum();
                let sx: f64 = idx.iter().map(|&i| dy[i] as f64 * x[i] as f64).sum();
                let close = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-6 * scale.max(1.0);
                assert!(close(mean[c], mu, mu.abs()), "mean {} vs {mu}", mean[c]);
                assert!(close(var[c], v, v), "var {} vs {v}", var[c]);
                let mag: f64 = idx.iter().map(|&i| (dy[i] as f64).abs()).sum();
                assert!(close(sdy[c], s, mag), "sum dy {} vs {s}", sdy[c]);
                assert!(close(sdyx[c], sx, 100.0 * mag), "sum dy x {} vs {sx}", sdyx[c]);
            }
        }
    }
}
