//! Backward-filter of any convolution of blocked input with bf16 products on AMX tiles
//! (`--precision bf16`): `dW[k][c][ky][kx] += sum dY[k][q] X[c][q + tap]` over the
//! batch's output positions `q`, products of bf16-rounded values summed in f32, as
//! PyTorch's CPU autocast computes a weight gradient.
//!
//! # Positions as the reduction
//! The tiles sum over the positions. A chunk of output rows (whole images where they
//! fit) is packed twice:
//! - `X` transposed, one tile row per input channel holding its bf16 pixels along the
//!   positions, in the zero-padded polyphase planes of [`super::bf16_direct`]: position
//!   `q = oy * wq + ox`, and tap `(ky, kx)` reads pixel `q + (ky / s) wq + kx / s` of
//!   phase `(ky % s, kx % s)`. Every tap reads the same rows from its own offset, so the
//!   nine taps of a 3x3 kernel share one packed copy (a `tileloadd` takes any offset).
//! - `dY` as the other operand, each pair of positions interleaved channel by channel
//!   (`[k block][q / 2][16 k][2]`), zero at the padding columns (`ox >= out_w`) and at
//!   the rows past each image, so the positions that read across them add nothing.
//!
//! One `tdpbf16ps` adds 32 positions for 16 input x 16 output channels of one tap; one
//! [`amx::Tiles::gathered_step`] call runs a chunk's positions for 32 input x 32 output
//! channels of one tap into four accumulator tiles kept in the task's partial `dW`. Each
//! task sums a contiguous range of the batch's bands into its own partial; the partials
//! are added in task order, so the result depends on the thread count alone.
//!
//! Without AMX [`filter_grad`] runs [`filter_grad_naive`], the twin the tests hold it to.

use super::amx::{self, Depth, Spill, Taps, Tiles, STEP_PIXELS};
use super::bf16::{from_bf16, scratch_u16, to_bf16, LANES};
use super::bf16_filter_grad::interleave_pairs;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::{with_partials, with_scratch};
use crate::kernels::split;
use crate::layout::Blocked;
use rayon::prelude::*;
use std::ops::Range;

/// Bytes of one chunk's packed `X` and `dY`: most of a 2 MB L2, so that each task
/// reads and writes its partial `dW` (up to 9.4 MB for ResNet-50's 512-channel layers)
/// as few times as its bands allow.
const CHUNK_BYTES: usize = 1536 << 10;

/// Steps of 32 positions given to one kernel call; longer chunks take more calls.
const STEPS_PER_CALL: usize = 256;

/// Floats of one [`Spill`]: four 16 x 16 accumulator tiles.
const SPILL_FLOATS: usize = 4 * 256;

/// `dw += dL/dW` of `g` (OIHW) from its input `x` and output gradient `dy`, both blocked
/// in 16 lanes, the products in bf16 summed in f32. On AMX tiles where the CPU has them,
/// else [`filter_grad_naive`].
pub fn filter_grad(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    filter_grad_on(g, x, dy, dw, amx::available());
}

/// [`filter_grad`] on the tiles when `tiles`, else naive: the tests run both on AMX CPUs.
pub(crate) fn filter_grad_on(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32], tiles: bool) {
    check(g, x, dy, dw);
    if tiles {
        on_tiles(g, x, dy, dw);
    } else {
        filter_grad_naive(g, x, dy, dw);
    }
}

fn check(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &[f32]) {
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
    assert_eq!(x.len(), xs.len(), "bf16 backward-filter: input length");
    assert_eq!(dy.len(), ys.len(), "bf16 backward-filter: output gradient length");
    let taps = g.kernel_h * g.kernel_w;
    assert_eq!(
        dw.len(),
        g.out_channels * g.in_channels * taps,
        "bf16 backward-filter: weight gradient length"
    );
}

