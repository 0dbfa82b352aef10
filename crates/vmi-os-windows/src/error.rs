//! Windows-specific failures, carried inside [`VmiError::Os`].

use vmi_core::{Va, VmiError};

/// Why a virtual page cannot be read, decoded from its software PTE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotPresent {
    /// Paged out to page file `file` at byte `offset`.
    PageFile {
        /// Page-file number (low bits of the PTE).
        file: u8,
        /// Byte offset in that page file.
        offset: u64,
    },
    /// Committed but never touched: reads as zeros once the guest touches it.
    DemandZero,
    /// Refers to a prototype PTE (shared section memory).
    Prototype,
    /// Nothing is mapped (zero PTE or a missing upper-level table).
    Unmapped,
}

impl std::fmt::Display for NotPresent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PageFile { file, offset } => {
                write!(f, "paged out (page file {file}, offset {offset:#x})")
            }
            Self::DemandZero => f.write_str("demand-zero (not yet materialised)"),
            Self::Prototype => f.write_str("backed by a prototype PTE"),
            Self::Unmapped => f.write_str("not mapped"),
        }
    }
}

/// Errors of the Windows layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WindowsError {
    /// A page is not in memory; says which software state it is in.
    #[error("page at {va} is not present: {state}")]
    NotPresent {
        /// The address.
        va: Va,
        /// Its state.
        state: NotPresent,
    },
    /// The kernel could not be found; lists what was tried.
    #[error("kernel not found ({0})")]
    KernelNotFound(String),
    /// No profile for this kernel.
    #[error("no profile for {pdb} {id} in {searched}")]
    NoProfile {
        /// PDB name.
        pdb: String,
        /// GUID+age.
        id: String,
        /// Where it looked.
        searched: String,
    },
    /// The profile lacks something this layer needs.
    #[error("profile lacks {0}")]
    Profile(String),
}

impl From<WindowsError> for VmiError {
    fn from(e: WindowsError) -> Self {
        VmiError::Os {
            os: "windows",
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// The [`WindowsError`] inside a [`VmiError`], if any.
pub fn windows_error(e: &VmiError) -> Option<&WindowsError> {
    match e {
        VmiError::Os {
            source: Some(s), ..
        } => s.downcast_ref::<WindowsError>(),
        VmiError::PartialAccess { source, .. } => windows_error(source),
        _ => None,
    }
}

pub(crate) fn malformed(what: &'static str, address: u64, detail: impl Into<String>) -> VmiError {
    VmiError::Malformed {
        what,
        address,
        detail: detail.into(),
    }
}
