//! Microsoft PDB loader: public and global data symbols (as RVAs), types (TPI stream) and
//! identity (GUID and age), into a [`Profile`] with [`OsKind::Windows`].
//!
//! Parsing of the MSF container and the CodeView records is done by the `pdb2` crate (the
//! maintained fork of `pdb`); this module lowers its records into [`Types`](crate::types::Types):
//!
//! | CodeView | profile |
//! |---|---|
//! | `LF_STRUCTURE`/`LF_CLASS`/`LF_INTERFACE` | [`Type::Struct`] (base classes become anonymous members, so their fields are searchable) |
//! | `LF_UNION` | [`Type::Union`] |
//! | `LF_ENUM` + `LF_ENUMERATE` | [`Type::Enum`] |
//! | `LF_BITFIELD` member | member with `bit_offset` = byte offset × 8 + position and `bitfield_size` |
//! | `LF_POINTER`, primitive with indirection | [`Type::Pointer`] |
//! | `LF_ARRAY` (sizes in bytes) | [`Type::Array`] with an element count |
//! | `LF_MODIFIER` | [`Type::Const`] / [`Type::Volatile`] |
//! | `LF_PROCEDURE`/`LF_MFUNCTION` | [`Type::FuncProto`] |
//! | `S_UDT` whose name differs from its type's | [`Type::Typedef`] |
//! | forward references | resolved to the full definition with the same (unique) name |
//!
//! Records `pdb2` cannot parse, and kinds without a C meaning (vtable shapes, method lists),
//! become `void`; the loader never panics on a malformed file: `pdb2` has a few internal
//! assertions, so parsing also runs under `catch_unwind` and a panic becomes
//! [`ProfileError::Pdb`].

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::path::Path;

use pdb2::FallibleIterator;

use crate::error::{ProfileError, Result};
use crate::image::read_file;
use crate::profile::{Metadata, OsKind, PdbId, Profile};
use crate::symbols::{Symbol, SymbolTable};
use crate::types::{Composite, Enumerator, IntEncoding, Member, Param, Type, TypeId, TypesBuilder};

/// Largest PDB file accepted (the biggest Windows kernel PDBs are about 30 MB).
pub const MAX_PDB: u64 = 1 << 30;
/// Longest chain of field-list continuations followed.
const MAX_CONTINUATIONS: usize = 4096;
/// Deepest nesting followed when computing a size straight from CodeView records.
const MAX_SIZE_DEPTH: usize = 64;
/// First non-primitive type index.
const FIRST_TI: u32 = 0x1000;

/// Loads a PDB file.
pub fn load_pdb(path: &Path) -> Result<Profile> {
    let meta = std::fs::metadata(path).map_err(|e| ProfileError::io(path, e))?;
    if meta.len() > MAX_PDB {
        return Err(ProfileError::TooLarge {
            source_name: path.display().to_string(),
            what: "pdb file",
            size: meta.len(),
            limit: MAX_PDB,
        });
    }
    let bytes = read_file(path)?;
    parse_pdb(&bytes, &path.display().to_string())
}

/// Parses PDB bytes; `source` names the input in errors and in [`Metadata::sources`].
pub fn parse_pdb(bytes: &[u8], source: &str) -> Result<Profile> {
    let run = std::panic::catch_unwind(|| parse_inner(bytes, source));
    match run {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_owned());
            Err(pdb_err(source, format!("pdb parser failed: {msg}")))
        }
    }
}

/// Reads only the identity (GUID and age) of a PDB, without symbols or types.
pub fn pdb_id(bytes: &[u8], source: &str) -> Result<PdbId> {
    let run = std::panic::catch_unwind(|| {
        let mut pdb = pdb2::PDB::open(Cursor::new(bytes)).map_err(|e| pdb_err(source, e))?;
        read_id(&mut pdb, source)
    });
    run.unwrap_or_else(|_| Err(pdb_err(source, "pdb parser failed")))
}

fn pdb_err(source: &str, what: impl std::fmt::Display) -> ProfileError {
    ProfileError::Pdb {
        source_name: source.to_owned(),
        what: what.to_string(),
    }
}

