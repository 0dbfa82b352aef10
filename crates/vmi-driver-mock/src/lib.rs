//! An in-memory AMD64 target for tests.
//!
//! [`MockDriver`] holds sparse guest-physical memory (pages never written read as zeros,
//! like fresh RAM; pages beyond the size are unavailable; pages can be made holes),
//! vCPU registers, a run state and a queue of scripted events. Every driver call is
//! appended to an ordered [call log](MockDriver::calls), and [`MockDriver::fail_next`]
//! makes the next matching call fail once. [`PageTableBuilder`] writes real AMD64 page
//! tables into its memory.
//!
//! ```
//! use vmi_core::{Pa, Va, VmiCore, VmiError, PageAbsence};
//! use vmi_driver_mock::{MockCall, MockDriver, MockOp};
//!
//! let driver = MockDriver::new(1 << 20);
//! driver.write_physical(Pa(0x2000), b"hello");
//! driver.fail_next(MockOp::ReadPage, VmiError::PageUnavailable {
//!     gfn: vmi_core::Gfn(2), reason: PageAbsence::NotInDump });
//! let core = VmiCore::new(driver)?;
//! assert!(core.read_u8(Pa(0x2000)).is_err()); // injected, once
//! assert_eq!(core.read_string(Pa(0x2000), 16)?, "hello");
//! assert!(matches!(core.driver().calls()[0], MockCall::ReadPage { .. }));
//! # Ok::<(), VmiError>(())
//! ```

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;

use vmi_arch_amd64::paging::pte;
use vmi_arch_amd64::{Amd64, PagingMode, Registers};
use vmi_core::{
    BreakpointAddressing, EventCallback, EventMonitor, Gfn, MonitorChange, Pa, PageAbsence,
    PageRead, Va, VcpuId, VmState, VmiDriver, VmiError, VmiEvent, VmiEventControl,
    VmiEventResponse, VmiInfo, VmiQueryRegisters, VmiRead, VmiSetRegisters, VmiVmControl, VmiWrite,
};

const PAGE: u64 = 4096;

/// One call made to the driver, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum MockCall {
    ReadPage {
        gfn: Gfn,
        offset: usize,
        len: usize,
    },
    /// A batch of `pieces` reads (each then logged as a `ReadPage`).
    ReadPages {
        pieces: usize,
    },
    WritePage {
        gfn: Gfn,
        offset: usize,
        len: usize,
    },
    Registers(VcpuId),
    SetRegisters(VcpuId),
    Pause,
    Resume,
    State,
    MonitorEnable(EventMonitor),
    MonitorDisable(EventMonitor),
    WaitForEvents,
}

/// A kind of call, for fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum MockOp {
    ReadPage,
    WritePage,
    Registers,
    SetRegisters,
    Pause,
    Resume,
    MonitorEnable,
    WaitForEvents,
}

