//! LiME (Linux Memory Extractor) dumps: a sequence of 32-byte headers, each followed by
//! the bytes of one physical range.
//!
//! Header (little-endian): magic `0x4C694D45` ("EMiL" on disk), version u32 (1), start
//! u64, end u64 (inclusive), 8 reserved bytes.

use vmi_core::VmiError;

use crate::data::{le_u32, le_u64, malformed};
use crate::ranges::{RangeMap, Segment};

/// The LiME magic as a little-endian u32.
pub(crate) const LIME_MAGIC: u32 = 0x4C69_4D45;
/// Size of one LiME range header.
pub(crate) const LIME_HEADER_SIZE: u64 = 32;

/// Parses every range header. Each iteration consumes at least one header plus one byte,
/// so the loop is bounded by the file size.
pub(crate) fn parse(data: &[u8]) -> Result<RangeMap, VmiError> {
    let len = data.len() as u64;
    let mut pos = 0u64;
    let mut segments = Vec::new();
    while pos < len {
        let Some(h) = crate::data::slice_at(data, pos, LIME_HEADER_SIZE) else {
            return Err(malformed(
                "LiME header",
                pos,
                "truncated header at the end of the file",
            ));
        };
        let magic = le_u32(h, 0);
        if magic != LIME_MAGIC {
            return Err(malformed(
                "LiME header",
                pos,
                format!("bad magic {magic:#x}"),
            ));
        }
        let version = le_u32(h, 4);
        if version != 1 {
            return Err(VmiError::not_supported(
                "LiME versions other than 1",
                "the dump driver",
            ));
        }
        let start = le_u64(h, 8);
        let end = le_u64(h, 16);
        let size = end
            .checked_sub(start)
            .and_then(|d| d.checked_add(1))
            .ok_or_else(|| {
                malformed(
                    "LiME header",
                    pos,
                    format!("range {start:#x}..={end:#x} is empty or inverted"),
                )
            })?;
        let data_at = pos + LIME_HEADER_SIZE;
        let next = data_at
            .checked_add(size)
            .filter(|&n| n <= len)
            .ok_or_else(|| {
                malformed(
                    "LiME range",
                    data_at,
                    format!("{size:#x} bytes for {start:#x} run past the end of the file"),
                )
            })?;
        segments.push(Segment {
            start,
            len: size,
            file_offset: data_at,
        });
        pos = next;
    }
    RangeMap::new(segments, len)
}

/// Builds a LiME image of `ranges` (`(physical start, bytes)`), for tests and tools.
pub fn build_lime(ranges: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(start, bytes) in ranges {
        if bytes.is_empty() {
            continue;
        }
        out.extend_from_slice(&LIME_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&(start + bytes.len() as u64 - 1).to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(bytes);
    }
    out
}
