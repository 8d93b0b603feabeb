//! torchvision `ImageFolder`-style directories, `root/<class>/<image>.{png,jpg,jpeg}`,
//! decoded in parallel into an in-memory [`Dataset`] (native only).

use super::image::{decode_image, image_dimensions, to_chw_u8, RgbImage};
use super::{DataError, Dataset, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Image file extensions accepted (compared case-insensitively).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Images decoded between two progress reports.
const CHUNK: usize = 2048;

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The entries of `dir` that are directories (`dirs`) or image files, sorted by name.
fn list(dir: &Path, dirs: bool) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        // Follows symlinks, as torchvision does.
        let meta = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| DataError::Invalid(format!("{}: file name {n:?} is not UTF-8", dir.display())))?;
        let keep = if dirs {
            meta.is_dir()
        } else {
            meta.is_file()
                && Path::new(&name)
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        };
        if keep {
            out.push((name, path));
        }
    }
    // Byte order of UTF-8 equals Python's code point order used by torchvision.
    out.sort();
    Ok(out)
}

/// Loads `root/<class>/*.{png,jpg,jpeg}`: classes are the subfolders sorted by name,
/// files sorted by name within each; every image must decode and share one size.
/// `progress(done, total)` is called from the calling thread as images are decoded.
pub fn load_image_folder(root: &Path, progress: &dyn Fn(usize, usize)) -> Result<Dataset> {
    load_image_folder_with(root, None, progress)
}

/// A geometric transform applied to each decoded image before it is stored, e.g. a
/// model's resize and centre crop, so that folders of images of any size load.
pub type ImageFit<'a> = &'a (dyn Fn(RgbImage) -> RgbImage + Sync);

/// [`load_image_folder`] with every image passed through `fit` first (then they need
/// only share a size after it).
pub fn load_image_folder_with(root: &Path, fit: Option<ImageFit>, progress: &dyn Fn(usize, usize)) -> Result<Dataset> {
    let classes = list(root, true)?;
    if classes.is_empty() {
        return Err(DataError::NotFound {
            what: "class subfolders".to_string(),
            place: root.display().to_string(),
        });
    }
    if classes.len() > u16::MAX as usize + 1 {
        return Err(DataError::Invalid(format!(
            "{}: {} classes, at most {} supported",
            root.display(),
            classes.len(),
            u16::MAX as usize + 1
        )));
    }
    let mut files: Vec<(PathBuf, u16)> = Vec::new();
    for (label, (_, dir)) in classes.iter().enumerate() {
        let imgs = list(dir, false)?;
        if imgs.is_empty() {
            return Err(DataError::NotFound {
                what: format!("image files ({})", EXTENSIONS.join(", ")),
                place: dir.display().to_string(),
            });
        }
        files.extend(imgs.into_iter().map(|(_, p)| (p, label as u16)));
    }
    let total = files.len();
    progress(0, total);
    let mut images: Vec<u8> = Vec::new();
    let mut labels = Vec::with_capacity(total);
    let mut size: Option<(usize, usize)> = None;
    // Without a fit every image must have the first one's size: read from its header,
    // checked in every other header before anything is decoded, and the whole data set
    // reserved (fallibly) before the first chunk.
    let expected = match fit {
        Some(_) => None,
        None => {
            let first = &files[0].0;
            let bytes = std::fs::read(first).map_err(|e| io_err(first, e))?;
            let (w, h) = image_dimensions(&bytes, &first.display().to_string())?;
            reserve(&mut images, total, w, h, root)?;
            Some((w, h))
        }
    };
    let mismatch = |path: &Path, (w, h): (usize, usize), (found_w, found_h): (usize, usize)| DataError::SizeMismatch {
        file: path.display().to_string(),
        first: files[0].0.display().to_string(),
        expected_w: w,
        expected_h: h,
        found_w,
        found_h,
    };
    for chunk in files.chunks(CHUNK) {
        let decoded: Vec<Result<RgbImage>> = chunk
            .par_iter()
            .map(|(path, _)| {
                let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
                let source = path.display().to_string();
                if let Some(want) = expected {
                    let found = image_dimensions(&bytes, &source)?;
                    if found != want {
                        return Err(mismatch(path, want, found));
                    }
                }
                let img = decode_image(&bytes, &source)?;
                Ok(match fit {
                    Some(f) => f(img),
                    None => img,
                })
            })
            .collect();
        for ((path, label), img) in chunk.iter().zip(decoded) {
            let img = img?;
            let (w, h) = *size.get_or_insert((img.width, img.height));
            if (img.width, img.height) != (w, h) {
                return Err(mismatch(path, (w, h), (img.width, img.height)));
            }
            if images.capacity() == 0 {
                reserve(&mut images, total, w, h, root)?;
            }
            images.extend_from_slice(&to_chw_u8(&img));
            labels.push(*label);
        }
        progress(labels.len(), total);
    }
    let (w, h) = size.unwrap_or((0, 0));
    Dataset::new(images, labels, classes.into_iter().map(|(n, _)| n).collect(), h, w)
}

/// Reserves room for `total` CHW images of `w x h`: a data set too large for memory is
/// an error, not an abort.
fn reserve(images: &mut Vec<u8>, total: usize, w: usize, h: usize, root: &Path) -> Result<()> {
    let fits = total
        .checked_mul(3 * w * h)
        .is_some_and(|b| images.try_reserve_exact(b).is_ok());
    if !fits {
        return Err(DataError::Invalid(format!(
            "{}: {total} images of {w}x{h} do not fit in memory",
            root.display()
        )));
    }
    Ok(())
}

