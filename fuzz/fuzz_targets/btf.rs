//! BTF: parse, then every lookup a profile answers (sizes, names, fields through
//! anonymous members).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(types) = vmi_profile::btf::parse_btf(data, "fuzz") {
        for (id, _) in types.iter().take(4096) {
            let _ = types.size_of(id);
            let _ = types.describe(id);
            let _ = types.resolve(id);
        }
        for (s, f) in [
            ("task_struct", "tasks"),
            ("task_struct", "thread.sp"),
            ("a", "b.c"),
        ] {
            let _ = types.field(s, f);
        }
    }
});
