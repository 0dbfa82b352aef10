//! `vmi.Object`: a kernel object read by the profile's layout, never by a hard-coded
//! offset. Fields become Python values: integers, enums and pointers as `int`, `bool`,
//! `float`, character arrays as `bytes`, other arrays as lists, nested structs and unions
//! as `vmi.Object`s (read when their own fields are).

use std::sync::Arc;

use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use vmi_core::{AccessContext, Pa, Va, VmiError};
use vmi_profile::{Member, Type, TypeId, Types};

use crate::error::{Failure, Kind};
use crate::target::Inner;

/// Nesting limit of anonymous structs and unions searched for a field (as the profile's).
const MAX_DEPTH: usize = 32;
/// Largest array read as a list (elements), and as `bytes`.
const MAX_ELEMENTS: u64 = 1 << 16;

/// A kernel object of a struct or union type of the profile, at an address of an
/// address space (`Target.object`).
#[pyclass(frozen, module = "vmi", name = "Object")]
pub struct Object {
    inner: Arc<Inner>,
    ty: TypeId,
    address: u64,
    root: Pa,
}

/// A field's value, made without the GIL.
enum Value {
    Unsigned(u128),
    Signed(i128),
    Bool(bool),
    Float(f64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Object(TypeId, u64),
}

fn types(inner: &Inner) -> Result<&Types, Failure> {
    Ok(&inner.os()?.profile().types)
}

impl Object {
    /// The object of type `type_name` at `address` in `pid`'s address space (or the kernel's).
    pub(crate) fn new(
        inner: Arc<Inner>,
        type_name: &str,
        address: u64,
        pid: Option<u64>,
    ) -> Result<Self, Failure> {
        let ty = types(&inner)?.find_composite(type_name).ok_or_else(|| {
            Failure::bare(&VmiError::NotFound {
                kind: "struct or union type",
                name: type_name.to_owned(),
            })
        })?;
        let root = inner.root(pid)?;
        Ok(Self {
            inner,
            ty,
            address,
            root,
        })
    }

    /// Reads `len` bytes at `address` of the object's address space.
    fn read(&self, address: u64, len: u64) -> Result<Vec<u8>, Failure> {
        self.inner
            .read(AccessContext::paging(Va(address), self.root), len, false)
    }

    /// The member `name` of this object's type, searched through anonymous members:
    /// its bit offset from the object's start and the member.
    fn member(&self, name: &str) -> Result<Option<(u64, Member)>, Failure> {
        let types = types(&self.inner)?;
        Ok(find_member(types, self.ty, name, 0))
    }

    /// Reads the value of type `ty` at bit `bit_offset` of the object.
    fn value(&self, ty: TypeId, bit_offset: u64, bits: u32) -> Result<Value, Failure> {
        let types = types(&self.inner)?;
        let address = self
            .address
            .checked_add(bit_offset / 8)
            .ok_or_else(|| Failure::new(Kind::Read, "field address overflows"))?;
        self.value_at(types, ty, address, (bit_offset % 8) as u32, bits, 0)
    }

    fn value_at(
        &self,
        types: &Types,
        ty: TypeId,
        address: u64,
        bit_in_byte: u32,
        bits: u32,
        depth: usize,
    ) -> Result<Value, Failure> {
        let unsupported = || {
            Failure::new(
                Kind::NotSupported,
                format!("reading a field of type {}", types.describe(ty)),
            )
        };
        let resolved = types.resolve(ty).ok_or_else(unsupported)?;
        let t = *types.get(resolved).ok_or_else(unsupported)?;
        match t {
            Type::Int { size, encoding, .. } => self
                .integer(address, size, encoding.signed, bit_in_byte, bits)
                .map(|v| match v {
                    Value::Unsigned(n) if encoding.bool => Value::Bool(n != 0),
                    v => v,
                }),
            Type::Enum { size, signed, .. } => {
                self.integer(address, size, signed, bit_in_byte, bits)
            }
            Type::Pointer { .. } => self.integer(address, 8, false, 0, 0),
            Type::Float { size: 4, .. } => {
                let b = self.read(address, 4)?;
                let a: [u8; 4] = b.try_into().map_err(|_| unsupported())?;
                Ok(Value::Float(f64::from(f32::from_le_bytes(a))))
            }
            Type::Float { size: 8, .. } => {
                let b = self.read(address, 8)?;
                let a: [u8; 8] = b.try_into().map_err(|_| unsupported())?;
                Ok(Value::Float(f64::from_le_bytes(a)))
            }
            Type::Struct(_) | Type::Union(_) => Ok(Value::Object(resolved, address)),
            Type::Array { element, count, .. } => {
                let count = u64::from(count);
                let size = types.size_of(element).ok_or_else(unsupported)?;
                let elem = types.resolve(element).and_then(|e| types.get(e).copied());
                if size == 1 && matches!(elem, Some(Type::Int { .. })) {
                    if count > MAX_ELEMENTS {
                        return Err(too_long(count));
                    }
                    return Ok(Value::Bytes(self.read(address, count)?));
                }
                if count > MAX_ELEMENTS || depth > MAX_DEPTH {
                    return Err(too_long(count));
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let a = i
                        .checked_mul(size)
                        .and_then(|o| address.checked_add(o))
                        .ok_or_else(|| Failure::new(Kind::Read, "element address overflows"))?;
                    items.push(self.value_at(types, element, a, 0, 0, depth + 1)?);
                }
                Ok(Value::List(items))
            }
            _ => Err(unsupported()),
        }
    }

