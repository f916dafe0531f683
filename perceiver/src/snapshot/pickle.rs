//! A pickle reader for PyTorch state dicts that never runs anything.
//!
//! A pickle is a small program: Python's unpickler imports whatever module and name a GLOBAL
//! opcode names and calls it, which is how a downloaded checkpoint can run arbitrary code. This
//! reader is a separate stack machine written for state dicts alone. GLOBAL names a fixed
//! allowlist (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`, and the `torch.*Storage` types) and any other name is an
//! error. A "callable" on the stack is just a name. REDUCE builds the value those few
//! functions would return, in Rust. Nothing is imported, called or evaluated.
//!
//! It understands the opcodes of protocols 2 to 5 that a state dict can contain:
//! PROTO, FRAME, STOP; MARK, EMPTY_TUPLE, TUPLE, TUPLE1-3, EMPTY_LIST, APPEND, APPENDS,
//! EMPTY_DICT, SETITEM, SETITEMS; NONE, NEWTRUE, NEWFALSE, BININT, BININT1, BININT2, LONG1,
//! BINFLOAT; SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, SHORT_BINSTRING, BINSTRING; BINPUT,
//! LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET; GLOBAL, STACK_GLOBAL, REDUCE, BUILD (accepted on
//! a dict and ignored: it sets the `_metadata` attribute of the state dict) and BINPERSID. Any
//! other opcode is an error naming its byte and offset.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Errors of the reader are messages; the caller adds the file's path.
pub(super) type Msg<T> = std::result::Result<T, String>;

/// A storage type of `torch`: its class name and the dtype it holds.
pub(super) struct StorageType {
    class: &'static str,
    dtype: &'static str,
}

const STORAGE_TYPES: &[StorageType] = &[
    StorageType { class: "FloatStorage", dtype: "float32" },
    StorageType { class: "DoubleStorage", dtype: "float64" },
    StorageType { class: "HalfStorage", dtype: "float16" },
    StorageType { class: "BFloat16Storage", dtype: "bfloat16" },
    StorageType { class: "LongStorage", dtype: "int64" },
    StorageType { class: "IntStorage", dtype: "int32" },
    StorageType { class: "ShortStorage", dtype: "int16" },
    StorageType { class: "CharStorage", dtype: "int8" },
    StorageType { class: "ByteStorage", dtype: "uint8" },
    StorageType { class: "BoolStorage", dtype: "bool" },
];

/// The only globals a state dict may name. They are never called: REDUCE builds what each
/// would return.
#[derive(Clone, Copy)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(&'static StorageType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Msg<Global> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => STORAGE_TYPES.iter().find(|s| s.class == class).map(Global::Storage),
            _ => None,
        };
        global.ok_or_else(|| {
            format!(
                "refuses to load global {}.{} (only state-dict types are allowed)",
                module.escape_debug(),
                name.escape_debug()
            )
        })
    }

    fn name(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensor => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::Storage(s) => format!("torch.{}", s.class),
        }
    }
}

/// A float32 storage: the `data/<key>` entry and how many values it claims to hold.
pub(super) struct StorageRef {
    pub key: String,
    pub numel: usize,
}

/// A tensor as a view of a storage; its data is read once the whole pickle is understood.
pub(super) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A Python list, shared.
pub(super) type List = Rc<RefCell<Vec<Value>>>;

/// A Python dict (or OrderedDict), shared: its items in insertion order.
pub(super) type Dict = Rc<RefCell<Vec<(Value, Value)>>>;

