//! DWARF loader (`gimli` over `object`): types and symbols of an ELF file with debug
//! information, such as a debug vmlinux (Debian's `-dbg` package) or a test program.
//!
//! Types: base types, pointers and references, `const`/`volatile`/`restrict`, typedefs,
//! structs/classes, unions (members with `DW_AT_data_member_location` as a constant or a
//! `DW_OP_plus_uconst` expression; bitfields by `DW_AT_data_bit_offset` or the DWARF 2/3
//! `DW_AT_bit_offset` + `DW_AT_byte_size` big-endian numbering), enums, arrays (one
//! [`Type::Array`] per dimension, from `DW_AT_count` or `DW_AT_upper_bound`), function
//! types. Symbols: the ELF `.symtab` when present (`nm`-style letters), else
//! `DW_TAG_subprogram` with `DW_AT_low_pc` and `DW_TAG_variable` with a `DW_OP_addr`
//! location.
//!
//! Relocatable objects (`cc -g -c`) have their absolute relocations in the debug sections
//! applied first, so their names and references are right. The walk is one pass over the
//! entries that records only what types need (function bodies are skipped), then a pass over
//! that record; nesting deeper than [`MAX_DIE_DEPTH`] is an error, not a stack overflow.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use gimli::{AttributeValue, DwAt, DwTag, Reader as _, constants as dw};
use object::{Object, ObjectSection, ObjectSymbol, RelocationKind, RelocationTarget};

use crate::error::{ProfileError, Result};
use crate::image::read_file;
use crate::profile::{Metadata, OsKind, Profile};
use crate::symbols::{Symbol, SymbolTable};
use crate::types::{
    Composite, Enumerator, IntEncoding, Member, Name, Param, Type, TypeId, TypesBuilder,
};

/// Deepest DIE nesting accepted.
pub const MAX_DIE_DEPTH: usize = 256;

/// Loads types and symbols from an ELF file's DWARF.
pub fn load_dwarf(path: &Path) -> Result<Profile> {
    let bytes = read_file(path)?;
    parse_dwarf(&bytes, &path.display().to_string())
}

/// Parses an ELF image with DWARF; `source` names it in errors.
pub fn parse_dwarf(data: &[u8], source: &str) -> Result<Profile> {
    let bad = |what: String| ProfileError::Dwarf {
        source_name: source.to_owned(),
        what,
    };
    let obj = object::File::parse(data).map_err(|e| bad(format!("not an object file: {e}")))?;
    let relocatable = obj.kind() == object::ObjectKind::Relocatable;
    let load = |id: gimli::SectionId| -> std::result::Result<Cow<'_, [u8]>, String> {
        let Some(section) = obj.section_by_name(id.name()) else {
            return Ok(Cow::Borrowed(&[]));
        };
        let data = section
            .uncompressed_data()
            .map_err(|e| format!("section {}: {e}", id.name()))?;
        if relocatable {
            relocate(&obj, &section, data).map_err(|e| format!("section {}: {e}", id.name()))
        } else {
            Ok(data)
        }
    };
    let sections = gimli::DwarfSections::load(load).map_err(bad)?;
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let dies = collect(&dwarf).map_err(bad)?;
    if dies.is_empty() {
        return Err(bad(
            "no debug information (.debug_info is empty or missing)".into(),
        ));
    }
    let types = lower(&dies)
        .build()
        .map_err(|e| bad(format!("inconsistent types: {e}")))?;
    let mut symbols = elf_symbols(&obj);
    if symbols.is_empty() {
        symbols = dies
            .iter()
            .filter_map(|d| {
                let address = d.address?;
                let name = d.name.clone()?;
                let kind = match d.tag {
                    dw::DW_TAG_subprogram => {
                        if d.external {
                            'T'
                        } else {
                            't'
                        }
                    }
                    _ => {
                        if d.external {
                            'D'
                        } else {
                            'd'
                        }
                    }
                };
                Some(Symbol {
                    name,
                    address,
                    kind: Some(kind),
                })
            })
            .collect();
    }
    let table = SymbolTable::new(symbols);
    let os = if table.get("linux_banner").is_some() {
        OsKind::Linux
    } else {
        OsKind::Unknown
    };
    let metadata = Metadata {
        os,
        build_id: obj.build_id().ok().flatten().map(<[u8]>::to_vec),
        sources: vec![source.to_owned()],
        ..Metadata::default()
    };
    Ok(Profile::new(metadata, table, types))
}

