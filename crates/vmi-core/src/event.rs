//! Events delivered by a driver and the handler's answer.

use crate::{Architecture, EventMonitor, VcpuId};

/// One event: which vCPU, why, and its registers at that moment.
#[derive(Clone, Debug)]
pub struct VmiEvent<A: Architecture> {
    /// The vCPU that stopped.
    pub vcpu: VcpuId,
    /// Why it stopped.
    pub reason: A::EventReason,
    /// Its registers.
    pub registers: A::Registers,
}

/// What the vCPU does after the handler returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EventAction {
    /// Run on.
    #[default]
    Continue,
    /// Execute one instruction and report a single-step event.
    SingleStep,
}

/// A monitor to start or stop as part of an event's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorChange {
    /// Start reporting it.
    Enable(EventMonitor),
    /// Stop reporting it.
    Disable(EventMonitor),
}

/// The handler's answer to an event.
///
/// ```
/// # use vmi_core::{VmiEventResponse, EventAction};
/// # type A = vmi_arch_amd64::Amd64;
/// let r: VmiEventResponse<A> = VmiEventResponse::default().and_remove_monitor();
/// assert_eq!(r.action, EventAction::Continue);
/// assert!(r.remove_monitor);
/// ```
#[derive(Clone, Debug)]
pub struct VmiEventResponse<A: Architecture> {
    /// Continue or single-step.
    pub action: EventAction,
    /// Registers to set on the vCPU before it goes on.
    pub set_registers: Option<Box<A::Registers>>,
    /// Remove the breakpoint/watchpoint that caused the event.
    pub remove_monitor: bool,
    /// Monitors to start or stop, in order, before the vCPU goes on: a handler cannot
    /// call [`VmiEventControl::monitor_enable`](crate::VmiEventControl::monitor_enable)
    /// while the driver waits for its answer, and a change made after the vCPU ran
    /// would miss what it did meanwhile (the return of a fast function). A driver that
    /// cannot apply one fails the wait with the error.
    pub monitors: Vec<MonitorChange>,
}

impl<A: Architecture> Default for VmiEventResponse<A> {
    fn default() -> Self {
        Self {
            action: EventAction::Continue,
            set_registers: None,
            remove_monitor: false,
            monitors: Vec::new(),
        }
    }
}

impl<A: Architecture> VmiEventResponse<A> {
    /// Let the vCPU run on.
    #[deprecated(
        since = "0.1.0",
        note = "use `VmiEventResponse::default()`, as the vmi crate does"
    )]
    pub fn continue_() -> Self {
        Self::default()
    }

    /// Execute one instruction, then report a single-step event. (One step, not the
    /// modelled crate's `toggle_singlestep` mode switch: the name differs because the
    /// meaning does.)
    pub fn single_step() -> Self {
        Self {
            action: EventAction::SingleStep,
            ..Self::default()
        }
    }

    /// Set these registers on the vCPU before it goes on.
    pub fn set_registers(registers: A::Registers) -> Self {
        Self::default().and_set_registers(registers)
    }

    /// Also set these registers.
    pub fn and_set_registers(mut self, registers: A::Registers) -> Self {
        self.set_registers = Some(Box::new(registers));
        self
    }

    /// Also set these registers.
    #[deprecated(
        since = "0.1.0",
        note = "use `and_set_registers`, as the vmi crate names it"
    )]
    pub fn with_registers(self, registers: A::Registers) -> Self {
        self.and_set_registers(registers)
    }

    /// Also start or stop a monitor before the vCPU goes on.
    pub fn and_change(mut self, change: MonitorChange) -> Self {
        self.monitors.push(change);
        self
    }

    /// Also remove the monitor that caused the event.
    pub fn and_remove_monitor(mut self) -> Self {
        self.remove_monitor = true;
        self
    }
}
