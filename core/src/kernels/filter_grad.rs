//! Backward-filter of a convolution without im2col or GEMM packing: a register-blocked
//! "NT" product `dW[k][r] += sum_p dY[k][p] * col[r][p]` whose operands are both read
//! contiguously along the long reduction axis `p` (output pixels).
//!
//! Why: for ResNet shapes `dW` is small (`K` of 16..512, `C*kh*kw` of 27..4608) while `p`
//! runs over the whole batch, so a general GEMM (im2col, then `dY * col^T`) spends more
//! time packing its operands and writing the column matrix than multiplying.
//!
//! How: the reduction is cut into *units* of about `UNIT_FLOATS` pixels (whole images
//! for small images, blocks of output rows for large ones). For each unit, `dY` is copied
//! to rows padded to whole vectors and the input is copied once into a zero-padded,
//! stride-de-interleaved layout (per channel, input row and stride phase `ph`, the values
//! `x[ih][q * s + ph - pad]`), so that every row `r = (c, i, j)` of the column matrix is,
//! for each output row, a contiguous run of that layout starting at a fixed offset: tap
//! `j` reads phase `j % s` from position `j / s` on. A register block of `MR` output
//! channels times `NR` column rows then accumulates `MR x NR` vectors of partial sums over
//! the whole unit (no packing, no column matrix), reduced horizontally once per unit.
//!
//! Determinism: units are grouped into a fixed number of chunks (one per thread),
//! each chunk summed into its own partial gradient, and the partials added in chunk
//! order; splitting a chunk's channels across tasks (batch 1) changes which task computes
//! an element, never the order of its sum. Results depend on the thread count only.

use super::conv::{split_regions, FilterGradWorkspace};
use super::im2col::ConvGeometry;
use super::scratch::with_scratch;
use crate::simd::{F32x, F32xWide, Vector, LANES, WIDE_LANES};
use rayon::prelude::*;

/// Reduction length of one unit, in vector-padded output pixels: 1024 keeps the `NR`
/// column rows a register block streams (`NR * 4 KB`) in the L1 cache while it is reused
/// by every block of output channels, and the unit's `dY` (`K * 4 KB`, 256 KB for K = 64)
/// in L2; the horizontal reductions, once per unit and accumulator, are then under 1 %
/// of the multiply-adds.
const UNIT_FLOATS: usize = 1024;

/// Output channels per register block.
pub(super) const MR: usize = 4;

/// Column rows (input channel x tap) per register block: `MR x NR` = 24 accumulators
/// plus `MR` loaded `dY` vectors and one input vector fit the 32 vector registers of
/// AVX-512VL (the native target here); 10 loads feed 24 multiply-adds.
pub(super) const NR: usize = 6;

/// Tasks to aim for per thread when a batch has fewer units than threads.
const TASKS_PER_THREAD: usize = 2;

/// Fewest input channels per task when channels are split: each task copies the unit's
/// whole `dY`, which must stay small next to its `K x 4 x kh x kw` products per pixel.
const MIN_CHANNEL_BLOCK: usize = 4;

/// How the input pixels of one unit are laid out.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Output row width rounded up to whole vectors.
    wv: usize,
    /// Length of one stride phase of one input row: `wv + (kw - 1) / s`.
    wq: usize,
    /// Input rows per segment: `(rows - 1) * s + kh`.
    rin: usize,
    /// Output rows per segment.
    rows: usize,
    /// Segments (images, or one image's block of rows) per unit.
    segs: usize,
}

impl Layout {
    fn seg_stride(&self, s: usize) -> usize {
        self.rin * s * self.wq
    }

    fn chan_stride(&self, s: usize) -> usize {
        self.segs * self.seg_stride(s)
    }

    /// Values of `dY` per output channel and unit.
    fn ylen(&self) -> usize {
        self.segs * self.rows * self.wv
    }
}

