//! VMCOREINFO text: the parser and the scan of raw memory for it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmi_profile::VmcoreInfo;

fuzz_target!(|data: &[u8]| {
    let _ = VmcoreInfo::parse(data);
    let _ = VmcoreInfo::find(data);
});
