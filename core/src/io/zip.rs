//! Minimal zip reader over a byte slice: enough for PyTorch checkpoints.
//!
//! Reads the end-of-central-directory record (and its zip64 form), lists the entries and
//! returns the bytes of stored (uncompressed) entries, checking every offset, size and
//! CRC-32 against the input.

use crate::io::{IoError, Result};

fn err(msg: impl Into<String>) -> IoError {
    IoError::Zip(msg.into())
}

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;

/// True when `bytes` starts with a zip local-file-header signature.
pub fn looks_like_zip(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && rd32(bytes, 0) == Some(LOCAL_SIG)
}

fn rd16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn rd32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// CRC-32 (IEEE, as used by zip) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// One central-directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Path inside the archive, e.g. `archive/data/0`.
    pub name: String,
    /// Compression method: 0 = stored, 8 = deflate, ...
    pub method: u16,
    /// General-purpose flags (bit 0: encrypted).
    pub flags: u16,
    /// CRC-32 of the uncompressed data.
    pub crc32: u32,
    /// Size of the data as stored in the archive.
    pub compressed_size: u64,
    /// Size of the data once uncompressed.
    pub uncompressed_size: u64,
    /// Offset of the entry's local file header.
    pub local_header_offset: u64,
}

/// A parsed zip archive borrowing the input bytes.
#[derive(Debug, Clone)]
pub struct ZipArchive<'a> {
    data: &'a [u8],
    entries: Vec<ZipEntry>,
}

fn find_eocd(data: &[u8]) -> Result<usize> {
    if data.len() < 22 {
        return Err(err(format!(
            "archive is {} bytes, too short for an end-of-central-directory record (22 bytes)",
            data.len()
        )));
    }
    let last = data.len() - 22;
    let first = last.saturating_sub(0xFFFF);
    for pos in (first..=last).rev() {
        if rd32(data, pos) == Some(EOCD_SIG) {
            let comment = rd16(data, pos + 20).unwrap_or(0) as usize;
            if pos + 22 + comment <= data.len() {
                return Ok(pos);
            }
        }
    }
    Err(err(
        "no end-of-central-directory record found (not a zip archive, or truncated)",
    ))
}

