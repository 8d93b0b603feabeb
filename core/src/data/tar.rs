//! A minimal in-memory reader of (optionally gzipped) tar archives: ustar and GNU
//! headers, regular files only, with header checksums and sizes checked against the data.
//!
//! Enough for the official `cifar-10-binary.tar.gz`, and usable on wasm where the
//! archive arrives as bytes.

use super::{DataError, Result};
use std::borrow::Cow;
use std::io::Read;

const BLOCK: usize = 512;

/// Largest decompressed size accepted from a gzip stream (the CIFAR-10 tar is ~180 MB).
pub const MAX_GUNZIP_BYTES: usize = 1 << 30;

/// One regular file of an archive, borrowing its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry<'a> {
    /// Path inside the archive (ustar prefix, GNU long names and pax paths applied).
    pub name: String,
    /// Offset of the file's data from the start of the (decompressed) archive.
    pub offset: usize,
    /// The file's contents.
    pub data: &'a [u8],
}

/// True if `bytes` starts with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// True if `bytes` looks like a tar archive (a header with a valid checksum first).
pub fn is_tar(bytes: &[u8]) -> bool {
    bytes.len() >= BLOCK && checksum_ok(&bytes[..BLOCK]).unwrap_or(false)
}

/// Decompresses gzip data (all members), refusing more than `limit` output bytes;
/// data that is not gzip is returned unchanged.
pub fn maybe_gunzip<'a>(bytes: &'a [u8], source: &str, limit: usize) -> Result<Cow<'a, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(bytes).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| DataError::Format {
        file: source.to_string(),
        offset: 0,
        detail: format!("bad gzip data ({e}) after {} decompressed bytes", out.len()),
    })?;
    if out.len() > limit {
        return Err(DataError::Format {
            file: source.to_string(),
            offset: 0,
            detail: format!("gzip data decompresses to more than {limit} bytes"),
        });
    }
    Ok(Cow::Owned(out))
}

fn checksum_ok(h: &[u8]) -> Option<bool> {
    let stored = parse_octal(&h[148..156])?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 })
        .sum();
    Some(stored == sum)
}

/// Parses an octal field (NUL/space padded); `None` if it holds anything else.
fn parse_octal(f: &[u8]) -> Option<u64> {
    let s: &[u8] = {
        let start = f.iter().position(|&b| b != b' ').unwrap_or(f.len());
        let f = &f[start..];
        let end = f.iter().position(|&b| b == 0 || b == b' ').unwrap_or(f.len());
        &f[..end]
    };
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// Parses a size field: octal, or GNU base-256 when the high bit of the first byte is set.
fn parse_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (f[0] & 0x3f) as u64;
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        Some(v)
    } else {
        parse_octal(f)
    }
}

