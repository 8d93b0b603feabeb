//! The bf16 direct convolution on AMX tiles (`--precision bf16`): any kernel, stride and
//! padding, blocked input and output of 16 lanes, products of bf16 inputs and weights
//! summed in f32, as PyTorch's CPU autocast runs its convolutions.
//!
//! # Taps as offsets
//! A task rounds a band of its image's input rows to bf16 once, into a zero-padded
//! polyphase copy: for stride `s`, `s x s` phase planes `[row % s][column % s]` of
//! `[row / s][column / s]` pixels (one plane at stride 1), each pixel a tile row
//! ([`amx::Depth`]: 32 input channels where the blocks pair up, else 16). Output
//! positions are numbered `q = oy * wq + ox` with `wq` the phase planes' width, so tap
//! `(ky, kx)` reads pixel `q + (ky / s) wq + kx / s` of phase `(ky % s, kx % s)`: 32
//! consecutive positions of one tap are 32 consecutive tile rows, one tile load from one
//! offset. A step adds every tap and depth plane (the gathered offsets,
//! `amx::Tiles::gathered_step`) for 32 positions x 2 output blocks, with no im2col
//! copy. The positions of the padding columns (`ox >= out_w`) read across into the next
//! row and are computed and thrown away: `(kw - 1) / s` of `wq` (2 of 58 on ResNet-50's
//! first 3x3 layers, 2 of 9 on its last; 1 of 29 on its first strided one).
//!
//! Without AMX [`direct`] runs [`direct_naive`], the twin the tests hold it to.

use super::amx::{self, Depth, Spill, Taps, Tiles};
use super::bf16::{convert_rows, from_bf16, pack_tile, scratch_u16, to_bf16, LANES, V16};
use super::moments::{Gather, TaskGather};
use super::BlockedEpilogue;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::with_scratch;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;
use std::ops::Range;

/// Bytes of one task's padded input band: inside the L2 beside one pair of output
/// blocks' weights.
const BAND_BYTES: usize = 128 << 10;

/// Taps x depth planes given to one kernel call; longer reductions continue from the
/// spilled sums.
const OFFSETS_PER_CALL: usize = 256;

/// Length of [`pack_direct`]'s output for `g` (`flipped`: its stride-1 backward-data).
pub fn direct_len(g: &ConvGeometry, flipped: bool) -> usize {
    let (c, k) = if flipped {
        (g.out_channels, g.in_channels)
    } else {
        (g.in_channels, g.out_channels)
    };
    k.next_multiple_of(LANES) * g.kernel_h * g.kernel_w * c.next_multiple_of(LANES)
}

/// Packs the OIHW weights of `g` (`weight[k][c][ky][kx]`) for [`direct`]:
/// `[output block][tap][input channel / 2][lane][2]`, zero-padded to whole blocks, so the
/// weight tiles of one output block follow each other in the order the kernel reads
/// them. `flipped` packs the convolution that computes `g`'s backward-data at stride 1
/// ([`super::data_grad::as_forward`]): from `k` channels to `c`, the kernel turned by
/// 180 degrees, `w'[c][k][ky][kx] = w[k][c][kh - 1 - ky][kw - 1 - kx]`.
pub fn pack_direct(weight: &[f32], g: &ConvGeometry, flipped: bool, out: &mut [u16]) {
    let (c, k, kh, kw) = (g.in_channels, g.out_channels, g.kernel_h, g.kernel_w);
    let (ci_n, co_n) = if flipped { (k, c) } else { (c, k) };
    let (l, cp) = (LANES, ci_n.next_multiple_of(LANES));
    assert_eq!(weight.len(), k * c * kh * kw, "bf16 direct: weights length");
    assert_eq!(out.len(), direct_len(g, flipped), "bf16 direct: packed weights length");
    out.par_chunks_exact_mut(kh * kw * cp * l)
        .enumerate()
        .for_each(|(ob, block)| {
            for (tap, tile) in block.chunks_exact_mut(cp * l).enumerate() {
                let (ky, kx) = (tap / kw, tap % kw);
                pack_tile(tile, |lane, i| {
                    let o = ob * l + lane;
                    match (o < co_n && i < ci_n, flipped) {
                        (false, _) => 0.0,
                        (true, false) => weight[((o * c + i) * kh + ky) * kw + kx],
                        (true, true) => weight[((i * c + o) * kh + kh - 1 - ky) * kw + kw - 1 - kx],
                    }
                });
            }
        });
}