    /// An integer of `size` bytes at `address`, or a bitfield of `bits` bits from bit
    /// `bit_in_byte` of it.
    fn integer(
        &self,
        address: u64,
        size: u32,
        signed: bool,
        bit_in_byte: u32,
        bits: u32,
    ) -> Result<Value, Failure> {
        let (len, width) = if bits != 0 {
            // The bytes spanned by the bitfield (at most 17 for a 128-bit field).
            (bit_in_byte.saturating_add(bits).div_ceil(8), bits)
        } else {
            (size, size.saturating_mul(8))
        };
        if len == 0 || len > 16 || width == 0 || width > 128 {
            return Err(Failure::new(
                Kind::NotSupported,
                format!("reading a {size}-byte integer field of {bits} bits"),
            ));
        }
        let bytes = self.read(address, u64::from(len))?;
        let mut raw = [0u8; 16];
        raw[..bytes.len()].copy_from_slice(&bytes);
        let mut v = u128::from_le_bytes(raw);
        if bits != 0 {
            v >>= bit_in_byte;
        }
        if width < 128 {
            v &= (1u128 << width) - 1;
        }
        if signed && width < 128 && v >> (width - 1) & 1 == 1 {
            let extended = v | !((1u128 << width) - 1);
            return Ok(Value::Signed(extended as i128));
        }
        Ok(if signed {
            Value::Signed(v as i128)
        } else {
            Value::Unsigned(v)
        })
    }

    fn to_py<'py>(&self, py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyAny>> {
        Ok(match v {
            Value::Unsigned(n) => n.into_pyobject(py)?.into_any(),
            Value::Signed(n) => n.into_pyobject(py)?.into_any(),
            Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
            Value::Float(f) => f.into_pyobject(py)?.into_any(),
            Value::Bytes(b) => PyBytes::new(py, &b).into_any(),
            Value::List(l) => {
                let items = l
                    .into_iter()
                    .map(|v| self.to_py(py, v))
                    .collect::<PyResult<Vec<_>>>()?;
                PyList::new(py, items)?.into_any()
            }
            Value::Object(ty, address) => Bound::new(
                py,
                Object {
                    inner: self.inner.clone(),
                    ty,
                    address,
                    root: self.root,
                },
            )?
            .into_any(),
        })
    }

    /// The value of the field at dotted `path` (`"se.vruntime"`).
    fn field<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyAny>> {
        let mut current: Bound<'py, PyAny> = Bound::new(
            py,
            Object {
                inner: self.inner.clone(),
                ty: self.ty,
                address: self.address,
                root: self.root,
            },
        )?
        .into_any();
        for part in path.split('.') {
            let obj = current.cast::<Object>().map_err(|_| {
                PyAttributeError::new_err(format!("{path}: {part} is not in a struct or union"))
            })?;
            let next = obj.get().attribute(py, part)?;
            current = next;
        }
        Ok(current)
    }

    /// Reads field `name`, an `AttributeError` when the type has none.
    fn attribute<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let value = py.detach(|| -> Result<Option<Value>, Failure> {
            let Some((bit_offset, m)) = self.member(name)? else {
                return Ok(None);
            };
            self.value(m.ty, bit_offset, m.bitfield_size).map(Some)
        })?;
        match value {
            Some(v) => self.to_py(py, v),
            None => Err(PyAttributeError::new_err(format!(
                "{} has no field {name:?}",
                self.type_name()
            ))),
        }
    }

    fn type_name(&self) -> String {
        match types(&self.inner) {
            Ok(t) => t.describe(self.ty),
            Err(_) => "?".into(),
        }
    }
}

fn too_long(count: u64) -> Failure {
    Failure::new(
        Kind::NotSupported,
        format!("reading an array of {count} elements (at most {MAX_ELEMENTS})"),
    )
}

