//! Backward-filter of 1x1 stride-1 convolutions with bf16 products (`--precision bf16`):
//! `dW[k][c] += sum_p dY[k][p] X[c][p]` over the batch's pixels `p`, the products of
//! bf16-rounded `dY` and `X` summed in f32 by [`bf16::products`], as PyTorch's CPU
//! autocast computes a weight gradient.
//!
//! The sum over pixels is the kernel's sum over input channels: pixels pair up in its
//! `vdpbf16ps`. Per cache-sized chunk of pixels, `dY` is packed as bf16 filters
//! (`[k block][pixel / 2][16 k][2]`) and `X` as bf16 inputs with channels for tiles
//! (`[pixel / 16][c][pixel % 16]`), so that one product call gives 16 output channels
//! of `dW` for every input channel. Each task sums its range of pixels into its own
//! partial `dW` (`[k block][c][16 k]`); the partials are added in task order, so the
//! result depends on the thread count alone.

use super::bf16::{self, LANES};
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::{with_partials, with_scratch};
use crate::kernels::split;
use crate::layout::Blocked;
use rayon::prelude::*;
use std::ops::Range;

/// Bytes of one chunk's packed `dY` and `X`: within the L2 beside the product tiles.
const CHUNK_BYTES: usize = 768 << 10;

/// Output blocks per product call (the kernel's most).
const BLOCKS_PER_CALL: usize = 4;

/// `dw += dL/dW` of the unpadded 1x1 convolution `g` (any stride) from its input `x` and
/// output gradient `dy`, both blocked in 16 lanes; `dw` is `K x C` (OIHW).
pub fn pointwise_filter_grad(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(
        g.kernel_h == 1 && g.kernel_w == 1 && g.pad == 0,
        "bf16: pointwise backward-filter takes unpadded 1x1 convolutions, found {g:?}"
    );
    let l = LANES;
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, l);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, l);
    assert_eq!(x.len(), xs.len(), "bf16: 1x1 input length");
    assert_eq!(dy.len(), ys.len(), "bf16: 1x1 output gradient length");
    assert_eq!(
        dw.len(),
        g.out_channels * g.in_channels,
        "bf16: 1x1 weight gradient length"
    );
    let (icb, ocb, px) = (xs.blocks(), ys.blocks(), g.out_h * g.out_w);
    let pixels = g.batch * px;
    if pixels == 0 || ocb == 0 || icb == 0 {
        return;
    }
    let cp = icb * l;
    let chunk = (CHUNK_BYTES / ((ocb + icb) * l * 2))
        .next_multiple_of(l)
        .clamp(l, pixels.next_multiple_of(l));
    let parts = split::parts(pixels.div_ceil(chunk));
    let per_task = ocb * cp * l;
    let c = Ctx {
        icb,
        ocb,
        px,
        chunk,
        g,
        x,
        dy,
    };
    with_partials(parts * per_task, |partials| {
        partials
            .par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(task, partial)| {
                partial.fill(0.0);
                if let Some(range) = split::range(pixels, parts, task) {
                    task_sum(&c, range, partial);
                }
            });
        let partials = &*partials;
        let channels = g.in_channels;
        dw.par_chunks_mut(channels).enumerate().for_each(|(k, row)| {
            let (kb, lane) = (k / l, k % l);
            for (ci, w) in row.iter_mut().enumerate() {
                let at = (kb * cp + ci) * l + lane;
                *w += partials.chunks_exact(per_task).map(|p| p[at]).sum::<f32>();
            }
        });
    });
}

/// What every task reads.
struct Ctx<'a> {
    icb: usize,
    ocb: usize,
    /// Output pixels per image.
    px: usize,
    /// Pixels per packed chunk (a multiple of 16).
    chunk: usize,
    g: &'a ConvGeometry,
    x: &'a [f32],
    dy: &'a [f32],
}