/// `out = conv(input)` for `g` with weights from [`pack_direct`] (unflipped, for `g`),
/// the products in bf16 summed in f32; input and output blocked in 16 lanes, every
/// output value written (padding channels zero). On AMX tiles where the CPU has them,
/// else [`direct_naive`].
pub fn direct(g: &ConvGeometry, input: &[f32], w16: &[u16], out: &mut [f32]) {
    direct_with(g, input, w16, &BlockedEpilogue::default(), out, None);
}

/// [`direct`] with the epilogue `ep` applied as each output vector is stored, and the
/// batch-norm sums of `gather` taken from the stored values while they are in cache.
pub fn direct_with(
    g: &ConvGeometry,
    input: &[f32],
    w16: &[u16],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Option<Gather>,
) {
    direct_on(g, input, w16, (ep, out, gather), amx::available());
}

/// [`direct_with`] on the tiles when `tiles`, else naive: the tests run both on AMX CPUs.
pub(crate) fn direct_on(
    g: &ConvGeometry,
    input: &[f32],
    w16: &[u16],
    (ep, out, gather): (&BlockedEpilogue, &mut [f32], Option<Gather>),
    tiles: bool,
) {
    check(g, input, w16, out);
    if tiles {
        direct_on_tiles(g, input, w16, ep, out, gather);
    } else {
        direct_naive_with(g, input, w16, ep, out, gather);
    }
}

fn check(g: &ConvGeometry, input: &[f32], w16: &[u16], out: &[f32]) {
    let xs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
    assert_eq!(input.len(), xs.len(), "bf16 direct: input length");
    assert_eq!(out.len(), ys.len(), "bf16 direct: output length");
    assert_eq!(w16.len(), direct_len(g, false), "bf16 direct: weights length");
}

/// [`direct`] one value at a time: `sum over tap, c of bf16(w) bf16(x)` in f32, the
/// pairs of input channels added odd product first, as `tdpbf16ps` and `vdpbf16ps` do.
pub fn direct_naive(g: &ConvGeometry, input: &[f32], w16: &[u16], out: &mut [f32]) {
    check(g, input, w16, out);
    let l = LANES;
    let (icb, ocb) = (g.in_channels.div_ceil(l), g.out_channels.div_ceil(l));
    let (kh, kw, cp) = (g.kernel_h, g.kernel_w, icb * l);
    let pixel = |n: usize, b: usize, iy: usize, ix: usize| ((n * icb + b) * g.in_h + iy) * g.in_w + ix;
    for n in 0..g.batch {
        for ob in 0..ocb {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    let at = (((n * ocb + ob) * g.out_h + oy) * g.out_w + ox) * l;
                    for lane in 0..l {
                        let mut acc = 0f32;
                        for tap in 0..kh * kw {
                            let iy = (oy * g.stride + tap / kw).checked_sub(g.pad).filter(|&y| y < g.in_h);
                            let ix = (ox * g.stride + tap % kw).checked_sub(g.pad).filter(|&x| x < g.in_w);
                            let (Some(iy), Some(ix)) = (iy, ix) else { continue };
                            let w = &w16[((ob * kh * kw + tap) * cp) * l..];
                            for p in 0..cp / 2 {
                                let x = |i: usize| to_bf16(input[pixel(n, i / l, iy, ix) * l + i % l]);
                                let (w0, w1) = (w[(p * l + lane) * 2], w[(p * l + lane) * 2 + 1]);
                                acc =
                                    acc + from_bf16(w1) * from_bf16(x(2 * p + 1)) + from_bf16(w0) * from_bf16(x(2 * p));
                            }
                        }
                        out[at + lane] = acc;
                    }
                }
            }
        }
    }
}

