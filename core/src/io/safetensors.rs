//! Safetensors reader and (F32) writer.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON describing each
//! tensor (`dtype`, `shape`, `data_offsets` into the data buffer) plus optional
//! `__metadata__`, then the data buffer. The reader validates the whole header before it
//! allocates anything.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::Deserialize;

use crate::io::{DType, IoError, NamedTensor, Result, TensorFile};

fn err(msg: impl Into<String>) -> IoError {
    IoError::Safetensors(msg.into())
}

/// A JSON object kept as an ordered list of entries, so duplicate keys can be rejected.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to descriptions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Entries, A::Error> {
                let mut out: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Info {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F64" => DType::F64,
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "U16" => DType::U16,
        "U32" => DType::U32,
        "U64" => DType::U64,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// Parses a safetensors file; tensors come back in data-offset (file) order, as f32.
///
/// Accepts F64/F32/F16/BF16 and integer/bool dtypes (converted to f32). Rejects any
/// header that would read outside the buffer, overlaps, leaves gaps, or repeats a name.
pub fn read_safetensors(bytes: &[u8]) -> Result<TensorFile> {
    if bytes.len() < 8 {
        return Err(err(format!(
            "file is {} bytes, shorter than the 8-byte header length field",
            bytes.len()
        )));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len8);
    let avail = bytes.len() - 8;
    if n > avail as u64 {
        return Err(err(format!(
            "header length {n} exceeds the {avail} bytes after the length field"
        )));
    }
    let n = n as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| err(format!("header is not valid UTF-8: {e}")))?;
    let entries: Entries =
        serde_json::from_str(text).map_err(|e| err(format!("header is not a valid JSON object: {e}")))?;
    let buffer = &bytes[8 + n..];

    let mut metadata = BTreeMap::new();
    let mut list: Vec<Entry> = Vec::with_capacity(entries.0.len());
    let mut names = std::collections::BTreeSet::new();
    for (name, value) in entries.0 {
        if !names.insert(name.clone()) {
            return Err(err(format!("name {name:?} appears twice in the header")));
        }
        if name == "__metadata__" {
            let obj = value
                .as_object()
                .ok_or_else(|| err(format!("__metadata__ must be an object of strings, found {value}")))?;
            for (k, v) in obj {
                let s = v
                    .as_str()
                    .ok_or_else(|| err(format!("__metadata__ value for {k:?} must be a string, found {v}")))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let info: Info =
            serde_json::from_value(value).map_err(|e| err(format!("tensor {name:?}: invalid description: {e}")))?;
        let dtype = parse_dtype(&info.dtype).ok_or_else(|| {
            err(format!(
                "tensor {name:?}: unsupported dtype {:?} (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, U16, U32, U64, BOOL)",
                info.dtype
            ))
        })?;
        let mut shape = Vec::with_capacity(info.shape.len());
        let mut numel: usize = 1;
        for &d in &info.shape {
            let d = usize::try_from(d).map_err(|_| err(format!("tensor {name:?}: dimension {d} is too large")))?;
            shape.push(d);
            numel = numel.checked_mul(d).ok_or_else(|| {
                err(format!(
                    "tensor {name:?}: shape {:?} has more elements than fit in memory",
                    info.shape
                ))
            })?;
        }
        let nbytes = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| err(format!("tensor {name:?}: shape {shape:?} is too large in bytes")))?;
        let [b, e] = info.data_offsets;
        if e < b {
            return Err(err(format!(
                "tensor {name:?}: data_offsets [{b}, {e}] end before they begin"
            )));
        }
        if (e - b) != nbytes as u64 {
            return Err(err(format!(
                "tensor {name:?}: shape {shape:?} needs {nbytes} bytes of {}, data_offsets give {}",
                info.dtype,
                e - b
            )));
        }
        if e > buffer.len() as u64 {
            return Err(err(format!(
                "tensor {name:?}: data_offsets [{b}, {e}] exceed the {}-byte data buffer",
                buffer.len()
            )));
        }
        list.push(Entry {
            name,
            dtype,
            shape,
            begin: b as usize,
            end: e as usize,
        });
    }
    list.sort_by_key(|t| (t.begin, t.end));
    let mut expect = 0usize;
    for t in &list {
        if t.begin != expect {
            return Err(err(format!(
                "tensor {:?}: data starts at offset {}, expected {expect} (tensors must tile the data buffer without gaps or overlap)",
                t.name, t.begin
            )));
        }
        expect = t.end;
    }
    if expect != buffer.len() {
        return Err(err(format!(
            "data buffer is {} bytes but the tensors cover {expect}",
            buffer.len()
        )));
    }
    let mut tensors = Vec::with_capacity(list.len());
    for t in list {
        let raw = &buffer[t.begin..t.end];
        let mut data = Vec::with_capacity(raw.len() / t.dtype.size());
        t.dtype.decode_into(raw, true, &mut data);
        tensors.push(NamedTensor {
            name: t.name,
            shape: t.shape,
            data,
        });
    }
    Ok(TensorFile { tensors, metadata })
}

/// Writes F32 tensors `(name, shape, data)` in the given order, with `__metadata__` when
/// `metadata` is non-empty; the JSON header is space-padded to a multiple of 8 bytes.
pub fn write_safetensors<'a, I>(tensors: I, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
{
    let mut header = String::from("{");
    let mut first = true;
    let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&json(k));
            header.push(':');
            header.push_str(&json(v));
        }
        header.push('}');
        first = false;
    }
    let mut names = std::collections::BTreeSet::new();
    let mut datas: Vec<&[f32]> = Vec::new();
    let mut offset: usize = 0;
    for (name, shape, data) in tensors {
        if name == "__metadata__" {
            return Err(err("a tensor cannot be named \"__metadata__\""));
        }
        if !names.insert(name) {
            return Err(err(format!("tensor {name:?} is given twice")));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| err(format!("tensor {name:?}: shape {shape:?} overflows")))?;
        if numel != data.len() {
            return Err(err(format!(
                "tensor {name:?}: shape {shape:?} needs {numel} elements, data has {}",
                data.len()
            )));
        }
        let end = offset
            .checked_add(numel * 4)
            .ok_or_else(|| err("total data size overflows"))?;
        if !first {
            header.push(',');
        }
        first = false;
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json(name),
            dims.join(",")
        ));
        offset = end;
        datas.push(data);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for d in datas {
        for v in d {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// Writes all tensors and the metadata of `file` as an F32 safetensors file.
pub fn write_tensor_file(file: &TensorFile) -> Result<Vec<u8>> {
    write_safetensors(
        file.tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice(), t.data.as_slice())),
        &file.metadata,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a file from a raw JSON header and data buffer, without any padding.
    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn sample() -> TensorFile {
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        metadata.insert("note \"quoted\"".to_string(), "ü".to_string());
        TensorFile {
            tensors: vec![
                NamedTensor::new("fc.weight", vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-7, 9.0]),
                NamedTensor::new("fc.bias", vec![2], vec![0.25, -0.5]),
                NamedTensor::new("scalar", vec![], vec![42.0]),
                NamedTensor::new("empty", vec![0, 4], vec![]),
            ],
            metadata,
        }
    }

    #[test]
    fn round_trip() {
        let f = sample();
        let bytes = write_tensor_file(&f).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "header padded to 8");
        let back = read_safetensors(&bytes).unwrap();
        // The empty tensor has zero bytes at the end, so file order == given order here.
        assert_eq!(back, f);
        assert_eq!(back.get("fc.bias").unwrap().data, vec![0.25, -0.5]);
        assert_eq!(back.total_elements(), 9);
    }

    #[test]
    fn empty_file_round_trip() {
        let bytes = write_safetensors(std::iter::empty(), &BTreeMap::new()).unwrap();
        assert_eq!(bytes.len(), 16);
        let f = read_safetensors(&bytes).unwrap();
        assert!(f.is_empty() && f.metadata.is_empty());
    }

    #[test]
    fn writer_rejects_bad_input() {
        let m = BTreeMap::new();
        let d = [1.0f32, 2.0];
        let e = write_safetensors([("a", &[2][..], &d[..]), ("a", &[2][..], &d[..])], &m);
        assert!(e.unwrap_err().to_string().contains("twice"));
        let e = write_safetensors([("a", &[3][..], &d[..])], &m);
        assert!(e.unwrap_err().to_string().contains("needs 3 elements"));
        let e = write_safetensors([("__metadata__", &[2][..], &d[..])], &m);
        assert!(e.is_err());
    }

    #[test]
    fn file_order_by_offset() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#;
        let f = read_safetensors(&raw(h, &data)).unwrap();
        assert_eq!(f.names().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(f.get("b").unwrap().data, vec![2.0, 3.0]);
    }

    #[test]
    fn half_and_bfloat_and_ints() {
        let mut data = Vec::new();
        for h in [0x3c00u16, 0xc000, 0x3800] {
            data.extend_from_slice(&h.to_le_bytes()); // F16: 1, -2, 0.5
        }
        for h in [0x3f80u16, 0x4040] {
            data.extend_from_slice(&h.to_le_bytes()); // BF16: 1, 3
        }
        data.extend_from_slice(&2.5f64.to_le_bytes());
        data.extend_from_slice(&7i64.to_le_bytes());
        data.push(200u8);
        let h = r#"{"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[6,10]},"d":{"dtype":"F64","shape":[1],"data_offsets":[10,18]},"n":{"dtype":"I64","shape":[],"data_offsets":[18,26]},"u":{"dtype":"U8","shape":[1],"data_offsets":[26,27]},"__metadata__":{"k":"v"}}"#;
        let f = read_safetensors(&raw(h, &data)).unwrap();
        assert_eq!(f.get("h").unwrap().data, vec![1.0, -2.0, 0.5]);
        assert_eq!(f.get("b").unwrap().data, vec![1.0, 3.0]);
        assert_eq!(f.get("b").unwrap().shape, vec![1, 2]);
        assert_eq!(f.get("d").unwrap().data, vec![2.5]);
        assert_eq!(f.get("n").unwrap().data, vec![7.0]);
        assert_eq!(f.get("u").unwrap().data, vec![200.0]);
        assert_eq!(f.metadata.get("k").map(String::as_str), Some("v"));
    }

    fn read_err(h: &str, data: &[u8]) -> String {
        read_safetensors(&raw(h, data)).unwrap_err().to_string()
    }

    #[test]
    fn corruption_errors() {
        let d = vec![0u8; 16];
        // Size mismatch message names the tensor and both sizes.
        let e = read_err(
            r#"{"fc.weight":{"dtype":"F32","shape":[10,64],"data_offsets":[0,2556]}}"#,
            &[0; 2556],
        );
        assert_eq!(
            e,
            "safetensors: tensor \"fc.weight\": shape [10, 64] needs 2560 bytes of F32, data_offsets give 2556"
        );
        let e = read_err(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &d[..8]);
        assert!(e.contains("exceed the 8-byte data buffer"), "{e}");
        let e = read_err(
            r#"{"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,16]}}"#,
            &d,
        );
        assert!(e.contains("\"a\""), "{e}");
        let e = read_err(
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}}"#,
            &d,
        );
        assert!(e.contains("too large"), "{e}");
        let e = read_err(r#"{"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}}"#, &d);
        assert!(e.contains("unsupported dtype \"F33\""), "{e}");
        let e = read_err(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#, &d);
        assert!(e.contains("end before"), "{e}");
        let e = read_err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &d[..12],
        );
        assert!(e.contains("gaps or overlap"), "{e}");
        let e = read_err(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &d);
        assert!(e.contains("cover 8"), "{e}");
        let e = read_err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            &d,
        );
        assert!(e.contains("twice"), "{e}");
        let e = read_err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
            &d[..8],
        );
        assert!(e.contains("invalid description"), "{e}");
        let e = read_err(r#"{"__metadata__":{"k":1}}"#, &[]);
        assert!(e.contains("must be a string"), "{e}");
        let e = read_err(r#"{"a":"#, &[]);
        assert!(e.contains("not a valid JSON"), "{e}");
        let e = read_err(r#"[1,2]"#, &[]);
        assert!(e.contains("not a valid JSON"), "{e}");
        // Header length larger than the file.
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(read_safetensors(&b).unwrap_err().to_string().contains("exceeds"));
        assert!(read_safetensors(&[1, 2, 3]).is_err());
    }

    #[test]
    fn truncation_and_bit_flips_never_panic() {
        let bytes = write_tensor_file(&sample()).unwrap();
        for len in 0..bytes.len() {
            assert!(read_safetensors(&bytes[..len]).is_err(), "truncated at {len}");
        }
        let n = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut copy = bytes.clone();
        for i in 0..n {
            for bit in 0..8 {
                copy[i] ^= 1 << bit;
                let _ = read_safetensors(&copy); // must not panic; may or may not be Ok
                copy[i] ^= 1 << bit;
            }
        }
        assert_eq!(copy, bytes);
    }
}
