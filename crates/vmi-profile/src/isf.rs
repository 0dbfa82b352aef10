//! Volatility 3 Intermediate Symbol Format (ISF) JSON: import (plain or `.json.xz`) and
//! export.
//!
//! Format facts (volatility3 `schemas/schema-6.2.0.json`): top-level `metadata`,
//! `base_types`, `user_types`, `enums`, `symbols`. Type descriptors are `base` (by name),
//! `pointer` (`subtype`), `array` (`count`, `subtype`), `struct`/`union`/`class` and `enum`
//! (by name), `function`, and `bitfield` (`bit_position`, `bit_length`, `type`). Since
//! format 6.2 a field may be `anonymous`: Volatility lifts its members into the parent. For
//! Linux, Volatility identifies the kernel by the `linux_banner` symbol's `constant_data`
//! (base64) and walks tasks from a typed `init_task` symbol.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::{ProfileError, Result};
use crate::image::read_file;
use crate::profile::{Metadata, OsKind, PdbId, Profile};
use crate::symbols::{Symbol, SymbolTable};
use crate::types::{Composite, Enumerator, IntEncoding, Member, Type, TypeId, Types, TypesBuilder};

/// Largest (decompressed) ISF accepted.
pub const MAX_ISF: u64 = 1 << 30;
/// Deepest nesting of type descriptors followed.
const MAX_DESC_DEPTH: usize = 64;

/// Reads an ISF file; `.xz`-compressed files are recognised by their magic.
pub fn load_isf(path: &Path) -> Result<Profile> {
    let bytes = read_file(path)?;
    parse_isf(&bytes, &path.display().to_string())
}

/// Parses ISF JSON bytes (or XZ-compressed JSON).
pub fn parse_isf(bytes: &[u8], source: &str) -> Result<Profile> {
    let bad = |what: String| ProfileError::Isf {
        source_name: source.to_owned(),
        what,
    };
    let decompressed;
    let json_bytes = if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let mut out = Vec::new();
        let mut reader = std::io::BufReader::new(bytes);
        let mut limited = LimitedVec {
            buf: &mut out,
            limit: MAX_ISF,
        };
        lzma_rs::xz_decompress(&mut reader, &mut limited)
            .map_err(|e| bad(format!("cannot decompress xz: {e}")))?;
        decompressed = out;
        &decompressed[..]
    } else {
        bytes
    };
    let root: Value =
        serde_json::from_slice(json_bytes).map_err(|e| bad(format!("invalid json: {e}")))?;
    Importer::new(source).run(&root)
}

struct LimitedVec<'a> {
    buf: &'a mut Vec<u8>,
    limit: u64,
}

impl std::io::Write for LimitedVec<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() as u64 + data.len() as u64 > self.limit {
            return Err(std::io::Error::other(
                "decompressed isf exceeds the size limit",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Importer<'s> {
    source: &'s str,
    b: TypesBuilder,
    user: HashMap<String, TypeId>,
    enums: HashMap<String, TypeId>,
    base: HashMap<String, TypeId>,
    derived: HashMap<(u8, TypeId, u32), TypeId>,
    function: Option<TypeId>,
}

impl<'s> Importer<'s> {
    fn new(source: &'s str) -> Self {
        Self {
            source,
            b: TypesBuilder::new(),
            user: HashMap::new(),
            enums: HashMap::new(),
            base: HashMap::new(),
            derived: HashMap::new(),
            function: None,
        }
    }

    fn bad(&self, what: impl Into<String>) -> ProfileError {
        ProfileError::Isf {
            source_name: self.source.to_owned(),
            what: what.into(),
        }
    }

    fn object<'v>(&self, v: &'v Value, what: &str) -> Result<&'v Map<String, Value>> {
        v.as_object()
            .ok_or_else(|| self.bad(format!("{what} is not an object")))
    }