/// Applies absolute relocations of a debug section of a relocatable object.
fn relocate<'d>(
    obj: &object::File<'d>,
    section: &object::Section<'d, '_>,
    data: Cow<'d, [u8]>,
) -> std::result::Result<Cow<'d, [u8]>, String> {
    let mut relocs = section.relocations().peekable();
    if relocs.peek().is_none() {
        return Ok(data);
    }
    let mut out = data.into_owned();
    for (offset, r) in relocs {
        if r.kind() != RelocationKind::Absolute {
            continue;
        }
        let RelocationTarget::Symbol(idx) = r.target() else {
            continue;
        };
        let sym = obj
            .symbol_by_index(idx)
            .map_err(|e| format!("relocation at {offset:#x}: {e}"))?;
        let width = usize::from(r.size() / 8);
        let start = usize::try_from(offset).map_err(|_| "relocation offset overflows")?;
        let end = start
            .checked_add(width)
            .filter(|&e| e <= out.len())
            .ok_or_else(|| format!("relocation at {offset:#x} is outside the section"))?;
        let addend = if r.has_implicit_addend() {
            match width {
                4 => i64::from(i32::from_le_bytes(
                    out[start..end].try_into().map_err(|_| "bad width")?,
                )),
                8 => i64::from_le_bytes(out[start..end].try_into().map_err(|_| "bad width")?),
                _ => 0,
            }
        } else {
            r.addend()
        };
        let value = sym.address().wrapping_add(addend as u64);
        match width {
            4 => out[start..end].copy_from_slice(&(value as u32).to_le_bytes()),
            8 => out[start..end].copy_from_slice(&value.to_le_bytes()),
            _ => {}
        }
    }
    Ok(Cow::Owned(out))
}

fn elf_symbols(obj: &object::File<'_>) -> Vec<Symbol> {
    let mut out = Vec::new();
    for s in obj.symbols() {
        let Ok(name) = s.name() else { continue };
        if name.is_empty() || s.is_undefined() {
            continue;
        }
        let global = s.is_global();
        let letter = match s.kind() {
            object::SymbolKind::Text => 'T',
            object::SymbolKind::Data | object::SymbolKind::Tls => {
                let sk = s
                    .section_index()
                    .and_then(|i| obj.section_by_index(i).ok())
                    .map(|sec| sec.kind());
                match sk {
                    Some(object::SectionKind::UninitializedData) => 'B',
                    Some(object::SectionKind::ReadOnlyData) => 'R',
                    _ => 'D',
                }
            }
            object::SymbolKind::Unknown if s.section() == object::SymbolSection::Absolute => 'A',
            _ => continue,
        };
        out.push(Symbol {
            name: name.to_owned(),
            address: s.address(),
            kind: Some(if global {
                letter
            } else {
                letter.to_ascii_lowercase()
            }),
        });
    }
    out
}

/// What the lowering needs of one DIE.
#[derive(Debug)]
struct Die {
    tag: DwTag,
    offset: u64,
    parent: Option<usize>,
    name: Option<String>,
    byte_size: Option<u64>,
    ty: Option<u64>,
    member_location: Option<u64>,
    data_bit_offset: Option<u64>,
    bit_offset: Option<u64>,
    bit_size: Option<u64>,
    encoding: Option<u8>,
    const_value: Option<i64>,
    count: Option<u64>,
    upper_bound: Option<i64>,
    address: Option<u64>,
    external: bool,
    declaration: bool,
}

impl Die {
    fn new(tag: DwTag, offset: u64, parent: Option<usize>) -> Self {
        Self {
            tag,
            offset,
            parent,
            name: None,
            byte_size: None,
            ty: None,
            member_location: None,
            data_bit_offset: None,
            bit_offset: None,
            bit_size: None,
            encoding: None,
            const_value: None,
            count: None,
            upper_bound: None,
            address: None,
            external: false,
            declaration: false,
        }
    }
}

