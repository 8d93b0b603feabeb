//! Normalisation, the paper's augmentation (pad 4, random 32x32 crop, random horizontal
//! flip) and deterministic batching.
//!
//! Every random draw comes from a [`Rng`] derived from `(seed, epoch[, batch])`, so a
//! resumed run reproduces an epoch exactly, whatever the thread scheduling.

use super::{DataError, Dataset, Result};
use crate::rng::Rng;
use rayon::prelude::*;

/// How u8 images become network inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Normalization {
    /// The paper's: scale to [0, 1], then subtract the training set's per-pixel mean
    /// image; `mean` is CHW (3 x H x W) and in [0, 1] units.
    PerPixelMean {
        /// Mean image, CHW, in [0, 1] units.
        mean: Vec<f32>,
    },
    /// torchvision's `ToTensor` + `Normalize(mean, std)`: `(v / 255 - mean[c]) / std[c]`.
    PerChannel {
        /// Channel means in [0, 1] units.
        mean: [f32; 3],
        /// Channel standard deviations in [0, 1] units.
        std: [f32; 3],
    },
}

impl Normalization {
    /// The per-pixel mean image of `dataset` in [0, 1] units (summed exactly, divided in
    /// f64); all zeros for an empty data set.
    pub fn per_pixel_mean(dataset: &Dataset) -> Normalization {
        let n = dataset.image_len();
        let mut sums = vec![0u64; n];
        for img in dataset.images.chunks_exact(n.max(1)) {
            for (s, &v) in sums.iter_mut().zip(img) {
                *s += v as u64;
            }
        }
        let count = dataset.len().max(1) as f64 * 255.0;
        let mean = sums.iter().map(|&s| (s as f64 / count) as f32).collect();
        Normalization::PerPixelMean { mean }
    }

    /// Channel means and standard deviations of `dataset` (population std, in f64), for
    /// [`Normalization::PerChannel`]; std 1 where a channel is constant or data is empty.
    pub fn per_channel(dataset: &Dataset) -> Normalization {
        let plane = dataset.height * dataset.width;
        let mut s = [0f64; 3];
        let mut s2 = [0f64; 3];
        for img in dataset.images.chunks_exact(dataset.image_len().max(1)) {
            for c in 0..3 {
                let (mut a, mut b) = (0u64, 0u64);
                for &v in &img[c * plane..(c + 1) * plane] {
                    a += v as u64;
                    b += v as u64 * v as u64;
                }
                s[c] += a as f64;
                s2[c] += b as f64;
            }
        }
        let count = (dataset.len() * plane).max(1) as f64;
        let mut mean = [0f32; 3];
        let mut std = [1f32; 3];
        for c in 0..3 {
            let m = s[c] / count / 255.0;
            let var = (s2[c] / count / (255.0 * 255.0) - m * m).max(0.0);
            mean[c] = m as f32;
            if var > 0.0 {
                std[c] = var.sqrt() as f32;
            }
        }
        Normalization::PerChannel { mean, std }
    }

    /// Checks that the values make sense: finite means, and standard deviations that are
    /// finite and positive (a std of 0 turns every input into NaN or infinity).
    pub fn check_values(&self) -> Result<()> {
        match self {
            Normalization::PerChannel { mean, std } => {
                if !mean.iter().all(|m| m.is_finite()) {
                    return Err(DataError::Invalid(format!(
                        "channel means must be finite, found {mean:?}"
                    )));
                }
                // NaN-aware: NaN fails `> 0.0`.
                if !std.iter().all(|s| s.is_finite() && *s > 0.0) {
                    return Err(DataError::Invalid(format!(
                        "channel standard deviations must be positive and finite, found {std:?}"
                    )));
                }
                Ok(())
            }
            Normalization::PerPixelMean { mean } => match mean.iter().position(|m| !m.is_finite()) {
                Some(i) => Err(DataError::Invalid(format!(
                    "the per-pixel mean image must be finite, found {} at index {i}",
                    mean[i]
                ))),
                None => Ok(()),
            },
        }
    }

    /// Checks that this normalisation fits images of `image_len` bytes (3 x H x W).
    pub fn check(&self, image_len: usize) -> Result<()> {
        match self {
            Normalization::PerPixelMean { mean } if mean.len() != image_len => Err(DataError::Invalid(format!(
                "per-pixel mean has {} values, images have {image_len}",
                mean.len()
            ))),
            _ if !image_len.is_multiple_of(3) => Err(DataError::Invalid(format!(
                "image of {image_len} bytes is not 3-channel CHW"
            ))),
            _ => Ok(()),
        }
    }