    fn uint(&self, v: Option<&Value>, what: &str) -> Result<u64> {
        v.and_then(Value::as_u64)
            .ok_or_else(|| self.bad(format!("{what} is missing or not an unsigned integer")))
    }

    fn run(mut self, root: &Value) -> Result<Profile> {
        let root = self.object(root, "the document")?;
        let section = |k: &str| root.get(k).and_then(Value::as_object);
        let empty = Map::new();
        let base_types = section("base_types").unwrap_or(&empty);
        let user_types = section("user_types").unwrap_or(&empty);
        let enums = section("enums").unwrap_or(&empty);
        let symbols = section("symbols").unwrap_or(&empty);

        for (name, bt) in base_types {
            let bt = self.object(bt, &format!("base type {name}"))?;
            let size = self.uint(bt.get("size"), &format!("base type {name} size"))?;
            let kind = bt.get("kind").and_then(Value::as_str).unwrap_or("int");
            let signed = bt.get("signed").and_then(Value::as_bool).unwrap_or(false);
            if name == "void" || kind == "void" {
                self.base.insert(name.clone(), TypeId::VOID);
                continue;
            }
            let size =
                u32::try_from(size).map_err(|_| self.bad(format!("base type {name} size")))?;
            let n = self.b.name(name);
            let t = if kind == "float" {
                Type::Float { name: n, size }
            } else {
                Type::Int {
                    name: n,
                    size,
                    encoding: IntEncoding {
                        signed,
                        char: kind == "char",
                        bool: kind == "bool",
                    },
                    bits: u8::try_from(size.saturating_mul(8)).unwrap_or(u8::MAX),
                    bit_offset: 0,
                }
            };
            let id = self.b.push(t);
            self.base.insert(name.clone(), id);
        }
        for (name, e) in enums {
            let e = self.object(e, &format!("enum {name}"))?;
            let size = self.uint(e.get("size"), &format!("enum {name} size"))?;
            let base = e.get("base").and_then(Value::as_str).unwrap_or("");
            let signed = !base.contains("unsigned");
            let consts = e
                .get("constants")
                .and_then(Value::as_object)
                .ok_or_else(|| self.bad(format!("enum {name} has no constants object")))?;
            let mut values = Vec::with_capacity(consts.len());
            for (c, v) in consts {
                let value = v
                    .as_i64()
                    .or_else(|| v.as_u64().map(|x| x as i64))
                    .ok_or_else(|| {
                        self.bad(format!("enum {name} constant {c} is not an integer"))
                    })?;
                values.push(Enumerator {
                    name: self.b.name(c),
                    value,
                });
            }
            let values = self.b.enumerators(values);
            let n = self.b.name(name);
            let id = self.b.push(Type::Enum {
                name: n,
                size: u32::try_from(size).map_err(|_| self.bad(format!("enum {name} size")))?,
                signed,
                values,
            });
            self.enums.insert(name.clone(), id);
        }
        // Reserve ids for all user types first: fields refer to them in any order.
        for (name, ut) in user_types {
            let ut = self.object(ut, &format!("user type {name}"))?;
            let size = self.uint(ut.get("size"), &format!("user type {name} size"))?;
            let n = self.b.name(name);
            let c = Composite {
                name: n,
                size,
                members: Default::default(),
            };
            let id = match ut.get("kind").and_then(Value::as_str) {
                Some("union") => self.b.push(Type::Union(c)),
                _ => self.b.push(Type::Struct(c)),
            };
            self.user.insert(name.clone(), id);
        }
        for (name, ut) in user_types {
            let id = self.user[name];
            let fields = ut
                .get("fields")
                .and_then(Value::as_object)
                .ok_or_else(|| self.bad(format!("user type {name} has no fields object")))?;
            let mut members = Vec::with_capacity(fields.len());
            for (fname, f) in fields {
                let what = format!("{name}.{fname}");
                let f = self.object(f, &what)?;
                let offset = self.uint(f.get("offset"), &format!("{what} offset"))?;
                let anonymous = f.get("anonymous").and_then(Value::as_bool).unwrap_or(false);
                let desc = f
                    .get("type")
                    .ok_or_else(|| self.bad(format!("{what} has no type")))?;
                let bit_base = offset
                    .checked_mul(8)
                    .ok_or_else(|| self.bad(format!("{what} offset overflows")))?;
                let (ty, bit_offset, bitfield_size) = if desc.get("kind").and_then(Value::as_str)
                    == Some("bitfield")
                {
                    let pos =
                        self.uint(desc.get("bit_position"), &format!("{what} bit_position"))?;
                    let len = self.uint(desc.get("bit_length"), &format!("{what} bit_length"))?;
                    let inner = desc
                        .get("type")
                        .ok_or_else(|| self.bad(format!("{what} bitfield has no type")))?;
                    let ty = self.descriptor(inner, &what, 0)?;
                    let len = u32::try_from(len)
                        .ok()
                        .filter(|&l| l <= 128)
                        .ok_or_else(|| self.bad(format!("{what} bit_length {len}")))?;
                    (ty, bit_base.saturating_add(pos), len)
                } else {
                    (self.descriptor(desc, &what, 0)?, bit_base, 0)
                };
                let member_name = if anonymous { "" } else { fname.as_str() };
                members.push(Member {
                    name: self.b.name(member_name),
                    ty,
                    bit_offset,
                    bitfield_size,
                });
            }
            members.sort_by_key(|m| m.bit_offset);
            let span = self.b.members(members);
            let size = self.uint(ut.get("size"), "size")?;
            let n = self.b.name(name);
            let c = Composite {
                name: n,
                size,
                members: span,
            };
            let t = match ut.get("kind").and_then(Value::as_str) {
                Some("union") => Type::Union(c),
                _ => Type::Struct(c),
            };
            self.b.set(id, t);
        }

        let mut syms = Vec::with_capacity(symbols.len());
        let mut banner = None;
        for (name, s) in symbols {
            let s = self.object(s, &format!("symbol {name}"))?;
            let address = s
                .get("address")
                .and_then(|a| a.as_u64().or_else(|| a.as_f64().map(|f| f as u64)))
                .ok_or_else(|| self.bad(format!("symbol {name} has no address")))?;
            if name == "linux_banner"
                && let Some(data) = s.get("constant_data").and_then(Value::as_str)
            {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| self.bad(format!("linux_banner constant_data: {e}")))?;
                banner = Some(
                    String::from_utf8_lossy(&bytes)
                        .trim_end_matches('\0')
                        .to_owned(),
                );
            }
            syms.push(Symbol {
                name: name.clone(),
                address,
                kind: None,
            });
        }

