//! ReLU, `max(0, x)`. Its backward needs only the forward output's sign.

/// `y = max(0, x)`; NaN stays NaN (as in PyTorch), so divergence is never hidden.
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x < 0.0 { 0.0 } else { x };
    }
}

/// In place: `x = max(0, x)`.
pub fn relu_inplace(x: &mut [f32]) {
    for v in x {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// `dy *= (y > 0)`, with `y` the forward output: the gradient through ReLU, in place.
pub fn relu_backward_inplace(y: &[f32], dy: &mut [f32]) {
    for (d, &y) in dy.iter_mut().zip(y) {
        if y <= 0.0 {
            *d = 0.0;
        }
    }
}
