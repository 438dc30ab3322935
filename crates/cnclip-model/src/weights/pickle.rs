//! A restricted unpickler: enough of Python's pickle machine (protocols 0–5) to read what
//! `torch.save` writes, and nothing that can run code.
//!
//! Python's unpickler resolves every `GLOBAL` by importing a module and calls whatever `REDUCE`
//! names, so a checkpoint can run `os.system` on load. This reader never imports or calls anything:
//! each opcode only builds plain data in an arena ([`Value`]), and a `GLOBAL` is accepted only if
//! it is on a short allow-list ([`Global`]) of the names torch checkpoints contain; any other name
//! is an error at the moment it is read ([`WeightsError::ForbiddenGlobal`]), before anything else
//! happens. "Calling" an allowed global builds the data it stands for (a dict, a tensor reference,
//! an inert placeholder), never more. The allow-list is modelled on torch's own `weights_only`
//! unpickler (`torch/_weights_only_unpickler.py`), narrowed to what state dicts need, plus the
//! numpy scalar constructors that training scripts leave in `epoch`/`step`-like metadata (torch
//! refuses those by default; here they only ever become inert placeholders, which are never read).
//!
//! Containers live in an arena and are referred to by index, so memoised objects alias correctly
//! (a `BINGET` of a dict sees the items added after its `BINPUT`) without copying.

use std::collections::HashMap;

use super::error::WeightsError;

/// Index of a [`Value`] in [`Pickle::values`].
pub(crate) type Id = usize;

/// The element type of a torch storage (from the storage class named in the persistent id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageDType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    fn from_class(name: &str) -> Option<StorageDType> {
        Some(match name {
            "FloatStorage" => StorageDType::F32,
            "HalfStorage" => StorageDType::F16,
            "BFloat16Storage" => StorageDType::BF16,
            "DoubleStorage" => StorageDType::F64,
            "LongStorage" => StorageDType::I64,
            "IntStorage" => StorageDType::I32,
            "ShortStorage" => StorageDType::I16,
            "CharStorage" => StorageDType::I8,
            "ByteStorage" => StorageDType::U8,
            "BoolStorage" => StorageDType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            StorageDType::F64 | StorageDType::I64 => 8,
            StorageDType::F32 | StorageDType::I32 => 4,
            StorageDType::F16 | StorageDType::BF16 | StorageDType::I16 => 2,
            StorageDType::I8 | StorageDType::U8 | StorageDType::Bool => 1,
        }
    }

    /// torch's name for the dtype.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StorageDType::F32 => "float32",
            StorageDType::F16 => "float16",
            StorageDType::BF16 => "bfloat16",
            StorageDType::F64 => "float64",
            StorageDType::I64 => "int64",
            StorageDType::I32 => "int32",
            StorageDType::I16 => "int16",
            StorageDType::I8 => "int8",
            StorageDType::U8 => "uint8",
            StorageDType::Bool => "bool",
        }
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(
            self,
            StorageDType::F32 | StorageDType::F16 | StorageDType::BF16 | StorageDType::F64
        )
    }
}

