//! The type half of a profile: structs, unions, enums, typedefs, base types, pointers, arrays.
//!
//! The representation follows BTF closely (one [`Type`] per BTF type id, id 0 is `void`) so a
//! BTF blob maps onto it without translation, and other sources (ISF, DWARF) are lowered into
//! it. Names live in one string arena and members, enumerators and parameters in flat vectors,
//! so a whole kernel's types are a handful of allocations: cheap to build, to clone and to
//! load from the cache.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{ProfileError, Result};
use crate::index::NameIndex;

/// Bound on typedef/qualifier chains and anonymous-member nesting followed by lookups.
/// Real kernels need fewer than 10; hostile inputs with cycles stop here.
pub(crate) const MAX_DEPTH: usize = 64;

/// Index of a type in [`Types`]. `TypeId(0)` is `void`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TypeId(pub u32);

impl TypeId {
    /// The `void` type.
    pub const VOID: TypeId = TypeId(0);
}

/// A name in the string arena of [`Types`]; the empty name means anonymous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Name {
    off: u32,
    len: u32,
}

impl Name {
    /// The empty (anonymous) name.
    pub const ANON: Name = Name { off: 0, len: 0 };

    /// True for anonymous members and types.
    pub fn is_anon(self) -> bool {
        self.len == 0
    }
}

/// A range in one of the flat vectors of [`Types`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    pub(crate) fn new(start: usize, len: usize) -> Self {
        Self {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(0),
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start.saturating_add(self.len as usize)
    }

    /// Number of elements.
    pub fn len(self) -> usize {
        self.len as usize
    }

    /// True when the span holds nothing.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// Integer encoding flags (BTF `BTF_INT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntEncoding {
    /// Signed integer.
    pub signed: bool,
    /// Character type.
    pub char: bool,
    /// Boolean type.
    pub bool: bool,
}

/// A struct or union.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Composite {
    /// Tag name (anonymous if empty).
    pub name: Name,
    /// Size in bytes.
    pub size: u64,
    /// The members, see [`Types::members`].
    pub members: Span,
}

/// One member of a struct or union.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member name; anonymous members (nested anonymous structs/unions) have none.
    pub name: Name,
    /// Member type.
    pub ty: TypeId,
    /// Offset from the start of the containing type, in bits.
    pub bit_offset: u64,
    /// Width in bits for bitfields, 0 otherwise.
    pub bitfield_size: u32,
}

/// One constant of an enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enumerator {
    /// Constant name.
    pub name: Name,
    /// Value; read as unsigned (`value as u64`) when the enum is not signed.
    pub value: i64,
}

/// A function parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// Parameter name (may be empty).
    pub name: Name,
    /// Parameter type (`void` marks a variadic `...`).
    pub ty: TypeId,
}

/// A variable placed in a data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarSecInfo {
    /// The `Var` type.
    pub ty: TypeId,
    /// Offset in the section.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// One type. Mirrors the BTF kinds; `Void` is id 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Type {
    /// `void`.
    Void,
    /// Integer, char or bool.
    Int {
        /// Name, such as `unsigned int`.
        name: Name,
        /// Size in bytes.
        size: u32,
        /// Encoding flags.
        encoding: IntEncoding,
        /// Number of value bits.
        bits: u8,
        /// Bit offset of the value (legacy BTF bitfield encoding).
        bit_offset: u8,
    },
    /// Floating point.
    Float {
        /// Name, such as `double`.
        name: Name,
        /// Size in bytes.
        size: u32,
    },
    /// Pointer.
    Pointer {
        /// Pointed-to type.
        target: TypeId,
    },
    /// Array.
    Array {
        /// Element type.
        element: TypeId,
        /// Index type.
        index: TypeId,
        /// Number of elements.
        count: u32,
    },
    /// Struct.
    Struct(Composite),
    /// Union.
    Union(Composite),
    /// Enum (32- or 64-bit).
    Enum {
        /// Name.
        name: Name,
        /// Size in bytes.
        size: u32,
        /// Signed values.
        signed: bool,
        /// Constants, see [`Types::enumerators`].
        values: Span,
    },
    /// Forward declaration.
    Fwd {
        /// Name.
        name: Name,
        /// Forward-declared union (else struct).
        is_union: bool,
    },
    /// Typedef.
    Typedef {
        /// New name.
        name: Name,
        /// Aliased type.
        target: TypeId,
    },
    /// `volatile` qualifier.
    Volatile {
        /// Qualified type.
        target: TypeId,
    },
    /// `const` qualifier.
    Const {
        /// Qualified type.
        target: TypeId,
    },
    /// `restrict` qualifier.
    Restrict {
        /// Qualified type.
        target: TypeId,
    },
    /// Type tag (`btf_type_tag`).
    TypeTag {
        /// Tag value.
        name: Name,
        /// Tagged type.
        target: TypeId,
    },
    /// Function.
    Func {
        /// Function name.
        name: Name,
        /// Its `FuncProto`.
        proto: TypeId,
        /// Linkage (0 static, 1 global, 2 extern).
        linkage: u16,
    },
    /// Function prototype.
    FuncProto {
        /// Return type.
        ret: TypeId,
        /// Parameters, see [`Types::params`].
        params: Span,
    },
    /// Variable.
    Var {
        /// Name.
        name: Name,
        /// Type.
        ty: TypeId,
        /// Linkage.
        linkage: u32,
    },
    /// Data section.
    DataSec {
        /// Section name.
        name: Name,
        /// Section size.
        size: u32,
        /// Variables, see [`Types::var_infos`].
        vars: Span,
    },
    /// Declaration tag (`btf_decl_tag`).
    DeclTag {
        /// Tag value.
        name: Name,
        /// Tagged type.
        target: TypeId,
        /// Member/parameter index, -1 for the type itself.
        component: i32,
    },
}

