//! Volatility ISF (JSON) import and export.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmi_profile::isf::{ExportOptions, export_isf, parse_isf};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse_isf(data, "fuzz") {
        let _ = p.offset_of("task_struct", "tasks");
        let _ = export_isf(&p, &ExportOptions::default());
    }
});
