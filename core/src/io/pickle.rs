//! A restricted unpickler: enough of the pickle VM (protocols 0-5) to read PyTorch
//! checkpoints, and nothing that can run code.
//!
//! Globals are checked against an allow-list of tensor-rebuilding names; REDUCE, NEWOBJ and
//! BUILD only record what would have been called ([`Value::Call`]). Every length read from
//! the stream is checked against the bytes left, nesting depth, the stack and the MARKs
//! are capped ([`MAX_DEPTH`], [`MAX_STACK`]), and the memory the VM allocates beyond its
//! stack (strings and byte buffers, container slots, memo entries) is charged, in bytes,
//! against a budget of [`BUDGET_PER_BYTE`] bytes per input byte plus [`BUDGET_BASE`].
//! Charges are never refunded. Containers are shared (`Rc`) rather than copied by memo
//! gets, and the tree they span is bounded by [`TREE_PER_BYTE`] so that walking the
//! result stays linear in the input. Peak memory: at most twice the budget (a vector may
//! hold twice its length) plus the stack (under 6 MiB), i.e. at most
//! 80 x input + 8 MiB. A PyTorch state dict (protocol 2) uses about 23 x its pickle.

use std::collections::HashMap;
use std::rc::Rc;

use crate::io::{IoError, Result};

/// A value produced by the unpickler.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A larger integer, as pickle's little-endian two's-complement bytes (LONG1/LONG4).
    BigInt(Vec<u8>),
    /// Python `float`.
    Float(f64),
    /// Python `str`.
    Str(String),
    /// Python `bytes`/`bytearray`.
    Bytes(Vec<u8>),
    /// Python `list` (sets and frozensets are read as lists too). Containers are shared
    /// (`Rc`) so that memo puts and gets copy no elements; a write after a memo put
    /// copies the slots (copy on write), as the memo keeps the value it was given.
    List(Rc<Vec<Value>>),
    /// Python `tuple`.
    Tuple(Rc<Vec<Value>>),
    /// Python `dict` or `collections.OrderedDict`, as ordered pairs.
    Dict(Rc<Vec<(Value, Value)>>),
    /// A reference to an allow-listed global, e.g. `torch.FloatStorage`.
    Global {
        /// Module path, e.g. `torch._utils`.
        module: String,
        /// Attribute name, e.g. `_rebuild_tensor_v2`.
        name: String,
    },
    /// A recorded (never executed) call of an allow-listed global, from REDUCE or NEWOBJ,
    /// with the state later given to it by BUILD.
    Call {
        /// Module of the called global.
        module: String,
        /// Name of the called global.
        name: String,
        /// Positional arguments.
        args: Rc<Vec<Value>>,
        /// State set by BUILD, if any.
        state: Option<Box<Value>>,
    },
    /// A persistent id (BINPERSID/PERSID); PyTorch uses these to refer to storages.
    Persistent(Box<Value>),
}

impl Value {
    /// The string, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `Int` (or a `Bool`, as in Python).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// Items of a `Tuple` or `List`.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// True if this is the global or a call of the global `module.name`.
    pub fn is_global(&self, m: &str, n: &str) -> bool {
        match self {
            Value::Global { module, name } | Value::Call { module, name, .. } => module == m && name == n,
            _ => false,
        }
    }

    /// Value for a string key, if this is a `Dict`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global { .. } => "global",
            Value::Call { .. } => "object",
            Value::Persistent(_) => "persistent id",
        }
    }
}

/// True if `module.name` may appear in a GLOBAL: only what rebuilds tensors, plus a few
/// inert types seen in real checkpoints (argparse.Namespace, numpy scalars).
pub fn is_allowed_global(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor"
                | "_rebuild_tensor_v2"
                | "_rebuild_tensor_v3"
                | "_rebuild_parameter"
                | "_rebuild_parameter_with_state"
        ),
        "torch" => {
            matches!(
                name,
                "FloatStorage"
                    | "HalfStorage"
                    | "DoubleStorage"
                    | "BFloat16Storage"
                    | "LongStorage"
                    | "IntStorage"
                    | "ShortStorage"
                    | "CharStorage"
                    | "ByteStorage"
                    | "BoolStorage"
                    | "UntypedStorage"
            ) || crate::io::torch::dtype_from_name(name).is_some()
        }
        "argparse" => name == "Namespace",
        "numpy.core.multiarray" | "numpy._core.multiarray" => name == "scalar",
        "numpy" => name == "dtype",
        "_codecs" => name == "encode",
        _ => false,
    }
}

/// Maximum nesting of containers and calls.
pub const MAX_DEPTH: u32 = 100;

/// Maximum number of values on the VM's stack at once (CPython's pickler puts at most
/// 1000 list or dict items there before an APPENDS or SETITEMS).
pub const MAX_STACK: usize = 1 << 16;

/// Bytes the VM may allocate per byte of input. PyTorch state dicts need about 23
/// (CPython memoizes nearly every value: a memo entry costs about 180 bytes for a
/// 2-byte BINPUT); a stream of one-byte values appended to a list needs over 80 and
/// is refused.
pub const BUDGET_PER_BYTE: usize = 40;

/// Bytes of values any input may build, however short.
pub const BUDGET_BASE: usize = 1 << 20;

