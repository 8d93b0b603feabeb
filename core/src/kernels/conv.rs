//! Convolution by im2col + GEMM (forward, backward-data, backward-filter), threaded with
//! rayon, and the naive direct convolutions that are their reference twins.
//!
//! Layouts: input `N x C x H x W`, weights `K x C x kh x kw` (PyTorch's), output
//! `N x K x OH x OW`. With `col` the `C*kh*kw x OH*OW` column matrix of one image:
//! forward `Y = W col`, backward-data `dcol = W^T dY` then col2im, backward-filter
//! `dW += dY col^T` summed over images.

use super::epilogue::Epilogue;
use super::gemm::{gemm, MatMut, MatRef};
use super::im2col::{col2im_add, im2col, im2col_scratch, ConvGeometry};
use super::scratch::with_scratch;
use super::shared_out::SharedOut;
use super::small_gemm::{gemm_unpacked, unpacked_pays};
use crate::simd::LANES;
use rayon::prelude::*;

/// Tasks to aim for per thread, so uneven tasks still balance.
const TASKS_PER_THREAD: usize = 2;

/// Output-column budget of one backward-filter work unit: large enough that the GEMM is
/// efficient, small enough that its column buffer stays near the L2 cache.
const FILTER_UNIT_COLUMNS: usize = 2048;

/// Bytes of the column matrix of one forward work unit: near the per-core L2, which the
/// GEMM's packing then reads back from.
const FORWARD_COL_BYTES: usize = 1 << 20;

/// Fewest GEMM columns a forward work unit is cut down to for the sake of parallelism;
/// narrower products waste the micro-kernel's width.
const FORWARD_MIN_COLUMNS: usize = 256;

/// Fewest output channels per task when a forward unit's channels are split between
/// tasks, each of which rebuilds the unit's column matrix.
const MIN_UNIT_CHANNELS: usize = 32;

/// Splits `total` items into `parts` nearly equal contiguous block sizes (at least 1 item each).
fn block_size(total: usize, parts: usize) -> usize {
    total.div_ceil(parts.clamp(1, total.max(1)))
}

/// How many blocks to cut each image into so that `batch` images give every thread work.
fn blocks_per_image(batch: usize, max_blocks: usize) -> usize {
    let want = rayon::current_num_threads() * TASKS_PER_THREAD;
    want.div_ceil(batch.max(1)).clamp(1, max_blocks.max(1))
}

/// `y = conv(x, w) + bias`; `y` is overwritten. Splits over images and, for small
/// batches, over blocks of output channels so that batch 1 uses every core.
pub fn conv_forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    conv_forward_fused(g, x, w, &Epilogue::bias(bias), y);
}

/// `y = epilogue(conv(x, w))`: [`conv_forward`] with bias, residual and ReLU applied to
/// each block of output while it is still in cache.
pub fn conv_forward_fused(g: &ConvGeometry, x: &[f32], w: &[f32], epilogue: &Epilogue, y: &mut [f32]) {
    assert_eq!(x.len(), g.batch * g.in_image());
    assert_eq!(w.len(), g.out_channels * g.col_rows());
    assert_eq!(y.len(), g.batch * g.out_image());
    epilogue.check(g.out_channels, y.len());
    if y.is_empty() {
        return;
    }
    if g.is_pointwise() {
        pointwise_forward(g, x, w, epilogue, y);
    } else {
        im2col_forward(g, x, w, epilogue, y);
    }
}