impl<'a> ZipArchive<'a> {
    /// Parses the central directory of the archive in `data`.
    pub fn new(data: &'a [u8]) -> Result<Self> {
        let eocd = find_eocd(data)?;
        let disk = rd16(data, eocd + 4).unwrap_or(0);
        let cd_disk = rd16(data, eocd + 6).unwrap_or(0);
        let mut count = rd16(data, eocd + 10).unwrap_or(0) as u64;
        let mut cd_size = rd32(data, eocd + 12).unwrap_or(0) as u64;
        let mut cd_offset = rd32(data, eocd + 16).unwrap_or(0) as u64;
        let has_locator = eocd >= 20 && rd32(data, eocd - 20) == Some(ZIP64_LOCATOR_SIG);
        let mut cd_limit = eocd as u64;
        if has_locator {
            let z = rd64(data, eocd - 20 + 8).unwrap_or(u64::MAX);
            if z > (eocd - 20) as u64 || (eocd - 20) as u64 - z < 56 {
                return Err(err(format!(
                    "zip64 end-of-central-directory offset {z} is outside the archive (locator at {})",
                    eocd - 20
                )));
            }
            let z = z as usize;
            if rd32(data, z) != Some(ZIP64_EOCD_SIG) {
                return Err(err(format!("no zip64 end-of-central-directory record at offset {z}")));
            }
            count = rd64(data, z + 32).unwrap_or(0);
            cd_size = rd64(data, z + 40).unwrap_or(0);
            cd_offset = rd64(data, z + 48).unwrap_or(0);
            cd_limit = z as u64;
        } else if disk != 0 || cd_disk != 0 {
            return Err(err("multi-disk archives are not supported"));
        } else if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            return Err(err("archive needs zip64 records but has no zip64 locator"));
        }
        let cd_end = cd_offset
            .checked_add(cd_size)
            .filter(|&e| e <= cd_limit)
            .ok_or_else(|| {
                err(format!(
                    "central directory [{cd_offset}, +{cd_size}) lies outside the archive (limit {cd_limit})"
                ))
            })?;
        if count > cd_size / 46 {
            return Err(err(format!(
                "{count} entries cannot fit in a {cd_size}-byte central directory"
            )));
        }
        let cd = &data[cd_offset as usize..cd_end as usize];
        let mut entries = Vec::with_capacity(count as usize);
        let mut p = 0usize;
        for i in 0..count {
            let bad = || err(format!("central directory entry {i} is truncated or corrupt"));
            if rd32(cd, p) != Some(CENTRAL_SIG) {
                return Err(err(format!(
                    "central directory entry {i}: bad signature at offset {}",
                    cd_offset as usize + p
                )));
            }
            let flags = rd16(cd, p + 8).ok_or_else(bad)?;
            let method = rd16(cd, p + 10).ok_or_else(bad)?;
            let crc = rd32(cd, p + 16).ok_or_else(bad)?;
            let mut csize = rd32(cd, p + 20).ok_or_else(bad)? as u64;
            let mut usize_ = rd32(cd, p + 24).ok_or_else(bad)? as u64;
            let nlen = rd16(cd, p + 28).ok_or_else(bad)? as usize;
            let xlen = rd16(cd, p + 30).ok_or_else(bad)? as usize;
            let clen = rd16(cd, p + 32).ok_or_else(bad)? as usize;
            let mut offset = rd32(cd, p + 42).ok_or_else(bad)? as u64;
            let name_end = p + 46 + nlen;
            let extra_end = name_end + xlen;
            let next = extra_end + clen;
            if next > cd.len() {
                return Err(bad());
            }
            let name = String::from_utf8_lossy(&cd[p + 46..name_end]).into_owned();
            // Zip64 extended information: only the fields saturated in the fixed header.
            let mut x = name_end;
            while x + 4 <= extra_end {
                let id = rd16(cd, x).ok_or_else(bad)?;
                let len = rd16(cd, x + 2).ok_or_else(bad)? as usize;
                let body = x + 4;
                if body + len > extra_end {
                    return Err(err(format!("entry {name:?}: extra field overruns its header")));
                }
                if id == 0x0001 {
                    let mut q = body;
                    let mut take = |v: &mut u64| -> Result<()> {
                        if *v == 0xFFFF_FFFF {
                            if q + 8 > body + len {
                                return Err(err(format!("entry {name:?}: zip64 field is too short")));
                            }
                            *v = rd64(cd, q).ok_or_else(bad)?;
                            q += 8;
                        }
                        Ok(())
                    };
                    take(&mut usize_)?;
                    take(&mut csize)?;
                    take(&mut offset)?;
                }
                x = body + len;
            }
            entries.push(ZipEntry {
                name,
                method,
                flags,
                crc32: crc,
                compressed_size: csize,
                uncompressed_size: usize_,
                local_header_offset: offset,
            });
            p = next;
        }
        Ok(ZipArchive { data, entries })
    }

    /// All entries in central-directory order.
    pub fn entries(&self) -> &[ZipEntry] {
        &self.entries
    }

    /// The first entry with this exact name.
    pub fn entry(&self, name: &str) -> Option<&ZipEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The bytes of a stored (method 0) entry, after checking its local header and CRC-32.
    pub fn entry_data(&self, name: &str) -> Result<&'a [u8]> {
        let e = self
            .entry(name)
            .ok_or_else(|| err(format!("archive has no entry {name:?}")))?;
        if e.flags & 1 != 0 {
            return Err(err(format!("entry {name:?} is encrypted, which is not supported")));
        }
        if e.method != 0 {
            let what = if e.method == 8 { " (deflate)" } else { "" };
            return Err(err(format!(
                "entry {name:?} is compressed with method {}{what}; only stored (method 0) entries are supported",
                e.method
            )));
        }
        if e.compressed_size != e.uncompressed_size {
            return Err(err(format!(
                "stored entry {name:?} has compressed size {} but uncompressed size {}",
                e.compressed_size, e.uncompressed_size
            )));
        }
        let d = self.data;
        let off = usize::try_from(e.local_header_offset)
            .ok()
            .filter(|&o| o.checked_add(30).is_some_and(|end| end <= d.len()))
            .ok_or_else(|| {
                err(format!(
                    "entry {name:?}: local header offset {} is outside the {}-byte archive",
                    e.local_header_offset,
                    d.len()
                ))
            })?;
        if rd32(d, off) != Some(LOCAL_SIG) {
            return Err(err(format!("entry {name:?}: no local file header at offset {off}")));
        }
        let nlen = rd16(d, off + 26).unwrap_or(0) as usize;
        let xlen = rd16(d, off + 28).unwrap_or(0) as usize;
        let start = off + 30 + nlen + xlen;
        if d.get(off + 30..off + 30 + nlen) != Some(e.name.as_bytes()) {
            return Err(err(format!("entry {name:?}: local header names a different file")));
        }
        let end = u64::try_from(start)
            .ok()
            .and_then(|s| s.checked_add(e.compressed_size))
            .filter(|&end| end <= d.len() as u64)
            .ok_or_else(|| {
                err(format!(
                    "entry {name:?}: {} bytes of data at offset {start} run past the end of the {}-byte archive",
                    e.compressed_size,
                    d.len()
                ))
            })? as usize;
        let bytes = &d[start..end];
        let c = crc32(bytes);
        if c != e.crc32 {
            return Err(err(format!(
                "entry {name:?}: CRC-32 is {c:08x}, the directory says {:08x} (corrupt data)",
                e.crc32
            )));
        }
        Ok(bytes)
    }
}