impl Type {
    /// The name of a named type, if it has one.
    pub fn name(&self) -> Option<Name> {
        match *self {
            Type::Int { name, .. }
            | Type::Float { name, .. }
            | Type::Enum { name, .. }
            | Type::Fwd { name, .. }
            | Type::Typedef { name, .. }
            | Type::TypeTag { name, .. }
            | Type::Func { name, .. }
            | Type::Var { name, .. }
            | Type::DataSec { name, .. }
            | Type::DeclTag { name, .. } => Some(name),
            Type::Struct(c) | Type::Union(c) => Some(c.name),
            _ => None,
        }
    }

    /// All type ids this type refers to.
    pub(crate) fn refs(&self, out: &mut Vec<TypeId>) {
        match *self {
            Type::Pointer { target }
            | Type::Typedef { target, .. }
            | Type::Volatile { target }
            | Type::Const { target }
            | Type::Restrict { target }
            | Type::TypeTag { target, .. }
            | Type::DeclTag { target, .. } => out.push(target),
            Type::Array { element, index, .. } => {
                out.push(element);
                out.push(index);
            }
            Type::Func { proto, .. } => out.push(proto),
            Type::FuncProto { ret, .. } => out.push(ret),
            Type::Var { ty, .. } => out.push(ty),
            _ => {}
        }
    }
}

/// Where a field sits in a struct, as found by [`Types::field`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldInfo {
    /// Byte offset from the start of the outer struct (rounded down for bitfields).
    pub offset: u64,
    /// Bit offset from the start of the outer struct.
    pub bit_offset: u64,
    /// Size of the field's type in bytes, if the type has a size.
    pub size: Option<u64>,
    /// Width in bits for bitfields.
    pub bit_size: Option<u32>,
    /// The field's type.
    pub ty: TypeId,
}

impl FieldInfo {
    /// Bit position within the byte at [`offset`](Self::offset) (0 unless a bitfield).
    pub fn bit_in_byte(&self) -> u32 {
        (self.bit_offset % 8) as u32
    }
}

/// Name indexes, rebuilt after loading (never serialized).
#[derive(Clone, Debug, Default)]
struct TypeIndex {
    composites: NameIndex,
    enums: NameIndex,
    typedefs: NameIndex,
    base: NameIndex,
}

/// All types of a profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Types {
    strings: String,
    types: Vec<Type>,
    members: Vec<Member>,
    enumerators: Vec<Enumerator>,
    params: Vec<Param>,
    var_infos: Vec<VarSecInfo>,
    /// Built on the first name lookup, so a cache load does not pay for it.
    #[serde(skip)]
    index: OnceLock<TypeIndex>,
}

impl Default for Types {
    fn default() -> Self {
        TypesBuilder::new().finish()
    }
}

impl PartialEq for Types {
    fn eq(&self, other: &Self) -> bool {
        // Compare by content: the same types may sit at other arena offsets.
        self.types.len() == other.types.len()
            && (0..self.types.len()).all(|i| {
                let id = TypeId(i as u32);
                self.same_type(id, other, id)
            })
    }
}

impl Types {
    /// Number of type ids, `void` included.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when only `void` is present.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    /// The type with this id.
    pub fn get(&self, id: TypeId) -> Option<&Type> {
        self.types.get(id.0 as usize)
    }

    /// All types with their ids (id 0 is `void`).
    pub fn iter(&self) -> impl Iterator<Item = (TypeId, &Type)> {
        self.types
            .iter()
            .enumerate()
            .map(|(i, t)| (TypeId(i as u32), t))
    }

    /// The text of a name (empty for anonymous or out-of-range names).
    pub fn str(&self, name: Name) -> &str {
        let start = name.off as usize;
        self.strings
            .get(start..start.saturating_add(name.len as usize))
            .unwrap_or("")
    }

    /// The name of a type, `None` when it is anonymous or has no name.
    pub fn name_of(&self, id: TypeId) -> Option<&str> {
        let name = self.get(id)?.name()?;
        (!name.is_anon()).then(|| self.str(name))
    }

    /// Members of a struct or union.
    pub fn members(&self, c: &Composite) -> &[Member] {
        self.members.get(c.members.range()).unwrap_or(&[])
    }

    /// Constants of an enum.
    pub fn enumerators(&self, values: Span) -> &[Enumerator] {
        self.enumerators.get(values.range()).unwrap_or(&[])
    }