/// A value on the unpickler's stack. Containers are shared (`Rc`) as Python objects are, so a
/// dict filled after it was memoized is the same dict when fetched from the memo.
#[derive(Clone, Default)]
pub(super) enum Value {
    #[default]
    None,
    /// NEWTRUE, NEWFALSE: only checked to be a bool (`requires_grad`), never read.
    Bool,
    Int(i64),
    /// BINFLOAT: a state dict has no use for the value itself.
    Float,
    Str(Rc<str>),
    Tuple(Rc<[Value]>),
    List(List),
    Dict(Dict),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn new_dict() -> Value {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    /// Moves the values this one alone owns into `out` (see the `Drop` impl).
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(items) => {
                if let Some(items) = Rc::get_mut(items) {
                    out.extend(items.iter_mut().map(std::mem::take));
                }
            }
            Value::List(items) => {
                if let Some(items) = Rc::get_mut(items) {
                    out.append(items.get_mut());
                }
            }
            Value::Dict(pairs) => {
                if let Some(pairs) = Rc::get_mut(pairs) {
                    out.extend(pairs.get_mut().drain(..).flat_map(|(k, v)| [k, v]));
                }
            }
            _ => {}
        }
    }
}

impl Drop for Value {
    /// Takes nested containers apart with a loop, not recursion, so that a pickle nesting
    /// tuples a million deep cannot overflow the stack when it is dropped.
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut value) = pending.pop() {
            value.take_children(&mut pending);
        }
    }
}

fn as_usize(value: &Value, what: &str) -> Msg<usize> {
    match value {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is {i}, not a valid size")),
        other => Err(format!("{what} is {}, not an int", other.kind())),
    }
}

fn as_sizes(value: &Value, what: &str) -> Msg<Vec<usize>> {
    match value {
        Value::Tuple(items) => items.iter().map(|v| as_usize(v, what)).collect(),
        other => Err(format!("{what} is {}, not a tuple", other.kind())),
    }
}

/// The opcodes understood, named as in Python's `pickletools`.
pub(super) mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