impl MockCall {
    fn op(&self) -> Option<MockOp> {
        Some(match self {
            Self::ReadPage { .. } => MockOp::ReadPage,
            Self::WritePage { .. } => MockOp::WritePage,
            Self::Registers(_) => MockOp::Registers,
            Self::SetRegisters(_) => MockOp::SetRegisters,
            Self::Pause => MockOp::Pause,
            Self::Resume => MockOp::Resume,
            Self::MonitorEnable(_) => MockOp::MonitorEnable,
            Self::WaitForEvents => MockOp::WaitForEvents,
            Self::State | Self::MonitorDisable(_) | Self::ReadPages { .. } => return None,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An in-memory AMD64 target.
pub struct MockDriver {
    size: u64,
    pages: RwLock<HashMap<u64, Box<[u8]>>>,
    holes: RwLock<HashSet<u64>>,
    vcpus: RwLock<Vec<Registers>>,
    state: Mutex<VmState>,
    live: bool,
    cache_pages: bool,
    physical_breakpoints: bool,
    calls: Mutex<Vec<MockCall>>,
    faults: Mutex<Vec<(MockOp, VmiError)>>,
    events: Mutex<VecDeque<VmiEvent<Amd64>>>,
    monitors: Mutex<Vec<EventMonitor>>,
    responses: Mutex<Vec<VmiEventResponse<Amd64>>>,
}

impl MockDriver {
    /// A target with `size` bytes of zeroed RAM and one vCPU with default registers.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            pages: RwLock::default(),
            holes: RwLock::default(),
            vcpus: RwLock::new(vec![Registers::default()]),
            state: Mutex::new(VmState::Running),
            live: false,
            physical_breakpoints: false,
            cache_pages: false,
            calls: Mutex::default(),
            faults: Mutex::default(),
            events: Mutex::default(),
            monitors: Mutex::default(),
            responses: Mutex::default(),
        }
    }

    /// Reports the target as live (guest memory may change) and slow (the core caches
    /// whole pages), like a hypervisor.
    pub fn live(mut self) -> Self {
        self.live = true;
        self.cache_pages = true;
        self
    }

    /// Takes breakpoints at physical addresses, as Xen's driver does
    /// ([`BreakpointAddressing::Physical`]).
    pub fn physical_breakpoints(mut self) -> Self {
        self.physical_breakpoints = true;
        self
    }

    /// Sets the number of vCPUs (each with default registers).
    pub fn with_vcpus(self, n: u16) -> Self {
        *self.vcpus.write().unwrap_or_else(|e| e.into_inner()) =
            vec![Registers::default(); usize::from(n)];
        self
    }

    /// Writes bytes into guest-physical memory directly (not logged).
    pub fn write_physical(&self, pa: Pa, data: &[u8]) {
        let mut pages = self.pages.write().unwrap_or_else(|e| e.into_inner());
        for (i, byte) in data.iter().enumerate() {
            let a = pa.0 + i as u64;
            let page = pages
                .entry(a / PAGE)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            page[(a % PAGE) as usize] = *byte;
        }
    }

    /// Reads bytes of guest-physical memory directly (not logged).
    pub fn read_physical(&self, pa: Pa, len: usize) -> Vec<u8> {
        let pages = self.pages.read().unwrap_or_else(|e| e.into_inner());
        (0..len as u64)
            .map(|i| {
                let a = pa.0 + i;
                pages.get(&(a / PAGE)).map_or(0, |p| p[(a % PAGE) as usize])
            })
            .collect()
    }

    /// Writes a little-endian `u64` directly.
    pub fn write_u64(&self, pa: Pa, value: u64) {
        self.write_physical(pa, &value.to_le_bytes());
    }

    /// Makes a frame unavailable, like a hole in a dump.
    pub fn make_hole(&self, gfn: Gfn) {
        self.holes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gfn.0);
    }

    /// Sets a vCPU's registers directly (not logged).
    pub fn set_vcpu(&self, vcpu: VcpuId, registers: Registers) {
        let mut vcpus = self.vcpus.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = vcpus.get_mut(usize::from(vcpu.0)) {
            *slot = registers;
        }
    }

    /// A vCPU's registers (not logged).
    pub fn vcpu(&self, vcpu: VcpuId) -> Option<Registers> {
        self.vcpus
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(usize::from(vcpu.0))
            .cloned()
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<MockCall> {
        lock(&self.calls).clone()
    }

    /// Forgets the call log.
    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// Makes the next call of kind `op` fail with `error` (once).
    pub fn fail_next(&self, op: MockOp, error: VmiError) {
        lock(&self.faults).push((op, error));
    }

    /// Queues an event for the next [`VmiEventControl::wait_for_events`].
    pub fn push_event(&self, event: VmiEvent<Amd64>) {
        lock(&self.events).push_back(event);
    }

    /// The monitors enabled now.
    pub fn monitors(&self) -> Vec<EventMonitor> {
        lock(&self.monitors).clone()
    }

    /// The responses handlers gave, in order.
    pub fn responses(&self) -> Vec<VmiEventResponse<Amd64>> {
        lock(&self.responses).clone()
    }

    fn record(&self, call: MockCall) -> Result<(), VmiError> {
        let op = call.op();
        lock(&self.calls).push(call);
        if let Some(op) = op {
            let mut faults = lock(&self.faults);
            if let Some(i) = faults.iter().position(|(o, _)| *o == op) {
                return Err(faults.remove(i).1);
            }
        }
        Ok(())
    }

    fn check_page(&self, gfn: Gfn, offset: usize, len: usize) -> Result<(), VmiError> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > PAGE as usize)
        {
            return Err(VmiError::InvalidArgument(format!(
                "{len} bytes at offset {offset} cross the page"
            )));
        }
        if gfn.0.checked_mul(PAGE).is_none_or(|pa| pa >= self.size) {
            return Err(VmiError::PageUnavailable {
                gfn,
                reason: PageAbsence::BeyondMemory,
            });
        }
        if self
            .holes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&gfn.0)
        {
            return Err(VmiError::PageUnavailable {
                gfn,
                reason: PageAbsence::NotInDump,
            });
        }
        Ok(())
    }
}

