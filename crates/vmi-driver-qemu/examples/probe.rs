//! Attaches to a QEMU by its QMP socket and prints what the driver finds.
//!
//! `cargo run -p vmi-driver-qemu --example probe -- /path/qmp.sock`

use vmi_core::{VcpuId, VmiDriver, VmiQueryRegisters, VmiRead, VmiVmControl};
use vmi_driver_qemu::QemuDriver;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: probe QMP_SOCKET")?;
    let d = QemuDriver::attach(&path)?;
    println!(
        "QEMU {} kvm={} pid={:?}",
        d.qemu_version(),
        d.is_kvm(),
        d.qemu_pid()
    );
    println!("access path: {:?}", d.access_path());
    println!("info: {:?}", d.info()?);
    println!("state: {:?}", d.state()?);
    for (r, id, off) in d.ram_layout() {
        println!("  {:#x}-{:#x} -> {id} @{off:#x}", r.start, r.end);
    }
    println!("ranges: {:?}", d.physical_ranges()?);
    for v in 0..d.info()?.vcpus {
        let r = d.registers(VcpuId(v))?;
        println!(
            "vCPU {v}: rip={:#x} rsp={:#x} cr3={:#x} gs_base={:#x} kgs={:#x} efer={:#x}",
            r.rip, r.rsp, r.cr3.0, r.gs_base, r.kernel_gs_base, r.efer
        );
    }
    println!("state: {:?}, gdbstub: {:?}", d.state()?, d.gdbstub_status());
    Ok(())
}
