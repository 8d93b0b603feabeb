//! Layers: the forward and backward pass of each layer side by side in one file per layer
//! (Darknet / llm.c style), as plain functions on slices. Weights, gradients, activations
//! and saved statistics are passed in (a training plan owns the activations, `Params`
//! the weights); forward passes write their output, backward passes take the forward
//! input (or output) again, overwrite the input gradient and *accumulate* parameter
//! gradients.

pub mod batchnorm;
pub mod conv;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod relu;
pub mod shortcut;

/// The dimensions of an NCHW activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    /// Shorthand constructor.
    pub fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Dims { n, c, h, w }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixels per plane.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
}
