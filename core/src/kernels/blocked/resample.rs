//! Copies of a convolution's input that let the blocked kernels run their fast paths.
//!
//! Strided 1x1 convolutions (ResNet's projection shortcuts) as pointwise ones: the forward
//! pass and the backward-filter read only the input pixels `(y * s, x * s)`, so they run
//! the stride-1 kernels on a [`subsample`]d copy of the input; the backward-data computes
//! those pixels' gradient with the stride-1 kernel and [`spread`]s it, zeros between.
//! On the strided tensors the tiles read every other pixel of every other row and most
//! cross a row end (28, 14 or 7 pixels a row against 6 a tile), so they take the kernels'
//! border paths, and each output-channel group of the forward pass reads the full-size
//! input again; on the copies the tiles are contiguous and the groups read a quarter of
//! it. Each result is summed in the same order either way: the outputs are bit for bit
//! those of the strided kernels.
//!
//! The stems (3 input channels, plain NCHW) on a zero-[`pad`]ded copy of the image: with
//! one input channel per tap, a border tile's per-pixel pointer arithmetic costs more than
//! its multiply-adds (ResNet-20's stem: a border tile took 7 times a fast one's time, and
//! half its tiles touch the padding). The copy is small (3 channels) and every tile then
//! takes the fast path.

use crate::kernels::blocked::direct::ZEROS;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::with_staging;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;

/// The stride-1 geometry on the subsampled input that the kernels run the strided 1x1
/// convolution `g` (a forward geometry) as, if they do: where `g` is one of blocked
/// input and `force` says so (`None`: as [`subsamples`] says).
pub(crate) fn strided_as_pointwise(
    g: &ConvGeometry,
    in_block: usize,
    out_block: usize,
    force: Option<bool>,
) -> Option<ConvGeometry> {
    pointwise_of_strided(g, in_block, out_block).filter(|_| force.unwrap_or_else(|| subsamples(g)))
}

/// `run` on `input` (shape `in_l`, the input of `g`) subsampled at `g.stride` into this
/// thread's staging buffer (see [`with_staging`]): the input of [`strided_as_pointwise`].
pub(crate) fn on_subsampled<V: Vector, R>(
    g: &ConvGeometry,
    in_l: Blocked,
    input: &[f32],
    run: impl FnOnce(&[f32]) -> R,
) -> R {
    let sub_l = in_l.with_hw(g.out_h, g.out_w);
    with_staging(sub_l.len(), |sub| {
        subsample::<V>(in_l, g.stride, input, sub_l, sub);
        run(sub)
    })
}

/// `fill` computes the gradient at the sampled pixels of `dx` (shape `dx_l`, the input
/// of `g`) into this thread's staging buffer, which is then [`spread`] into `dx`, zeros
/// between: the backward-data of [`strided_as_pointwise`].
pub(crate) fn spread_into<V: Vector>(g: &ConvGeometry, dx_l: Blocked, dx: &mut [f32], fill: impl FnOnce(&mut [f32])) {
    let sub_l = dx_l.with_hw(g.out_h, g.out_w);
    with_staging(sub_l.len(), |sub| {
        fill(sub);
        spread::<V>(sub_l, sub, g.stride, dx_l, dx);
    })
}

/// The stride-1 geometry of `g` on the subsampled input when `g` is a strided, unpadded
/// 1x1 convolution of blocked input (`in_block == out_block`).
fn pointwise_of_strided(g: &ConvGeometry, in_block: usize, out_block: usize) -> Option<ConvGeometry> {
    let strided_1x1 = g.kernel_h == 1 && g.kernel_w == 1 && g.stride > 1 && g.pad == 0;
    (strided_1x1 && in_block == out_block).then_some(ConvGeometry {
        in_h: g.out_h,
        in_w: g.out_w,
        stride: 1,
        ..*g
    })
}

/// Whether the kernels run the strided 1x1 convolution `g` (a forward geometry) as a
/// pointwise one: where each copied value meets at least 256 multiply-adds, and the call
/// is large enough to hide one more parallel pass. Measured alternating call by call on
/// 2 threads of an Intel Xeon, old time over new: ResNet-50's projections forward 1.07-1.17x
/// at batch 8 and 16, 1.02-1.07x at batch 1; backward-filter 1.02-1.36x and backward-data
/// 1.06-1.34x at batch 16 (the most on 1024->2048 at 14x14), 1.07-1.62x and 1.04-1.37x
/// at batch 1. ResNet-18's forward: 128->256 at batch 8 and 16 1.03-1.05x, but 64->128
/// 0.93-0.95x, and every projection at batch 1 (about 13 M multiply-adds) 0.87-0.97x.
fn subsamples(g: &ConvGeometry) -> bool {
    g.out_channels >= 256 && g.macs() >= 1 << 25
}