/// [`direct_naive`] then the epilogue and the gather, each over the whole output: the
/// path of CPUs without AMX.
fn direct_naive_with(
    g: &ConvGeometry,
    input: &[f32],
    w16: &[u16],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Option<Gather>,
) {
    let mut sums = vec![0.0; out.len()];
    direct_naive(g, input, w16, &mut sums);
    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
    store_sums(ys, &sums, ep, out, gather);
}

/// Stores `sums` (blocked as `shape`) into `out` through `ep`, then gathers `gather`'s
/// sums of what it stored, as one task: the naive paths' epilogue.
pub(crate) fn store_sums(shape: Blocked, sums: &[f32], ep: &BlockedEpilogue, out: &mut [f32], gather: Option<Gather>) {
    let records = gather.map(|m| TaskGather::new(m, 1, shape.padded_channels(), shape.len()));
    let shared = SharedOut::new(out);
    let pixels = shape.h * shape.w;
    for (i, chunk) in sums.chunks_exact(LANES).enumerate() {
        let block = i / pixels % shape.blocks();
        ep.store::<V16>(V16::load(chunk), ep.bias_of::<V16>(block), i * LANES, &shared);
    }
    if let Some(records) = records {
        for n in 0..shape.n {
            for b in 0..shape.blocks() {
                records.add_run::<V16>(0, &shared, shape.at(n, b, 0, 0), pixels, b);
            }
        }
        records.finish();
    }
}

/// How a call cuts its work: bands of `rows` output rows of one image, each task one
/// band, with the padded polyphase geometry the bands share (see the module's doc).
struct Bands {
    depth: Depth,
    /// Depth planes of the input (input channels / `depth.row()`).
    planes: usize,
    /// Width of a phase plane: the padded input width over the stride, rounded up.
    wq: usize,
    rows: usize,
    per_image: usize,
}

impl Bands {
    fn new(g: &ConvGeometry) -> Bands {
        let icb = g.in_channels.div_ceil(LANES);
        let depth = if icb.is_multiple_of(2) {
            Depth::Full
        } else {
            Depth::Half
        };
        let planes = icb * LANES / depth.row();
        let wq = (g.in_w + 2 * g.pad).div_ceil(g.stride);
        // One row of every phase plane: `stride` input rows.
        let row_bytes = g.stride * g.stride * wq * icb * LANES * 2;
        // The most output rows whose input rows fit the band, then fewer where the
        // batch alone gives the threads too few tasks.
        let fit = (BAND_BYTES / row_bytes.max(1)).saturating_sub((g.kernel_h - 1) / g.stride);
        let want = (2 * rayon::current_num_threads()).div_ceil(g.batch.max(1));
        let rows = fit.min(g.out_h.div_ceil(want)).clamp(1, g.out_h.max(1));
        Bands {
            depth,
            planes,
            wq,
            rows,
            per_image: g.out_h.div_ceil(rows),
        }
    }

    /// Rows of a phase plane for a band of `rows` output rows.
    fn phase_rows(&self, g: &ConvGeometry, rows: usize) -> usize {
        rows + (g.kernel_h - 1) / g.stride
    }

    /// Pixels of one phase plane for a band of `rows` output rows: its rows, and past
    /// them what the last step's tiles read (the positions past the band's end).
    fn phase_pixels(&self, g: &ConvGeometry, rows: usize) -> usize {
        let s = g.stride;
        let steps = (rows * self.wq).next_multiple_of(amx::STEP_PIXELS);
        let reach = steps + (g.kernel_h - 1) / s * self.wq + (g.kernel_w - 1) / s;
        (self.phase_rows(g, rows) * self.wq).max(reach)
    }
}

