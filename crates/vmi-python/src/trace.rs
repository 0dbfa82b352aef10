//! `Target.trace`: a breakpoint on a kernel function of a live Linux guest whose hits
//! stream out of an iterator ([`Trace`]) as they come, until a count or a time limit (or
//! Ctrl-C, or `close()`), then removed, as `vmi trace`.
//!
//! The breakpoint is armed when `trace()` returns (an unknown symbol or a dump fails
//! there) and removed by whichever comes first: the `count`-th hit taken, the timeout,
//! Ctrl-C (`KeyboardInterrupt` out of `next()`), an error, `close()`, the end of a `with`
//! block, or the object being freed (a `for` loop left with `break` frees it at once in
//! CPython). Between two `next()` calls the guest runs; a hit that comes meanwhile stops
//! it (QEMU's gdbstub stops the VM at a breakpoint) until the next `next()` takes it, so
//! no hit is lost and a slow consumer slows the guest instead of filling memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
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

/// How long one wait for events runs before Python's signals (Ctrl-C) are looked at.
const SLICE: Duration = Duration::from_millis(100);

/// One breakpoint hit.
struct Hit {
    vcpu: u16,
    rip: u64,
    pid: Option<u32>,
    comm: String,
    args: [u64; 6],
}

/// The event handler of one wait: it queues every hit the wait delivers (several vCPUs
/// may stop at once) and completes at the first.
struct Collector<'a> {
    os: &'a LinuxOs,
    queue: &'a mut VecDeque<Hit>,
    deadline: Instant,
}

