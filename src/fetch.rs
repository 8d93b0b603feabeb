//! Downloading and unpacking the CIFAR-10 data set (binary version).
//!
//! [`fetch_cifar10`] downloads the official `cifar-10-binary.tar.gz` into a folder, resuming a partial
//! download (`.part` file) with an HTTP `Range` request, verifies its MD5 checksum and extracts it with the
//! project's one tar reader (`resnet_core::data::tar::TarStream`), so that `<dir>/cifar-10-batches-bin/` holds the batch files.
//!
//! Every step is skipped when its result is already there: complete extracted batches need no archive,
//! and an archive with the right checksum needs no network.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use md5::{Digest, Md5};
use resnet_core::data::tar::{EntryKind, TarStream};

/// Where the official binary CIFAR-10 archive is published.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// MD5 checksum of [`CIFAR10_URL`], as published on the CIFAR-10 page.
pub const CIFAR10_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// File name of the archive inside the target folder.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// Name of the folder the archive unpacks to, inside the target folder.
pub const EXTRACTED_DIR: &str = "cifar-10-batches-bin";

/// Size in bytes of each CIFAR-10 batch file: 10,000 records of 1 label byte and 3 × 32 × 32 pixels.
pub const CIFAR10_BATCH_BYTES: u64 = 10_000 * (1 + 3 * 32 * 32);

/// Size of the chunks the download is streamed to disk in.
const CHUNK: usize = 64 * 1024;

/// What to download, where to, and how to tell that the result is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// URL of the `.tar.gz` archive (`http://` or `https://`).
    pub url: String,
    /// Expected MD5 checksum of the archive, as 32 hexadecimal digits (either case).
    pub md5: String,
    /// Target folder: receives `cifar-10-binary.tar.gz` and the extracted `cifar-10-batches-bin/`.
    /// Created when missing.
    pub dir: PathBuf,
    /// Limit for resolving the host, connecting, sending the request, waiting for the response and for
    /// each single read of the body (not for the whole download). `Duration::ZERO` means no limit.
    pub timeout: Duration,
    /// Files (relative to `cifar-10-batches-bin/`) and their exact sizes in bytes that make an
    /// extraction complete. When all of them are present, [`fetch_cifar10`] returns at once.
    pub expected_files: Vec<(String, u64)>,
}

impl FetchOptions {
    /// Options for the official CIFAR-10 archive, downloaded into `dir` with a 30-second timeout,
    /// expecting the five training batches and the test batch at their full size.
    pub fn cifar10(dir: impl Into<PathBuf>) -> Self {
        let mut expected_files: Vec<(String, u64)> = (1..=5)
            .map(|i| (format!("data_batch_{i}.bin"), CIFAR10_BATCH_BYTES))
            .collect();
        expected_files.push(("test_batch.bin".to_string(), CIFAR10_BATCH_BYTES));
        FetchOptions {
            url: CIFAR10_URL.to_string(),
            md5: CIFAR10_MD5.to_string(),
            dir: dir.into(),
            timeout: Duration::from_secs(30),
            expected_files,
        }
    }

    /// Path of the extracted folder, `<dir>/cifar-10-batches-bin`.
    pub fn extracted_dir(&self) -> PathBuf {
        self.dir.join(EXTRACTED_DIR)
    }

    /// Path of the downloaded archive, `<dir>/cifar-10-binary.tar.gz`.
    pub fn archive_path(&self) -> PathBuf {
        self.dir.join(ARCHIVE_NAME)
    }

    /// Path of the partial download, `<dir>/cifar-10-binary.tar.gz.part`.
    pub fn part_path(&self) -> PathBuf {
        self.dir.join(format!("{ARCHIVE_NAME}.part"))
    }
}

