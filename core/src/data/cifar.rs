//! The official CIFAR-10 binary format: `data_batch_1.bin` .. `data_batch_5.bin` and
//! `test_batch.bin`, records of 1 label byte + 3072 bytes (1024 R, 1024 G, 1024 B, each
//! row-major 32x32), class names in `batches.meta.txt`.
//!
//! Loads from a directory (native) or from the official `cifar-10-binary.tar.gz` held in
//! memory (also on wasm).

use super::tar::{is_gzip, is_tar, maybe_gunzip, read_tar, MAX_GUNZIP_BYTES};
use super::{DataError, Dataset, Result};

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one image (3 x 32 x 32, already CHW).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// Bytes of one record: the label byte and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
/// Name of the folder inside the official archive.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";
/// Class names used when `batches.meta.txt` is absent.
pub const DEFAULT_CLASSES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const META: &str = "batches.meta.txt";

/// Which part of CIFAR-10 to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The 50,000 training images (`data_batch_1..5.bin`).
    Train,
    /// The 10,000 test images (`test_batch.bin`).
    Test,
}

impl Split {
    /// The batch file names of this split, in loading order.
    pub fn files(self) -> Vec<String> {
        match self {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".to_string()],
        }
    }
}

/// Parses one batch file into CHW u8 images and labels; `source` names the file in errors.
pub fn parse_cifar_batch(bytes: &[u8], source: &str) -> Result<(Vec<u8>, Vec<u16>)> {
    let rem = bytes.len() % RECORD_BYTES;
    if rem != 0 {
        let offset = bytes.len() - rem;
        return Err(DataError::Format {
            file: source.to_string(),
            offset: offset as u64,
            detail: format!(
                "file length {} is not a multiple of the {RECORD_BYTES}-byte record: \
                 incomplete record {} has {rem} bytes",
                bytes.len(),
                offset / RECORD_BYTES
            ),
        });
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label as usize >= NUM_CLASSES {
            return Err(DataError::Format {
                file: source.to_string(),
                offset: (i * RECORD_BYTES) as u64,
                detail: format!(
                    "record {i}: label {label} out of range, expected 0..{}",
                    NUM_CLASSES - 1
                ),
            });
        }
        labels.push(label as u16);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

/// Parses `batches.meta.txt`: one class name per line, blank lines ignored; there must
/// be exactly 10.
pub fn parse_meta(bytes: &[u8], source: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::Format {
        file: source.to_string(),
        offset: e.valid_up_to() as u64,
        detail: "class names are not valid UTF-8".to_string(),
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != NUM_CLASSES {
        return Err(DataError::Format {
            file: source.to_string(),
            offset: 0,
            detail: format!("expected {NUM_CLASSES} class names, found {}", names.len()),
        });
    }
    Ok(names)
}

fn default_classes() -> Vec<String> {
    DEFAULT_CLASSES.iter().map(|s| s.to_string()).collect()
}

/// Builds the data set from the batches' bytes, given in order.
fn assemble(batches: Vec<(Vec<u8>, Vec<u16>)>, classes: Vec<String>) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (im, lb) in batches {
        images.extend_from_slice(&im);
        labels.extend_from_slice(&lb);
    }
    Dataset::new(images, labels, classes, SIDE, SIDE)
}

/// Loads a split from the directory holding the `.bin` files, or from its parent
/// containing `cifar-10-batches-bin`.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_cifar10_dir(dir: &std::path::Path, split: Split) -> Result<Dataset> {
    let nested = dir.join(BATCHES_DIR);
    let dir = if nested.is_dir() { nested } else { dir.to_path_buf() };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| DataError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let mut batches = Vec::new();
    for name in split.files() {
        let path = dir.join(&name);
        let bytes = read(&path)?;
        batches.push(parse_cifar_batch(&bytes, &path.display().to_string())?);
    }
    let meta = dir.join(META);
    let classes = if meta.is_file() {
        parse_meta(&read(&meta)?, &meta.display().to_string())?
    } else {
        default_classes()
    };
    assemble(batches, classes)
}

/// Loads a split from the official `cifar-10-binary.tar.gz` (or the plain `.tar`) held in
/// memory; bytes that are a single `.bin` batch instead give that batch, whatever `split`.
pub fn load_cifar10_targz(bytes: &[u8], split: Split) -> Result<Dataset> {
    let source = "cifar-10-binary.tar.gz";
    if !is_gzip(bytes) && !is_tar(bytes) {
        let (images, labels) = parse_cifar_batch(bytes, "CIFAR-10 batch")?;
        return Dataset::new(images, labels, default_classes(), SIDE, SIDE);
    }
    let tar = maybe_gunzip(bytes, source, MAX_GUNZIP_BYTES)?;
    if is_gzip(bytes) && !is_tar(&tar) {
        // A gzipped single batch (e.g. test_batch.bin.gz).
        let (images, labels) = parse_cifar_batch(&tar, "CIFAR-10 batch (gunzipped)")?;
        return Dataset::new(images, labels, default_classes(), SIDE, SIDE);
    }
    let entries = read_tar(&tar, source)?;
    // Members are matched by base name; those under cifar-10-batches-bin/ win.
    let find = |base: &str| {
        let matches = |e: &&super::tar::TarEntry| e.name.rsplit('/').next() == Some(base);
        entries
            .iter()
            .filter(matches)
            .find(|e| e.name.contains(BATCHES_DIR))
            .or_else(|| entries.iter().find(matches))
    };
    let mut batches = Vec::new();
    for name in split.files() {
        let e = find(&name).ok_or_else(|| DataError::NotFound {
            what: format!("{BATCHES_DIR}/{name}"),
            place: source.to_string(),
        })?;
        batches.push(parse_cifar_batch(e.data, &format!("{source}:{}", e.name))?);
    }
    let classes = match find(META) {
        Some(e) => parse_meta(e.data, &format!("{source}:{}", e.name))?,
        None => default_classes(),
    };
    assemble(batches, classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tar::tests::{gzip, write_tar};

    /// A fake batch of `n` records: label i % 10, pixel bytes derived from (i, k).
    fn fake_batch(n: usize, salt: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(n * RECORD_BYTES);
        for i in 0..n {
            v.push((i % 10) as u8);
            v.extend((0..IMAGE_BYTES).map(|k| (i as u8).wrapping_mul(31) ^ (k as u8) ^ salt));
        }
        v
    }

    #[test]
    fn parses_records() {
        let b = fake_batch(3, 0);
        let (im, lb) = parse_cifar_batch(&b, "b.bin").unwrap();
        assert_eq!(lb, vec![0, 1, 2]);
        assert_eq!(im.len(), 3 * IMAGE_BYTES);
        assert_eq!(
            &im[IMAGE_BYTES..2 * IMAGE_BYTES],
            &b[RECORD_BYTES + 1..2 * RECORD_BYTES]
        );
        assert!(parse_cifar_batch(&[], "e").unwrap().1.is_empty());
    }

    #[test]
    fn truncated_and_bad_labels() {
        let b = fake_batch(2, 0);
        let e = parse_cifar_batch(&b[..RECORD_BYTES + 100], "data_batch_1.bin")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data_batch_1.bin") && e.contains("offset 3073") && e.contains("3173"),
            "{e}"
        );
        let mut b = fake_batch(3, 0);
        b[2 * RECORD_BYTES] = 10;
        let e = parse_cifar_batch(&b, "test_batch.bin").unwrap_err().to_string();
        assert!(
            e.contains("test_batch.bin") && e.contains("record 2") && e.contains("offset 6146"),
            "{e}"
        );
    }

    fn fake_archive() -> Vec<u8> {
        let batches: Vec<(String, Vec<u8>)> = (1..=5)
            .map(|i| (format!("{BATCHES_DIR}/data_batch_{i}.bin"), fake_batch(4, i)))
            .chain([(format!("{BATCHES_DIR}/test_batch.bin"), fake_batch(2, 9))])
            .collect();
        let meta = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n".to_string();
        let mut files: Vec<(&str, &[u8])> = batches.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let meta_name = format!("{BATCHES_DIR}/{META}");
        files.push((&meta_name, meta.as_bytes()));
        gzip(&write_tar(&files))
    }

    #[test]
    fn loads_targz() {
        let gz = fake_archive();
        let train = load_cifar10_targz(&gz, Split::Train).unwrap();
        assert_eq!(train.len(), 20);
        assert_eq!(train.classes[9], "j");
        assert_eq!(train.image(4), &fake_batch(4, 2)[1..RECORD_BYTES]);
        let test = load_cifar10_targz(&gz, Split::Test).unwrap();
        assert_eq!(test.len(), 2);
        assert_eq!(test.labels, vec![0, 1]);
        // a single batch
        let single = load_cifar10_targz(&fake_batch(3, 0), Split::Test).unwrap();
        assert_eq!(single.len(), 3);
        assert_eq!(single.classes[0], "airplane");
        // missing member
        let tar = gzip(&write_tar(&[("x/test_batch.bin", &fake_batch(1, 0))]));
        assert_eq!(load_cifar10_targz(&tar, Split::Test).unwrap().len(), 1);
        let e = load_cifar10_targz(&tar, Split::Train).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin not found"), "{e}");
        // truncated member inside the archive names the member
        let short = fake_batch(1, 0);
        let tar = gzip(&write_tar(&[("x/test_batch.bin", &short[..100])]));
        let e = load_cifar10_targz(&tar, Split::Test).unwrap_err().to_string();
        assert!(e.contains("x/test_batch.bin") && e.contains("length 100"), "{e}");
        // truncated archive
        let e = load_cifar10_targz(&gz[..gz.len() / 2], Split::Train).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }

    #[test]
    fn loads_dir_and_parent() {
        let root = std::env::temp_dir().join(format!("cifar-test-{}", std::process::id()));
        let dir = root.join(BATCHES_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("test_batch.bin"), fake_batch(5, 1)).unwrap();
        let a = load_cifar10_dir(&root, Split::Test).unwrap();
        let b = load_cifar10_dir(&dir, Split::Test).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 5);
        assert_eq!(a.classes, default_classes());
        let e = load_cifar10_dir(&dir, Split::Train).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
        std::fs::write(dir.join(META), "x\ny\n").unwrap();
        let e = load_cifar10_dir(&dir, Split::Test).unwrap_err().to_string();
        assert!(e.contains("expected 10 class names, found 2"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
