//! Declarative access: a struct of the offsets, sizes and symbols an OS layer needs, loaded
//! from a [`Profile`](crate::Profile) in one call, see [`profile_struct!`](crate::profile_struct).

use crate::types::FieldInfo;

/// The entries a declarative struct needed and the profile lacks — all of them, not the first.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("profile lacks {} entries needed by {target}: {}", entries.len(), entries.join(", "))]
pub struct MissingEntries {
    /// Name of the struct being loaded.
    pub target: &'static str,
    /// Each missing entry, such as `offset task_struct.tasks` or `symbol init_task`.
    pub entries: Vec<String>,
}

/// A field type of a declarative struct: a plain value is required, an `Option` optional.
pub trait Entry<V>: Sized {
    /// Builds the field from a lookup result; required entries record themselves in
    /// `missing` when absent.
    fn from_lookup(
        found: Option<V>,
        describe: impl FnOnce() -> String,
        missing: &mut Vec<String>,
    ) -> Self;
}

macro_rules! entry_impls {
    ($($t:ty => $default:expr),* $(,)?) => {$(
        impl Entry<$t> for $t {
            fn from_lookup(
                found: Option<$t>,
                describe: impl FnOnce() -> String,
                missing: &mut Vec<String>,
            ) -> Self {
                found.unwrap_or_else(|| {
                    missing.push(describe());
                    $default
                })
            }
        }
        impl Entry<$t> for Option<$t> {
            fn from_lookup(
                found: Option<$t>,
                _describe: impl FnOnce() -> String,
                _missing: &mut Vec<String>,
            ) -> Self {
                found
            }
        }
    )*};
}

entry_impls! {
    u64 => 0,
    i64 => 0,
    FieldInfo => FieldInfo { offset: 0, bit_offset: 0, size: None, bit_size: None, ty: crate::TypeId::VOID },
}

/// Lookups behind each entry kind of [`profile_struct!`](crate::profile_struct).
pub mod lookup {
    use crate::{FieldInfo, Profile};

    /// Byte offset of `path` in `ty` (through anonymous members, dotted paths allowed).
    pub fn offset(p: &Profile, ty: &str, path: &str) -> Option<u64> {
        p.types.offset_of(ty, path).ok()
    }

    /// Full location of `path` in `ty`.
    pub fn field(p: &Profile, ty: &str, path: &str) -> Option<FieldInfo> {
        p.types.field(ty, path).ok()
    }

    /// Size of the named type.
    pub fn size(p: &Profile, ty: &str) -> Option<u64> {
        p.types.type_size(ty)
    }

    /// Address of a symbol.
    pub fn symbol(p: &Profile, name: &str) -> Option<u64> {
        p.symbols.address(name)
    }

    /// Value of an enum constant.
    pub fn enum_value(p: &Profile, enum_name: &str, constant: &str) -> Option<i64> {
        p.types.enum_value(enum_name, constant)
    }
}

/// Descriptions used in [`MissingEntries`].
pub mod describe {
    /// `offset type.path`.
    pub fn offset(ty: &str, path: &str) -> String {
        format!("offset {ty}.{path}")
    }

    /// `field type.path`.
    pub fn field(ty: &str, path: &str) -> String {
        format!("field {ty}.{path}")
    }

    /// `size type`.
    pub fn size(ty: &str) -> String {
        format!("size {ty}")
    }

    /// `symbol name`.
    pub fn symbol(name: &str) -> String {
        format!("symbol {name}")
    }

    /// `enum enum::constant`.
    pub fn enum_value(enum_name: &str, constant: &str) -> String {
        format!("enum {enum_name}::{constant}")
    }
}

/// Declares a struct of profile entries and a `load(&Profile)` that fills it in one call.
///
/// Each field is `name: Type = kind(args)`, with `kind` one of
///
/// | kind | value | field types |
/// |---|---|---|
/// | `offset("struct", "path.to.field")` | byte offset | `u64`, `Option<u64>` |
/// | `field("struct", "path")` | [`FieldInfo`] (offset, size, bits) | `FieldInfo`, `Option<FieldInfo>` |
/// | `size("type")` | size in bytes | `u64`, `Option<u64>` |
/// | `symbol("name")` | address | `u64`, `Option<u64>` |
/// | `enum_value("enum", "CONSTANT")` | value | `i64`, `Option<i64>` |
///
/// `Option` fields are optional; `load` fails with one [`MissingEntries`] naming every
/// missing required entry.
///
/// ```
/// use vmi_profile::{profile_struct, Profile, TypesBuilder, Type, Composite, Member, TypeId,
///     IntEncoding, SymbolTable, Symbol, Metadata};
///
/// profile_struct! {
///     /// What the task walker needs.
///     pub struct TaskOffsets {
///         /// `task_struct.tasks`.
///         pub tasks: u64 = offset("task_struct", "tasks"),
///         /// `__state` since 5.14, `state` before.
///         pub state: Option<u64> = offset("task_struct", "__state"),
///         pub size: u64 = size("task_struct"),
///         pub init_task: u64 = symbol("init_task"),
///     }
/// }
///
/// # let mut b = TypesBuilder::new();
/// # let int = b.name("int");
/// # let int = b.push(Type::Int { name: int, size: 4, encoding: IntEncoding::default(), bits: 32, bit_offset: 0 });
/// # let tasks = b.name("tasks");
/// # let members = b.members([Member { name: tasks, ty: int, bit_offset: 64, bitfield_size: 0 }]);
/// # let name = b.name("task_struct");
/// # b.push(Type::Struct(Composite { name, size: 16, members }));
/// # let types = b.build().unwrap();
/// # let symbols = SymbolTable::new(vec![Symbol { name: "init_task".into(), address: 0xffff_ffff_8200_0000, kind: Some('D') }]);
/// let profile = Profile::new(Metadata::default(), symbols, types);
/// let t = TaskOffsets::load(&profile).unwrap();
/// assert_eq!((t.tasks, t.state, t.size), (8, None, 16));
///
/// profile_struct! {
///     pub struct Needs {
///         pub a: u64 = offset("task_struct", "nope"),
///         pub b: u64 = symbol("missing_symbol"),
///     }
/// }
/// let err = Needs::load(&profile).unwrap_err();
/// assert_eq!(err.entries, ["offset task_struct.nope", "symbol missing_symbol"]);
/// ```
#[macro_export]
macro_rules! profile_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $fty:ty = $kind:ident ( $($arg:expr),+ $(,)? )
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $fty, )*
        }

        impl $name {
            /// Loads every entry from the profile; the error names each missing required one.
            pub fn load(
                profile: &$crate::Profile,
            ) -> ::core::result::Result<Self, $crate::MissingEntries> {
                let mut missing = ::std::vec::Vec::new();
                $(
                    let $field = <$fty as $crate::access::Entry<_>>::from_lookup(
                        $crate::access::lookup::$kind(profile, $($arg),+),
                        || $crate::access::describe::$kind($($arg),+),
                        &mut missing,
                    );
                )*
                if missing.is_empty() {
                    ::core::result::Result::Ok(Self { $($field),* })
                } else {
                    ::core::result::Result::Err($crate::MissingEntries {
                        target: ::core::stringify!($name),
                        entries: missing,
                    })
                }
            }
        }
    };
}
