//! The parameter-free option-A shortcut of He et al. section 3.3: identity on the kept
//! pixels, spatial subsampling by the stride, and zero channels padded evenly on both
//! sides (as the CIFAR re-implementations pad `planes // 4` on each side).

use super::Dims;
use rayon::prelude::*;

/// Channels of zeros placed before the input channels when widening `c_in` to `c_out`.
pub fn option_a_front_pad(c_in: usize, c_out: usize) -> usize {
    (c_out - c_in) / 2
}

/// `y[n, pad + c, h, w] = x[n, c, h * s, w * s]`, zero elsewhere; `out` are `y`'s dimensions.
pub fn option_a_forward(x: &[f32], input: Dims, out: Dims, stride: usize, y: &mut [f32]) {
    let pad = option_a_front_pad(input.c, out.c);
    let out_image = out.c * out.plane();
    if out_image == 0 {
        return;
    }
    // One task per image (images are independent).
    y.par_chunks_mut(out_image).enumerate().for_each(|(n, y_img)| {
        for co in 0..out.c {
            let dst = &mut y_img[co * out.plane()..(co + 1) * out.plane()];
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
    });
}

/// `dx[n, c, h * s, w * s] += dy[n, pad + c, h, w]`: the adjoint of [`option_a_forward`].
pub fn option_a_backward_add(dy: &[f32], input: Dims, out: Dims, stride: usize, dx: &mut [f32]) {
    let pad = option_a_front_pad(input.c, out.c);
    let in_image = input.c * input.plane();
    if in_image == 0 {
        return;
    }
    dx.par_chunks_mut(in_image).enumerate().for_each(|(n, dx_img)| {
        for ci in 0..input.c {
            let co = ci + pad;
            let src = &dy[(n * out.c + co) * out.plane()..(n * out.c + co + 1) * out.plane()];
            let dst = &mut dx_img[ci * input.plane()..(ci + 1) * input.plane()];
            for oh in 0..out.h {
                for ow in 0..out.w {
                    dst[oh * stride * input.w + ow * stride] += src[oh * out.w + ow];
                }
            }
        }
    });
}
