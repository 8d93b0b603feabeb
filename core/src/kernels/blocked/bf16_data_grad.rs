//! The backward-data of strided convolutions with bf16 products on AMX tiles
//! (`--precision bf16`): `dx = conv^T(dy, w)` for a convolution of stride `s > 1`, as
//! `s x s` stride-1 convolutions of `dy`, one per phase of `dx` (polyphase).
//!
//! # Phases
//! `dx[s i + a][s j + b] = sum over k and the taps (ky, kx) with ky = a + p (mod s) and
//! kx = b + p (mod s) of w[k][c][ky][kx] dy[k][i + ey][j + ex]`, `ey = (a + p - ky) / s`,
//! `ex = (b + p - kx) / s`: each phase `(a, b)` reads `dy` at small fixed offsets, a
//! stride-1 convolution with its share of the taps (one tap of a 3x3 stride-2 kernel for
//! phase (0, 0), two, two and four for the others; a 1x1 stride-2 kernel gives phase
//! (0, 0) its one tap and the other three none, whose `dx` is zero). A task rounds a band
//! of `dy` rows to bf16 once, zero-padded by the farthest offsets, and runs every phase
//! from it as [`super::bf16_direct`] runs a convolution: each tap an offset into the band,
//! 32 positions `q = (i - i0) wq + j` a step, 2 `dx` blocks at a time, the positions of
//! the padding columns computed and thrown away, each result stored at its place in `dx`
//! through the epilogue.
//!
//! Without AMX [`data_grad_strided`] runs [`data_grad_strided_naive`], the twin the tests
//! hold it to.

use super::amx::{self, Depth, Spill, Taps, Tiles};
use super::bf16::{convert_rows, from_bf16, pack_tile, scratch_u16, to_bf16, LANES, V16};
use super::bf16_direct::{direct_len, store_sums, zero_rows};
use super::moments::{Gather, TaskGather};
use super::BlockedEpilogue;
use crate::kernels::im2col::ConvGeometry;
use crate::kernels::scratch::with_scratch;
use crate::kernels::shared_out::SharedOut;
use crate::kernels::split;
use crate::layout::Blocked;
use crate::simd::Vector;
use rayon::prelude::*;

/// Bytes of one task's padded `dy` band.
const BAND_BYTES: usize = 128 << 10;

/// Taps x depth planes given to one kernel call; longer reductions continue from the
/// spilled sums.
const OFFSETS_PER_CALL: usize = 256;

/// The taps of `dx`'s phase `(a, b)` of the convolution `g`, row-major: how many, and
/// tap `t`'s `(ky, kx)` (`ky = a + p (mod s)`, `kx = b + p (mod s)`).
#[derive(Clone, Copy, Debug)]
struct PhaseTaps {
    ky0: usize,
    kx0: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl PhaseTaps {
    fn new(g: &ConvGeometry, (a, b): (usize, usize)) -> PhaseTaps {
        let s = g.stride;
        let (ky0, kx0) = ((a + g.pad) % s, (b + g.pad) % s);
        PhaseTaps {
            ky0,
            kx0,
            rows: g.kernel_h.saturating_sub(ky0).div_ceil(s),
            cols: g.kernel_w.saturating_sub(kx0).div_ceil(s),
            stride: s,
        }
    }

    fn count(&self) -> usize {
        self.rows * self.cols
    }

    fn tap(&self, t: usize) -> (usize, usize) {
        (
            self.ky0 + self.stride * (t / self.cols),
            self.kx0 + self.stride * (t % self.cols),
        )
    }
}

/// The phases of `dx`, row-major, and their taps.
fn phases(g: &ConvGeometry) -> impl Iterator<Item = ((usize, usize), PhaseTaps)> + '_ {
    let s = g.stride;
    (0..s * s).map(move |i| {
        let phase = (i / s, i % s);
        (phase, PhaseTaps::new(g, phase))
    })
}

