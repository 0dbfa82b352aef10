//! Sessions (core + OS) and event contexts (session + one event's registers).
//!
//! The layers stack by `Deref`: a [`VmiContext`] derefs to its [`VmiSession`], which
//! derefs to the [`VmiCore`], so a `&VmiContext` goes wherever a `&VmiCore` is expected.
//! On a context, the convenience readers take a plain [`Va`] and use the event's
//! address space, and `ctx.os().current_process()` needs no registers.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{
    AccessContext, CommandLine, OsHandle, OsListing, OsLogRecord, OsModule, OsProcess, OsRegion,
    OsThread, Pa, Registers, RegistersOf, Va, VcpuId, VmiCore, VmiDriver, VmiError, VmiEvent,
    VmiEventControl, VmiEventResponse, VmiOs, VmiRead,
};

/// A core and the OS layer that interprets it.
///
/// ```
/// # use vmi_core::*;
/// # use vmi_driver_mock::MockDriver;
/// struct NoOs;
/// impl<D: VmiRead> VmiOs<D> for NoOs {
///     fn name(&self) -> &'static str { "none" }
///     fn kernel_image_base(&self, _: &VmiCore<D>) -> Result<Va, VmiError> { Ok(Va(0)) }
///     fn kernel_information_string(&self, _: &VmiCore<D>) -> Result<String, VmiError> {
///         Ok("none".into())
///     }
///     fn processes(&self, _: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> { Ok(vec![]) }
/// }
/// let core = VmiCore::new(MockDriver::new(1 << 20))?;
/// let session = VmiSession::new(&core, &NoOs);
/// // The session derefs to the core:
/// assert_eq!(session.info().page_size, 4096);
/// // OS operations a layer lacks are typed errors:
/// assert!(matches!(session.os().modules(), Err(VmiError::NotSupported { .. })));
/// # Ok::<(), VmiError>(())
/// ```
pub struct VmiSession<'a, D: VmiDriver, O> {
    core: &'a VmiCore<D>,
    os: &'a O,
}

impl<D: VmiDriver, O> Clone for VmiSession<'_, D, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: VmiDriver, O> Copy for VmiSession<'_, D, O> {}

impl<'a, D: VmiDriver, O> VmiSession<'a, D, O> {
    /// A session over `core`, interpreted by `os`.
    pub fn new(core: &'a VmiCore<D>, os: &'a O) -> Self {
        Self { core, os }
    }

    /// The core.
    pub fn core(&self) -> &'a VmiCore<D> {
        self.core
    }

    /// The OS layer itself, for its own operations.
    pub fn underlying_os(&self) -> &'a O {
        self.os
    }
}

impl<'a, D: VmiRead, O: VmiOs<D>> VmiSession<'a, D, O> {
    /// OS operations bound to this session.
    pub fn os(&self) -> VmiOsState<'a, D, O> {
        VmiOsState {
            core: self.core,
            os: self.os,
            registers: None,
        }
    }
}

impl<D: VmiDriver, O> Deref for VmiSession<'_, D, O> {
    type Target = VmiCore<D>;
    fn deref(&self) -> &VmiCore<D> {
        self.core
    }
}