fn is_type_tag(t: DwTag) -> bool {
    matches!(
        t,
        dw::DW_TAG_base_type
            | dw::DW_TAG_pointer_type
            | dw::DW_TAG_reference_type
            | dw::DW_TAG_rvalue_reference_type
            | dw::DW_TAG_const_type
            | dw::DW_TAG_volatile_type
            | dw::DW_TAG_restrict_type
            | dw::DW_TAG_atomic_type
            | dw::DW_TAG_typedef
            | dw::DW_TAG_structure_type
            | dw::DW_TAG_class_type
            | dw::DW_TAG_union_type
            | dw::DW_TAG_enumeration_type
            | dw::DW_TAG_array_type
            | dw::DW_TAG_subroutine_type
            | dw::DW_TAG_unspecified_type
    )
}

type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

fn collect(dwarf: &gimli::Dwarf<Reader<'_>>) -> std::result::Result<Vec<Die>, String> {
    let mut dies: Vec<Die> = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(|e| format!("unit header: {e}"))? {
        let unit = dwarf
            .unit(header)
            .map_err(|e| format!("unit at {:?}: {e}", header.offset()))?;
        let base = match header.offset() {
            gimli::UnitSectionOffset::DebugInfoOffset(o) => o.0 as u64,
            gimli::UnitSectionOffset::DebugTypesOffset(o) => o.0 as u64,
        };
        let mut cursor = unit.entries();
        let mut depth: isize = 0;
        // Per depth: the recorded DIE there (if any) and whether its subtree is skipped.
        let mut stack: Vec<(Option<usize>, bool)> = Vec::new();
        while let Some((delta, entry)) = cursor
            .next_dfs()
            .map_err(|e| format!("entries of unit at {base:#x}: {e}"))?
        {
            depth += delta;
            if depth < 0 || depth as usize > MAX_DIE_DEPTH {
                return Err(format!(
                    "entries nest deeper than {MAX_DIE_DEPTH} at unit {base:#x}"
                ));
            }
            let d = depth as usize;
            stack.truncate(d);
            let (parent, skipped) = d
                .checked_sub(1)
                .and_then(|p| stack.get(p).copied())
                .unwrap_or((None, false));
            let tag = entry.tag();
            let parent_tag = parent.and_then(|p| dies.get(p)).map(|p| p.tag);
            let wanted = !skipped
                && (is_type_tag(tag)
                    || matches!(
                        (tag, parent_tag),
                        (dw::DW_TAG_member, Some(_))
                            | (dw::DW_TAG_inheritance, Some(_))
                            | (dw::DW_TAG_enumerator, Some(dw::DW_TAG_enumeration_type))
                            | (dw::DW_TAG_subrange_type, Some(dw::DW_TAG_array_type))
                            | (
                                dw::DW_TAG_formal_parameter,
                                Some(dw::DW_TAG_subroutine_type)
                            )
                            | (
                                dw::DW_TAG_unspecified_parameters,
                                Some(dw::DW_TAG_subroutine_type)
                            )
                    )
                    || (matches!(tag, dw::DW_TAG_variable | dw::DW_TAG_subprogram)
                        && parent_tag.is_none()));
            // Function bodies (locals, lexical blocks) hold nothing the profile needs.
            let skip_children = skipped || tag == dw::DW_TAG_subprogram;
            if !wanted {
                stack.push((None, skip_children));
                continue;
            }
            let mut die = Die::new(tag, base + entry.offset().0 as u64, parent);
            let mut attrs = entry.attrs();
            while let Some(a) = attrs
                .next()
                .map_err(|e| format!("attribute at {:#x}: {e}", die.offset))?
            {
                read_attr(dwarf, &unit, base, a.name(), a.value(), &mut die);
            }
            dies.push(die);
            stack.push((Some(dies.len() - 1), skip_children));
        }
    }
    Ok(dies)
}