/// Values that memo gets and DUPs may add to the tree a reader walks, per input byte
/// (each adds the whole subtree it refers to; a walk over the result must stay linear
/// in the input, so copy bombs such as `l = [l, l]` repeated are refused).
pub const TREE_PER_BYTE: usize = 4;

struct Item {
    v: Value,
    depth: u32,
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: HashMap<u32, Item>,
    /// Bytes of values still allowed (see [`BUDGET_PER_BYTE`]).
    budget: usize,
    /// Tree values that memo gets may still add (see [`TREE_PER_BYTE`]).
    tree_budget: usize,
}

/// Bytes that a clone of `v` allocates beyond its own slot: its strings and byte buffers
/// (containers are shared, not copied).
fn clone_bytes(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) | Value::BigInt(b) => b.len(),
        Value::Global { module, name } | Value::Call { module, name, .. } => module.len() + name.len(),
        Value::Persistent(x) => std::mem::size_of::<Value>().saturating_add(clone_bytes(x)),
        _ => 0,
    }
}

/// Bytes that a newly built `v` takes beyond its own slot: [`clone_bytes`] plus its
/// containers' slots.
fn new_bytes(v: &Value) -> usize {
    let slot = std::mem::size_of::<Value>();
    let slots = match v {
        Value::List(xs) | Value::Tuple(xs) => xs.len().saturating_mul(slot),
        Value::Dict(ps) => ps.len().saturating_mul(2 * slot),
        Value::Call { args, state, .. } => {
            args.len()
                .saturating_mul(slot)
                .saturating_add(if state.is_some() { slot } else { 0 })
        }
        _ => 0,
    };
    slots.saturating_add(clone_bytes(v))
}

/// Values in the tree `v` spans when shared containers are counted each time they
/// appear (what a walk over it visits), counted up to `limit` (then saturates).
fn tree_size(v: &Value, limit: usize) -> usize {
    let mut n = 1usize;
    let mut add = |x: &Value| {
        if n <= limit {
            n = n.saturating_add(tree_size(x, limit - n.min(limit)));
        }
    };
    match v {
        Value::List(xs) | Value::Tuple(xs) => xs.iter().for_each(&mut add),
        Value::Dict(ps) => ps.iter().for_each(|(k, x)| {
            add(k);
            add(x);
        }),
        Value::Call { args, state, .. } => {
            args.iter().for_each(&mut add);
            if let Some(s) = state {
                add(s);
            }
        }
        Value::Persistent(x) => add(x),
        _ => {}
    }
    n
}

