//! Convolution geometry, and the im2col / col2im rearrangements that turn a convolution
//! into a matrix product (Chellapilla et al. 2006; Caffe's and Darknet's baseline).

use crate::{Error, Result};

/// Every size of a 2-D convolution over an NCHW batch, with square stride and padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvGeometry {
    /// Computes the output size as PyTorch does; errors when the kernel does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        in_channels: usize,
        in_h: usize,
        in_w: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let (kernel_h, kernel_w) = kernel;
        if stride == 0 || kernel_h == 0 || kernel_w == 0 {
            return Err(Error::Config(format!(
                "convolution needs a positive kernel and stride, found kernel {kernel_h}x{kernel_w} stride {stride}"
            )));
        }
        let out = |size: usize, k: usize| -> Result<usize> {
            let padded = size + 2 * pad;
            if padded < k {
                return Err(Error::Shape(format!(
                    "convolution input of {in_h}x{in_w} (padding {pad}) is smaller than its {kernel_h}x{kernel_w} kernel"
                )));
            }
            Ok((padded - k) / stride + 1)
        };
        Ok(ConvGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            pad,
            out_h: out(in_h, kernel_h)?,
            out_w: out(in_w, kernel_w)?,
        })
    }

    /// Rows of the column matrix: `C * kh * kw`.
    pub fn col_rows(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// Pixels of one input channel.
    pub fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    /// Pixels of one output channel.
    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Values of one input image.
    pub fn in_image(&self) -> usize {
        self.in_channels * self.in_plane()
    }

    /// Values of one output image.
    pub fn out_image(&self) -> usize {
        self.out_channels * self.out_plane()
    }

    /// A 1x1, stride-1, unpadded convolution: the input already is its column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == 1 && self.pad == 0
    }

    /// Multiply-adds of the whole batch, as a direct convolution does them.
    pub fn macs(&self) -> u64 {
        (self.batch * self.out_image()) as u64 * self.col_rows() as u64
    }
}

/// Floats of scratch [`im2col`] needs: one input channel split into its stride
/// phases (none at stride 1).
pub fn im2col_scratch(g: &ConvGeometry) -> usize {
    if g.stride > 1 {
        g.in_plane()
    } else {
        0
    }
}

/// Writes the column matrix of output rows `oh0..oh1` of one image `x` (C x H x W): row
/// `r` (`r < col_rows`) of it fills `col[r * ld..r * ld + (oh1 - oh0) * out_w]`, zero
/// where the window covers padding. `ld` can exceed the width so that pieces of several
/// images fill one column matrix side by side. `phases` holds [`im2col_scratch`] floats.
///
/// A strided input channel is first split into its `stride^2` phases (the pixels at
/// `(u * s + a, v * s + b)`), so that every kernel tap reads one phase at unit stride: a
/// row of the column matrix is then a shifted copy of a phase, made in one `memcpy` where
/// the phase is as wide as the output, with the wrapped or padded edges set to zero.
pub fn im2col(g: &ConvGeometry, x: &[f32], oh0: usize, oh1: usize, col: &mut [f32], ld: usize, phases: &mut [f32]) {
    let s = g.stride;
    let rows = oh1 - oh0;
    // Input rows this block of output rows reads, before clipping to the image.
    let ih_lo = (oh0 * s) as isize - g.pad as isize;
    let ih_hi = ((oh1.max(1) - 1) * s + g.kernel_h) as isize - g.pad as isize;
    for c in 0..g.in_channels {
        let plane = &x[c * g.in_plane()..(c + 1) * g.in_plane()];
        if s > 1 {
            split_phases(plane, (g.in_h, g.in_w), s, used_phases(g), (ih_lo, ih_hi), phases);
        }
        for i in 0..g.kernel_h {
            let (a, dy) = phase_of(i, g.pad, s);
            for j in 0..g.kernel_w {
                let (b, dx) = phase_of(j, g.pad, s);
                let (q, ph, pw) = if s > 1 {
                    let (off, ph, pw) = phase_extent(g.in_h, g.in_w, s, a, b);
                    (&phases[off..off + ph * pw], ph, pw)
                } else {
                    (plane, g.in_h, g.in_w)
                };
                let row = (c * g.kernel_h + i) * g.kernel_w + j;
                let dst = &mut col[row * ld..row * ld + rows * g.out_w];
                copy_shifted(q, (ph, pw), (dy, dx), oh0, g.out_w, dst);
            }
        }
    }
}

/// The phase and the phase-grid offset of kernel tap `t`: input coordinate
/// `o * s + t - pad = (o + offset) * s + phase`.
fn phase_of(t: usize, pad: usize, s: usize) -> (usize, isize) {
    let d = t as isize - pad as isize;
    (d.rem_euclid(s as isize) as usize, d.div_euclid(s as isize))
}