/// The allowed globals. Each is turned into a data constructor; none is ever executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict` → a dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)` (older torch).
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(data, requires_grad, hooks)` → `data`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(data, requires_grad, hooks, state)` → `data`.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)` → `func(*args)`.
    RebuildFromTypeV2,
    /// `torch.nn.parameter.Parameter` / `torch.Tensor` as a type argument (or `Parameter(data, …)` → `data`).
    TensorType,
    /// `torch.FloatStorage` etc.: only meaningful inside a persistent id.
    Storage(StorageDType),
    /// `torch.Size(tuple)` → the tuple.
    Size,
    /// `_codecs.encode(str, "latin1")` → bytes (how protocol 2 writes `bytes`).
    CodecsEncode,
    /// Metadata constructors that are never read: `torch.device`, `numpy.dtype`, numpy scalars.
    Inert(&'static str),
}

/// Maps `module.name` to an allowed global; `None` means refuse.
fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch.nn.parameter", "Parameter") | ("torch", "Tensor") => Global::TensorType,
        ("torch", "Size") => Global::Size,
        ("torch", "device") => Global::Inert("torch.device"),
        ("torch", class) => Global::Storage(StorageDType::from_class(class)?),
        ("_codecs", "encode") => Global::CodecsEncode,
        ("numpy.core.multiarray", "scalar") | ("numpy._core.multiarray", "scalar") => {
            Global::Inert("numpy scalar")
        }
        ("numpy", "dtype") => Global::Inert("numpy.dtype"),
        _ => return None,
    })
}

/// A torch storage reference, from a persistent id `('storage', cls, key, location, numel[, view])`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: StorageDType,
    /// Zip entry name under `data/` (zip format) or root key (legacy format).
    pub key: String,
    /// Elements in the storage (or in the view, for legacy views).
    pub numel: usize,
    /// Element offset of a legacy storage view inside its root storage.
    pub view_offset: usize,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    /// Element offset into the storage.
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Plain data built by the unpickler.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64, as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Result of an inert constructor (never inspected).
    Inert(&'static str),
}

/// A parsed pickle: the arena and the root object.
#[derive(Debug)]
pub(crate) struct Pickle {
    pub values: Vec<Value>,
    pub root: Id,
    /// Bytes consumed (the position just after `STOP`).
    pub end: usize,
}

impl Pickle {
    pub(crate) fn get(&self, id: Id) -> &Value {
        &self.values[id]
    }

    /// The string at `id`, if it is one.
    pub(crate) fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks a string key up in the dict at `id`.
    pub(crate) fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        match self.get(id) {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| self.str(*k) == Some(key))
                .map(|(_, v)| *v),
            _ => None,
        }
    }
}

/// Parses one pickle from the start of `data` (stopping at its `STOP` opcode).
pub(crate) fn parse(data: &[u8]) -> Result<Pickle, WeightsError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_start: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    Ok(Pickle {
        values: m.values,
        root,
        end: m.pos,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    values: Vec<Value>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

type R<T> = Result<T, WeightsError>;

impl Machine<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> R<T> {
        Err(WeightsError::Pickle {
            offset: self.op_start,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> R<&[u8]> {
        if n > self.data.len() - self.pos {
            return self.err(format!(
                "truncated: needs {n} more bytes, {} left",
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len_u32(&mut self) -> R<usize> {
        Ok(u32::from_le_bytes(self.le::<4>()?) as usize)
    }

    fn len_u64(&mut self) -> R<usize> {
        let n = u64::from_le_bytes(self.le::<8>()?);
        usize::try_from(n).or_else(|_| self.err("length does not fit in memory"))
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let s = String::from_utf8_lossy(&rest[..n]).into_owned();
                self.pos += n + 1;
                Ok(s)
            }
            None => self.err("truncated: unterminated line"),
        }
    }

    fn alloc(&mut self, v: Value) -> Id {
        self.values.push(v);
        self.values.len() - 1
    }

    fn push(&mut self, v: Value) {
        let id = self.alloc(v);
        self.stack.push(id);
    }

    fn pop(&mut self) -> R<Id> {
        if self.marks.last() == Some(&self.stack.len()) {
            return self.err("stack underflow (pop past a mark)");
        }
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        match self.marks.pop() {
            Some(at) if at <= self.stack.len() => Ok(self.stack.split_off(at)),
            _ => self.err("no mark on the stack"),
        }
    }

    fn memo_put(&mut self, key: u64) -> R<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> R<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.err(format!("memo key {key} is not defined")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<()> {
        match resolve_global(module, name) {
            Some(g) => {
                self.push(Value::Global(g));
                Ok(())
            }
            None => Err(WeightsError::ForbiddenGlobal {
                global: format!("{module}.{name}"),
            }),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<Id>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return self.err("odd number of items for a dict");
        }
        let pairs: Vec<(Id, Id)> = items.chunks(2).map(|c| (c[0], c[1])).collect();
        match &mut self.values[dict] {
            Value::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => self.err("SETITEM(S) on something that is not a dict"),
        }
    }

    fn append(&mut self, list: Id, items: Vec<Id>) -> R<()> {
        match &mut self.values[list] {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => self.err("APPEND(S) on something that is not a list"),
        }
    }

    fn int_of(&self, id: Id, what: &str) -> R<i64> {
        match &self.values[id] {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(i64::from(*b)),
            _ => self.err(format!("{what} is not an integer")),
        }
    }

    fn usize_of(&self, id: Id, what: &str) -> R<usize> {
        let i = self.int_of(id, what)?;
        usize::try_from(i).or_else(|_| self.err(format!("{what} is negative ({i})")))
    }

    fn usizes_of(&self, id: Id, what: &str) -> R<Vec<usize>> {
        match &self.values[id] {
            Value::Tuple(items) | Value::List(items) => {
                items.iter().map(|&i| self.usize_of(i, what)).collect()
            }
            _ => self.err(format!("{what} is not a tuple")),
        }
    }

    fn tuple_items(&self, id: Id, what: &str) -> R<Vec<Id>> {
        match &self.values[id] {
            Value::Tuple(items) | Value::List(items) => Ok(items.clone()),
            _ => self.err(format!("{what} is not a tuple")),
        }
    }

    /// `('storage', StorageClass, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, pid: Id) -> R<Value> {
        let items = self.tuple_items(pid, "persistent id")?;
        let tag = items.first().and_then(|&i| match &self.values[i] {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        });
        if tag != Some("storage") || items.len() < 5 {
            return self.err("unsupported persistent id (expected a torch storage)");
        }
        let dtype = match &self.values[items[1]] {
            Value::Global(Global::Storage(dt)) => *dt,
            _ => return self.err("persistent id does not name a storage class"),
        };
        let key = match &self.values[items[2]] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return self.err("storage key is not a string"),
        };
        let numel = self.usize_of(items[4], "storage size")?;
        let mut storage = StorageRef {
            dtype,
            key,
            numel,
            view_offset: 0,
        };
        if let Some(&view) = items.get(5) {
            if self.values[view] != Value::None {
                let v = self.tuple_items(view, "storage view")?;
                if v.len() != 3 {
                    return self.err("storage view is not (key, offset, size)");
                }
                storage.view_offset = self.usize_of(v[1], "view offset")?;
                storage.numel = self.usize_of(v[2], "view size")?;
            }
        }
        Ok(Value::Storage(storage))
    }

    /// What calling an allowed global produces. Returns the id of the result.
    fn call(&mut self, callable: Id, args: Id, depth: u32) -> R<Id> {
        let g = match &self.values[callable] {
            Value::Global(g) => *g,
            _ => return self.err("REDUCE/NEWOBJ on something that is not an allowed global"),
        };
        let args = self.tuple_items(args, "call arguments")?;
        let arg = |i: usize| args.get(i).copied();
        match g {
            Global::OrderedDict => {
                let mut pairs = Vec::new();
                if let Some(items) = arg(0) {
                    for item in self.tuple_items(items, "OrderedDict items")? {
                        let kv = self.tuple_items(item, "OrderedDict item")?;
                        if kv.len() != 2 {
                            return self.err("OrderedDict item is not a pair");
                        }
                        pairs.push((kv[0], kv[1]));
                    }
                }
                Ok(self.alloc(Value::Dict(pairs)))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                if args.len() < 4 {
                    return self.err("tensor rebuild with fewer than 4 arguments");
                }
                let storage = match &self.values[args[0]] {
                    Value::Storage(s) => s.clone(),
                    _ => return self.err("tensor rebuild without a storage"),
                };
                let offset = self.usize_of(args[1], "tensor offset")?;
                let size = self.usizes_of(args[2], "tensor size")?;
                let stride = self.usizes_of(args[3], "tensor stride")?;
                if size.len() != stride.len() {
                    return self.err("tensor size and stride differ in rank");
                }
                Ok(self.alloc(Value::Tensor(TensorRef {
                    storage,
                    offset,
                    size,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState | Global::TensorType => {
                match arg(0) {
                    Some(data) if matches!(self.values[data], Value::Tensor(_)) => Ok(data),
                    _ => self.err("parameter rebuild without a tensor"),
                }
            }
            Global::RebuildFromTypeV2 => {
                if depth > 0 || args.len() < 3 {
                    return self.err("unsupported _rebuild_from_type_v2 call");
                }
                self.call(args[0], args[2], depth + 1)
            }
            Global::Size => match arg(0) {
                Some(t) => Ok(t),
                None => Ok(self.alloc(Value::Tuple(Vec::new()))),
            },
            Global::CodecsEncode => {
                let s = match arg(0).map(|i| &self.values[i]) {
                    Some(Value::Str(s)) => s.clone(),
                    _ => return self.err("_codecs.encode without a string"),
                };
                // Protocol 2 writes bytes as encode(latin-1 decoded str, "latin1").
                let bytes = s.chars().map(|c| c as u32 as u8).collect();
                Ok(self.alloc(Value::Bytes(bytes)))
            }
            Global::Inert(name) => Ok(self.alloc(Value::Inert(name))),
            Global::Storage(_) => self.err("a storage class cannot be called"),
        }
    }

    fn run(&mut self) -> R<Id> {
        loop {
            self.op_start = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.le::<8>()?; // FRAME: a length hint only
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(root);
                }
                // --- globals and calls ---
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.values[module], &self.values[name]) {
                        (Value::Str(m), Value::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(&m, &n)?;
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'i' => {
                    // INST: GLOBAL + call with the items above the mark.
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                    let callable = self.pop()?;
                    let items = self.pop_mark()?;
                    let args = self.alloc(Value::Tuple(items));
                    let r = self.call(callable, args, 0)?;
                    self.stack.push(r);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class");
                    }
                    let callable = items.remove(0);
                    let args = self.alloc(Value::Tuple(items));
                    let r = self.call(callable, args, 0)?;
                    self.stack.push(r);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let r = self.call(callable, args, 0)?;
                    self.stack.push(r);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let r = self.call(callable, args, 0)?;
                    self.stack.push(r);
                }
                b'b' => {
                    let _state = self.pop()?;
                    let obj = self.top()?;
                    // Attributes (an OrderedDict's `_metadata`, a tensor's python state) are not needed.
                    match &self.values[obj] {
                        Value::Dict(_) | Value::Tensor(_) | Value::Inert(_) => {}
                        _ => return self.err("BUILD on an object that has no state"),
                    }
                }
                0x82..=0x84 => return self.err("extension registry codes are not supported"),
                0x97 | 0x98 => return self.err("out-of-band buffers are not supported"),
                // --- persistent ids ---
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                b'P' => return self.err("text persistent ids are not supported"),
                // --- stack and memo ---
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.stack.push(id);
                }
                b'p' => {
                    let line = self.line()?;
                    match line.trim().parse() {
                        Ok(k) => self.memo_put(k)?,
                        Err(_) => return self.err("bad PUT index"),
                    }
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(u64::from(k))?;
                }
                b'r' => {
                    let k = self.len_u32()?;
                    self.memo_put(k as u64)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let line = self.line()?;
                    match line.trim().parse() {
                        Ok(k) => self.memo_get(k)?,
                        Err(_) => return self.err("bad GET index"),
                    }
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(u64::from(k))?;
                }
                b'j' => {
                    let k = self.len_u32()?;
                    self.memo_get(k as u64)?;
                }
                // --- scalars ---
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le::<2>()?);
                    self.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le::<4>()?);
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_value(bytes));
                }
                0x8b => {
                    let n = self.len_u32()?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_value(bytes));
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line.trim() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => match s.parse() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.err("bad INT"),
                        },
                    };
                    self.push(v);
                }
                b'L' => {
                    let line = self.line()?;
                    match line.trim().trim_end_matches('L').parse() {
                        Ok(i) => self.push(Value::Int(i)),
                        Err(_) => self.push(Value::BigInt(Vec::new())),
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le::<8>()?);
                    self.push(Value::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    match line.trim().parse() {
                        Ok(f) => self.push(Value::Float(f)),
                        Err(_) => return self.err("bad FLOAT"),
                    }
                }
                // --- strings and bytes ---
                b'X' => {
                    let n = self.len_u32()?;
                    self.push_utf8(n)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.push_utf8(n)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    self.push_utf8(n)?;
                }
                b'V' => {
                    let line = self.line()?;
                    self.push(Value::Str(raw_unicode_unescape(&line)));
                }
                b'S' => {
                    let line = self.line()?;
                    match unquote(line.trim()) {
                        Some(s) => self.push(Value::Str(s)),
                        None => return self.err("bad STRING"),
                    }
                }
                b'T' => {
                    let n = self.len_u32()?;
                    let s = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                    self.push(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                    self.push(Value::Str(s));
                }
                b'B' => {
                    let n = self.len_u32()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                // --- containers ---
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b']' => self.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.append(list, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.append(list, items)?;
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = self.alloc(Value::Dict(Vec::new()));
                    self.set_items(dict, items)?;
                    self.stack.push(dict);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, items)?;
                }
                // Sets only occur in metadata: kept as lists.
                0x8f => self.push(Value::List(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let set = self.top()?;
                    self.append(set, items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                other => return self.err(format!("unknown opcode 0x{other:02x}")),
            }
        }
    }

    fn push_utf8(&mut self, n: usize) -> R<()> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                let s = s.to_owned();
                self.push(Value::Str(s));
                Ok(())
            }
            Err(_) => self.err("string is not UTF-8"),
        }
    }
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn long_value(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 8 {
        return Value::BigInt(bytes);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf[..bytes.len()].copy_from_slice(&bytes);
    Value::Int(i64::from_le_bytes(buf))
}

/// Python 2 `repr` of a str (protocol 0 `STRING`): quotes and backslash escapes.
fn unquote(s: &str) -> Option<String> {
    let q = s.chars().next()?;
    if !(q == '\'' || q == '"') || s.len() < 2 || !s.ends_with(q) {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'x' => {
                let h: String = chars.by_ref().take(2).collect();
                out.push(char::from(u8::from_str_radix(&h, 16).ok()?));
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// Protocol 0 `UNICODE`: raw-unicode-escape (`\uXXXX`, `\UXXXXXXXX`).
fn raw_unicode_unescape(s: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let width = match (chars[i], chars.get(i + 1)) {
            ('\\', Some('u')) => 4,
            ('\\', Some('U')) => 8,
            _ => 0,
        };
        if width > 0 && i + 2 + width <= chars.len() {
            let hex: String = chars[i + 2..i + 2 + width].iter().collect();
            if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                out.push(c);
                i += 2 + width;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(data: &[u8]) -> String {
        match parse(data) {
            Err(WeightsError::ForbiddenGlobal { global }) => global,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn refuses_globals_in_every_encoding() {
        // protocol 0/2 GLOBAL
        assert_eq!(refused(b"\x80\x02cposix\nsystem\nq\x00."), "posix.system");
        // protocol 4 STACK_GLOBAL
        assert_eq!(
            refused(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93."),
            "builtins.eval"
        );
        // INST
        assert_eq!(refused(b"(S'ls'\nios\nsystem\n."), "os.system");
        // allowed module, other name
        assert_eq!(refused(b"ctorch\nload\n."), "torch.load");
        assert_eq!(
            refused(b"ctorch._utils\n_rebuild_device_tensor_from_numpy\n."),
            "torch._utils._rebuild_device_tensor_from_numpy"
        );
    }

    #[test]
    fn memo_aliases_containers() {
        // d = {}; memo[0] = d; pop; l = [memo[0]]; memo[0]['a'] = 1; pop → l[0] sees 'a'.
        let data = b"\x80\x02}q\x000]h\x00ah\x00X\x01\x00\x00\x00aK\x01s0.";
        let p = parse(data).unwrap();
        let Value::List(items) = p.get(p.root) else {
            panic!("root is not a list")
        };
        let a = p.dict_get(items[0], "a").map(|v| p.get(v).clone());
        assert_eq!(a, Some(Value::Int(1)));
    }

    #[test]
    fn long_values() {
        assert_eq!(long_value(vec![0xff]), Value::Int(-1));
        assert_eq!(long_value(vec![0x00, 0x01]), Value::Int(256));
        assert!(matches!(long_value(vec![1; 10]), Value::BigInt(_)));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for cut in 0..12 {
            let data = &b"\x80\x02}q\x00X\x05\x00\x00\x00hellos."[..cut];
            assert!(matches!(parse(data), Err(WeightsError::Pickle { .. })));
        }
        assert!(parse(b"\x80\x02X\xff\xff\xff\xff").is_err());
    }
}
