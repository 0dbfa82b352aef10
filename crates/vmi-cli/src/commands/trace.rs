//! `vmi trace`: a breakpoint on a live target, one line per hit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::anyhow;
use serde_json::json;
use vmi_arch_amd64::EventReason;
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, Va, VmiContext, VmiCore, VmiEventResponse,
    VmiHandler, VmiSession,
};
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;

use super::parse_address_with;
use crate::{Cli, Failure, target};

struct Tracer<'a> {
    os: &'a LinuxOs,
    limit: Option<u64>,
    hits: u64,
    json: bool,
}

impl VmiHandler<QemuDriver, LinuxOs> for Tracer<'_> {
    type Output = u64;

    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, QemuDriver, LinuxOs>,
    ) -> VmiEventResponse<vmi_arch_amd64::Amd64> {
        if !matches!(ctx.event().reason, EventReason::Breakpoint { .. }) {
            return VmiEventResponse::continue_();
        }
        self.hits += 1;
        let r = ctx.registers();
        let task = self.os.current_task_from_registers(ctx.core(), r);
        let (pid, comm) = match &task {
            Ok(t) => (Some(t.pid), t.comm.clone()),
            Err(e) => (None, format!("<{e}>")),
        };
        // Function arguments in the x86-64 System V order.
        let args = [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9];
        if self.json {
            let line = json!({"hit": self.hits, "vcpu": ctx.vcpu().0, "rip": format!("{:#x}", r.rip),
                "pid": pid, "comm": comm,
                "args": args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>()});
            println!("{line}");
        } else {
            let args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
            println!(
                "#{:<5} {} pid {:<6} {:<16} rip {:#x}  args({})",
                self.hits,
                ctx.vcpu(),
                pid.map_or("?".into(), |p| p.to_string()),
                comm,
                r.rip,
                args.join(", ")
            );
        }
        VmiEventResponse::continue_()
    }

    fn check_completion(&self) -> Option<u64> {
        self.limit.filter(|&n| self.hits >= n).map(|_| self.hits)
    }
}

/// Runs `vmi trace`.
pub fn run(
    cli: &Cli,
    core: &VmiCore<QemuDriver>,
    location: &str,
    count: Option<u64>,
    software: bool,
) -> Result<(), Failure> {
    let os = {
        let _pause = core.pause_guard()?;
        target::linux(core, cli, None)?
    };
    let va = Va(parse_address_with(
        location,
        Some(&|name: &str| os.symbol_address(name)),
    )?);
    let kind = if software {
        BreakpointKind::Software
    } else {
        BreakpointKind::Hardware
    };
    let monitor = EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(va),
        kind,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| anyhow!("cannot install the Ctrl-C handler: {e}"))?;

    core.monitor_enable(monitor)?;
    eprintln!("tracing {location} at {va} ({kind:?} breakpoint); Ctrl-C to stop");
    let session = VmiSession::new(core, &os);
    let mut tracer = Tracer {
        os: &os,
        limit: count,
        hits: 0,
        json: cli.json,
    };
    let result = session.handle_until(&mut tracer, &stop);
    // Leave the guest as found, whatever happened.
    let removed = core.monitor_disable(monitor);
    result?;
    removed?;
    eprintln!("{} hit(s); breakpoint removed", tracer.hits);
    Ok(())
}