/// The stack machine. `marks` holds the stack heights at each open MARK; nothing pops below
/// the last one except the opcodes that close it.
pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Unpickler { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    /// Runs the pickle to its STOP and returns the value it built.
    pub(super) fn load(mut self) -> Msg<Value> {
        loop {
            let at = self.pos;
            let step = match self.take(1) {
                Ok(&[opcode]) => self.step(opcode),
                _ => Err("truncated: the pickle ends before STOP".into()),
            };
            match step {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(e) => return Err(format!("data.pkl, byte {at}: {e}")),
            }
        }
    }

    /// Executes one opcode; returns the result at STOP.
    fn step(&mut self, opcode: u8) -> Msg<Option<Value>> {
        match opcode {
            op::PROTO => {
                let version = self.u8()?;
                if version > 5 {
                    return Err(format!("unsupported pickle protocol {version}"));
                }
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::STOP => return self.pop().map(Some),
            op::MARK => self.marks.push(self.stack.len()),

            op::EMPTY_TUPLE => self.stack.push(Value::Tuple(Rc::new([]))),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(items.into()));
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(opcode - op::TUPLE1 + 1);
                let mut items = (0..n).map(|_| self.pop()).collect::<Msg<Vec<_>>>()?;
                items.reverse();
                self.stack.push(Value::Tuple(items.into()));
            }
            op::EMPTY_LIST => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            op::APPEND => {
                let item = self.pop()?;
                self.top_list()?.borrow_mut().push(item);
            }
            op::APPENDS => {
                let mut items = self.pop_mark()?;
                self.top_list()?.borrow_mut().append(&mut items);
            }
            op::EMPTY_DICT => self.stack.push(Value::new_dict()),
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.top_dict()?.borrow_mut().push((key, value));
            }
            op::SETITEMS => {
                let mut items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err(format!("SETITEMS has {} values, not key/value pairs", items.len()));
                }
                let dict = self.top_dict()?;
                let mut dict = dict.borrow_mut();
                let mut items = items.drain(..);
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    dict.push((key, value));
                }
            }

            op::NONE => self.stack.push(Value::None),
            op::NEWTRUE | op::NEWFALSE => self.stack.push(Value::Bool),
            op::BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT1 => {
                let v = self.u8()?;
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            op::LONG1 => {
                let n = usize::from(self.u8()?);
                if n > 8 {
                    return Err(format!("LONG1 of {n} bytes is too large for a 64-bit int"));
                }
                let bytes = self.take(n)?;
                // Little-endian two's complement: sign-extend from the last byte.
                let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
                let mut full = [fill; 8];
                full[..n].copy_from_slice(bytes);
                self.stack.push(Value::Int(i64::from_le_bytes(full)));
            }
            op::BINFLOAT => {
                self.take(8)?;
                self.stack.push(Value::Float);
            }

            op::SHORT_BINUNICODE | op::SHORT_BINSTRING => {
                let n = usize::from(self.u8()?);
                self.string(n)?;
            }
            op::BINUNICODE => {
                let n = u32::from_le_bytes(self.array()?);
                self.string(n as usize)?;
            }
            op::BINUNICODE8 => {
                let n = u64::from_le_bytes(self.array()?);
                let n = usize::try_from(n).map_err(|_| format!("string of {n} bytes"))?;
                self.string(n)?;
            }
            op::BINSTRING => {
                let n = i32::from_le_bytes(self.array()?);
                let n = usize::try_from(n).map_err(|_| format!("BINSTRING of negative length {n}"))?;
                self.string(n)?;
            }

            op::BINPUT => {
                let index = self.u8()?;
                self.put(index.into())?;
            }
            op::LONG_BINPUT => {
                let index = u32::from_le_bytes(self.array()?);
                self.put(index)?;
            }
            op::MEMOIZE => {
                let index = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                self.put(index)?;
            }
            op::BINGET => {
                let index = self.u8()?;
                self.get(index.into())?;
            }
            op::LONG_BINGET => {
                let index = u32::from_le_bytes(self.array()?);
                self.get(index)?;
            }

            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(Global::resolve(module, name)?));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err(format!(
                        "STACK_GLOBAL needs two strings, found {} and {}",
                        module.kind(),
                        name.kind()
                    ));
                };
                self.stack.push(Value::Global(Global::resolve(module, name)?));
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let Value::Tuple(args) = &args else {
                    return Err(format!("REDUCE arguments are {}, not a tuple", args.kind()));
                };
                let Value::Global(global) = callable else {
                    return Err(format!("REDUCE calls {}, not an allowed global", callable.kind()));
                };
                self.stack.push(reduce(global, args)?);
            }
            op::BUILD => {
                // The state of a state dict is its `_metadata` (module versions): not needed.
                let _state = self.pop()?;
                self.top_dict()?;
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                self.stack.push(persistent_load(&pid)?);
            }
            other => {
                let shown =
                    if other.is_ascii_graphic() { format!(" ({:?})", other as char) } else { String::new() };
                return Err(format!("unknown or unsupported pickle opcode 0x{other:02x}{shown}"));
            }
        }
        Ok(None)
    }

    fn take(&mut self, n: usize) -> Msg<&'a [u8]> {
        let rest = &self.data[self.pos..];
        if n > rest.len() {
            return Err(format!("truncated: {n} bytes needed, {} left", rest.len()));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn u8(&mut self) -> Msg<u8> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Msg<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A newline-terminated line of GLOBAL.
    fn line(&mut self) -> Msg<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("truncated: GLOBAL without a newline")?;
        let line = self.take(n + 1)?;
        std::str::from_utf8(&line[..n]).map_err(|_| "GLOBAL name is not UTF-8".into())
    }

    /// Pushes the string of the next `n` bytes.
    fn string(&mut self, n: usize) -> Msg<()> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "string is not UTF-8".to_string())?;
        self.stack.push(Value::Str(s.into()));
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Msg<Value> {
        if self.stack.len() > self.floor() {
            if let Some(value) = self.stack.pop() {
                return Ok(value);
            }
        }
        Err("stack underflow".into())
    }

    fn top(&self) -> Msg<&Value> {
        match self.stack.last() {
            Some(value) if self.stack.len() > self.floor() => Ok(value),
            _ => Err("stack underflow".into()),
        }
    }

    /// The values above the last MARK, which is closed.
    fn pop_mark(&mut self) -> Msg<Vec<Value>> {
        match self.marks.pop() {
            Some(mark) if mark <= self.stack.len() => Ok(self.stack.split_off(mark)),
            _ => Err("no MARK to close".into()),
        }
    }

    fn top_dict(&self) -> Msg<Dict> {
        match self.top()? {
            Value::Dict(dict) => Ok(dict.clone()),
            other => Err(format!("expected a dict on the stack, found {}", other.kind())),
        }
    }

    fn top_list(&self) -> Msg<List> {
        match self.top()? {
            Value::List(list) => Ok(list.clone()),
            other => Err(format!("expected a list on the stack, found {}", other.kind())),
        }
    }

    fn put(&mut self, index: u32) -> Msg<()> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Msg<()> {
        let value = self.memo.get(&index).ok_or_else(|| format!("memo entry {index} was never stored"))?;
        self.stack.push(value.clone());
        Ok(())
    }
}

