//! The one error type of this crate.

use std::path::PathBuf;

/// Boxed error returned by a [`KernelMemory`](crate::KernelMemory) implementation.
pub type MemoryError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while loading, converting or caching a profile.
///
/// Every variant that comes from an input names that input (`source` is a path or a short
/// description such as `guest memory`) and says what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// BTF data is malformed.
    #[error("{source_name}: malformed btf at byte {offset:#x}: {what}")]
    Btf {
        /// Where the BTF came from.
        source_name: String,
        /// Byte offset in the BTF blob where the problem was found.
        offset: u64,
        /// What is wrong.
        what: String,
    },

    /// An ELF file is malformed or lacks what we need.
    #[error("{source_name}: {what}")]
    Elf {
        /// The file.
        source_name: String,
        /// What is wrong.
        what: String,
    },

    /// A kernel image (bzImage) is malformed.
    #[error("{source_name}: bad kernel image: {what}")]
    KernelImage {
        /// The file.
        source_name: String,
        /// What is wrong.
        what: String,
    },

    /// A compressed payload could not be decompressed.
    #[error("{source_name}: cannot decompress {format} payload: {what}")]
    Decompress {
        /// The file.
        source_name: String,
        /// The compression format.
        format: &'static str,
        /// What is wrong.
        what: String,
    },

    /// An input declares a size above the limit this crate accepts.
    #[error("{source_name}: {what} is {size} bytes, above the limit of {limit}")]
    TooLarge {
        /// The input.
        source_name: String,
        /// Which size.
        what: &'static str,
        /// The declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// VMCOREINFO text is malformed.
    #[error("vmcoreinfo line {line}: {what}")]
    Vmcoreinfo {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },

    /// Reading guest memory failed.
    #[error("cannot read {len} bytes of guest memory at {va:#x}: {source}")]
    MemoryRead {
        /// Virtual address of the read.
        va: u64,
        /// Length of the read.
        len: usize,
        /// The error of the memory backend.
        #[source]
        source: MemoryError,
    },

    /// The kallsyms tables are malformed or could not be found.
    #[error("kallsyms: {what}")]
    Kallsyms {
        /// What is wrong.
        what: String,
    },

    /// A System.map file has no usable line.
    #[error("{source_name}: no symbol in System.map ({bad_lines} malformed lines)")]
    SystemMap {
        /// The file.
        source_name: String,
        /// Number of malformed lines.
        bad_lines: usize,
    },

    /// A Volatility ISF file is malformed.
    #[error("{source_name}: bad isf: {what}")]
    Isf {
        /// The file.
        source_name: String,
        /// What is wrong.
        what: String,
    },

    /// A PDB file is malformed or lacks what we need.
    #[error("{source_name}: bad pdb: {what}")]
    Pdb {
        /// The file.
        source_name: String,
        /// What is wrong.
        what: String,
    },

    /// A PE image is malformed or has no CodeView (RSDS) record.
    #[error("{source_name}: bad pe image: {what}")]
    Pe {
        /// The file or image.
        source_name: String,
        /// What is wrong.
        what: String,
    },

    /// DWARF debug information is malformed.
    #[error("{source_name}: bad dwarf: {what}")]
    Dwarf {
        /// The file.
        source_name: String,
        /// What is wrong.
        what: String,
    },

    /// A symbol-server path (`_NT_SYMBOL_PATH` syntax) is malformed.
    #[error("bad symbol path {path:?}: {what}")]
    SymbolPath {
        /// The path text.
        path: String,
        /// What is wrong.
        what: String,
    },

    /// A PDB was found neither in a cache nor on any server.
    #[error("{name} {id} not found; tried: {}", tried.join("; "))]
    PdbNotFound {
        /// PDB file name.
        name: String,
        /// Its identity.
        id: crate::profile::PdbId,
        /// Every place looked at, with why it failed.
        tried: Vec<String>,
    },

    /// A cache entry is corrupt, from another version, or for another key.
    #[error("{path}: rejected cache entry: {what}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },

    /// A named type is not in the profile.
    #[error("no type named {name:?} in the profile")]
    UnknownType {
        /// The type name.
        name: String,
    },

    /// A field path does not exist in a type.
    #[error("{type_name} has no field {path:?}")]
    UnknownField {
        /// The type searched.
        type_name: String,
        /// The dotted field path.
        path: String,
    },

    /// A named symbol is not in the profile.
    #[error("no symbol named {name:?} in the profile")]
    UnknownSymbol {
        /// The symbol name.
        name: String,
    },

    /// Entries required by a declarative struct are missing.
    #[error(transparent)]
    Missing(#[from] crate::access::MissingEntries),
}

impl ProfileError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn kallsyms(what: impl Into<String>) -> Self {
        Self::Kallsyms { what: what.into() }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ProfileError> = std::result::Result<T, E>;
