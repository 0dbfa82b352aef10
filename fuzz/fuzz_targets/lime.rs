//! The dump driver's lime parser: headers, notes, page maps, page reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "dump_common.rs"]
mod dump_common;

fuzz_target!(|data: &[u8]| dump_common::exercise(&0x4C69_4D45u32.to_le_bytes(), data));
