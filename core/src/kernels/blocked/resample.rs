//! Strided 1x1 convolutions (ResNet's projection shortcuts) as pointwise ones: the forward
//! pass and the backward-filter read only the input pixels `(y * s, x * s)`, so they run
//! the stride-1 kernels on a [`subsample`]d copy of the input; the backward-data computes
//! those pixels' gradient with the stride-1 kernel and [`spread`]s it, zeros between.
//!
//! On the strided tensors the tiles read every other pixel of every other row and most
//! cross a row end (28, 14 or 7 pixels a row against 6 a tile), so they take the kernels'
//! border paths, and each output-channel group of the forward pass reads the full-size
//! input again; on the copies the tiles are contiguous and the groups read a quarter of
//! it. Each result is summed in the same order either way: the outputs are bit for bit
//! those of the strided kernels.

use crate::kernels::im2col::ConvGeometry;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;

/// The stride-1 geometry of `g` on the subsampled input when `g` is a strided, unpadded
/// 1x1 convolution of blocked input (`in_block == out_block`).
pub(crate) fn pointwise_of_strided(g: &ConvGeometry, in_block: usize, out_block: usize) -> Option<ConvGeometry> {
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
pub(crate) fn subsamples(g: &ConvGeometry) -> bool {
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
pub(crate) fn subsample<V: Vector>(src_l: Blocked, stride: usize, src: &[f32], dst_l: Blocked, dst: &mut [f32]) {
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
pub(crate) fn spread<V: Vector>(src_l: Blocked, src: &[f32], stride: usize, dst_l: Blocked, dst: &mut [f32]) {
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
}