    /// Parameters of a function prototype.
    pub fn params(&self, params: Span) -> &[Param] {
        self.params.get(params.range()).unwrap_or(&[])
    }

    /// Variables of a data section.
    pub fn var_infos(&self, vars: Span) -> &[VarSecInfo] {
        self.var_infos.get(vars.range()).unwrap_or(&[])
    }

    /// Follows typedefs and qualifiers to the underlying type (bounded; a cycle gives `None`).
    pub fn resolve(&self, mut id: TypeId) -> Option<TypeId> {
        for _ in 0..MAX_DEPTH {
            match self.get(id)? {
                Type::Typedef { target, .. }
                | Type::Volatile { target }
                | Type::Const { target }
                | Type::Restrict { target }
                | Type::TypeTag { target, .. } => id = *target,
                _ => return Some(id),
            }
        }
        None
    }

    /// Size in bytes of a type; `None` for `void`, functions, forward declarations and cycles.
    pub fn size_of(&self, id: TypeId) -> Option<u64> {
        self.size_of_depth(id, 0)
    }

    fn size_of_depth(&self, id: TypeId, depth: usize) -> Option<u64> {
        if depth > MAX_DEPTH {
            return None;
        }
        let id = self.resolve(id)?;
        match *self.get(id)? {
            Type::Int { size, .. } | Type::Float { size, .. } | Type::Enum { size, .. } => {
                Some(u64::from(size))
            }
            Type::DataSec { size, .. } => Some(u64::from(size)),
            Type::Pointer { .. } => Some(8),
            Type::Struct(c) | Type::Union(c) => Some(c.size),
            Type::Array { element, count, .. } => self
                .size_of_depth(element, depth + 1)?
                .checked_mul(u64::from(count)),
            Type::Var { ty, .. } => self.size_of_depth(ty, depth + 1),
            _ => None,
        }
    }

    /// The struct or union named `name` (a typedef to one also works).
    pub fn find_composite(&self, name: &str) -> Option<TypeId> {
        if let Some(id) = self.index().composites.get(name, self.namer()) {
            return Some(TypeId(id));
        }
        let td = TypeId(self.index().typedefs.get(name, self.namer())?);
        let id = self.resolve(td)?;
        matches!(self.get(id)?, Type::Struct(_) | Type::Union(_)).then_some(id)
    }

    /// The enum named `name`.
    pub fn find_enum(&self, name: &str) -> Option<TypeId> {
        if let Some(id) = self.index().enums.get(name, self.namer()) {
            return Some(TypeId(id));
        }
        let id = self.resolve(TypeId(self.index().typedefs.get(name, self.namer())?))?;
        matches!(self.get(id)?, Type::Enum { .. }).then_some(id)
    }

    /// The typedef named `name`.
    pub fn find_typedef(&self, name: &str) -> Option<TypeId> {
        self.index().typedefs.get(name, self.namer()).map(TypeId)
    }

    /// The base (int or float) type named `name`.
    pub fn find_base(&self, name: &str) -> Option<TypeId> {
        self.index().base.get(name, self.namer()).map(TypeId)
    }

    /// Any named type: struct/union, enum, typedef or base type, in that order.
    pub fn find(&self, name: &str) -> Option<TypeId> {
        self.find_composite(name)
            .or_else(|| self.find_enum(name))
            .or_else(|| self.find_typedef(name))
            .or_else(|| self.find_base(name))
    }

    /// Size of the struct, union, enum, typedef or base type named `name`.
    pub fn type_size(&self, name: &str) -> Option<u64> {
        self.size_of(self.find(name)?)
    }

    /// The value of constant `constant` of enum `enum_name`.
    pub fn enum_value(&self, enum_name: &str, constant: &str) -> Option<i64> {
        let Type::Enum { values, .. } = *self.get(self.find_enum(enum_name)?)? else {
            return None;
        };
        self.enumerators(values)
            .iter()
            .find(|e| self.str(e.name) == constant)
            .map(|e| e.value)
    }

    /// Finds a field by dotted path (`"thread.sp"`), searching through anonymous nested
    /// structs and unions at every level and summing their offsets.
    pub fn field(&self, type_name: &str, path: &str) -> Result<FieldInfo> {
        let unknown_field = || ProfileError::UnknownField {
            type_name: type_name.to_owned(),
            path: path.to_owned(),
        };
        let mut cur = self
            .find_composite(type_name)
            .ok_or_else(|| ProfileError::UnknownType {
                name: type_name.to_owned(),
            })?;
        let mut bits = 0u64;
        let mut found: Option<Member> = None;
        for part in path.split('.') {
            let c = self.composite(cur).ok_or_else(unknown_field)?;
            let (off, member) = self.find_member(c, part).ok_or_else(unknown_field)?;
            bits = bits.checked_add(off).ok_or_else(unknown_field)?;
            cur = member.ty;
            found = Some(member);
        }
        let member = found.ok_or_else(unknown_field)?;
        Ok(FieldInfo {
            offset: bits / 8,
            bit_offset: bits,
            size: self.size_of(member.ty),
            bit_size: (member.bitfield_size != 0).then_some(member.bitfield_size),
            ty: member.ty,
        })
    }