/// A block of the reduction: images `n0..n1`, output rows `oh0..oh1` of each.
#[derive(Clone, Copy, Debug)]
struct Unit {
    n0: usize,
    n1: usize,
    oh0: usize,
    oh1: usize,
}

/// The fixed partition of the reduction into units, in order.
fn units(g: &ConvGeometry, wv: usize) -> Vec<Unit> {
    let image = g.out_h * wv;
    let mut out = Vec::new();
    if image >= UNIT_FLOATS {
        let rows = (UNIT_FLOATS / wv).clamp(1, g.out_h);
        for n in 0..g.batch {
            for oh0 in (0..g.out_h).step_by(rows) {
                out.push(Unit {
                    n0: n,
                    n1: n + 1,
                    oh0,
                    oh1: (oh0 + rows).min(g.out_h),
                });
            }
        }
    } else {
        let per = (UNIT_FLOATS / image.max(1)).max(1);
        for n0 in (0..g.batch).step_by(per) {
            out.push(Unit {
                n0,
                n1: (n0 + per).min(g.batch),
                oh0: 0,
                oh1: g.out_h,
            });
        }
    }
    out
}

/// `dw += sum_n dY_n col_n^T` and `db += sum dY`, like
/// [`conv_backward_filter`](super::conv::conv_backward_filter) (any kernel, stride and
/// padding), by the register-blocked direct product of this module.
pub fn filter_grad_direct(
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    ws: &mut FilterGradWorkspace,
) {
    assert_eq!(x.len(), g.batch * g.in_image());
    assert_eq!(dy.len(), g.batch * g.out_image());
    assert_eq!(dw.len(), g.out_channels * g.col_rows());
    let p = g.out_plane();
    if let Some(db) = db {
        super::conv::bias_grad(g, dy, db);
    }
    if g.batch == 0 || p == 0 || dw.is_empty() {
        return;
    }
    let wv = g.out_w.next_multiple_of(LANES);
    let units = units(g, wv);
    let threads = rayon::current_num_threads();
    let chunks = threads.clamp(1, units.len());
    let per_chunk = units.len().div_ceil(chunks);
    let chunks = units.len().div_ceil(per_chunk);
    let cblocks = if chunks >= threads {
        1
    } else {
        (threads * TASKS_PER_THREAD)
            .div_ceil(chunks)
            .min(g.in_channels.div_ceil(MIN_CHANNEL_BLOCK))
            .max(1)
    };
    let cb = g.in_channels.div_ceil(cblocks);
    let cblocks = g.in_channels.div_ceil(cb);
    let (k, kk) = (g.out_channels, g.kernel_h * g.kernel_w);
    let wsize = dw.len();
    ws.partials.resize(chunks * wsize, 0.0);
    // Task (chunk, channel block) owns the region of `partials` for its chunk and
    // channels, laid out `K x (cn * kk)`.
    let sizes = (0..chunks).flat_map(|_| (0..cblocks).map(|b| k * cb.min(g.in_channels - b * cb) * kk));
    let regions = split_regions(&mut ws.partials, sizes);
    regions.into_par_iter().enumerate().for_each(|(task, part)| {
        let (chunk, b) = (task / cblocks, task % cblocks);
        let c0 = b * cb;
        let cn = cb.min(g.in_channels - c0);
        part.fill(0.0);
        for u in &units[chunk * per_chunk..((chunk + 1) * per_chunk).min(units.len())] {
            unit_product(g, x, dy, u, c0, cn, wv, part);
        }
    });
    for parts in ws.partials.chunks(wsize).take(chunks) {
        let mut at = 0;
        for b in 0..cblocks {
            let (c0, cn) = (b * cb, cb.min(g.in_channels - b * cb));
            let region = &parts[at..at + k * cn * kk];
            at += k * cn * kk;
            for (kr, src) in region.chunks(cn * kk).enumerate() {
                let dst = &mut dw[kr * g.col_rows() + c0 * kk..kr * g.col_rows() + (c0 + cn) * kk];
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
            }
        }
    }
}