fn read_id<'s, S: pdb2::Source<'s> + 's>(
    pdb: &mut pdb2::PDB<'s, S>,
    source: &str,
) -> Result<PdbId> {
    let info = pdb
        .pdb_information()
        .map_err(|e| pdb_err(source, format!("pdb information stream: {e}")))?;
    // The DBI stream's age is the one the linker writes into the image's CodeView record
    // (the info stream's may be higher after incremental updates); fall back to the latter.
    let dbi_age = pdb.debug_information().ok().and_then(|d| d.age());
    Ok(PdbId {
        guid: *info.guid.as_bytes(),
        age: dbi_age.unwrap_or(info.age),
    })
}

fn parse_inner(bytes: &[u8], source: &str) -> Result<Profile> {
    let mut pdb = pdb2::PDB::open(Cursor::new(bytes)).map_err(|e| pdb_err(source, e))?;
    let id = read_id(&mut pdb, source)?;

    let type_info = pdb
        .type_information()
        .map_err(|e| pdb_err(source, format!("type stream: {e}")))?;
    let mut records = HashMap::new();
    let mut iter = type_info.iter();
    loop {
        match iter.next() {
            Ok(Some(item)) => {
                // Kinds pdb2 does not implement stay unknown (lowered to void).
                if let Ok(data) = item.parse() {
                    records.insert(item.index().0, data);
                }
            }
            Ok(None) => break,
            Err(e) => return Err(pdb_err(source, format!("type stream: {e}"))),
        }
    }

    let address_map = pdb
        .address_map()
        .map_err(|e| pdb_err(source, format!("address map: {e}")))?;
    let globals = pdb
        .global_symbols()
        .map_err(|e| pdb_err(source, format!("global symbol stream: {e}")))?;
    let mut symbols = Vec::new();
    let mut data_symbols = Vec::new();
    let mut udts = Vec::new();
    let mut it = globals.iter();
    loop {
        let sym = match it.next() {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) => return Err(pdb_err(source, format!("global symbol stream: {e}"))),
        };
        match sym.parse() {
            Ok(pdb2::SymbolData::Public(p)) => {
                if let Some(rva) = p.offset.to_rva(&address_map) {
                    symbols.push(Symbol {
                        name: p.name.to_string().into_owned(),
                        address: u64::from(rva.0),
                        kind: Some(if p.function || p.code { 'T' } else { 'D' }),
                    });
                }
            }
            Ok(pdb2::SymbolData::Data(d)) => {
                if let Some(rva) = d.offset.to_rva(&address_map) {
                    data_symbols.push(Symbol {
                        name: d.name.to_string().into_owned(),
                        address: u64::from(rva.0),
                        kind: Some(if d.global { 'D' } else { 'd' }),
                    });
                }
            }
            Ok(pdb2::SymbolData::UserDefinedType(u)) => {
                udts.push((u.name.to_string().into_owned(), u.type_index.0));
            }
            _ => {}
        }
    }
    let mut table = SymbolTable::new(symbols);
    table.merge(&SymbolTable::new(data_symbols));

    let mut lower = Lowering::new(&records);
    lower.run();
    for (name, ti) in udts {
        let target = lower.id_for(ti);
        lower.drain();
        if lower.b_name_of(target).as_deref() != Some(name.as_str()) {
            let n = lower.b.name(&name);
            lower.b.push(Type::Typedef { name: n, target });
        }
    }
    let types = lower
        .b
        .build()
        .map_err(|e| pdb_err(source, format!("inconsistent types: {e}")))?;

    let metadata = Metadata {
        os: OsKind::Windows,
        pdb: Some(id),
        sources: vec![source.to_owned()],
        ..Metadata::default()
    };
    Ok(Profile::new(metadata, table, types))
}

/// Lowers CodeView records to [`Types`] with a work list (no recursion, so deep or cyclic
/// type graphs cannot overflow the stack).
struct Lowering<'r, 't> {
    records: &'r HashMap<u32, pdb2::TypeData<'t>>,
    b: TypesBuilder,
    ids: HashMap<u32, TypeId>,
    queue: VecDeque<(u32, TypeId)>,
    /// Full definitions by (unique) name, for forward references.
    definitions: HashMap<(u8, String), u32>,
    /// Type names as given to the builder, to compare with `S_UDT` names.
    names: HashMap<TypeId, String>,
}

impl<'r, 't> Lowering<'r, 't> {
    fn new(records: &'r HashMap<u32, pdb2::TypeData<'t>>) -> Self {
        let mut definitions = HashMap::new();
        let mut tis: Vec<u32> = records.keys().copied().collect();
        tis.sort_unstable();
        for ti in tis {
            if let Some((kind, key, false)) = records.get(&ti).and_then(tag_key) {
                definitions.entry((kind, key)).or_insert(ti);
            }
        }
        Self {
            records,
            b: TypesBuilder::new(),
            ids: HashMap::new(),
            queue: VecDeque::new(),
            definitions,
            names: HashMap::new(),
        }
    }