/// [`filter_grad`] one value at a time: per weight, `sum bf16(dy) bf16(x)` in f32 over
/// the batch's positions in order, added to `dw`.
pub fn filter_grad_naive(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    check(g, x, dy, dw);
    let l = LANES;
    let (icb, ocb) = (g.in_channels.div_ceil(l), g.out_channels.div_ceil(l));
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let value = |v: f32| from_bf16(to_bf16(v));
    for k in 0..g.out_channels {
        for c in 0..g.in_channels {
            for tap in 0..kh * kw {
                let mut acc = 0f32;
                for n in 0..g.batch {
                    for oy in 0..g.out_h {
                        let Some(iy) = (oy * g.stride + tap / kw).checked_sub(g.pad).filter(|&y| y < g.in_h) else {
                            continue;
                        };
                        for ox in 0..g.out_w {
                            let ix = (ox * g.stride + tap % kw).checked_sub(g.pad).filter(|&x| x < g.in_w);
                            let Some(ix) = ix else { continue };
                            let d = dy[(((n * ocb + k / l) * g.out_h + oy) * g.out_w + ox) * l + k % l];
                            let v = x[(((n * icb + c / l) * g.in_h + iy) * g.in_w + ix) * l + c % l];
                            acc += value(d) * value(v);
                        }
                    }
                }
                dw[(k * g.in_channels + c) * kh * kw + tap] += acc;
            }
        }
    }
}

/// How a call cuts the batch (see the module's doc): bands of `rows` output rows, each
/// taking `(rows + below) * wq` positions, grouped into chunks of at most
/// `max_positions`.
struct Bands {
    /// Width of a phase plane: the padded input width over the stride, rounded up to
    /// even so that every row's positions start a pair.
    wq: usize,
    /// Phase-plane rows the taps reach below a band's last output row.
    below: usize,
    rows: usize,
    per_image: usize,
    /// Channel rows of the packed `X`: the input channels rounded up to a pair of blocks.
    cp: usize,
    max_positions: usize,
}

impl Bands {
    fn new(g: &ConvGeometry) -> Bands {
        let (l, s) = (LANES, g.stride);
        let wq = (g.in_w + 2 * g.pad).div_ceil(s).next_multiple_of(2);
        let below = (g.kernel_h - 1) / s;
        let cp = g.in_channels.next_multiple_of(2 * l);
        let per_position = (cp * s * s + g.out_channels.next_multiple_of(l)) * 2;
        let fit = CHUNK_BYTES / per_position;
        let image = (g.out_h + below) * wq;
        let rows = if image <= fit {
            g.out_h
        } else {
            (fit / wq).saturating_sub(below).clamp(1, g.out_h.max(1))
        };
        Bands {
            wq,
            below,
            rows,
            per_image: g.out_h.div_ceil(rows.max(1)),
            cp,
            max_positions: fit.max((rows + below) * wq),
        }
    }

    /// Output rows of band `band` of an image (`oy0`, count).
    fn of(&self, g: &ConvGeometry, band: usize) -> (usize, usize) {
        let oy0 = band * self.rows;
        (oy0, self.rows.min(g.out_h - oy0))
    }

    /// Positions a band of `rows` output rows takes.
    fn positions(&self, rows: usize) -> usize {
        (rows + self.below) * self.wq
    }
}

/// What every task reads.
struct Ctx<'a> {
    g: &'a ConvGeometry,
    x: &'a [f32],
    dy: &'a [f32],
    bands: Bands,
    /// Pairs of input blocks, of output blocks (rounded up).
    cbps: usize,
    kbps: usize,
}

