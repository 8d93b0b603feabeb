//! Helpers shared by the kernels' tests.

use crate::kernels::im2col::ConvGeometry;
use crate::layout::Blocked;
use crate::rng::Rng;

/// `n` standard normal values.
pub(crate) fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// Standard normal values in the blocked layout `shape`, its padding channels zero (as
/// the plans keep them).
pub(crate) fn random_blocked(rng: &mut Rng, shape: Blocked) -> Vec<f32> {
    let mut v = random(rng, shape.len());
    let (pixels, lanes) = (shape.h * shape.w, shape.block);
    for (i, x) in v.iter_mut().enumerate() {
        if i / (pixels * lanes) % shape.blocks() * lanes + i % lanes >= shape.c {
            *x = 0.0;
        }
    }
    v
}

/// `v` with every value rounded to bf16: what bf16 products see.
pub(crate) fn bf16_rounded(v: &[f32]) -> Vec<f32> {
    use crate::kernels::blocked::bf16::{from_bf16, to_bf16};
    v.iter().map(|&x| from_bf16(to_bf16(x))).collect()
}

/// `max |a - b| / max |b|`, the error measure of the accuracy tests; NaN (an output
/// never written) counts as an infinite error, not as no error.
pub(crate) fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = crate::tensor::max_abs(b.iter().copied()).max(1e-6);
    let err = |(x, y): (&f32, &f32)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            d
        }
    };
    a.iter().zip(b).map(err).fold(0f32, f32::max) / scale
}

/// Every distinct convolution of the zoo model `name` on `batch` images of `size x size`,
/// with the layer names that have it: the shapes every kernel is tested on.
pub(crate) fn zoo_convs(name: &str, batch: usize, size: usize) -> Vec<(ConvGeometry, Vec<String>)> {
    let config = crate::model::ResNetConfig::named(name).expect("a zoo model");
    let net = crate::model::Arch::of(&config).expect("it builds");
    net.distinct_conv_geometries(batch, size, size).expect("its geometries")
}

/// One output value of the convolution `g` of NCHW `x` with OIHW `w`, from the
/// definition, in f64: the reference the blocked kernels are checked against (image `n`,
/// output channel `k`, output pixel `(oy, ox)`).
pub(crate) fn conv_value_f64(g: &ConvGeometry, x: &[f32], w: &[f32], n: usize, k: usize, oy: usize, ox: usize) -> f64 {
    let mut acc = 0.0f64;
    crate::kernels::conv::for_each_tap(g, oy, ox, |c, ky, kx, iy, ix| {
        let xv = x[((n * g.in_channels + c) * g.in_h + iy) * g.in_w + ix];
        let wv = w[((k * g.in_channels + c) * g.kernel_h + ky) * g.kernel_w + kx];
        acc += xv as f64 * wv as f64;
    });
    acc
}

/// The whole convolution `g` of NCHW `x` with OIHW `w` in f64, NCHW out.
pub(crate) fn conv_f64(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f64> {
    let mut y = Vec::with_capacity(g.batch * g.out_channels * g.out_plane());
    for n in 0..g.batch {
        for k in 0..g.out_channels {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    y.push(conv_value_f64(g, x, w, n, k, oy, ox));
                }
            }
        }
    }
    y
}

/// A test convolution with a square `ks x ks` kernel (panics on an impossible one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn square_conv(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    ks: usize,
    stride: usize,
    pad: usize,
) -> ConvGeometry {
    ConvGeometry::new(n, c, h, w, k, (ks, ks), stride, pad).expect("a valid geometry")
}

/// Strided unpadded 1x1 convolutions for the tests of the subsampled paths
/// (`kernels::blocked::resample`): channels off the block, odd sizes, strides 2 and 3, a
/// 1-pixel image, several output blocks.
pub(crate) fn strided_1x1_shapes() -> Vec<ConvGeometry> {
    vec![
        square_conv(2, 19, 9, 7, 5, 1, 2, 0),
        square_conv(3, 16, 4, 30, 64, 1, 2, 0),
        square_conv(2, 20, 8, 11, 9, 1, 3, 0),
        square_conv(1, 40, 1, 1, 20, 1, 2, 0),
        square_conv(1, 53, 5, 5, 53, 1, 2, 0),
        square_conv(3, 33, 13, 13, 70, 1, 2, 0),
    ]
}