/// Adds the products of the pixels `range` (of the whole batch) into `partial`.
fn task_sum(c: &Ctx, range: Range<usize>, partial: &mut [f32]) {
    let l = LANES;
    let (cp, kp) = (c.icb * l, c.ocb * l);
    // Packed dY, packed X (u16 each, as floats' halves) and one call's product tile.
    let dy_len = kp * c.chunk;
    let x_len = cp * c.chunk;
    let tile_len = BLOCKS_PER_CALL * cp * l;
    with_scratch((dy_len + x_len) / 2 + tile_len, |s| {
        let (packed, tile) = s.split_at_mut((dy_len + x_len) / 2);
        let packed = bf16::scratch_u16(packed, dy_len + x_len);
        let (dy16, x16) = packed.split_at_mut(dy_len);
        let mut p = range.start;
        while p < range.end {
            // A chunk stays inside one image.
            let (n, at) = (p / c.px, p % c.px);
            let len = c.chunk.min(range.end - p).min(c.px - at);
            let padded = len.next_multiple_of(l);
            pack_dy(c, n, at, len, padded, &mut dy16[..kp * padded]);
            pack_x(c, n, at, len, padded, &mut x16[..cp * padded]);
            let mut cb = 0;
            while cb < c.ocb {
                let rb = (c.ocb - cb).min(BLOCKS_PER_CALL);
                let m = &mut tile[..rb * cp * l];
                bf16::products(
                    &dy16[..kp * padded],
                    1,
                    padded,
                    c.ocb,
                    (cb, rb),
                    cp,
                    (&x16[..cp * padded], 0),
                    (m, 0),
                );
                for (acc, v) in partial[cb * cp * l..(cb + rb) * cp * l].iter_mut().zip(m.iter()) {
                    *acc += v;
                }
                cb += rb;
            }
            p += len;
        }
    });
}

/// `dY` of image `n`, pixels `at..at + len`, as bf16 filters: `[k block][pixel / 2][16
/// k][2]` over `padded` pixels (the pixels past `len` zero).
fn pack_dy(c: &Ctx, n: usize, at: usize, len: usize, padded: usize, out: &mut [u16]) {
    let l = LANES;
    for kb in 0..c.ocb {
        let src = &c.dy[((n * c.ocb + kb) * c.px + at) * l..][..len * l];
        let dst = &mut out[kb * padded * l..(kb + 1) * padded * l];
        interleave_pairs(src, dst);
        dst[len.next_multiple_of(2) * l..].fill(0);
    }
}

/// `X` of image `n`, pixels `at..at + len`, as bf16 inputs whose tiles are channels:
/// `[pixel / 16][c][pixel % 16]` over `padded` pixels (the pixels past `len` zero).
fn pack_x(c: &Ctx, n: usize, at: usize, len: usize, padded: usize, out: &mut [u16]) {
    let (l, g) = (LANES, c.g);
    let cp = c.icb * l;
    let in_px = g.in_h * g.in_w;
    let mut gathered = [0f32; LANES * LANES];
    for group in 0..padded / l {
        let pixels = l.min(len.saturating_sub(group * l));
        let first = at + group * l;
        for cb in 0..c.icb {
            let block = &c.x[(n * c.icb + cb) * in_px * l..(n * c.icb + cb + 1) * in_px * l];
            let src = if g.stride == 1 {
                &block[first * l..(first + pixels) * l]
            } else {
                // The input pixel under each output pixel.
                for (o, row) in (first..first + pixels).zip(gathered.chunks_exact_mut(l)) {
                    let from = (o / g.out_w * g.in_w + o % g.out_w) * g.stride;
                    row.copy_from_slice(&block[from * l..(from + 1) * l]);
                }
                &gathered[..pixels * l]
            };
            transpose_block(src, &mut out[(group * cp + cb * l) * l..][..l * l]);
        }
    }
}

/// Up to 16 pixels of one 16-channel block (`src`, pixel-major) as bf16, channel-major:
/// `dst[ch * 16 + pixel]`, the missing pixels zero.
fn transpose_block(src: &[f32], dst: &mut [u16]) {
    let l = LANES;
    assert!(
        src.len() <= l * l && src.len().is_multiple_of(l) && dst.len() == l * l,
        "bf16: a 16x16 block"
    );
    #[cfg(target_arch = "x86_64")]
    if bf16::available() {
        // SAFETY: the CPU has the instructions (checked just above); lengths asserted.
        unsafe { x86::transpose_block(src, dst) };
        return;
    }
    transpose_block_naive(src, dst);
}

/// [`transpose_block`] one value at a time: its twin in the tests, and the path of other
/// CPUs.
fn transpose_block_naive(src: &[f32], dst: &mut [u16]) {
    let l = LANES;
    for (ch, row) in dst.chunks_exact_mut(l).enumerate() {
        for (pixel, v) in row.iter_mut().enumerate() {
            *v = src.get(pixel * l + ch).map_or(0, |&x| bf16::to_bf16(x));
        }
    }
}

