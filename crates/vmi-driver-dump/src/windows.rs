//! Windows crash dumps (work in progress in this commit: detection only).

use vmi_arch_amd64::Registers;
use vmi_core::VmiError;

use crate::ranges::RangeMap;

/// `PAGEDU64`.
pub(crate) const SIGNATURE64: &[u8] = b"PAGEDU64";

/// Kind of Windows dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowsDumpKind {
    /// Full.
    Full,
}

/// Windows header fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WindowsHeader {
    /// Processors.
    pub number_processors: u32,
}

pub(crate) struct WindowsDump {
    pub(crate) header: WindowsHeader,
    pub(crate) ranges: RangeMap,
    pub(crate) registers: Registers,
}

pub(crate) fn parse(_data: &[u8]) -> Result<WindowsDump, VmiError> {
    Err(VmiError::not_supported("Windows crash dumps", "this build of the dump driver"))
}