impl<'a, D: VmiDriver, O> VmiSession<'a, D, O> {
    /// The session bound to explicit registers, outside any event: reads in their
    /// address space, OS operations that need a vCPU's state (`current_process`,
    /// `syscall_arguments`) answered for them.
    ///
    /// ```
    /// # use vmi_core::*;
    /// # use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
    /// # struct NoOs;
    /// # impl<D: VmiRead> VmiOs<D> for NoOs {
    /// #     fn name(&self) -> &'static str { "none" }
    /// #     fn kernel_image_base(&self, _: &VmiCore<D>) -> Result<Va, VmiError> { Ok(Va(0)) }
    /// #     fn kernel_information_string(&self, _: &VmiCore<D>) -> Result<String, VmiError> {
    /// #         Ok("none".into())
    /// #     }
    /// #     fn processes(&self, _: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> { Ok(vec![]) }
    /// # }
    /// let driver = MockDriver::new(16 << 20);
    /// let mut tables = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
    /// tables.map(Va(0x40_0000), Pa(0x5000), PageSize::Size4K);
    /// driver.write_physical(Pa(0x5000), b"user\0");
    /// let mut registers = vmi_arch_amd64::Registers::default();
    /// registers.cr3 = vmi_arch_amd64::Cr3(tables.root().0);
    /// let core = VmiCore::new(driver)?;
    /// let session = VmiSession::new(&core, &NoOs);
    /// let state = session.with_registers(&registers);
    /// assert_eq!(state.read_string(Va(0x40_0000), 16)?, "user");
    /// # Ok::<(), VmiError>(())
    /// ```
    pub fn with_registers(&self, registers: &'a RegistersOf<D>) -> VmiState<'a, D, O> {
        VmiState {
            session: *self,
            registers,
        }
    }
}

/// A session plus explicit registers (from [`VmiSession::with_registers`]): what a
/// [`VmiContext`] is for an event, for registers the caller chose (a vCPU read while
/// paused, a saved state, registers to try before setting them).
pub struct VmiState<'a, D: VmiDriver, O> {
    session: VmiSession<'a, D, O>,
    registers: &'a RegistersOf<D>,
}

impl<'a, D: VmiDriver, O> VmiState<'a, D, O> {
    /// The registers.
    pub fn registers(&self) -> &'a RegistersOf<D> {
        self.registers
    }

    /// The session.
    pub fn session(&self) -> VmiSession<'a, D, O> {
        self.session
    }

    /// The page-table root of the registers' address space.
    pub fn root(&self) -> Pa {
        self.registers.translation_root()
    }

    /// `va` in the registers' address space.
    pub fn access(&self, va: Va) -> AccessContext {
        AccessContext::paging(va, self.root())
    }
}

impl<'a, D: VmiRead, O: VmiOs<D>> VmiState<'a, D, O> {
    /// OS operations bound to these registers.
    pub fn os(&self) -> VmiOsState<'a, D, O> {
        VmiOsState {
            core: self.session.core,
            os: self.session.os,
            registers: Some(self.registers),
        }
    }
}

impl<D: VmiRead, O> VmiState<'_, D, O> {
    /// Reads bytes at `va` in the registers' address space.
    pub fn read(&self, va: Va, buf: &mut [u8]) -> Result<(), VmiError> {
        self.session.core.read(self.access(va), buf)
    }

    /// Reads a `u64` at `va` in the registers' address space.
    pub fn read_u64(&self, va: Va) -> Result<u64, VmiError> {
        self.session.core.read_u64(self.access(va))
    }

    /// Reads a pointer at `va` in the registers' address space.
    pub fn read_va(&self, va: Va) -> Result<Va, VmiError> {
        self.session.core.read_va(self.access(va))
    }

    /// Reads a NUL-terminated string at `va` in the registers' address space.
    pub fn read_string(&self, va: Va, max_len: usize) -> Result<String, VmiError> {
        self.session.core.read_string(self.access(va), max_len)
    }

    /// Translates `va` in the registers' address space.
    pub fn translate_address(&self, va: Va) -> Result<Pa, VmiError> {
        self.session
            .core
            .translate_address(self.registers.address_context(va))
    }
}

impl<'a, D: VmiDriver, O> Deref for VmiState<'a, D, O> {
    type Target = VmiSession<'a, D, O>;
    fn deref(&self) -> &VmiSession<'a, D, O> {
        &self.session
    }
}

/// Handles events in [`VmiSession::handle`].
pub trait VmiHandler<D: VmiRead + VmiEventControl, O: VmiOs<D>> {
    /// What the handler produces when it is done.
    type Output;

    /// Handles one event.
    fn handle_event(&mut self, ctx: VmiContext<'_, D, O>) -> VmiEventResponse<D::Architecture>;

    /// `Some` when the handler is done.
    fn check_completion(&self) -> Option<Self::Output> {
        None
    }
}

impl<'a, D: VmiRead + VmiEventControl, O: VmiOs<D>> VmiSession<'a, D, O> {
    /// Runs the event loop until the handler completes.
    pub fn handle<H: VmiHandler<D, O>>(&self, handler: &mut H) -> Result<H::Output, VmiError> {
        let never = AtomicBool::new(false);
        loop {
            if let Some(output) = self.handle_until(handler, &never)? {
                return Ok(output);
            }
        }
    }