impl VmiDriver for MockDriver {
    type Architecture = Amd64;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: PAGE,
            max_gfn: Gfn(self.size.saturating_sub(1) / PAGE),
            vcpus: self.vcpus.read().unwrap_or_else(|e| e.into_inner()).len() as u16,
            live: self.live,
            cache_pages: self.cache_pages,
            kind: "mock",
        })
    }
}

impl VmiRead for MockDriver {
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        self.record(MockCall::ReadPage {
            gfn,
            offset,
            len: buf.len(),
        })?;
        self.check_page(gfn, offset, buf.len())?;
        let pages = self.pages.read().unwrap_or_else(|e| e.into_inner());
        match pages.get(&gfn.0) {
            Some(page) => buf.copy_from_slice(&page[offset..offset + buf.len()]),
            None => buf.fill(0),
        }
        Ok(())
    }

    /// Logs the batch, then reads each piece as `read_page` does (logged, faults
    /// injected per piece).
    fn read_pages(&self, reads: &mut [PageRead<'_>]) -> Vec<Result<(), VmiError>> {
        lock(&self.calls).push(MockCall::ReadPages {
            pieces: reads.len(),
        });
        reads
            .iter_mut()
            .map(|r| self.read_page(r.gfn, r.offset, r.buf))
            .collect()
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        Ok(vec![Pa(0)..Pa(self.size)])
    }
}

impl VmiWrite for MockDriver {
    fn write_page(&self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), VmiError> {
        self.record(MockCall::WritePage {
            gfn,
            offset,
            len: data.len(),
        })?;
        self.check_page(gfn, offset, data.len())?;
        self.write_physical(Pa(gfn.0 * PAGE + offset as u64), data);
        Ok(())
    }
}

impl VmiQueryRegisters for MockDriver {
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.record(MockCall::Registers(vcpu))?;
        self.vcpu(vcpu).ok_or_else(|| VmiError::NotFound {
            kind: "vcpu",
            name: vcpu.to_string(),
        })
    }
}

impl VmiSetRegisters for MockDriver {
    fn set_registers(&self, vcpu: VcpuId, registers: &Registers) -> Result<(), VmiError> {
        self.record(MockCall::SetRegisters(vcpu))?;
        if self.vcpu(vcpu).is_none() {
            return Err(VmiError::NotFound {
                kind: "vcpu",
                name: vcpu.to_string(),
            });
        }
        self.set_vcpu(vcpu, registers.clone());
        Ok(())
    }
}

impl VmiVmControl for MockDriver {
    fn pause(&self) -> Result<(), VmiError> {
        self.record(MockCall::Pause)?;
        *lock(&self.state) = VmState::Paused;
        Ok(())
    }

    fn resume(&self) -> Result<(), VmiError> {
        self.record(MockCall::Resume)?;
        *lock(&self.state) = VmState::Running;
        Ok(())
    }

    fn state(&self) -> Result<VmState, VmiError> {
        self.record(MockCall::State)?;
        Ok(*lock(&self.state))
    }
}

impl VmiEventControl for MockDriver {
    fn breakpoint_addressing(&self) -> BreakpointAddressing {
        if self.physical_breakpoints {
            BreakpointAddressing::Physical
        } else {
            BreakpointAddressing::Virtual
        }
    }

    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        self.record(MockCall::MonitorEnable(monitor))?;
        lock(&self.monitors).push(monitor);
        Ok(())
    }

    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        self.record(MockCall::MonitorDisable(monitor))?;
        lock(&self.monitors).retain(|m| *m != monitor);
        Ok(())
    }

    fn wait_for_events(
        &self,
        _timeout: Duration,
        handler: &mut EventCallback<'_, Amd64>,
    ) -> Result<usize, VmiError> {
        self.record(MockCall::WaitForEvents)?;
        let mut handled = 0;
        while let Some(event) = lock(&self.events).pop_front() {
            let response = handler(&event);
            if let Some(regs) = &response.set_registers {
                self.set_vcpu(event.vcpu, (**regs).clone());
            }
            for change in &response.monitors {
                match *change {
                    MonitorChange::Enable(m) => self.monitor_enable(m)?,
                    MonitorChange::Disable(m) => self.monitor_disable(m)?,
                }
            }
            lock(&self.responses).push(response);
            handled += 1;
        }
        Ok(handled)
    }
}

