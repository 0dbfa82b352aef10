//! `Target.trace`: a breakpoint on a kernel function of a live Linux guest, its hits
//! collected until a count or a time limit (or Ctrl-C), then removed, as `vmi trace`.

use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vmi_arch_amd64::EventReason;
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, Va, VmiContext, VmiEventResponse, VmiHandler,
    VmiSession,
};
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_target::{Os, Target};

use crate::error::{Failure, Kind};
use crate::target::Inner;

/// Most hits one call collects.
const MAX_HITS: u64 = 1 << 20;

/// One breakpoint hit.
pub(crate) struct Hit {
    vcpu: u16,
    rip: u64,
    pid: Option<u32>,
    comm: String,
    args: [u64; 6],
}

struct Tracer<'a> {
    os: &'a LinuxOs,
    limit: u64,
    deadline: Option<Instant>,
    hits: Vec<Hit>,
    /// A Python exception (Ctrl-C) that stopped the trace.
    interrupted: Option<PyErr>,
}

impl VmiHandler<QemuDriver, LinuxOs> for Tracer<'_> {
    type Output = ();

    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, QemuDriver, LinuxOs>,
    ) -> VmiEventResponse<vmi_arch_amd64::Amd64> {
        if !matches!(ctx.event().reason, EventReason::Breakpoint { .. })
            || self.hits.len() as u64 >= self.limit
        {
            return VmiEventResponse::default();
        }
        let r = ctx.registers();
        let (pid, comm) = match self.os.current_task_from_registers(ctx.core(), r) {
            Ok(t) => (Some(t.pid), t.comm.clone()),
            Err(e) => (None, format!("<{e}>")),
        };
        self.hits.push(Hit {
            vcpu: ctx.vcpu().0,
            rip: r.rip,
            pid,
            comm,
            // Function arguments in the x86-64 System V order.
            args: [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9],
        });
        VmiEventResponse::default()
    }

    fn check_completion(&self) -> Option<()> {
        let done = self.hits.len() as u64 >= self.limit
            || self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.interrupted.is_some();
        done.then_some(())
    }
}

/// Traces `location` (a kernel symbol or address) on the live target until `count` hits
/// or `timeout` seconds; the breakpoint is removed whatever happens.
pub(crate) fn trace(
    py: Python<'_>,
    inner: &Inner,
    location: &str,
    count: u64,
    timeout: Option<f64>,
    software: bool,
) -> PyResult<Vec<Hit>> {
    if count == 0 || count > MAX_HITS {
        return Err(Failure::new(Kind::Other, format!("count must be 1..={MAX_HITS}")).into());
    }
    let deadline = match timeout {
        Some(t) if t.is_finite() && t >= 0.0 => {
            Some(Instant::now() + Duration::from_secs_f64(t.min(1e9)))
        }
        Some(t) => {
            return Err(Failure::new(Kind::Other, format!("timeout {t} is not a duration")).into());
        }
        None => None,
    };
    let Ok(Os::Linux(os)) = inner.os() else {
        return Err(Failure::new(
            Kind::NotSupported,
            "trace needs a live Linux target (qemu:<QMP socket>)",
        )
        .into());
    };
    let (hits, interrupted) = py.detach(|| -> Result<_, Failure> {
        let target = inner.target.read().unwrap_or_else(PoisonError::into_inner);
        let Some(Target::Qemu(core)) = target.as_ref() else {
            return Err(Failure::new(
                Kind::NotSupported,
                format!(
                    "trace needs a live target (qemu:<QMP socket>); {} is not one",
                    inner.spec
                ),
            ));
        };
        let va = match location.trim().parse::<u64>() {
            Ok(n) => Va(n),
            Err(_) => match location
                .trim()
                .strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16))
            {
                Some(Ok(n)) => Va(n),
                _ => os.symbol_address(location.trim()).ok_or_else(|| {
                    Failure::new(
                        Kind::NotFound,
                        format!("unknown kernel symbol {location:?}"),
                    )
                })?,
            },
        };
        let kind = if software {
            BreakpointKind::Software
        } else {
            BreakpointKind::Hardware
        };
        let monitor = EventMonitor::Breakpoint {
            address: BreakpointAddress::Virtual(va),
            kind,
        };
        core.monitor_enable(monitor)?;
        let session = VmiSession::new(core, os);
        let mut tracer = Tracer {
            os,
            limit: count,
            deadline,
            hits: Vec::new(),
            interrupted: None,
        };
        let never = AtomicBool::new(false);
        let result = loop {
            // Up to 100 ms of events at a time, then a look at Ctrl-C (Python's signals).
            let step = Instant::now() + Duration::from_millis(100);
            let slice_deadline = Some(tracer.deadline.map_or(step, |d| d.min(step)));
            let overall = std::mem::replace(&mut tracer.deadline, slice_deadline);
            let r = session.handle_until(&mut tracer, &never);
            tracer.deadline = overall;
            if let Err(e) = Python::attach(|py| py.check_signals()) {
                tracer.interrupted = Some(e);
            }
            match r {
                Err(e) => break Err(e),
                Ok(_) if tracer.check_completion().is_some() => break Ok(()),
                Ok(_) => {}
            }
        };
        // Leave the guest as found, whatever happened.
        let removed = core.monitor_disable(monitor);
        result?;
        removed?;
        Ok((tracer.hits, tracer.interrupted))
    })?;
    match interrupted {
        Some(e) => Err(e),
        None => Ok(hits),
    }
}

impl Hit {
    /// The hit as a dict (`vcpu`, `rip`, `pid`, `comm`, `args`), as `vmi trace --json`
    /// with numbers as `int`.
    pub(crate) fn to_dict<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("hit", n)?;
        d.set_item("vcpu", self.vcpu)?;
        d.set_item("rip", self.rip)?;
        d.set_item("pid", self.pid)?;
        d.set_item("comm", &self.comm)?;
        d.set_item("args", self.args.to_vec())?;
        Ok(d)
    }
}
