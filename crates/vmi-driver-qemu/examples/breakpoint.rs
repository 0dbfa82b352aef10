//! Counts hits of a breakpoint at a guest-virtual address until Ctrl-C, then leaves the
//! guest as found (breakpoint removed, gdbstub released, VM running).
//!
//! `cargo run -p vmi-driver-qemu --example breakpoint -- /path/qmp.sock 0xffffffff81234560`
//!
//! Ctrl-C only sets a flag; [`VmiSession::handle_until`] notices it within 100 ms and
//! returns, and dropping the driver cleans up. (A signal handler must not talk to QEMU.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmi_arch_amd64::Amd64;
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, OsProcess, Va, VmiContext, VmiCore, VmiError,
    VmiEventResponse, VmiHandler, VmiOs, VmiRead, VmiSession,
};
use vmi_driver_qemu::QemuDriver;

/// No OS layer: this example looks at registers only.
struct NoOs;
impl<D: VmiRead> VmiOs<D> for NoOs {
    fn name(&self) -> &'static str {
        "none"
    }
    fn kernel_image_base(&self, _: &VmiCore<D>) -> Result<Va, VmiError> {
        Err(VmiError::not_supported("kernel_image_base", "this example"))
    }
    fn kernel_information_string(&self, _: &VmiCore<D>) -> Result<String, VmiError> {
        Err(VmiError::not_supported(
            "kernel_information_string",
            "this example",
        ))
    }
    fn processes(&self, _: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> {
        Err(VmiError::not_supported("processes", "this example"))
    }
}

struct Count(u64);

impl VmiHandler<QemuDriver, NoOs> for Count {
    type Output = ();
    fn handle_event(&mut self, ctx: VmiContext<'_, QemuDriver, NoOs>) -> VmiEventResponse<Amd64> {
        self.0 += 1;
        if self.0.is_power_of_two() {
            let r = ctx.registers();
            println!(
                "hit {} on vCPU {}: rsp={:#x} cr3={:#x}",
                self.0,
                ctx.vcpu().0,
                r.rsp,
                r.cr3.0
            );
        }
        VmiEventResponse::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(qmp), Some(addr)) = (args.next(), args.next()) else {
        return Err("usage: breakpoint QMP_SOCKET HEX_VA".into());
    };
    let va = u64::from_str_radix(addr.trim_start_matches("0x"), 16)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;

    let core = VmiCore::new(QemuDriver::attach(&qmp)?)?;
    core.monitor_enable(EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(Va(va)),
        kind: BreakpointKind::Hardware,
    })?;
    let session = VmiSession::new(&core, &NoOs);
    let mut count = Count(0);
    session.handle_until(&mut count, &stop)?;
    println!("{} hits; detaching", count.0);
    Ok(()) // dropping `core` drops the driver: breakpoint removed, VM as found
}
