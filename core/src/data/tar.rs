//! The one tar reader of the project: ustar (with its prefix field), GNU (long names,
//! base-256 sizes) and pax (`path` and `size` records) headers, every header's checksum
//! checked (unsigned or signed sum), numbers parsed strictly, extended headers at most
//! [`MAX_META_ENTRY`] bytes. [`TarStream`] reads any `Read` (the CLI extracts the
//! downloaded CIFAR-10 archive with it, streaming); [`read_tar`] lists an archive held
//! in memory (the CIFAR loader, and the page, where the archive arrives as bytes).

use super::{DataError, Result};
use std::borrow::Cow;
use std::io::{Read, Write};

const BLOCK: usize = 512;

/// Largest decompressed size accepted from a gzip stream (the CIFAR-10 tar is ~180 MB).
pub const MAX_GUNZIP_BYTES: usize = 1 << 30;

/// Largest GNU long-name or pax header accepted (they are held in memory).
pub const MAX_META_ENTRY: u64 = 1 << 20;

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

/// What a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (typeflag `0`, NUL or `7`).
    File,
    /// A directory (typeflag `5`).
    Dir,
    /// Anything else (links, devices, FIFOs, global pax headers, GNU extensions), with
    /// its typeflag: not extracted.
    Other(u8),
}

/// A member's header, with extended headers (GNU long name, pax path and size) applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarHeader {
    /// Path inside the archive.
    pub name: String,
    /// What the member is.
    pub kind: EntryKind,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Offset of the data from the start of the archive.
    pub offset: u64,
}

/// A tar archive read from a stream, member by member: [`TarStream::next_header`] skips
/// whatever of the previous member was not read, [`TarStream::copy_data`] copies the
/// current member's data.
pub struct TarStream<R> {
    r: R,
    source: String,
    /// Bytes read from the archive so far.
    pos: u64,
    /// Data of the current member not read yet.
    data_left: u64,
    /// Padding after the current member's data.
    pad_left: u64,
}

/// True if `bytes` starts with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// True if `bytes` looks like a tar archive (a header with a valid checksum first).
pub fn is_tar(bytes: &[u8]) -> bool {
    bytes.len() >= BLOCK && checksum_ok(&bytes[..BLOCK]) == Some(true)
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

/// Whether the header's checksum holds: the sum of its bytes with the checksum field
/// read as spaces, unsigned (POSIX) or signed (old Sun tars); `None` when the field is
/// not a number.
fn checksum_ok(h: &[u8]) -> Option<bool> {
    let stored = parse_number(&h[148..156])?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    Some(stored == unsigned || i64::try_from(stored).ok() == Some(signed))
}

/// Parses a numeric field: octal digits (space or NUL padded, nothing after them but
/// padding), or GNU base-256 when the high bit of the first byte is set (two's
/// complement: negative numbers are refused). `None` for anything else or an overflow.
fn parse_number(f: &[u8]) -> Option<u64> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return None; // negative
            }
            let mut v = (first & 0x3f) as u64;
            for &b in &f[1..] {
                v = v.checked_mul(256)?.checked_add(b as u64)?;
            }
            return Some(v);
        }
    }
    let start = f.iter().position(|&b| b != b' ').unwrap_or(f.len());
    let text = &f[start..];
    let end = text.iter().position(|&b| b == 0 || b == b' ').unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    if !rest.iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((d - b'0') as u64)?;
    }
    Some(v)
}

/// A NUL-terminated UTF-8 field.
fn c_str(f: &[u8]) -> Option<&str> {
    let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
    std::str::from_utf8(&f[..end]).ok()
}

/// Parses pax records `LEN key=value\n`.
fn parse_pax(data: &[u8]) -> std::result::Result<Vec<(&str, &str)>, String> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && !rest.iter().all(|&b| b == 0) {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad pax record length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(format!("bad pax record length {len}"));
        }
        let record = std::str::from_utf8(&rest[space + 1..len - 1]).map_err(|_| "pax record is not UTF-8")?;
        let (key, value) = record.split_once('=').ok_or("pax record without '='")?;
        records.push((key, value));
        rest = &rest[len..];
    }
    Ok(records)
}

impl<R: Read> TarStream<R> {
    /// Reads the archive from `r`; `source` names it in errors.
    pub fn new(r: R, source: &str) -> Self {
        TarStream {
            r,
            source: source.to_string(),
            pos: 0,
            data_left: 0,
            pad_left: 0,
        }
    }