/// The offset of `dy` that tap `k` reads for `dx` phase `a`: `(a + p - k) / s`.
fn offset(a: usize, pad: usize, k: usize, s: usize) -> isize {
    (a as isize + pad as isize - k as isize) / s as isize
}

/// The smallest and largest offset of any phase along one axis (kernel size `k`).
fn offset_range(g: &ConvGeometry, k: usize) -> (isize, isize) {
    let s = g.stride;
    let all = (0..s).flat_map(|a| {
        (0..k)
            .filter(move |kk| (a + g.pad) % s == kk % s)
            .map(move |kk| (a, kk))
    });
    let e = all.map(|(a, kk)| offset(a, g.pad, kk, s));
    let (lo, hi) = e.fold((0isize, 0isize), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo, hi)
}

/// Packs the OIHW weights of `g` (`weight[k][c][ky][kx]`) for [`data_grad_strided`]: phase
/// after phase (row-major), `[dx block][tap of the phase][k / 2][lane][2]`, zero-padded to
/// whole blocks: [`direct_len`]`(g, true)` values.
pub fn pack_data_grad_strided(weight: &[f32], g: &ConvGeometry, out: &mut [u16]) {
    let (c, k, kh, kw) = (g.in_channels, g.out_channels, g.kernel_h, g.kernel_w);
    let (l, kp, ccb) = (LANES, k.next_multiple_of(LANES), c.div_ceil(LANES));
    assert_eq!(
        weight.len(),
        k * c * kh * kw,
        "bf16 strided backward-data: weights length"
    );
    assert_eq!(
        out.len(),
        direct_len(g, true),
        "bf16 strided backward-data: packed length"
    );
    let mut rest = out;
    for (_, taps) in phases(g) {
        let (part, tail) = rest.split_at_mut(ccb * taps.count() * kp * l);
        rest = tail;
        part.par_chunks_exact_mut((taps.count() * kp * l).max(1))
            .enumerate()
            .for_each(|(ob, block)| {
                for (t, tile) in block.chunks_exact_mut(kp * l).enumerate() {
                    let (ky, kx) = taps.tap(t);
                    pack_tile(tile, |lane, i| {
                        let o = ob * l + lane;
                        if o < c && i < k {
                            weight[((i * c + o) * kh + ky) * kw + kx]
                        } else {
                            0.0
                        }
                    });
                }
            });
    }
}

fn check(g: &ConvGeometry, dy: &[f32], w16: &[u16], dx: &[f32]) {
    assert!(
        g.stride > 1,
        "bf16 strided backward-data: stride 1 runs as a forward convolution"
    );
    let dys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
    let dxs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
    assert_eq!(dy.len(), dys.len(), "bf16 strided backward-data: dy length");
    assert_eq!(dx.len(), dxs.len(), "bf16 strided backward-data: dx length");
    assert_eq!(
        w16.len(),
        direct_len(g, true),
        "bf16 strided backward-data: weights length"
    );
}

/// `dx = conv^T(dy, w)` for the strided convolution `g` (forward geometry) with weights
/// from [`pack_data_grad_strided`], the products in bf16 summed in f32, `ep` applied as
/// each `dx` vector is stored (zeros included) and the batch-norm sums of `gather` taken
/// from `dx`; `dy` and `dx` blocked in 16 lanes, every `dx` value written. On AMX tiles
/// where the CPU has them, else [`data_grad_strided_naive`].
pub fn data_grad_strided(
    g: &ConvGeometry,
    dy: &[f32],
    w16: &[u16],
    ep: &BlockedEpilogue,
    dx: &mut [f32],
    gather: Option<Gather>,
) {
    data_grad_strided_on(g, dy, w16, (ep, dx, gather), amx::available());
}

/// [`data_grad_strided`] on the tiles when `tiles`, else naive: the tests run both on
/// AMX CPUs.
pub(crate) fn data_grad_strided_on(
    g: &ConvGeometry,
    dy: &[f32],
    w16: &[u16],
    (ep, dx, gather): (&BlockedEpilogue, &mut [f32], Option<Gather>),
    tiles: bool,
) {
    check(g, dy, w16, dx);
    if tiles {
        on_tiles(g, dy, w16, ep, dx, gather);
        return;
    }
    let mut sums = vec![0.0; dx.len()];
    data_grad_strided_naive(g, dy, w16, &mut sums);
    let dxs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
    store_sums(dxs, &sums, ep, dx, gather);
}

