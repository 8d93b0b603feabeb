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

/// Writes the column matrix of output rows `oh0..oh1` of one image `x` (C x H x W) into
/// `col` (`col_rows` x `(oh1 - oh0) * out_w`), zero where the window covers padding.
pub fn im2col(g: &ConvGeometry, x: &[f32], oh0: usize, oh1: usize, col: &mut [f32]) {
    let cols = (oh1 - oh0) * g.out_w;
    debug_assert_eq!(col.len(), g.col_rows() * cols);
    let (s, pad) = (g.stride, g.pad as isize);
    for c in 0..g.in_channels {
        let plane = &x[c * g.in_plane()..(c + 1) * g.in_plane()];
        for i in 0..g.kernel_h {
            for j in 0..g.kernel_w {
                let row = (c * g.kernel_h + i) * g.kernel_w + j;
                let dst_row = &mut col[row * cols..(row + 1) * cols];
                for oh in oh0..oh1 {
                    let dst = &mut dst_row[(oh - oh0) * g.out_w..(oh - oh0 + 1) * g.out_w];
                    let ih = (oh * s) as isize - pad + i as isize;
                    if ih < 0 || ih >= g.in_h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * g.in_w..(ih as usize + 1) * g.in_w];
                    for (ow, d) in dst.iter_mut().enumerate() {
                        let iw = (ow * s) as isize - pad + j as isize;
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
                for oh in 0..g.out_h {
                    let ih = (oh * s) as isize - pad + i as isize;
                    if ih < 0 || ih >= g.in_h as isize {
                        continue;
                    }
                    let dst = &mut plane[ih as usize * g.in_w..(ih as usize + 1) * g.in_w];
                    let src = &src_row[oh * g.out_w..(oh + 1) * g.out_w];
                    for (ow, &v) in src.iter().enumerate() {
                        let iw = (ow * s) as isize - pad + j as isize;
                        if iw >= 0 && iw < g.in_w as isize {
                            dst[iw as usize] += v;
                        }
                    }
                }
            }
        }
    }
}