/// Adds the products of one unit, input channels `c0..c0+cn`, to `part` (`K x cn*kk`).
#[allow(clippy::too_many_arguments)]
fn unit_product(g: &ConvGeometry, x: &[f32], dy: &[f32], u: &Unit, c0: usize, cn: usize, wv: usize, part: &mut [f32]) {
    let s = g.stride;
    let rows = u.oh1 - u.oh0;
    let lay = Layout {
        wv,
        wq: wv + (g.kernel_w - 1) / s,
        rin: (rows - 1) * s + g.kernel_h,
        rows,
        segs: u.n1 - u.n0,
    };
    let (k, kk) = (g.out_channels, g.kernel_h * g.kernel_w);
    let ylen = lay.ylen();
    with_scratch(k * ylen + cn * lay.chan_stride(s), |buf| {
        let (yb, xb) = buf.split_at_mut(k * ylen);
        pack_dy(g, dy, u, &lay, yb);
        pack_input(g, x, u, c0, cn, &lay, xb);
        let cols = cn * kk;
        // Offset of column row (c, i, j) in `xb`, relative to a position's offset.
        let base = |r: usize| {
            let (cl, t) = (r / kk, r % kk);
            let (i, j) = (t / g.kernel_w, t % g.kernel_w);
            cl * lay.chan_stride(s) + i * s * lay.wq + (j % s) * lay.wq + j / s
        };
        let walk = Walk {
            segs: lay.segs,
            rows: lay.rows,
            wv,
            xseg: lay.seg_stride(s),
            xrow: s * s * lay.wq,
        };
        for r0 in (0..cols).step_by(NR) {
            // A short last block repeats its last column row; the extra sums are dropped.
            let xoff: [usize; NR] = std::array::from_fn(|j| base((r0 + j).min(cols - 1)));
            for k0 in (0..k).step_by(MR) {
                let yoff: [usize; MR] = std::array::from_fn(|i| (k0 + i).min(k - 1) * ylen);
                let sums = if wv.is_multiple_of(WIDE_LANES) {
                    block::<F32xWide, MR, NR>(yb, yoff, xb, xoff, &walk)
                } else {
                    block::<F32x, MR, NR>(yb, yoff, xb, xoff, &walk)
                };
                for (i, row) in sums.iter().enumerate().take(k - k0) {
                    let dst = &mut part[(k0 + i) * cols + r0..];
                    for (d, &v) in dst.iter_mut().zip(row).take(cols - r0) {
                        *d += v;
                    }
                }
            }
        }
    });
}

/// Copies `dY` of one unit to `yb` (`K x segs x rows x wv`), zero past each row's end.
fn pack_dy(g: &ConvGeometry, dy: &[f32], u: &Unit, lay: &Layout, yb: &mut [f32]) {
    let (p, ow) = (g.out_plane(), g.out_w);
    for (kr, ykr) in yb.chunks_exact_mut(lay.ylen()).enumerate() {
        for (si, n) in (u.n0..u.n1).enumerate() {
            let plane = &dy[(n * g.out_channels + kr) * p..(n * g.out_channels + kr + 1) * p];
            for r in 0..lay.rows {
                let dst = &mut ykr[(si * lay.rows + r) * lay.wv..(si * lay.rows + r + 1) * lay.wv];
                let src = &plane[(u.oh0 + r) * ow..(u.oh0 + r + 1) * ow];
                dst[..ow].copy_from_slice(src);
                dst[ow..].fill(0.0);
            }
        }
    }
}