/// What calling `global(*args)` would return, built here without calling anything.
fn reduce(global: Global, args: &[Value]) -> Msg<Value> {
    let name = global.name();
    match global {
        Global::OrderedDict if args.is_empty() => Ok(Value::new_dict()),
        Global::OrderedDict => {
            Err(format!("{name} is only rebuilt empty, not from {} arguments", args.len()))
        }
        Global::RebuildTensor => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            let [storage, offset, size, stride, requires_grad, _hooks, rest @ ..] = args else {
                return Err(format!("{name} takes 6 or 7 arguments, got {}", args.len()));
            };
            if rest.len() > 1 {
                return Err(format!("{name} takes 6 or 7 arguments, got {}", args.len()));
            }
            let Value::Storage(storage) = storage else {
                return Err(format!("{name}: the storage is {}", storage.kind()));
            };
            if !matches!(requires_grad, Value::Bool) {
                return Err(format!("{name}: requires_grad is {}, not a bool", requires_grad.kind()));
            }
            let shape = as_sizes(size, "size")?;
            let stride = as_sizes(stride, "stride")?;
            if shape.len() != stride.len() {
                return Err(format!("{name}: size {shape:?} and stride {stride:?} differ in length"));
            }
            let offset = as_usize(offset, "storage offset")?;
            Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, shape, stride })))
        }
        Global::RebuildParameter => match args {
            // (data, requires_grad, backward_hooks): the parameter is its data.
            [Value::Tensor(t), Value::Bool, _] => Ok(Value::Tensor(t.clone())),
            _ => Err(format!("{name} takes (tensor, requires_grad, backward_hooks)")),
        },
        Global::Storage(_) => Err(format!("{name} cannot be called")),
    }
}

/// The storage that persistent id `('storage', torch.<Type>Storage, key, location, numel)`
/// names. Only float32 storages are accepted.
fn persistent_load(pid: &Value) -> Msg<Value> {
    let Value::Tuple(fields) = pid else {
        return Err(format!("persistent id is {}, not a tuple", pid.kind()));
    };
    let [Value::Str(tag), Value::Global(Global::Storage(ty)), Value::Str(key), Value::Str(_location), numel] =
        &fields[..]
    else {
        return Err("persistent id is not ('storage', type, key, location, numel)".into());
    };
    if &**tag != "storage" {
        return Err(format!("persistent id of kind {tag:?}, not 'storage'"));
    }
    if ty.class != "FloatStorage" {
        return Err(format!(
            "storage {key} holds {} (torch.{}); only float32 tensors (torch.FloatStorage) are supported",
            ty.dtype, ty.class
        ));
    }
    let numel = as_usize(numel, "storage size")?;
    Ok(Value::Storage(Rc::new(StorageRef { key: key.to_string(), numel })))
}