impl<'a> Vm<'a> {
    fn fail<T>(&self, msg: impl std::fmt::Display) -> Result<T> {
        Err(IoError::Pickle(format!("{msg} (opcode at byte {})", self.op_pos)))
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let rem = self.data.len() - self.pos;
        if n > rem as u64 {
            return self.fail(format!("{what} needs {n} bytes but only {rem} are left"));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "argument")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2, "argument")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4, "argument")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8, "argument")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn line(&mut self, what: &str) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.fail(format!("{what}: missing end of line"));
        };
        self.pos += n + 1;
        match std::str::from_utf8(&rest[..n]) {
            Ok(s) => Ok(s.strip_suffix('\r').unwrap_or(s)),
            Err(_) => self.fail(format!("{what}: not valid UTF-8")),
        }
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    /// Charges `bytes` of new values against the budget.
    fn charge(&mut self, bytes: usize) -> Result<()> {
        if bytes > self.budget {
            return self.fail(format!(
                "the pickle builds more values than {BUDGET_PER_BYTE} bytes per input byte \
                 (plus {BUDGET_BASE}) allow: the size budget for this input is exhausted (hostile pickle?)"
            ));
        }
        self.budget -= bytes;
        Ok(())
    }

    /// Pushes a value built by this opcode, charging its slot, strings and container slots.
    fn push(&mut self, v: Value, depth: u32) -> Result<()> {
        let bytes = new_bytes(&v);
        self.push_charged(v, depth, bytes)
    }

    /// Pushes a copy of a value (memo get, DUP): its containers are shared, but a walk
    /// over the result visits them again, which the tree budget bounds.
    fn push_copy(&mut self, v: Value, depth: u32) -> Result<()> {
        let n = tree_size(&v, self.tree_budget);
        if n > self.tree_budget {
            return self.fail(format!(
                "memo copies exceed the size budget for this input ({TREE_PER_BYTE} values per input byte; hostile pickle?)"
            ));
        }
        self.tree_budget -= n;
        let bytes = clone_bytes(&v);
        self.push_charged(v, depth, bytes)
    }

    fn push_charged(&mut self, v: Value, depth: u32, bytes: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.fail(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        if self.stack.len() >= MAX_STACK {
            return self.fail(format!("more than {MAX_STACK} values on the stack"));
        }
        // The stack's own slots are bounded by MAX_STACK, not charged.
        self.charge(bytes)?;
        self.stack.push(Item { v, depth });
        Ok(())
    }

    fn push_leaf(&mut self, v: Value) -> Result<()> {
        self.push(v, 0)
    }

    fn pop(&mut self) -> Result<Item> {
        if self.stack.len() <= self.floor() {
            return self.fail("stack underflow");
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }

    fn top_mut(&mut self) -> Result<&mut Item> {
        if self.stack.len() <= self.floor() {
            return self.fail("stack underflow (no object to modify)");
        }
        Ok(self.stack.last_mut().expect("checked non-empty"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let Some(start) = self.marks.pop() else {
            return self.fail("no MARK on the stack");
        };
        Ok(self.stack.split_off(start))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        if self.stack.len() <= self.floor() {
            return self.fail("memo put with an empty stack");
        }
        let top = self.stack.last().expect("checked non-empty");
        // A memo entry, with the hash table's spare capacity.
        let bytes = (2 * std::mem::size_of::<(u32, Item)>()).saturating_add(clone_bytes(&top.v));
        self.charge(bytes)?;
        let top = self.stack.last().expect("checked non-empty");
        let item = Item {
            v: top.v.clone(),
            depth: top.depth,
        };
        self.memo.insert(idx, item);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let Some(src) = self.memo.get(&idx) else {
            return self.fail(format!("memo index {idx} was never stored"));
        };
        // Cheap: containers are shared; push_copy charges before anything else grows.
        let (v, depth) = (src.v.clone(), src.depth);
        self.push_copy(v, depth)
    }

    /// Elements of the container on top that a write would copy first (it is shared
    /// with the memo or another value), 0 when the write needs no copy.
    fn shared_len(&mut self) -> Result<usize> {
        Ok(match &self.top_mut()?.v {
            Value::List(l) if Rc::strong_count(l) > 1 => l.len(),
            Value::Dict(d) if Rc::strong_count(d) > 1 => d.len(),
            _ => 0,
        })
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        if !is_allowed_global(module, name) {
            return Err(IoError::DisallowedGlobal(format!("{module}.{name}")));
        }
        self.push_leaf(Value::Global {
            module: module.to_string(),
            name: name.to_string(),
        })
    }

    fn text_str(&mut self, raw: &'a [u8]) -> Result<()> {
        match std::str::from_utf8(raw) {
            Ok(s) => self.push_leaf(Value::Str(s.to_string())),
            Err(_) => self.push_leaf(Value::Bytes(raw.to_vec())),
        }
    }

    fn unicode(&mut self, raw: &'a [u8]) -> Result<()> {
        match std::str::from_utf8(raw) {
            Ok(s) => self.push_leaf(Value::Str(s.to_string())),
            Err(_) => self.fail("string is not valid UTF-8"),
        }
    }

    fn long(&mut self, raw: &[u8]) -> Result<()> {
        if raw.is_empty() {
            return self.push_leaf(Value::Int(0));
        }
        if raw.len() <= 8 {
            let fill = if raw[raw.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
            let mut a = [fill; 8];
            a[..raw.len()].copy_from_slice(raw);
            return self.push_leaf(Value::Int(i64::from_le_bytes(a)));
        }
        self.push_leaf(Value::BigInt(raw.to_vec()))
    }

    /// Records `module.name(*args)`, evaluating the few pure constructors we understand.
    fn call(&mut self, func: Item, args: Item) -> Result<()> {
        let Value::Global { module, name } = func.v else {
            return self.fail(format!("REDUCE/NEWOBJ on a {} instead of a global", func.v.kind()));
        };
        let Value::Tuple(args_v) = args.v else {
            return self.fail(format!(
                "REDUCE/NEWOBJ arguments for {module}.{name} are a {} instead of a tuple",
                args.v.kind()
            ));
        };
        let depth = func.depth.max(args.depth) + 1;
        let v = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => {
                let mut pairs = Vec::new();
                if let Some(init) = args_v.first() {
                    let Some(items) = init.as_seq() else {
                        return self.fail("OrderedDict argument is not a list of pairs");
                    };
                    let strings: usize = items.iter().map(clone_bytes).fold(0, usize::saturating_add);
                    self.charge(strings)?;
                    for p in items {
                        match p.as_seq() {
                            Some([k, v]) => pairs.push((k.clone(), v.clone())),
                            _ => return self.fail("OrderedDict item is not a pair"),
                        }
                    }
                }
                Value::Dict(Rc::new(pairs))
            }
            ("_codecs", "encode") => match args_v.as_slice() {
                [Value::Str(s), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                    self.charge(s.len())?;
                    let mut out = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        match u8::try_from(c as u32) {
                            Ok(b) => out.push(b),
                            Err(_) => {
                                return self.fail("_codecs.encode: character outside latin-1");
                            }
                        }
                    }
                    Value::Bytes(out)
                }
                [Value::Str(s), Value::Str(enc)] if enc == "utf-8" || enc == "utf8" => {
                    self.charge(s.len())?;
                    Value::Bytes(s.as_bytes().to_vec())
                }
                _ => {
                    return self.fail("_codecs.encode: only (str, 'latin1') arguments are supported");
                }
            },
            (m, "scalar") if m.starts_with("numpy") => match decode_numpy_scalar(&args_v) {
                Some(v) => v,
                None => Value::Call {
                    module,
                    name,
                    args: args_v,
                    state: None,
                },
            },
            _ => Value::Call {
                module,
                name,
                args: args_v,
                state: None,
            },
        };
        self.push(v, depth)
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return self.fail("stream ends before STOP");
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.fail(format!("unsupported pickle protocol {p} (expected 0-5)"));
                    }
                }
                0x95 => {
                    let n = self.u64()?;
                    let rem = self.data.len() - self.pos;
                    if n > rem as u64 {
                        return self.fail(format!("FRAME of {n} bytes but only {rem} are left"));
                    }
                }
                b'.' => {
                    let it = self.pop()?;
                    return Ok(it.v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return self.fail(format!("more than {MAX_STACK} MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.pop()?;
                    let (v, depth) = (top.v.clone(), top.depth);
                    self.stack.push(top);
                    self.push_copy(v, depth)?;
                }
                b'}' => self.push_leaf(Value::Dict(Rc::default()))?,
                b']' => self.push_leaf(Value::List(Rc::default()))?,
                b')' => self.push_leaf(Value::Tuple(Rc::default()))?,
                0x8f => self.push_leaf(Value::List(Rc::default()))?,
                b'N' => self.push_leaf(Value::None)?,
                0x88 => self.push_leaf(Value::Bool(true))?,
                0x89 => self.push_leaf(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push_leaf(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_leaf(Value::Int(v as i64))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_leaf(Value::Int(v as i64))?
                }
                0x8a => {
                    let n = self.u8()?;
                    let raw = self.take(n as u64, "LONG1")?;
                    self.long(raw)?
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return self.fail("LONG4 with negative length");
                    }
                    let raw = self.take(n as u64, "LONG4")?;
                    self.long(raw)?
                }
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push_leaf(Value::Float(f64::from_be_bytes(a)))?
                }
                b'I' => {
                    let l = self.line("INT")?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => match l.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.fail(format!("INT: bad literal {l:?}")),
                        },
                    };
                    self.push_leaf(v)?
                }
                b'L' => {
                    let l = self.line("LONG")?;
                    match l.trim_end_matches('L').parse::<i64>() {
                        Ok(i) => self.push_leaf(Value::Int(i))?,
                        Err(_) => return self.fail(format!("LONG: unsupported literal {l:?}")),
                    }
                }
                b'F' => {
                    let l = self.line("FLOAT")?;
                    match l.parse::<f64>() {
                        Ok(f) => self.push_leaf(Value::Float(f))?,
                        Err(_) => return self.fail(format!("FLOAT: bad literal {l:?}")),
                    }
                }
                b'X' => {
                    let n = self.u32()?;
                    let raw = self.take(n as u64, "BINUNICODE")?;
                    self.unicode(raw)?
                }
                0x8c => {
                    let n = self.u8()?;
                    let raw = self.take(n as u64, "SHORT_BINUNICODE")?;
                    self.unicode(raw)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let raw = self.take(n, "BINUNICODE8")?;
                    self.unicode(raw)?
                }
                b'T' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return self.fail("BINSTRING with negative length");
                    }
                    let raw = self.take(n as u64, "BINSTRING")?;
                    self.text_str(raw)?
                }
                b'U' => {
                    let n = self.u8()?;
                    let raw = self.take(n as u64, "SHORT_BINSTRING")?;
                    self.text_str(raw)?
                }
                b'B' => {
                    let n = self.u32()?;
                    let raw = self.take(n as u64, "BINBYTES")?;
                    self.push_leaf(Value::Bytes(raw.to_vec()))?
                }
                b'C' => {
                    let n = self.u8()?;
                    let raw = self.take(n as u64, "SHORT_BINBYTES")?;
                    self.push_leaf(Value::Bytes(raw.to_vec()))?
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let raw = self.take(n, "BINBYTES8")?;
                    self.push_leaf(Value::Bytes(raw.to_vec()))?
                }
                b't' | 0x91 => {
                    let items = self.pop_mark()?;
                    let d = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
                    let v = Rc::new(items.into_iter().map(|i| i.v).collect());
                    let v = if op == b't' { Value::Tuple(v) } else { Value::List(v) };
                    self.push(v, d)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let d = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
                    self.push(Value::Tuple(Rc::new(items.into_iter().map(|i| i.v).collect())), d)?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let d = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
                    self.push(Value::List(Rc::new(items.into_iter().map(|i| i.v).collect())), d)?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.fail("DICT with an odd number of items");
                    }
                    let d = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k.v, v.v));
                    }
                    self.push(Value::Dict(Rc::new(pairs)), d)?
                }
                b'a' | b'e' | 0x90 => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let d = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
                    let grown = items.len() + self.shared_len()?;
                    self.charge(grown.saturating_mul(std::mem::size_of::<Value>()))?;
                    let op_pos = self.op_pos;
                    let top = self.top_mut()?;
                    top.depth = top.depth.max(d);
                    let depth = top.depth;
                    match &mut top.v {
                        Value::List(l) => Rc::make_mut(l).extend(items.into_iter().map(|i| i.v)),
                        other => {
                            let k = other.kind();
                            return Err(IoError::Pickle(format!("APPEND to a {k} (opcode at byte {op_pos})")));
                        }
                    }
                    if depth > MAX_DEPTH {
                        return self.fail(format!("values nest deeper than {MAX_DEPTH} levels"));
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return self.fail("SETITEMS with an odd number of items");
                    }
                    let d = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
                    let grown = items.len() + 2 * self.shared_len()?;
                    self.charge(grown.saturating_mul(std::mem::size_of::<Value>()))?;
                    let op_pos = self.op_pos;
                    let top = self.top_mut()?;
                    top.depth = top.depth.max(d);
                    let depth = top.depth;
                    match &mut top.v {
                        Value::Dict(pairs) => {
                            let pairs = Rc::make_mut(pairs);
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                match pairs.iter_mut().find(|(pk, _)| *pk == k.v) {
                                    Some(slot) => slot.1 = v.v,
                                    None => pairs.push((k.v, v.v)),
                                }
                            }
                        }
                        other => {
                            let k = other.kind();
                            return Err(IoError::Pickle(format!("SETITEM on a {k} (opcode at byte {op_pos})")));
                        }
                    }
                    if depth > MAX_DEPTH {
                        return self.fail(format!("values nest deeper than {MAX_DEPTH} levels"));
                    }
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i as u32)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'p' => {
                    let l = self.line("PUT")?;
                    match l.parse::<u32>() {
                        Ok(i) => self.memo_put(i)?,
                        Err(_) => return self.fail(format!("PUT: bad index {l:?}")),
                    }
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i as u32)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'g' => {
                    let l = self.line("GET")?;
                    match l.parse::<u32>() {
                        Ok(i) => self.memo_get(i)?,
                        Err(_) => return self.fail(format!("GET: bad index {l:?}")),
                    }
                }
                b'c' => {
                    let m = self.line("GLOBAL module")?;
                    let n = self.line("GLOBAL name")?;
                    self.global(m, n)?
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (m.v, n.v) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return self.fail("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args)?
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args)?
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    if !matches!(&kwargs.v, Value::Dict(p) if p.is_empty()) {
                        return self.fail("NEWOBJ_EX with keyword arguments is not supported");
                    }
                    self.call(cls, args)?
                }
                b'b' => {
                    let state = self.pop()?;
                    self.charge(std::mem::size_of::<Value>())?;
                    let op_pos = self.op_pos;
                    let top = self.top_mut()?;
                    match &mut top.v {
                        Value::Call { state: s, .. } => {
                            top.depth = top.depth.max(state.depth + 1);
                            *s = Some(Box::new(state.v));
                        }
                        // OrderedDict attributes such as `_metadata`: not needed, dropped.
                        Value::Dict(_) => {}
                        other => {
                            let k = other.kind();
                            return Err(IoError::Pickle(format!("BUILD on a {k} (opcode at byte {op_pos})")));
                        }
                    }
                    if top.depth > MAX_DEPTH {
                        return self.fail(format!("values nest deeper than {MAX_DEPTH} levels"));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid.v)), pid.depth + 1)?
                }
                b'P' => {
                    let l = self.line("PERSID")?;
                    self.push(Value::Persistent(Box::new(Value::Str(l.to_string()))), 1)?
                }
                b'i' | b'o' => {
                    return self.fail("INST/OBJ (protocol 0/1 object creation) is not supported");
                }
                0x82..=0x84 => {
                    return self.fail("EXT opcodes (extension registry) are not supported");
                }
                0x97 | 0x98 => return self.fail("out-of-band buffers are not supported"),
                b'S' | b'V' => return self.fail("text STRING/UNICODE opcodes are not supported"),
                other => return self.fail(format!("unknown opcode 0x{other:02x}")),
            }
        }
    }
}

