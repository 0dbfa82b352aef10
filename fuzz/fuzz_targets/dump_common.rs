//! Shared by the dump targets: open the bytes as a dump and use every entry point.

use vmi_core::{Gfn, VcpuId, VmiDriver, VmiQueryRegisters, VmiRead};
use vmi_driver_dump::{DumpDriver, DumpOptions};

/// Opens `bytes` (with `magic` written over its start, so the fuzzer stays in one
/// format's parser) and reads registers, notes, ranges and pages.
pub fn exercise(magic: &[u8], data: &[u8]) {
    let mut bytes = data.to_vec();
    let n = magic.len().min(bytes.len());
    bytes[..n].copy_from_slice(&magic[..n]);
    let Ok(d) = DumpDriver::from_bytes(bytes, DumpOptions::default()) else {
        return;
    };
    let _ = d.vmcoreinfo();
    let _ = d.kdump_header();
    let _ = d.windows_header();
    let info = d.info();
    for v in 0..2 {
        let _ = d.registers(VcpuId(v));
    }
    let ranges = d.physical_ranges().unwrap_or_default();
    let mut buf = vec![0u8; 4096];
    let mut gfns: Vec<u64> = (0..16).collect();
    gfns.extend(ranges.iter().take(16).map(|r| r.start.0 / 4096));
    if let Ok(i) = info {
        gfns.push(i.max_gfn.0);
    }
    for g in gfns {
        let _ = d.read_page(Gfn(g), 0, &mut buf);
        let _ = d.read_page(Gfn(g), 4090, &mut buf[..6]);
    }
}