    fn err(&self, offset: u64, detail: impl Into<String>) -> DataError {
        DataError::Format {
            file: self.source.clone(),
            offset,
            detail: detail.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` when the stream ends before the first.
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.r.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(self.err(
                        self.pos,
                        format!("truncated tar header: expected {BLOCK} bytes, found {filled}"),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(self.pos, format!("cannot read: {e}"))),
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    /// Discards `n` bytes of the current member, failing if the stream ends first.
    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| self.err(self.pos, format!("cannot read: {e}")))?;
        self.pos += copied;
        if copied != n {
            return Err(self.err(
                self.pos,
                format!("the tar archive is truncated: {n} bytes expected, {copied} left"),
            ));
        }
        Ok(())
    }

    /// Copies the rest of the current member's data into `w`, then its padding is skipped
    /// by the next [`TarStream::next_header`]; fails if the stream ends first.
    pub fn copy_data(&mut self, w: &mut dyn Write) -> Result<u64> {
        let n = self.data_left;
        let copied = std::io::copy(&mut (&mut self.r).take(n), w)
            .map_err(|e| self.err(self.pos, format!("cannot copy member data: {e}")))?;
        self.pos += copied;
        self.data_left -= copied;
        if copied != n {
            return Err(self.err(
                self.pos,
                format!("the tar archive is truncated: {n} bytes expected, {copied} left"),
            ));
        }
        Ok(copied)
    }

    /// Reads a small extended header's data (GNU long name, pax) and its padding.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>> {
        if size > MAX_META_ENTRY {
            return Err(self.err(
                self.pos,
                format!("extended header of {size} bytes is larger than the {MAX_META_ENTRY} allowed"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        self.data_left = size;
        self.copy_data(&mut data)?;
        let pad = self.pad_left;
        self.pad_left = 0;
        self.skip(pad)?;
        Ok(data)
    }

    /// The next member with its extended headers applied, or `None` at the end of the
    /// archive (two zero blocks, or the end of the stream at a header boundary).
    pub fn next_header(&mut self) -> Result<Option<TarHeader>> {
        let rest = self.data_left + self.pad_left;
        self.data_left = 0;
        self.pad_left = 0;
        self.skip(rest)?;
        let mut long_name: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        let mut block = [0u8; BLOCK];
        loop {
            let at = self.pos;
            if !self.read_exact_or_end(&mut block)? || block.iter().all(|&b| b == 0) {
                if long_name.is_some() || pax_path.is_some() || pax_size.is_some() {
                    return Err(self.err(at, "the tar archive ends after an extended header, without its member"));
                }
                return Ok(None);
            }
            match checksum_ok(&block) {
                Some(true) => {}
                Some(false) => {
                    return Err(self.err(at, "tar header checksum mismatch (not a tar archive or corrupt)"));
                }
                None => return Err(self.err(at + 148, "unreadable tar header checksum")),
            }
            let size = match pax_size.take() {
                Some(s) => s,
                None => {
                    parse_number(&block[124..136]).ok_or_else(|| self.err(at + 124, "unreadable tar size field"))?
                }
            };
            let padded = size
                .checked_add(BLOCK as u64 - 1)
                .map(|s| s / BLOCK as u64 * BLOCK as u64)
                .ok_or_else(|| self.err(at + 124, format!("tar member of {size} bytes is too large")))?;
            let bad_name = || self.err(at, "tar member name is not UTF-8");
            let mut name = c_str(&block[0..100]).ok_or_else(bad_name)?.to_string();
            if &block[257..263] == b"ustar\0" {
                // POSIX ustar: a prefix field extends the name.
                let prefix = c_str(&block[345..500]).ok_or_else(bad_name)?;
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            self.data_left = size;
            self.pad_left = padded - size;
            match block[156] {
                b'L' => {
                    let data = self.read_meta(size)?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    let n = String::from_utf8(data[..end].to_vec())
                        .map_err(|_| self.err(at, "GNU long name is not UTF-8"))?;
                    long_name = Some(n);
                }
                b'x' => {
                    let data = self.read_meta(size)?;
                    let records = parse_pax(&data).map_err(|e| self.err(at, format!("bad pax header: {e}")))?;
                    for (key, value) in records {
                        match key {
                            "path" => pax_path = Some(value.to_string()),
                            "size" => {
                                let v = value
                                    .parse()
                                    .map_err(|_| self.err(at, format!("bad pax size {value:?}")))?;
                                pax_size = Some(v);
                            }
                            _ => {}
                        }
                    }
                }
                flag => {
                    let kind = match flag {
                        b'0' | 0 | b'7' => EntryKind::File,
                        b'5' => EntryKind::Dir,
                        other => EntryKind::Other(other),
                    };
                    let name = pax_path.take().or(long_name.take()).unwrap_or(name);
                    return Ok(Some(TarHeader {
                        name,
                        kind,
                        size,
                        offset: self.pos,
                    }));
                }
            }
        }
    }
}

/// Lists the regular files of an uncompressed tar archive held in memory, checking every
/// header (see [`TarStream`]) and that every member's data lies within `bytes`.
pub fn read_tar<'a>(bytes: &'a [u8], source: &str) -> Result<Vec<TarEntry<'a>>> {
    let mut stream = TarStream::new(std::io::Cursor::new(bytes), source);
    let mut entries = Vec::new();
    while let Some(h) = stream.next_header()? {
        let offset = h.offset as usize;
        let available = (bytes.len() - offset) as u64;
        if h.size > available {
            return Err(DataError::Format {
                file: source.to_string(),
                offset: h.offset,
                detail: format!(
                    "tar member '{}' truncated: header says {} bytes, only {available} remain",
                    h.name, h.size
                ),
            });
        }
        if h.kind == EntryKind::File {
            entries.push(TarEntry {
                name: h.name,
                offset,
                data: &bytes[offset..offset + h.size as usize],
            });
        }
        // Padding may be missing after the last member: skip the data, not beyond the end.
        stream.pad_left = stream.pad_left.min(available - h.size);
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

    fn fix_checksum(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"   17 \0\0"), Some(0o17));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_number(b"0000899\0"), None);
        assert_eq!(parse_number(b"12 34\0"), None);
        assert_eq!(parse_number(&[0xff; 12]), None);
        assert_eq!(parse_number(&[0xc0, 0, 0, 1]), None, "negative base-256");
        assert_eq!(parse_number(b"77777777777777777777777"), None);
    }

    #[test]
    fn pax_records() {
        let data = b"20 path=a/long/name\n11 size=42\n";
        assert_eq!(parse_pax(data).unwrap(), vec![("path", "a/long/name"), ("size", "42")]);
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"5 p=x").is_err());
    }

    /// What the two former readers disagreed on: signed checksums, pax sizes and names.
    #[test]
    fn signed_checksums_and_pax_sizes_and_paths() {
        // A pax header naming the next member and giving its size (the ustar field says 0).
        let pax = b"21 path=pax/name.bin\n10 size=3\n";
        let mut tar = write_tar(&[("PaxHeader", pax), ("short", b"")]);
        tar[156] = b'x';
        fix_checksum(&mut tar[..512]);
        tar.truncate(1536);
        let mut member = vec![0u8; 512];
        member[..3].copy_from_slice(b"xyz");
        tar.extend_from_slice(&member);
        tar.extend(vec![0u8; 1024]);
        let e = read_tar(&tar, "p.tar").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].name.as_str(), e[0].data), ("pax/name.bin", &b"xyz"[..]));
        // A header with bytes >= 0x80 and its checksum as the signed sum (old Sun tars).
        let mut tar = write_tar(&[("\u{e9}t\u{e9}", b"ab")]);
        let h = &mut tar[..512];
        h[148..156].copy_from_slice(b"        ");
        let signed: i64 = h.iter().map(|&b| b as i8 as i64).sum();
        h[148..155].copy_from_slice(format!("{signed:06o}\0").as_bytes());
        let e = read_tar(&tar, "s.tar").unwrap();
        assert_eq!(e[0].name, "\u{e9}t\u{e9}");
        // The streaming reader sees the same members and copies their data.
        let tar = write_tar(&[("d/a", b"hello"), ("b", &[9u8; 700])]);
        let mut s = TarStream::new(&tar[..], "t");
        let h = s.next_header().unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.kind, h.size, h.offset),
            ("d/a", EntryKind::File, 5, 512)
        );
        let mut out = Vec::new();
        s.copy_data(&mut out).unwrap();
        assert_eq!(out, b"hello");
        let h = s.next_header().unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.size), ("b", 700));
        assert!(s.next_header().unwrap().is_none());
        // A truncated member is an error for the stream too.
        let mut s = TarStream::new(&tar[..1800], "t");
        s.next_header().unwrap();
        let h = s.next_header().unwrap().unwrap();
        assert_eq!(h.size, 700);
        let err = s.copy_data(&mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