    /// The normalised value of byte `v` at flat CHW index `i` (channel `i / plane`).
    #[inline]
    fn value(&self, v: u8, i: usize, plane: usize) -> f32 {
        match self {
            Normalization::PerPixelMean { mean } => v as f32 / 255.0 - mean[i],
            Normalization::PerChannel { mean, std } => {
                let c = i / plane;
                (v as f32 / 255.0 - mean[c]) / std[c]
            }
        }
    }

    /// Normalises one u8 CHW image into `out` (same length).
    pub fn apply_into(&self, img: &[u8], out: &mut [f32]) -> Result<()> {
        self.check(img.len())?;
        if out.len() != img.len() {
            return Err(DataError::Invalid(format!(
                "output has {} values, image has {}",
                out.len(),
                img.len()
            )));
        }
        let plane = img.len() / 3;
        for (i, (o, &v)) in out.iter_mut().zip(img).enumerate() {
            *o = self.value(v, i, plane);
        }
        Ok(())
    }

    /// Normalises one u8 CHW image to f32 CHW.
    pub fn apply(&self, img: &[u8]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; img.len()];
        self.apply_into(img, &mut out)?;
        Ok(out)
    }
}

/// Where zero padding happens relative to normalisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PadOrder {
    /// torchvision's `RandomCrop(32, padding=4)` then `Normalize`: the u8 image is padded
    /// with 0, so padding becomes `-mean` (or `-mean/std`) after normalisation. Default.
    #[default]
    BeforeNormalize,
    /// Pad the normalised image with 0.0 (padding equals the mean image).
    AfterNormalize,
}

/// The paper's augmentation: zero-pad `pad` pixels on each side, take a random crop of
/// the original size, flip horizontally with probability 0.5 if `flip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Padding on each side (4 in the paper).
    pub pad: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Whether padding is applied before (torchvision, default) or after normalising.
    pub order: PadOrder,
}

impl Default for Augment {
    fn default() -> Self {
        Augment::paper()
    }
}

/// One draw of [`Augment`]: crop offsets into the padded image, in `0..=2 * pad`, and flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropFlip {
    /// Row of the crop's top-left corner in the padded image.
    pub dy: usize,
    /// Column of the crop's top-left corner in the padded image.
    pub dx: usize,
    /// Whether the crop is mirrored left-right.
    pub flip: bool,
}

impl Augment {
    /// He et al.'s CIFAR augmentation: pad 4, random crop, random flip, torchvision order.
    pub fn paper() -> Self {
        Augment {
            pad: 4,
            flip: true,
            order: PadOrder::BeforeNormalize,
        }
    }

    /// Draws crop offsets (row, then column, like torchvision) and the flip.
    pub fn draw(&self, rng: &mut Rng) -> CropFlip {
        let dy = rng.below(2 * self.pad + 1);
        let dx = rng.below(2 * self.pad + 1);
        let flip = self.flip && rng.coin();
        CropFlip { dy, dx, flip }
    }

    /// Writes the normalised, cropped and maybe flipped u8 CHW image (`h` x `w`) to `out`.
    /// The normalisation of output pixel (y, x) is the one of position (y, x), as when
    /// `Normalize` follows the crop.
    pub fn apply_into(
        &self,
        img: &[u8],
        h: usize,
        w: usize,
        norm: &Normalization,
        cf: CropFlip,
        out: &mut [f32],
    ) -> Result<()> {
        let n = 3 * h * w;
        norm.check(n)?;
        if img.len() != n || out.len() != n || cf.dy > 2 * self.pad || cf.dx > 2 * self.pad {
            return Err(DataError::Invalid(format!(
                "augment: image {} bytes, output {} values, expected {n}; crop ({}, {}) with pad {}",
                img.len(),
                out.len(),
                cf.dy,
                cf.dx,
                self.pad
            )));
        }
        self.write(img, h, w, norm, cf, out);
        Ok(())
    }