/// Decodes `numpy.core.multiarray.scalar(numpy.dtype(code, ...), bytes)` for common codes.
fn decode_numpy_scalar(args: &[Value]) -> Option<Value> {
    let [dtype, Value::Bytes(raw)] = args else {
        return None;
    };
    let Value::Call {
        module,
        name,
        args: dargs,
        state,
    } = dtype
    else {
        return None;
    };
    if module != "numpy" || name != "dtype" {
        return None;
    }
    let code = dargs.first()?.as_str()?;
    // Byte order from the BUILD state tuple (version, '<' | '>' | '|' | '=', ...).
    let big = matches!(
        state
            .as_deref()
            .and_then(|s| s.as_seq())
            .and_then(|s| s.get(1))
            .and_then(|v| v.as_str()),
        Some(">")
    );
    let mut b = raw.clone();
    if big {
        b.reverse();
    }
    let arr = |n: usize| -> Option<[u8; 8]> {
        if b.len() != n {
            return None;
        }
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&b);
        Some(a)
    };
    Some(match code.trim_start_matches(['<', '>', '=', '|']) {
        "f8" => Value::Float(f64::from_le_bytes(arr(8)?)),
        "f4" => {
            let a = arr(4)?;
            Value::Float(f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64)
        }
        "i8" => Value::Int(i64::from_le_bytes(arr(8)?)),
        "i4" => {
            let a = arr(4)?;
            Value::Int(i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as i64)
        }
        "b1" => Value::Bool(arr(1)?[0] != 0),
        _ => return None,
    })
}