/// Downloads (resuming a partial download), verifies, extracts; returns the extracted
/// `cifar-10-batches-bin` folder.
///
/// * When `<dir>/cifar-10-batches-bin/` already holds every file of `opts.expected_files` at its exact
///   size, it is returned at once, without network access.
/// * When `<dir>/cifar-10-binary.tar.gz` exists and its MD5 matches `opts.md5`, it is used as is.
/// * Otherwise the archive is streamed to `<dir>/cifar-10-binary.tar.gz.part`. An existing `.part` file
///   is resumed with `Range: bytes=N-` when the server answers `206 Partial Content`, and started over
///   when it answers `200 OK`. `progress(bytes_so_far, total_if_known)` is called as data arrives. An
///   interrupted download keeps its `.part` file for the next run; a complete one with the wrong
///   checksum is deleted and reported with both checksums.
/// * The archive is then gunzipped and untarred into `dir`; each file is written under a temporary
///   name and renamed when complete, and members with absolute paths or `..` are rejected.
///
/// Network failures are reported at once (no retries) with a hint on how to supply the archive by
/// hand.
pub fn fetch_cifar10(opts: &FetchOptions, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<PathBuf> {
    let extracted = opts.extracted_dir();
    if check_complete(&extracted, &opts.expected_files).is_ok() {
        return Ok(extracted);
    }
    let expected_md5 = normalize_md5(&opts.md5)?;
    fs::create_dir_all(&opts.dir).with_context(|| format!("cannot create folder {}", opts.dir.display()))?;

    let archive = opts.archive_path();
    let have_archive = archive.is_file();
    // The checksum of an existing archive that does not match (it is then downloaded anew).
    let stale_archive = if have_archive {
        Some(md5_file(&archive)?).filter(|found| *found != expected_md5)
    } else {
        None
    };
    if !have_archive || stale_archive.is_some() {
        let part = opts.part_path();
        download(opts, &part, progress).map_err(|e| match &stale_archive {
            Some(found) => anyhow!(
                "{e:#} (The existing {} was not used: its md5 is {found}, not the expected {expected_md5}.)",
                archive.display()
            ),
            None => e,
        })?;
        let found = md5_file(&part)?;
        if found != expected_md5 {
            let removed = fs::remove_file(&part);
            bail!(
                "checksum mismatch for {}: expected md5 {expected_md5}, found {found}; {}",
                opts.url,
                match removed {
                    Ok(()) => format!("deleted {}, run again to download it anew", part.display()),
                    Err(e) => format!("could not delete {}: {e}", part.display()),
                }
            );
        }
        fs::rename(&part, &archive)
            .with_context(|| format!("cannot rename {} to {}", part.display(), archive.display()))?;
    }

    let file = File::open(&archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let tar = flate2::read::GzDecoder::new(BufReader::with_capacity(CHUNK, file));
    extract_tar(tar, &opts.dir).with_context(|| format!("cannot extract {}", archive.display()))?;
    check_complete(&extracted, &opts.expected_files)
        .with_context(|| format!("{} did not contain the expected files", archive.display()))?;
    Ok(extracted)
}

/// Checks that `folder` is a directory holding every expected file at its exact size.
fn check_complete(folder: &Path, expected: &[(String, u64)]) -> Result<()> {
    if !folder.is_dir() {
        bail!("{} is not a folder", folder.display());
    }
    for (name, size) in expected {
        let path = folder.join(name);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == *size => {}
            Ok(m) if m.is_file() => bail!("{} has {} bytes, expected {size}", path.display(), m.len()),
            Ok(_) => bail!("{} is not a file", path.display()),
            Err(e) => bail!("{} is missing: {e}", path.display()),
        }
    }
    Ok(())
}

/// Lower-cases a checksum and checks that it is 32 hexadecimal digits.
fn normalize_md5(md5: &str) -> Result<String> {
    let md5 = md5.trim().to_ascii_lowercase();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid md5 checksum {md5:?}: expected 32 hexadecimal digits");
    }
    Ok(md5)
}

/// MD5 of a file as lower-case hex, read in chunks.
fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The hint appended to every network failure.
fn offline_hint(opts: &FetchOptions) -> String {
    format!(
        "Without network access, download {ARCHIVE_NAME} yourself and put it in {} (or its extracted \
         {EXTRACTED_DIR} folder), then run again.",
        opts.dir.display()
    )
}

/// How the body of a response is to be written to the `.part` file.
enum WriteMode {
    /// Truncate and write from the start.
    Fresh,
    /// Append to the `offset` bytes already there.
    Append,
}

