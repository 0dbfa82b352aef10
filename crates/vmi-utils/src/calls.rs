//! [`FunctionTracer`]: each call of a kernel function of a live Linux guest, with its
//! first six arguments by the System V AMD64 ABI (`rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`)
//! and, on request, its return value (`rax`), through a per-thread return breakpoint
//! matched by thread and stack pointer (see [`syscalls`](crate::syscalls) for the
//! mechanism). The arguments are raw: their types are the caller's business.

use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    Registers as _, Va, VcpuId, VmiCore, VmiError, VmiEventControl, VmiEventResponse, VmiRead,
};
use vmi_os_linux::LinuxOs;

use crate::bpm::{AddressSpace, BreakpointId, BreakpointManager, ManagerStats};
use crate::decode::{Decoder, Signature, Value, signature};
use crate::returns::Waiting;

/// One call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCall {
    /// Host time of the entry, nanoseconds since the Unix epoch.
    pub time_ns: u128,
    /// The vCPU at the entry.
    pub vcpu: VcpuId,
    /// Process id (tgid), `None` when the current task could not be read.
    pub pid: Option<u32>,
    /// Thread id.
    pub tid: Option<u32>,
    /// `comm`, or why the task could not be read.
    pub comm: String,
    /// The instruction pointer at the entry.
    pub rip: u64,
    /// `rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9` at the entry.
    pub args: [u64; 6],
    /// `rax` at the return, when returns are traced.
    pub ret: Option<u64>,
    /// The arguments decoded by the function's prototype in the profile (empty without
    /// one), read at the entry.
    pub params: Vec<(String, Value)>,
    /// The return value decoded by the prototype's return type.
    pub ret_decoded: Option<Value>,
    /// What could not be done (the call is real).
    pub problems: Vec<String>,
}

#[derive(Clone, Debug)]
enum Tag {
    Entry,
    Return { tid: Option<u32>, sp: u64 },
}

/// Traces the calls of one kernel function. See the [module docs](self).
pub struct FunctionTracer<'a, D: VmiRead + VmiEventControl> {
    core: &'a VmiCore<D>,
    os: &'a LinuxOs,
    bpm: BreakpointManager<'a, D, Tag>,
    returns: bool,
    signature: Option<Signature>,
    waiting: Waiting<FunctionCall>,
}

impl<'a, D> FunctionTracer<'a, D>
where
    D: VmiRead<Architecture = Amd64> + VmiEventControl,
{
    /// Sets a breakpoint at `entry` (a kernel address); with `returns`, each call is
    /// reported at its return. `name`, when given, looks up the function's prototype in
    /// the profile to decode arguments and return value ([`FunctionCall::params`]).
    pub fn new(
        core: &'a VmiCore<D>,
        os: &'a LinuxOs,
        entry: Va,
        name: Option<&str>,
        returns: bool,
    ) -> Result<Self, VmiError> {
        let bpm = BreakpointManager::new(core);
        bpm.add(
            AddressSpace::Kernel(os.kernel().kernel_root),
            entry,
            Tag::Entry,
        )?;
        Ok(Self {
            core,
            os,
            bpm,
            returns,
            signature: name.and_then(|n| signature(os.profile(), n)),
            waiting: Waiting::new(),
        })
    }

    /// The breakpoint manager's counters.
    pub fn stats(&self) -> ManagerStats {
        self.bpm.stats()
    }

    /// Runs until `stop` is set, handing each call to `sink`.
    pub fn run_until(
        &self,
        stop: &AtomicBool,
        mut sink: impl FnMut(FunctionCall),
    ) -> Result<(), VmiError> {
        self.bpm.run_until(stop, |event, hits| {
            for h in hits {
                let call = match h.tag {
                    Tag::Entry => self.entry(event.vcpu, &event.registers),
                    Tag::Return { tid, sp } => self.ret(h.id, tid, sp, &event.registers),
                };
                if let Some(c) = call {
                    sink(c);
                }
            }
            VmiEventResponse::default()
        })
    }

    fn entry(&self, vcpu: VcpuId, r: &Registers) -> Option<FunctionCall> {
        let task = self.os.current_task_from_registers(self.core, r);
        let call = FunctionCall {
            time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            vcpu,
            pid: task.as_ref().ok().map(|t| t.tgid),
            tid: task.as_ref().ok().map(|t| t.pid),
            comm: match &task {
                Ok(t) => t.comm.clone(),
                Err(e) => format!("<{e}>"),
            },
            rip: r.rip,
            args: [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9],
            ret: None,
            params: match &self.signature {
                Some(sig) => Decoder::new(self.core, self.os.profile(), r.translation_root())
                    .arguments(sig, [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9]),
                None => Vec::new(),
            },
            ret_decoded: None,
            problems: Vec::new(),
        };
        if !self.returns {
            return Some(call);
        }
        let tid = call.tid;
        let space = AddressSpace::Kernel(self.os.kernel().kernel_root);
        match self
            .waiting
            .park(&self.bpm, space, r, |sp| Tag::Return { tid, sp }, call)
        {
            Ok(()) => None,
            Err((mut call, e)) => {
                call.problems.push(format!("return address: {e}"));
                Some(call)
            }
        }
    }

    fn ret(
        &self,
        id: BreakpointId,
        tid: Option<u32>,
        sp: u64,
        r: &Registers,
    ) -> Option<FunctionCall> {
        if r.rsp != sp {
            return None;
        }
        let now = self
            .os
            .current_task_from_registers(self.core, r)
            .ok()
            .map(|t| t.pid);
        if now != tid {
            return None;
        }
        let mut call = self.waiting.take(&self.bpm, id)?;
        call.ret = Some(r.rax);
        if let Some(ty) = self.signature.as_ref().and_then(|s| s.ret) {
            call.ret_decoded = Some(
                Decoder::new(self.core, self.os.profile(), r.translation_root()).value(ty, r.rax),
            );
        }
        Some(call)
    }
}