        let meta = root.get("metadata").and_then(Value::as_object);
        let mut metadata = Metadata {
            sources: vec![format!("isf: {}", self.source)],
            ..Metadata::default()
        };
        if let Some(m) = meta {
            if let Some(w) = m.get("windows") {
                metadata.os = OsKind::Windows;
                if let Some(pdb) = w.get("pdb") {
                    let guid = pdb.get("GUID").and_then(Value::as_str).unwrap_or("");
                    let age = pdb.get("age").and_then(Value::as_u64).unwrap_or(0);
                    metadata.pdb = parse_guid(guid).map(|guid| PdbId {
                        guid,
                        age: age as u32,
                    });
                }
            } else if m.contains_key("linux") {
                metadata.os = OsKind::Linux;
            }
        }
        if banner.is_some() {
            metadata.os = OsKind::Linux;
            metadata.kernel_release = banner
                .as_deref()
                .and_then(crate::image::release_from_banner)
                .map(str::to_owned);
            metadata.banner = banner;
        }
        let source = self.source.to_owned();
        let types = self.b.build().map_err(|what| ProfileError::Isf {
            source_name: source,
            what: format!("inconsistent types: {what}"),
        })?;
        Ok(Profile::new(metadata, SymbolTable::new(syms), types))
    }

    fn derived(&mut self, kind: u8, target: TypeId, count: u32) -> TypeId {
        if let Some(id) = self.derived.get(&(kind, target, count)) {
            return *id;
        }
        let t = if kind == 0 {
            Type::Pointer { target }
        } else {
            Type::Array {
                element: target,
                index: TypeId::VOID,
                count,
            }
        };
        let id = self.b.push(t);
        self.derived.insert((kind, target, count), id);
        id
    }

    fn descriptor(&mut self, d: &Value, what: &str, depth: usize) -> Result<TypeId> {
        if depth > MAX_DESC_DEPTH {
            return Err(self.bad(format!("{what}: type descriptor nested too deep")));
        }
        let kind = d
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(format!("{what}: type descriptor without kind")))?;
        let name = || d.get("name").and_then(Value::as_str).unwrap_or("");
        match kind {
            "base" => self
                .base
                .get(name())
                .copied()
                .ok_or_else(|| self.bad(format!("{what}: unknown base type {:?}", name()))),
            "struct" | "union" | "class" => {
                let n = name().to_owned();
                if let Some(id) = self.user.get(&n) {
                    return Ok(*id);
                }
                // Referenced but never defined (an opaque type): a forward declaration.
                let nm = self.b.name(&n);
                let id = self.b.push(Type::Fwd {
                    name: nm,
                    is_union: kind == "union",
                });
                self.user.insert(n, id);
                Ok(id)
            }
            "enum" => self
                .enums
                .get(name())
                .copied()
                .ok_or_else(|| self.bad(format!("{what}: unknown enum {:?}", name()))),
            "pointer" => {
                let sub = d
                    .get("subtype")
                    .ok_or_else(|| self.bad(format!("{what}: pointer without subtype")))?;
                let target = self.descriptor(sub, what, depth + 1)?;
                Ok(self.derived(0, target, 0))
            }
            "array" => {
                let sub = d
                    .get("subtype")
                    .ok_or_else(|| self.bad(format!("{what}: array without subtype")))?;
                let count = d
                    .get("count")
                    .and_then(Value::as_u64)
                    .and_then(|c| u32::try_from(c).ok())
                    .ok_or_else(|| self.bad(format!("{what}: array without count")))?;
                let target = self.descriptor(sub, what, depth + 1)?;
                Ok(self.derived(1, target, count))
            }
            "function" => {
                if let Some(f) = self.function {
                    return Ok(f);
                }
                let params = self.b.params([]);
                let f = self.b.push(Type::FuncProto {
                    ret: TypeId::VOID,
                    params,
                });
                self.function = Some(f);
                Ok(f)
            }
            "bitfield" => {
                let inner = d
                    .get("type")
                    .ok_or_else(|| self.bad(format!("{what}: bitfield without type")))?;
                self.descriptor(inner, what, depth + 1)
            }
            other => Err(self.bad(format!("{what}: unknown descriptor kind {other:?}"))),
        }
    }
}