    /// Byte offset of a field, see [`field`](Self::field).
    pub fn offset_of(&self, type_name: &str, path: &str) -> Result<u64> {
        self.field(type_name, path).map(|f| f.offset)
    }

    /// The struct or union behind `id` after resolving typedefs and qualifiers.
    pub fn composite(&self, id: TypeId) -> Option<&Composite> {
        match self.get(self.resolve(id)?)? {
            Type::Struct(c) | Type::Union(c) => Some(c),
            _ => None,
        }
    }

    /// Looks `name` up among the members of `c`, then (depth first, in member order) among
    /// the members of its anonymous struct/union members. Each composite type is searched at
    /// most once per lookup: a type whose search failed fails again wherever it recurs, and a
    /// type already on the path is a cycle. So the work is bounded by the number of members
    /// in the profile, even for a hostile type graph whose struct holds two anonymous
    /// members of its own type (without the memo, 2^depth steps).
    fn find_member(&self, c: &Composite, name: &str) -> Option<(u64, Member)> {
        let mut searched = std::collections::HashSet::new();
        self.find_member_in(c, name, 0, &mut searched)
    }

    fn find_member_in(
        &self,
        c: &Composite,
        name: &str,
        depth: usize,
        searched: &mut std::collections::HashSet<TypeId>,
    ) -> Option<(u64, Member)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let members = self.members(c);
        if let Some(m) = members.iter().find(|m| self.str(m.name) == name) {
            return Some((m.bit_offset, *m));
        }
        for m in members.iter().filter(|m| m.name.is_anon()) {
            let Some(id) = self.resolve(m.ty) else {
                continue;
            };
            if !searched.insert(id) {
                continue;
            }
            let Some(inner) = self.composite(id) else {
                continue;
            };
            if let Some((off, found)) = self.find_member_in(inner, name, depth + 1, searched) {
                return Some((m.bit_offset.checked_add(off)?, found));
            }
        }
        None
    }

    /// A C-like spelling of a type, for messages and exports (`struct list_head *`).
    pub fn describe(&self, id: TypeId) -> String {
        let mut out = String::new();
        self.describe_into(id, &mut out, 0);
        out
    }

    fn describe_into(&self, id: TypeId, out: &mut String, depth: usize) {
        if depth > MAX_DEPTH {
            out.push_str("...");
            return;
        }
        let Some(t) = self.get(id) else {
            out.push_str("<bad type>");
            return;
        };
        let named = |kw: &str, n: Name, out: &mut String| {
            out.push_str(kw);
            out.push_str(if n.is_anon() { "(anon)" } else { self.str(n) });
        };
        match *t {
            Type::Void => out.push_str("void"),
            Type::Int { name, .. } | Type::Float { name, .. } | Type::Typedef { name, .. } => {
                named("", name, out)
            }
            Type::Struct(c) => named("struct ", c.name, out),
            Type::Union(c) => named("union ", c.name, out),
            Type::Enum { name, .. } => named("enum ", name, out),
            Type::Fwd { name, is_union } => {
                named(if is_union { "union " } else { "struct " }, name, out)
            }
            Type::Pointer { target } => {
                self.describe_into(target, out, depth + 1);
                out.push_str(" *");
            }
            Type::Array { element, count, .. } => {
                self.describe_into(element, out, depth + 1);
                out.push_str(&format!("[{count}]"));
            }
            Type::Const { target } => {
                out.push_str("const ");
                self.describe_into(target, out, depth + 1);
            }
            Type::Volatile { target } => {
                out.push_str("volatile ");
                self.describe_into(target, out, depth + 1);
            }
            Type::Restrict { target } | Type::TypeTag { target, .. } => {
                self.describe_into(target, out, depth + 1)
            }
            Type::Func { name, .. } => named("fn ", name, out),
            Type::FuncProto { .. } => out.push_str("fn(..)"),
            Type::Var { name, .. } => named("var ", name, out),
            Type::DataSec { name, .. } => named("section ", name, out),
            Type::DeclTag { name, .. } => named("tag ", name, out),
        }
    }

    /// Structural comparison of one type here with one type in `other` (names by text).
    fn same_type(&self, a: TypeId, other: &Types, b: TypeId) -> bool {
        let (Some(ta), Some(tb)) = (self.get(a), other.get(b)) else {
            return false;
        };
        let n = |x: Name, y: Name| self.str(x) == other.str(y);
        match (*ta, *tb) {
            (Type::Struct(x), Type::Struct(y)) | (Type::Union(x), Type::Union(y)) => {
                n(x.name, y.name)
                    && x.size == y.size
                    && self.members(&x).len() == other.members(&y).len()
                    && self
                        .members(&x)
                        .iter()
                        .zip(other.members(&y))
                        .all(|(p, q)| {
                            n(p.name, q.name)
                                && p.ty == q.ty
                                && p.bit_offset == q.bit_offset
                                && p.bitfield_size == q.bitfield_size
                        })
            }
            (
                Type::Enum {
                    name: na,
                    size: sa,
                    signed: ga,
                    values: va,
                },
                Type::Enum {
                    name: nb,
                    size: sb,
                    signed: gb,
                    values: vb,
                },
            ) => {
                n(na, nb)
                    && sa == sb
                    && ga == gb
                    && self.enumerators(va).len() == other.enumerators(vb).len()
                    && self
                        .enumerators(va)
                        .iter()
                        .zip(other.enumerators(vb))
                        .all(|(p, q)| n(p.name, q.name) && p.value == q.value)
            }
            (
                Type::FuncProto {
                    ret: ra,
                    params: pa,
                },
                Type::FuncProto {
                    ret: rb,
                    params: pb,
                },
            ) => {
                ra == rb
                    && self.params(pa).len() == other.params(pb).len()
                    && self
                        .params(pa)
                        .iter()
                        .zip(other.params(pb))
                        .all(|(p, q)| n(p.name, q.name) && p.ty == q.ty)
            }
            (
                Type::DataSec {
                    name: na,
                    size: sa,
                    vars: va,
                },
                Type::DataSec {
                    name: nb,
                    size: sb,
                    vars: vb,
                },
            ) => n(na, nb) && sa == sb && self.var_infos(va) == other.var_infos(vb),
            (x, y) => {
                // Remaining kinds hold ids and scalars besides at most one name.
                let strip = |t: Type| -> Type {
                    let mut t = t;
                    match &mut t {
                        Type::Int { name, .. }
                        | Type::Float { name, .. }
                        | Type::Fwd { name, .. }
                        | Type::Typedef { name, .. }
                        | Type::TypeTag { name, .. }
                        | Type::Func { name, .. }
                        | Type::Var { name, .. }
                        | Type::DeclTag { name, .. } => *name = Name::ANON,
                        _ => {}
                    }
                    t
                };
                let names_eq = match (x.name(), y.name()) {
                    (Some(p), Some(q)) => n(p, q),
                    (None, None) => true,
                    _ => false,
                };
                names_eq && strip(x) == strip(y)
            }
        }
    }

    pub(crate) fn all_members(&self) -> &[Member] {
        &self.members
    }

    pub(crate) fn patch_member(&mut self, i: usize, f: impl FnOnce(&mut Member)) {
        if let Some(m) = self.members.get_mut(i) {
            f(m);
        }
    }

    fn namer<'a>(&'a self) -> impl Fn(u32) -> Option<&'a str> + 'a {
        move |v| self.name_of(TypeId(v))
    }

    fn complete(&self, id: u32) -> bool {
        match self.types.get(id as usize) {
            Some(Type::Struct(c) | Type::Union(c)) => !c.members.is_empty(),
            Some(Type::Enum { values, .. }) => !values.is_empty(),
            _ => true,
        }
    }

    /// Drops the name indexes; the next lookup rebuilds them.
    pub(crate) fn rebuild_index(&mut self) {
        self.index = OnceLock::new();
    }

    fn index(&self) -> &TypeIndex {
        self.index.get_or_init(|| self.build_index())
    }

    fn build_index(&self) -> TypeIndex {
        let namer = self.namer();
        let named = |pick: fn(&Type) -> bool| {
            self.types.iter().enumerate().filter_map(move |(i, t)| {
                if !pick(t) {
                    return None;
                }
                Some((self.name_of(TypeId(i as u32))?, i as u32))
            })
        };
        // The first complete definition wins; an empty one is replaced by a full one.
        let better = |new: u32, old: u32| self.complete(new) && !self.complete(old);
        TypeIndex {
            composites: NameIndex::build(
                named(|t| matches!(t, Type::Struct(_) | Type::Union(_))),
                &namer,
                better,
            ),
            enums: NameIndex::build(named(|t| matches!(t, Type::Enum { .. })), &namer, better),
            typedefs: NameIndex::build(
                named(|t| matches!(t, Type::Typedef { .. })),
                &namer,
                better,
            ),
            base: NameIndex::build(
                named(|t| matches!(t, Type::Int { .. } | Type::Float { .. })),
                &namer,
                better,
            ),
        }
    }

    /// Checks that every reference, name and span is in range. Loaders call this so lookups
    /// never see dangling ids.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let n = self.types.len();
        let check_id = |id: TypeId, what: &str| {
            if (id.0 as usize) < n {
                Ok(())
            } else {
                Err(format!("{what} refers to type id {} of {n}", id.0))
            }
        };
        // Range only: a name that splits a UTF-8 sequence reads as "" through `str`, which
        // uses checked slicing. Testing char boundaries here would touch the arena at every
        // name (a cache miss each on a 1.7 MB kernel arena) and dominate the cache load.
        let slen = self.strings.len() as u64;
        let check_name = |name: Name| {
            let end = name.off as u64 + name.len as u64;
            if end <= slen {
                Ok(())
            } else {
                Err(format!("name at {}+{} out of range", name.off, name.len))
            }
        };
        let check_span = |s: Span, len: usize, what: &str| {
            if s.range().end <= len {
                Ok(())
            } else {
                Err(format!("{what} span {}+{} out of {len}", s.start, s.len))
            }
        };
        let mut refs = Vec::new();
        for (i, t) in self.types.iter().enumerate() {
            if let Some(name) = t.name() {
                check_name(name)?;
            }
            refs.clear();
            t.refs(&mut refs);
            // No label formatting on the good path: this runs on every cache load.
            if let Some(r) = refs.iter().find(|r| r.0 as usize >= n) {
                return Err(format!("type {i} refers to type id {} of {n}", r.0));
            }
            match *t {
                Type::Struct(c) | Type::Union(c) => {
                    check_span(c.members, self.members.len(), "member")?
                }
                Type::Enum { values, .. } => {
                    check_span(values, self.enumerators.len(), "enumerator")?
                }
                Type::FuncProto { params, .. } => check_span(params, self.params.len(), "param")?,
                Type::DataSec { vars, .. } => check_span(vars, self.var_infos.len(), "var")?,
                _ => {}
            }
        }
        for m in &self.members {
            check_name(m.name)?;
            check_id(m.ty, "member")?;
        }
        for e in &self.enumerators {
            check_name(e.name)?;
        }
        for p in &self.params {
            check_name(p.name)?;
            check_id(p.ty, "param")?;
        }
        for v in &self.var_infos {
            check_id(v.ty, "datasec var")?;
        }
        Ok(())
    }
}

