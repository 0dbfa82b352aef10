//! The dump driver's windows_dump parser: headers, notes, page maps, page reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "dump_common.rs"]
mod dump_common;

fuzz_target!(|data: &[u8]| dump_common::exercise(b"PAGEDU64", data));