/// Checks that `small` is `large` with the height and width of its pixels at stride
/// `stride`, both in blocks of `V::LANES`, and the lengths of `ls` and `ss`.
fn check<V: Vector>(large: Blocked, stride: usize, ls: usize, small: Blocked, ss: usize, what: &str) {
    assert_eq!(ls, large.len(), "{what}: full-size length");
    assert_eq!(ss, small.len(), "{what}: subsampled length");
    assert!(
        small.n == large.n && small.c == large.c && large.block == V::LANES && small.block == V::LANES,
        "{what}: the same images and channels, in blocks of the vector"
    );
    assert!(stride > 0, "{what}: stride must be positive");
    assert!(
        small.h == 0 || (small.h - 1) * stride < large.h,
        "{what}: subsampled rows inside the full size"
    );
    assert!(
        small.w == 0 || (small.w - 1) * stride < large.w,
        "{what}: subsampled columns inside the full size"
    );
}

/// `dst` = pixels `(y * stride, x * stride)` of `src` (shape `src_l`), every image and
/// channel block, in `dst_l` (the same layout with the subsampled height and width).
fn subsample<V: Vector>(src_l: Blocked, stride: usize, src: &[f32], dst_l: Blocked, dst: &mut [f32]) {
    check::<V>(src_l, stride, src.len(), dst_l, dst.len(), "subsample");
    let l = V::LANES;
    let shared = SharedOut::new(dst);
    split::for_each_range(src_l.n * src_l.blocks(), |planes| {
        for plane in planes {
            let (from, to) = (plane * src_l.plane_len(), plane * dst_l.plane_len());
            for y in 0..dst_l.h {
                let row = from + y * stride * src_l.w * l;
                for x in 0..dst_l.w {
                    let v = V::load(&src[row + x * stride * l..]);
                    shared.store(to + (y * dst_l.w + x) * l, v);
                }
            }
        }
    });
}

/// The adjoint of [`subsample`]: `dst` (shape `dst_l`) gets pixel `(y, x)` of `src`
/// (shape `src_l`) at `(y * stride, x * stride)`, and zero at every other pixel.
fn spread<V: Vector>(src_l: Blocked, src: &[f32], stride: usize, dst_l: Blocked, dst: &mut [f32]) {
    check::<V>(dst_l, stride, dst.len(), src_l, src.len(), "spread");
    let l = V::LANES;
    let shared = SharedOut::new(dst);
    split::for_each_range(dst_l.n * dst_l.blocks(), |planes| {
        for plane in planes {
            let (from, to) = (plane * src_l.plane_len(), plane * dst_l.plane_len());
            for y in 0..dst_l.h {
                let row = to + y * dst_l.w * l;
                let read = (y % stride == 0 && y / stride < src_l.h).then(|| from + (y / stride) * src_l.w * l);
                for x in 0..dst_l.w {
                    let v = match read {
                        Some(at) if x % stride == 0 && x / stride < src_l.w => V::load(&src[at + (x / stride) * l..]),
                        _ => V::ZERO,
                    };
                    shared.store(row + x * l, v);
                }
            }
        }
    });
}

/// The geometry on its zero-padded input (`pad: 0`) that the kernels run the padded
/// convolution of NCHW input (a stem) `g` as, if they do: as `force` says (`None`: as
/// [`pads`] says).
pub(crate) fn stem_as_unpadded(g: &ConvGeometry, in_block: usize, force: Option<bool>) -> Option<ConvGeometry> {
    unpadded_nchw(g, in_block).filter(|u| force.unwrap_or_else(|| pads(u)))
}

/// `run` on `input` (shape `in_l`, the input of `g`) zero-padded by `g.pad` into this
/// thread's staging buffer: the input of [`stem_as_unpadded`].
pub(crate) fn on_padded<R>(g: &ConvGeometry, in_l: Blocked, input: &[f32], run: impl FnOnce(&[f32]) -> R) -> R {
    let padded_l = in_l.with_hw(in_l.h + 2 * g.pad, in_l.w + 2 * g.pad);
    with_staging(padded_l.len(), |padded| {
        pad(in_l, input, g.pad, padded_l, padded);
        run(padded)
    })
}

/// The geometry of `g` on its input zero-padded by `g.pad` on every side (`pad: 0`), when
/// `g` reads plain NCHW input (`in_block == 1`: the stems) with padding.
fn unpadded_nchw(g: &ConvGeometry, in_block: usize) -> Option<ConvGeometry> {
    (in_block == 1 && g.pad > 0).then_some(ConvGeometry {
        in_h: g.in_h + 2 * g.pad,
        in_w: g.in_w + 2 * g.pad,
        pad: 0,
        ..*g
    })
}

/// Whether the kernels run the stem `unpadded` (from [`unpadded_nchw`]) on a padded copy:
/// where its output rows are at most 32 pixels wide, so that the tiles touching the left
/// and right padding are a large share. Measured alternating call by call on 2 threads
/// of an Intel Xeon, old time over new: ResNet-20's stem (32x32) 1.99x at batch 128 and
/// 1.52x at batch 1; ResNet-50's 7x7 stride-2 stem (112 pixels a row) 0.96-0.97x.
fn pads(unpadded: &ConvGeometry) -> bool {
    unpadded.out_w <= 32
}