/// [`data_grad_strided`] one value at a time from the packed weights, pairs of `dy`
/// channels added odd product first as the instructions do.
pub fn data_grad_strided_naive(g: &ConvGeometry, dy: &[f32], w16: &[u16], dx: &mut [f32]) {
    check(g, dy, w16, dx);
    let (l, s) = (LANES, g.stride);
    let (kcb, ccb) = (g.out_channels.div_ceil(l), g.in_channels.div_ceil(l));
    let kp = kcb * l;
    let mut start = 0;
    for ((a, b), taps) in phases(g) {
        let n_taps = taps.count();
        for n in 0..g.batch {
            for ob in 0..ccb {
                for y in (a..g.in_h).step_by(s) {
                    for x in (b..g.in_w).step_by(s) {
                        let at = (((n * ccb + ob) * g.in_h + y) * g.in_w + x) * l;
                        for lane in 0..l {
                            let mut acc = 0f32;
                            for t in 0..n_taps {
                                let (ky, kx) = taps.tap(t);
                                let iy = (y / s) as isize + offset(a, g.pad, ky, s);
                                let ix = (x / s) as isize + offset(b, g.pad, kx, s);
                                if iy < 0 || ix < 0 || iy >= g.out_h as isize || ix >= g.out_w as isize {
                                    continue;
                                }
                                let (iy, ix) = (iy as usize, ix as usize);
                                let w = &w16[start + ((ob * n_taps + t) * kp) * l..];
                                let v = |i: usize| {
                                    to_bf16(dy[(((n * kcb + i / l) * g.out_h + iy) * g.out_w + ix) * l + i % l])
                                };
                                for p in 0..kp / 2 {
                                    let (w0, w1) = (w[(p * l + lane) * 2], w[(p * l + lane) * 2 + 1]);
                                    acc = acc
                                        + from_bf16(w1) * from_bf16(v(2 * p + 1))
                                        + from_bf16(w0) * from_bf16(v(2 * p));
                                }
                            }
                            dx[at + lane] = acc;
                        }
                    }
                }
            }
        }
        start += ccb * n_taps * kp * l;
    }
}