    /// Lowers every record, in type-index order (so ids follow the PDB's order).
    fn run(&mut self) {
        let mut tis: Vec<u32> = self.records.keys().copied().collect();
        tis.sort_unstable();
        for ti in tis {
            if matches!(
                self.records.get(&ti),
                Some(
                    pdb2::TypeData::FieldList(_)
                        | pdb2::TypeData::ArgumentList(_)
                        | pdb2::TypeData::MethodList(_)
                        | pdb2::TypeData::Member(_)
                        | pdb2::TypeData::Enumerate(_)
                        | pdb2::TypeData::Bitfield(_)
                )
            ) {
                continue;
            }
            self.id_for(ti);
            self.drain();
        }
    }

    fn b_name_of(&self, id: TypeId) -> Option<String> {
        self.names.get(&id).cloned()
    }

    /// The id standing for type index `ti` (a placeholder filled by [`drain`]).
    fn id_for(&mut self, ti: u32) -> TypeId {
        // T_NOTYPE and T_VOID are `void`.
        if ti == 0 || ti == 0x03 {
            return TypeId::VOID;
        }
        let ti = self.definition_of(ti);
        if let Some(id) = self.ids.get(&ti) {
            return *id;
        }
        let id = self.b.push(Type::Void);
        self.ids.insert(ti, id);
        self.queue.push_back((ti, id));
        id
    }

    /// For a forward reference, the type index of the full definition with the same name.
    fn definition_of(&self, ti: u32) -> u32 {
        match self.records.get(&ti).and_then(tag_key) {
            Some((kind, key, true)) => self.definitions.get(&(kind, key)).copied().unwrap_or(ti),
            _ => ti,
        }
    }

    fn drain(&mut self) {
        while let Some((ti, id)) = self.queue.pop_front() {
            let t = self.lower(ti, id);
            self.b.set(id, t);
        }
    }

    fn lower(&mut self, ti: u32, id: TypeId) -> Type {
        if ti < FIRST_TI {
            return self.primitive(ti);
        }
        let Some(rec) = self.records.get(&ti) else {
            return Type::Void;
        };
        match rec {
            pdb2::TypeData::Primitive(p) => self.primitive_type(p),
            pdb2::TypeData::Class(c) => {
                let name = c.name.to_string().into_owned();
                let n = if is_anonymous_tag(&name) {
                    crate::types::Name::ANON
                } else {
                    self.b.name(&name)
                };
                self.names.insert(id, name);
                let members = match c.fields {
                    Some(f) if !c.properties.forward_reference() => self.members(f.0),
                    _ => self.b.members([]),
                };
                Type::Struct(Composite {
                    name: n,
                    size: c.size,
                    members,
                })
            }
            pdb2::TypeData::Union(u) => {
                let name = u.name.to_string().into_owned();
                let n = if is_anonymous_tag(&name) {
                    crate::types::Name::ANON
                } else {
                    self.b.name(&name)
                };
                self.names.insert(id, name);
                let members = if u.properties.forward_reference() {
                    self.b.members([])
                } else {
                    self.members(u.fields.0)
                };
                Type::Union(Composite {
                    name: n,
                    size: u.size,
                    members,
                })
            }
            pdb2::TypeData::Enumeration(e) => {
                let name = e.name.to_string().into_owned();
                let n = if is_anonymous_tag(&name) {
                    crate::types::Name::ANON
                } else {
                    self.b.name(&name)
                };
                self.names.insert(id, name);
                let size = self.size_of(e.underlying_type.0, 0).unwrap_or(4) as u32;
                let signed = self.signed(e.underlying_type.0);
                let mut values = Vec::new();
                if !e.properties.forward_reference() {
                    for f in self.field_list(e.fields.0) {
                        if let pdb2::TypeData::Enumerate(en) = f {
                            let name = self.b.name(&en.name.to_string());
                            values.push(Enumerator {
                                name,
                                value: variant(en.value),
                            });
                        }
                    }
                }
                let values = self.b.enumerators(values);
                Type::Enum {
                    name: n,
                    size,
                    signed,
                    values,
                }
            }
            pdb2::TypeData::Pointer(p) => Type::Pointer {
                target: self.id_for(p.underlying_type.0),
            },
            pdb2::TypeData::Modifier(m) => {
                let mut target = self.id_for(m.underlying_type.0);
                if m.volatile && m.constant {
                    target = self.b.push(Type::Volatile { target });
                    Type::Const { target }
                } else if m.volatile {
                    Type::Volatile { target }
                } else if m.constant {
                    Type::Const { target }
                } else {
                    Type::Typedef {
                        name: crate::types::Name::ANON,
                        target,
                    }
                }
            }
            pdb2::TypeData::Array(a) => {
                let element = self.id_for(a.element_type.0);
                let index = self.id_for(a.indexing_type.0);
                let bytes = a.dimensions.last().copied().unwrap_or(0);
                let elem = self.size_of(a.element_type.0, 0).unwrap_or(0);
                let count = u64::from(bytes).checked_div(elem).unwrap_or(0) as u32;
                Type::Array {
                    element,
                    index,
                    count,
                }
            }
            pdb2::TypeData::Alias(a) => {
                let name = a.name.to_string().into_owned();
                let n = self.b.name(&name);
                self.names.insert(id, name);
                Type::Typedef {
                    name: n,
                    target: self.id_for(a.underlying_type.0),
                }
            }
            pdb2::TypeData::Procedure(p) => {
                let ret = p
                    .return_type
                    .map(|t| self.id_for(t.0))
                    .unwrap_or(TypeId::VOID);
                self.proto(ret, p.argument_list.0)
            }
            pdb2::TypeData::MemberFunction(p) => {
                let ret = self.id_for(p.return_type.0);
                self.proto(ret, p.argument_list.0)
            }
            pdb2::TypeData::Bitfield(bf) => {
                // Only meaningful inside a member; alone it is its underlying type.
                Type::Typedef {
                    name: crate::types::Name::ANON,
                    target: self.id_for(bf.underlying_type.0),
                }
            }
            _ => Type::Void,
        }
    }

