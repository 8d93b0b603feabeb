//! Reading and writing weight files (safetensors, PyTorch checkpoints) from byte slices.
//!
//! Nothing here touches the file system: callers read the bytes, so the module also
//! builds for `wasm32-unknown-unknown`. Every length and offset found in a file is
//! checked against the input before it is used or allocated.

pub mod pickle;
pub mod safetensors;
pub mod torch;
pub mod zip;

use std::collections::BTreeMap;

/// Errors from parsing or writing weight files; each names the format and what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IoError {
    /// A malformed or unsupported safetensors file, or invalid input to the writer.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A malformed pickle stream or one using an unsupported opcode.
    #[error("pickle: {0}")]
    Pickle(String),
    /// A pickle that names a global outside the tensor-rebuilding allow-list.
    #[error(
        "pickle: global \"{0}\" is not allowed (only tensor-rebuilding globals are; a file written by \
         torch.save(model) holds the model's class and code: save model.state_dict() instead)"
    )]
    DisallowedGlobal(String),
    /// A malformed or unsupported zip archive.
    #[error("zip: {0}")]
    Zip(String),
    /// A PyTorch checkpoint whose structure or tensor data is invalid or unsupported.
    #[error("torch: {0}")]
    Torch(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, IoError>;

/// One named tensor as stored in a file: row-major, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Full name as in the file, e.g. `module.conv1.weight`.
    pub name: String,
    /// Dimensions, outermost first; empty for a scalar.
    pub shape: Vec<usize>,
    /// Row-major elements; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// Builds a tensor; `data.len()` must equal the product of `shape`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        NamedTensor {
            name: name.into(),
            shape,
            data,
        }
    }

    /// Number of elements (the product of the shape).
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// All tensors of a file in file order, plus string metadata (safetensors `__metadata__`,
/// or small scalars such as `epoch` found beside the weights in a PyTorch checkpoint).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorFile {
    /// Tensors in file order.
    pub tensors: Vec<NamedTensor>,
    /// String metadata.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// The first tensor with this exact name.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensor names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of elements over all tensors.
    pub fn total_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }
}

/// Weight file formats that [`read_weights`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face safetensors.
    Safetensors,
    /// PyTorch zip checkpoint (torch >= 1.6).
    TorchZip,
    /// PyTorch legacy pickle-sequence checkpoint.
    TorchLegacy,
}

/// Guesses the format from the first bytes: zip magic, torch legacy magic or any pickle
/// stream (PROTO opcode; read as a legacy checkpoint, whose reader names what it found),
/// else safetensors.
pub fn detect_format(bytes: &[u8]) -> Format {
    if zip::looks_like_zip(bytes) {
        Format::TorchZip
    } else if torch::looks_like_legacy(bytes) || (bytes.len() >= 2 && bytes[0] == 0x80 && bytes[1] <= 5) {
        Format::TorchLegacy
    } else {
        Format::Safetensors
    }
}

/// Reads a weight file of any supported format (see [`detect_format`]).
pub fn read_weights(bytes: &[u8]) -> Result<TensorFile> {
    match detect_format(bytes) {
        Format::Safetensors => safetensors::read_safetensors(bytes),
        Format::TorchZip | Format::TorchLegacy => torch::read_torch(bytes),
    }
}

/// Converts IEEE half-precision bits to f32 (exact, including subnormals, inf and NaN).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // Subnormal: value = mant * 2^-24.
            let v = mant as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

/// Converts bfloat16 bits to f32 (exact).
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Element types found in weight files, with their conversion to f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Converts `bytes` (a whole number of elements) to f32, appending to `out`.
    pub(crate) fn decode_into(self, bytes: &[u8], little_endian: bool, out: &mut Vec<f32>) {
        macro_rules! conv {
            ($n:expr, $f:expr) => {
                for c in bytes.chunks_exact($n) {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    if !little_endian {
                        a.reverse();
                    }
                    out.push($f(a));
                }
            };
        }
        match self {
            DType::F64 => conv!(8, |a| f64::from_le_bytes(a) as f32),
            DType::F32 => conv!(4, f32::from_le_bytes),
            DType::F16 => conv!(2, |a| f16_to_f32(u16::from_le_bytes(a))),
            DType::BF16 => conv!(2, |a| bf16_to_f32(u16::from_le_bytes(a))),
            DType::I64 => conv!(8, |a| i64::from_le_bytes(a) as f32),
            DType::I32 => conv!(4, |a| i32::from_le_bytes(a) as f32),
            DType::I16 => conv!(2, |a| i16::from_le_bytes(a) as f32),
            DType::U16 => conv!(2, |a| u16::from_le_bytes(a) as f32),
            DType::U32 => conv!(4, |a| u32::from_le_bytes(a) as f32),
            DType::U64 => conv!(8, |a| u64::from_le_bytes(a) as f32),
            DType::I8 => out.extend(bytes.iter().map(|&b| b as i8 as f32)),
            DType::U8 => out.extend(bytes.iter().map(|&b| b as f32)),
            DType::Bool => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn a_bare_pickle_and_a_whole_model_get_their_own_errors() {
        let err = read_weights(&[0x80, 2, b'N', b'.']).unwrap_err().to_string();
        assert!(
            err.contains("a pickle stream but not a PyTorch checkpoint") && !err.contains("safetensors"),
            "{err}"
        );
        // What torch.save(model) writes: the model's class as a global.
        let mut b = vec![0x80, 2, b'c'];
        b.extend_from_slice(b"torchvision.models.resnet\nResNet\n)\x81.");
        let err = read_weights(&b).unwrap_err().to_string();
        assert!(
            err.contains("torchvision.models.resnet.ResNet") && err.contains("save model.state_dict() instead"),
            "{err}"
        );
    }

    #[test]
    fn decode_big_endian() {
        let mut out = Vec::new();
        DType::F32.decode_into(&1.5f32.to_be_bytes(), false, &mut out);
        DType::I64.decode_into(&7i64.to_le_bytes(), true, &mut out);
        assert_eq!(out, vec![1.5, 7.0]);
    }
}