/// Builds [`Types`] from any source; ids are assigned in push order (`void` is id 0).
#[derive(Debug)]
pub struct TypesBuilder {
    types: Types,
    interned: HashMap<String, Name>,
}

impl Default for TypesBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TypesBuilder {
    /// An empty builder holding only `void`.
    pub fn new() -> Self {
        Self {
            types: Types {
                strings: String::new(),
                types: vec![Type::Void],
                members: Vec::new(),
                enumerators: Vec::new(),
                params: Vec::new(),
                var_infos: Vec::new(),
                index: OnceLock::new(),
            },
            interned: HashMap::new(),
        }
    }

    /// Starts from an existing string table (BTF: the string section), so names are
    /// [`Name`]s into it without copying each.
    pub(crate) fn with_strings(strings: String) -> Self {
        let mut b = Self::new();
        b.types.strings = strings;
        b
    }

    /// A name for a sub-slice of the preset string table.
    pub(crate) fn raw_name(off: usize, len: usize) -> Name {
        Name {
            off: off as u32,
            len: len as u32,
        }
    }

    /// Interns a string (empty gives the anonymous name).
    pub fn name(&mut self, s: &str) -> Name {
        if s.is_empty() {
            return Name::ANON;
        }
        if let Some(n) = self.interned.get(s) {
            return *n;
        }
        let n = Name {
            off: self.types.strings.len() as u32,
            len: s.len() as u32,
        };
        self.types.strings.push_str(s);
        self.interned.insert(s.to_owned(), n);
        n
    }

