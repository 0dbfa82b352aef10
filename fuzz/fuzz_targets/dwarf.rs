//! DWARF (an ELF object with debug info) into a profile.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = vmi_profile::dwarf::parse_dwarf(data, "fuzz.o") {
        let _ = p.offset_of("task_struct", "tasks");
        for (id, _) in p.types.iter().take(4096) {
            let _ = p.types.size_of(id);
        }
    }
});
