//! The dump driver's elf parser: headers, notes, page maps, page reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "dump_common.rs"]
mod dump_common;

fuzz_target!(|data: &[u8]| dump_common::exercise(b"\\x7fELF\\x02\\x01\\x01", data));
