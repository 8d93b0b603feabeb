//! Data sets and image preprocessing: CIFAR-10 (binary batches, plain or inside the
//! official `.tar.gz`), ImageFolder-style directories, decoding, torchvision-style
//! resizing/cropping, normalisation, augmentation and batching.
//!
//! Everything here works on wasm32 except [`folder`] and the directory loaders, which
//! need `std::fs` and threads.

pub mod augment;
pub mod cifar;
#[cfg(not(target_arch = "wasm32"))]
pub mod folder;
pub mod image;
#[cfg(not(target_arch = "wasm32"))]
pub mod open;
pub mod tar;

use crate::rng::Rng;

/// Everything that can go wrong while reading or preparing data; each variant names the
/// file (or image) concerned so a user can find the culprit.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path that could not be read.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A binary file (batch, archive) is malformed at a known byte offset.
    #[error("{file}: at byte offset {offset}: {detail}")]
    Format {
        /// The file (or archive member) concerned.
        file: String,
        /// Byte offset of the problem within that file.
        offset: u64,
        /// What was expected and what was found.
        detail: String,
    },
    /// An image could not be decoded or is unacceptable (too large, wrong length...).
    #[error("{file}: {detail}")]
    Image {
        /// The image file (or a description of the buffer).
        file: String,
        /// What went wrong.
        detail: String,
    },
    /// An image of a data set does not have the size of the others.
    #[error("{file}: image is {found_w}x{found_h} (WxH), expected {expected_w}x{expected_h} like {first}")]
    SizeMismatch {
        /// The offending image.
        file: String,
        /// The first image, which fixed the size.
        first: String,
        /// Expected width.
        expected_w: usize,
        /// Expected height.
        expected_h: usize,
        /// Width found.
        found_w: usize,
        /// Height found.
        found_h: usize,
    },
    /// Something required is missing (a file in an archive, a split folder...).
    #[error("{what} not found in {place}")]
    NotFound {
        /// What was looked for.
        what: String,
        /// Where it was looked for.
        place: String,
    },
    /// Inconsistent arguments or data set contents.
    #[error("{0}")]
    Invalid(String),
}

/// Result type of the data module.
pub type Result<T> = std::result::Result<T, DataError>;

/// Images kept in memory as u8 CHW (3 x H x W each), with labels and class names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// All images back to back, each `3 * height * width` bytes, planar RGB.
    pub images: Vec<u8>,
    /// One label per image, each `< classes.len()`.
    pub labels: Vec<u16>,
    /// Class names; label `i` means `classes[i]`.
    pub classes: Vec<String>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
}

impl Dataset {
    /// Builds a data set and checks it (see [`Dataset::validate`]).
    pub fn new(images: Vec<u8>, labels: Vec<u16>, classes: Vec<String>, height: usize, width: usize) -> Result<Self> {
        let d = Dataset {
            images,
            labels,
            classes,
            height,
            width,
        };
        d.validate()?;
        Ok(d)
    }