    fn proto(&mut self, ret: TypeId, args: u32) -> Type {
        let mut params = Vec::new();
        if let Some(pdb2::TypeData::ArgumentList(list)) = self.records.get(&args) {
            for a in &list.arguments {
                params.push(Param {
                    name: crate::types::Name::ANON,
                    ty: self.id_for(a.0),
                });
            }
        }
        let params = self.b.params(params);
        Type::FuncProto { ret, params }
    }

    /// The entries of a field list and its continuations (bounded, cycle-safe).
    fn field_list(&self, mut ti: u32) -> Vec<&'r pdb2::TypeData<'t>> {
        let mut out = Vec::new();
        for _ in 0..MAX_CONTINUATIONS {
            let Some(pdb2::TypeData::FieldList(list)) = self.records.get(&ti) else {
                break;
            };
            out.extend(list.fields.iter());
            match list.continuation {
                Some(next) if next.0 > ti => ti = next.0,
                _ => break,
            }
        }
        out
    }

    fn members(&mut self, fields: u32) -> crate::types::Span {
        let mut out = Vec::new();
        for f in self.field_list(fields) {
            match f {
                pdb2::TypeData::Member(m) => {
                    let name = self.b.name(&m.name.to_string());
                    let byte_bits = m.offset.saturating_mul(8);
                    let member = match self.records.get(&m.field_type.0) {
                        Some(pdb2::TypeData::Bitfield(bf)) => Member {
                            name,
                            ty: self.id_for(bf.underlying_type.0),
                            bit_offset: byte_bits.saturating_add(u64::from(bf.position)),
                            bitfield_size: u32::from(bf.length),
                        },
                        _ => Member {
                            name,
                            ty: self.id_for(m.field_type.0),
                            bit_offset: byte_bits,
                            bitfield_size: 0,
                        },
                    };
                    out.push(member);
                }
                pdb2::TypeData::BaseClass(bc) => out.push(Member {
                    name: crate::types::Name::ANON,
                    ty: self.id_for(bc.base_class.0),
                    bit_offset: u64::from(bc.offset).saturating_mul(8),
                    bitfield_size: 0,
                }),
                _ => {}
            }
        }
        self.b.members(out)
    }

