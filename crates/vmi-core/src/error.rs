//! The one error type of the core, shared by drivers and OS layers.

use std::fmt;

use crate::{AccessContext, AddressContext, Gfn};

/// Why a page-table walk stopped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum FaultKind {
    /// The entry's present bit is clear.
    NotPresent,
    /// The entry has a bit set that must be zero at this level (e.g. PS in a PML4E).
    ReservedBit,
    /// The address is not canonical for the paging mode.
    NonCanonical,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotPresent => "not present",
            Self::ReservedBit => "reserved bit set",
            Self::NonCanonical => "non-canonical address",
        })
    }
}

/// A translation failure: where, at which level, and the entry that stopped it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageFault {
    /// The address and page-table root that were being translated.
    pub ctx: AddressContext,
    /// Paging level that faulted (on AMD64: 5 = PML5, 4 = PML4, ... 1 = PT; 0 before the walk).
    pub level: u8,
    /// The page-table entry that faulted (0 for a non-canonical address). OS layers use it
    /// to tell transition, paged-out and demand-zero pages apart.
    pub entry: u64,
    /// Why.
    pub kind: FaultKind,
}

impl fmt::Display for PageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page fault at {}: {} at level {} (entry {:#x})",
            self.ctx, self.kind, self.level, self.entry
        )
    }
}

/// Why a physical page cannot be read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum PageAbsence {
    /// The dump does not contain this page (a hole between ranges, or a sparse format).
    NotInDump,
    /// The dump tool excluded it on purpose (e.g. makedumpfile's filtering).
    Excluded,
    /// The address is beyond the target's physical memory.
    BeyondMemory,
    /// The address is not RAM (MMIO, PCI hole) in the target's memory map.
    NotRam,
}

impl fmt::Display for PageAbsence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotInDump => "page not present in dump",
            Self::Excluded => "page excluded from dump",
            Self::BeyondMemory => "beyond physical memory",
            Self::NotRam => "not RAM",
        })
    }
}

/// Errors of every layer of the framework.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmiError {
    /// A virtual address could not be translated.
    #[error("{0}")]
    PageFault(PageFault),

    /// A physical page is not available.
    #[error("cannot read physical page {gfn}: {reason}")]
    PageUnavailable {
        /// The frame.
        gfn: Gfn,
        /// Why.
        reason: PageAbsence,
    },

    /// A read or write spanning pages stopped part-way.
    #[error("partial access at {ctx}: {completed} of {expected} bytes")]
    PartialAccess {
        /// Where the access started.
        ctx: AccessContext,
        /// Bytes requested.
        expected: usize,
        /// Bytes transferred before the failure.
        completed: usize,
        /// What stopped it.
        #[source]
        source: Box<VmiError>,
    },

    /// The target, driver or OS layer does not support an operation.
    #[error("{operation} is not supported by {by}")]
    NotSupported {
        /// What was asked.
        operation: &'static str,
        /// Who refuses (a driver, an OS layer, a hypervisor).
        by: &'static str,
    },

    /// A caller-provided argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Guest or dump data is malformed; the message says what and where.
    #[error("malformed {what} at {address:#x}: {detail}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// Address (physical, virtual or file offset, as `what` says).
        address: u64,
        /// What is wrong.
        detail: String,
    },

    /// A bounded walk reached its limit or found a cycle.
    #[error("{what}: walk stopped after {count} entries ({reason})")]
    WalkLimit {
        /// The structure being walked.
        what: &'static str,
        /// Entries visited.
        count: usize,
        /// `"cycle"` or `"limit"`.
        reason: &'static str,
    },

    /// A named thing (symbol, field, process, vCPU...) does not exist.
    #[error("{kind} not found: {name}")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// Its name or number.
        name: String,
    },

    /// An event-loop wait ended without an event.
    #[error("timed out")]
    Timeout,

    /// An operation needs the registers of an event or vCPU and none were given.
    #[error("{0} needs vCPU registers")]
    NoRegisters(&'static str),

    /// I/O with the target (file, socket) failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A driver-specific failure, with its own error as the source.
    #[error("{driver} driver: {message}")]
    Driver {
        /// Which driver.
        driver: &'static str,
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// An OS-layer failure, with its own error as the source.
    #[error("{os}: {message}")]
    Os {
        /// Which OS layer.
        os: &'static str,
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl VmiError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A driver error without a source.
    pub fn driver(driver: &'static str, message: impl Into<String>) -> Self {
        Self::Driver {
            driver,
            message: message.into(),
            source: None,
        }
    }

    /// A "not supported" error.
    pub fn not_supported(operation: &'static str, by: &'static str) -> Self {
        Self::NotSupported { operation, by }
    }

    /// The page fault behind this error, looking through partial accesses.
    pub fn page_fault(&self) -> Option<&PageFault> {
        match self {
            Self::PageFault(pf) => Some(pf),
            Self::PartialAccess { source, .. } => source.page_fault(),
            _ => None,
        }
    }

    /// Whether the error means "this memory cannot be read" (a fault or a missing page),
    /// as opposed to a broken target.
    pub fn is_memory_unavailable(&self) -> bool {
        match self {
            Self::PageFault(_) | Self::PageUnavailable { .. } => true,
            Self::PartialAccess { source, .. } => source.is_memory_unavailable(),
            _ => false,
        }
    }
}

impl From<PageFault> for VmiError {
    fn from(pf: PageFault) -> Self {
        Self::PageFault(pf)
    }
}