    /// Checks that the image buffer holds exactly one image per label and that every
    /// label names a class.
    pub fn validate(&self) -> Result<()> {
        let per = self.image_len();
        if per == 0 {
            return Err(DataError::Invalid(format!(
                "data set images have zero size ({}x{})",
                self.width, self.height
            )));
        }
        let expected = per
            .checked_mul(self.labels.len())
            .ok_or_else(|| DataError::Invalid("data set size overflows usize".to_string()))?;
        if self.images.len() != expected {
            return Err(DataError::Invalid(format!(
                "data set has {} labels of {}x{} images, so expected {} image bytes, found {}",
                self.labels.len(),
                self.width,
                self.height,
                expected,
                self.images.len()
            )));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.classes.len())
        {
            return Err(DataError::Invalid(format!(
                "label {l} of image {i} is out of range: there are {} classes",
                self.classes.len()
            )));
        }
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image: `3 * height * width`.
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// Image `i` as u8 CHW; panics if `i >= len()` like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Number of images of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// The images at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid(format!(
                "subset index {bad} out of range for a data set of {} images",
                self.len()
            )));
        }
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            images,
            labels,
            classes: self.classes.clone(),
            height: self.height,
            width: self.width,
        })
    }

    /// Splits off `val` images chosen by a shuffle seeded with `seed` (like the paper's
    /// 45k/5k split of CIFAR-10's training set); returns `(train, val)`, each keeping
    /// the original relative order of its images.
    pub fn split(&self, val: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if val > self.len() {
            return Err(DataError::Invalid(format!(
                "cannot split {val} validation images off a data set of {}",
                self.len()
            )));
        }
        let mut perm: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut perm);
        let (v, t) = perm.split_at_mut(val);
        v.sort_unstable();
        t.sort_unstable();
        Ok((self.subset(t)?, self.subset(v)?))
    }

    /// Concatenates data sets with the same classes and image size, in order.
    pub fn concat(parts: &[Dataset]) -> Result<Dataset> {
        let first = parts
            .first()
            .ok_or_else(|| DataError::Invalid("concat of no data sets".to_string()))?;
        for (k, p) in parts.iter().enumerate() {
            if p.classes != first.classes || p.height != first.height || p.width != first.width {
                return Err(DataError::Invalid(format!(
                    "concat: part {k} has {} classes of {}x{} images, part 0 has {} classes of {}x{}",
                    p.classes.len(),
                    p.width,
                    p.height,
                    first.classes.len(),
                    first.width,
                    first.height
                )));
            }
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut images = Vec::with_capacity(total * first.image_len());
        let mut labels = Vec::with_capacity(total);
        for p in parts {
            images.extend_from_slice(&p.images);
            labels.extend_from_slice(&p.labels);
        }
        Dataset::new(images, labels, first.classes.clone(), first.height, first.width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        // 1x1 images whose red byte is the index, so we can track them.
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            images.extend_from_slice(&[i as u8, 0, 0]);
            labels.push((i % 3) as u16);
        }
        Dataset::new(images, labels, vec!["a".into(), "b".into(), "c".into()], 1, 1).unwrap()
    }

    #[test]
    fn validate_catches_bad_labels_and_lengths() {
        let e = Dataset::new(vec![0; 6], vec![0, 3], vec!["a".into(); 3], 1, 1).unwrap_err();
        assert!(e.to_string().contains("label 3 of image 1"), "{e}");
        let e = Dataset::new(vec![0; 5], vec![0, 1], vec!["a".into(); 3], 1, 1).unwrap_err();
        assert!(e.to_string().contains("expected 6"), "{e}");
    }

    #[test]
    fn split_is_deterministic_and_partitions() {
        let d = toy(50);
        let (t1, v1) = d.split(5, 42).unwrap();
        let (t2, v2) = d.split(5, 42).unwrap();
        assert_eq!((&t1, &v1), (&t2, &v2));
        assert_eq!((t1.len(), v1.len()), (45, 5));
        let mut all: Vec<u8> = t1.images.iter().chain(&v1.images).step_by(3).copied().collect();
        all.sort();
        assert_eq!(all, (0..50).map(|i| i as u8).collect::<Vec<_>>());
        let (_, v3) = d.split(5, 43).unwrap();
        assert_ne!(v1, v3);
        // labels follow their images
        for k in 0..v1.len() {
            assert_eq!(v1.labels[k] as u8, v1.image(k)[0] % 3);
        }
        assert!(d.split(51, 0).is_err());
    }

    #[test]
    fn concat_and_subset() {
        let d = toy(4);
        let c = Dataset::concat(&[d.clone(), d.clone()]).unwrap();
        assert_eq!(c.len(), 8);
        assert_eq!(c.image(5), d.image(1));
        let s = c.subset(&[7, 0]).unwrap();
        assert_eq!(s.labels, vec![d.labels[3], d.labels[0]]);
        assert!(c.subset(&[8]).is_err());
        let mut other = toy(1);
        other.classes.pop();
        other.labels[0] = 0;
        assert!(Dataset::concat(&[d, other]).is_err());
        assert!(Dataset::concat(&[]).is_err());
        assert_eq!(c.class_counts(), vec![4, 2, 2]);
    }
}
