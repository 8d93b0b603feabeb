//! `Linear`: the fully connected classifier, `y = x W^T + b` with PyTorch's `[out, in]` weight.

use super::{fit, join, Param, Slot, Visitor};
use crate::kernels::gemm::{gemm, MatMut, MatRef};
use crate::rng::Rng;

/// A fully connected layer.
#[derive(Clone, Debug)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Param,
    pub bias: Param,
    /// The output of the last forward pass, `N x out_features`.
    pub out: Vec<f32>,
    batch: usize,
}

impl Linear {
    /// PyTorch's default initialisation: weight and bias uniform in +-1/sqrt(in_features).
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Self {
        let bound = 1.0 / (in_features as f64).sqrt();
        let mut u = |n: usize| -> Vec<f32> { (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect() };
        let w = u(out_features * in_features);
        let b = u(out_features);
        Linear {
            in_features,
            out_features,
            weight: Param::new(vec![out_features, in_features], w),
            bias: Param::new(vec![out_features], b),
            out: Vec::new(),
            batch: 0,
        }
    }

    /// `self.out = x W^T + b` for `batch` rows of `x`.
    pub fn forward(&mut self, x: &[f32], batch: usize) {
        assert_eq!(x.len(), batch * self.in_features, "Linear: input length");
        fit(&mut self.out, batch * self.out_features);
        for row in self.out.chunks_mut(self.out_features) {
            row.copy_from_slice(&self.bias.value);
        }
        let w = MatRef::row_major(&self.weight.value, self.out_features, self.in_features);
        gemm(
            1.0,
            MatRef::row_major(x, batch, self.in_features),
            w.t(),
            1.0,
            MatMut::row_major(&mut self.out, batch, self.out_features),
        );
        self.batch = batch;
    }

    /// Accumulates `dW += dy^T x`, `db += sum dy`, and writes `dx = dy W`.
    pub fn backward(&mut self, x: &[f32], dy: &[f32], dx: &mut Vec<f32>) {
        let n = self.batch;
        let dy_m = MatRef::row_major(dy, n, self.out_features);
        gemm(
            1.0,
            dy_m.t(),
            MatRef::row_major(x, n, self.in_features),
            1.0,
            MatMut::row_major(&mut self.weight.grad, self.out_features, self.in_features),
        );
        for row in dy.chunks(self.out_features) {
            self.bias.grad.iter_mut().zip(row).for_each(|(g, &d)| *g += d);
        }
        fit(dx, n * self.in_features);
        gemm(
            1.0,
            dy_m,
            MatRef::row_major(&self.weight.value, self.out_features, self.in_features),
            0.0,
            MatMut::row_major(dx, n, self.in_features),
        );
    }

    /// Visits `weight` and `bias`.
    pub fn visit(&mut self, prefix: &str, f: &mut Visitor) {
        f(&join(prefix, "weight"), Slot::Param(&mut self.weight));
        f(&join(prefix, "bias"), Slot::Param(&mut self.bias));
    }
}

/// `y = x W^T + b` for `n` rows of `x` (`W` is `[out, in]`, PyTorch's layout).
pub fn forward(x: &[f32], w: &[f32], b: &[f32], n: usize, inputs: usize, outputs: usize, y: &mut [f32]) {
    for row in y[..n * outputs].chunks_mut(outputs) {
        row.copy_from_slice(b);
    }
    gemm(
        1.0,
        MatRef::row_major(&x[..n * inputs], n, inputs),
        MatRef::row_major(w, outputs, inputs).t(),
        1.0,
        MatMut::row_major(&mut y[..n * outputs], n, outputs),
    );
}

/// Accumulates `dW += dy^T x` and `db += sum dy`, and writes `dx = dy W`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    inputs: usize,
    outputs: usize,
    dw: &mut [f32],
    db: &mut [f32],
    dx: &mut [f32],
) {
    let dy_m = MatRef::row_major(&dy[..n * outputs], n, outputs);
    gemm(
        1.0,
        dy_m.t(),
        MatRef::row_major(&x[..n * inputs], n, inputs),
        1.0,
        MatMut::row_major(dw, outputs, inputs),
    );
    for row in dy[..n * outputs].chunks(outputs) {
        db.iter_mut().zip(row).for_each(|(g, &d)| *g += d);
    }
    gemm(
        1.0,
        dy_m,
        MatRef::row_major(w, outputs, inputs),
        0.0,
        MatMut::row_major(&mut dx[..n * inputs], n, inputs),
    );
}