/// [`direct`] on the tiles (see the module's doc).
fn direct_on_tiles(
    g: &ConvGeometry,
    input: &[f32],
    w16: &[u16],
    ep: &BlockedEpilogue,
    out: &mut [f32],
    gather: Option<Gather>,
) {
    let l = LANES;
    let (icb, ocb) = (g.in_channels.div_ceil(l), g.out_channels.div_ceil(l));
    let bands = Bands::new(g);
    let tasks = g.batch * bands.per_image;
    let records = gather.map(|m| TaskGather::new(m, tasks, ocb * l, out.len()));
    if g.batch == 0 || g.out_h == 0 || g.out_w == 0 || ocb == 0 {
        return;
    }
    let Bands { depth, planes, wq, .. } = bands;
    let (taps, row, s) = (g.kernel_h * g.kernel_w, depth.row(), g.stride);
    let steps_k = taps * planes;
    let w_block = steps_k * depth.weight_tile();
    let in_px = g.in_h * g.in_w;
    let shared = SharedOut::new(out);
    split::for_each_task(tasks, |task| {
        let (n, band) = (task / bands.per_image, task % bands.per_image);
        let oy0 = band * bands.rows;
        let rows = bands.rows.min(g.out_h - oy0);
        let (phase_rows, phase) = (bands.phase_rows(g, rows), bands.phase_pixels(g, rows));
        let len = planes * s * s * phase * row;
        with_scratch(len.div_ceil(2), |scratch| {
            let buf = scratch_u16(scratch, len);
            for b in 0..icb {
                let block = &input[(n * icb + b) * in_px * l..(n * icb + b + 1) * in_px * l];
                // Block `b`'s 16 channels, at its depth plane and its half of the row.
                let (plane, half) = (b * l / row, b * l % row);
                for (py, px) in (0..s).flat_map(|py| (0..s).map(move |px| (py, px))) {
                    let dst = &mut buf[((plane * s + py) * s + px) * phase * row + half..];
                    // Padded columns `px + s j`: input columns `px + s j - pad`.
                    let j_lo = g.pad.saturating_sub(px).div_ceil(s).min(wq);
                    let j_hi = (g.in_w + g.pad).saturating_sub(px).div_ceil(s).clamp(j_lo, wq);
                    for r in 0..phase_rows {
                        let line = &mut dst[r * wq * row..];
                        match (oy0 * s + r * s + py).checked_sub(g.pad).filter(|&iy| iy < g.in_h) {
                            Some(iy) if j_hi > j_lo => {
                                zero_rows(line, 0..j_lo, row);
                                zero_rows(line, j_hi..wq, row);
                                let ix = px + s * j_lo - g.pad;
                                let src = &block[(iy * g.in_w + ix) * l..];
                                convert_rows((src, s * l), j_hi - j_lo, (&mut line[j_lo * row..], row));
                            }
                            _ => zero_rows(line, 0..wq, row),
                        }
                    }
                    zero_rows(dst, phase_rows * wq..phase, row);
                }
            }
            let mut tiles = Tiles::new(depth);
            let mut spill = Spill::default();
            // Where step `k` (tap-major, then depth plane) reads, from the step's first
            // position.
            let offset = |k: usize| {
                let (tap, plane) = (k / planes, k % planes);
                let (ky, kx) = (tap / g.kernel_w, tap % g.kernel_w);
                let at_phase = ((plane * s + ky % s) * s + kx % s) * phase;
                (at_phase + ky / s * wq + kx / s) * row
            };
            let mut bytes = [0usize; OFFSETS_PER_CALL];
            let mut taps = Taps::new((0..steps_k).map(offset), &mut bytes);
            let chunked = steps_k > OFFSETS_PER_CALL;
            let q_end = rows * wq;
            for cb in (0..ocb).step_by(2) {
                let blocks = (ocb - cb).min(2);
                let w = &w16[cb * w_block..];
                for q0 in (0..q_end).step_by(amx::STEP_PIXELS) {
                    for k0 in (0..steps_k).step_by(OFFSETS_PER_CALL) {
                        if chunked {
                            let kn = (steps_k - k0).min(OFFSETS_PER_CALL);
                            taps = Taps::new((k0..k0 + kn).map(offset), &mut bytes);
                        }
                        let w = &w[k0 * depth.weight_tile()..];
                        tiles.gathered_step((buf, q0 * row, row), &taps, (w, w_block, blocks), k0 > 0, &mut spill);
                    }
                    for p in 0..amx::STEP_PIXELS.min(q_end - q0) {
                        let (oy, ox) = (oy0 + (q0 + p) / wq, (q0 + p) % wq);
                        if ox >= g.out_w {
                            continue;
                        }
                        for j in 0..blocks {
                            let at = (((n * ocb + cb + j) * g.out_h + oy) * g.out_w + ox) * l;
                            let sum = V16::load(spill.row(j, p));
                            ep.store::<V16>(sum, ep.bias_of::<V16>(cb + j), at, &shared);
                        }
                    }
                }
                if let Some(records) = &records {
                    for j in 0..blocks {
                        let at = ((n * ocb + cb + j) * g.out_h + oy0) * g.out_w * l;
                        records.add_run::<V16>(task, &shared, at, rows * g.out_w, cb + j);
                    }
                }
            }
        });
    });
    if let Some(records) = records {
        records.finish();
    }
}

