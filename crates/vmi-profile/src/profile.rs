//! [`Profile`]: metadata, symbols and types together.

use serde::{Deserialize, Serialize};

use crate::error::{ProfileError, Result};
use crate::symbols::{Symbol, SymbolTable};
use crate::types::{FieldInfo, Types};

/// The operating system a profile describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OsKind {
    /// Not known.
    #[default]
    Unknown,
    /// Linux kernel.
    Linux,
    /// Windows kernel or module.
    Windows,
}

/// Identity of a PDB: its GUID and age, as in a PE's CodeView record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PdbId {
    /// GUID bytes in the textual order (`Data1` big-endian first, as printed).
    pub guid: [u8; 16],
    /// Age.
    pub age: u32,
}

impl std::fmt::Display for PdbId {
    /// The symbol-server spelling: 32 upper-case hex digits of the GUID, then the age in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.guid {
            write!(f, "{b:02X}")?;
        }
        write!(f, "{:X}", self.age)
    }
}

/// What a profile is for and where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Operating system.
    pub os: OsKind,
    /// Kernel release (`uname -r`), such as `6.1.0-56-cloud-amd64`.
    pub kernel_release: Option<String>,
    /// The full `linux_banner` string (`Linux version ...`), with its trailing newline.
    pub banner: Option<String>,
    /// GNU build id of the kernel image.
    pub build_id: Option<Vec<u8>>,
    /// PDB identity (Windows).
    pub pdb: Option<PdbId>,
    /// Human-readable descriptions of each input that contributed (file paths, "guest memory").
    pub sources: Vec<String>,
}

/// A symbol profile: what an OS layer asks instead of hard-coding offsets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Identity and provenance.
    pub metadata: Metadata,
    /// Symbols.
    pub symbols: SymbolTable,
    /// Types.
    pub types: Types,
}

impl Profile {
    /// Assembles a profile.
    pub fn new(metadata: Metadata, symbols: SymbolTable, types: Types) -> Self {
        Self {
            metadata,
            symbols,
            types,
        }
    }

    /// The symbol named `name`.
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.get(name)
    }

    /// Address of `name`, or an error naming it.
    pub fn symbol_address(&self, name: &str) -> Result<u64> {
        self.symbols
            .address(name)
            .ok_or_else(|| ProfileError::UnknownSymbol {
                name: name.to_owned(),
            })
    }

    /// Field location by dotted path through anonymous members, see [`Types::field`].
    pub fn field(&self, type_name: &str, path: &str) -> Result<FieldInfo> {
        self.types.field(type_name, path)
    }

    /// Byte offset of a field.
    pub fn offset_of(&self, type_name: &str, path: &str) -> Result<u64> {
        self.types.offset_of(type_name, path)
    }

    /// Size of a named type, or an error naming it.
    pub fn size_of(&self, type_name: &str) -> Result<u64> {
        self.types
            .type_size(type_name)
            .ok_or_else(|| ProfileError::UnknownType {
                name: type_name.to_owned(),
            })
    }

    /// Value of an enum constant.
    pub fn enum_value(&self, enum_name: &str, constant: &str) -> Option<i64> {
        self.types.enum_value(enum_name, constant)
    }
}