fn cstr(f: &[u8]) -> String {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

/// Finds `path=` in a pax extended header.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(v) = rec.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

/// Lists the regular files of an uncompressed tar archive, checking every header's
/// checksum and that every member's data lies within `bytes`.
pub fn read_tar<'a>(bytes: &'a [u8], source: &str) -> Result<Vec<TarEntry<'a>>> {
    let err = |offset: usize, detail: String| DataError::Format {
        file: source.to_string(),
        offset: offset as u64,
        detail,
    };
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut long_name: Option<String> = None;
    loop {
        if pos == bytes.len() {
            break; // tolerate a missing end-of-archive marker
        }
        if bytes.len() - pos < BLOCK {
            return Err(err(
                pos,
                format!(
                    "truncated tar header: expected {BLOCK} bytes, found {}",
                    bytes.len() - pos
                ),
            ));
        }
        let h = &bytes[pos..pos + BLOCK];
        if h.iter().all(|&b| b == 0) {
            break; // end-of-archive marker
        }
        match checksum_ok(h) {
            Some(true) => {}
            Some(false) => {
                return Err(err(
                    pos,
                    "tar header checksum mismatch (not a tar archive or corrupt)".to_string(),
                ))
            }
            None => return Err(err(pos + 148, "unreadable tar header checksum".to_string())),
        }
        let size = parse_size(&h[124..136]).ok_or_else(|| err(pos + 124, "unreadable tar size field".to_string()))?;
        let data_start = pos + BLOCK;
        let available = (bytes.len() - data_start) as u64;
        if size > available {
            return Err(err(
                data_start,
                format!(
                    "tar member '{}' truncated: header says {size} bytes, only {available} remain",
                    cstr(&h[0..100])
                ),
            ));
        }
        let size = size as usize;
        let data = &bytes[data_start..data_start + size];
        let typeflag = h[156];
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" && h[262] == 0 {
            // POSIX ustar: a prefix field extends the name.
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match typeflag {
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or(name);
                entries.push(TarEntry {
                    name,
                    offset: data_start,
                    data,
                });
            }
            b'L' => long_name = Some(cstr(data)),
            b'x' => {
                if let Some(p) = pax_path(data) {
                    long_name = Some(p);
                }
            }
            _ => long_name = None, // directories, links, devices, global pax: skipped
        }
        let padded = size.div_ceil(BLOCK) * BLOCK;
        pos = (data_start + padded).min(bytes.len());
    }
    Ok(entries)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test-only tar writer: ustar headers, regular files, two zero blocks at the end.
    pub(crate) fn write_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            let mut h = [0u8; BLOCK];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            let size = format!("{:011o}", data.len());
            h[124..135].copy_from_slice(size.as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn roundtrip_and_gzip() {
        let big = vec![7u8; 1000];
        let tar = write_tar(&[("dir/a.txt", b"hello"), ("b", &big), ("empty", b"")]);
        assert!(is_tar(&tar));
        let e = read_tar(&tar, "t.tar").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].name.as_str(), e[0].data), ("dir/a.txt", &b"hello"[..]));
        assert_eq!(e[0].offset, 512);
        assert_eq!(e[1].data, &big[..]);
        assert_eq!(e[1].offset, 1536);
        assert!(e[2].data.is_empty());
        let gz = gzip(&tar);
        assert!(is_gzip(&gz));
        let un = maybe_gunzip(&gz, "t.tar.gz", 1 << 20).unwrap();
        assert_eq!(&un[..], &tar[..]);
        assert!(maybe_gunzip(&gz, "t.tar.gz", 100).is_err());
        assert!(matches!(maybe_gunzip(&tar, "t", 1).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn truncation_and_corruption_are_errors() {
        let tar = write_tar(&[("a", &[1u8; 600])]);
        // data cut short
        let e = read_tar(&tar[..900], "x.tar").unwrap_err().to_string();
        assert!(
            e.contains("x.tar") && e.contains("600 bytes") && e.contains("388 remain"),
            "{e}"
        );
        // header cut short
        let e = read_tar(&tar[..100], "x.tar").unwrap_err().to_string();
        assert!(e.contains("truncated tar header"), "{e}");
        // corrupt checksum
        let mut bad = tar.clone();
        bad[10] = b'z';
        let e = read_tar(&bad, "x.tar").unwrap_err().to_string();
        assert!(e.contains("checksum") && e.contains("offset 0"), "{e}");
        // bad gzip
        let mut gz = gzip(&tar);
        let n = gz.len();
        gz.truncate(n / 2);
        assert!(maybe_gunzip(&gz, "x.tar.gz", 1 << 20).is_err());
        // missing end marker is fine
        assert_eq!(read_tar(&tar[..1536], "x").unwrap().len(), 1);
    }

    #[test]
    fn gnu_base256_size_and_long_names() {
        let mut tar = write_tar(&[("././@LongLink", b"a/very/long/name\0"), ("short", b"xy")]);
        tar[156] = b'L';
        // rewrite second header's size in base-256 and fix its checksum
        let h = &mut tar[1024..1536];
        h[124..136].fill(0);
        h[124] = 0x80;
        h[135] = 2;
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        // first header's typeflag changed: fix its checksum too
        let h = &mut tar[0..512];
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let e = read_tar(&tar, "g.tar").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name, "a/very/long/name");
        assert_eq!(e[0].data, b"xy");
    }
}