/// `dst` (shape `dst_l`: `src_l` with `pad` more rows and columns on each side, any
/// block) = `src` (shape `src_l`) surrounded by zeros.
fn pad(src_l: Blocked, src: &[f32], pad: usize, dst_l: Blocked, dst: &mut [f32]) {
    assert_eq!(src.len(), src_l.len(), "pad: input length");
    assert_eq!(dst.len(), dst_l.len(), "pad: output length");
    assert!(
        dst_l == src_l.with_hw(src_l.h + 2 * pad, src_l.w + 2 * pad),
        "pad: {dst_l:?} is not {src_l:?} padded by {pad}"
    );
    let (l, row, dst_row) = (src_l.block, src_l.w * src_l.block, dst_l.w * dst_l.block);
    let shared = SharedOut::new(dst);
    let zero = |at: usize, len: usize| {
        for i in (0..len).step_by(ZEROS.len()) {
            shared.write_slice(at + i, &ZEROS[..ZEROS.len().min(len - i)]);
        }
    };
    split::for_each_range(src_l.n * src_l.blocks(), |planes| {
        for plane in planes {
            let (from, to) = (plane * src_l.plane_len(), plane * dst_l.plane_len());
            for y in 0..dst_l.h {
                let at = to + y * dst_row;
                match y.checked_sub(pad).filter(|&sy| sy < src_l.h) {
                    Some(sy) => {
                        zero(at, pad * l);
                        shared.write_slice(at + pad * l, &src[from + sy * row..][..row]);
                        zero(at + pad * l + row, pad * l);
                    }
                    None => zero(at, dst_row),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both directions against index arithmetic on every value, at 4, 8 and 16 lanes:
    /// strides 2 and 3, sizes that leave rows and columns past the last sample, channels
    /// off the block.
    #[test]
    fn subsample_and_spread_move_the_strided_pixels() {
        fn at<V: Vector>() {
            for (n, c, h, w, s) in [(2, 19, 9, 7, 2), (1, 16, 8, 11, 3), (3, 5, 1, 1, 2), (1, 33, 6, 6, 2)] {
                let (sh, sw) = ((h - 1) / s + 1, (w - 1) / s + 1);
                let large = Blocked::new(n, c, h, w, V::LANES);
                let small = large.with_hw(sh, sw);
                let x: Vec<f32> = (0..large.len()).map(|i| i as f32 + 0.5).collect();
                let mut sub = vec![f32::NAN; small.len()];
                subsample::<V>(large, s, &x, small, &mut sub);
                let mut back = vec![f32::NAN; large.len()];
                spread::<V>(small, &sub, s, large, &mut back);
                for b in 0..n {
                    for ch in 0..large.padded_channels() {
                        for y in 0..h {
                            for xx in 0..w {
                                let i = large.index(b, ch, y, xx);
                                let sampled = y % s == 0 && xx % s == 0;
                                if sampled {
                                    assert_eq!(sub[small.index(b, ch, y / s, xx / s)], x[i]);
                                }
                                assert_eq!(
                                    back[i],
                                    if sampled { x[i] } else { 0.0 },
                                    "({b}, {ch}, {y}, {xx}) stride {s}"
                                );
                            }
                        }
                    }
                }
            }
        }
        at::<wide::f32x4>();
        at::<wide::f32x8>();
        at::<wide::f32x16>();
    }

    /// Every value of the padded copy, over NaN, at blocks 1 and 4: the image inside, zeros
    /// around it, for paddings of 1 to 3 and tiny images.
    #[test]
    fn pad_surrounds_the_image_with_zeros() {
        for (n, c, h, w, pad_by, block) in [
            (2, 3, 5, 4, 1, 1),
            (1, 3, 1, 1, 3, 1),
            (1, 5, 3, 6, 2, 4),
            (2, 1, 2, 2, 17, 1),
        ] {
            let src_l = Blocked::new(n, c, h, w, block);
            let dst_l = src_l.with_hw(h + 2 * pad_by, w + 2 * pad_by);
            let x: Vec<f32> = (0..src_l.len()).map(|i| i as f32 + 0.5).collect();
            let mut y = vec![f32::NAN; dst_l.len()];
            pad(src_l, &x, pad_by, dst_l, &mut y);
            for b in 0..n {
                for ch in 0..dst_l.padded_channels() {
                    for yy in 0..dst_l.h {
                        for xx in 0..dst_l.w {
                            let inside = (pad_by..pad_by + h).contains(&yy) && (pad_by..pad_by + w).contains(&xx);
                            let want = if inside {
                                x[src_l.index(b, ch, yy - pad_by, xx - pad_by)]
                            } else {
                                0.0
                            };
                            assert_eq!(
                                y[dst_l.index(b, ch, yy, xx)],
                                want,
                                "({b}, {ch}, {yy}, {xx}) pad {pad_by}"
                            );
                        }
                    }
                }
            }
        }
    }
}