    /// [`Augment::apply_into`] without the checks (lengths already validated).
    fn write(&self, img: &[u8], h: usize, w: usize, norm: &Normalization, cf: CropFlip, out: &mut [f32]) {
        let plane = h * w;
        for c in 0..3 {
            for y in 0..h {
                // Source row in the unpadded image, if inside.
                let sy = (y + cf.dy).checked_sub(self.pad).filter(|&s| s < h);
                for x in 0..w {
                    let xc = if cf.flip { w - 1 - x } else { x };
                    let sx = (xc + cf.dx).checked_sub(self.pad).filter(|&s| s < w);
                    let i = c * plane + y * w + x;
                    out[i] = match (sy, sx) {
                        (Some(sy), Some(sx)) => norm.value(img[c * plane + sy * w + sx], i, plane),
                        _ => match self.order {
                            PadOrder::BeforeNormalize => norm.value(0, i, plane),
                            PadOrder::AfterNormalize => 0.0,
                        },
                    };
                }
            }
        }
    }
}

/// Mixes two words into a seed (SplitMix64 through [`Rng::new`]).
fn mix(a: u64, b: u64) -> u64 {
    Rng::new(a ^ Rng::new(b).next_u64().rotate_left(23)).next_u64()
}

const SHUFFLE_STREAM: u64 = 0x5348_5546_4c45; // "SHUFLE"
const AUGMENT_STREAM: u64 = 0x4155_474d_4e54; // "AUGMNT"

/// The images `offset..offset + size` of a batch of `total` that worker `index` of
/// `workers` data-parallel workers computes: contiguous shares whose sizes differ by at
/// most one, the first `total % workers` one image larger. The one rule by which the
/// page's Web Workers and `resnet train` over MPI split every batch (empty for an index
/// past the last worker).
pub fn batch_share(total: usize, workers: usize, index: usize) -> std::ops::Range<usize> {
    let workers = workers.max(1);
    if index >= workers {
        return total..total;
    }
    let (base, extra) = (total / workers, total % workers);
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

/// Yields the batches of an epoch: a permutation seeded by `(seed, epoch)` (or the data
/// order for evaluation), normalised and optionally augmented into caller buffers.
#[derive(Clone, Debug)]
pub struct Batcher<'a> {
    data: &'a Dataset,
    norm: &'a Normalization,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    augment: Option<Augment>,
    drop_last: bool,
}

impl<'a> Batcher<'a> {
    /// Training batches: shuffled per epoch from `seed`, optionally augmented; with
    /// `drop_last` the final partial batch is skipped.
    pub fn train(
        data: &'a Dataset,
        norm: &'a Normalization,
        batch_size: usize,
        seed: u64,
        augment: Option<Augment>,
        drop_last: bool,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::Invalid("batch size must be positive".to_string()));
        }
        norm.check(data.image_len())?;
        Ok(Batcher {
            data,
            norm,
            batch_size,
            seed,
            shuffle: true,
            augment,
            drop_last,
        })
    }

    /// Evaluation batches: data order, no augmentation, last partial batch kept.
    pub fn eval(data: &'a Dataset, norm: &'a Normalization, batch_size: usize) -> Result<Self> {
        let mut b = Batcher::train(data, norm, batch_size, 0, None, false)?;
        b.shuffle = false;
        Ok(b)
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of batches in each epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.data.len() / self.batch_size
        } else {
            self.data.len().div_ceil(self.batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the images.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.shuffle {
            Rng::new(mix(mix(self.seed, SHUFFLE_STREAM), epoch)).shuffle(&mut order);
        }
        order
    }

    /// The batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> Epoch<'_> {
        Epoch {
            batcher: self,
            epoch,
            order: self.epoch_order(epoch),
            next: 0,
        }
    }
}

/// One epoch of a [`Batcher`]: random access with [`Epoch::fill`], or sequential with
/// [`Epoch::next_into`].
#[derive(Clone, Debug)]
pub struct Epoch<'b> {
    batcher: &'b Batcher<'b>,
    epoch: u64,
    order: Vec<usize>,
    next: usize,
}

