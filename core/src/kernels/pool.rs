//! Pooling: max pooling with remembered argmax, and global average pooling.

use rayon::prelude::*;

/// Sizes of a square max pooling over NCHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolGeometry {
    /// Output size as PyTorch computes it (floor mode); `None` when the window does not fit.
    pub fn new(
        batch: usize,
        channels: usize,
        in_h: usize,
        in_w: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Self> {
        let out = |s: usize| (s + 2 * pad).checked_sub(kernel).map(|r| r / stride + 1);
        Some(PoolGeometry {
            batch,
            channels,
            in_h,
            in_w,
            kernel,
            stride,
            pad,
            out_h: out(in_h)?,
            out_w: out(in_w)?,
        })
    }
}

/// Max pooling; `argmax` receives, per output, the index of the winning input within
/// its plane (padding never wins: PyTorch pads max pooling with -inf).
pub fn max_pool_forward(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    y.par_chunks_mut(op)
        .zip(argmax.par_chunks_mut(op))
        .zip(x.par_chunks(ip))
        .for_each(|((y, am), x)| {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let mut best = f32::NEG_INFINITY;
                    let mut best_i = 0u32;
                    for i in 0..g.kernel {
                        let ih = (oh * g.stride + i) as isize - g.pad as isize;
                        if ih < 0 || ih >= g.in_h as isize {
                            continue;
                        }
                        for j in 0..g.kernel {
                            let iw = (ow * g.stride + j) as isize - g.pad as isize;
                            if iw < 0 || iw >= g.in_w as isize {
                                continue;
                            }
                            let idx = ih as usize * g.in_w + iw as usize;
                            // `>` keeps the first maximum, as PyTorch does; NaN propagates.
                            if x[idx] > best || x[idx].is_nan() {
                                best = x[idx];
                                best_i = idx as u32;
                            }
                        }
                    }
                    y[oh * g.out_w + ow] = best;
                    am[oh * g.out_w + ow] = best_i;
                }
            }
        });
}

/// Gradient of max pooling: each output's gradient goes to its argmax (overwrites `dx`).
pub fn max_pool_backward(g: &PoolGeometry, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
    dx.par_chunks_mut(ip)
        .zip(dy.par_chunks(op))
        .zip(argmax.par_chunks(op))
        .for_each(|((dx, dy), am)| {
            dx.fill(0.0);
            for (&d, &i) in dy.iter().zip(am) {
                dx[i as usize] += d;
            }
        });
}

/// Global average pooling: `y[n, c] = mean(x[n, c, :, :])`.
pub fn avg_pool_forward(plane: usize, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x.chunks(plane.max(1))) {
        *y = (x.iter().map(|&v| v as f64).sum::<f64>() / plane.max(1) as f64) as f32;
    }
}

/// Gradient of global average pooling (overwrites `dx`).
pub fn avg_pool_backward(plane: usize, dy: &[f32], dx: &mut [f32]) {
    let inv = 1.0 / plane.max(1) as f32;
    for (dx, &d) in dx.chunks_mut(plane.max(1)).zip(dy) {
        dx.fill(d * inv);
    }
}