    /// Number of types so far (the next id).
    pub fn next_id(&self) -> TypeId {
        TypeId(self.types.types.len() as u32)
    }

    /// Adds a type and returns its id.
    pub fn push(&mut self, t: Type) -> TypeId {
        let id = self.next_id();
        self.types.types.push(t);
        id
    }

    /// Replaces a type pushed earlier (for placeholders resolved later).
    pub fn set(&mut self, id: TypeId, t: Type) {
        if let Some(slot) = self.types.types.get_mut(id.0 as usize) {
            *slot = t;
        }
    }

    /// Stores members and returns their span.
    pub fn members(&mut self, m: impl IntoIterator<Item = Member>) -> Span {
        let start = self.types.members.len();
        self.types.members.extend(m);
        Span::new(start, self.types.members.len() - start)
    }

    /// Stores enumerators and returns their span.
    pub fn enumerators(&mut self, e: impl IntoIterator<Item = Enumerator>) -> Span {
        let start = self.types.enumerators.len();
        self.types.enumerators.extend(e);
        Span::new(start, self.types.enumerators.len() - start)
    }

    /// Stores parameters and returns their span.
    pub fn params(&mut self, p: impl IntoIterator<Item = Param>) -> Span {
        let start = self.types.params.len();
        self.types.params.extend(p);
        Span::new(start, self.types.params.len() - start)
    }

    /// Stores data-section variables and returns their span.
    pub fn var_infos(&mut self, v: impl IntoIterator<Item = VarSecInfo>) -> Span {
        let start = self.types.var_infos.len();
        self.types.var_infos.extend(v);
        Span::new(start, self.types.var_infos.len() - start)
    }

    /// Reserve room for `n` more types.
    pub fn reserve(&mut self, n: usize) {
        self.types.types.reserve(n);
    }

    /// Validates references and builds the name indexes.
    pub fn build(self) -> std::result::Result<Types, String> {
        self.types.validate()?;
        Ok(self.finish())
    }

    fn finish(self) -> Types {
        let mut t = self.types;
        t.rebuild_index();
        t
    }
}

/// Compact cache encoding of [`Types`] (see `compact.rs`): the string arena, then types as
/// 32-byte records (a kind word and seven payload words), members (24 bytes), enumerators
/// (16), parameters (12) and data-section variables (12).
mod codec {
    use super::*;
    use crate::compact::{Reader, put_bytes, put_u32, put_u64, u32_at, u64_at};