/// [`filter_grad`] on the tiles (see the module's doc).
fn on_tiles(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let l = LANES;
    let bands = Bands::new(g);
    let units = g.batch * bands.per_image;
    if units == 0 || g.out_w == 0 || g.out_channels == 0 || g.in_channels == 0 {
        return;
    }
    let c = Ctx {
        g,
        x,
        dy,
        cbps: bands.cp / (2 * l),
        kbps: g.out_channels.div_ceil(2 * l),
        bands,
    };
    let taps = g.kernel_h * g.kernel_w;
    let per_task = taps * c.cbps * c.kbps * SPILL_FLOATS;
    let tasks = split::parts(units);
    with_partials(tasks * per_task, |partials| {
        partials
            .par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(task, partial)| {
                let spills = Spill::many(partial);
                match split::range(units, tasks, task) {
                    Some(range) if !range.is_empty() => task_sum(&c, range, spills),
                    _ => spills.iter_mut().for_each(|s| *s = Spill::default()),
                }
            });
        let partials = &*partials;
        // Per pair of output blocks, its weights' rows (`k`: every input channel and
        // tap, contiguous in `dw`), each summed over the tasks' spills in task order.
        let cin = g.in_channels;
        dw.par_chunks_mut(2 * l * cin * taps)
            .enumerate()
            .for_each(|(kbp, rows)| {
                for cbp in 0..c.cbps {
                    let base = (cbp * c.kbps + kbp) * taps * SPILL_FLOATS;
                    for (kk, row) in rows.chunks_exact_mut(cin * taps).enumerate() {
                        let (j, lane) = (kk / l, kk % l);
                        let channels = cbp * 2 * l..(cbp * 2 * l + 2 * l).min(cin);
                        for (ci, per_tap) in channels
                            .clone()
                            .zip(row[channels.start * taps..].chunks_exact_mut(taps))
                        {
                            let (i, r) = (ci / l % 2, ci % l);
                            let at = base + (j * 2 + i) * 256 + r * l + lane;
                            for (tap, w) in per_tap.iter_mut().enumerate() {
                                let mut sum = 0f32;
                                for t in 0..tasks {
                                    sum += partials[t * per_task + at + tap * SPILL_FLOATS];
                                }
                                *w += sum;
                            }
                        }
                    }
                }
            });
    });
}

/// Sums the bands `units` (`image * per_image + band`) into `spills`, chunk by chunk.
fn task_sum(c: &Ctx, units: Range<usize>, spills: &mut [Spill]) {
    let (g, b) = (c.g, &c.bands);
    let l = LANES;
    let s = g.stride;
    let reach = b.below * b.wq + (g.kernel_w - 1) / s;
    let steps_max = b.max_positions.div_ceil(STEP_PIXELS);
    let taps = g.kernel_h * g.kernel_w;
    let plane_max = steps_max * STEP_PIXELS + reach;
    let x_len = b.cp * s * s * plane_max;
    let dy_len = c.kbps * 2 * l * steps_max * STEP_PIXELS;
    with_scratch((x_len + dy_len).div_ceil(2), |scratch| {
        let buf = scratch_u16(scratch, x_len + dy_len);
        let (x16, dy16) = buf.split_at_mut(x_len);
        let mut tiles = Tiles::new(Depth::Full);
        let mut bytes = [0usize; STEPS_PER_CALL];
        let mut first = true;
        let mut u = units.start;
        while u < units.end {
            // The bands of this chunk: as many as fit, at least one.
            let mut end = u;
            let mut positions = 0;
            while end < units.end {
                let more = b.positions(b.of(g, end % b.per_image).1);
                if end > u && positions + more > b.max_positions {
                    break;
                }
                positions += more;
                end += 1;
            }
            let steps = positions.div_ceil(STEP_PIXELS);
            let plane = steps * STEP_PIXELS + reach;
            let pitch = s * s * plane;
            let k_stride = steps * STEP_PIXELS * l;
            let (x16, dy16) = (&mut x16[..b.cp * pitch], &mut dy16[..c.kbps * 2 * k_stride]);
            pack(c, u..end, (plane, steps), x16, dy16);
            for k0 in (0..steps).step_by(STEPS_PER_CALL) {
                let kn = (steps - k0).min(STEPS_PER_CALL);
                let offsets = Taps::new((0..kn).map(|k| (k0 + k) * STEP_PIXELS), &mut bytes);
                for tap in 0..taps {
                    let (ky, kx) = (tap / g.kernel_w, tap % g.kernel_w);
                    let at = ((ky % s) * s + kx % s) * plane + ky / s * b.wq + kx / s;
                    for cbp in 0..c.cbps {
                        for kbp in 0..c.kbps {
                            let blocks = (g.out_channels.div_ceil(l) - 2 * kbp).min(2);
                            let spill = &mut spills[(cbp * c.kbps + kbp) * taps + tap];
                            let w = &dy16[2 * kbp * k_stride + k0 * Depth::Full.weight_tile()..];
                            let accumulate = !(first && k0 == 0);
                            tiles.gathered_step(
                                (&*x16, cbp * 2 * l * pitch + at, pitch),
                                &offsets,
                                (w, k_stride, blocks),
                                accumulate,
                                spill,
                            );
                        }
                    }
                }
            }
            first = false;
            u = end;
        }
    });
}