/// Copies channels `c0..c0+cn` of the unit's input to `xb` in the padded, stride-phase
/// layout `[c][seg][input row][phase][q]`: `x[ih][q * s + ph - pad]`, zero outside.
fn pack_input(g: &ConvGeometry, x: &[f32], u: &Unit, c0: usize, cn: usize, lay: &Layout, xb: &mut [f32]) {
    let (s, pad) = (g.stride, g.pad as isize);
    let ih0 = (u.oh0 * s) as isize - pad;
    for cl in 0..cn {
        for (si, n) in (u.n0..u.n1).enumerate() {
            let plane = &x[(n * g.in_channels + c0 + cl) * g.in_plane()..][..g.in_plane()];
            let seg = &mut xb[cl * lay.chan_stride(s) + si * lay.seg_stride(s)..][..lay.seg_stride(s)];
            for (rr, row) in seg.chunks_exact_mut(s * lay.wq).enumerate() {
                let ih = ih0 + rr as isize;
                if ih < 0 || ih >= g.in_h as isize {
                    row.fill(0.0);
                    continue;
                }
                let src = &plane[ih as usize * g.in_w..(ih as usize + 1) * g.in_w];
                if s == 1 {
                    // Zeros, then one contiguous copy of the valid columns.
                    row.fill(0.0);
                    let q0 = g.pad.min(row.len());
                    let n = src.len().min(row.len() - q0);
                    row[q0..q0 + n].copy_from_slice(&src[..n]);
                    continue;
                }
                for (ph, dst) in row.chunks_exact_mut(lay.wq).enumerate() {
                    for (q, d) in dst.iter_mut().enumerate() {
                        let iw = (q * s + ph) as isize - pad;
                        *d = if iw >= 0 && iw < g.in_w as isize {
                            src[iw as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// How a register block walks the reduction of one unit: `segs x rows` runs of `wv`
/// values, contiguous in a `dY` row and at `seg * xseg + row * xrow` past a column row's
/// base in the input layout.
pub(super) struct Walk {
    pub(super) segs: usize,
    pub(super) rows: usize,
    pub(super) wv: usize,
    pub(super) xseg: usize,
    pub(super) xrow: usize,
}

/// `sums[i][j] = sum over the unit of yb[yoff[i] + ..] * xb[xoff[j] + ..]`: `R x N`
/// vector accumulators (of `W`) over the whole unit, then one horizontal reduction each;
/// rows `wv` must be whole vectors of `W`.
#[inline(always)]
pub(super) fn block<W: Vector, const R: usize, const N: usize>(
    yb: &[f32],
    yoff: [usize; R],
    xb: &[f32],
    xoff: [usize; N],
    w: &Walk,
) -> [[f32; N]; R] {
    let wv = w.wv;
    if w.segs == 0 || w.rows == 0 || wv == 0 {
        return [[0.0; N]; R];
    }
    // Every load below reads W::LANES values at an offset below these ends, so checking the
    // largest offsets once makes the unchecked loads in the loop sound.
    let y_end = yoff.iter().max().map_or(0, |&o| o + w.segs * w.rows * wv);
    let x_end = xoff
        .iter()
        .max()
        .map_or(0, |&o| o + (w.segs - 1) * w.xseg + (w.rows - 1) * w.xrow + wv);
    assert!(
        y_end <= yb.len() && x_end <= xb.len(),
        "filter_grad: block out of range"
    );
    assert!(wv.is_multiple_of(W::LANES), "filter_grad: rows must be whole vectors");
    let (yp0, xp0) = (yb.as_ptr(), xb.as_ptr());
    let mut acc = [[W::ZERO; N]; R];
    let mut yp = 0;
    for seg in 0..w.segs {
        let mut xp = seg * w.xseg;
        for _ in 0..w.rows {
            for v in (0..wv).step_by(W::LANES) {
                // SAFETY: `yoff[i] + yp + v + W::LANES <= y_end <= yb.len()` and
                // `xoff[j] + xp + v + W::LANES <= x_end <= xb.len()` (checked above: `yp`
                // stays below `segs * rows * wv`, `xp` below the last row's offset, and
                // `v + W::LANES <= wv`), so every unaligned read lies inside its slice.
                let a: [W; R] = std::array::from_fn(|i| unsafe { W::load_at(yp0, yoff[i] + yp + v) });
                for j in 0..N {
                    // SAFETY: as above.
                    let b = unsafe { W::load_at(xp0, xoff[j] + xp + v) };
                    for i in 0..R {
                        acc[i][j] = a[i].mul_add(b, acc[i][j]);
                    }
                }
            }
            yp += wv;
            xp += w.xrow;
        }
    }
    acc.map(|row| row.map(|v| v.reduce_add()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::conv_backward_filter_naive;
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::rng::Rng;

    #[test]
    fn matches_naive_on_random_shapes() {
        // (batch, C, H, W, K, kernel, stride, pad): odd sizes, stride 2, padding, 1x1,
        // 7x7 stride 2, batch 1 and 3, images larger than one unit, K and C*kk not
        // multiples of the register block.
        type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);
        let shapes: &[Shape] = &[
            (2, 3, 9, 7, 5, 3, 1, 1),
            (1, 4, 8, 8, 6, 3, 2, 1),
            (3, 5, 7, 11, 4, 1, 1, 0),
            (2, 6, 9, 9, 3, 1, 2, 0),
            (1, 3, 13, 13, 8, 7, 2, 3),
            (3, 3, 23, 21, 7, 7, 2, 3),
            (2, 2, 5, 5, 3, 3, 1, 0),
            (1, 1, 1, 1, 2, 3, 1, 1),
            (4, 16, 8, 8, 16, 3, 1, 1),
            (1, 17, 5, 6, 33, 3, 2, 2),
            (3, 7, 40, 37, 9, 3, 1, 1),
            (1, 5, 70, 66, 3, 3, 2, 1),
            (3, 8, 32, 32, 16, 3, 1, 1),
            (1, 6, 10, 12, 5, 5, 3, 2),
        ];
        let mut rng = Rng::new(21);
        let mut worst = 0f32;
        for &(n, c, h, w, k, ks, s, pad) in shapes {
            let g = ConvGeometry::new(n, c, h, w, k, (ks, ks), s, pad).unwrap();
            let x = random(&mut rng, n * g.in_image());
            let dy = random(&mut rng, n * g.out_image());
            let init = random(&mut rng, k * g.col_rows());
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (mut fast, mut slow) = (init.clone(), init.clone());
                let (mut db_fast, mut db_slow) = (vec![0.25; k], vec![0.25; k]);
                pool.install(|| {
                    filter_grad_direct(&g, &x, &dy, &mut fast, Some(&mut db_fast), &mut Default::default())
                });
                conv_backward_filter_naive(&g, &x, &dy, &mut slow, Some(&mut db_slow));
                let e = max_rel_err(&fast, &slow).max(max_rel_err(&db_fast, &db_slow));
                worst = worst.max(e);
                assert!(e < 1e-5, "{g:?} on {threads} threads: max rel err {e:.2e}");
            }
        }
        println!("filter_grad_direct vs naive: worst max rel err {worst:.2e}");
    }

    #[test]
    fn repeated_runs_agree_bit_for_bit() {
        let mut rng = Rng::new(8);
        // Batch 1 (channel-split tasks) and batch 5 (several units per chunk).
        for (n, h) in [(1, 40), (5, 12)] {
            let g = ConvGeometry::new(n, 12, h, h, 10, (3, 3), 1, 1).unwrap();
            let x = random(&mut rng, n * g.in_image());
            let dy = random(&mut rng, n * g.out_image());
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let run = || {
                let mut dw = vec![0.0; 10 * g.col_rows()];
                pool.install(|| filter_grad_direct(&g, &x, &dy, &mut dw, None, &mut Default::default()));
                dw
            };
            let first = run();
            for _ in 0..3 {
                assert_eq!(run(), first);
            }
        }
    }
}