fn parse_guid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if hex.len() != 32 {
        return None;
    }
    let mut g = [0u8; 16];
    for (i, b) in g.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(g)
}

/// Well-known Linux variables whose type Volatility needs on the symbol (BTF has no types
/// for ordinary globals): name → struct name.
pub const LINUX_TYPED_SYMBOLS: &[(&str, &str)] = &[
    ("init_task", "task_struct"),
    ("init_mm", "mm_struct"),
    ("init_nsproxy", "nsproxy"),
    ("init_uts_ns", "uts_namespace"),
    ("init_pid_ns", "pid_namespace"),
    ("init_net", "net"),
    ("modules", "list_head"),
    ("super_blocks", "list_head"),
    ("init_files", "files_struct"),
    ("init_fs", "fs_struct"),
];

/// Options for [`export_isf`].
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// `metadata.producer.name`.
    pub producer: String,
    /// `metadata.producer.version`.
    pub producer_version: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            producer: "vmi-profile".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

struct Exporter<'a> {
    types: &'a Types,
    /// Names given to anonymous structs/unions/enums.
    anon: HashMap<TypeId, String>,
    base_types: Map<String, Value>,
    /// Forward-declared types never defined: exported as empty user types.
    opaque: HashMap<String, &'static str>,
}

impl Exporter<'_> {
    fn composite_name(&mut self, id: TypeId) -> String {
        if let Some(n) = self.types.name_of(id) {
            return n.to_owned();
        }
        let kind = match self.types.get(id) {
            Some(Type::Union(_)) => "union",
            Some(Type::Enum { .. }) => "enum",
            _ => "struct",
        };
        self.anon
            .entry(id)
            .or_insert_with(|| format!("__anon_{kind}_{}", id.0))
            .clone()
    }

    fn base_entry(&mut self, name: &str, size: u64, signed: bool, kind: &str) {
        self.base_types.entry(name.to_owned()).or_insert_with(
            || json!({"size": size, "signed": signed, "kind": kind, "endian": "little"}),
        );
    }

    fn descriptor(&mut self, id: TypeId, depth: usize) -> Value {
        let void = json!({"kind": "base", "name": "void"});
        if depth > MAX_DESC_DEPTH {
            return void;
        }
        let Some(resolved) = self.types.resolve(id) else {
            return void;
        };
        let Some(t) = self.types.get(resolved).copied() else {
            return void;
        };
        match t {
            Type::Void
            | Type::Fwd { .. }
            | Type::Var { .. }
            | Type::DataSec { .. }
            | Type::DeclTag { .. } => {
                if let Type::Fwd { name, is_union } = t
                    && !name.is_anon()
                {
                    let n = self.types.str(name).to_owned();
                    if let Some(full) = self.types.find_composite(&n) {
                        return self.descriptor(full, depth + 1);
                    }
                    let kind = if is_union { "union" } else { "struct" };
                    self.opaque.insert(n.clone(), kind);
                    return json!({"kind": kind, "name": n});
                }
                void
            }
            Type::Int {
                name,
                size,
                encoding,
                ..
            } => {
                let n = self.types.str(name).to_owned();
                let kind = if encoding.bool {
                    "bool"
                } else if encoding.char {
                    "char"
                } else {
                    "int"
                };
                self.base_entry(&n, u64::from(size), encoding.signed, kind);
                json!({"kind": "base", "name": n})
            }
            Type::Float { name, size } => {
                let n = self.types.str(name).to_owned();
                self.base_entry(&n, u64::from(size), true, "float");
                json!({"kind": "base", "name": n})
            }
            Type::Pointer { target } => {
                json!({"kind": "pointer", "subtype": self.descriptor(target, depth + 1)})
            }
            Type::Array { element, count, .. } => json!({
                "kind": "array",
                "count": count,
                "subtype": self.descriptor(element, depth + 1),
            }),
            Type::Struct(_) => json!({"kind": "struct", "name": self.composite_name(resolved)}),
            Type::Union(_) => json!({"kind": "union", "name": self.composite_name(resolved)}),
            Type::Enum { .. } => json!({"kind": "enum", "name": self.composite_name(resolved)}),
            Type::Func { .. } | Type::FuncProto { .. } => json!({"kind": "function"}),
            _ => void,
        }
    }
}