/// [`data_grad_strided`] on the tiles (see the module's doc).
fn on_tiles(g: &ConvGeometry, dy: &[f32], w16: &[u16], ep: &BlockedEpilogue, dx: &mut [f32], gather: Option<Gather>) {
    let (l, s) = (LANES, g.stride);
    let (kcb, ccb) = (g.out_channels.div_ceil(l), g.in_channels.div_ceil(l));
    let depth = if kcb.is_multiple_of(2) {
        Depth::Full
    } else {
        Depth::Half
    };
    let (row, planes) = (depth.row(), kcb * l / depth.row());
    let ((ey_lo, ey_hi), (ex_lo, ex_hi)) = (offset_range(g, g.kernel_h), offset_range(g, g.kernel_w));
    let (span_y, span_x) = ((ey_hi - ey_lo) as usize, (ex_hi - ex_lo) as usize);
    // Phase rows and columns: the most any phase has.
    let (grid_h, grid_w) = (g.in_h.div_ceil(s), g.in_w.div_ceil(s));
    let wq = grid_w.max(g.out_w) + span_x;
    let fit = (BAND_BYTES / (wq * kcb * l * 2).max(1)).saturating_sub(span_y).max(1);
    let want = (2 * rayon::current_num_threads()).div_ceil(g.batch.max(1));
    let rows = fit.min(grid_h.div_ceil(want)).clamp(1, grid_h.max(1));
    let per_image = grid_h.div_ceil(rows);
    let tasks = g.batch * per_image;
    let records = gather.map(|m| TaskGather::new(m, tasks, ccb * l, dx.len()));
    if g.batch == 0 || g.in_h == 0 || g.in_w == 0 || ccb == 0 {
        return;
    }
    let out_px = g.out_h * g.out_w;
    let shared = SharedOut::new(dx);
    split::for_each_task(tasks, |task| {
        let (n, band) = (task / per_image, task % per_image);
        let i0 = band * rows;
        let band_rows_q = rows.min(grid_h - i0);
        let q_end = band_rows_q * wq;
        let band_rows = band_rows_q + span_y;
        let pixels = (band_rows * wq).max(q_end.next_multiple_of(amx::STEP_PIXELS) + span_y * wq + span_x);
        let len = planes * pixels * row;
        with_scratch(len.div_ceil(2), |scratch| {
            let buf = scratch_u16(scratch, len);
            // Band row `r`, column `c` holds `dy` row `i0 + ey_lo + r`, column `ex_lo + c`.
            for b in 0..kcb {
                let block = &dy[(n * kcb + b) * out_px * l..(n * kcb + b + 1) * out_px * l];
                let dst = &mut buf[(b * l / row) * pixels * row + b * l % row..];
                let c_lo = (-ex_lo).max(0) as usize;
                let c_hi = ((g.out_w as isize - ex_lo).max(0) as usize).clamp(c_lo, wq);
                for r in 0..band_rows {
                    let line = &mut dst[r * wq * row..];
                    let y = (i0 + r) as isize + ey_lo;
                    if y < 0 || y >= g.out_h as isize || c_hi == c_lo {
                        zero_rows(line, 0..wq, row);
                        continue;
                    }
                    zero_rows(line, 0..c_lo, row);
                    zero_rows(line, c_hi..wq, row);
                    let x0 = (c_lo as isize + ex_lo) as usize;
                    let src = &block[(y as usize * g.out_w + x0) * l..];
                    convert_rows((src, l), c_hi - c_lo, (&mut line[c_lo * row..], row));
                }
                zero_rows(dst, band_rows * wq..pixels, row);
            }
            let mut tiles = Tiles::new(depth);
            let mut spill = Spill::default();
            let mut bytes = [0usize; OFFSETS_PER_CALL];
            for cb in (0..ccb).step_by(2) {
                let blocks = (ccb - cb).min(2);
                // Where the phase's packed weights start.
                let mut start = 0;
                for ((a, b), taps) in phases(g) {
                    let (rows_a, cols_b) = (
                        g.in_h.saturating_sub(a).div_ceil(s),
                        g.in_w.saturating_sub(b).div_ceil(s),
                    );
                    let steps_k = taps.count() * planes;
                    let w_block = steps_k * depth.weight_tile();
                    let phase_start = start;
                    start += ccb * w_block;
                    if steps_k == 0 {
                        // No tap reaches this phase: its `dx` is zero, through the epilogue.
                        for i in i0..(i0 + band_rows_q).min(rows_a) {
                            for j in 0..cols_b {
                                for jb in 0..blocks {
                                    let at = (((n * ccb + cb + jb) * g.in_h + s * i + a) * g.in_w + s * j + b) * l;
                                    ep.store::<V16>(V16::ZERO, ep.bias_of::<V16>(cb + jb), at, &shared);
                                }
                            }
                        }
                        continue;
                    }
                    let w = &w16[phase_start + cb * w_block..];
                    let offset_of = |k: usize| {
                        let ((ky, kx), plane) = (taps.tap(k / planes), k % planes);
                        let ey = (offset(a, g.pad, ky, s) - ey_lo) as usize;
                        let ex = (offset(b, g.pad, kx, s) - ex_lo) as usize;
                        (plane * pixels + ey * wq + ex) * row
                    };
                    for q0 in (0..q_end).step_by(amx::STEP_PIXELS) {
                        for k0 in (0..steps_k).step_by(OFFSETS_PER_CALL) {
                            let kn = (steps_k - k0).min(OFFSETS_PER_CALL);
                            let taps = Taps::new((k0..k0 + kn).map(offset_of), &mut bytes);
                            let w = &w[k0 * depth.weight_tile()..];
                            tiles.gathered_step((buf, q0 * row, row), &taps, (w, w_block, blocks), k0 > 0, &mut spill);
                        }
                        for p in 0..amx::STEP_PIXELS.min(q_end - q0) {
                            let (i, j) = (i0 + (q0 + p) / wq, (q0 + p) % wq);
                            if i >= rows_a || j >= cols_b {
                                continue;
                            }
                            let (y, x) = (s * i + a, s * j + b);
                            for jb in 0..blocks {
                                let at = (((n * ccb + cb + jb) * g.in_h + y) * g.in_w + x) * l;
                                let sum = V16::load(spill.row(jb, p));
                                ep.store::<V16>(sum, ep.bias_of::<V16>(cb + jb), at, &shared);
                            }
                        }
                    }
                }
                if let Some(records) = &records {
                    let (y0, y1) = (s * i0, (s * (i0 + band_rows_q)).min(g.in_h));
                    for jb in 0..blocks {
                        let at = ((n * ccb + cb + jb) * g.in_h + y0) * g.in_w * l;
                        records.add_run::<V16>(task, &shared, at, (y1 - y0) * g.in_w, cb + jb);
                    }
                }
            }
        });
    });
    if let Some(records) = records {
        records.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::blocked::data_grad::data_grad_naive;
    use crate::kernels::test_util::{bf16_rounded, max_rel_err, random, random_blocked, square_conv};
    use crate::rng::Rng;

    /// The tiles and the naive twin against the f32 backward-data of the bf16-rounded
    /// values (exact products, sums in another order): 3x3 and 1x1 stride 2 (ResNet's),
    /// odd sizes (phases of unequal size), odd and even block counts, a 1x1 stride 3.
    #[test]
    fn strided_backward_data_matches_the_f32_kernel_on_bf16_values() {
        let mut rng = Rng::new(21);
        for g in [
            square_conv(2, 16, 9, 9, 32, 3, 2, 1),
            square_conv(1, 32, 8, 8, 16, 3, 2, 1),
            square_conv(1, 48, 7, 7, 40, 1, 2, 0),
            square_conv(1, 64, 14, 14, 128, 3, 2, 1),
            square_conv(1, 16, 10, 10, 32, 1, 3, 0),
            // Whole steps that end with the band (ResNet-18's 128 -> 256 projection at
            // 128x128 input): the second block's half of the last row.
            square_conv(4, 16, 16, 16, 32, 1, 2, 0),
            // An input smaller than the stride: phases with no pixel at all.
            square_conv(1, 16, 1, 1, 16, 1, 3, 0),
            square_conv(2, 16, 2, 2, 32, 3, 3, 1),
        ] {
            let dys = Blocked::new(g.batch, g.out_channels, g.out_h, g.out_w, LANES);
            let dxs = Blocked::new(g.batch, g.in_channels, g.in_h, g.in_w, LANES);
            let dy = random_blocked(&mut rng, dys);
            let weight = random(&mut rng, g.out_channels * g.in_channels * g.kernel_h * g.kernel_w);
            let mut w16 = vec![0; direct_len(&g, true)];
            pack_data_grad_strided(&weight, &g, &mut w16);
            let mut want = vec![f32::NAN; dxs.len()];
            data_grad_naive(&g, &bf16_rounded(&dy), &bf16_rounded(&weight), LANES, &mut want);
            let (mut fast, mut naive) = (vec![f32::NAN; dxs.len()], vec![f32::NAN; dxs.len()]);
            data_grad_strided(&g, &dy, &w16, &BlockedEpilogue::default(), &mut fast, None);
            data_grad_strided_naive(&g, &dy, &w16, &mut naive);
            assert!(max_rel_err(&naive, &want) < 1e-5, "naive {g:?}");
            assert!(max_rel_err(&fast, &want) < 1e-5, "tiles {g:?}");
        }
    }
}
