//! Max pooling (the ImageNet stem's 3x3 stride-2 pad-1) and global average pooling.

use super::{fit, Dims};
use crate::kernels::pool::{avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward, PoolGeometry};
use crate::{Error, Result};

/// Square max pooling that remembers where each maximum came from.
#[derive(Clone, Debug)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// The output of the last forward pass.
    pub out: Vec<f32>,
    argmax: Vec<u32>,
    geometry: Option<PoolGeometry>,
}

impl MaxPool2d {
    /// A max pooling layer.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d {
            kernel,
            stride,
            padding,
            out: Vec::new(),
            argmax: Vec::new(),
            geometry: None,
        }
    }

    fn geometry(&self, input: Dims) -> Result<PoolGeometry> {
        PoolGeometry::new(
            input.n,
            input.c,
            input.h,
            input.w,
            self.kernel,
            self.stride,
            self.padding,
        )
        .ok_or_else(|| {
            Error::Shape(format!(
                "max pooling {k}x{k} cannot pool a {}x{} input",
                input.h,
                input.w,
                k = self.kernel
            ))
        })
    }

    /// Output dimensions for `input`.
    pub fn out_dims(&self, input: Dims) -> Result<Dims> {
        let g = self.geometry(input)?;
        Ok(Dims::new(input.n, input.c, g.out_h, g.out_w))
    }

    /// Pools `x` into `self.out`.
    pub fn forward(&mut self, x: &[f32], input: Dims) -> Result<Dims> {
        let g = self.geometry(input)?;
        let out = Dims::new(input.n, input.c, g.out_h, g.out_w);
        fit(&mut self.out, out.len());
        self.argmax.resize(out.len(), 0);
        max_pool_forward(&g, x, &mut self.out, &mut self.argmax);
        self.geometry = Some(g);
        Ok(out)
    }

    /// Routes `dy` back to the winning inputs, into `dx`.
    pub fn backward(&self, dy: &[f32], dx: &mut Vec<f32>) {
        let g = self.geometry.expect("MaxPool2d::backward called before forward");
        fit(dx, g.batch * g.channels * g.in_h * g.in_w);
        max_pool_backward(&g, dy, &self.argmax, dx);
    }
}

/// Global average pooling, NCHW to NC.
#[derive(Clone, Debug, Default)]
pub struct GlobalAvgPool {
    /// The output of the last forward pass, `N x C`.
    pub out: Vec<f32>,
    input: Dims,
}

impl GlobalAvgPool {
    /// Averages each plane of `x`.
    pub fn forward(&mut self, x: &[f32], input: Dims) {
        fit(&mut self.out, input.n * input.c);
        avg_pool_forward(input.plane(), x, &mut self.out);
        self.input = input;
    }

    /// Spreads `dy` evenly over each plane, into `dx`.
    pub fn backward(&self, dy: &[f32], dx: &mut Vec<f32>) {
        fit(dx, self.input.len());
        avg_pool_backward(self.input.plane(), dy, dx);
    }
}

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