fn enum_base(size: u32, signed: bool) -> (&'static str, &'static str) {
    // (name, kind) of a base type of that size/sign, as Volatility's natives know them.
    match (size, signed) {
        (1, true) => ("char", "char"),
        (1, false) => ("unsigned char", "char"),
        (2, true) => ("short int", "int"),
        (2, false) => ("short unsigned int", "int"),
        (8, true) => ("long int", "int"),
        (8, false) => ("long unsigned int", "int"),
        (_, true) => ("int", "int"),
        (_, false) => ("unsigned int", "int"),
    }
}

/// Exports a profile as Volatility 3 ISF (format 6.2.0). For Linux, `linux_banner` carries
/// the banner as `constant_data` so Volatility can match it against memory, and the
/// variables in [`LINUX_TYPED_SYMBOLS`] (plus every BTF `VAR`) carry their types.
pub fn export_isf(profile: &Profile, options: &ExportOptions) -> Value {
    let types = &profile.types;
    let mut ex = Exporter {
        types,
        anon: HashMap::new(),
        base_types: Map::new(),
        opaque: HashMap::new(),
    };
    ex.base_entry("void", 0, false, "void");
    ex.base_entry("pointer", 8, false, "int");

    let mut user_types = Map::new();
    let mut enums = Map::new();
    // Named composites first, then anonymous ones reached from them.
    let mut queue: Vec<TypeId> = types
        .iter()
        .filter(|(_, t)| matches!(t, Type::Struct(_) | Type::Union(_) | Type::Enum { .. }))
        .map(|(id, _)| id)
        .collect();
    let mut done = std::collections::HashSet::new();
    while let Some(id) = queue.pop() {
        if !done.insert(id) {
            continue;
        }
        let Some(t) = types.get(id).copied() else {
            continue;
        };
        let name = ex.composite_name(id);
        match t {
            Type::Struct(c) | Type::Union(c) => {
                // The first complete definition of a name wins (like Types' own index).
                if types.name_of(id).is_some() && types.find_composite(&name) != Some(id) {
                    continue;
                }
                let mut fields = Map::new();
                for (i, m) in types.members(&c).iter().enumerate() {
                    let mut desc = ex.descriptor(m.ty, 0);
                    let anonymous = m.name.is_anon();
                    let fname = if anonymous {
                        format!("__anon_member_{i}")
                    } else {
                        types.str(m.name).to_owned()
                    };
                    let mut offset = m.bit_offset / 8;
                    if m.bitfield_size != 0 {
                        // Volatility reads the bitfield's storage unit at `offset` (aligned
                        // to the base type's size) and shifts by `bit_position`.
                        let unit = types.size_of(m.ty).filter(|&s| s > 0).unwrap_or(1);
                        let start = (m.bit_offset / (unit * 8)) * unit;
                        let pos = m.bit_offset - start * 8;
                        let (start, pos) = if pos + u64::from(m.bitfield_size) <= unit * 8 {
                            (start, pos)
                        } else {
                            (m.bit_offset / 8, m.bit_offset % 8)
                        };
                        offset = start;
                        desc = json!({
                            "kind": "bitfield",
                            "bit_position": pos,
                            "bit_length": m.bitfield_size,
                            "type": desc,
                        });
                    }
                    let mut field = Map::new();
                    field.insert("type".into(), desc);
                    field.insert("offset".into(), json!(offset));
                    if anonymous {
                        field.insert("anonymous".into(), json!(true));
                    }
                    fields.insert(fname, Value::Object(field));
                    if let Some(inner) = types.resolve(m.ty)
                        && types.name_of(inner).is_none()
                    {
                        queue.push(inner);
                    }
                }
                let kind = if matches!(t, Type::Union(_)) {
                    "union"
                } else {
                    "struct"
                };
                user_types.insert(
                    name,
                    json!({"kind": kind, "size": c.size, "fields": Value::Object(fields)}),
                );
            }
            Type::Enum {
                size,
                signed,
                values,
                ..
            } => {
                if types.name_of(id).is_some() && types.find_enum(&name) != Some(id) {
                    continue;
                }
                let (base, kind) = enum_base(size, signed);
                ex.base_entry(base, u64::from(size), signed, kind);
                let mut constants = Map::new();
                for e in types.enumerators(values) {
                    let v = if signed {
                        json!(e.value)
                    } else {
                        json!(e.value as u64)
                    };
                    constants.insert(types.str(e.name).to_owned(), v);
                }
                enums.insert(
                    name,
                    json!({"size": size, "base": base, "constants": Value::Object(constants)}),
                );
            }
            _ => {}
        }
    }

    // Types of variables: BTF VARs (per-cpu variables) and the well-known globals.
    let mut var_types: HashMap<String, Value> = HashMap::new();
    for (_, t) in types.iter() {
        if let Type::Var { name, ty, .. } = *t {
            let d = ex.descriptor(ty, 0);
            var_types.insert(types.str(name).to_owned(), d);
        }
    }
    for (sym, st) in LINUX_TYPED_SYMBOLS {
        if let Some(id) = types.find_composite(st) {
            let kind = if matches!(types.get(id), Some(Type::Union(_))) {
                "union"
            } else {
                "struct"
            };
            var_types.insert((*sym).to_owned(), json!({"kind": kind, "name": st}));
        }
    }
    let mut symbols = Map::new();
    for s in profile.symbols.iter() {
        if symbols.contains_key(&s.name) {
            continue;
        }
        let mut entry = Map::new();
        entry.insert("address".into(), json!(s.address));
        if let Some(t) = var_types.get(&s.name) {
            entry.insert("type".into(), t.clone());
        }
        if s.name == "linux_banner"
            && let Some(b) = &profile.metadata.banner
        {
            entry.insert(
                "constant_data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(b.as_bytes())),
            );
        }
        symbols.insert(s.name.clone(), Value::Object(entry));
    }

    for (name, kind) in std::mem::take(&mut ex.opaque) {
        user_types
            .entry(name)
            .or_insert_with(|| json!({"kind": kind, "size": 0, "fields": {}}));
    }

    let hash = |data: &[u8]| -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let sym_hash = hash(crate::sysmap::write_system_map(&profile.symbols).as_bytes());
    let type_hash = hash(&postcard::to_stdvec(types).unwrap_or_default());
    let source_name = profile
        .metadata
        .sources
        .first()
        .cloned()
        .unwrap_or_else(|| "vmi-profile".into());
    let mut metadata = Map::new();
    metadata.insert("format".into(), json!("6.2.0"));
    metadata.insert(
        "producer".into(),
        json!({"name": options.producer, "version": options.producer_version}),
    );
    match profile.metadata.os {
        OsKind::Windows => {
            if let Some(pdb) = profile.metadata.pdb {
                let guid: String = pdb.guid.iter().map(|b| format!("{b:02X}")).collect();
                metadata.insert(
                    "windows".into(),
                    json!({"pdb": {"GUID": guid, "age": pdb.age, "database": "", "machine_type": 34404}}),
                );
            }
        }
        _ => {
            metadata.insert(
                "linux".into(),
                json!({
                    "symbols": [{"kind": "symtab", "name": source_name, "hash_type": "sha256", "hash_value": sym_hash}],
                    "types": [{"kind": "dwarf", "name": source_name, "hash_type": "sha256", "hash_value": type_hash}],
                }),
            );
        }
    }
    json!({
        "metadata": Value::Object(metadata),
        "base_types": Value::Object(ex.base_types),
        "user_types": Value::Object(user_types),
        "enums": Value::Object(enums),
        "symbols": Value::Object(symbols),
    })
}

/// Writes [`export_isf`] output as JSON to a file.
pub fn write_isf(profile: &Profile, options: &ExportOptions, path: &Path) -> Result<()> {
    let v = export_isf(profile, options);
    let f = std::fs::File::create(path).map_err(|e| ProfileError::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    serde_json::to_writer(&mut w, &v).map_err(|e| ProfileError::io(path, e.into()))?;
    std::io::Write::flush(&mut w).map_err(|e| ProfileError::io(path, e))
}