impl VmiHandler<QemuDriver, LinuxOs> for Collector<'_> {
    type Output = ();

    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, QemuDriver, LinuxOs>,
    ) -> VmiEventResponse<vmi_arch_amd64::Amd64> {
        if !matches!(ctx.event().reason, EventReason::Breakpoint { .. }) {
            return VmiEventResponse::default();
        }
        let r = ctx.registers();
        let (pid, comm) = match self.os.current_task_from_registers(ctx.core(), r) {
            Ok(t) => (Some(t.pid), t.comm.clone()),
            Err(e) => (None, format!("<{e}>")),
        };
        self.queue.push_back(Hit {
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
        (!self.queue.is_empty() || Instant::now() >= self.deadline).then_some(())
    }
}

/// What `next()` and `close()` share, behind the lock.
struct State {
    /// The breakpoint while it is armed.
    armed: Option<EventMonitor>,
    /// Hits delivered by the driver, not yet taken.
    queue: VecDeque<Hit>,
    /// Hits taken so far.
    taken: u64,
}

/// The hits of a breakpoint on a kernel function, as they come (`Target.trace()`).
#[pyclass(frozen, module = "vmi", name = "Trace")]
pub struct Trace {
    inner: Arc<Inner>,
    location: String,
    /// Most hits to take (`None`: until the timeout, Ctrl-C or `close()`).
    limit: Option<u64>,
    deadline: Option<Instant>,
    /// Set by `close()` so that a `next()` waiting in another thread gives up within
    /// one slice.
    closing: AtomicBool,
    /// What `armed`/`repr` show, kept outside the lock: a `next()` in another thread
    /// may hold it while it waits, for good when no hit comes.
    shown: Shown,
    state: Mutex<State>,
}

/// [`Trace`]'s state as `armed` and `repr` read it.
struct Shown {
    armed: AtomicBool,
    taken: AtomicU64,
}

impl Trace {
    /// Resolves `location` (a kernel symbol or address) and arms a breakpoint on it.
    pub(crate) fn start(
        py: Python<'_>,
        inner: Arc<Inner>,
        location: &str,
        count: Option<u64>,
        timeout: Option<f64>,
        software: bool,
    ) -> PyResult<Trace> {
        if count == Some(0) {
            return Err(Failure::new(Kind::Other, "count must be at least 1 (or None)").into());
        }
        let deadline = match timeout {
            Some(t) if t.is_finite() && t >= 0.0 => {
                Some(Instant::now() + Duration::from_secs_f64(t.min(1e9)))
            }
            Some(t) => {
                return Err(
                    Failure::new(Kind::Other, format!("timeout {t} is not a duration")).into(),
                );
            }
            None => None,
        };
        let Ok(Os::Linux(os)) = inner.os() else {
            return Err(Failure::new(
                Kind::NotSupported,
                "trace needs a live Linux target (qemu:<QMP socket> or libvirt:<domain>)",
            )
            .into());
        };
        let monitor = py.detach(|| -> Result<EventMonitor, Failure> {
            let target = inner.target.read().unwrap_or_else(PoisonError::into_inner);
            let Some(Target::Qemu(core)) = target.as_ref() else {
                return Err(Failure::new(
                    Kind::NotSupported,
                    format!(
                        "trace needs a live target (qemu:<QMP socket> or libvirt:<domain>); \
                         {} is not one",
                        inner.spec
                    ),
                ));
            };
            let va = parse_location(os, location)?;
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
            Ok(monitor)
        })?;
        Ok(Trace {
            inner,
            location: location.trim().to_owned(),
            limit: count,
            deadline,
            closing: AtomicBool::new(false),
            shown: Shown {
                armed: AtomicBool::new(true),
                taken: AtomicU64::new(0),
            },
            state: Mutex::new(State {
                armed: Some(monitor),
                queue: VecDeque::new(),
                taken: 0,
            }),
        })
    }

    /// Removes the breakpoint if it is still armed (a closed target took it with it).
    fn disarm(&self, state: &mut State) -> Result<(), Failure> {
        let Some(monitor) = state.armed.take() else {
            return Ok(());
        };
        self.shown.armed.store(false, Ordering::SeqCst);
        // Hits already delivered stay takeable until the count; none come after.
        let target = self
            .inner
            .target
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match target.as_ref() {
            Some(Target::Qemu(core)) => core.monitor_disable(monitor).map_err(Failure::from),
            _ => Ok(()),
        }
    }

    /// Waits (without the GIL, in slices, looking at Ctrl-C between them) until a hit
    /// is queued, the deadline passes or `close()` is called.
    fn wait(&self, py: Python<'_>, state: &mut State) -> PyResult<()> {
        let Ok(Os::Linux(os)) = self.inner.os() else {
            return Ok(());
        };
        while state.queue.is_empty() && state.armed.is_some() {
            if self.closing.load(Ordering::SeqCst) {
                // Closed from another thread: the breakpoint goes before `next()` ends.
                self.disarm(state)?;
                return Ok(());
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                self.disarm(state)?;
                return Ok(());
            }
            let slice_end = self.deadline.map_or(now + SLICE, |d| d.min(now + SLICE));
            let waited = py.detach(|| -> Result<(), Failure> {
                let target = self
                    .inner
                    .target
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let Some(Target::Qemu(core)) = target.as_ref() else {
                    return Err(Failure::new(
                        Kind::Other,
                        format!("the target {} is closed", self.inner.spec),
                    ));
                };
                let mut collector = Collector {
                    os,
                    queue: &mut state.queue,
                    deadline: slice_end,
                };
                VmiSession::new(core, os).handle_until(&mut collector, &self.closing)?;
                Ok(())
            });
            if let Err(e) = waited {
                // Leave the guest as found, then report.
                let _ = self.disarm(state);
                return Err(e.into());
            }
            if let Err(e) = py.check_signals() {
                self.disarm(state)?;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A kernel symbol, or an address in decimal or `0x` hexadecimal.
fn parse_location(os: &LinuxOs, location: &str) -> Result<Va, Failure> {
    let location = location.trim();
    if let Ok(n) = location.parse::<u64>() {
        return Ok(Va(n));
    }
    if let Some(Ok(n)) = location
        .strip_prefix("0x")
        .map(|h| u64::from_str_radix(h, 16))
    {
        return Ok(Va(n));
    }
    os.symbol_address(location).ok_or_else(|| {
        Failure::new(
            Kind::NotFound,
            format!("unknown kernel symbol {location:?}"),
        )
    })
}

#[pymethods]
impl Trace {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next hit as a dict (`hit`, `vcpu`, `rip`, `pid`, `comm`, `args`), as
    /// `vmi trace --json` with numbers as `int`; waits for it. `StopIteration` after
    /// `count` hits, at the timeout or after `close()`.
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        // One taker at a time: a second thread would wait for the first one's hit with
        // the GIL held (the first needs it between slices).
        let mut state = match self.state.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(Failure::new(
                    Kind::Other,
                    "another thread is waiting for this trace's next hit",
                )
                .into());
            }
        };
        if self.limit.is_some_and(|l| state.taken >= l) || self.closing.load(Ordering::SeqCst) {
            self.disarm(&mut state)?;
            return Ok(None);
        }
        self.wait(py, &mut state)?;
        let Some(hit) = state.queue.pop_front() else {
            return Ok(None);
        };
        state.taken += 1;
        self.shown.taken.store(state.taken, Ordering::SeqCst);
        if self.limit.is_some_and(|l| state.taken >= l) {
            // The last one: the guest runs on without the breakpoint while it is used.
            self.disarm(&mut state)?;
        }
        hit.to_dict(py, state.taken).map(Some)
    }

    /// Removes the breakpoint (now, also while another thread waits in `next()`); the
    /// iterator ends. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.closing.store(true, Ordering::SeqCst);
        py.detach(|| {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.queue.clear();
            self.disarm(&mut state)
        })?;
        Ok(())
    }

    /// Whether the breakpoint is still in place.
    #[getter]
    fn armed(&self) -> bool {
        self.shown.armed.load(Ordering::SeqCst)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _ty: Option<&Bound<'_, PyAny>>,
        _value: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let taken = self.shown.taken.load(Ordering::SeqCst);
        let armed = self.shown.armed.load(Ordering::SeqCst);
        format!(
            "<vmi.Trace {} on {}: {taken} hit{} taken, {}>",
            self.location,
            self.inner.spec,
            if taken == 1 { "" } else { "s" },
            if armed { "armed" } else { "ended" }
        )
    }
}

impl Drop for Trace {
    /// A trace dropped without `close()` (a `for` loop left with `break`, an exception)
    /// removes its breakpoint.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(monitor) = state.armed.take() {
            let target = self
                .inner
                .target
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(Target::Qemu(core)) = target.as_ref()
                && let Err(e) = core.monitor_disable(monitor)
            {
                eprintln!(
                    "vmi: removing the breakpoint of a trace on {}: {e}",
                    self.location
                );
            }
        }
    }
}

impl Hit {
    /// The hit as a dict (`hit`, `vcpu`, `rip`, `pid`, `comm`, `args`).
    fn to_dict<'py>(&self, py: Python<'py>, n: u64) -> PyResult<Bound<'py, PyDict>> {
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