/// Packs the bands `units` one after another: `x16` as `[channel][phase][position]`
/// (planes of `plane` positions), `dy16` as `[k block][position / 2][16][2]` over `steps`
/// steps, zero wherever no band's pixel is.
fn pack(c: &Ctx, units: Range<usize>, (plane, steps): (usize, usize), x16: &mut [u16], dy16: &mut [u16]) {
    let (g, b) = (c.g, &c.bands);
    let (l, s, wq) = (LANES, g.stride, b.wq);
    let (icb, ocb) = (g.in_channels.div_ceil(l), g.out_channels.div_ceil(l));
    let pitch = s * s * plane;
    let k_stride = steps * STEP_PIXELS * l;
    let (in_px, out_px) = (g.in_h * g.in_w, g.out_h * g.out_w);
    let mut q0 = 0;
    for u in units {
        let (n, (oy0, rows)) = (u / b.per_image, b.of(g, u % b.per_image));
        let band = b.positions(rows);
        for cb in 0..icb {
            let src = &c.x[(n * icb + cb) * in_px * l..(n * icb + cb + 1) * in_px * l];
            let dst = &mut x16[cb * l * pitch..(cb + 1) * l * pitch];
            for (py, px) in (0..s).flat_map(|py| (0..s).map(move |px| (py, px))) {
                let at = (py * s + px) * plane + q0;
                // Phase columns `j` inside the image: input column `j s + px - pad`.
                let j_lo = g.pad.saturating_sub(px).div_ceil(s).min(wq);
                let j_hi = (g.in_w + g.pad).saturating_sub(px).div_ceil(s).clamp(j_lo, wq);
                for r in 0..rows + b.below {
                    let iy = ((oy0 + r) * s + py).checked_sub(g.pad).filter(|&iy| iy < g.in_h);
                    for j0 in (0..wq).step_by(l) {
                        let width = l.min(wq - j0);
                        let (lo, hi) = (j_lo.clamp(j0, j0 + width), j_hi.clamp(j0, j0 + width));
                        let (pixels, from) = match iy {
                            Some(iy) if hi > lo => (lo - j0..hi - j0, (iy * g.in_w + lo * s + px - g.pad) * l),
                            _ => (0..0, 0),
                        };
                        let rows16 = Rows {
                            at: at + r * wq + j0,
                            pitch,
                            width,
                        };
                        transpose_to_rows((&src[from..], s * l), pixels, dst, rows16);
                    }
                }
            }
        }
        for kb in 0..ocb {
            let src = &c.dy[(n * ocb + kb) * out_px * l..(n * ocb + kb + 1) * out_px * l];
            let dst = &mut dy16[kb * k_stride + q0 * l..][..band * l];
            for r in 0..rows {
                let row = &mut dst[r * wq * l..(r + 1) * wq * l];
                interleave_pairs(&src[(oy0 + r) * g.out_w * l..][..g.out_w * l], row);
                row[g.out_w.next_multiple_of(2) * l..].fill(0);
            }
            dst[rows * wq * l..].fill(0);
        }
        q0 += band;
    }
    // Past the last band: the channel rows of padding blocks, each plane's tail, and the
    // output blocks' tails and padding blocks.
    for (ch, row) in x16.chunks_exact_mut(pitch).enumerate() {
        if ch >= icb * l {
            row.fill(0);
        } else {
            for p in row.chunks_exact_mut(plane) {
                p[q0..].fill(0);
            }
        }
    }
    for (kb, block) in dy16.chunks_exact_mut(k_stride).enumerate() {
        if kb >= ocb {
            block.fill(0);
        } else {
            block[q0 * l..].fill(0);
        }
    }
}