/// 1x1 stride-1: `Y_n = W X_n` straight from the input, split over images and, for small
/// batches, over blocks of output channels.
fn pointwise_forward(g: &ConvGeometry, x: &[f32], w: &[f32], epilogue: &Epilogue, y: &mut [f32]) {
    let p = g.out_plane();
    let kb = block_size(g.out_channels, blocks_per_image(g.batch, g.out_channels / 8));
    y.par_chunks_mut(g.out_image())
        .zip(x.par_chunks(g.in_image()))
        .enumerate()
        .for_each(|(n, (y_img, x_img))| {
            y_img.par_chunks_mut(kb * p).enumerate().for_each(|(blk, y_blk)| {
                let k0 = blk * kb;
                let kn = y_blk.len() / p;
                let w_blk = &w[k0 * g.col_rows()..(k0 + kn) * g.col_rows()];
                let c = g.in_channels;
                if unpacked_pays(c, p) {
                    // Rows padded to whole vectors, in and out.
                    let tp = p.next_multiple_of(LANES);
                    with_scratch((c + kn) * tp, |s| {
                        let (v, m) = s.split_at_mut(c * tp);
                        for (dst, src) in v.chunks_exact_mut(tp).zip(x_img.chunks_exact(p)) {
                            dst[..p].copy_from_slice(src);
                            dst[p..].fill(0.0);
                        }
                        gemm_unpacked(w_blk, v, m, kn, c, tp);
                        for (plane, row) in y_blk.chunks_mut(p).zip(m.chunks_exact(tp)) {
                            plane.copy_from_slice(&row[..p]);
                        }
                    });
                } else {
                    let out = MatMut::row_major(y_blk, kn, p);
                    gemm(
                        1.0,
                        MatRef::row_major(w_blk, kn, c),
                        MatRef::row_major(x_img, c, p),
                        0.0,
                        out,
                    );
                }
                for (k, plane) in y_blk.chunks_mut(p).enumerate() {
                    epilogue.apply_run(k0 + k, n * g.out_image() + (k0 + k) * p, plane);
                }
            });
        });
}

/// Output rows cut into work units for [`im2col_forward`], and output channels into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowUnits {
    /// Output rows (of the whole batch, image-major) per unit.
    rows: usize,
    units: usize,
    /// Output channels per task.
    kblock: usize,
    kblocks: usize,
}

fn row_units(g: &ConvGeometry, threads: usize) -> RowUnits {
    let total = g.batch * g.out_h;
    let want = threads * TASKS_PER_THREAD;
    let bytes_per_row = (g.col_rows() * g.out_w * std::mem::size_of::<f32>()).max(1);
    let fit = (FORWARD_COL_BYTES / bytes_per_row).max(FORWARD_MIN_COLUMNS.div_ceil(g.out_w.max(1)));
    let mut rows = fit.clamp(1, total.max(1));
    if total.div_ceil(rows) < want {
        // Smaller units for more tasks, but not below the GEMM's useful width.
        let min_rows = FORWARD_MIN_COLUMNS.div_ceil(g.out_w.max(1));
        rows = rows.min(total.div_ceil(want).max(min_rows)).max(1);
    }
    let units = total.div_ceil(rows);
    let kblocks = if units < want {
        want.div_ceil(units).min(g.out_channels / MIN_UNIT_CHANNELS).max(1)
    } else {
        1
    };
    let kblock = g.out_channels.div_ceil(kblocks).max(1);
    RowUnits {
        rows,
        units,
        kblock,
        kblocks: g.out_channels.div_ceil(kblock),
    }
}