fn read_attr(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    base: u64,
    name: DwAt,
    value: AttributeValue<Reader<'_>>,
    die: &mut Die,
) {
    let reference = |v: &AttributeValue<Reader<'_>>| match *v {
        AttributeValue::UnitRef(o) => Some(base + o.0 as u64),
        AttributeValue::DebugInfoRef(o) => Some(o.0 as u64),
        _ => None,
    };
    match name {
        dw::DW_AT_name => {
            if let Ok(s) = dwarf.attr_string(unit, value) {
                die.name = Some(s.to_string_lossy().into_owned());
            }
        }
        dw::DW_AT_byte_size => die.byte_size = value.udata_value(),
        dw::DW_AT_type => die.ty = reference(&value),
        dw::DW_AT_data_member_location => {
            die.member_location = value.udata_value().or_else(|| {
                // DWARF 2: DW_OP_plus_uconst <uleb128>.
                let expr = value.exprloc_value()?;
                let bytes = expr.0.slice();
                (bytes.first() == Some(&0x23)).then(|| uleb(&bytes[1..]))?
            })
        }
        dw::DW_AT_data_bit_offset => die.data_bit_offset = value.udata_value(),
        dw::DW_AT_bit_offset => die.bit_offset = value.udata_value(),
        dw::DW_AT_bit_size => die.bit_size = value.udata_value(),
        dw::DW_AT_encoding => {
            if let AttributeValue::Encoding(e) = value {
                die.encoding = Some(e.0);
            }
        }
        dw::DW_AT_const_value => {
            die.const_value = value
                .sdata_value()
                .or_else(|| value.udata_value().map(|u| u as i64))
        }
        dw::DW_AT_count => die.count = value.udata_value(),
        dw::DW_AT_upper_bound => {
            die.upper_bound = value
                .sdata_value()
                .or_else(|| value.udata_value().map(|u| u as i64))
        }
        dw::DW_AT_low_pc => {
            if let Ok(Some(a)) = dwarf.attr_address(unit, value) {
                die.address = Some(a);
            }
        }
        dw::DW_AT_location => {
            if let Some(expr) = value.exprloc_value() {
                let b = expr.0.slice();
                // DW_OP_addr <8 bytes>, the whole expression.
                if b.len() == 9 && b[0] == 0x03 {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[1..9]);
                    die.address = Some(match expr.0.endian() {
                        gimli::RunTimeEndian::Little => u64::from_le_bytes(a),
                        gimli::RunTimeEndian::Big => u64::from_be_bytes(a),
                    });
                }
            }
        }
        dw::DW_AT_external => die.external = matches!(value, AttributeValue::Flag(true)),
        dw::DW_AT_declaration => die.declaration = matches!(value, AttributeValue::Flag(true)),
        _ => {}
    }
}

