//! PDB (MSF streams, TPI, symbols) into a profile.
//!
//! `parse_pdb` runs the third-party `pdb2` parser under `catch_unwind` and turns its
//! panics into errors (it has `unreachable!()`s that hostile input reaches, e.g. a bad
//! numeric leaf in `tpi/data.rs`). libFuzzer's panic hook aborts on any panic, caught or
//! not, so this target installs a silent hook: a panic that `parse_pdb` catches is the
//! contained failure it is, and one that escapes still aborts at the fuzz target's FFI
//! boundary and is reported as a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    if let Ok(p) = vmi_profile::pdb::parse_pdb(data, "fuzz.pdb") {
        let _ = p.offset_of("_EPROCESS", "ActiveProcessLinks");
        for (id, _) in p.types.iter().take(4096) {
            let _ = p.types.size_of(id);
        }
    }
});