/// im2col + GEMM over units of output rows taken across image boundaries, so that small
/// images share one wide GEMM and a large image is split among threads without each
/// thread rebuilding its whole column matrix; the column matrix of a unit stays near the
/// L2 cache. The product lands in scratch, and the epilogue runs as it is copied out.
fn im2col_forward(g: &ConvGeometry, x: &[f32], w: &[f32], epilogue: &Epilogue, y: &mut [f32]) {
    let plan = row_units(g, rayon::current_num_threads());
    let (oh, ow, p) = (g.out_h, g.out_w, g.out_plane());
    let total = g.batch * oh;
    let out = SharedOut::new(y);
    (0..plan.units * plan.kblocks).into_par_iter().for_each(|task| {
        let (unit, kb) = (task / plan.kblocks, task % plan.kblocks);
        let (r0, r1) = (unit * plan.rows, ((unit + 1) * plan.rows).min(total));
        let (k0, k1) = (kb * plan.kblock, ((kb + 1) * plan.kblock).min(g.out_channels));
        let cols = (r1 - r0) * ow;
        let (rows, kn) = (g.col_rows(), k1 - k0);
        let unpacked = unpacked_pays(rows, cols);
        // Row stride of the column matrix and the product: whole vectors when unpacked
        // (the padding columns hold stale values whose products are never copied out).
        let ld = if unpacked { cols.next_multiple_of(LANES) } else { cols };
        // The images a unit touches, as (image, first row, end row, first column).
        let pieces = (r0 / oh..r1.div_ceil(oh)).map(|n| {
            let (a, b) = (r0.max(n * oh) - n * oh, r1.min((n + 1) * oh) - n * oh);
            (n, a, b, (n * oh + a - r0) * ow)
        });
        with_scratch((rows + kn) * ld + im2col_scratch(g), |s| {
            let (col, rest) = s.split_at_mut(rows * ld);
            let (prod, phases) = rest.split_at_mut(kn * ld);
            for (n, a, b, at) in pieces.clone() {
                let x_img = &x[n * g.in_image()..(n + 1) * g.in_image()];
                im2col(g, x_img, a, b, &mut col[at..], ld, phases);
            }
            let w_blk = &w[k0 * rows..k1 * rows];
            if unpacked {
                gemm_unpacked(w_blk, col, prod, kn, rows, ld);
            } else {
                let col = MatRef::row_major(col, rows, cols);
                gemm(
                    1.0,
                    MatRef::row_major(w_blk, kn, rows),
                    col,
                    0.0,
                    MatMut::row_major(prod, kn, cols),
                );
            }
            for (n, a, b, at) in pieces {
                for k in k0..k1 {
                    let run = &mut prod[(k - k0) * ld + at..(k - k0) * ld + at + (b - a) * ow];
                    let start = n * g.out_image() + k * p + a * ow;
                    epilogue.apply_run(k, start, run);
                    out.write_slice(start, run);
                }
            }
        });
    });
}

/// `dx = conv^T(dy, w)`, the gradient with respect to the input; `dx` is overwritten.
/// Splits over images and blocks of input channels (their col2im writes are disjoint).
pub fn conv_backward_data(g: &ConvGeometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert_eq!(w.len(), g.out_channels * g.col_rows());
    assert_eq!(dy.len(), g.batch * g.out_image());
    assert_eq!(dx.len(), g.batch * g.in_image());
    if dx.is_empty() {
        return;
    }
    let kk = g.kernel_h * g.kernel_w;
    let p = g.out_plane();
    let cb = block_size(g.in_channels, blocks_per_image(g.batch, g.in_channels));
    // W^T is (C*kk) x K: element (r, k) = w[k * col_rows + r].
    let wt = MatRef::row_major(w, g.out_channels, g.col_rows()).t();
    dx.par_chunks_mut(g.in_image())
        .zip(dy.par_chunks(g.out_image()))
        .for_each(|(dx_img, dy_img)| {
            dx_img
                .par_chunks_mut(cb * g.in_plane())
                .enumerate()
                .for_each(|(blk, dx_blk)| {
                    let c0 = blk * cb;
                    let cn = dx_blk.len() / g.in_plane();
                    let rows = cn * kk;
                    let wt_blk = MatRef {
                        data: &wt.data[c0 * kk..],
                        rows,
                        ..wt
                    };
                    let dy_mat = MatRef::row_major(dy_img, g.out_channels, p);
                    if g.is_pointwise() {
                        gemm(1.0, wt_blk, dy_mat, 0.0, MatMut::row_major(dx_blk, rows, p));
                    } else {
                        with_scratch(rows * p, |dcol| {
                            gemm(1.0, wt_blk, dy_mat, 0.0, MatMut::row_major(dcol, rows, p));
                            dx_blk.fill(0.0);
                            col2im_add(g, dcol, dx_blk);
                        });
                    }
                });
        });
}

