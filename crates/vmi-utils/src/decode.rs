//! Function arguments and return values decoded by their types from the profile (the
//! kernel's BTF function prototypes): integers by size and sign, `bool`, enums by
//! constant name, `char *` as a string, pointers to structs as their fields (one level,
//! scalars only), other pointers in hex.
//!
//! Guest data is hostile: strings are bounded ([`MAX_STRING`]), struct members are
//! bounded ([`MAX_FIELDS`]), type chains are bounded by the profile's resolver, and a
//! read that fails gives [`Value::Unreadable`] with the reason, never a made-up value.

use vmi_arch_amd64::Amd64;
use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};
use vmi_profile::Profile;
use vmi_profile::{Type, TypeId};

/// Most bytes of a string argument.
pub const MAX_STRING: usize = 4096;
/// Most members of a struct shown.
pub const MAX_FIELDS: usize = 64;

/// A decoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A `bool`.
    Bool(bool),
    /// An enum constant by name (or the number when no constant has that value).
    Enum(String),
    /// A string (`char *`).
    Str(String),
    /// A pointer, or anything shown as a number in hex.
    Ptr(u64),
    /// The fields of a pointed-to struct, by name.
    Struct(Vec<(String, Value)>),
    /// Could not be read: why.
    Unreadable(String),
}

/// A function's prototype from the profile: its parameters' names and types.
#[derive(Clone, Debug)]
pub struct Signature {
    /// Parameter names and types, in order (at most six are passed in registers).
    pub params: Vec<(String, TypeId)>,
    /// The return type (`None`: `void`).
    pub ret: Option<TypeId>,
}

/// Finds `name`'s prototype in the profile's types (`None` without BTF for it).
pub fn signature(profile: &Profile, name: &str) -> Option<Signature> {
    let types = &profile.types;
    let proto = types.iter().find_map(|(_, t)| match t {
        Type::Func { name: n, proto, .. } if types.str(*n) == name => Some(*proto),
        _ => None,
    })?;
    let Type::FuncProto { ret, params } = types.get(proto)? else {
        return None;
    };
    Some(Signature {
        params: types
            .params(*params)
            .iter()
            .map(|p| (types.str(p.name).to_string(), p.ty))
            .collect(),
        ret: (ret.0 != 0).then_some(*ret),
    })
}

/// Decodes values of profile types from guest memory in one address space.
pub struct Decoder<'a, D: VmiRead<Architecture = Amd64>> {
    core: &'a VmiCore<D>,
    profile: &'a Profile,
    root: Pa,
}

impl<'a, D: VmiRead<Architecture = Amd64>> Decoder<'a, D> {
    /// A decoder reading through page-table root `root` (an event's: kernel and the
    /// current process's user memory alike).
    pub fn new(core: &'a VmiCore<D>, profile: &'a Profile, root: Pa) -> Self {
        Self {
            core,
            profile,
            root,
        }
    }

    /// The value `raw` (a register) of type `ty`, following pointers one level.
    pub fn value(&self, ty: TypeId, raw: u64) -> Value {
        self.value_depth(ty, raw, 0)
    }

    fn value_depth(&self, ty: TypeId, raw: u64, depth: u8) -> Value {
        let types = &self.profile.types;
        let Some(id) = types.resolve(ty) else {
            return Value::Ptr(raw);
        };
        match types.get(id) {
            Some(Type::Int { size, encoding, .. }) => {
                let bits = (*size).min(8) * 8;
                let mask = if bits >= 64 { !0 } else { (1u64 << bits) - 1 };
                let v = raw & mask;
                if encoding.bool {
                    Value::Bool(v != 0)
                } else if encoding.signed && bits > 0 && bits < 64 {
                    let shift = 64 - bits;
                    Value::Int(((v << shift) as i64) >> shift)
                } else if encoding.signed {
                    Value::Int(v as i64)
                } else {
                    Value::Uint(v)
                }
            }
            Some(Type::Enum { values, size, .. }) => {
                let bits = (*size).min(8) * 8;
                let v = if bits >= 64 {
                    raw
                } else {
                    raw & ((1u64 << bits) - 1)
                };
                match types
                    .enumerators(*values)
                    .iter()
                    .find(|e| e.value as u64 & mask_of(bits) == v)
                {
                    Some(e) => Value::Enum(types.str(e.name).to_string()),
                    None => Value::Uint(v),
                }
            }
            Some(Type::Pointer { target }) if depth == 0 && raw != 0 => {
                let target_id = types.resolve(*target);
                match target_id.and_then(|t| types.get(t)) {
                    Some(Type::Int { size: 1, .. }) => {
                        match self
                            .core
                            .read_string(AccessContext::paging(Va(raw), self.root), MAX_STRING)
                        {
                            Ok(s) => Value::Str(s),
                            Err(e) => Value::Unreadable(format!("{raw:#x}: {e}")),
                        }
                    }
                    Some(Type::Struct(c)) => {
                        let mut fields = Vec::new();
                        for m in types.members(c).iter().take(MAX_FIELDS) {
                            let name = types.str(m.name);
                            if name.is_empty() || m.bitfield_size != 0 {
                                continue;
                            }
                            let Some(mid) = types.resolve(m.ty) else {
                                continue;
                            };
                            let size = match types.get(mid) {
                                Some(Type::Int { size, .. }) | Some(Type::Enum { size, .. }) => {
                                    u64::from(*size)
                                }
                                Some(Type::Pointer { .. }) => 8,
                                _ => continue,
                            };
                            let at = Va(raw).checked_add(m.bit_offset / 8);
                            let read = at
                                .ok_or_else(|| {
                                    VmiError::InvalidArgument(format!("{raw:#x} + field wraps"))
                                })
                                .and_then(|at| {
                                    self.core.read_address_width(
                                        AccessContext::paging(at, self.root),
                                        usize::try_from(size).unwrap_or(8),
                                    )
                                });
                            let v = match read {
                                Ok(v) => self.value_depth(m.ty, v, depth + 1),
                                Err(e) => Value::Unreadable(e.to_string()),
                            };
                            fields.push((name.to_string(), v));
                        }
                        Value::Struct(fields)
                    }
                    _ => Value::Ptr(raw),
                }
            }
            _ => Value::Ptr(raw),
        }
    }

    /// The arguments of a call by `sig`, from the System V argument registers.
    pub fn arguments(&self, sig: &Signature, registers: [u64; 6]) -> Vec<(String, Value)> {
        sig.params
            .iter()
            .zip(registers)
            .map(|((name, ty), raw)| (name.clone(), self.value(*ty, raw)))
            .collect()
    }
}

fn mask_of(bits: u32) -> u64 {
    if bits >= 64 { !0 } else { (1u64 << bits) - 1 }
}
