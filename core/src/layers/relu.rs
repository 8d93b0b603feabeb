//! ReLU, `max(0, x)`, alone or fused with the residual add before it. Its backward
//! needs only the forward output's sign. The passes are split among threads in fixed
//! chunks (elementwise, so the result never depends on the split).

use rayon::prelude::*;

/// Values per task of the elementwise passes: large enough to amortise a task, small
/// enough that an 8 MB activation still splits among every thread.
const CHUNK: usize = 1 << 15;

#[inline(always)]
fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// `f(&mut out[i], a[i])` for every `i`, split among threads in `CHUNK`s.
fn each_with(out: &mut [f32], a: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).for_each(|(out, a)| {
        out.iter_mut().zip(a).for_each(|(o, &a)| f(o, a));
    });
}

/// `out[i] = f(a[i], b[i])` for every `i`, split among threads in `CHUNK`s.
fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .zip(b.par_chunks(CHUNK))
        .for_each(|((out, a), b)| {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
}

/// `y = max(0, x)`; NaN stays NaN (as in PyTorch), so divergence is never hidden.
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    each_with(y, x, |y, x| *y = relu(x));
}

/// `y = max(0, x + r)`: a block's residual add and its last ReLU in one pass.
pub fn add_relu(x: &[f32], r: &[f32], y: &mut [f32]) {
    map2(y, x, r, |x, r| relu(x + r));
}

/// `dy *= (y > 0)`, with `y` the forward output: the gradient through ReLU, in place.
pub fn relu_backward_inplace(y: &[f32], dy: &mut [f32]) {
    each_with(dy, y, |d, y| {
        if y <= 0.0 {
            *d = 0.0;
        }
    });
}

/// `dx = dy * (y > 0)`: [`relu_backward_inplace`] into a separate buffer.
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    map2(dx, dy, y, |g, y| if y <= 0.0 { 0.0 } else { g });
}

/// `dst += src`, elementwise (the gradient of a residual add reaching the block input).
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    each_with(dst, src, |d, s| *d += s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_and_chunked_passes_match_the_definitions() {
        let n = 2 * CHUNK + 77;
        let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let mut r: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 - 3.0).collect();
        r[5] = f32::NAN;
        let mut y = vec![0.0; n];
        add_relu(&x, &r, &mut y);
        for i in 0..n {
            let s = x[i] + r[i];
            let want = if s < 0.0 { 0.0 } else { s };
            assert!(y[i] == want || (y[i].is_nan() && want.is_nan()), "{i}");
        }
        let mut dx = vec![0.0; n];
        relu_backward(&y, &r, &mut dx);
        let mut inplace = r.clone();
        relu_backward_inplace(&y, &mut inplace);
        for i in 0..n {
            let want = if y[i] <= 0.0 { 0.0 } else { r[i] };
            assert!(dx[i] == want || (dx[i].is_nan() && want.is_nan()), "{i}");
            assert!(inplace[i] == want || (inplace[i].is_nan() && want.is_nan()), "{i}");
        }
        let mut acc = x.clone();
        add_assign(&mut acc, &x);
        assert!(acc.iter().zip(&x).all(|(a, &b)| *a == 2.0 * b));
        let mut w = vec![0.0; n];
        relu_forward(&x, &mut w);
        assert!(w.iter().zip(&x).all(|(a, &b)| *a == b.max(0.0)));
    }
}