/// Reusable memory for [`conv_backward_filter`]: one partial weight gradient per chunk.
#[derive(Default, Debug, Clone)]
pub struct FilterGradWorkspace {
    pub(crate) partials: Vec<f32>,
}

/// `buf` cut into consecutive regions of the given sizes, in order: one task's partial
/// sums each, so that tasks write disjoint memory and are added up in a fixed order.
pub(crate) fn split_regions(buf: &mut [f32], sizes: impl IntoIterator<Item = usize>) -> Vec<&mut [f32]> {
    let mut regions = Vec::new();
    let mut rest = buf;
    for n in sizes {
        let (head, tail) = rest.split_at_mut(n);
        regions.push(head);
        rest = tail;
    }
    regions
}

/// `db += sum dY` per output channel, in f64 and in a fixed order (parallel over channels).
pub(crate) fn bias_grad(g: &ConvGeometry, dy: &[f32], db: &mut [f32]) {
    let p = g.out_plane();
    db.par_iter_mut().enumerate().for_each(|(k, dbk)| {
        let mut acc = 0f64;
        for n in 0..g.batch {
            let plane = &dy[(n * g.out_channels + k) * p..(n * g.out_channels + k + 1) * p];
            acc += plane.iter().map(|&v| v as f64).sum::<f64>();
        }
        *dbk += acc as f32;
    });
}

/// `dw += sum_n dY_n col_n^T` and `db += sum dY`. The sum over the batch is cut into a
/// fixed number of chunks (one per thread) combined in order, so the result depends only
/// on the thread count, never on scheduling.
pub fn conv_backward_filter(
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
        bias_grad(g, dy, db);
    }
    if g.batch == 0 || p == 0 {
        return;
    }
    // Work units: (image, block of output rows).
    let rows_per_unit = (FILTER_UNIT_COLUMNS / g.out_w.max(1)).clamp(1, g.out_h);
    let units_per_image = g.out_h.div_ceil(rows_per_unit);
    let units = g.batch * units_per_image;
    let chunks = rayon::current_num_threads().clamp(1, units);
    let per_chunk = units.div_ceil(chunks);
    let chunks = units.div_ceil(per_chunk);
    let wsize = dw.len();
    ws.partials.resize(chunks * wsize, 0.0);
    ws.partials.par_chunks_mut(wsize).enumerate().for_each(|(chunk, part)| {
        part.fill(0.0);
        for unit in chunk * per_chunk..((chunk + 1) * per_chunk).min(units) {
            let n = unit / units_per_image;
            let oh0 = (unit % units_per_image) * rows_per_unit;
            let oh1 = (oh0 + rows_per_unit).min(g.out_h);
            let cols = (oh1 - oh0) * g.out_w;
            let x_img = &x[n * g.in_image()..(n + 1) * g.in_image()];
            let dy_unit = MatRef {
                data: &dy[n * g.out_image() + oh0 * g.out_w..],
                rows: g.out_channels,
                cols,
                row_stride: p,
                col_stride: 1,
            };
            let out = MatMut::row_major(part, g.out_channels, g.col_rows());
            if g.is_pointwise() {
                let x_unit = MatRef {
                    data: &x_img[oh0 * g.out_w..],
                    rows: g.in_channels,
                    cols,
                    row_stride: p,
                    col_stride: 1,
                };
                gemm(1.0, dy_unit, x_unit.t(), 1.0, out);
            } else {
                with_scratch(g.col_rows() * cols + im2col_scratch(g), |s| {
                    let (col, phases) = s.split_at_mut(g.col_rows() * cols);
                    im2col(g, x_img, oh0, oh1, col, cols, phases);
                    gemm(1.0, dy_unit, MatRef::row_major(col, g.col_rows(), cols).t(), 1.0, out);
                });
            }
        }
    });
    for part in ws.partials.chunks(wsize) {
        dw.iter_mut().zip(part).for_each(|(d, &v)| *d += v);
    }
}

