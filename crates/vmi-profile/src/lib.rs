//! Symbol profiles for virtual machine introspection.
//!
//! An OS layer never hard-codes a structure offset: it asks a [`Profile`] — symbols (name →
//! address, nearest symbol for an address), types (struct/union layouts with anonymous
//! members searchable, enums, typedefs) and metadata (OS, banner, build id or PDB identity).
//!
//! Profiles come from what is at hand, with as little from the user as possible:
//!
//! | source | function |
//! |---|---|
//! | vmlinux ELF or vmlinuz bzImage (BTF, banner, build id, kallsyms found in the image) | [`linux::profile_from_kernel_image`] |
//! | raw BTF bytes (e.g. read from guest memory between `__start_BTF` and `__stop_BTF`) | [`btf::parse_btf`] |
//! | kallsyms decoded from guest memory via VMCOREINFO (6.0+) or by validated search | [`kallsyms`] |
//! | VMCOREINFO text | [`VmcoreInfo::parse`] |
//! | System.map | [`sysmap::parse_system_map`] |
//! | Volatility 3 ISF JSON (plain or `.json.xz`), import and export | [`isf`] |
//! | DWARF of an ELF file (debug vmlinux, objects, programs) | [`dwarf::load_dwarf`] |
//! | Microsoft PDB (symbols as RVAs, types, GUID + age) | [`pdb::load_pdb`] |
//! | PE CodeView record (PDB name, GUID, age) of a file or an in-memory image | [`pe::codeview_from_image`] |
//! | Windows symbol servers and caches (`_NT_SYMBOL_PATH` syntax) | [`symsrv::SymbolServer`] |
//! | on-disk cache keyed by banner / build id / PDB identity | [`cache`] |
//!
//! Design decision: this crate does not depend on `vmi-core`. Profiles are data about a
//! kernel build, usable offline (converting BTF to ISF, caching) and by any memory backend;
//! kallsyms decoding therefore reads guest memory through the one-method [`KernelMemory`]
//! trait, which the OS layer implements over its core types.
//!
//! All inputs are treated as hostile: every count and offset is bounds-checked, decompression
//! and allocation sizes are capped, walks are bounded; errors name the input and the problem.
//!
//! | feature | brings |
//! |---|---|
//! | (always) | every loader above; symbol paths with caches and directories |
//! | `symsrv` | downloads from symbol servers over HTTP(S) (`ureq`, `rustls`) |
//!
//! Declarative access: [`profile_struct!`] declares a struct of needed entries loaded in one
//! call with one error naming everything that is missing.

#![forbid(unsafe_code)]

pub mod access;
pub mod btf;
pub mod cache;
mod compact;
pub mod dwarf;
mod error;
pub mod image;
mod index;
pub mod isf;
pub mod kallsyms;
pub mod linux;
pub mod pdb;
pub mod pe;
mod profile;
mod symbols;
pub mod symsrv;
pub mod sysmap;
mod types;
mod vmcoreinfo;

pub use access::MissingEntries;
pub use error::{MemoryError, ProfileError, Result};
pub use kallsyms::KernelMemory;
pub use profile::{Metadata, OsKind, PdbId, Profile};
pub use symbols::{Symbol, SymbolTable};
pub use types::{
    Composite, Enumerator, FieldInfo, IntEncoding, Member, Name, Param, Span, Type, TypeId, Types,
    TypesBuilder, VarSecInfo,
};
pub use vmcoreinfo::VmcoreInfo;
