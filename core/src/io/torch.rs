//! PyTorch checkpoints (`torch.save`): the zip format (torch >= 1.6) and the legacy
//! pickle-sequence format, read from bytes without running any pickled code.
//!
//! Tensors are rebuilt from `torch._utils._rebuild_tensor*` calls recorded by the
//! restricted unpickler; strides and storage offsets are honoured and every index is
//! checked against its storage before anything is allocated.

use std::collections::{BTreeMap, HashMap};

use crate::io::pickle::{unpickle, Value};
use crate::io::zip::{looks_like_zip, ZipArchive};
use crate::io::{DType, IoError, NamedTensor, Result, TensorFile};

fn err(msg: impl Into<String>) -> IoError {
    IoError::Torch(msg.into())
}

/// Magic number that starts a legacy checkpoint, as pickle LONG1 bytes (0x1950a86a20f9469cfc6c).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// True when `bytes` starts like a legacy `torch.save` file (pickled magic number).
pub fn looks_like_legacy(bytes: &[u8]) -> bool {
    bytes.len() >= 14 && bytes[0] == 0x80 && bytes[2..4] == [0x8a, 0x0a] && bytes[4..14] == LEGACY_MAGIC
}

/// Element type of a `torch.<dtype>` global such as `torch.float32`.
pub(crate) fn dtype_from_name(name: &str) -> Option<DType> {
    Some(match name {
        "float32" | "float" => DType::F32,
        "float16" | "half" => DType::F16,
        "bfloat16" => DType::BF16,
        "float64" | "double" => DType::F64,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "int16" | "short" => DType::I16,
        "int8" => DType::I8,
        "uint8" => DType::U8,
        "bool" => DType::Bool,
        _ => return None,
    })
}

fn storage_dtype(v: &Value) -> Option<DType> {
    let Value::Global { module, name } = v else {
        return None;
    };
    if module != "torch" {
        return None;
    }
    Some(match name.as_str() {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" | "UntypedStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        other => return dtype_from_name(other),
    })
}

/// A parsed persistent id `('storage', type, key, location, numel[, view_metadata])`.
struct StorageRef {
    dtype: DType,
    key: String,
    numel: u64,
    /// Legacy storage views: (offset, size) in elements of the root storage.
    view: Option<(u64, u64)>,
}