/// Naive twin of [`conv_forward`]: the direct seven-loop convolution in f64.
pub fn conv_forward_naive(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    for n in 0..g.batch {
        for k in 0..g.out_channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let mut acc = bias.map_or(0.0, |b| b[k] as f64);
                    for_each_tap(g, oh, ow, |c, i, j, ih, iw| {
                        acc += x[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw] as f64
                            * w[((k * g.in_channels + c) * g.kernel_h + i) * g.kernel_w + j] as f64;
                    });
                    y[((n * g.out_channels + k) * g.out_h + oh) * g.out_w + ow] = acc as f32;
                }
            }
        }
    }
}

/// Naive twin of [`conv_backward_data`] in f64.
pub fn conv_backward_data_naive(g: &ConvGeometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let mut acc = vec![0f64; dx.len()];
    for n in 0..g.batch {
        for k in 0..g.out_channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let d = dy[((n * g.out_channels + k) * g.out_h + oh) * g.out_w + ow] as f64;
                    for_each_tap(g, oh, ow, |c, i, j, ih, iw| {
                        acc[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw] +=
                            d * w[((k * g.in_channels + c) * g.kernel_h + i) * g.kernel_w + j] as f64;
                    });
                }
            }
        }
    }
    dx.iter_mut().zip(acc).for_each(|(d, a)| *d = a as f32);
}

/// Naive twin of [`conv_backward_filter`] in f64 (accumulates into `dw` and `db`).
pub fn conv_backward_filter_naive(g: &ConvGeometry, x: &[f32], dy: &[f32], dw: &mut [f32], db: Option<&mut [f32]>) {
    let mut acc = vec![0f64; dw.len()];
    let mut bacc = vec![0f64; g.out_channels];
    for n in 0..g.batch {
        for k in 0..g.out_channels {
            for oh in 0..g.out_h {
                for ow in 0..g.out_w {
                    let d = dy[((n * g.out_channels + k) * g.out_h + oh) * g.out_w + ow] as f64;
                    bacc[k] += d;
                    for_each_tap(g, oh, ow, |c, i, j, ih, iw| {
                        acc[((k * g.in_channels + c) * g.kernel_h + i) * g.kernel_w + j] +=
                            d * x[((n * g.in_channels + c) * g.in_h + ih) * g.in_w + iw] as f64;
                    });
                }
            }
        }
    }
    dw.iter_mut().zip(acc).for_each(|(d, a)| *d += a as f32);
    if let Some(db) = db {
        db.iter_mut().zip(bacc).for_each(|(d, a)| *d += a as f32);
    }
}