/// Size of a page mapped by [`PageTableBuilder::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB (PT leaf).
    Size4K,
    /// 2 MiB (PD leaf).
    Size2M,
    /// 1 GiB (PDPT leaf).
    Size1G,
}

impl PageSize {
    /// Bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }

    fn leaf_level(self) -> u8 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }
}

/// Writes AMD64 page tables into a [`MockDriver`]'s memory.
pub struct PageTableBuilder<'a> {
    driver: &'a MockDriver,
    root: Pa,
    next_table: Pa,
    mode: PagingMode,
}

impl<'a> PageTableBuilder<'a> {
    /// 4-level tables with the root at `root`; new tables are taken from `table_area`
    /// upwards.
    pub fn new(driver: &'a MockDriver, root: Pa, table_area: Pa) -> Self {
        Self::with_mode(driver, root, table_area, PagingMode::Level4)
    }

    /// Tables of the given paging mode.
    pub fn with_mode(driver: &'a MockDriver, root: Pa, table_area: Pa, mode: PagingMode) -> Self {
        driver.write_physical(root, &[0u8; PAGE as usize]);
        Self {
            driver,
            root,
            next_table: table_area,
            mode,
        }
    }

    /// The root table's address (what CR3 holds).
    pub fn root(&self) -> Pa {
        self.root
    }

    /// Maps `va` to `pa` with a present, writable, user page of `size`.
    pub fn map(&mut self, va: Va, pa: Pa, size: PageSize) {
        self.map_with(va, pa, size, pte::WRITABLE | pte::USER)
    }

    /// Maps `va` to `pa` with the given extra entry bits (present is always set; the
    /// intermediate entries get `flags` too, minus NX).
    pub fn map_with(&mut self, va: Va, pa: Pa, size: PageSize, flags: u64) {
        let top: u8 = if self.mode == PagingMode::Level5 {
            5
        } else {
            4
        };
        let mut table = self.root;
        for level in (1..=top).rev() {
            let shift = 12 + 9 * (u32::from(level) - 1);
            let entry_pa = table + ((va.0 >> shift) & 0x1ff) * 8;
            if level == size.leaf_level() {
                let ps = if level > 1 { pte::PAGE_SIZE } else { 0 };
                self.driver.write_u64(
                    entry_pa,
                    (pa.0 & pte::ADDRESS_MASK) | flags | ps | pte::PRESENT,
                );
                return;
            }
            let entry = u64::from_le_bytes(
                self.driver
                    .read_physical(entry_pa, 8)
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            table = if entry & pte::PRESENT != 0 {
                Pa(entry & pte::ADDRESS_MASK)
            } else {
                let new = self.next_table;
                self.next_table += PAGE;
                self.driver.write_physical(new, &[0u8; PAGE as usize]);
                let inner = (flags & !pte::NO_EXECUTE) | pte::PRESENT;
                self.driver.write_u64(entry_pa, new.0 | inner);
                new
            };
        }
    }

    /// Writes a raw entry at `level` for `va` (creating the tables above it), for
    /// crafting broken tables in tests.
    pub fn set_raw_entry(&mut self, va: Va, level: u8, entry: u64) {
        let top: u8 = if self.mode == PagingMode::Level5 {
            5
        } else {
            4
        };
        let mut table = self.root;
        for l in (level..=top).rev() {
            let shift = 12 + 9 * (u32::from(l) - 1);
            let entry_pa = table + ((va.0 >> shift) & 0x1ff) * 8;
            if l == level {
                self.driver.write_u64(entry_pa, entry);
                return;
            }
            let e = u64::from_le_bytes(
                self.driver
                    .read_physical(entry_pa, 8)
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            table = if e & pte::PRESENT != 0 && e & pte::PAGE_SIZE == 0 {
                Pa(e & pte::ADDRESS_MASK)
            } else {
                let new = self.next_table;
                self.next_table += PAGE;
                self.driver.write_physical(new, &[0u8; PAGE as usize]);
                self.driver
                    .write_u64(entry_pa, new.0 | pte::PRESENT | pte::WRITABLE | pte::USER);
                new
            };
        }
    }
}