fn key_string(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn parse_pid(pid: &Value) -> Result<StorageRef> {
    let bad = || {
        err(format!(
            "unsupported persistent id {pid:?} (expected ('storage', type, key, location, numel, ...))"
        ))
    };
    let items = pid.as_seq().ok_or_else(bad)?;
    if items.len() < 5 || items[0].as_str() != Some("storage") {
        return Err(bad());
    }
    let dtype = storage_dtype(&items[1])
        .ok_or_else(|| err(format!("unsupported storage type {:?} in persistent id", items[1])))?;
    let key = key_string(&items[2]).ok_or_else(bad)?;
    let numel = items[4].as_int().and_then(|n| u64::try_from(n).ok()).ok_or_else(|| {
        err(format!(
            "storage {key:?}: element count {:?} is not a non-negative int",
            items[4]
        ))
    })?;
    let view = match items.get(5) {
        None | Some(Value::None) => None,
        Some(v) => match v.as_seq() {
            Some([_, off, size]) => {
                let off = off.as_int().and_then(|n| u64::try_from(n).ok());
                let size = size.as_int().and_then(|n| u64::try_from(n).ok());
                match (off, size) {
                    (Some(o), Some(s)) => Some((o, s)),
                    _ => return Err(err(format!("storage {key:?}: bad view metadata {v:?}"))),
                }
            }
            _ => return Err(err(format!("storage {key:?}: bad view metadata {v:?}"))),
        },
    };
    Ok(StorageRef {
        dtype,
        key,
        numel,
        view,
    })
}

/// Where storage bytes come from, plus the allocation budget for materialised tensors.
struct Ctx<'a> {
    zip: Option<(ZipArchive<'a>, String)>,
    /// Raw bytes of each storage, by key (zip: filled lazily; legacy: filled up front).
    raw: HashMap<String, &'a [u8]>,
    little_endian: bool,
    /// Elements that may still be allocated in total (a small multiple of the input size).
    budget: usize,
}

impl<'a> Ctx<'a> {
    fn new(input_len: usize) -> Self {
        Ctx {
            zip: None,
            raw: HashMap::new(),
            little_endian: true,
            budget: input_len.saturating_mul(2).saturating_add(1024),
        }
    }

    /// The bytes of the storage named by `pid`, limited to its declared element count.
    fn storage(&mut self, pid: &Value) -> Result<(DType, &'a [u8])> {
        let r = parse_pid(pid)?;
        let raw = match self.raw.get(&r.key) {
            Some(b) => *b,
            None => {
                let Some((z, prefix)) = &self.zip else {
                    return Err(err(format!("storage {:?} is not in the file's storage list", r.key)));
                };
                let name = format!("{prefix}data/{}", r.key);
                let b = z
                    .entry_data(&name)
                    .map_err(|e| err(format!("storage {:?}: {e}", r.key)))?;
                self.raw.insert(r.key.clone(), b);
                b
            }
        };
        let e = r.dtype.size() as u64;
        let (start, count) = match r.view {
            None => (0u64, r.numel),
            Some((off, size)) => (off, size),
        };
        let begin = start.checked_mul(e);
        let end = start.checked_add(count).and_then(|x| x.checked_mul(e));
        match (begin, end) {
            (Some(b), Some(end)) if end <= raw.len() as u64 => Ok((r.dtype, &raw[b as usize..end as usize])),
            _ => Err(err(format!(
                "storage {:?}: {} elements of {} bytes (from element {start}) need more than the {} bytes stored",
                r.key,
                count,
                e,
                raw.len()
            ))),
        }
    }
}

fn is_tensor(v: &Value) -> bool {
    matches!(v, Value::Call { module, name, .. } if module == "torch._utils" && matches!(
        name.as_str(),
        "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
    ))
}

fn int_list(v: &Value, what: &str, tname: &str) -> Result<Vec<i64>> {
    let items = v
        .as_seq()
        .ok_or_else(|| err(format!("tensor {tname:?}: {what} is {v:?}, expected a tuple of ints")))?;
    items
        .iter()
        .map(|x| {
            x.as_int().filter(|&i| i >= 0).ok_or_else(|| {
                err(format!(
                    "tensor {tname:?}: {what} has {x:?}, expected a non-negative int"
                ))
            })
        })
        .collect()
}

/// Rebuilds one tensor from a recorded `_rebuild_*` call.
fn build_tensor(v: &Value, tname: &str, ctx: &mut Ctx) -> Result<(Vec<usize>, Vec<f32>)> {
    let Value::Call { name, args, .. } = v else {
        return Err(err(format!("tensor {tname:?}: not a tensor")));
    };
    if name.starts_with("_rebuild_parameter") {
        let inner = args
            .first()
            .filter(|a| is_tensor(a) && !a.is_global("torch._utils", "_rebuild_parameter"))
            .ok_or_else(|| err(format!("tensor {tname:?}: parameter does not wrap a tensor")))?;
        return build_tensor(inner, tname, ctx);
    }
    let min_args = match name.as_str() {
        "_rebuild_tensor" => 4,
        "_rebuild_tensor_v2" => 6,
        _ => 7,
    };
    if args.len() < min_args {
        return Err(err(format!(
            "tensor {tname:?}: {name} has {} arguments, expected at least {min_args}",
            args.len()
        )));
    }
    let Value::Persistent(pid) = &args[0] else {
        return Err(err(format!(
            "tensor {tname:?}: storage is {:?}, expected a persistent id",
            args[0]
        )));
    };
    let (mut dtype, bytes) = ctx.storage(pid).map_err(|e| match e {
        IoError::Torch(m) => err(format!("tensor {tname:?}: {m}")),
        other => other,
    })?;
    if name == "_rebuild_tensor_v3" {
        dtype =
            storage_dtype(&args[6]).ok_or_else(|| err(format!("tensor {tname:?}: unsupported dtype {:?}", args[6])))?;
    }
    let offset = args[1].as_int().filter(|&i| i >= 0).ok_or_else(|| {
        err(format!(
            "tensor {tname:?}: storage offset {:?} is not a non-negative int",
            args[1]
        ))
    })?;
    let size = int_list(&args[2], "size", tname)?;
    let stride = int_list(&args[3], "stride", tname)?;
    if size.len() != stride.len() {
        return Err(err(format!(
            "tensor {tname:?}: size {size:?} and stride {stride:?} have different lengths"
        )));
    }
    let le = ctx.little_endian;
    materialise(tname, dtype, bytes, le, offset as u64, &size, &stride, &mut ctx.budget)
}

#[allow(clippy::too_many_arguments)]
fn materialise(
    tname: &str,
    dtype: DType,
    bytes: &[u8],
    le: bool,
    offset: u64,
    size: &[i64],
    stride: &[i64],
    budget: &mut usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let e = dtype.size();
    let storage_numel = (bytes.len() / e) as u64;
    let too_big = || err(format!("tensor {tname:?}: size {size:?} has too many elements"));
    let mut shape = Vec::with_capacity(size.len());
    let mut numel: u64 = 1;
    for &s in size {
        shape.push(usize::try_from(s).map_err(|_| too_big())?);
        numel = numel.checked_mul(s as u64).ok_or_else(too_big)?;
    }
    if numel == 0 {
        return Ok((shape, Vec::new()));
    }
    let mut last = offset;
    for (&s, &st) in size.iter().zip(stride) {
        last = (s as u64 - 1)
            .checked_mul(st as u64)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(too_big)?;
    }
    if last >= storage_numel {
        return Err(err(format!(
            "tensor {tname:?}: size {size:?}, stride {stride:?} and offset {offset} reach element {last}, but the storage holds {storage_numel}"
        )));
    }
    if numel > *budget as u64 {
        return Err(err(format!(
            "tensor {tname:?}: {numel} elements exceed what this {}-byte input can hold",
            bytes.len()
        )));
    }
    *budget -= numel as usize;
    let numel = numel as usize;
    let mut out = Vec::with_capacity(numel);
    // Contiguous (row-major) layout: one slice.
    let mut expect = 1i64;
    let mut contiguous = true;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expect {
            contiguous = false;
            break;
        }
        expect = expect.saturating_mul(s);
    }
    if contiguous {
        let b = offset as usize * e;
        dtype.decode_into(&bytes[b..b + numel * e], le, &mut out);
        return Ok((shape, out));
    }
    let mut idx = vec![0usize; shape.len()];
    let strides: Vec<usize> = stride.iter().map(|&s| s as usize).collect();
    let mut pos = offset as usize;
    for _ in 0..numel {
        dtype.decode_into(&bytes[pos * e..pos * e + e], le, &mut out);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            pos += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            pos -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
    Ok((shape, out))
}

fn contains_tensor(v: &Value) -> bool {
    match v {
        _ if is_tensor(v) => true,
        Value::Dict(pairs) => pairs.iter().any(|(_, x)| contains_tensor(x)),
        Value::List(xs) | Value::Tuple(xs) => xs.iter().any(contains_tensor),
        _ => false,
    }
}

fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        other => format!("{other:?}"),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk(v: &Value, name: &str, ctx: &mut Ctx, out: &mut Vec<NamedTensor>) -> Result<()> {
    if is_tensor(v) {
        let (shape, data) = build_tensor(v, name, ctx)?;
        out.push(NamedTensor {
            name: name.to_string(),
            shape,
            data,
        });
        return Ok(());
    }
    match v {
        Value::Dict(pairs) => {
            for (k, x) in pairs.iter() {
                walk(x, &join(name, &key_name(k)), ctx, out)?;
            }
        }
        Value::List(xs) | Value::Tuple(xs) => {
            for (i, x) in xs.iter().enumerate() {
                walk(x, &join(name, &i.to_string()), ctx, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// Turns the unpickled main object into named tensors (see [`read_torch`]).
fn flatten(obj: &Value, ctx: &mut Ctx) -> Result<TensorFile> {
    let mut root = obj;
    let mut metadata = BTreeMap::new();
    if let Value::Dict(pairs) = obj {
        for key in ["state_dict", "model", "net"] {
            if let Some(sub) = obj
                .get(key)
                .filter(|s| matches!(s, Value::Dict(_)) && contains_tensor(s))
            {
                root = sub;
                break;
            }
        }
        for (k, v) in pairs.iter() {
            if let (Some(k), Some(s)) = (k.as_str(), scalar_string(v)) {
                metadata.insert(k.to_string(), s);
            }
        }
    }
    let mut tensors = Vec::new();
    walk(root, "", ctx, &mut tensors)?;
    let mut seen = std::collections::HashSet::new();
    for t in &tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(err(format!("two tensors are both named {:?}", t.name)));
        }
    }
    Ok(TensorFile { tensors, metadata })
}

fn read_zip(bytes: &[u8]) -> Result<TensorFile> {
    let z = ZipArchive::new(bytes)?;
    let pkls: Vec<&str> = z
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| *n == "data.pkl" || (n.ends_with("/data.pkl") && n.matches('/').count() == 1))
        .collect();
    let pkl_name = match pkls.as_slice() {
        [one] => one.to_string(),
        [] => {
            return Err(err("zip archive has no <prefix>/data.pkl: not a PyTorch checkpoint"));
        }
        many => {
            return Err(err(format!("zip archive has several data.pkl entries: {many:?}")));
        }
    };
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();
    let mut ctx = Ctx::new(bytes.len());
    if z.entry(&format!("{prefix}byteorder")).is_some() {
        let order = z.entry_data(&format!("{prefix}byteorder"))?;
        ctx.little_endian = match order.trim_ascii() {
            b"little" => true,
            b"big" => false,
            other => {
                return Err(err(format!(
                    "byteorder is {:?}, expected \"little\" or \"big\"",
                    String::from_utf8_lossy(other)
                )));
            }
        };
    }
    let pkl = z.entry_data(&pkl_name)?;
    let (obj, _) = unpickle(pkl)?;
    ctx.zip = Some((z, prefix));
    flatten(&obj, &mut ctx)
}

/// Collects storage key -> dtype from all persistent ids in `v`.
fn collect_pids(v: &Value, out: &mut HashMap<String, DType>) -> Result<()> {
    match v {
        Value::Persistent(pid) => {
            let r = parse_pid(pid)?;
            if out.insert(r.key.clone(), r.dtype).is_some_and(|old| old != r.dtype) {
                return Err(err(format!("storage {:?} is used with two different types", r.key)));
            }
        }
        Value::Dict(pairs) => {
            for (k, x) in pairs.iter() {
                collect_pids(k, out)?;
                collect_pids(x, out)?;
            }
        }
        Value::List(xs) | Value::Tuple(xs) => {
            for x in xs.iter() {
                collect_pids(x, out)?;
            }
        }
        Value::Call { args, state, .. } => {
            for x in args.iter() {
                collect_pids(x, out)?;
            }
            if let Some(s) = state {
                collect_pids(s, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn read_legacy(bytes: &[u8]) -> Result<TensorFile> {
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<Value> {
        let (v, n) = unpickle(&bytes[pos..]).map_err(|e| match e {
            IoError::Pickle(m) => IoError::Pickle(format!("legacy checkpoint, {what} (at byte {pos}): {m}")),
            other => other,
        })?;
        pos += n;
        Ok(v)
    };
    let magic = next("magic number")?;
    if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(err(format!(
            "a pickle stream but not a PyTorch checkpoint: it starts with {}, not torch.save's magic \
             number 0x1950a86a20f9469cfc6c (save the weights with torch.save(model.state_dict(), path))",
            magic.kind()
        )));
    }
    let version = next("protocol version")?;
    if version != Value::Int(1001) {
        return Err(err(format!(
            "unsupported legacy protocol version {version:?}, expected 1001"
        )));
    }
    let _sys_info = next("sys_info")?;
    let obj = next("main object")?;
    let keys = next("storage key list")?;
    let keys = keys
        .as_seq()
        .ok_or_else(|| err(format!("storage key list is {keys:?}, expected a list")))?
        .iter()
        .map(|k| key_string(k).ok_or_else(|| err(format!("storage key {k:?} is not a string"))))
        .collect::<Result<Vec<_>>>()?;
    let mut types = HashMap::new();
    collect_pids(&obj, &mut types)?;
    let mut ctx = Ctx::new(bytes.len());
    // Legacy storages are always written little-endian, whatever sys_info says.
    for key in keys {
        let dtype = *types.get(&key).ok_or_else(|| {
            err(format!(
                "storage {key:?} is listed but no tensor uses it, so its type is unknown"
            ))
        })?;
        let rest = &bytes[pos..];
        if rest.len() < 8 {
            return Err(err(format!("storage {key:?}: file ends before its element count")));
        }
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(&rest[..8]);
        let numel = u64::from_le_bytes(n8);
        let avail = rest.len() - 8;
        let nbytes = numel
            .checked_mul(dtype.size() as u64)
            .filter(|&n| n <= avail as u64)
            .ok_or_else(|| {
                err(format!(
                    "storage {key:?}: {numel} elements of {} bytes exceed the {avail} bytes left in the file",
                    dtype.size()
                ))
            })? as usize;
        ctx.raw.insert(key, &rest[8..8 + nbytes]);
        pos += 8 + nbytes;
    }
    flatten(&obj, &mut ctx)
}

/// Reads a PyTorch checkpoint (zip or legacy format) into named f32 tensors.
///
/// The main object may be a (nested) dict of tensors: names are the dotted key paths.
/// When the top-level dict holds `state_dict`, `model` or `net` with tensors, only that
/// sub-dict is returned, with names relative to it; top-level scalars (e.g. `epoch`,
/// `best_prec1`) go into `metadata`. Names are not otherwise changed (no `module.` strip).
pub fn read_torch(bytes: &[u8]) -> Result<TensorFile> {
    if looks_like_zip(bytes) {
        read_zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else {
        Err(err(
            "not a PyTorch checkpoint (neither a zip archive nor a pickle stream)",
        ))
    }
}

/// Removes `prefix` from every tensor name if all names start with it (e.g. `module.`
/// left by `DataParallel`); returns whether it did. An empty file is left unchanged.
pub fn strip_prefix_all(file: &mut TensorFile, prefix: &str) -> bool {
    if file.tensors.is_empty() || !file.tensors.iter().all(|t| t.name.starts_with(prefix)) {
        return false;
    }
    for t in &mut file.tensors {
        t.name.drain(..prefix.len());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::pickle::testutil::Pickler;
    use crate::io::zip::testutil::write_zip;

    /// One tensor to write: storage type, storage key, declared numel, offset, size, stride.
    struct T {
        name: &'static str,
        stype: &'static str,
        key: &'static str,
        numel: i64,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
        param: bool,
    }

    fn t(
        name: &'static str,
        stype: &'static str,
        key: &'static str,
        numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> T {
        T {
            name,
            stype,
            key,
            numel,
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
            param: false,
        }
    }

    /// Writes `_rebuild_tensor_v2(...)` (optionally inside `_rebuild_parameter`) as torch does.
    fn write_tensor(p: &mut Pickler, t: &T, legacy: bool) {
        if t.param {
            p.global("torch._utils", "_rebuild_parameter");
        }
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        p.op(b'(')
            .str("storage")
            .global("torch", t.stype)
            .str(t.key)
            .str("cpu")
            .int(t.numel);
        if legacy {
            p.op(b'N');
        }
        p.op(b't').put();
        p.op(b'Q');
        p.int(t.offset).int_tuple(&t.size).int_tuple(&t.stride).op(0x89);
        p.global("collections", "OrderedDict").op(b')').op(b'R').put();
        p.op(b't').put().op(b'R').put();
        if t.param {
            p.op(0x88);
            p.global("collections", "OrderedDict").op(b')').op(b'R').put();
            p.op(0x87).put().op(b'R').put();
        }
    }

    /// `{'epoch': 7, 'best_prec1': 91.5, 'arch': 'resnet20', 'state_dict': OrderedDict(...),
    /// 'optimizer': {'state': {0: {'momentum_buffer': tensor}}}}`.
    fn write_checkpoint(p: &mut Pickler, ts: &[T], wrap: bool, legacy: bool) {
        if wrap {
            p.empty_dict().op(b'(');
            p.str("epoch").int(7);
            p.str("best_prec1").float(91.5);
            p.str("arch").str("resnet20");
            p.str("state_dict");
        }
        p.global("collections", "OrderedDict").op(b')').op(b'R').put();
        p.op(b'(');
        for x in ts {
            p.str(x.name);
            write_tensor(p, x, legacy);
        }
        p.op(b'u');
        // state_dict._metadata, set by BUILD after the items.
        p.empty_dict().str("_metadata");
        p.global("collections", "OrderedDict").op(b')').op(b'R').put();
        p.str("").empty_dict().str("version").int(1).op(b's').op(b's');
        p.op(b's').op(b'b');
        if wrap {
            p.str("optimizer")
                .empty_dict()
                .str("state")
                .empty_dict()
                .int(0)
                .empty_dict();
            p.str("momentum_buffer");
            write_tensor(p, &t("", "FloatStorage", "0", 8, 0, &[2], &[1]), legacy);
            p.op(b's').op(b's').op(b's');
            p.op(b'u');
        }
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn storages() -> Vec<(&'static str, Vec<u8>)> {
        let s0: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x0000]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        vec![("0", f32s(&s0)), ("1", halves), ("2", 12i64.to_le_bytes().to_vec())]
    }

    fn tensors() -> Vec<T> {
        let mut w = t("conv.weight", "FloatStorage", "0", 8, 0, &[2, 1, 2, 2], &[4, 4, 2, 1]);
        w.param = true;
        vec![
            w,
            t("bn.running_mean", "FloatStorage", "0", 8, 5, &[3], &[1]),
            t("fc.weight_t", "FloatStorage", "0", 8, 0, &[2, 4], &[1, 2]),
            t("fc.bias", "HalfStorage", "1", 4, 0, &[4], &[1]),
            t("bn.num_batches_tracked", "LongStorage", "2", 1, 0, &[], &[]),
            t("empty", "FloatStorage", "0", 8, 0, &[0, 3], &[3, 1]),
        ]
    }

    fn zip_checkpoint(ts: &[T], wrap: bool, stor: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut p = Pickler::new(2);
        write_checkpoint(&mut p, ts, wrap, false);
        let pkl = p.stop();
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            ("archive/data.pkl".into(), pkl),
            ("archive/.format_version".into(), b"1".to_vec()),
            ("archive/.storage_alignment".into(), b"64".to_vec()),
            ("archive/byteorder".into(), b"little".to_vec()),
        ];
        for (k, d) in stor {
            entries.push((format!("archive/data/{k}"), d.clone()));
        }
        entries.push(("archive/version".into(), b"3\n".to_vec()));
        entries.push(("archive/.data/serialization_id".into(), b"1234567890".to_vec()));
        let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        write_zip(&refs, true)
    }

    fn legacy_checkpoint(ts: &[T], wrap: bool, stor: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0x80, 2, 0x8a, 10];
        out.extend_from_slice(&LEGACY_MAGIC);
        out.push(b'.');
        out.extend_from_slice(&[0x80, 2, b'M', 0xe9, 0x03, b'.']);
        let mut p = Pickler::new(2);
        p.empty_dict().str("little_endian").op(0x88).op(b's');
        out.extend(p.stop());
        let mut p = Pickler::new(2);
        write_checkpoint(&mut p, ts, wrap, true);
        out.extend(p.stop());
        let mut p = Pickler::new(2);
        p.op(b']').put();
        p.op(b'(');
        for (k, _) in stor {
            p.str(k);
        }
        p.op(b'e');
        out.extend(p.stop());
        let sizes = [4usize, 2, 8];
        for (i, (_, d)) in stor.iter().enumerate() {
            out.extend_from_slice(&((d.len() / sizes[i]) as u64).to_le_bytes());
            out.extend_from_slice(d);
        }
        out
    }

    fn check_content(f: &TensorFile, wrap: bool) {
        let names: Vec<&str> = f.names().collect();
        assert_eq!(
            names,
            [
                "conv.weight",
                "bn.running_mean",
                "fc.weight_t",
                "fc.bias",
                "bn.num_batches_tracked",
                "empty"
            ]
        );
        let w = f.get("conv.weight").unwrap();
        assert_eq!(w.shape, vec![2, 1, 2, 2]);
        assert_eq!(w.data, (0..8).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(f.get("bn.running_mean").unwrap().data, vec![5.0, 6.0, 7.0]);
        // Transposed view: element [i][j] = storage[i + 2j].
        assert_eq!(
            f.get("fc.weight_t").unwrap().data,
            vec![0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
        );
        assert_eq!(f.get("fc.bias").unwrap().data, vec![1.0, -2.0, 0.5, 0.0]);
        let n = f.get("bn.num_batches_tracked").unwrap();
        assert_eq!((n.shape.len(), n.data.clone()), (0, vec![12.0]));
        assert_eq!(f.get("empty").unwrap().shape, vec![0, 3]);
        if wrap {
            assert_eq!(f.metadata.get("epoch").map(String::as_str), Some("7"));
            assert_eq!(f.metadata.get("best_prec1").map(String::as_str), Some("91.5"));
            assert_eq!(f.metadata.get("arch").map(String::as_str), Some("resnet20"));
        }
    }

    /// Writes the committed seed corpus of the fuzz targets (`fuzz/seeds/<target>/`):
    /// small files made here, none taken from elsewhere. Run by hand after a format
    /// change: `FUZZ_SEEDS=fuzz/seeds cargo test -p resnet-core --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        use crate::classifier::{default_classes, Classifier};
        use crate::data::augment::Normalization;
        use crate::data::tar::tests::{gzip, write_tar};
        use crate::model::ResNetConfig;
        let root = std::path::PathBuf::from(std::env::var("FUZZ_SEEDS").expect("FUZZ_SEEDS: the seed folder"));
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        // A tiny network: its safetensors file is a few kilobytes.
        let mut config = ResNetConfig::named("resnet8").unwrap().with_classes(2);
        config.stem_width = 2;
        config.stage_blocks = vec![1, 1];
        config.stage_widths = vec![2, 4];
        config.input_size = 8;
        let tiny = |norm| {
            Classifier::new(
                crate::Params::new(config.clone(), 1).unwrap(),
                default_classes(2),
                norm,
                Default::default(),
            )
            .to_safetensors()
            .unwrap()
        };
        let per_channel = Normalization::PerChannel {
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        let st = tiny(per_channel);
        put("safetensors", "tiny-model.safetensors", &st);
        let pixel = tiny(Normalization::PerPixelMean {
            mean: vec![0.5; 3 * 8 * 8],
        });
        put("weight_metadata", "per-channel.safetensors", &st);
        put("weight_metadata", "per-pixel.safetensors", &pixel);
        for wrap in [false, true] {
            put(
                "torch_zip",
                &format!("checkpoint-{wrap}.pt"),
                &zip_checkpoint(&tensors(), wrap, &storages()),
            );
            put(
                "torch_legacy",
                &format!("checkpoint-{wrap}.th"),
                &legacy_checkpoint(&tensors(), wrap, &storages()),
            );
        }
        let mut p = Pickler::new(2);
        write_checkpoint(&mut p, &tensors(), true, false);
        put("pickle", "state-dict.pkl", &p.stop());
        // CIFAR: two records, a meta file, and archives of them.
        let record = |label: u8| -> Vec<u8> {
            let mut r = vec![label];
            r.extend((0..3072).map(|i| (i * 7 % 256) as u8));
            r
        };
        let batch: Vec<u8> = [record(1), record(9)].concat();
        put("cifar_binary", "two-records.bin", &batch);
        let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
        let mut files: Vec<(String, Vec<u8>)> = (1..=5)
            .map(|k| (format!("cifar-10-batches-bin/data_batch_{k}.bin"), record(k as u8)))
            .collect();
        files.push(("cifar-10-batches-bin/test_batch.bin".into(), batch.clone()));
        files.push(("cifar-10-batches-bin/batches.meta.txt".into(), meta.to_vec()));
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let tar = write_tar(&refs);
        put("cifar_tar", "cifar.tar", &tar);
        put("cifar_tar", "cifar.tar.gz", &gzip(&tar));
        // Images: a PNG and a JPEG of a few pixels.
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 17 % 256) as u8).collect();
        let img = ::image::RgbImage::from_raw(5, 3, rgb).unwrap();
        for (name, format) in [
            ("tiny.png", ::image::ImageFormat::Png),
            ("tiny.jpg", ::image::ImageFormat::Jpeg),
        ] {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, format).unwrap();
            put("image", name, &out.into_inner());
        }
    }

    #[test]
    fn zip_format_round_trip() {
        for wrap in [false, true] {
            let b = zip_checkpoint(&tensors(), wrap, &storages());
            assert_eq!(crate::io::detect_format(&b), crate::io::Format::TorchZip);
            let f = read_torch(&b).unwrap();
            check_content(&f, wrap);
        }
    }

    #[test]
    fn legacy_format_round_trip() {
        for wrap in [false, true] {
            let b = legacy_checkpoint(&tensors(), wrap, &storages());
            assert_eq!(crate::io::detect_format(&b), crate::io::Format::TorchLegacy);
            let f = crate::io::read_weights(&b).unwrap();
            check_content(&f, wrap);
        }
    }

    #[test]
    fn all_tensors_without_state_dict() {
        // A dict with no state_dict key: every tensor, with dotted names.
        let mut p = Pickler::new(2);
        p.empty_dict().str("weights").empty_dict().str("a");
        write_tensor(&mut p, &t("", "FloatStorage", "0", 8, 0, &[8], &[1]), false);
        p.op(b's').str("step").int(3).op(b's').op(b's');
        let pkl = p.stop();
        let d = f32s(&[1.0; 8]);
        let z = write_zip(&[("ck/data.pkl", &pkl), ("ck/data/0", &d)], false);
        let f = read_torch(&z).unwrap();
        assert_eq!(f.names().collect::<Vec<_>>(), ["weights.a"]);
        assert!(f.metadata.is_empty());
    }

    #[test]
    fn big_endian_zip() {
        let mut p = Pickler::new(2);
        write_tensor(&mut p, &t("", "FloatStorage", "0", 2, 0, &[2], &[1]), false);
        let pkl = p.stop();
        let d: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        let z = write_zip(
            &[("x/data.pkl", &pkl), ("x/byteorder", b"big"), ("x/data/0", &d)],
            false,
        );
        let f = read_torch(&z).unwrap();
        assert_eq!(f.tensors[0].data, vec![1.5, -2.0]);
        assert_eq!(f.tensors[0].name, "");
    }

    #[test]
    fn strip_prefix() {
        let mut f = TensorFile::default();
        assert!(!strip_prefix_all(&mut f, "module."));
        f.tensors.push(NamedTensor::new("module.a", vec![], vec![1.0]));
        f.tensors.push(NamedTensor::new("module.b.c", vec![], vec![1.0]));
        assert!(strip_prefix_all(&mut f, "module."));
        assert_eq!(f.names().collect::<Vec<_>>(), ["a", "b.c"]);
        assert!(!strip_prefix_all(&mut f, "b."));
    }

    fn expect_err(b: &[u8], needle: &str) {
        let e = read_torch(b).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    }

    #[test]
    fn hostile_tensors() {
        for legacy in [false, true] {
            let build = |ts: &[T]| {
                if legacy {
                    legacy_checkpoint(ts, true, &storages()[..1])
                } else {
                    zip_checkpoint(ts, true, &storages())
                }
            };
            // Size/stride/offset reaching past the storage.
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 0, &[3, 3], &[3, 1])]),
                "reach element 8",
            );
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 6, &[3], &[1])]),
                "reach element 8",
            );
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 0, &[2, 2], &[1, 7])]),
                "reach element 8",
            );
            // Overflowing size product and stride.
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 0, &[1 << 40, 1 << 40], &[1, 1])]),
                "too many",
            );
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 0, &[4, 2], &[i64::MAX, 1])]),
                "too many",
            );
            // Stride 0 broadcasting a huge tensor out of a tiny storage: refused before allocating.
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 0, &[1 << 30], &[0])]),
                "exceed what this",
            );
            // Negative values.
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, 0, &[2], &[-1])]),
                "non-negative",
            );
            expect_err(
                &build(&[t("a", "FloatStorage", "0", 8, -1, &[2], &[1])]),
                "non-negative",
            );
        }
        // Zip: declared numel larger than the storage file.
        expect_err(
            &zip_checkpoint(&[t("a", "FloatStorage", "0", 9, 0, &[9], &[1])], true, &storages()),
            "need more than the 32 bytes",
        );
        expect_err(
            &zip_checkpoint(
                &[t("a", "FloatStorage", "0", i64::MAX, 0, &[1], &[1])],
                true,
                &storages(),
            ),
            "need more than",
        );
        expect_err(
            &zip_checkpoint(&[t("a", "FloatStorage", "7", 1, 0, &[1], &[1])], true, &storages()),
            "no entry",
        );
        // Legacy: element count in the data section larger than the file.
        let mut b = legacy_checkpoint(&tensors(), true, &storages());
        let tail = 8 + 32 + 8 + 8 + 8 + 8;
        let at = b.len() - tail;
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        expect_err(&b, "exceed the");
        // Unknown storage type.
        expect_err(
            &zip_checkpoint(&[t("a", "os", "0", 1, 0, &[1], &[1])], true, &storages()),
            "not allowed",
        );
    }

    #[test]
    fn hostile_global_in_data_pkl() {
        let mut p = Pickler::new(2);
        p.empty_dict()
            .str("x")
            .global("posix", "system")
            .str("rm -rf /")
            .op(0x85)
            .op(b'R')
            .op(b's');
        let pkl = p.stop();
        let z = write_zip(&[("archive/data.pkl", &pkl)], false);
        let e = read_torch(&z).unwrap_err();
        assert_eq!(e, IoError::DisallowedGlobal("posix.system".into()));
        let mut l = legacy_checkpoint(&[], false, &[]);
        let main = l.windows(2).rposition(|w| w == [0x80, 2]).unwrap();
        // Replace the key-list pickle with the hostile one.
        l.truncate(main);
        l.extend_from_slice(&pkl);
        assert!(read_torch(&l).is_err());
    }

    #[test]
    fn not_a_checkpoint() {
        assert!(read_torch(b"").is_err());
        assert!(read_torch(b"hello").is_err());
        let z = write_zip(&[("a/b/c.txt", b"x")], false);
        expect_err(&z, "no <prefix>/data.pkl");
        let mut bad = legacy_checkpoint(&[], false, &[]);
        bad[5] ^= 1;
        expect_err(&bad, "magic number");
    }

    fn fuzz(b: &[u8], step: usize) {
        let mut cut = 0;
        while cut < b.len() {
            assert!(read_torch(&b[..cut]).is_err(), "truncated at {cut} parsed");
            cut += step;
        }
        let mut c = b.to_vec();
        for i in (0..c.len()).step_by(step) {
            for bit in 0..8 {
                c[i] ^= 1 << bit;
                if let Ok(f) = read_torch(&c) {
                    assert!(f.total_elements() <= 2 * c.len() + 1024);
                }
                c[i] ^= 1 << bit;
            }
        }
    }

    #[test]
    fn zip_truncation_and_bit_flips_never_panic() {
        fuzz(&zip_checkpoint(&tensors(), true, &storages()), 1);
    }

    #[test]
    fn legacy_truncation_and_bit_flips_never_panic() {
        let b = legacy_checkpoint(&tensors(), true, &storages());
        // Every truncation must fail except none: the last storage is needed.
        fuzz(&b, 1);
    }

    fn shared(file: &str) -> Option<Vec<u8>> {
        let root = std::env::var("RESNET_SHARED")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into());
        let path = format!("{root}/pretrained/cifar10-akamaster/{file}");
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                println!("skipping: cannot read {path}: {e} (set RESNET_SHARED)");
                None
            }
        }
    }

    fn trainable(f: &TensorFile) -> usize {
        f.tensors
            .iter()
            .filter(|t| t.name.ends_with(".weight") || t.name.ends_with(".bias"))
            .map(|t| t.numel())
            .sum()
    }

    #[test]
    fn real_legacy_resnet20() {
        let Some(b) = shared("resnet20-12fca82f.th") else {
            return;
        };
        let f = read_torch(&b).unwrap();
        let shape = |n: &str| f.get(n).map(|t| t.shape.clone());
        assert_eq!(shape("module.conv1.weight"), Some(vec![16, 3, 3, 3]));
        assert_eq!(shape("module.bn1.running_mean"), Some(vec![16]));
        assert_eq!(shape("module.layer1.0.conv1.weight"), Some(vec![16, 16, 3, 3]));
        assert_eq!(shape("module.linear.weight"), Some(vec![10, 64]));
        assert_eq!(shape("module.linear.bias"), Some(vec![10]));
        assert!(f.names().all(|n| n.starts_with("module.")));
        assert_eq!(trainable(&f), 269_722);
        assert!(f.metadata.contains_key("best_prec1"), "{:?}", f.metadata);
        let var = f.get("module.bn1.running_var").unwrap();
        assert!(var.data.iter().all(|&v| v > 0.0 && v.is_finite()));
        let mut g = f.clone();
        assert!(strip_prefix_all(&mut g, "module."));
        assert_eq!(
            g.get("conv1.weight").unwrap().data,
            f.get("module.conv1.weight").unwrap().data
        );
    }

    #[test]
    fn real_legacy_resnet32() {
        let Some(b) = shared("resnet32-d509ac18.th") else {
            return;
        };
        let f = read_torch(&b).unwrap();
        assert_eq!(f.get("module.layer3.4.conv2.weight").unwrap().shape, vec![64, 64, 3, 3]);
        assert_eq!(f.get("module.linear.weight").unwrap().shape, vec![10, 64]);
        assert!(trainable(&f) > 269_722);
    }

    #[test]
    fn real_legacy_corruption_never_panics() {
        let Some(b) = shared("resnet20-12fca82f.th") else {
            return;
        };
        for i in 0..200 {
            let cut = (b.len() as u64 * i / 200) as usize;
            assert!(read_torch(&b[..cut]).is_err(), "cut {cut}");
        }
        // Bit flips across the pickles (the first ~14 KB) and in a few data-section headers.
        let mut c = b.clone();
        for i in (0..14_100).step_by(37).chain([14_063, 14_064, 14_070]) {
            c[i] ^= 0x40;
            if let Ok(f) = read_torch(&c) {
                assert!(f.total_elements() <= 2 * c.len() + 1024);
            }
            c[i] ^= 0x40;
        }
    }
}