/// Streams the archive into `part`, resuming it when it exists and the server supports ranges.
fn download(opts: &FetchOptions, part: &Path, progress: &mut dyn FnMut(u64, Option<u64>)) -> Result<()> {
    let limit = (!opts.timeout.is_zero()).then_some(opts.timeout);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_resolve(limit)
        .timeout_connect(limit)
        .timeout_send_request(limit)
        .timeout_recv_response(limit)
        .timeout_per_read(limit)
        .timeout_per_write(limit)
        .build()
        .into();
    let cannot = |e: &dyn std::fmt::Display| anyhow!("cannot download {}: {e}. {}", opts.url, offline_hint(opts));

    let mut offset = match fs::metadata(part) {
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    };
    // At most two requests: a resumed one and, when the server cannot resume cleanly, a fresh one.
    let (mut response, mode, total) = loop {
        let mut request = agent.get(&opts.url).header("Accept-Encoding", "identity");
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| cannot(&e))?;
        let status = response.status();
        let length = response.body().content_length();
        match status.as_u16() {
            200 => break (response, WriteMode::Fresh, length),
            206 if offset > 0 => {
                let range = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((start, total)) if start == offset => {
                        let total = total.or_else(|| length.map(|l| offset + l));
                        break (response, WriteMode::Append, total);
                    }
                    // The server resumed somewhere else: start over.
                    _ => offset = 0,
                }
            }
            // Range not satisfiable: the .part file may already be complete; otherwise start over.
            416 if offset > 0 => {
                if normalize_md5(&opts.md5).is_ok_and(|md5| md5_file(part).is_ok_and(|found| found == md5)) {
                    return Ok(());
                }
                offset = 0;
            }
            _ => {
                let reason = status.canonical_reason().unwrap_or("");
                return Err(cannot(&format_args!(
                    "the server answered HTTP {} {reason}",
                    status.as_u16()
                )));
            }
        }
        drop(response);
        fs::remove_file(part).with_context(|| format!("cannot delete {}", part.display()))?;
    };

    let mut file = match mode {
        WriteMode::Fresh => {
            offset = 0;
            File::create(part)
        }
        WriteMode::Append => OpenOptions::new().append(true).open(part),
    }
    .with_context(|| format!("cannot write {}", part.display()))?;

    let mut so_far = offset;
    progress(so_far, total);
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; CHUNK];
    let interrupted = |so_far: u64, e: &dyn std::fmt::Display| {
        let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
        anyhow!(
            "download of {} was interrupted after {so_far}{of} bytes: {e}. The partial download is kept in {}; \
             run again to resume it. {}",
            opts.url,
            part.display(),
            offline_hint(opts)
        )
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.flush().ok();
                return Err(interrupted(so_far, &e));
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        so_far += n as u64;
        progress(so_far, total);
    }
    file.sync_all()
        .with_context(|| format!("cannot write {}", part.display()))?;
    if let Some(total) = total {
        if so_far < total {
            return Err(interrupted(so_far, &"the connection closed early"));
        }
    }
    Ok(())
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`) into the start and the total, if known.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > end)?),
    };
    Some((start, total))
}

/// Extracts a tar stream into `dir` with the project's one tar reader
/// ([`resnet_core::data::tar::TarStream`]): regular files and folders; links and special
/// files are skipped. Returns the number of files written.
fn extract_tar(tar: impl Read, dir: &Path) -> Result<usize> {
    let mut stream = TarStream::new(tar, "the tar archive");
    let mut written = 0;
    while let Some(h) = stream.next_header()? {
        match h.kind {
            EntryKind::File => {
                let rel = safe_relative_path(&h.name)?;
                if rel.as_os_str().is_empty() {
                    bail!("tar member {:?} has an empty path", h.name);
                }
                write_member(&mut stream, &dir.join(&rel))
                    .with_context(|| format!("cannot extract tar member {:?}", h.name))?;
                written += 1;
            }
            EntryKind::Dir => {
                let path = dir.join(safe_relative_path(&h.name)?);
                fs::create_dir_all(&path).with_context(|| format!("cannot create folder {}", path.display()))?;
            }
            EntryKind::Other(_) => {}
        }
    }
    Ok(written)
}

/// Writes the current member of `tar` to `target` through a temporary file renamed into
/// place once complete.
fn write_member(tar: &mut TarStream<impl Read>, target: &Path) -> Result<()> {
    let parent = target
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent folder", target.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
    let file_name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", target.display()))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".extracting");
    let tmp = target.with_file_name(tmp_name);
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(CHUNK, file);
        tar.copy_data(&mut out)
            .with_context(|| format!("cannot unpack into {}", tmp.display()))?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(file);
        fs::rename(&tmp, target).with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Turns a member name into a relative path that stays inside the target folder, or fails.
///
/// Absolute paths, `..` components, backslashes and colons (Windows separators and drive letters) are
/// rejected; empty and `.` components are dropped. The result is empty for the archive's root folder.
fn safe_relative_path(name: &str) -> Result<PathBuf> {
    if name.starts_with('/') {
        bail!("tar member {name:?} has an absolute path; refusing to extract it");
    }
    if name.contains('\\') || name.contains(':') {
        bail!("tar member {name:?} has a backslash or colon in its path; refusing to extract it");
    }
    let mut path = PathBuf::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => bail!("tar member {name:?} points outside the target folder; refusing to extract it"),
            c => path.push(c),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes 9-5/20"), None);
        assert_eq!(parse_content_range("bytes 0-9/9"), None);
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn paths() {
        assert_eq!(safe_relative_path("a/./b/").unwrap(), Path::new("a").join("b"));
        assert_eq!(safe_relative_path("./").unwrap(), PathBuf::new());
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/..", "a\\..\\b", "C:/x"] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn md5_checks() {
        assert_eq!(
            normalize_md5(" C32A1D4AB5D03F1284B67883E8D87530 ").unwrap(),
            CIFAR10_MD5
        );
        assert!(normalize_md5("xyz").is_err());
        assert_eq!(CIFAR10_BATCH_BYTES, 30_730_000);
    }
}