    /// Size in bytes computed from the records (arrays need it before their element is
    /// lowered).
    fn size_of(&self, ti: u32, depth: usize) -> Option<u64> {
        if depth > MAX_SIZE_DEPTH {
            return None;
        }
        if ti < FIRST_TI {
            return match (ti >> 8) & 0xf {
                0 => primitive_info(ti).map(|(_, size, _, _)| u64::from(size)),
                1..=3 => Some(2),
                4 | 5 => Some(4),
                _ => Some(8),
            };
        }
        match self.records.get(&self.definition_of(ti))? {
            pdb2::TypeData::Primitive(p) => {
                if p.indirection.is_some() {
                    Some(8)
                } else {
                    kind_info(p.kind).map(|(_, s, _, _)| u64::from(s))
                }
            }
            pdb2::TypeData::Class(c) => Some(c.size),
            pdb2::TypeData::Union(u) => Some(u.size),
            pdb2::TypeData::Enumeration(e) => self.size_of(e.underlying_type.0, depth + 1),
            pdb2::TypeData::Pointer(p) => {
                // Bits 13..18 of the attributes give the size; pdb2 derives it from the
                // kind otherwise. x64 is the default.
                let s = p.attributes.size();
                Some(if s == 0 { 8 } else { u64::from(s) })
            }
            pdb2::TypeData::Modifier(m) => self.size_of(m.underlying_type.0, depth + 1),
            pdb2::TypeData::Alias(a) => self.size_of(a.underlying_type.0, depth + 1),
            pdb2::TypeData::Array(a) => a.dimensions.last().map(|&d| u64::from(d)),
            pdb2::TypeData::Bitfield(b) => self.size_of(b.underlying_type.0, depth + 1),
            _ => None,
        }
    }

    fn signed(&self, ti: u32) -> bool {
        primitive_info(ti).is_some_and(|(_, _, enc, _)| enc.signed)
    }

    fn primitive(&mut self, ti: u32) -> Type {
        // Bits 8..11 give the pointer mode: 0 is a direct value.
        if ti & 0x0f00 != 0 {
            return Type::Pointer {
                target: self.id_for(ti & 0xff),
            };
        }
        self.scalar(primitive_info(ti))
    }

    fn primitive_type(&mut self, p: &pdb2::PrimitiveType) -> Type {
        if p.indirection.is_some() {
            return Type::Pointer {
                target: TypeId::VOID,
            };
        }
        self.scalar(kind_info(p.kind))
    }