/// Where [`transpose_to_rows`] writes: `width` values of each of 16 channel rows, from
/// `at`, the rows `pitch` apart.
#[derive(Clone, Copy)]
struct Rows {
    at: usize,
    pitch: usize,
    width: usize,
}

/// Pixels `0..width` of 16 channels (one input block) as bf16 channel rows:
/// `dst[at + ch * pitch + p] = bf16(src[(p - pixels.start) * step + ch])` for `p` in
/// `pixels`, zero for the other `p < width`.
fn transpose_to_rows((src, step): (&[f32], usize), pixels: Range<usize>, dst: &mut [u16], rows: Rows) {
    let l = LANES;
    assert!(
        pixels.end <= rows.width && rows.width <= l,
        "bf16: a row of at most 16 pixels"
    );
    assert!(
        pixels.is_empty() || (pixels.len() - 1) * step + l <= src.len(),
        "bf16: transposed pixels inside the input"
    );
    assert!(
        rows.width == 0 || rows.at + (l - 1) * rows.pitch + rows.width <= dst.len(),
        "bf16: transposed rows inside the output"
    );
    #[cfg(target_arch = "x86_64")]
    if super::bf16::available() && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the instructions (checked just above); every pixel read and
        // every row written lies inside its slice (asserted above).
        unsafe { x86::transpose_to_rows(src.as_ptr(), step, pixels, dst.as_mut_ptr(), rows) };
        return;
    }
    transpose_to_rows_naive((src, step), pixels, dst, rows);
}