    /// Runs the event loop until the handler completes (`Some`) or `stop` becomes true
    /// (`None`; e.g. set by a Ctrl-C handler). `stop` is checked at least every 100 ms.
    pub fn handle_until<H: VmiHandler<D, O>>(
        &self,
        handler: &mut H,
        stop: &AtomicBool,
    ) -> Result<Option<H::Output>, VmiError> {
        let live = self.core.info().live;
        loop {
            if let Some(output) = handler.check_completion() {
                return Ok(Some(output));
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let session = *self;
            self.core
                .driver()
                .wait_for_events(Duration::from_millis(100), &mut |event| {
                    if live {
                        // The guest ran since the last look.
                        session.core.invalidate_caches();
                    }
                    handler.handle_event(VmiContext { session, event })
                })?;
        }
    }
}

/// A session plus the event being handled: its vCPU and registers.
pub struct VmiContext<'a, D: VmiDriver, O> {
    session: VmiSession<'a, D, O>,
    event: &'a VmiEvent<D::Architecture>,
}

impl<'a, D: VmiDriver, O> VmiContext<'a, D, O> {
    /// A context for `event` in `session`.
    pub fn new(session: VmiSession<'a, D, O>, event: &'a VmiEvent<D::Architecture>) -> Self {
        Self { session, event }
    }

    /// The event.
    pub fn event(&self) -> &'a VmiEvent<D::Architecture> {
        self.event
    }

    /// The event's vCPU.
    pub fn vcpu(&self) -> VcpuId {
        self.event.vcpu
    }

    /// The event's registers.
    pub fn registers(&self) -> &'a RegistersOf<D> {
        &self.event.registers
    }

    /// The session.
    pub fn session(&self) -> VmiSession<'a, D, O> {
        self.session
    }

    /// The page-table root of the event's address space.
    pub fn root(&self) -> Pa {
        self.event.registers.translation_root()
    }

    /// `va` in the event's address space.
    pub fn access(&self, va: Va) -> AccessContext {
        AccessContext::paging(va, self.root())
    }
}

impl<'a, D: VmiRead, O: VmiOs<D>> VmiContext<'a, D, O> {
    /// OS operations bound to this event's registers.
    pub fn os(&self) -> VmiOsState<'a, D, O> {
        VmiOsState {
            core: self.session.core,
            os: self.session.os,
            registers: Some(&self.event.registers),
        }
    }
}

impl<D: VmiRead, O> VmiContext<'_, D, O> {
    /// Reads bytes at `va` in the event's address space.
    pub fn read(&self, va: Va, buf: &mut [u8]) -> Result<(), VmiError> {
        self.session.core.read(self.access(va), buf)
    }

    /// Reads a `u8` at `va` in the event's address space.
    pub fn read_u8(&self, va: Va) -> Result<u8, VmiError> {
        self.session.core.read_u8(self.access(va))
    }

    /// Reads a `u16` at `va` in the event's address space.
    pub fn read_u16(&self, va: Va) -> Result<u16, VmiError> {
        self.session.core.read_u16(self.access(va))
    }

    /// Reads a `u32` at `va` in the event's address space.
    pub fn read_u32(&self, va: Va) -> Result<u32, VmiError> {
        self.session.core.read_u32(self.access(va))
    }

    /// Reads a `u64` at `va` in the event's address space.
    pub fn read_u64(&self, va: Va) -> Result<u64, VmiError> {
        self.session.core.read_u64(self.access(va))
    }

    /// Reads a pointer at `va` in the event's address space.
    pub fn read_va(&self, va: Va) -> Result<Va, VmiError> {
        self.session.core.read_va(self.access(va))
    }

    /// Reads a NUL-terminated string at `va` in the event's address space.
    pub fn read_string(&self, va: Va, max_len: usize) -> Result<String, VmiError> {
        self.session.core.read_string(self.access(va), max_len)
    }

    /// Translates `va` in the event's address space.
    pub fn translate_address(&self, va: Va) -> Result<Pa, VmiError> {
        self.session
            .core
            .translate_address(self.event.registers.address_context(va))
    }
}