/// Zeroes 16 values at the start of each of the rows `rows` (`step` values apart) of
/// `dst`.
pub(crate) fn zero_rows(dst: &mut [u16], rows: Range<usize>, step: usize) {
    for r in rows {
        dst[r * step..r * step + LANES].fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{max_rel_err, random, random_blocked, square_conv};
    use crate::rng::Rng;

    /// A blocked input of `g` with zero padding channels.
    fn blocked_input(g: &ConvGeometry, rng: &mut Rng) -> Vec<f32> {
        random_blocked(rng, Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES))
    }

    /// f64 sums of the bf16 values: `out[n][k][oy][ox]` blocked, for `g` and OIHW
    /// weights (`flipped`: `g`'s stride-1 backward-data, as [`pack_direct`] packs it).
    fn reference(g: &ConvGeometry, x: &[f32], weight: &[f32], flipped: bool) -> Vec<f32> {
        let (run, src) = match flipped {
            false => (*g, g),
            true => (super::super::data_grad::as_forward(g).unwrap(), g),
        };
        let l = LANES;
        let (icb, ocb) = (run.in_channels.div_ceil(l), run.out_channels.div_ceil(l));
        let (kh, kw) = (run.kernel_h, run.kernel_w);
        let ys = Blocked::new(run.batch, run.out_channels, run.out_h, run.out_w, l);
        let mut y = vec![0.0; ys.len()];
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        for n in 0..run.batch {
            for o in 0..run.out_channels {
                for oy in 0..run.out_h {
                    for ox in 0..run.out_w {
                        let mut acc = 0f64;
                        for i in 0..run.in_channels {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * run.stride + ky).checked_sub(run.pad).filter(|&v| v < run.in_h);
                                    let ix = (ox * run.stride + kx).checked_sub(run.pad).filter(|&v| v < run.in_w);
                                    let (Some(iy), Some(ix)) = (iy, ix) else { continue };
                                    let w = match flipped {
                                        false => weight[((o * src.in_channels + i) * kh + ky) * kw + kx],
                                        true => {
                                            weight[((i * src.in_channels + o) * kh + kh - 1 - ky) * kw + kw - 1 - kx]
                                        }
                                    };
                                    let xi = (((n * icb + i / l) * run.in_h + iy) * run.in_w + ix) * l + i % l;
                                    acc += r(w) * r(x[xi]);
                                }
                            }
                        }
                        y[(((n * ocb + o / l) * run.out_h + oy) * run.out_w + ox) * l + o % l] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn shapes() -> Vec<ConvGeometry> {
        vec![
            // ResNet-20's three widths at small sizes, both strides.
            square_conv(2, 16, 8, 8, 16, 3, 1, 1),
            square_conv(1, 16, 9, 9, 32, 3, 2, 1),
            square_conv(2, 32, 6, 6, 32, 3, 1, 1),
            square_conv(1, 64, 5, 5, 64, 3, 1, 1),
            // ResNet-50's strided 3x3 and an odd block count with ragged channels.
            square_conv(1, 128, 7, 7, 128, 3, 2, 1),
            square_conv(1, 40, 7, 7, 24, 3, 1, 1),
            // The stem's kernel, three channels; a 1x1 strided; a 5x5 unpadded.
            square_conv(1, 3, 13, 13, 20, 7, 2, 3),
            square_conv(1, 48, 8, 8, 40, 1, 2, 0),
            square_conv(1, 32, 9, 9, 16, 5, 1, 0),
            // 29 blocks at half depth: 261 taps x planes, more than one kernel call takes.
            square_conv(1, 29 * 16, 4, 4, 16, 3, 1, 1),
            // Whole steps that end with the band: the second block's half of the last row.
            square_conv(4, 32, 8, 8, 16, 1, 1, 0),
        ]
    }

    #[test]
    fn direct_matches_f64_sums_of_the_bf16_values() {
        let mut rng = Rng::new(11);
        for g in shapes() {
            let x = blocked_input(&g, &mut rng);
            let weight = random(&mut rng, g.out_channels * g.in_channels * g.kernel_h * g.kernel_w);
            let mut w16 = vec![0; direct_len(&g, false)];
            pack_direct(&weight, &g, false, &mut w16);
            let want = reference(&g, &x, &weight, false);
            let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
            let (mut fast, mut naive) = (vec![f32::NAN; ys.len()], vec![f32::NAN; ys.len()]);
            direct(&g, &x, &w16, &mut fast);
            direct_naive(&g, &x, &w16, &mut naive);
            // f32 sums of up to a few thousand products.
            assert!(max_rel_err(&naive, &want) < 1e-5, "naive {g:?}");
            assert!(max_rel_err(&fast, &want) < 1e-5, "tiles {g:?}");
        }
    }

    #[test]
    fn flipped_weights_give_the_stride_1_backward_data() {
        let mut rng = Rng::new(12);
        for g in [
            square_conv(2, 16, 8, 8, 32, 3, 1, 1),
            square_conv(1, 64, 6, 6, 48, 3, 1, 1),
        ] {
            let t = super::super::data_grad::as_forward(&g).unwrap();
            let dy = blocked_input(&t, &mut rng);
            let weight = random(&mut rng, g.out_channels * g.in_channels * 9);
            let mut w16 = vec![0; direct_len(&g, true)];
            pack_direct(&weight, &g, true, &mut w16);
            assert_eq!(w16.len(), direct_len(&t, false));
            let want = reference(&g, &dy, &weight, true);
            let mut dx = vec![f32::NAN; want.len()];
            direct(&t, &dy, &w16, &mut dx);
            assert!(max_rel_err(&dx, &want) < 1e-5, "{g:?}");
        }
    }

    /// The epilogue and the batch-norm sums the bf16 kernels take in training (the tile
    /// kernels and the naive paths of CPUs without AMX), against separate passes over the
    /// plain call's output: the epilogue's scalar twin value by value, the moments and
    /// gradient sums of the stored output (ragged bands and steps, stride 2, an odd and an
    /// even block count).
    #[test]
    fn epilogue_and_gathered_sums_match_separate_passes() {
        use super::super::bf16::{pack_pointwise, pointwise_len, pointwise_with};
        use super::super::bf16_data_grad::{data_grad_strided_on, pack_data_grad_strided};
        use super::super::moments::{assert_grad_sums, GradSums, Moments};
        use super::super::norm::{self, FusedRelu};
        use super::super::Residual;
        #[derive(Clone, Copy, Debug)]
        enum Kernel {
            Pointwise,
            Direct { tiles: bool },
            StridedDataGrad { tiles: bool },
        }
        let mut rng = Rng::new(13);
        for (g, kernel) in [
            (square_conv(2, 32, 7, 7, 48, 3, 1, 1), Kernel::Direct { tiles: true }),
            (square_conv(1, 16, 9, 9, 32, 3, 2, 1), Kernel::Direct { tiles: true }),
            (square_conv(1, 16, 9, 9, 32, 3, 2, 1), Kernel::Direct { tiles: false }),
            (square_conv(2, 64, 6, 6, 40, 1, 1, 0), Kernel::Pointwise),
            (
                square_conv(2, 32, 9, 9, 16, 3, 2, 1),
                Kernel::StridedDataGrad { tiles: true },
            ),
            (
                square_conv(1, 48, 8, 8, 32, 1, 2, 0),
                Kernel::StridedDataGrad { tiles: false },
            ),
        ] {
            let tiles = matches!(
                kernel,
                Kernel::Direct { tiles: true } | Kernel::StridedDataGrad { tiles: true }
            );
            if tiles && !amx::available() {
                continue;
            }
            let weight = random(&mut rng, g.out_channels * g.in_channels * g.kernel_h * g.kernel_w);
            let (x, ys, w16) = match kernel {
                Kernel::Pointwise => {
                    let mut w16 = vec![0; pointwise_len(g.in_channels, g.out_channels)];
                    pack_pointwise(&weight, g.in_channels, g.out_channels, false, &mut w16);
                    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
                    (blocked_input(&g, &mut rng), ys, w16)
                }
                Kernel::Direct { .. } => {
                    let mut w16 = vec![0; direct_len(&g, false)];
                    pack_direct(&weight, &g, false, &mut w16);
                    let ys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
                    (blocked_input(&g, &mut rng), ys, w16)
                }
                Kernel::StridedDataGrad { .. } => {
                    let mut w16 = vec![0; direct_len(&g, true)];
                    pack_data_grad_strided(&weight, &g, &mut w16);
                    let dys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
                    let dxs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
                    (random(&mut rng, dys.len()), dxs, w16)
                }
            };
            let run = |ep: &BlockedEpilogue, out: &mut [f32], gather: Option<Gather>| match kernel {
                Kernel::Pointwise => pointwise_with(&g, &x, &w16, ep, out, gather),
                Kernel::Direct { tiles } => direct_on(&g, &x, &w16, (ep, out, gather), tiles),
                Kernel::StridedDataGrad { tiles } => data_grad_strided_on(&g, &x, &w16, (ep, out, gather), tiles),
            };
            let (len, kp) = (ys.len(), ys.padded_channels());
            let mut plain = vec![f32::NAN; len];
            run(&BlockedEpilogue::default(), &mut plain, None);

            let (bias, residual, relu_output) = (random(&mut rng, kp), random(&mut rng, len), random(&mut rng, len));
            let ep = BlockedEpilogue {
                bias: Some(&bias),
                residual: Residual::From(&residual),
                relu: true,
                relu_output: Some(&relu_output),
            };
            let (mut mean, mut var) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
            let mut fused = vec![f32::NAN; len];
            let moments = Gather::Moments(Moments {
                partials: &mut Vec::new(),
                mean: &mut mean,
                var: &mut var,
            });
            run(&ep, &mut fused, Some(moments));
            for (i, (&got, &sum)) in fused.iter().zip(&plain).enumerate() {
                let channel = i / (ys.h * ys.w * LANES) % ys.blocks() * LANES + i % LANES;
                let want = ep.apply_scalar(sum, channel, i, f32::NAN);
                assert!(got.to_bits() == want.to_bits(), "{g:?} at {i}: {got} against {want}");
            }
            let (mut want_mean, mut want_var) = (vec![0f64; kp], vec![0f64; kp]);
            norm::moments::<V16>(ys, &fused, &mut Vec::new(), &mut want_mean, &mut want_var);
            for k in 0..kp {
                let scale = want_mean[k].abs().max(want_var[k].sqrt()).max(1e-3);
                assert!(
                    (mean[k] - want_mean[k]).abs() <= 1e-5 * scale
                        && (var[k] - want_var[k]).abs() <= 1e-5 * scale * scale,
                    "{g:?} channel {k}: {} {} against {} {}",
                    mean[k],
                    var[k],
                    want_mean[k],
                    want_var[k]
                );
            }

            let (z, bn_mean) = (random(&mut rng, len), random(&mut rng, kp));
            let (scale, shift) = (random(&mut rng, kp), random(&mut rng, kp));
            let relu = Some(FusedRelu {
                scale: &scale,
                shift: &shift,
            });
            let (mut sum_dy, mut sum_dy_zc) = (vec![f64::NAN; kp], vec![f64::NAN; kp]);
            let mut dy = vec![f32::NAN; len];
            let sums = Gather::GradSums(GradSums {
                z: &z,
                mean: &bn_mean,
                relu,
                partials: &mut Vec::new(),
                sum_dy: &mut sum_dy,
                sum_dy_zc: &mut sum_dy_zc,
            });
            run(&BlockedEpilogue::default(), &mut dy, Some(sums));
            assert!(dy == plain, "{g:?}: the gathering call stored other values");
            assert_grad_sums::<V16>(ys, &dy, (&z, &bn_mean, relu), (&sum_dy, &sum_dy_zc), &format!("{g:?}"));
        }
    }
}
