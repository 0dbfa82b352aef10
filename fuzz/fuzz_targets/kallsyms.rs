//! kallsyms: the table search and decoder over a kernel image in memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmi_profile::kallsyms::{self, ImageMemory};

const BASE: u64 = 0xffff_ffff_8200_0000;

fuzz_target!(|data: &[u8]| {
    let mem = ImageMemory::new(vec![(BASE, data)]);
    let extent = BASE..BASE + data.len() as u64;
    if let Ok(k) = kallsyms::search(&mem, extent, 0xffff_ffff_8100_0000..BASE, &[]) {
        let _ = k.into_table();
    }
});
