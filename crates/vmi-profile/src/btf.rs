//! BTF (BPF Type Format) parser.
//!
//! Layout facts (from the kernel's `include/uapi/linux/btf.h` documentation): a 24-byte header
//! (`magic` 0xEB9F, version 1, `hdr_len`, then type and string sections given as offset/length
//! pairs relative to the end of the header); the type section is a sequence of 12-byte
//! `btf_type` records (`name_off`, `info` = vlen bits 0..16, kind bits 24..29, kind_flag bit
//! 31, then `size` or `type`), each followed by kind-specific data. Type ids start at 1 in
//! section order; id 0 is `void`.
//!
//! Every count and offset read from the blob is bounds-checked before use; a malformed blob
//! gives [`ProfileError::Btf`] with the byte offset of the problem, never a panic.

use zerocopy::little_endian::{I32, U16, U32};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::error::{ProfileError, Result};
use crate::types::{
    Composite, Enumerator, IntEncoding, Member, Name, Param, Type, TypeId, Types, TypesBuilder,
    VarSecInfo,
};

/// BTF magic as read little-endian.
pub const BTF_MAGIC: u16 = 0xEB9F;

/// Largest BTF blob accepted (real kernels: 4-6 MiB).
pub const MAX_BTF_SIZE: usize = 256 << 20;

/// Longest type or member name accepted, in bytes. The kernel's BTF verifier rejects names
/// of `KSYM_NAME_LEN` (512) bytes or more; twice that leaves room and bounds each lookup.
pub const MAX_NAME_LEN: usize = 1024;

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: U16,
    version: u8,
    flags: u8,
    hdr_len: U32,
    type_off: U32,
    type_len: U32,
    str_off: U32,
    str_len: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawType {
    name_off: U32,
    info: U32,
    size_or_type: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawArray {
    ty: U32,
    index_ty: U32,
    nelems: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawMember {
    name_off: U32,
    ty: U32,
    offset: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawEnum {
    name_off: U32,
    val: I32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawEnum64 {
    name_off: U32,
    lo: U32,
    hi: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawParam {
    name_off: U32,
    ty: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawVarSecInfo {
    ty: U32,
    offset: U32,
    size: U32,
}

/// BTF kind numbers.
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// True if `bytes` starts like a little-endian BTF blob.
pub fn looks_like_btf(bytes: &[u8]) -> bool {
    bytes.len() >= 24 && bytes[0] == 0x9F && bytes[1] == 0xEB && bytes[2] == 1
}

struct Parser<'a> {
    source: &'a str,
    /// The type section.
    types: &'a [u8],
    /// File offset of the type section, for messages.
    types_base: u64,
    strings: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, at: usize, what: impl Into<String>) -> ProfileError {
        ProfileError::Btf {
            source_name: self.source.to_owned(),
            offset: self.types_base + at as u64,
            what: what.into(),
        }
    }

    fn read<T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &mut self,
        what: &str,
    ) -> Result<&'a T> {
        let rest = self.types.get(self.pos..).unwrap_or(&[]);
        let (v, _) = T::ref_from_prefix(rest)
            .map_err(|_| self.err(self.pos, format!("truncated {what}")))?;
        self.pos += std::mem::size_of::<T>();
        Ok(v)
    }

    fn read_slice<T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &mut self,
        count: usize,
        what: &str,
    ) -> Result<&'a [T]> {
        let rest = self.types.get(self.pos..).unwrap_or(&[]);
        let (v, _) = <[T]>::ref_from_prefix_with_elems(rest, count).map_err(|_| {
            self.err(
                self.pos,
                format!("{count} {what} records run past the type section"),
            )
        })?;
        self.pos += std::mem::size_of_val(v);
        Ok(v)
    }

    fn name(&self, off: u32, at: usize) -> Result<Name> {
        let start = off as usize;
        let rest = self
            .strings
            .as_bytes()
            .get(start..)
            .ok_or_else(|| self.err(at, format!("name offset {off} beyond string section")))?;
        // Scan at most MAX_NAME_LEN bytes: a long run without NUL, named by many types,
        // must not cost a scan of the whole section per type (quadratic).
        let len = rest[..rest.len().min(MAX_NAME_LEN + 1)]
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| {
                self.err(
                    at,
                    format!("name at {off} is not NUL-terminated within {MAX_NAME_LEN} bytes"),
                )
            })?;
        if !self.strings.is_char_boundary(start) {
            return Err(self.err(at, format!("name offset {off} splits a UTF-8 character")));
        }
        Ok(TypesBuilder::raw_name(start, len))
    }
}