/// Where phase `(a, b)` lives in the phase buffer, and its rows and columns.
fn phase_extent(h: usize, w: usize, s: usize, a: usize, b: usize) -> (usize, usize, usize) {
    let rows = |n: usize, p: usize| n.saturating_sub(p).div_ceil(s);
    // Phases are stored row-phase-major: all `b` of phase row `a` after those of `a - 1`.
    let before_rows: usize = (0..a).map(|a2| rows(h, a2)).sum();
    let before_cols: usize = (0..b).map(|b2| rows(w, b2)).sum();
    let off = before_rows * w + rows(h, a) * before_cols;
    (off, rows(h, a), rows(w, b))
}

/// Which row phases and which column phases the kernel's taps read (bit `a` set when
/// phase `a` is read): a 1x1 kernel at stride 2 reads only phase 0 of each.
fn used_phases(g: &ConvGeometry) -> (u64, u64) {
    let mask = |k: usize| (0..k).fold(0u64, |m, t| m | 1 << phase_of(t, g.pad, g.stride).0);
    (mask(g.kernel_h), mask(g.kernel_w))
}

/// Splits the rows `ih` in `range` of `plane` (`h x w`) into the phases of
/// [`phase_extent`] that `used` names; other rows and phases are left as they are.
fn split_phases(
    plane: &[f32],
    (h, w): (usize, usize),
    s: usize,
    used: (u64, u64),
    range: (isize, isize),
    phases: &mut [f32],
) {
    let (lo, hi) = (range.0.max(0) as usize, (range.1.max(0) as usize).min(h));
    for a in (0..s).filter(|a| used.0 >> a & 1 == 1) {
        for b in (0..s).filter(|b| used.1 >> b & 1 == 1) {
            let (off, ph, pw) = phase_extent(h, w, s, a, b);
            for u in 0..ph {
                let ih = u * s + a;
                if ih < lo || ih >= hi {
                    continue;
                }
                let src = &plane[ih * w + b..(ih + 1) * w];
                let dst = &mut phases[off + u * pw..off + (u + 1) * pw];
                if s == 2 {
                    // Pairs rather than a stride, which the compiler turns into shuffles.
                    let (pairs, rest) = src.as_chunks::<2>();
                    for (d, pair) in dst.iter_mut().zip(pairs) {
                        *d = pair[0];
                    }
                    if let (Some(d), Some(&v)) = (dst.get_mut(pairs.len()), rest.first()) {
                        *d = v;
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src.iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// Zeroes a short run element by element (the runs at tile edges are one or two values,
/// where a `memset` call costs more than the stores).
#[inline(always)]
fn clear(run: &mut [f32]) {
    for v in run {
        *v = 0.0;
    }
}

/// `dst[(oh - oh0) * ow + x] = q[oh + dy][x + dx]` for the rows of `dst`, zero where the
/// shifted position leaves `q` (`ph x pw`).
fn copy_shifted(q: &[f32], (ph, pw): (usize, usize), (dy, dx): (isize, isize), oh0: usize, ow: usize, dst: &mut [f32]) {
    let rows = dst.len() / ow.max(1);
    // Output rows whose source row exists: oh0 + r + dy in 0..ph.
    let r_lo = (-(oh0 as isize) - dy).clamp(0, rows as isize) as usize;
    let r_hi = (ph as isize - oh0 as isize - dy).clamp(r_lo as isize, rows as isize) as usize;
    dst[..r_lo * ow].fill(0.0);
    dst[r_hi * ow..].fill(0.0);
    // Columns whose source column exists: x + dx in 0..pw.
    let x_lo = (-dx).clamp(0, ow as isize) as usize;
    let x_hi = (pw as isize - dx).clamp(x_lo as isize, ow as isize) as usize;
    if r_lo == r_hi {
        return;
    }
    let first_src = (oh0 as isize + r_lo as isize + dy) as usize * pw;
    if pw == ow && x_lo < x_hi {
        // One copy of whole rows, shifted by dx; the values that wrapped in from the
        // neighbouring rows (or fell outside `q`) are cleared after.
        let block = &mut dst[r_lo * ow..r_hi * ow];
        let start = first_src as isize + dx;
        let (s0, s1) = (
            start.max(0) as usize,
            ((start + block.len() as isize) as usize).min(q.len()),
        );
        let d0 = (s0 as isize - start) as usize;
        block[..d0].fill(0.0);
        block[d0..d0 + s1 - s0].copy_from_slice(&q[s0..s1]);
        block[d0 + s1 - s0..].fill(0.0);
        for row in block.chunks_exact_mut(ow) {
            clear(&mut row[..x_lo]);
            clear(&mut row[x_hi..]);
        }
        return;
    }
    for (r, row) in dst[r_lo * ow..r_hi * ow].chunks_exact_mut(ow).enumerate() {
        let src = first_src + r * pw;
        row[..x_lo].fill(0.0);
        row[x_hi..].fill(0.0);
        if x_lo < x_hi {
            let (a, b) = ((x_lo as isize + dx) as usize, (x_hi as isize + dx) as usize);
            row[x_lo..x_hi].copy_from_slice(&q[src + a..src + b]);
        }
    }
}

/// Naive twin of [`im2col`] (with `ld` the width): one element at a time from the
/// convolution's definition.
pub fn im2col_naive(g: &ConvGeometry, x: &[f32], oh0: usize, oh1: usize, col: &mut [f32]) {
    let cols = (oh1 - oh0) * g.out_w;
    for c in 0..g.in_channels {
        for i in 0..g.kernel_h {
            for j in 0..g.kernel_w {
                let row = (c * g.kernel_h + i) * g.kernel_w + j;
                for oh in oh0..oh1 {
                    for ow in 0..g.out_w {
                        let ih = (oh * g.stride + i) as isize - g.pad as isize;
                        let iw = (ow * g.stride + j) as isize - g.pad as isize;
                        let inside = ih >= 0 && iw >= 0 && (ih as usize) < g.in_h && (iw as usize) < g.in_w;
                        col[row * cols + (oh - oh0) * g.out_w + ow] = if inside {
                            x[(c * g.in_h + ih as usize) * g.in_w + iw as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Adds the column-matrix gradient `dcol` of `n` consecutive input channels of one image
/// (`n * kh * kw` x `out_h * out_w`) back onto `dx` (those `n` channels, n x H x W).
pub fn col2im_add(g: &ConvGeometry, dcol: &[f32], dx: &mut [f32]) {
    let cols = g.out_plane();
    let n = dx.len() / g.in_plane();
    debug_assert_eq!(dcol.len(), n * g.kernel_h * g.kernel_w * cols);
    let (s, pad) = (g.stride, g.pad as isize);
    for cl in 0..n {
        let plane = &mut dx[cl * g.in_plane()..(cl + 1) * g.in_plane()];
        for i in 0..g.kernel_h {
            for j in 0..g.kernel_w {
                let row = (cl * g.kernel_h + i) * g.kernel_w + j;
                let src_row = &dcol[row * cols..(row + 1) * cols];
                // Output columns whose tap j lands inside the row: iw = ow * s + j - pad.
                let lo = (g.pad.saturating_sub(j)).div_ceil(s).min(g.out_w);
                let hi = if g.in_w + g.pad > j {
                    ((g.in_w + g.pad - j - 1) / s + 1).clamp(lo, g.out_w)
                } else {
                    lo
                };
                if lo == hi {
                    continue;
                }
                let first = lo * s + j - g.pad;
                for oh in 0..g.out_h {
                    let ih = (oh * s) as isize - pad + i as isize;
                    if ih < 0 || ih >= g.in_h as isize {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * g.in_w + first..(ih as usize + 1) * g.in_w];
                    let src = &src_row[oh * g.out_w + lo..oh * g.out_w + hi];
                    if s == 1 {
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                    } else {
                        dst.iter_mut().step_by(s).zip(src).for_each(|(d, &v)| *d += v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2col_matches_its_naive_twin_on_odd_geometries() {
        // (C, H, W, kernel, stride, pad): unit and large strides, padding wider than the
        // kernel's reach, images narrower than the stride, odd and even sizes.
        let cases = [
            (2, 7, 9, 3, 1, 1),
            (3, 8, 8, 3, 2, 1),
            (2, 9, 7, 3, 2, 1),
            (1, 13, 11, 7, 2, 3),
            (2, 6, 6, 1, 2, 0),
            (1, 5, 5, 3, 1, 2),
            (1, 1, 1, 3, 2, 1),
            (2, 5, 4, 2, 3, 2),
            (1, 5, 10, 5, 1, 0),
        ];
        for (c, h, w, k, s, pad) in cases {
            let g = ConvGeometry::new(2, c, h, w, 4, (k, k), s, pad).unwrap();
            let x: Vec<f32> = (0..g.in_image()).map(|i| i as f32 + 1.0).collect();
            let mut phases = vec![f32::NAN; im2col_scratch(&g)];
            for (oh0, oh1) in [(0, g.out_h), (g.out_h / 2, g.out_h), (0, 1.min(g.out_h))] {
                let cols = (oh1 - oh0) * g.out_w;
                let mut want = vec![0.0; g.col_rows() * cols];
                im2col_naive(&g, &x, oh0, oh1, &mut want);
                // Side by side in a wider matrix, over stale NaN: every value is written.
                let ld = cols + 3;
                let mut got = vec![f32::NAN; g.col_rows() * ld];
                im2col(&g, &x, oh0, oh1, &mut got, ld, &mut phases);
                for r in 0..g.col_rows() {
                    assert_eq!(
                        &got[r * ld..r * ld + cols],
                        &want[r * cols..(r + 1) * cols],
                        "{g:?} rows {oh0}..{oh1}, column row {r}"
                    );
                }
            }
        }
    }
}