/// Unpickles one object from the start of `data`; returns it and the bytes consumed
/// (up to and including STOP), so that a sequence of pickles can be read.
pub fn unpickle(data: &[u8]) -> Result<(Value, usize)> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: data.len().saturating_mul(BUDGET_PER_BYTE).saturating_add(BUDGET_BASE),
        tree_budget: data.len().saturating_mul(TREE_PER_BYTE).saturating_add(1 << 16),
    };
    let v = vm.run()?;
    Ok((v, vm.pos))
}

/// Test-only pickle writer that emits opcodes the way CPython's pickler does (protocol 2).
#[cfg(test)]
pub(crate) mod testutil {
    use std::collections::HashMap;

    /// Builds a pickle stream opcode by opcode, memoizing like CPython.
    pub(crate) struct Pickler {
        pub(crate) out: Vec<u8>,
        memo: u32,
        globals: HashMap<String, u32>,
    }

    impl Pickler {
        pub(crate) fn new(proto: u8) -> Self {
            Pickler {
                out: vec![0x80, proto],
                memo: 0,
                globals: HashMap::new(),
            }
        }
        pub(crate) fn op(&mut self, b: u8) -> &mut Self {
            self.out.push(b);
            self
        }
        pub(crate) fn put(&mut self) -> &mut Self {
            let i = self.memo;
            if i < 256 {
                self.out.extend_from_slice(&[b'q', i as u8]);
            } else {
                self.out.push(b'r');
                self.out.extend_from_slice(&i.to_le_bytes());
            }
            self.memo += 1;
            self
        }
        pub(crate) fn get(&mut self, i: u32) -> &mut Self {
            if i < 256 {
                self.out.extend_from_slice(&[b'h', i as u8]);
            } else {
                self.out.push(b'j');
                self.out.extend_from_slice(&i.to_le_bytes());
            }
            self
        }
        pub(crate) fn global(&mut self, module: &str, name: &str) -> &mut Self {
            let key = format!("{module}\n{name}");
            if let Some(&i) = self.globals.get(&key) {
                return self.get(i);
            }
            self.out.push(b'c');
            self.out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            let i = self.memo;
            self.put();
            self.globals.insert(key, i);
            self
        }
        pub(crate) fn str(&mut self, s: &str) -> &mut Self {
            self.out.push(b'X');
            self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.out.extend_from_slice(s.as_bytes());
            self.put();
            self
        }
        pub(crate) fn int(&mut self, i: i64) -> &mut Self {
            if (0..256).contains(&i) {
                self.out.extend_from_slice(&[b'K', i as u8]);
            } else if (0..65536).contains(&i) {
                self.out.push(b'M');
                self.out.extend_from_slice(&(i as u16).to_le_bytes());
            } else if i32::try_from(i).is_ok() {
                self.out.push(b'J');
                self.out.extend_from_slice(&(i as i32).to_le_bytes());
            } else {
                self.out.extend_from_slice(&[0x8a, 8]);
                self.out.extend_from_slice(&i.to_le_bytes());
            }
            self
        }
        pub(crate) fn float(&mut self, f: f64) -> &mut Self {
            self.out.push(b'G');
            self.out.extend_from_slice(&f.to_be_bytes());
            self
        }
        /// Tuple of ints the way CPython writes `tuple(size)`.
        pub(crate) fn int_tuple(&mut self, v: &[i64]) -> &mut Self {
            match v.len() {
                0 => {
                    self.op(b')');
                    return self;
                }
                1..=3 => {
                    for &x in v {
                        self.int(x);
                    }
                    self.op(0x84 + v.len() as u8);
                }
                _ => {
                    self.op(b'(');
                    for &x in v {
                        self.int(x);
                    }
                    self.op(b't');
                }
            }
            self.put();
            self
        }
        pub(crate) fn empty_dict(&mut self) -> &mut Self {
            self.op(b'}');
            self.put();
            self
        }
        pub(crate) fn stop(&mut self) -> Vec<u8> {
            self.out.push(b'.');
            std::mem::take(&mut self.out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::Pickler;
    use super::*;

    fn load(b: &[u8]) -> Result<Value> {
        unpickle(b).map(|(v, _)| v)
    }

    #[test]
    fn basic_values() {
        let mut p = Pickler::new(2);
        p.empty_dict().op(b'(');
        p.str("a").int(5);
        p.str("b").int(-3);
        p.str("c").int(70000);
        p.str("d").int(1 << 40);
        p.str("e").float(1.5);
        p.str("f").op(b'N');
        p.str("g").op(0x88);
        p.str("h").int_tuple(&[1, 2, 3, 4]);
        p.str("i").op(b']').op(b'(').int(1).int(2).op(b'e');
        p.op(b'u');
        let b = p.stop();
        let (v, used) = unpickle(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(v.get("a"), Some(&Value::Int(5)));
        assert_eq!(v.get("b"), Some(&Value::Int(-3)));
        assert_eq!(v.get("c"), Some(&Value::Int(70000)));
        assert_eq!(v.get("d"), Some(&Value::Int(1 << 40)));
        assert_eq!(v.get("e"), Some(&Value::Float(1.5)));
        assert_eq!(v.get("f"), Some(&Value::None));
        assert_eq!(v.get("g"), Some(&Value::Bool(true)));
        let t: Vec<Value> = (1..=4).map(Value::Int).collect();
        assert_eq!(v.get("h"), Some(&Value::Tuple(t.into())));
        assert_eq!(
            v.get("i"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(2)].into()))
        );
    }

    /// PROTO 4 + FRAME around a body building OrderedDict(k='é') via STACK_GLOBAL.
    fn proto4(tail: &[u8]) -> Vec<u8> {
        let body: Vec<u8> = [
            &[0x8c, 11][..],
            b"collections",
            &[0x94, 0x8c, 11],
            b"OrderedDict",
            &[0x94, 0x93, 0x94, b')', b'R', 0x94],
            &[0x8c, 1, b'k', 0x94, 0x8d],
            &2u64.to_le_bytes(),
            "é".as_bytes(),
            &[0x94, b's'],
            tail,
            b".",
        ]
        .concat();
        let mut b = vec![0x80, 4, 0x95];
        b.extend_from_slice(&(body.len() as u64).to_le_bytes());
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn protocol4_opcodes() {
        let v = load(&proto4(&[])).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![(Value::Str("k".into()), Value::Str("é".into()))].into())
        );
        // SHORT_BINBYTES left on top of the dict: STOP returns the bytes.
        let v = load(&proto4(&[b'C', 2, 0xde, 0xad])).unwrap();
        assert_eq!(v, Value::Bytes(vec![0xde, 0xad]));
        // A frame longer than the data is refused.
        let mut b = proto4(&[]);
        b.pop();
        assert!(load(&b).is_err());
    }