/// Parses a BTF blob (little-endian, as emitted for x86-64 kernels) into [`Types`].
///
/// `source` names the input in error messages (a path, or `guest memory`).
pub fn parse_btf(bytes: &[u8], source: &str) -> Result<Types> {
    let err = |offset: u64, what: String| ProfileError::Btf {
        source_name: source.to_owned(),
        offset,
        what,
    };
    if bytes.len() > MAX_BTF_SIZE {
        return Err(ProfileError::TooLarge {
            source_name: source.to_owned(),
            what: "btf blob",
            size: bytes.len() as u64,
            limit: MAX_BTF_SIZE as u64,
        });
    }
    let (hdr, _) = Header::ref_from_prefix(bytes).map_err(|_| {
        err(
            0,
            format!("{} bytes is too short for a header", bytes.len()),
        )
    })?;
    match hdr.magic.get() {
        BTF_MAGIC => {}
        0x9FEB => return Err(err(0, "big-endian btf is not supported".into())),
        m => return Err(err(0, format!("bad magic {m:#06x}, expected 0xeb9f"))),
    }
    if hdr.version != 1 {
        return Err(err(2, format!("unsupported version {}", hdr.version)));
    }
    let hdr_len = hdr.hdr_len.get() as usize;
    if hdr_len < std::mem::size_of::<Header>() || hdr_len > bytes.len() {
        return Err(err(4, format!("header length {hdr_len} out of range")));
    }
    let body = &bytes[hdr_len..];
    let section = |off: u32, len: u32, what: &str, at: u64| -> Result<&[u8]> {
        let (off, len) = (off as usize, len as usize);
        off.checked_add(len)
            .and_then(|end| body.get(off..end))
            .ok_or_else(|| {
                err(
                    at,
                    format!(
                        "{what} section {off:#x}+{len:#x} beyond the {:#x}-byte body",
                        body.len()
                    ),
                )
            })
    };
    let types = section(hdr.type_off.get(), hdr.type_len.get(), "type", 8)?;
    let strings = section(hdr.str_off.get(), hdr.str_len.get(), "string", 16)?;
    if strings.first().is_some_and(|&b| b != 0) {
        return Err(err(
            16,
            "string section does not start with an empty string".into(),
        ));
    }
    let strings = std::str::from_utf8(strings).map_err(|e| {
        err(
            hdr_len as u64 + u64::from(hdr.str_off.get()) + e.valid_up_to() as u64,
            "string section is not UTF-8".into(),
        )
    })?;
    let mut p = Parser {
        source,
        types,
        types_base: hdr_len as u64 + u64::from(hdr.type_off.get()),
        strings,
        pos: 0,
    };
    let mut b = TypesBuilder::with_strings(strings.to_owned());
    b.reserve(types.len() / 16);
    // Members whose bit layout may use the legacy INT bitfield encoding (kflag clear).
    let mut legacy_members: Vec<usize> = Vec::new();
    let mut member_index = 0usize;

    while p.pos < types.len() {
        let at = p.pos;
        let t = p.read::<RawType>("type record")?;
        let info = t.info.get();
        let vlen = (info & 0xffff) as usize;
        let k = (info >> 24) & 0x1f;
        let kflag = info >> 31 == 1;
        let st = t.size_or_type.get();
        let name = p.name(t.name_off.get(), at)?;
        let ty = TypeId(st);
        let parsed = match k {
            kind::INT => {
                let v = p.read::<U32>("int encoding")?.get();
                let enc = (v >> 24) & 0x0f;
                let bits = v & 0xff;
                let offset = (v >> 16) & 0xff;
                if bits > 128 || u64::from(bits) + u64::from(offset) > u64::from(st) * 8 {
                    return Err(p.err(
                        at,
                        format!("int of {st} bytes with {bits} bits at {offset}"),
                    ));
                }
                Type::Int {
                    name,
                    size: st,
                    encoding: IntEncoding {
                        signed: enc & 1 != 0,
                        char: enc & 2 != 0,
                        bool: enc & 4 != 0,
                    },
                    bits: bits as u8,
                    bit_offset: offset as u8,
                }
            }
            kind::PTR => Type::Pointer { target: ty },
            kind::ARRAY => {
                let a = p.read::<RawArray>("array")?;
                Type::Array {
                    element: TypeId(a.ty.get()),
                    index: TypeId(a.index_ty.get()),
                    count: a.nelems.get(),
                }
            }
            kind::STRUCT | kind::UNION => {
                let raw = p.read_slice::<RawMember>(vlen, "member")?;
                let mut members = Vec::with_capacity(vlen);
                for (i, m) in raw.iter().enumerate() {
                    let off = m.offset.get();
                    let (bit_offset, bitfield_size) = if kflag {
                        (off & 0x00ff_ffff, off >> 24)
                    } else {
                        legacy_members.push(member_index + i);
                        (off, 0)
                    };
                    members.push(Member {
                        name: p.name(m.name_off.get(), at)?,
                        ty: TypeId(m.ty.get()),
                        bit_offset: u64::from(bit_offset),
                        bitfield_size,
                    });
                }
                member_index += vlen;
                let c = Composite {
                    name,
                    size: u64::from(st),
                    members: b.members(members),
                };
                if k == kind::STRUCT {
                    Type::Struct(c)
                } else {
                    Type::Union(c)
                }
            }
            kind::ENUM => {
                if !matches!(st, 1 | 2 | 4 | 8) {
                    return Err(p.err(at, format!("enum size {st}")));
                }
                let raw = p.read_slice::<RawEnum>(vlen, "enumerator")?;
                let mut values = Vec::with_capacity(vlen);
                for e in raw {
                    let v = e.val.get();
                    values.push(Enumerator {
                        name: p.name(e.name_off.get(), at)?,
                        // Unsigned 32-bit enums keep their unsigned value.
                        value: if kflag {
                            i64::from(v)
                        } else {
                            i64::from(v as u32)
                        },
                    });
                }
                Type::Enum {
                    name,
                    size: st,
                    signed: kflag,
                    values: b.enumerators(values),
                }
            }
            kind::ENUM64 => {
                if !matches!(st, 1 | 2 | 4 | 8) {
                    return Err(p.err(at, format!("enum64 size {st}")));
                }
                let raw = p.read_slice::<RawEnum64>(vlen, "enum64 value")?;
                let mut values = Vec::with_capacity(vlen);
                for e in raw {
                    values.push(Enumerator {
                        name: p.name(e.name_off.get(), at)?,
                        value: ((u64::from(e.hi.get()) << 32) | u64::from(e.lo.get())) as i64,
                    });
                }
                Type::Enum {
                    name,
                    size: st,
                    signed: kflag,
                    values: b.enumerators(values),
                }
            }
            kind::FWD => Type::Fwd {
                name,
                is_union: kflag,
            },
            kind::TYPEDEF => Type::Typedef { name, target: ty },
            kind::VOLATILE => Type::Volatile { target: ty },
            kind::CONST => Type::Const { target: ty },
            kind::RESTRICT => Type::Restrict { target: ty },
            kind::TYPE_TAG => Type::TypeTag { name, target: ty },
            kind::FUNC => Type::Func {
                name,
                proto: ty,
                linkage: vlen as u16,
            },
            kind::FUNC_PROTO => {
                let raw = p.read_slice::<RawParam>(vlen, "parameter")?;
                let mut params = Vec::with_capacity(vlen);
                for q in raw {
                    params.push(Param {
                        name: p.name(q.name_off.get(), at)?,
                        ty: TypeId(q.ty.get()),
                    });
                }
                Type::FuncProto {
                    ret: ty,
                    params: b.params(params),
                }
            }
            kind::VAR => {
                let linkage = p.read::<U32>("var linkage")?.get();
                Type::Var { name, ty, linkage }
            }
            kind::DATASEC => {
                let raw = p.read_slice::<RawVarSecInfo>(vlen, "datasec variable")?;
                let vars: Vec<_> = raw
                    .iter()
                    .map(|v| VarSecInfo {
                        ty: TypeId(v.ty.get()),
                        offset: v.offset.get(),
                        size: v.size.get(),
                    })
                    .collect();
                Type::DataSec {
                    name,
                    size: st,
                    vars: b.var_infos(vars),
                }
            }
            kind::FLOAT => Type::Float { name, size: st },
            kind::DECL_TAG => {
                let component = p.read::<I32>("decl tag")?.get();
                Type::DeclTag {
                    name,
                    target: ty,
                    component,
                }
            }
            other => return Err(p.err(at, format!("unknown kind {other}"))),
        };
        b.push(parsed);
    }

    let mut types = b
        .build()
        .map_err(|what| err(0, format!("inconsistent types: {what}")))?;
    types.apply_legacy_bitfields(&legacy_members);
    Ok(types)
}