/// Calls `f(c, i, j, ih, iw)` for every kernel tap of output pixel (oh, ow) that lands
/// inside the input.
pub(crate) fn for_each_tap(
    g: &ConvGeometry,
    oh: usize,
    ow: usize,
    mut f: impl FnMut(usize, usize, usize, usize, usize),
) {
    for c in 0..g.in_channels {
        for i in 0..g.kernel_h {
            let ih = (oh * g.stride + i) as isize - g.pad as isize;
            if ih < 0 || ih >= g.in_h as isize {
                continue;
            }
            for j in 0..g.kernel_w {
                let iw = (ow * g.stride + j) as isize - g.pad as isize;
                if iw >= 0 && iw < g.in_w as isize {
                    f(c, i, j, ih as usize, iw as usize);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{max_rel_err, random};
    use crate::rng::Rng;

    /// (batch, C, H, W, K, kernel, stride, pad)
    type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);
    const SHAPES: &[Shape] = &[
        (2, 3, 9, 7, 5, 3, 1, 1),
        (1, 4, 8, 8, 6, 3, 2, 1),
        (3, 5, 7, 11, 4, 1, 1, 0),
        (2, 6, 9, 9, 3, 1, 2, 0),
        (1, 3, 13, 13, 8, 7, 2, 3),
        (2, 2, 5, 5, 3, 3, 1, 0),
        (1, 1, 1, 1, 2, 3, 1, 1),
        (4, 16, 8, 8, 16, 3, 1, 1),
        (1, 17, 5, 6, 33, 3, 2, 2),
        // Wide enough for matrixmultiply rather than the unpacked product.
        (1, 8, 40, 40, 8, 1, 1, 0),
        (1, 3, 34, 34, 8, 3, 1, 1),
    ];

    #[test]
    fn gemm_convolution_matches_direct_convolution_in_all_three_passes() {
        let mut rng = Rng::new(11);
        for &(n, c, h, w, k, ks, s, pad) in SHAPES {
            let g = ConvGeometry::new(n, c, h, w, k, (ks, ks), s, pad).unwrap();
            let x = random(&mut rng, n * g.in_image());
            let wt = random(&mut rng, k * g.col_rows());
            let bias = random(&mut rng, k);
            let dy = random(&mut rng, n * g.out_image());

            let mut y_fast = vec![0.0; n * g.out_image()];
            let mut y_slow = y_fast.clone();
            conv_forward(&g, &x, &wt, Some(&bias), &mut y_fast);
            conv_forward_naive(&g, &x, &wt, Some(&bias), &mut y_slow);
            let e = max_rel_err(&y_fast, &y_slow);
            println!("{g:?}: forward max rel err {e:.2e}");
            assert!(e < 1e-5, "forward {g:?}: {e}");

            let mut dx_fast = vec![1.0; x.len()];
            let mut dx_slow = vec![0.0; x.len()];
            conv_backward_data(&g, &wt, &dy, &mut dx_fast);
            conv_backward_data_naive(&g, &wt, &dy, &mut dx_slow);
            let e = max_rel_err(&dx_fast, &dx_slow);
            println!("backward-data max rel err {e:.2e}");
            assert!(e < 1e-5, "backward data {g:?}: {e}");

            // Accumulation: start both from the same non-zero gradients.
            let init = random(&mut rng, wt.len());
            let (mut dw_fast, mut dw_slow) = (init.clone(), init);
            let (mut db_fast, mut db_slow) = (vec![0.5; k], vec![0.5; k]);
            let mut ws = FilterGradWorkspace::default();
            conv_backward_filter(&g, &x, &dy, &mut dw_fast, Some(&mut db_fast), &mut ws);
            conv_backward_filter_naive(&g, &x, &dy, &mut dw_slow, Some(&mut db_slow));
            let e = max_rel_err(&dw_fast, &dw_slow).max(max_rel_err(&db_fast, &db_slow));
            println!("backward-filter max rel err {e:.2e}");
            assert!(e < 1e-5, "backward filter {g:?}: {e}");
        }
    }

    #[test]
    fn backward_filter_splits_large_images_into_row_units() {
        // 1 image of 64x64 at stride 1 has 4096 columns: two units, one per chunk.
        let mut rng = Rng::new(5);
        let g = ConvGeometry::new(1, 2, 64, 64, 3, (3, 3), 1, 1).unwrap();
        let x = random(&mut rng, g.in_image());
        let dy = random(&mut rng, g.out_image());
        let mut dw_fast = vec![0.0; 3 * g.col_rows()];
        let mut dw_slow = dw_fast.clone();
        conv_backward_filter(&g, &x, &dy, &mut dw_fast, None, &mut FilterGradWorkspace::default());
        conv_backward_filter_naive(&g, &x, &dy, &mut dw_slow, None);
        assert!(max_rel_err(&dw_fast, &dw_slow) < 1e-5);
    }

    #[test]
    fn geometry_rejects_kernels_larger_than_the_padded_input() {
        let err = ConvGeometry::new(1, 3, 2, 2, 4, (7, 7), 2, 1).unwrap_err().to_string();
        assert!(err.contains("2x2") && err.contains("7x7"), "{err}");
        assert!(ConvGeometry::new(1, 3, 2, 2, 4, (3, 3), 0, 1).is_err());
    }
}