    const TYPE_REC: usize = 32;

    fn rec(out: &mut Vec<u8>, kind: u32, w: [u32; 7]) {
        put_u32(out, kind);
        for x in w {
            put_u32(out, x);
        }
    }

    fn lo(v: u64) -> u32 {
        v as u32
    }

    fn hi(v: u64) -> u32 {
        (v >> 32) as u32
    }

    impl Types {
        pub(crate) fn write_compact(&self, out: &mut Vec<u8>) {
            put_bytes(out, self.strings.as_bytes());
            put_u32(out, self.types.len() as u32);
            for t in &self.types {
                let n = |n: Name| (n.off, n.len);
                match *t {
                    Type::Void => rec(out, 0, [0; 7]),
                    Type::Int {
                        name,
                        size,
                        encoding,
                        bits,
                        bit_offset,
                    } => {
                        let flags = u32::from(encoding.signed)
                            | u32::from(encoding.char) << 1
                            | u32::from(encoding.bool) << 2
                            | u32::from(bits) << 8
                            | u32::from(bit_offset) << 16;
                        rec(out, 1, [n(name).0, n(name).1, size, flags, 0, 0, 0])
                    }
                    Type::Float { name, size } => {
                        rec(out, 2, [n(name).0, n(name).1, size, 0, 0, 0, 0])
                    }
                    Type::Pointer { target } => rec(out, 3, [target.0, 0, 0, 0, 0, 0, 0]),
                    Type::Array {
                        element,
                        index,
                        count,
                    } => rec(out, 4, [element.0, index.0, count, 0, 0, 0, 0]),
                    Type::Struct(c) | Type::Union(c) => {
                        let kind = if matches!(t, Type::Struct(_)) { 5 } else { 6 };
                        let w = [
                            c.name.off,
                            c.name.len,
                            lo(c.size),
                            hi(c.size),
                            c.members.start,
                            c.members.len,
                            0,
                        ];
                        rec(out, kind, w)
                    }
                    Type::Enum {
                        name,
                        size,
                        signed,
                        values,
                    } => rec(
                        out,
                        7,
                        [
                            name.off,
                            name.len,
                            size,
                            u32::from(signed),
                            values.start,
                            values.len,
                            0,
                        ],
                    ),
                    Type::Fwd { name, is_union } => rec(
                        out,
                        8,
                        [name.off, name.len, u32::from(is_union), 0, 0, 0, 0],
                    ),
                    Type::Typedef { name, target } => {
                        rec(out, 9, [name.off, name.len, target.0, 0, 0, 0, 0])
                    }
                    Type::Volatile { target } => rec(out, 10, [target.0, 0, 0, 0, 0, 0, 0]),
                    Type::Const { target } => rec(out, 11, [target.0, 0, 0, 0, 0, 0, 0]),
                    Type::Restrict { target } => rec(out, 12, [target.0, 0, 0, 0, 0, 0, 0]),
                    Type::TypeTag { name, target } => {
                        rec(out, 13, [name.off, name.len, target.0, 0, 0, 0, 0])
                    }
                    Type::Func {
                        name,
                        proto,
                        linkage,
                    } => rec(
                        out,
                        14,
                        [name.off, name.len, proto.0, u32::from(linkage), 0, 0, 0],
                    ),
                    Type::FuncProto { ret, params } => {
                        rec(out, 15, [ret.0, params.start, params.len, 0, 0, 0, 0])
                    }
                    Type::Var { name, ty, linkage } => {
                        rec(out, 16, [name.off, name.len, ty.0, linkage, 0, 0, 0])
                    }
                    Type::DataSec { name, size, vars } => rec(
                        out,
                        17,
                        [name.off, name.len, size, vars.start, vars.len, 0, 0],
                    ),
                    Type::DeclTag {
                        name,
                        target,
                        component,
                    } => rec(
                        out,
                        18,
                        [name.off, name.len, target.0, component as u32, 0, 0, 0],
                    ),
                }
            }
            put_u32(out, self.members.len() as u32);
            for m in &self.members {
                put_u32(out, m.name.off);
                put_u32(out, m.name.len);
                put_u32(out, m.ty.0);
                put_u32(out, m.bitfield_size);
                put_u64(out, m.bit_offset);
            }
            put_u32(out, self.enumerators.len() as u32);
            for e in &self.enumerators {
                put_u32(out, e.name.off);
                put_u32(out, e.name.len);
                put_u64(out, e.value as u64);
            }
            put_u32(out, self.params.len() as u32);
            for p in &self.params {
                put_u32(out, p.name.off);
                put_u32(out, p.name.len);
                put_u32(out, p.ty.0);
            }
            put_u32(out, self.var_infos.len() as u32);
            for v in &self.var_infos {
                put_u32(out, v.ty.0);
                put_u32(out, v.offset);
                put_u32(out, v.size);
            }
            let index = self.index();
            for i in [
                &index.composites,
                &index.enums,
                &index.typedefs,
                &index.base,
            ] {
                i.write_compact(out);
            }
        }