    #[test]
    fn big_long_and_codecs_and_numpy() {
        let magic: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        let mut b = vec![0x80, 2, 0x8a, 10];
        b.extend_from_slice(&magic);
        b.push(b'.');
        assert_eq!(load(&b).unwrap(), Value::BigInt(magic.to_vec()));
        assert_eq!(load(&[0x80, 2, 0x8a, 1, 0xff, b'.']).unwrap(), Value::Int(-1));
        assert_eq!(load(&[0x80, 2, 0x8a, 0, b'.']).unwrap(), Value::Int(0));

        // numpy scalar float64 91.78 as protocol 2 writes it (bytes via _codecs.encode).
        let raw = 91.78f64.to_le_bytes();
        let latin: String = raw.iter().map(|&c| c as char).collect();
        let mut p = Pickler::new(2);
        p.global("numpy.core.multiarray", "scalar");
        p.global("numpy", "dtype").str("f8").op(0x89).op(0x88).op(0x87).put();
        p.op(b'R').put();
        p.op(b'(')
            .int(3)
            .str("<")
            .op(b'N')
            .op(b'N')
            .op(b'N')
            .int(-1)
            .int(-1)
            .int(0)
            .op(b't')
            .put();
        p.op(b'b');
        p.global("_codecs", "encode").str(&latin).str("latin1").op(0x86).put();
        p.op(b'R').put();
        p.op(0x86).put();
        p.op(b'R').put();
        assert_eq!(load(&p.stop()).unwrap(), Value::Float(91.78));
    }

