//! Opens a data set from a path, whatever its layout: the official CIFAR-10 binary
//! folder or tarball, a single `.bin` batch, or an ImageFolder tree (`ROOT/<split>/<class>`
//! or `ROOT/<class>`).

use super::cifar::{load_cifar10_dir, load_cifar10_targz, Split, BATCHES_DIR};
use super::folder::{find_split, load_image_folder_with, ImageFit};
use super::{DataError, Dataset, Result};
use std::path::Path;

/// Loads split `split` of the data set at `path`; `progress(done, total)` reports image
/// decoding of image folders.
pub fn open_dataset(path: &Path, split: Split, progress: &dyn Fn(usize, usize)) -> Result<Dataset> {
    open_dataset_with(path, split, None, progress)
}

/// [`open_dataset`] where the images of an image folder first pass through `fit` (a
/// model's resize and crop), so folders of photos of any size load.
pub fn open_dataset_with(
    path: &Path,
    split: Split,
    fit: Option<ImageFit>,
    progress: &dyn Fn(usize, usize),
) -> Result<Dataset> {
    let split_name = match split {
        Split::Train => "train",
        Split::Test => "test",
    };
    if path.is_file() {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.display().to_string(),
            source,
        })?;
        return load_cifar10_targz(&bytes, split);
    }
    if !path.is_dir() {
        return Err(DataError::NotFound {
            what: "a data set (CIFAR-10 binary folder or tarball, or an image folder)".into(),
            place: path.display().to_string(),
        });
    }
    if path.join(BATCHES_DIR).is_dir()
        || path.join("data_batch_1.bin").is_file()
        || path.join("test_batch.bin").is_file()
    {
        return load_cifar10_dir(path, split);
    }
    match find_split(path, split_name) {
        Ok(dir) => load_image_folder_with(&dir, fit, progress),
        Err(_) => load_image_folder_with(path, fit, progress),
    }
}