/// `name` among the members of the composite `ty`, then among those of its anonymous
/// members (depth first, bounded): the bit offset from the start of `ty` and the member.
fn find_member(types: &Types, ty: TypeId, name: &str, depth: usize) -> Option<(u64, Member)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let c = types.composite(ty)?;
    let members = types.members(c);
    if let Some(m) = members.iter().find(|m| types.str(m.name) == name) {
        return Some((m.bit_offset, *m));
    }
    members.iter().filter(|m| m.name.is_anon()).find_map(|m| {
        let (off, found) = find_member(types, m.ty, name, depth + 1)?;
        Some((m.bit_offset.checked_add(off)?, found))
    })
}

/// The names of the fields of `ty`, anonymous members flattened (bounded).
fn field_names(types: &Types, ty: TypeId, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(c) = types.composite(ty) else {
        return;
    };
    for m in types.members(c) {
        if m.name.is_anon() {
            field_names(types, m.ty, depth + 1, out);
        } else {
            out.push(types.str(m.name).to_owned());
        }
    }
}

#[pymethods]
impl Object {
    /// Its address.
    #[getter]
    fn address(&self) -> u64 {
        self.address
    }

    /// Its type, as C spells it (`struct task_struct`).
    #[getter(type_name)]
    fn py_type_name(&self) -> String {
        self.type_name()
    }

    /// Its size in bytes.
    #[getter]
    fn size(&self) -> PyResult<Option<u64>> {
        Ok(types(&self.inner)?.size_of(self.ty))
    }

    /// The names of its fields (members of anonymous structs and unions included).
    fn fields(&self) -> PyResult<Vec<String>> {
        let mut out = Vec::new();
        field_names(types(&self.inner)?, self.ty, 0, &mut out);
        Ok(out)
    }

    /// The byte offset of field `path` (dotted through nested structs: `"se.vruntime"`).
    fn offset_of(&self, path: &str) -> PyResult<u64> {
        let types = types(&self.inner)?;
        let mut ty = self.ty;
        let mut bits = 0u64;
        for part in path.split('.') {
            let (off, m) = find_member(types, ty, part, 0).ok_or_else(|| {
                PyAttributeError::new_err(format!(
                    "{} has no field {path:?}",
                    types.describe(self.ty)
                ))
            })?;
            bits = bits
                .checked_add(off)
                .ok_or_else(|| PyAttributeError::new_err("offset overflows"))?;
            ty = m.ty;
        }
        Ok(bits / 8)
    }

    /// The struct or union that pointer field `name` points to, as an object in the same
    /// address space: `task.deref("mm")`, `task.deref("real_parent").pid`. Raises
    /// `vmi.ReadError` for a NULL pointer.
    fn deref(&self, py: Python<'_>, name: &str) -> PyResult<Object> {
        let types = types(&self.inner)?;
        let Some((bit_offset, m)) = self.member(name)? else {
            return Err(PyAttributeError::new_err(format!(
                "{} has no field {name:?}",
                self.type_name()
            )));
        };
        let target = match types.resolve(m.ty).and_then(|id| types.get(id).copied()) {
            Some(Type::Pointer { target }) => target,
            _ => {
                return Err(Failure::new(
                    Kind::Other,
                    format!("{name} is a {}, not a pointer", types.describe(m.ty)),
                )
                .into());
            }
        };
        // A pointer to a forward declaration: the definition of the same name.
        let pointee = match types.resolve(target).and_then(|id| types.get(id).copied()) {
            Some(Type::Fwd { name: n, .. }) => types.find_composite(types.str(n)),
            _ => types.resolve(target),
        }
        .filter(|id| types.composite(*id).is_some())
        .ok_or_else(|| {
            Failure::new(
                Kind::NotSupported,
                format!(
                    "{name} points to {}, not a struct or union",
                    types.describe(target)
                ),
            )
        })?;
        let value = py.detach(|| self.value(m.ty, bit_offset, 0))?;
        match value {
            Value::Unsigned(0) => Err(Failure::new(Kind::Read, format!("{name} is NULL")).into()),
            Value::Unsigned(address) => Ok(Object {
                inner: self.inner.clone(),
                ty: pointee,
                address: u64::try_from(address)
                    .map_err(|_| Failure::new(Kind::Read, "pointer wider than 64 bits"))?,
                root: self.root,
            }),
            _ => Err(Failure::new(Kind::Other, format!("{name} is not a pointer")).into()),
        }
    }

    /// The field at dotted `path`: `task["se.vruntime"]`.
    fn __getitem__<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyAny>> {
        self.field(py, path)
    }

    fn __getattr__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.attribute(py, name)
    }

    fn __dir__(&self) -> PyResult<Vec<String>> {
        let mut names = self.fields()?;
        names.extend(
            [
                "address",
                "type_name",
                "size",
                "fields",
                "offset_of",
                "deref",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        Ok(names)
    }

    fn __repr__(&self) -> String {
        format!("<vmi.Object {} at {:#x}>", self.type_name(), self.address)
    }
}