    #[test]
    fn reduce_records_call_and_build_sets_state() {
        let mut p = Pickler::new(2);
        p.global("argparse", "Namespace").op(b')').op(0x81).put();
        p.empty_dict().str("lr").float(0.1).op(b's').op(b'b');
        let v = load(&p.stop()).unwrap();
        let Value::Call {
            module,
            name,
            args,
            state,
        } = v
        else {
            panic!()
        };
        assert_eq!((module.as_str(), name.as_str()), ("argparse", "Namespace"));
        assert!(args.is_empty());
        assert_eq!(state.unwrap().get("lr"), Some(&Value::Float(0.1)));
    }

    #[test]
    fn disallowed_globals() {
        let mut p = Pickler::new(2);
        p.global("os", "system").str("echo pwned").op(0x85).op(b'R');
        let e = load(&p.stop()).unwrap_err();
        assert_eq!(e, IoError::DisallowedGlobal("os.system".into()));
        assert!(e
            .to_string()
            .starts_with("pickle: global \"os.system\" is not allowed (only tensor-rebuilding globals are"));
        for (m, n) in [
            ("builtins", "eval"),
            ("posix", "system"),
            ("subprocess", "Popen"),
            ("torch.storage", "_load_from_bytes"),
            ("__builtin__", "getattr"),
        ] {
            let mut b = vec![0x80, 4, 0x8c, m.len() as u8];
            b.extend_from_slice(m.as_bytes());
            b.extend_from_slice(&[0x8c, n.len() as u8]);
            b.extend_from_slice(n.as_bytes());
            b.extend_from_slice(&[0x93, b')', b'R', b'.']);
            let e = load(&b).unwrap_err();
            assert_eq!(e, IoError::DisallowedGlobal(format!("{m}.{n}")), "{m}.{n}");
        }
    }

