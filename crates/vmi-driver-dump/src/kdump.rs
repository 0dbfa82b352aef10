//! kdump-compressed dumps (work in progress in this commit: detection only).

use std::ops::Range;

use vmi_core::{Gfn, Pa, VmiError};

use crate::notes::NoteInfo;

/// Signature of the standard layout.
pub(crate) const KDUMP_SIGNATURE: &[u8] = b"KDUMP   ";
/// Signature of the flattened layout.
pub(crate) const FLAT_SIGNATURE: &[u8] = b"makedumpfile\0";

/// Compression of kdump pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KdumpCompression {
    /// zlib.
    Zlib,
}

/// kdump headers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KdumpHeader {
    /// Number of page frames.
    pub max_mapnr: u64,
}

pub(crate) struct Kdump {
    pub(crate) header: KdumpHeader,
    pub(crate) notes: NoteInfo,
}

impl Kdump {
    pub(crate) fn parse(_data: &[u8], _cache: usize) -> Result<Self, VmiError> {
        Err(VmiError::not_supported("kdump-compressed dumps", "this build of the dump driver"))
    }
    pub(crate) fn read_page(&self, _d: &[u8], _g: Gfn, _o: usize, _b: &mut [u8]) -> Result<(), VmiError> {
        Err(VmiError::not_supported("kdump-compressed dumps", "this build of the dump driver"))
    }
    pub(crate) fn ranges(&self) -> Vec<Range<Pa>> {
        Vec::new()
    }
}