    /// The integer or float type a primitive's `(name, size, encoding, float)` describes;
    /// `None` is `void`.
    fn scalar(&mut self, info: Option<(&'static str, u32, IntEncoding, bool)>) -> Type {
        let Some((name, size, encoding, float)) = info else {
            return Type::Void;
        };
        let name = self.b.name(name);
        if float {
            Type::Float { name, size }
        } else {
            Type::Int {
                name,
                size,
                encoding,
                bits: (size * 8).min(255) as u8,
                bit_offset: 0,
            }
        }
    }
}

/// MSVC's names for anonymous structs, unions and enums (`<unnamed-tag>`,
/// `<anonymous-tag>`, `<unnamed-enum-...>`, `__unnamed`) become anonymous names, so their
/// members are searchable through the parent and exports treat them as anonymous.
fn is_anonymous_tag(name: &str) -> bool {
    (name.starts_with('<') && name.ends_with('>')) || name == "__unnamed"
}

/// (kind tag, name, is forward reference) of a struct, union or enum record; `None` for
/// anonymous ones, which forward references never resolve to.
fn tag_key(t: &pdb2::TypeData<'_>) -> Option<(u8, String, bool)> {
    let pick = |name: &pdb2::RawString<'_>, unique: &Option<pdb2::RawString<'_>>| {
        unique.unwrap_or(*name).to_string().into_owned()
    };
    if t.name().is_some_and(|n| is_anonymous_tag(&n.to_string())) {
        return None;
    }
    match t {
        pdb2::TypeData::Class(c) => Some((
            0,
            pick(&c.name, &c.unique_name),
            c.properties.forward_reference(),
        )),
        pdb2::TypeData::Union(u) => Some((
            1,
            pick(&u.name, &u.unique_name),
            u.properties.forward_reference(),
        )),
        pdb2::TypeData::Enumeration(e) => Some((
            2,
            pick(&e.name, &e.unique_name),
            e.properties.forward_reference(),
        )),
        _ => None,
    }
}

fn variant(v: pdb2::Variant) -> i64 {
    match v {
        pdb2::Variant::U8(x) => i64::from(x),
        pdb2::Variant::U16(x) => i64::from(x),
        pdb2::Variant::U32(x) => i64::from(x),
        pdb2::Variant::U64(x) => x as i64,
        pdb2::Variant::I8(x) => i64::from(x),
        pdb2::Variant::I16(x) => i64::from(x),
        pdb2::Variant::I32(x) => i64::from(x),
        pdb2::Variant::I64(x) => x,
    }
}

const fn int(signed: bool) -> IntEncoding {
    IntEncoding {
        signed,
        char: false,
        bool: false,
    }
}

const CHAR: IntEncoding = IntEncoding {
    signed: true,
    char: true,
    bool: false,
};
const BOOL: IntEncoding = IntEncoding {
    signed: false,
    char: false,
    bool: true,
};

/// Name, size, encoding and float flag of a primitive type index (low byte, no pointer
/// mode), in the spelling of Volatility's Windows ISF base types (LLP64: `long` is 4 bytes).
fn primitive_info(ti: u32) -> Option<(&'static str, u32, IntEncoding, bool)> {
    Some(match ti & 0xff {
        0x03 => return None, // void
        0x10 => ("char", 1, CHAR, false),
        0x20 => ("unsigned char", 1, int(false), false),
        0x68 => ("signed char", 1, CHAR, false),
        0x69 => ("unsigned char", 1, int(false), false),
        0x70 => ("char", 1, CHAR, false),
        0x71 => ("wchar_t", 2, int(false), false),
        0x7a => ("char16_t", 2, int(false), false),
        0x7b => ("char32_t", 4, int(false), false),
        0x7c => ("char8_t", 1, int(false), false),
        0x11 => ("short", 2, int(true), false),
        0x21 => ("unsigned short", 2, int(false), false),
        0x72 => ("short", 2, int(true), false),
        0x73 => ("unsigned short", 2, int(false), false),
        0x12 => ("long", 4, int(true), false),
        0x22 => ("unsigned long", 4, int(false), false),
        0x74 => ("int", 4, int(true), false),
        0x75 => ("unsigned int", 4, int(false), false),
        0x13 => ("long long", 8, int(true), false),
        0x23 => ("unsigned long long", 8, int(false), false),
        0x76 => ("long long", 8, int(true), false),
        0x77 => ("unsigned long long", 8, int(false), false),
        0x14 => ("__int128", 16, int(true), false),
        0x24 => ("unsigned __int128", 16, int(false), false),
        0x78 => ("__int128", 16, int(true), false),
        0x79 => ("unsigned __int128", 16, int(false), false),
        0x30 => ("bool", 1, BOOL, false),
        0x31 => ("bool16", 2, BOOL, false),
        0x32 => ("bool32", 4, BOOL, false),
        0x33 => ("bool64", 8, BOOL, false),
        0x46 => ("half", 2, int(false), true),
        0x40 => ("float", 4, int(false), true),
        0x41 => ("double", 8, int(false), true),
        0x42 => ("long double", 10, int(false), true),
        0x43 => ("__float128", 16, int(false), true),
        0x08 => ("HRESULT", 4, int(true), false),
        _ => return None,
    })
}

fn kind_info(kind: pdb2::PrimitiveKind) -> Option<(&'static str, u32, IntEncoding, bool)> {
    use pdb2::PrimitiveKind as K;
    let ti = match kind {
        K::Char | K::RChar => 0x70,
        K::UChar => 0x20,
        K::WChar => 0x71,
        K::RChar16 => 0x7a,
        K::RChar32 => 0x7b,
        K::Char8 => 0x7c,
        K::I8 => 0x68,
        K::U8 => 0x69,
        K::Short | K::I16 => 0x11,
        K::UShort | K::U16 => 0x21,
        K::Long => 0x12,
        K::ULong => 0x22,
        K::I32 => 0x74,
        K::U32 => 0x75,
        K::Quad | K::I64 => 0x13,
        K::UQuad | K::U64 => 0x23,
        K::Octa | K::I128 => 0x14,
        K::UOcta | K::U128 => 0x24,
        K::F16 => 0x46,
        K::F32 => 0x40,
        K::F64 => 0x41,
        K::F80 => 0x42,
        K::F128 => 0x43,
        K::Bool8 => 0x30,
        K::Bool16 => 0x31,
        K::Bool32 => 0x32,
        K::Bool64 => 0x33,
        K::HRESULT => 0x08,
        _ => return None,
    };
    primitive_info(ti)
}
