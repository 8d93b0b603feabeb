//! The fully connected classifier, `y = x W^T + b` with PyTorch's `[out, in]` weight:
//! [`forward`] and [`backward`].

use crate::kernels::gemm::{gemm, MatMut, MatRef};

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