impl<'a, D: VmiDriver, O> Deref for VmiContext<'a, D, O> {
    type Target = VmiSession<'a, D, O>;
    fn deref(&self) -> &VmiSession<'a, D, O> {
        &self.session
    }
}

/// OS operations bound to a core (and, in an event, to the event's registers).
pub struct VmiOsState<'a, D: VmiRead, O> {
    core: &'a VmiCore<D>,
    os: &'a O,
    registers: Option<&'a RegistersOf<D>>,
}

impl<'a, D: VmiRead, O: VmiOs<D>> VmiOsState<'a, D, O> {
    /// The OS layer itself.
    pub fn underlying(&self) -> &'a O {
        self.os
    }

    fn registers(&self, what: &'static str) -> Result<&'a RegistersOf<D>, VmiError> {
        self.registers.ok_or(VmiError::NoRegisters(what))
    }

    /// See [`VmiOs::kernel_image_base`].
    pub fn kernel_image_base(&self) -> Result<Va, VmiError> {
        self.os.kernel_image_base(self.core)
    }

    /// See [`VmiOs::kernel_information_string`].
    pub fn kernel_information_string(&self) -> Result<String, VmiError> {
        self.os.kernel_information_string(self.core)
    }

    /// See [`VmiOs::processes`].
    pub fn processes(&self) -> Result<Vec<OsProcess>, VmiError> {
        self.os.processes(self.core)
    }

    /// See [`VmiOs::process`].
    pub fn process(&self, pid: u64) -> Result<OsProcess, VmiError> {
        self.os.process(self.core, pid)
    }

    /// See [`VmiOs::threads`].
    pub fn threads(&self, pid: u64) -> Result<Vec<OsThread>, VmiError> {
        self.os.threads(self.core, pid)
    }

    /// See [`VmiOs::modules`].
    pub fn modules(&self) -> Result<Vec<OsModule>, VmiError> {
        self.os.modules(self.core)
    }

    /// See [`VmiOs::memory_regions`].
    pub fn memory_regions(&self, pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        self.os.memory_regions(self.core, pid)
    }

    /// See [`VmiOs::process_list`].
    pub fn process_list(&self) -> Result<OsListing<OsProcess>, VmiError> {
        self.os.process_list(self.core)
    }

    /// See [`VmiOs::process_cmdline`].
    pub fn process_cmdline(&self, process: &OsProcess) -> Result<CommandLine, VmiError> {
        self.os.process_cmdline(self.core, process)
    }

    /// See [`VmiOs::process_environment`].
    pub fn process_environment(
        &self,
        process: &OsProcess,
    ) -> Result<Vec<(String, Option<String>)>, VmiError> {
        self.os.process_environment(self.core, process)
    }

    /// See [`VmiOs::memory_region_list`].
    pub fn memory_region_list(&self, process: &OsProcess) -> Result<OsListing<OsRegion>, VmiError> {
        self.os.memory_region_list(self.core, process)
    }

    /// See [`VmiOs::handles`].
    pub fn handles(&self, process: &OsProcess) -> Result<OsListing<OsHandle>, VmiError> {
        self.os.handles(self.core, process)
    }

    /// See [`VmiOs::kernel_log`].
    pub fn kernel_log(&self) -> Result<Vec<OsLogRecord>, VmiError> {
        self.os.kernel_log(self.core)
    }

    /// The process of the event's vCPU (see [`VmiOs::current_process`]).
    pub fn current_process(&self) -> Result<OsProcess, VmiError> {
        self.os
            .current_process(self.core, self.registers("current_process")?)
    }

    /// The thread of the event's vCPU (see [`VmiOs::current_thread`]).
    pub fn current_thread(&self) -> Result<OsThread, VmiError> {
        self.os
            .current_thread(self.core, self.registers("current_thread")?)
    }

    /// System-call arguments at the event (see [`VmiOs::syscall_arguments`]).
    pub fn syscall_arguments(&self, count: usize) -> Result<Vec<u64>, VmiError> {
        self.os
            .syscall_arguments(self.core, self.registers("syscall_arguments")?, count)
    }
}

/// The architecture of a driver (shorthand for generic code).
pub type ArchitectureOf<D> = <D as VmiDriver>::Architecture;