    #[test]
    fn hostile_streams() {
        // Huge BINUNICODE8 length.
        let mut b = vec![0x80, 4, 0x8d];
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(b"abc.");
        assert!(load(&b).unwrap_err().to_string().contains("only 4 are left"));
        // Huge BINUNICODE / BINBYTES / FRAME.
        for op in [b'X', b'B'] {
            let mut b = vec![0x80, 3, op, 0xff, 0xff, 0xff, 0x7f, b'.'];
            assert!(load(&b).is_err());
            b[2] = 0x95;
            assert!(load(&b).is_err());
        }
        // Unbalanced MARK / missing MARK.
        assert!(load(&[0x80, 2, b'(', b'.']).is_err());
        assert!(load(&[0x80, 2, b't', b'.']).is_err());
        assert!(load(&[0x80, 2, b'K', 1, b'(', b'0', b'.']).is_err());
        assert!(load(&[0x80, 2, b'}', b'(', b'K', 1, b'u', b'.']).is_err());
        // Missing memo.
        assert!(load(&[0x80, 2, b'h', 7, b'.'])
            .unwrap_err()
            .to_string()
            .contains("memo index 7"));
        // Empty, no STOP, underflow, unknown opcode, bad types.
        assert!(load(&[]).is_err());
        assert!(load(&[0x80, 2, b'N']).is_err());
        assert!(load(&[0x80, 2, b'.']).is_err());
        assert!(load(&[0x80, 2, 0xff, b'.']).is_err());
        assert!(load(&[0x80, 2, b'K', 1, b')', b'R', b'.']).is_err());
        assert!(load(&[0x80, 2, b'K', 1, b'K', 2, b'a', b'.']).is_err());
        assert!(load(&[0x80, 9, b'N', b'.']).is_err());
    }

    #[test]
    fn deep_nesting_is_capped() {
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b']', 10_000));
        b.extend(std::iter::repeat_n(b'a', 9_999));
        b.push(b'.');
        assert!(load(&b).unwrap_err().to_string().contains("nest deeper"));
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'(', 1000));
        b.extend(std::iter::repeat_n(b't', 1000));
        b.push(b'.');
        assert!(load(&b).is_err());
    }

    #[test]
    fn memo_copy_bomb_is_refused() {
        // l = [l0, l0]; repeated 40 times doubles the size each time.
        let mut b = vec![0x80, 2, b']', b'q', 0];
        for i in 0..40u8 {
            b.extend_from_slice(&[b'h', i, b'h', i, 0x86, b'q', i + 1]);
        }
        b.push(b'.');
        assert!(load(&b).unwrap_err().to_string().contains("budget"));
    }

    #[test]
    fn streams_of_tiny_values_stay_within_the_budget() {
        // 1M `None` pushes: refused by the stack cap, before 100 MB of items exist.
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'N', 1 << 20));
        b.push(b'.');
        let err = load(&b).unwrap_err().to_string();
        assert!(err.contains("values on the stack"), "{err}");
        // `None`s appended to a list 1000 at a time: a list slot (72 bytes) per input byte.
        let mut b = vec![0x80, 2, b']'];
        for _ in 0..200 {
            b.push(b'(');
            b.extend(std::iter::repeat_n(b'N', 1000));
            b.push(b'e');
        }
        b.push(b'.');
        let err = load(&b).unwrap_err().to_string();
        assert!(err.contains("budget"), "{err}");
        // One string of 1 MB copied from the memo 100 times (charged in full, not a sixteenth).
        let mut b = vec![0x80, 2, b']', b'(', b'X'];
        b.extend_from_slice(&(1u32 << 20).to_le_bytes());
        b.extend(std::iter::repeat_n(b'a', 1 << 20));
        b.extend_from_slice(&[b'q', 0]);
        for _ in 0..100 {
            b.extend_from_slice(&[b'h', 0]);
        }
        b.extend_from_slice(b"e.");
        let err = load(&b).unwrap_err().to_string();
        assert!(err.contains("budget"), "{err}");
        // A few copies are fine.
        let n = b.len();
        let mut few = b[..n - 2 - 2 * 100].to_vec();
        few.extend_from_slice(&[b'h', 0, b'h', 0]);
        few.extend_from_slice(b"e.");
        assert_eq!(load(&few).unwrap().as_seq().unwrap().len(), 3);
        assert!(std::mem::size_of::<Value>() <= 96, "{}", std::mem::size_of::<Value>());
    }

    fn sample_stream() -> Vec<u8> {
        let mut p = Pickler::new(2);
        p.empty_dict().op(b'(');
        p.str("w").global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(')
            .op(b'(')
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(6)
            .op(b't')
            .put();
        p.op(b'Q').int(0).int_tuple(&[2, 3]).int_tuple(&[3, 1]).op(0x89);
        p.global("collections", "OrderedDict").op(b')').op(b'R').put();
        p.op(b't').put().op(b'R').put();
        p.str("epoch").int(3);
        p.op(b'u');
        p.stop()
    }

    #[test]
    fn torch_like_stream() {
        let v = load(&sample_stream()).unwrap();
        let w = v.get("w").unwrap();
        assert!(w.is_global("torch._utils", "_rebuild_tensor_v2"));
        let Value::Call { args, .. } = w else { panic!() };
        assert!(matches!(&args[0], Value::Persistent(_)));
        assert_eq!(args[5], Value::Dict(Rc::default()));
    }

    #[test]
    fn truncation_and_bit_flips_never_panic() {
        let b = sample_stream();
        for len in 0..b.len() {
            assert!(load(&b[..len]).is_err(), "truncated at {len}");
        }
        let mut c = b.clone();
        for i in 0..c.len() {
            for bit in 0..8 {
                c[i] ^= 1 << bit;
                let _ = load(&c);
                c[i] ^= 1 << bit;
            }
        }
        // Pseudo-random multi-byte corruption.
        let mut s = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut c = b.clone();
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let i = s as usize % c.len();
                c[i] = (s >> 8) as u8;
            }
            let _ = load(&c);
        }
    }
}