impl Types {
    /// Without `kind_flag`, a bitfield member points at an INT whose `bits` is narrower than
    /// its size (and whose `bit_offset` adds to the member's).
    fn apply_legacy_bitfields(&mut self, members: &[usize]) {
        let mut changes = Vec::new();
        for &i in members {
            let Some(m) = self.all_members().get(i) else {
                continue;
            };
            if let Some(&Type::Int {
                size,
                bits,
                bit_offset,
                ..
            }) = self.get(m.ty)
                && (u32::from(bits) < size.saturating_mul(8) || bit_offset != 0)
            {
                changes.push((i, u64::from(bit_offset), u32::from(bits)));
            }
        }
        for (i, extra, bits) in changes {
            self.patch_member(i, |m| {
                m.bit_offset = m.bit_offset.saturating_add(extra);
                m.bitfield_size = bits;
            });
        }
    }
}

/// Parses BTF and returns it with the byte count consumed, for callers that read a blob out
/// of guest memory without knowing its end: the header gives the total size.
pub fn btf_total_size(header: &[u8]) -> Option<u64> {
    let (hdr, _) = Header::ref_from_prefix(header).ok()?;
    if hdr.magic.get() != BTF_MAGIC {
        return None;
    }
    let t_end = u64::from(hdr.type_off.get()) + u64::from(hdr.type_len.get());
    let s_end = u64::from(hdr.str_off.get()) + u64::from(hdr.str_len.get());
    Some(u64::from(hdr.hdr_len.get()) + t_end.max(s_end))
}
