//! The parameter-free option-A shortcut of He et al. section 3.3: identity on the kept
//! pixels, spatial subsampling by the stride, and zero channels padded evenly on both
//! sides (as the CIFAR re-implementations pad `planes // 4` on each side).

use super::Dims;

/// Channels of zeros placed before the input channels when widening `c_in` to `c_out`.
pub fn option_a_front_pad(c_in: usize, c_out: usize) -> usize {
    (c_out - c_in) / 2
}

/// `y[n, pad + c, h, w] = x[n, c, h * s, w * s]`, zero elsewhere; `out` are `y`'s dimensions.
pub fn option_a_forward(x: &[f32], input: Dims, out: Dims, stride: usize, y: &mut [f32]) {
    let pad = option_a_front_pad(input.c, out.c);
    for n in 0..out.n {
        for co in 0..out.c {
            let dst = &mut y[((n * out.c + co) * out.h) * out.w..((n * out.c + co + 1) * out.h) * out.w];
            if co < pad || co >= pad + input.c {
                dst.fill(0.0);
                continue;
            }
            let src = &x[(n * input.c + co - pad) * input.plane()..(n * input.c + co - pad + 1) * input.plane()];
            for oh in 0..out.h {
                for ow in 0..out.w {
                    dst[oh * out.w + ow] = src[oh * stride * input.w + ow * stride];
                }
            }
        }
    }
}

/// `dx[n, c, h * s, w * s] += dy[n, pad + c, h, w]`: the adjoint of [`option_a_forward`].
pub fn option_a_backward_add(dy: &[f32], input: Dims, out: Dims, stride: usize, dx: &mut [f32]) {
    let pad = option_a_front_pad(input.c, out.c);
    for n in 0..out.n {
        for ci in 0..input.c {
            let co = ci + pad;
            let src = &dy[(n * out.c + co) * out.plane()..(n * out.c + co + 1) * out.plane()];
            let dst = &mut dx[(n * input.c + ci) * input.plane()..(n * input.c + ci + 1) * input.plane()];
            for oh in 0..out.h {
                for ow in 0..out.w {
                    dst[oh * stride * input.w + ow * stride] += src[oh * out.w + ow];
                }
            }
        }
    }
}