/// [`transpose_to_rows`] one value at a time: its twin in the tests, and the path of
/// other CPUs.
fn transpose_to_rows_naive((src, step): (&[f32], usize), pixels: Range<usize>, dst: &mut [u16], rows: Rows) {
    for ch in 0..LANES {
        for p in 0..rows.width {
            dst[rows.at + ch * rows.pitch + p] = if pixels.contains(&p) {
                to_bf16(src[(p - pixels.start) * step + ch])
            } else {
                0
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::bf16_filter_grad::x86::transpose16;
    use super::Rows;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// [`super::transpose_to_rows`] in registers: the pixels loaded as vectors (zero
    /// outside `pixels`), transposed ([`transpose16`]), two channels converted at a time,
    /// each row stored under a mask of `width` values.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX-512BW and AVX512_BF16; pixel `p` in `pixels` is readable
    /// at `src + (p - pixels.start) * step`, 16 floats, and `width` values of each of the
    /// 16 rows are writable at `dst + at + ch * pitch`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn transpose_to_rows(
        src: *const f32,
        step: usize,
        pixels: Range<usize>,
        dst: *mut u16,
        rows: Rows,
    ) {
        // SAFETY (whole body): by the function's contract.
        unsafe {
            let mut v: [__m512; 16] = core::array::from_fn(|p| {
                if pixels.contains(&p) {
                    _mm512_loadu_ps(src.add((p - pixels.start) * step))
                } else {
                    _mm512_setzero_ps()
                }
            });
            transpose16(&mut v);
            let mask: __mmask16 = ((1u32 << rows.width) - 1) as __mmask16;
            for ch in (0..16).step_by(2) {
                let words = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(v[ch + 1], v[ch]));
                let at = dst.add(rows.at + ch * rows.pitch);
                _mm256_mask_storeu_epi16(at as *mut i16, mask, _mm512_castsi512_si256(words));
                let next = dst.add(rows.at + (ch + 1) * rows.pitch);
                _mm256_mask_storeu_epi16(next as *mut i16, mask, _mm512_extracti64x4_epi64::<1>(words));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocked::filter_grad::filter_grad_naive_with_block;
    use crate::kernels::test_util::{bf16_rounded, max_rel_err, random, random_blocked, square_conv};
    use crate::rng::Rng;

    /// The tiles and the naive twin against the f32 backward-filter of the bf16-rounded
    /// values (exact products, sums in another order), added to a gradient already there:
    /// ResNet-20's 3x3 layers at both strides, ResNet-50's strided 3x3, odd block counts
    /// (padding channel rows, a lone output block), odd sizes (an odd phase width rounded
    /// up), a 1x1 strided projection and a 1x1 at 7x7, a 5x5 unpadded kernel, inputs of 1
    /// and 2 pixels (stride 2 and 3), a chunk longer than one kernel call, an image cut
    /// into bands, and a batch in two chunks of several images.
    #[test]
    fn backward_filter_matches_the_f32_kernel_on_bf16_values() {
        let mut rng = Rng::new(31);
        for (g, tiles_only) in [
            (square_conv(2, 16, 32, 32, 16, 3, 1, 1), false),
            (square_conv(2, 16, 32, 32, 32, 3, 2, 1), false),
            (square_conv(1, 64, 8, 8, 64, 3, 1, 1), false),
            (square_conv(1, 64, 14, 14, 128, 3, 2, 1), false),
            (square_conv(2, 48, 9, 9, 40, 3, 1, 1), false),
            (square_conv(1, 16, 11, 11, 16, 3, 2, 1), false),
            (square_conv(2, 32, 10, 10, 48, 1, 2, 0), false),
            (square_conv(2, 64, 7, 7, 32, 1, 1, 0), false),
            (square_conv(1, 16, 9, 9, 32, 5, 1, 0), false),
            (square_conv(2, 64, 1, 1, 32, 3, 2, 1), false),
            (square_conv(1, 16, 2, 2, 16, 3, 3, 1), false),
            // More than one kernel call a chunk (326 steps of 32 positions).
            (square_conv(1, 16, 100, 100, 16, 3, 1, 1), true),
            // An image cut into two bands (9604 positions against a chunk of 6144).
            (square_conv(1, 64, 96, 96, 64, 3, 1, 1), true),
            // Chunks of five images (64 positions of 4 KB each against 1.5 MB): two a task.
            (square_conv(16, 512, 14, 14, 16, 3, 2, 1), true),
        ] {
            let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
            let (x, dy) = (random_blocked(&mut rng, xs), random_blocked(&mut rng, ys));
            let start = random(&mut rng, g.out_channels * g.in_channels * g.kernel_h * g.kernel_w);
            let mut grad = vec![0.0; start.len()];
            filter_grad_naive_with_block(&g, &bf16_rounded(&x), LANES, &bf16_rounded(&dy), LANES, &mut grad);
            let want: Vec<f32> = start.iter().zip(&grad).map(|(a, b)| a + b).collect();
            if amx::available() {
                let mut fast = start.clone();
                filter_grad_on(&g, &x, &dy, &mut fast, true);
                assert!(
                    max_rel_err(&fast, &want) < 1e-5,
                    "tiles {g:?}: {}",
                    max_rel_err(&fast, &want)
                );
            }
            if !tiles_only {
                let mut naive = start.clone();
                filter_grad_on(&g, &x, &dy, &mut naive, false);
                assert!(
                    max_rel_err(&naive, &want) < 1e-5,
                    "naive {g:?}: {}",
                    max_rel_err(&naive, &want)
                );
            }
        }
    }

    /// The vector transpose against its twin: full and partial rows, pixels missing at
    /// either end, a strided source, no pixels at all.
    #[test]
    fn transposed_rows_match_the_twin() {
        let mut rng = Rng::new(5);
        let src = random(&mut rng, 40 * LANES);
        for (pixels, width, step) in [
            (0..16, 16, 16),
            (1..16, 16, 16),
            (0..5, 7, 32),
            (3..9, 12, 16),
            (0..0, 10, 16),
        ] {
            let rows = Rows {
                at: 3,
                pitch: 21,
                width,
            };
            let (mut fast, mut naive) = (vec![7u16; 400], vec![7u16; 400]);
            transpose_to_rows((&src, step), pixels.clone(), &mut fast, rows);
            transpose_to_rows_naive((&src, step), pixels.clone(), &mut naive, rows);
            assert_eq!(fast, naive, "{pixels:?} width {width} step {step}");
        }
    }
}