impl Epoch<'_> {
    /// Number of batches.
    pub fn len(&self) -> usize {
        self.batcher.batches_per_epoch()
    }

    /// True when the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data set indices of batch `b` (empty past the end).
    pub fn indices(&self, b: usize) -> &[usize] {
        if b >= self.len() {
            return &[];
        }
        let bs = self.batcher.batch_size;
        &self.order[b * bs..((b + 1) * bs).min(self.order.len())]
    }

    /// Fills batch `b`: `images` gets N x 3 x H x W normalised values and `labels` N
    /// labels, for the N (returned) images of the batch; the buffers may be larger.
    pub fn fill(&self, b: usize, images: &mut [f32], labels: &mut [u32]) -> Result<usize> {
        self.fill_part(b, 0..usize::MAX, images, labels)
    }

    /// Fills positions `part` (clipped to the batch) of batch `b`, exactly as [`Epoch::fill`]
    /// fills them: one data-parallel worker's share of a batch that several workers split.
    pub fn fill_part(
        &self,
        b: usize,
        part: std::ops::Range<usize>,
        images: &mut [f32],
        labels: &mut [u32],
    ) -> Result<usize> {
        let bt = self.batcher;
        let whole = self.indices(b);
        let part = part.start.min(whole.len())..part.end.min(whole.len());
        let idx = &whole[part.clone()];
        let n = idx.len();
        let len = bt.data.image_len();
        if images.len() < n * len || labels.len() < n {
            return Err(DataError::Invalid(format!(
                "batch of {n} needs {} image values and {n} labels, buffers have {} and {}",
                n * len,
                images.len(),
                labels.len()
            )));
        }
        // Draws are made in order for the whole batch from one generator per (seed, epoch,
        // batch), then the per-image work runs in parallel: the result depends neither on
        // scheduling nor on how the batch is split.
        let draws: Vec<Option<CropFlip>> = match bt.augment {
            Some(aug) => {
                let mut rng = Rng::new(mix(mix(mix(bt.seed, AUGMENT_STREAM), self.epoch), b as u64));
                let all: Vec<CropFlip> = whole.iter().map(|_| aug.draw(&mut rng)).collect();
                all[part].iter().map(|&d| Some(d)).collect()
            }
            None => vec![None; n],
        };
        let (h, w) = (bt.data.height, bt.data.width);
        images[..n * len]
            .par_chunks_mut(len)
            .zip(idx.par_iter())
            .zip(draws.par_iter())
            .for_each(|((out, &i), draw)| {
                let img = bt.data.image(i);
                match (bt.augment, draw) {
                    (Some(aug), Some(cf)) => aug.write(img, h, w, bt.norm, *cf, out),
                    _ => {
                        for (k, (o, &v)) in out.iter_mut().zip(img).enumerate() {
                            *o = bt.norm.value(v, k, h * w);
                        }
                    }
                }
            });
        for (l, &i) in labels.iter_mut().zip(idx) {
            *l = bt.data.labels[i] as u32;
        }
        Ok(n)
    }

    /// Fills the next batch and returns its size, or `None` at the end of the epoch.
    pub fn next_into(&mut self, images: &mut [f32], labels: &mut [u32]) -> Result<Option<usize>> {
        if self.next >= self.len() {
            return Ok(None);
        }
        let n = self.fill(self.next, images, labels)?;
        self.next += 1;
        Ok(Some(n))
    }

    /// [`Epoch::next_into`] for worker `index` of `workers` that split every batch (see
    /// [`batch_share`]): fills this worker's share of the next batch and returns its
    /// size and the whole batch's, or `None` at the end of the epoch.
    pub fn next_share_into(
        &mut self,
        workers: usize,
        index: usize,
        images: &mut [f32],
        labels: &mut [u32],
    ) -> Result<Option<(usize, usize)>> {
        if self.next >= self.len() {
            return Ok(None);
        }
        let whole = self.indices(self.next).len();
        let n = self.fill_part(self.next, batch_share(whole, workers, index), images, labels)?;
        self.next += 1;
        Ok(Some((n, whole)))
    }

    /// Makes [`Epoch::next_into`] continue at batch `b` (to resume mid-epoch).
    pub fn seek(&mut self, b: usize) {
        self.next = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shares_tile_the_batch_the_first_ones_larger() {
        assert_eq!(batch_share(7, 3, 0), 0..3);
        assert_eq!(batch_share(7, 3, 1), 3..5);
        assert_eq!(batch_share(7, 3, 2), 5..7);
        assert_eq!(batch_share(7, 3, 3), 7..7);
        for total in [0, 1, 2, 5, 128, 129] {
            for workers in 1..6 {
                let shares: Vec<_> = (0..workers).map(|i| batch_share(total, workers, i)).collect();
                assert_eq!(shares[0].start, 0);
                assert_eq!(shares[workers - 1].end, total);
                assert!(shares.windows(2).all(|w| w[0].end == w[1].start));
                let (min, max) = (total / workers, total.div_ceil(workers));
                assert!(shares.iter().all(|r| (min..=max).contains(&r.len())), "{shares:?}");
            }
        }
    }

    /// A 1-channel-looking 3 x 2 x 3 image: value = 10 * c + 3 * y + x + 1.
    fn tiny() -> Dataset {
        let img: Vec<u8> = (0..3)
            .flat_map(|c| (0..2).flat_map(move |y| (0..3).map(move |x| (10 * c + 3 * y + x + 1) as u8)))
            .collect();
        Dataset::new(img, vec![0], vec!["a".into()], 2, 3).unwrap()
    }

    fn counting(n: usize) -> Dataset {
        let mut images = Vec::new();
        for i in 0..n {
            images.extend_from_slice(&[i as u8; 12]); // 2x2 images
        }
        let labels = (0..n).map(|i| (i % 4) as u16).collect();
        Dataset::new(images, labels, (0..4).map(|c| c.to_string()).collect(), 2, 2).unwrap()
    }

    /// Rounds values (IDENT's x / 255 * 255 is not exact in f32).
    fn rd(x: &[f32]) -> Vec<f32> {
        x.iter().map(|v| v.round()).collect()
    }

    const IDENT: Normalization = Normalization::PerChannel {
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
    };

    #[test]
    fn normalizations() {
        let d = counting(3); // pixel values 0, 1, 2 everywhere
        let Normalization::PerPixelMean { mean } = Normalization::per_pixel_mean(&d) else {
            panic!()
        };
        assert_eq!(mean.len(), 12);
        assert!(mean.iter().all(|&m| (m - 1.0 / 255.0).abs() < 1e-9));
        let pp = Normalization::PerPixelMean { mean };
        let x = pp.apply(d.image(2)).unwrap();
        assert!(x.iter().all(|&v| (v - 1.0 / 255.0).abs() < 1e-7));
        assert!(pp.apply(&[0u8; 3]).is_err());
        let Normalization::PerChannel { mean, std } = Normalization::per_channel(&d) else {
            panic!()
        };
        assert!((mean[0] - 1.0 / 255.0).abs() < 1e-7);
        assert!((std[1] - (2.0f64 / 3.0).sqrt() as f32 / 255.0).abs() < 1e-7);
        assert_eq!(rd(&IDENT.apply(&[0, 7, 255]).unwrap()), vec![0.0, 7.0, 255.0]);
    }

    #[test]
    fn crop_flip_geometry() {
        let d = tiny();
        let aug = Augment {
            pad: 1,
            flip: true,
            order: PadOrder::BeforeNormalize,
        };
        let run = |aug: Augment, norm: &Normalization, dy, dx, flip| {
            let mut out = vec![0f32; 18];
            let cf = CropFlip { dy, dx, flip };
            aug.apply_into(d.image(0), 2, 3, norm, cf, &mut out).map(|_| out)
        };
        let ident = |dy, dx, flip| rd(&run(aug, &IDENT, dy, dx, flip).unwrap());
        // No shift (dy = dx = pad), no flip: the identity.
        let want: Vec<f32> = d.image(0).iter().map(|&v| v as f32).collect();
        assert_eq!(ident(1, 1, false), want);
        // Crop at the padded origin: shifts content right/down by one, zeros enter.
        let out = ident(0, 0, false);
        assert_eq!(&out[..6], &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0]);
        assert_eq!(&out[6..12], &[0.0, 0.0, 0.0, 0.0, 11.0, 12.0]);
        // Flip only: rows mirrored.
        assert_eq!(&ident(1, 1, true)[..6], &[3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        // Shift up-left by one then flip: crop of columns 1..=2 plus padding, mirrored.
        assert_eq!(&ident(2, 2, true)[..6], &[0.0, 6.0, 5.0, 0.0, 0.0, 0.0]);
        // Padding value: -mean/std before normalising, 0 after.
        let norm = Normalization::PerChannel {
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        assert_eq!(run(aug, &norm, 0, 0, false).unwrap()[0], -2.0);
        let after = Augment {
            order: PadOrder::AfterNormalize,
            ..aug
        };
        assert_eq!(run(after, &norm, 0, 0, false).unwrap()[0], 0.0);
        assert!(run(aug, &norm, 3, 0, false).is_err());
        // Draws stay in range and both flips occur.
        let mut rng = Rng::new(1);
        let draws: Vec<CropFlip> = (0..200).map(|_| Augment::paper().draw(&mut rng)).collect();
        assert!(draws.iter().all(|c| c.dy <= 8 && c.dx <= 8));
        assert!(draws.iter().any(|c| c.flip) && draws.iter().any(|c| !c.flip));
        assert!(draws.iter().any(|c| c.dx == 8) && draws.iter().any(|c| c.dy == 0));
    }

    fn run_epoch(b: &Batcher, epoch: u64) -> (Vec<f32>, Vec<u32>, Vec<usize>) {
        let bs = b.batch_size();
        let mut imgs = vec![0f32; bs * 12];
        let mut labs = vec![0u32; bs];
        let (mut all_i, mut all_l, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        let mut e = b.epoch(epoch);
        while let Some(n) = e.next_into(&mut imgs, &mut labs).unwrap() {
            all_i.extend_from_slice(&imgs[..n * 12]);
            all_l.extend_from_slice(&labs[..n]);
            sizes.push(n);
        }
        (all_i, all_l, sizes)
    }

    #[test]
    fn batcher_epochs() {
        let d = counting(10);
        let b = Batcher::train(&d, &IDENT, 4, 7, None, false).unwrap();
        assert_eq!(b.batches_per_epoch(), 3);
        let (imgs, labels, sizes) = run_epoch(&b, 0);
        assert_eq!(sizes, vec![4, 4, 2]);
        // every image exactly once, labels following images
        let mut firsts: Vec<usize> = imgs.chunks(12).map(|c| c[0].round() as usize).collect();
        for (k, &i) in firsts.iter().enumerate() {
            assert_eq!(labels[k], (i % 4) as u32);
        }
        firsts.sort();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        // determinism and epoch dependence
        assert_eq!(run_epoch(&b, 0), run_epoch(&b, 0));
        assert_ne!(b.epoch_order(0), b.epoch_order(1));
        let b2 = Batcher::train(&d, &IDENT, 4, 8, None, true).unwrap();
        assert_ne!(b.epoch_order(0), b2.epoch_order(0));
        assert_eq!(run_epoch(&b2, 0).2, vec![4, 4]);
        // evaluation: in order
        let ev = Batcher::eval(&d, &IDENT, 3).unwrap();
        let (imgs, _, sizes) = run_epoch(&ev, 5);
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        let firsts: Vec<usize> = imgs.chunks(12).map(|c| c[0].round() as usize).collect();
        assert_eq!(firsts, (0..10).collect::<Vec<_>>());
        // buffers too small
        let mut small = vec![0f32; 11];
        assert!(b.epoch(0).fill(0, &mut small, &mut [0; 4]).is_err());
        assert!(Batcher::train(&d, &IDENT, 0, 0, None, false).is_err());
    }

    #[test]
    fn augmented_batches_are_reproducible_and_resumable() {
        // 32x32 images with distinct pixels so crops and flips show.
        let n = 9;
        let images: Vec<u8> = (0..n * 3072).map(|i| (i * 7 % 251) as u8).collect();
        let d = Dataset::new(images, vec![0; n], vec!["x".into()], 32, 32).unwrap();
        let norm = Normalization::per_pixel_mean(&d);
        let b = Batcher::train(&d, &norm, 4, 3, Some(Augment::paper()), false).unwrap();
        let mut x1 = vec![0f32; 4 * 3072];
        let mut x2 = vec![0f32; 4 * 3072];
        let mut l = vec![0u32; 4];
        let e = b.epoch(2);
        e.fill(1, &mut x1, &mut l).unwrap();
        // Resume: a fresh epoch object seeks to batch 1 and gets the same values.
        let mut e2 = b.epoch(2);
        e2.seek(1);
        e2.next_into(&mut x2, &mut l).unwrap();
        assert_eq!(x1, x2);
        // Different epochs augment differently.
        b.epoch(3).fill(1, &mut x2, &mut l).unwrap();
        assert_ne!(x1, x2);
        // Without augmentation a batch equals the normalised images.
        let plain = Batcher::train(&d, &norm, 4, 3, None, false).unwrap();
        let e = plain.epoch(2);
        e.fill(0, &mut x1, &mut l).unwrap();
        let want = norm.apply(d.image(e.indices(0)[0])).unwrap();
        assert_eq!(&x1[..3072], &want[..]);
        // Two workers' parts of an augmented batch are exactly the halves of the batch.
        let e = b.epoch(2);
        let mut whole = vec![0f32; 4 * 3072];
        let mut labels = vec![0u32; 4];
        e.fill(1, &mut whole, &mut labels).unwrap();
        let mut parts = vec![0f32; 4 * 3072];
        let (front, back) = parts.split_at_mut(3 * 3072);
        assert_eq!(e.fill_part(1, 0..3, front, &mut l).unwrap(), 3);
        assert_eq!(e.fill_part(1, 3..7, back, &mut l).unwrap(), 1, "clipped to the batch");
        assert_eq!(whole, parts);
        assert_eq!(l[0], labels[3]);
    }
}
