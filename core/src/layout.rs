//! The channel-blocked activation layout used inside an execution plan (NCHWc, as ONNX
//! Runtime's MLAS and oneDNN's `nChw16c`): `[n][c / block][h][w][block]`, so that one
//! vector holds one pixel's `block` channels and kernels move whole channel blocks with
//! no transposes. Channels are padded with zeros to a whole number of blocks. A block of
//! 1 is plain NCHW, which is how the 3-channel stem reads its input.
//!
//! Every blocked kernel indexes through [`Blocked`]; reorders to and from NCHW happen
//! only at a plan's edges.

use crate::{Error, Result};

/// The shape of an activation in the blocked layout and the indexing that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Blocked {
    /// Images.
    pub n: usize,
    /// Real channels (the layout pads them to [`Blocked::padded_channels`]).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Channels per block: the lanes of the kernels' vector, or 1 for plain NCHW.
    pub block: usize,
}

impl Blocked {
    /// `n x c x h x w` in blocks of `block` channels.
    pub fn new(n: usize, c: usize, h: usize, w: usize, block: usize) -> Self {
        assert!(block > 0, "channel block must be positive");
        Blocked { n, c, h, w, block }
    }

    /// Plain NCHW, viewed as blocks of one channel.
    pub fn nchw(n: usize, c: usize, h: usize, w: usize) -> Self {
        Blocked::new(n, c, h, w, 1)
    }

    /// Channel blocks per image.
    #[inline(always)]
    pub fn blocks(&self) -> usize {
        self.c.div_ceil(self.block)
    }

    /// Channels including the zero padding of the last block.
    pub fn padded_channels(&self) -> usize {
        self.blocks() * self.block
    }

    /// Values of one channel block of one image: `h * w * block`.
    #[inline(always)]
    pub fn plane_len(&self) -> usize {
        self.h * self.w * self.block
    }

    /// Values of one image.
    #[inline(always)]
    pub fn image_len(&self) -> usize {
        self.blocks() * self.plane_len()
    }

    /// Values of the whole activation, padding included.
    pub fn len(&self) -> usize {
        self.n * self.image_len()
    }

    /// Whether the activation holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the first channel of block `cb` at pixel `(y, x)` of image `n`: where the
    /// kernels load or store that pixel's vector.
    #[inline(always)]
    pub fn at(&self, n: usize, cb: usize, y: usize, x: usize) -> usize {
        (((n * self.blocks() + cb) * self.h + y) * self.w + x) * self.block
    }

    /// Offset of channel `c` at pixel `(y, x)` of image `n`.
    #[inline(always)]
    pub fn index(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        self.at(n, c / self.block, y, x) + c % self.block
    }

    /// The same layout with other spatial sizes.
    pub fn with_hw(self, h: usize, w: usize) -> Self {
        Blocked { h, w, ..self }
    }

    /// The same layout with another channel count.
    pub fn with_channels(self, c: usize) -> Self {
        Blocked { c, ..self }
    }

    /// Checks that `data` has exactly this layout's length.
    pub fn check(&self, data: &[f32], what: &str) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::Shape(format!(
                "{what}: expected {} values for {}x{}x{}x{} in blocks of {}, found {}",
                self.len(),
                self.n,
                self.c,
                self.h,
                self.w,
                self.block,
                data.len()
            )));
        }
        Ok(())
    }
}

/// Reorders an NCHW activation into `dst` in the layout `shape`, zeroing the padding
/// channels. Panics if either slice has the wrong length.
pub fn to_blocked(src: &[f32], shape: Blocked, dst: &mut [f32]) {
    let plain = Blocked::nchw(shape.n, shape.c, shape.h, shape.w);
    assert_eq!(src.len(), plain.len(), "to_blocked: source length");
    assert_eq!(dst.len(), shape.len(), "to_blocked: destination length");
    let b = shape.block;
    for n in 0..shape.n {
        for cb in 0..shape.blocks() {
            for y in 0..shape.h {
                for x in 0..shape.w {
                    let at = shape.at(n, cb, y, x);
                    for l in 0..b {
                        let c = cb * b + l;
                        dst[at + l] = if c < shape.c { src[plain.index(n, c, y, x)] } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// Reorders an activation in the layout `shape` into NCHW `dst`, dropping the padding
/// channels. Panics if either slice has the wrong length.
pub fn from_blocked(src: &[f32], shape: Blocked, dst: &mut [f32]) {
    let plain = Blocked::nchw(shape.n, shape.c, shape.h, shape.w);
    assert_eq!(src.len(), shape.len(), "from_blocked: source length");
    assert_eq!(dst.len(), plain.len(), "from_blocked: destination length");
    for n in 0..shape.n {
        for c in 0..shape.c {
            for y in 0..shape.h {
                for x in 0..shape.w {
                    dst[plain.index(n, c, y, x)] = src[shape.index(n, c, y, x)];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_of_one_is_nchw() {
        let s = Blocked::nchw(2, 3, 4, 5);
        assert_eq!(s.len(), 120);
        assert_eq!(s.index(1, 2, 3, 4), ((3 + 2) * 4 + 3) * 5 + 4);
    }

    #[test]
    fn round_trip_pads_channels_with_zeros() {
        for block in [1, 4, 8, 16] {
            let (n, c, h, w) = (2, 19, 3, 5);
            let src: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 + 1.0).collect();
            let shape = Blocked::new(n, c, h, w, block);
            let mut blocked = vec![f32::NAN; shape.len()];
            to_blocked(&src, shape, &mut blocked);
            assert_eq!(shape.padded_channels() % block, 0);
            let zeros = blocked.iter().filter(|&&v| v == 0.0).count();
            assert_eq!(zeros, n * h * w * (shape.padded_channels() - c));
            // Channel 17 of image 1 at (2, 4) sits where `index` says.
            assert_eq!(blocked[shape.index(1, 17, 2, 4)], src[((c + 17) * h + 2) * w + 4]);
            let mut back = vec![0.0; src.len()];
            from_blocked(&blocked, shape, &mut back);
            assert_eq!(back, src);
        }
    }

    #[test]
    fn check_names_the_expected_length() {
        let s = Blocked::new(1, 16, 2, 2, 8);
        let e = s.check(&[0.0; 3], "conv1").unwrap_err().to_string();
        assert!(e.contains("expected 64") && e.contains("found 3"), "{e}");
    }
}