        /// Decodes and validates (every id, name and span in range).
        pub(crate) fn read_compact(r: &mut Reader<'_>) -> Result<Types, String> {
            let (_, strings) = r.array(1, "type names")?;
            let strings = std::str::from_utf8(strings)
                .map_err(|e| format!("type names: {e}"))?
                .to_owned();
            let (count, recs) = r.array(TYPE_REC, "types")?;
            let mut types = Vec::with_capacity(count);
            for (i, t) in recs.chunks_exact(TYPE_REC).enumerate() {
                let w = |k: usize| u32_at(t, 4 + 4 * k);
                let name = Name {
                    off: w(0),
                    len: w(1),
                };
                let span = |k: usize| Span {
                    start: w(k),
                    len: w(k + 1),
                };
                types.push(match u32_at(t, 0) {
                    0 => Type::Void,
                    1 => Type::Int {
                        name,
                        size: w(2),
                        encoding: IntEncoding {
                            signed: w(3) & 1 != 0,
                            char: w(3) & 2 != 0,
                            bool: w(3) & 4 != 0,
                        },
                        bits: (w(3) >> 8) as u8,
                        bit_offset: (w(3) >> 16) as u8,
                    },
                    2 => Type::Float { name, size: w(2) },
                    3 => Type::Pointer {
                        target: TypeId(w(0)),
                    },
                    4 => Type::Array {
                        element: TypeId(w(0)),
                        index: TypeId(w(1)),
                        count: w(2),
                    },
                    k @ (5 | 6) => {
                        let c = Composite {
                            name,
                            size: u64::from(w(2)) | u64::from(w(3)) << 32,
                            members: span(4),
                        };
                        if k == 5 {
                            Type::Struct(c)
                        } else {
                            Type::Union(c)
                        }
                    }
                    7 => Type::Enum {
                        name,
                        size: w(2),
                        signed: w(3) != 0,
                        values: span(4),
                    },
                    8 => Type::Fwd {
                        name,
                        is_union: w(2) != 0,
                    },
                    9 => Type::Typedef {
                        name,
                        target: TypeId(w(2)),
                    },
                    10 => Type::Volatile {
                        target: TypeId(w(0)),
                    },
                    11 => Type::Const {
                        target: TypeId(w(0)),
                    },
                    12 => Type::Restrict {
                        target: TypeId(w(0)),
                    },
                    13 => Type::TypeTag {
                        name,
                        target: TypeId(w(2)),
                    },
                    14 => Type::Func {
                        name,
                        proto: TypeId(w(2)),
                        linkage: w(3) as u16,
                    },
                    15 => Type::FuncProto {
                        ret: TypeId(w(0)),
                        params: span(1),
                    },
                    16 => Type::Var {
                        name,
                        ty: TypeId(w(2)),
                        linkage: w(3),
                    },
                    17 => Type::DataSec {
                        name,
                        size: w(2),
                        vars: span(3),
                    },
                    18 => Type::DeclTag {
                        name,
                        target: TypeId(w(2)),
                        component: w(3) as i32,
                    },
                    k => return Err(format!("type {i}: unknown kind {k}")),
                });
            }
            let (_, recs) = r.array(24, "members")?;
            let members = recs
                .chunks_exact(24)
                .map(|m| Member {
                    name: Name {
                        off: u32_at(m, 0),
                        len: u32_at(m, 4),
                    },
                    ty: TypeId(u32_at(m, 8)),
                    bitfield_size: u32_at(m, 12),
                    bit_offset: u64_at(m, 16),
                })
                .collect();
            let (_, recs) = r.array(16, "enumerators")?;
            let enumerators = recs
                .chunks_exact(16)
                .map(|e| Enumerator {
                    name: Name {
                        off: u32_at(e, 0),
                        len: u32_at(e, 4),
                    },
                    value: u64_at(e, 8) as i64,
                })
                .collect();
            let (_, recs) = r.array(12, "params")?;
            let params = recs
                .chunks_exact(12)
                .map(|p| Param {
                    name: Name {
                        off: u32_at(p, 0),
                        len: u32_at(p, 4),
                    },
                    ty: TypeId(u32_at(p, 8)),
                })
                .collect();
            let (_, recs) = r.array(12, "datasec vars")?;
            let var_infos = recs
                .chunks_exact(12)
                .map(|v| VarSecInfo {
                    ty: TypeId(u32_at(v, 0)),
                    offset: u32_at(v, 4),
                    size: u32_at(v, 8),
                })
                .collect();
            if types.first() != Some(&Type::Void) {
                return Err("type 0 is not void".into());
            }
            let n = types.len();
            let index = TypeIndex {
                composites: NameIndex::read_compact(r, n, "struct index")?,
                enums: NameIndex::read_compact(r, n, "enum index")?,
                typedefs: NameIndex::read_compact(r, n, "typedef index")?,
                base: NameIndex::read_compact(r, n, "base type index")?,
            };
            let t = Types {
                strings,
                types,
                members,
                enumerators,
                params,
                var_infos,
                index: OnceLock::from(index),
            };
            t.validate()?;
            Ok(t)
        }
    }
}
