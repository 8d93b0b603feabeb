//! Max pooling (the ImageNet stem's 3x3 stride-2 pad-1) and global average pooling,
//! forward and backward.

use super::Dims;
use crate::kernels::pool::{avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward, PoolGeometry};
use crate::{Error, Result};

/// The geometry of the ImageNet stem's 3x3 stride-2 pad-1 max pooling on `input`.
pub fn stem_max_pool(input: Dims) -> Result<PoolGeometry> {
    PoolGeometry::new(input.n, input.c, input.h, input.w, 3, 2, 1)
        .ok_or_else(|| Error::Shape(format!("max pooling 3x3 cannot pool a {}x{} input", input.h, input.w)))
}

/// Max pooling of `x` into `y`, remembering in `argmax` where each maximum came from.
pub fn max_forward(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    max_pool_forward(g, x, y, argmax);
}

/// `dx`: `dy` routed back to the inputs that won (overwritten).
pub fn max_backward(g: &PoolGeometry, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    max_pool_backward(g, dy, argmax, dx);
}

/// Global average pooling: `y[n, c]` is the mean of plane `x[n, c]`.
pub fn avg_forward(plane: usize, x: &[f32], y: &mut [f32]) {
    avg_pool_forward(plane, x, y);
}

/// `dx[n, c, :] = dy[n, c] / plane` (overwritten).
pub fn avg_backward(plane: usize, dy: &[f32], dx: &mut [f32]) {
    avg_pool_backward(plane, dy, dx);
}