/// `src` (pixels of 16 lanes) as bf16 with each pair of pixels interleaved lane by lane:
/// `dst[(p / 2 * 16 + lane) * 2 + p % 2] = bf16(src[p * 16 + lane])`; an odd last pixel
/// pairs with zeros.
pub(super) fn interleave_pairs(src: &[f32], dst: &mut [u16]) {
    let l = LANES;
    let pixels = src.len() / l;
    assert!(
        dst.len() >= pixels.next_multiple_of(2) * l,
        "bf16: interleaved pairs length"
    );
    #[cfg(target_arch = "x86_64")]
    if bf16::available() && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the instructions (checked just above); lengths asserted.
        unsafe { x86::interleave_pairs(src, dst) };
        return;
    }
    interleave_pairs_naive(src, dst);
}

/// [`interleave_pairs`] one value at a time: its twin in the tests, and the path of other
/// CPUs.
fn interleave_pairs_naive(src: &[f32], dst: &mut [u16]) {
    let l = LANES;
    let pixels = src.len() / l;
    for p in 0..pixels.next_multiple_of(2) {
        for lane in 0..l {
            let v = if p < pixels {
                bf16::to_bf16(src[p * l + lane])
            } else {
                0
            };
            dst[(p / 2 * l + lane) * 2 + p % 2] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// Transposes 16 vectors of 16 floats in registers (`v[i][k]` becomes `v[k][i]`):
    /// four rounds that swap the off-diagonal halves of ever smaller blocks (8, 4, 2, 1
    /// rows).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::kernels::blocked) unsafe fn transpose16(v: &mut [__m512; 16]) {
        for d in [8usize, 4, 2, 1] {
            // Row `i` (bit `d` clear) keeps its lanes without bit `d` and takes row
            // `i + d`'s lanes `k - d` for those with it; row `i + d` the rest.
            let low: [i32; 16] = core::array::from_fn(|k| if k & d != 0 { (16 + k - d) as i32 } else { k as i32 });
            let high: [i32; 16] = core::array::from_fn(|k| if k & d != 0 { (16 + k) as i32 } else { (k + d) as i32 });
            // SAFETY: the index arrays are 64 bytes each; the CPU has the instructions
            // (the function's contract).
            let (low, high) = unsafe {
                (
                    _mm512_loadu_si512(low.as_ptr() as *const __m512i),
                    _mm512_loadu_si512(high.as_ptr() as *const __m512i),
                )
            };
            for i in (0..16).filter(|i| i & d == 0) {
                let (a, b) = (v[i], v[i + d]);
                v[i] = _mm512_permutex2var_ps(a, low, b);
                v[i + d] = _mm512_permutex2var_ps(a, high, b);
            }
        }
    }

    /// [`super::transpose_block`] in registers ([`transpose16`]), then two channels per
    /// conversion.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `src` holds whole pixels, at most 16, and
    /// `dst` 256 values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn transpose_block(src: &[f32], dst: &mut [u16]) {
        let pixels = src.len() / 16;
        // SAFETY (whole body): row `p < pixels` lies in `src`; the stores write `dst`'s
        // 256 values.
        unsafe {
            let mut rows: [__m512; 16] = core::array::from_fn(|p| {
                if p < pixels {
                    _mm512_loadu_ps(src.as_ptr().add(p * 16))
                } else {
                    _mm512_setzero_ps()
                }
            });
            transpose16(&mut rows);
            for ch in (0..16).step_by(2) {
                let words = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(rows[ch + 1], rows[ch]));
                _mm512_storeu_si512(dst.as_mut_ptr().add(ch * 16) as *mut __m512i, words);
            }
        }
    }

    /// [`super::interleave_pairs`] two pixels (one output vector) at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX512_BF16; `dst` holds the pairs of `src`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn interleave_pairs(src: &[f32], dst: &mut [u16]) {
        let pixels = src.len() / 16;
        // Lane `2i` of the result takes word `i` (the even pixel), lane `2i + 1` word
        // `16 + i` (the odd one).
        let index: [i16; 32] = core::array::from_fn(|j| ((j % 2) * 16 + j / 2) as i16);
        // SAFETY (whole body): the loads read pixels `2q, 2q + 1 < pixels` of `src`, the
        // stores write pair `q` of `dst`, which the caller sized for every pair.
        unsafe {
            let index = _mm512_loadu_si512(index.as_ptr() as *const __m512i);
            for q in 0..pixels / 2 {
                let even = _mm512_loadu_ps(src.as_ptr().add(q * 32));
                let odd = _mm512_loadu_ps(src.as_ptr().add(q * 32 + 16));
                let words = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd, even));
                _mm512_storeu_si512(
                    dst.as_mut_ptr().add(q * 32) as *mut __m512i,
                    _mm512_permutexvar_epi16(index, words),
                );
            }
        }
        if pixels % 2 == 1 {
            let last = pixels - 1;
            for lane in 0..16 {
                dst[(last / 2 * 16 + lane) * 2] = super::bf16::to_bf16(src[last * 16 + lane]);
                dst[(last / 2 * 16 + lane) * 2 + 1] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::to_blocked;

    fn value(i: usize, salt: usize) -> f32 {
        ((i * 7919 + salt * 104729) % 2003) as f32 / 1001.0 - 1.0
    }

    #[test]
    fn transposing_matches_its_naive_twin() {
        for pixels in [0, 1, 5, 16] {
            let src: Vec<f32> = (0..pixels * LANES).map(|i| value(i, 6) * 9.0).collect();
            let (mut fast, mut slow) = (vec![7u16; LANES * LANES], vec![9u16; LANES * LANES]);
            transpose_block(&src, &mut fast);
            transpose_block_naive(&src, &mut slow);
            assert_eq!(fast, slow, "{pixels} pixels");
        }
    }

    #[test]
    fn interleaving_matches_its_naive_twin() {
        for pixels in [1, 2, 7, 16, 33] {
            let src: Vec<f32> = (0..pixels * LANES).map(|i| value(i, 5) * 40.0).collect();
            let len = pixels.next_multiple_of(2) * LANES;
            let (mut fast, mut slow) = (vec![7u16; len], vec![9u16; len]);
            interleave_pairs(&src, &mut fast);
            interleave_pairs_naive(&src, &mut slow);
            assert_eq!(fast, slow, "{pixels} pixels");
        }
    }

    /// Against the f64 sums of the same bf16 values, on odd shapes (channels not a
    /// multiple of 16, images smaller and larger than a chunk, several tasks) and
    /// ResNet-50-like ones; `dw` is added to.
    #[test]
    fn weight_gradient_matches_f64_sums_of_the_bf16_values() {
        let round = |v: f32| bf16::from_bf16(bf16::to_bf16(v)) as f64;
        for &(n, c, k, h, w, stride) in &[
            (2, 19, 21, 5, 7, 1),
            (3, 64, 256, 9, 9, 1),
            (1, 40, 8, 3, 11, 1),
            (2, 256, 64, 30, 30, 1),
            (2, 19, 21, 5, 7, 2),
            (2, 64, 128, 14, 14, 2),
        ] {
            let g = ConvGeometry::new(n, c, h, w, k, (1, 1), stride, 0).unwrap();
            let (oh, ow) = (g.out_h, g.out_w);
            let x: Vec<f32> = (0..n * c * h * w).map(|i| value(i, 1) * 2.0).collect();
            let dy: Vec<f32> = (0..n * k * oh * ow).map(|i| value(i, 2)).collect();
            let (xs, ys) = (Blocked::new(n, c, h, w, LANES), Blocked::new(n, k, oh, ow, LANES));
            let (mut xb, mut dyb) = (vec![0.0; xs.len()], vec![0.0; ys.len()]);
            to_blocked(&x, xs, &mut xb);
            to_blocked(&dy, ys, &mut dyb);
            let start: Vec<f32> = (0..k * c).map(|i| value(i, 3)).collect();
            let mut dw = start.clone();
            pointwise_filter_grad(&g, &xb, &dyb, &mut dw);
            for o in 0..k {
                for i in 0..c {
                    let (mut exact, mut size) = (start[o * c + i] as f64, 0f64);
                    for img in 0..n {
                        for p in 0..oh * ow {
                            let at = (p / ow * stride) * w + (p % ow) * stride;
                            let term = round(dy[(img * k + o) * oh * ow + p]) * round(x[(img * c + i) * h * w + at]);
                            exact += term;
                            size += term.abs();
                        }
                    }
                    // f32 sums of up to 1800 products (in chunks, then tasks).
                    let got = dw[o * c + i] as f64;
                    assert!(
                        (got - exact).abs() <= 4e-6 * (size + 1.0),
                        "{g:?} dw[{o}][{i}]: {got} vs {exact}"
                    );
                }
            }
        }
    }
}