/// Test-only writer of stored zip archives laid out like PyTorch's: data aligned to 64
/// bytes by padding the local extra field, optional zip64 records.
#[cfg(test)]
pub(crate) mod testutil {
    use super::crc32;

    /// Writes `entries` as a stored zip; `zip64` adds zip64 extra fields and EOCD records.
    pub(crate) fn write_zip(entries: &[(&str, &[u8])], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let offset = out.len();
            let crc = crc32(data);
            let base = offset + 30 + name.len() + 4;
            let pad = (64 - base % 64) % 64;
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&0x4246u16.to_le_bytes()); // "FB" padding field
            out.extend_from_slice(&(pad as u16).to_le_bytes());
            out.extend(std::iter::repeat_n(b'Z', pad));
            assert_eq!(out.len() % 64, 0);
            out.extend_from_slice(data);

            let (sz, off, extra) = if zip64 {
                let mut x = Vec::new();
                x.extend_from_slice(&1u16.to_le_bytes());
                x.extend_from_slice(&24u16.to_le_bytes());
                x.extend_from_slice(&(data.len() as u64).to_le_bytes());
                x.extend_from_slice(&(data.len() as u64).to_le_bytes());
                x.extend_from_slice(&(offset as u64).to_le_bytes());
                (0xFFFF_FFFFu32, 0xFFFF_FFFFu32, x)
            } else {
                (data.len() as u32, offset as u32, Vec::new())
            };
            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            central.extend_from_slice(&[45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend_from_slice(&crc.to_le_bytes());
            central.extend_from_slice(&sz.to_le_bytes());
            central.extend_from_slice(&sz.to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 10]);
            central.extend_from_slice(&off.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
            central.extend_from_slice(&extra);
        }
        let cd_offset = out.len();
        out.extend_from_slice(&central);
        let n = entries.len();
        if zip64 {
            let z = out.len();
            out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&(n as u64).to_le_bytes());
            out.extend_from_slice(&(n as u64).to_le_bytes());
            out.extend_from_slice(&(central.len() as u64).to_le_bytes());
            out.extend_from_slice(&(cd_offset as u64).to_le_bytes());
            out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(z as u64).to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let (c16, csz, coff) = if zip64 {
            (0xFFFFu16, 0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
        } else {
            (n as u16, central.len() as u32, cd_offset as u32)
        };
        out.extend_from_slice(&c16.to_le_bytes());
        out.extend_from_slice(&c16.to_le_bytes());
        out.extend_from_slice(&csz.to_le_bytes());
        out.extend_from_slice(&coff.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::write_zip;
    use super::*;

    fn sample_entries() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("archive/data.pkl", b"\x80\x02}q\x00.".to_vec()),
            ("archive/byteorder", b"little".to_vec()),
            ("archive/data/0", (0u8..=255).collect()),
            ("archive/version", b"3\n".to_vec()),
        ]
    }

    fn build(zip64: bool) -> Vec<u8> {
        let e = sample_entries();
        let refs: Vec<(&str, &[u8])> = e.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        write_zip(&refs, zip64)
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn reads_plain_and_zip64() {
        for zip64 in [false, true] {
            let bytes = build(zip64);
            assert!(looks_like_zip(&bytes));
            let z = ZipArchive::new(&bytes).unwrap();
            let names: Vec<_> = z.entries().iter().map(|e| e.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "archive/data.pkl",
                    "archive/byteorder",
                    "archive/data/0",
                    "archive/version"
                ]
            );
            for (n, d) in sample_entries() {
                assert_eq!(z.entry_data(n).unwrap(), d.as_slice());
                assert_eq!(z.entry(n).unwrap().uncompressed_size, d.len() as u64);
            }
            assert!(z.entry_data("missing").unwrap_err().to_string().contains("no entry"));
        }
    }

    #[test]
    fn compressed_entry_is_refused_clearly() {
        let mut bytes = build(false);
        // Patch the method of the first central entry to 8 (deflate).
        let cd = bytes
            .windows(4)
            .position(|w| w == 0x0201_4b50u32.to_le_bytes())
            .unwrap();
        bytes[cd + 10] = 8;
        let z = ZipArchive::new(&bytes).unwrap();
        let e = z.entry_data("archive/data.pkl").unwrap_err().to_string();
        assert!(e.contains("method 8 (deflate)"), "{e}");
    }

    #[test]
    fn corrupt_data_fails_crc() {
        let mut bytes = build(false);
        let pos = bytes.windows(6).position(|w| w == b"little").unwrap();
        bytes[pos] = b'L';
        let z = ZipArchive::new(&bytes).unwrap();
        assert!(z
            .entry_data("archive/byteorder")
            .unwrap_err()
            .to_string()
            .contains("CRC"));
    }

    #[test]
    fn truncation_and_bit_flips_never_panic() {
        for zip64 in [false, true] {
            let bytes = build(zip64);
            for len in 0..bytes.len() {
                if let Ok(z) = ZipArchive::new(&bytes[..len]) {
                    for e in z.entries().to_vec() {
                        let _ = z.entry_data(&e.name);
                    }
                }
            }
            let mut copy = bytes.clone();
            for i in 0..copy.len() {
                for bit in 0..8 {
                    copy[i] ^= 1 << bit;
                    if let Ok(z) = ZipArchive::new(&copy) {
                        for e in z.entries().to_vec() {
                            let _ = z.entry_data(&e.name);
                        }
                    }
                    copy[i] ^= 1 << bit;
                }
            }
        }
    }

    #[test]
    fn hostile_directory_values() {
        let mut bytes = build(false);
        let n = bytes.len();
        // Entry count far larger than the directory can hold.
        bytes[n - 12..n - 10].copy_from_slice(&0xFFFEu16.to_le_bytes());
        assert!(ZipArchive::new(&bytes).unwrap_err().to_string().contains("cannot fit"));
        let mut bytes = build(false);
        bytes[n - 6..n - 2].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(ZipArchive::new(&bytes).unwrap_err().to_string().contains("outside"));
        assert!(ZipArchive::new(b"PK\x03\x04 not really").is_err());
    }
}