fn uleb(bytes: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Lowers the recorded DIEs: one type id per type DIE (ids in DIE order), then members.
fn lower(dies: &[Die]) -> TypesBuilder {
    let mut b = TypesBuilder::new();
    let mut ids: HashMap<u64, TypeId> = HashMap::new();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); dies.len()];
    let index_of: HashMap<u64, usize> = dies
        .iter()
        .enumerate()
        .map(|(i, d)| (d.offset, i))
        .collect();
    for (i, d) in dies.iter().enumerate() {
        if let Some(c) = d.parent.and_then(|p| children.get_mut(p)) {
            c.push(i);
        }
        if is_type_tag(d.tag) {
            ids.insert(d.offset, b.push(Type::Void));
        }
    }
    let id_of = |r: Option<u64>| r.and_then(|o| ids.get(&o).copied()).unwrap_or(TypeId::VOID);
    for (i, d) in dies.iter().enumerate() {
        let Some(&id) = ids.get(&d.offset) else {
            continue;
        };
        let name = b.name(d.name.as_deref().unwrap_or(""));
        let target = id_of(d.ty);
        let t = match d.tag {
            dw::DW_TAG_base_type => {
                let size = d.byte_size.unwrap_or(0) as u32;
                match d.encoding {
                    Some(0x04) => Type::Float { name, size }, // DW_ATE_float
                    e => Type::Int {
                        name,
                        size,
                        encoding: IntEncoding {
                            signed: matches!(e, Some(0x05 | 0x06)),
                            char: matches!(e, Some(0x06 | 0x08)),
                            bool: e == Some(0x02),
                        },
                        bits: (size.saturating_mul(8)).min(255) as u8,
                        bit_offset: 0,
                    },
                }
            }
            dw::DW_TAG_pointer_type
            | dw::DW_TAG_reference_type
            | dw::DW_TAG_rvalue_reference_type => Type::Pointer { target },
            dw::DW_TAG_const_type => Type::Const { target },
            dw::DW_TAG_volatile_type => Type::Volatile { target },
            dw::DW_TAG_restrict_type => Type::Restrict { target },
            dw::DW_TAG_atomic_type => Type::Typedef {
                name: Name::ANON,
                target,
            },
            dw::DW_TAG_typedef => Type::Typedef { name, target },
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type | dw::DW_TAG_union_type => {
                if d.declaration {
                    Type::Fwd {
                        name,
                        is_union: d.tag == dw::DW_TAG_union_type,
                    }
                } else {
                    let mut members = Vec::new();
                    for &c in &children[i] {
                        let m = &dies[c];
                        if !matches!(m.tag, dw::DW_TAG_member | dw::DW_TAG_inheritance) {
                            continue;
                        }
                        // Static members have no location in a union or struct.
                        if m.declaration {
                            continue;
                        }
                        let byte = m.member_location.unwrap_or(0);
                        let (bit_offset, bits) = match (m.bit_size, m.data_bit_offset, m.bit_offset)
                        {
                            (Some(w), Some(dbo), _) => (dbo, w),
                            (Some(w), None, Some(bo)) => {
                                // Big-endian numbering within a storage unit of byte_size.
                                let storage = m.byte_size.unwrap_or(0).saturating_mul(8);
                                let from_lsb = storage.saturating_sub(bo).saturating_sub(w);
                                (byte.saturating_mul(8).saturating_add(from_lsb), w)
                            }
                            (Some(w), None, None) => (byte.saturating_mul(8), w),
                            _ => (byte.saturating_mul(8), 0),
                        };
                        members.push(Member {
                            name: if m.tag == dw::DW_TAG_inheritance {
                                Name::ANON
                            } else {
                                b.name(m.name.as_deref().unwrap_or(""))
                            },
                            ty: id_of(m.ty),
                            bit_offset,
                            bitfield_size: bits.min(u64::from(u32::MAX)) as u32,
                        });
                    }
                    let c = Composite {
                        name,
                        size: d.byte_size.unwrap_or(0),
                        members: b.members(members),
                    };
                    if d.tag == dw::DW_TAG_union_type {
                        Type::Union(c)
                    } else {
                        Type::Struct(c)
                    }
                }
            }
            dw::DW_TAG_enumeration_type => {
                let mut values = Vec::new();
                for &c in &children[i] {
                    let e = &dies[c];
                    if e.tag == dw::DW_TAG_enumerator {
                        values.push(Enumerator {
                            name: b.name(e.name.as_deref().unwrap_or("")),
                            value: e.const_value.unwrap_or(0),
                        });
                    }
                }
                let signed =
                    d.ty.and_then(|t| index_of.get(&t).and_then(|&x| dies.get(x)))
                        .map(|bt| matches!(bt.encoding, Some(0x05 | 0x06)))
                        .unwrap_or_else(|| values.iter().any(|v| v.value < 0));
                Type::Enum {
                    name,
                    size: d.byte_size.unwrap_or(4) as u32,
                    signed,
                    values: b.enumerators(values),
                }
            }
            dw::DW_TAG_array_type => {
                let dims: Vec<u32> = children[i]
                    .iter()
                    .map(|&c| &dies[c])
                    .filter(|s| s.tag == dw::DW_TAG_subrange_type)
                    .map(|s| {
                        s.count
                            .or_else(|| {
                                s.upper_bound
                                    .and_then(|u| u.checked_add(1))
                                    .map(|n| n.max(0) as u64)
                            })
                            .unwrap_or(0)
                            .min(u64::from(u32::MAX)) as u32
                    })
                    .collect();
                // int a[2][3]: array of 2 of (array of 3 of int); inner types are extra ids.
                let mut element = target;
                for &n in dims.iter().skip(1).rev() {
                    element = b.push(Type::Array {
                        element,
                        index: TypeId::VOID,
                        count: n,
                    });
                }
                Type::Array {
                    element,
                    index: TypeId::VOID,
                    count: dims.first().copied().unwrap_or(0),
                }
            }
            dw::DW_TAG_subroutine_type => {
                let params: Vec<Param> = children[i]
                    .iter()
                    .map(|&c| &dies[c])
                    .filter(|p| {
                        matches!(
                            p.tag,
                            dw::DW_TAG_formal_parameter | dw::DW_TAG_unspecified_parameters
                        )
                    })
                    .map(|p| Param {
                        name: Name::ANON,
                        ty: if p.tag == dw::DW_TAG_unspecified_parameters {
                            TypeId::VOID
                        } else {
                            id_of(p.ty)
                        },
                    })
                    .collect();
                Type::FuncProto {
                    ret: target,
                    params: b.params(params),
                }
            }
            _ => Type::Void,
        };
        b.set(id, t);
    }
    b
}