/// Finds the folder of split `name` ("train", "test"...) under `root`: `root/name`,
/// `root` itself when it is named `name`, or `root/<single subfolder>/name`.
pub fn find_split(root: &Path, name: &str) -> Result<PathBuf> {
    let direct = root.join(name);
    if direct.is_dir() {
        return Ok(direct);
    }
    if root.file_name().and_then(|n| n.to_str()) == Some(name) && root.is_dir() {
        return Ok(root.to_path_buf());
    }
    if let Ok(subs) = list(root, true) {
        let found: Vec<PathBuf> = subs
            .into_iter()
            .map(|(_, p)| p.join(name))
            .filter(|p| p.is_dir())
            .collect();
        if let [one] = found.as_slice() {
            return Ok(one.clone());
        }
    }
    Err(DataError::NotFound {
        what: format!("split folder '{name}' (ROOT/{name}/<class>/...)"),
        place: root.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn png(w: u32, h: u32, v: u8) -> Vec<u8> {
        let mut buf = Vec::new();
        let data: Vec<u8> = (0..w * h * 3).map(|i| v.wrapping_add(i as u8)).collect();
        PngEncoder::new(&mut buf)
            .write_image(&data, w, h, ExtendedColorType::Rgb8)
            .unwrap();
        buf
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn loads_sorted_and_checks() {
        let root = tmp("ok");
        let train = root.join("data").join("train");
        for (class, files) in [("b", &["2.PNG", "1.png"][..]), ("a", &["x.png"][..])] {
            std::fs::create_dir_all(train.join(class)).unwrap();
            for (k, f) in files.iter().enumerate() {
                std::fs::write(train.join(class).join(f), png(3, 2, 10 * k as u8)).unwrap();
            }
        }
        std::fs::write(train.join("a").join("notes.txt"), "ignored").unwrap();
        assert_eq!(find_split(&root.join("data"), "train").unwrap(), train);
        assert_eq!(find_split(&root, "train").unwrap(), train);
        assert_eq!(find_split(&train, "train").unwrap(), train);
        assert!(find_split(&root, "test").is_err());
        let calls = AtomicUsize::new(0);
        let d = load_image_folder(&train, &|done, total| {
            assert!(done <= total && total == 3);
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert!(calls.load(Ordering::Relaxed) >= 2);
        assert_eq!(d.classes, vec!["a", "b"]);
        assert_eq!(d.labels, vec![0, 1, 1]);
        assert_eq!((d.width, d.height, d.len()), (3, 2, 3));
        // b/1.png was written with k = 1 (value 10), b/2.PNG with k = 0.
        assert_eq!(d.image(1)[0], 10);
        assert_eq!(d.image(2)[0], 0);
        assert_eq!(d.image(1)[6], 11); // green plane: pixel 0 G = 10 + 1
        assert_eq!(d.image(1)[1], 13); // red of pixel 1 = 10 + 3
                                       // a wrong-size image is an error naming it and both sizes
        std::fs::write(train.join("b").join("3.png"), png(4, 2, 0)).unwrap();
        let e = load_image_folder(&train, &|_, _| {}).unwrap_err().to_string();
        assert!(e.contains("3.png") && e.contains("4x2") && e.contains("3x2"), "{e}");
        // the size comes from the header, checked before any pixel is decoded: a 4x2
        // PNG cut after its header is a size mismatch, not a decoding error
        let mut broken = png(4, 2, 0);
        let idat = broken.windows(4).position(|w| w == b"IDAT").unwrap();
        broken[idat + 4..idat + 12].fill(0xff);
        assert!(decode_image(&broken, "broken").is_err());
        std::fs::write(train.join("b").join("3.png"), broken).unwrap();
        let e = load_image_folder(&train, &|_, _| {}).unwrap_err().to_string();
        assert!(e.contains("3.png") && e.contains("4x2") && !e.contains("decode"), "{e}");
        // a corrupt image is an error naming it
        std::fs::write(train.join("b").join("3.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let e = load_image_folder(&train, &|_, _| {}).unwrap_err().to_string();
        assert!(e.contains("3.png"), "{e}");
        // an empty class folder is an error
        std::fs::remove_file(train.join("b").join("3.png")).unwrap();
        std::fs::create_dir_all(train.join("c")).unwrap();
        let e = load_image_folder(&train, &|_, _| {}).unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("c"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn shared_cifar10_jpeg_test_split() {
        let shared = std::env::var("RESNET_SHARED")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").to_string());
        let root = Path::new(&shared).join("data").join("cifar10-jpeg");
        let Ok(test) = find_split(&root, "test") else {
            eprintln!(
                "skipping: no CIFAR-10 JPEGs under {} (set RESNET_SHARED)",
                root.display()
            );
            return;
        };
        let t = std::time::Instant::now();
        let d = load_image_folder(&test, &|_, _| {}).unwrap();
        eprintln!("decoded {} images in {:.2?}", d.len(), t.elapsed());
        assert_eq!(d.len(), 10_000);
        assert_eq!((d.width, d.height), (32, 32));
        let want: Vec<String> = crate::data::cifar::DEFAULT_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(d.classes, want);
        assert_eq!(d.class_counts(), vec![1000; 10]);
    }
}
