//! [`BreakpointManager`]: many breakpoints keyed by (address space, virtual address),
//! each with a user tag, over any driver with [`VmiEventControl`].
//!
//! # How it maps onto the driver
//!
//! The driver knows one breakpoint per virtual address (QEMU's gdbstub matches the
//! instruction pointer, whatever the address space). The manager keeps the table of what
//! the user asked for and *reconciles* it with the driver: a driver breakpoint exists at
//! `va` exactly while at least one armed entry sits there. A hit is matched against the
//! table by the event's instruction pointer and page-table root; a hit that matches no
//! entry (another process running the same code at the same address, a breakpoint removed
//! while the vCPU was already on its way) is answered with *continue* and counted as
//! foreign, the handler never sees it.
//!
//! # Pending breakpoints and the page-table monitor
//!
//! A breakpoint whose page is not present in its address space is *pending*: no driver
//! breakpoint is set for it (a driver that patches an `int3` into guest memory cannot,
//! and a hypervisor that matches guest-physical addresses has nothing to match). Pending
//! entries are checked again — by a fresh page walk, not through the translation cache —
//! after every event and before every wait ([`BreakpointManager::wait`]: at least every
//! 100 ms in [`BreakpointManager::run_until`]), and armed when their page is present.
//!
//! That alone misses code that runs right after its page comes in (a program's first
//! instructions). With [`BreakpointManager::with_page_table_monitor`] each pending
//! breakpoint also gets a write watchpoint on the page-table entry that keeps its page
//! absent, seen through the kernel's direct map: the kernel's write of that entry stops
//! the vCPU, the manager walks again and arms the breakpoint (or moves the watchpoint
//! down to the table level just created) in the same stop, before the faulting
//! instruction runs again. These events are the manager's own; the handler does not see
//! them ([`ManagerStats::page_table_writes`] counts them).
//!
//! An armed breakpoint stays armed when its page goes out: QEMU's gdbstub breakpoints
//! match the virtual address, so they fire again once the page is back.
//!
//! # Drivers that take physical addresses
//!
//! Xen's driver plants an `int3` in a frame ([`BreakpointAddressing::Physical`]). The
//! manager then translates each armed entry in its own address space and sets the driver
//! breakpoint at that physical address, one per frame byte however many entries share
//! it. Before every wait it walks each armed entry again: an entry whose page went out
//! is pending again (its `int3` removed), one whose page moved follows it. A frame that a
//! page of another process shares (a library's code) fires there too; as with virtual
//! breakpoints, such hits are matched by the page-table root and answered silently.
//!
//! # Leaving the guest as found
//!
//! Driver breakpoints are removed when their last entry goes: by
//! [`BreakpointManager::remove`], when a [`BreakpointHandle`] drops, by
//! [`BreakpointManager::clear`], and when the manager drops — also while a panic unwinds
//! or after an error. A Ctrl-C handler should set the flag given to
//! [`BreakpointManager::run_until`], which then returns and lets the manager drop. A
//! process killed outright cannot clean up; the QEMU driver's guard process does it.
//!
//! # Handlers and the driver
//!
//! The driver calls the handler while it holds the vCPU stopped, so adding or removing
//! breakpoints from a handler cannot call the driver then: the table changes at once (a
//! removed breakpoint is not reported again) and the driver changes travel in the event's
//! answer ([`VmiEventResponse::monitors`]), applied before the vCPU goes on — a return
//! breakpoint set at a function's entry is in place before the function can return. A
//! handler's
//! [`VmiEventResponse::remove_monitor`] removes the entries that were hit, never a driver
//! breakpoint that other entries share.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use vmi_arch_amd64::{Amd64, EventReason, PagingMode};
use vmi_core::{
    AccessContext, AddressContext, Architecture, BreakpointAddress, BreakpointAddressing,
    BreakpointKind, EventMonitor, FaultKind, MemoryAccess, MonitorChange, Pa, Registers as _, Va,
    VmiCore, VmiError, VmiEvent, VmiEventControl, VmiEventResponse, VmiRead,
};

/// Architectures whose events and page tables the manager can read.
pub trait BreakpointEvents: Architecture {
    /// The address of the breakpoint that `reason` reports, `None` for other events.
    fn breakpoint_va(reason: &Self::EventReason) -> Option<Va>;

    /// The guest-virtual address a memory-access (watchpoint) event reports.
    fn watchpoint_va(reason: &Self::EventReason) -> Option<Va>;

    /// The guest-physical address of the page-table entry that makes `ctx.va` absent
    /// (the first non-present entry of the walk), `None` when the address is mapped.
    fn absent_entry<D: VmiRead<Architecture = Self>>(
        core: &VmiCore<D>,
        ctx: AddressContext,
    ) -> Result<Option<Pa>, VmiError>;
}

impl BreakpointEvents for Amd64 {
    fn breakpoint_va(reason: &EventReason) -> Option<Va> {
        match reason {
            EventReason::Breakpoint { va, .. } => Some(*va),
            _ => None,
        }
    }

    fn watchpoint_va(reason: &EventReason) -> Option<Va> {
        match reason {
            EventReason::MemoryAccess { va, .. } => *va,
            _ => None,
        }
    }

    fn absent_entry<D: VmiRead<Architecture = Self>>(
        core: &VmiCore<D>,
        ctx: AddressContext,
    ) -> Result<Option<Pa>, VmiError> {
        /// Physical address bits of an entry (12-51).
        const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
        const PRESENT: u64 = 1;
        const LARGE: u64 = 1 << 7;
        let top: u8 = match core.paging_mode() {
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        };
        let mut table = ctx.root.0 & ADDRESS;
        for level in (1..=top).rev() {
            let index = (ctx.va.0 >> (12 + 9 * (u32::from(level) - 1))) & 511;
            let at = Pa(table + index * 8);
            let entry = core.read_u64(AccessContext::direct(at))?;
            if entry & PRESENT == 0 {
                return Ok(Some(at));
            }
            if level == 1 || (matches!(level, 2 | 3) && entry & LARGE != 0) {
                return Ok(None);
            }
            table = entry & ADDRESS;
        }
        Ok(None)
    }
}

/// Which address space a breakpoint belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressSpace {
    /// The kernel's half, shared by every address space: hits count in any process. The
    /// root is the one used to check that the page is present.
    Kernel(Pa),
    /// One process's address space, by its page-table root: hits elsewhere at the same
    /// virtual address are not reported.
    Process(Pa),
}

impl AddressSpace {
    /// The page-table root used to check the page.
    pub fn root(&self) -> Pa {
        match self {
            AddressSpace::Kernel(r) | AddressSpace::Process(r) => *r,
        }
    }
}

/// Identifies one breakpoint of a manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BreakpointId(pub u64);

/// Whether a breakpoint can fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakpointState {
    /// Its page is not present (or was not at the last check): no driver breakpoint yet.
    Pending,
    /// A driver breakpoint is in place (or will be right after the current event).
    Armed,
}

/// One breakpoint that an event hit, given to the handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit<T> {
    /// Which breakpoint.
    pub id: BreakpointId,
    /// Its address space.
    pub space: AddressSpace,
    /// Its tag (a clone).
    pub tag: T,
}

/// Counters of a manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManagerStats {
    /// Breakpoint events that matched at least one entry (handed to the handler).
    pub hits: u64,
    /// Breakpoint events that matched no entry (answered with continue).
    pub foreign_hits: u64,
    /// Other events handed to the handler (single-steps, watchpoints).
    pub other_events: u64,
    /// Pending breakpoints armed after their page came in.
    pub armed_later: u64,
    /// Driver breakpoints set.
    pub driver_inserts: u64,
    /// Driver breakpoints removed.
    pub driver_removes: u64,
    /// Writes to watched page-table entries (page-table monitor).
    pub page_table_writes: u64,
}

#[derive(Debug)]
struct Entry<T> {
    space: AddressSpace,
    va: Va,
    tag: T,
    state: BreakpointState,
    /// Pending with the page-table monitor on: the direct-map address of the entry that
    /// keeps the page absent.
    watch: Option<Va>,
    /// Armed, with a driver that takes physical addresses: where `va` translates.
    pa: Option<Pa>,
}

/// A driver monitor the manager sets: a breakpoint, or a write watchpoint on a
/// page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Monitor {
    Breakpoint(Va),
    /// A breakpoint at a physical address (drivers with physical addressing).
    Physical(Pa),
    Watch(Va),
}

#[derive(Debug)]
struct State<T> {
    next_id: u64,
    entries: BTreeMap<BreakpointId, Entry<T>>,
    /// Driver breakpoints and watchpoints in place.
    installed: BTreeSet<Monitor>,
    /// A handler runs: driver calls are deferred to the end of the event.
    dispatching: bool,
    stats: ManagerStats,
}

/// Many breakpoints with user tags over one core. See the [module docs](self).
///
/// ```
/// use vmi_core::{Pa, Va, VcpuId, VmiCore, VmiEvent, VmiEventResponse, BreakpointKind};
/// use vmi_arch_amd64::{EventReason, Registers};
/// use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
/// use vmi_utils::bpm::{AddressSpace, BreakpointManager, BreakpointState};
///
/// let driver = MockDriver::new(16 << 20).live();
/// let mut tables = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
/// tables.map(Va(0xffff_ffff_8100_0000), Pa(0x5000), PageSize::Size4K);
/// let root = tables.root();
/// let core = VmiCore::new(driver)?;
/// let bpm = BreakpointManager::new(&core);
///
/// let mapped = bpm.add(AddressSpace::Kernel(root), Va(0xffff_ffff_8100_0010), "open")?;
/// let absent = bpm.add(AddressSpace::Kernel(root), Va(0xffff_ffff_8200_0000), "later")?;
/// assert_eq!(bpm.state(mapped), Some(BreakpointState::Armed));
/// assert_eq!(bpm.state(absent), Some(BreakpointState::Pending));
///
/// // The vCPU reaches the armed one.
/// let mut registers = Registers::default();
/// registers.rip = 0xffff_ffff_8100_0010;
/// registers.cr3 = vmi_arch_amd64::Cr3(root.0);
/// core.driver().push_event(VmiEvent {
///     vcpu: VcpuId(0),
///     reason: EventReason::Breakpoint {
///         va: Va(registers.rip), pa: None, kind: BreakpointKind::Software,
///     },
///     registers,
/// });
/// let mut seen = Vec::new();
/// bpm.wait(std::time::Duration::ZERO, |_, hits| {
///     seen.extend(hits.iter().map(|h| h.tag));
///     VmiEventResponse::default()
/// })?;
/// assert_eq!(seen, ["open"]);
/// drop(bpm); // every driver breakpoint goes
/// assert!(core.driver().monitors().is_empty());
/// # Ok::<(), vmi_core::VmiError>(())
/// ```
pub struct BreakpointManager<'a, D: VmiRead + VmiEventControl, T> {
    core: &'a VmiCore<D>,
    kind: BreakpointKind,
    /// The driver takes physical addresses.
    physical: bool,
    root_mask: u64,
    direct_map: Option<Va>,
    state: Mutex<State<T>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it consistent enough to clean up.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a, D, T> BreakpointManager<'a, D, T>
where
    D: VmiRead + VmiEventControl,
    D::Architecture: BreakpointEvents,
    T: Clone,
{
    /// A manager of software breakpoints over `core`.
    pub fn new(core: &'a VmiCore<D>) -> Self {
        Self {
            core,
            kind: BreakpointKind::Software,
            physical: core.driver().breakpoint_addressing() == BreakpointAddressing::Physical,
            root_mask: !0,
            direct_map: None,
            state: Mutex::new(State {
                next_id: 1,
                entries: BTreeMap::new(),
                installed: BTreeSet::new(),
                dispatching: false,
                stats: ManagerStats::default(),
            }),
        }
    }

    /// Uses this kind of driver breakpoint (hardware ones are few: KVM has 4).
    pub fn with_kind(mut self, kind: BreakpointKind) -> Self {
        self.kind = kind;
        self
    }

    /// Ignores these bits of page-table roots when matching a hit to a
    /// [`AddressSpace::Process`] (Linux with page-table isolation runs user code on the
    /// user copy of the top table, at the kernel copy's address plus `0x1000`: pass
    /// `0x1000`).
    pub fn ignore_root_bits(mut self, bits: u64) -> Self {
        self.root_mask = !bits;
        self
    }

    /// Turns the page-table monitor on: each pending breakpoint gets a write watchpoint
    /// on the page-table entry that keeps its page absent, seen at `direct_map` plus the
    /// entry's physical address (the kernel's direct map of physical memory, where it
    /// writes page tables: `page_offset_base` on Linux). A write re-walks at once, so a
    /// breakpoint is armed before the code that faulted its page in runs (a new table
    /// level moves the watchpoint down to it).
    pub fn with_page_table_monitor(mut self, direct_map: Va) -> Self {
        self.direct_map = Some(direct_map);
        self
    }

    /// The core.
    pub fn core(&self) -> &'a VmiCore<D> {
        self.core
    }

    /// Adds a breakpoint at `va` in `space`, armed at once when its page is present,
    /// else pending. It stays until [`remove`](Self::remove), [`clear`](Self::clear) or
    /// the manager drops.
    pub fn add(&self, space: AddressSpace, va: Va, tag: T) -> Result<BreakpointId, VmiError> {
        let mut s = lock(&self.state);
        if !s.dispatching {
            // The guest may have run since anything was cached (in a handler the event
            // just made the caches current).
            self.core.invalidate_caches();
        }
        let id = BreakpointId(s.next_id);
        s.next_id = s.next_id.checked_add(1).ok_or_else(|| {
            VmiError::InvalidArgument("breakpoint ids exhausted (2^64 breakpoints)".into())
        })?;
        let (state, pa) = self.page_state(space, va)?;
        s.entries.insert(
            id,
            Entry {
                space,
                va,
                tag,
                state,
                watch: None,
                pa,
            },
        );
        if !s.dispatching
            && let Err(e) = self.sync(&mut s)
        {
            s.entries.remove(&id);
            // Best effort: the entry is gone, take its driver breakpoint too.
            let _ = self.sync(&mut s);
            return Err(e);
        }
        Ok(id)
    }

    /// Like [`add`](Self::add), but the breakpoint goes when the returned handle drops.
    pub fn add_scoped(
        &self,
        space: AddressSpace,
        va: Va,
        tag: T,
    ) -> Result<BreakpointHandle<'_, 'a, D, T>, VmiError> {
        let id = self.add(space, va, tag)?;
        Ok(BreakpointHandle {
            manager: self,
            id: Some(id),
        })
    }

    /// Removes a breakpoint; returns its tag, `None` if there was no such breakpoint.
    /// Within a handler the driver breakpoint goes right after the event.
    pub fn remove(&self, id: BreakpointId) -> Result<Option<T>, VmiError> {
        let mut s = lock(&self.state);
        let Some(entry) = s.entries.remove(&id) else {
            return Ok(None);
        };
        if !s.dispatching {
            self.sync(&mut s)?;
        }
        Ok(Some(entry.tag))
    }

    /// Removes every breakpoint.
    pub fn clear(&self) -> Result<(), VmiError> {
        let mut s = lock(&self.state);
        s.entries.clear();
        if !s.dispatching {
            self.sync(&mut s)?;
        }
        Ok(())
    }

    /// The state of a breakpoint, `None` if there is no such breakpoint.
    pub fn state(&self, id: BreakpointId) -> Option<BreakpointState> {
        lock(&self.state).entries.get(&id).map(|e| e.state)
    }

    /// The tag of a breakpoint.
    pub fn tag(&self, id: BreakpointId) -> Option<T> {
        lock(&self.state).entries.get(&id).map(|e| e.tag.clone())
    }

    /// Every breakpoint: id, address space, address, state.
    pub fn list(&self) -> Vec<(BreakpointId, AddressSpace, Va, BreakpointState)> {
        lock(&self.state)
            .entries
            .iter()
            .map(|(id, e)| (*id, e.space, e.va, e.state))
            .collect()
    }

    /// Number of breakpoints (pending and armed).
    pub fn len(&self) -> usize {
        lock(&self.state).entries.len()
    }

    /// Whether there is no breakpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of driver breakpoints in place.
    pub fn driver_breakpoints(&self) -> usize {
        lock(&self.state)
            .installed
            .iter()
            .filter(|m| matches!(m, Monitor::Breakpoint(_) | Monitor::Physical(_)))
            .count()
    }

    /// Number of page-table entries watched for pending breakpoints.
    pub fn watched_entries(&self) -> usize {
        lock(&self.state)
            .installed
            .iter()
            .filter(|m| matches!(m, Monitor::Watch(_)))
            .count()
    }

    /// Counters.
    pub fn stats(&self) -> ManagerStats {
        lock(&self.state).stats
    }

    /// Checks the pending breakpoints again and arms those whose page came in; returns
    /// how many were armed. [`wait`](Self::wait) does it before each wait.
    pub fn refresh(&self) -> Result<usize, VmiError> {
        let mut s = lock(&self.state);
        if s.dispatching {
            return Ok(0);
        }
        let before = s.stats.armed_later;
        self.sync(&mut s)?;
        Ok(usize::try_from(s.stats.armed_later - before).unwrap_or(usize::MAX))
    }

    /// Checks pending breakpoints, waits up to `timeout` for events and hands each to
    /// `handler` with the breakpoints it hit (none for events other than breakpoints),
    /// then brings the driver in line with what the handler added or removed. Returns
    /// the number of events the driver delivered (foreign hits included).
    pub fn wait(
        &self,
        timeout: Duration,
        mut handler: impl FnMut(
            &VmiEvent<D::Architecture>,
            &[Hit<T>],
        ) -> VmiEventResponse<D::Architecture>,
    ) -> Result<usize, VmiError> {
        {
            let mut s = lock(&self.state);
            self.sync(&mut s)?;
            s.dispatching = true;
        }
        // Back to normal whatever happens (error, panic in the handler).
        struct Dispatching<'m, T>(&'m Mutex<State<T>>);
        impl<T> Drop for Dispatching<'_, T> {
            fn drop(&mut self) {
                lock(self.0).dispatching = false;
            }
        }
        let dispatching = Dispatching(&self.state);
        let mask = self.root_mask;
        let result = self.core.driver().wait_for_events(timeout, &mut |event| {
            // The guest ran: nothing cached is current.
            self.core.invalidate_caches();
            if let Some(wva) = D::Architecture::watchpoint_va(&event.reason) {
                let mut s = lock(&self.state);
                let ours = s.installed.iter().any(|m| {
                    matches!(m, Monitor::Watch(w) if w.0 <= wva.0 && wva.0 < w.0.saturating_add(8))
                });
                if ours {
                    // A page-table entry of a pending breakpoint was written: walk again
                    // and arm (or watch the next level) before the guest goes on.
                    s.stats.page_table_writes += 1;
                    return VmiEventResponse {
                        monitors: self.settle(&mut s),
                        ..VmiEventResponse::default()
                    };
                }
            }
            let Some(va) = D::Architecture::breakpoint_va(&event.reason) else {
                lock(&self.state).stats.other_events += 1;
                let mut response = handler(event, &[]);
                response
                    .monitors
                    .extend(self.settle(&mut lock(&self.state)));
                return response;
            };
            let root = Pa(event.registers.translation_root().0 & mask);
            let hits: Vec<Hit<T>> = {
                let mut s = lock(&self.state);
                let hits: Vec<Hit<T>> = s
                    .entries
                    .iter()
                    .filter(|(_, e)| {
                        e.va == va
                            && e.state == BreakpointState::Armed
                            && match e.space {
                                AddressSpace::Kernel(_) => true,
                                AddressSpace::Process(r) => Pa(r.0 & mask) == root,
                            }
                    })
                    .map(|(id, e)| Hit {
                        id: *id,
                        space: e.space,
                        tag: e.tag.clone(),
                    })
                    .collect();
                if hits.is_empty() {
                    s.stats.foreign_hits += 1;
                } else {
                    s.stats.hits += 1;
                }
                hits
            };
            if hits.is_empty() {
                return VmiEventResponse::default();
            }
            let mut response = handler(event, &hits);
            let mut s = lock(&self.state);
            if response.remove_monitor {
                // Never the driver's breakpoint itself: other entries may share it.
                response.remove_monitor = false;
                for h in &hits {
                    s.entries.remove(&h.id);
                }
            }
            // What the handler added or removed, before the vCPU goes on.
            response.monitors.extend(self.settle(&mut s));
            response
        });
        drop(dispatching);
        let events = result?;
        let mut s = lock(&self.state);
        self.sync(&mut s)?;
        Ok(events)
    }

    /// Runs [`wait`](Self::wait) in 100 ms slices until `stop` is set (by a Ctrl-C
    /// handler, or by `handler` itself through a reference it holds).
    pub fn run_until(
        &self,
        stop: &AtomicBool,
        mut handler: impl FnMut(
            &VmiEvent<D::Architecture>,
            &[Hit<T>],
        ) -> VmiEventResponse<D::Architecture>,
    ) -> Result<(), VmiError> {
        while !stop.load(Ordering::SeqCst) {
            self.wait(Duration::from_millis(100), &mut handler)?;
        }
        Ok(())
    }

    /// Whether `va` is present in `space` now (a fresh walk, no cache), and where it
    /// translates when the driver takes physical addresses.
    fn page_state(
        &self,
        space: AddressSpace,
        va: Va,
    ) -> Result<(BreakpointState, Option<Pa>), VmiError> {
        match self.core.translate(AddressContext {
            va,
            root: space.root(),
        }) {
            Ok(t) => Ok((BreakpointState::Armed, self.physical.then_some(t.pa))),
            Err(e) => match e.page_fault() {
                Some(f) if f.kind == FaultKind::NonCanonical => Err(VmiError::InvalidArgument(
                    format!("breakpoint at non-canonical address {va}"),
                )),
                Some(_) => Ok((BreakpointState::Pending, None)),
                None => Err(e),
            },
        }
    }

    fn monitor(&self, va: Va) -> EventMonitor {
        EventMonitor::Breakpoint {
            address: BreakpointAddress::Virtual(va),
            kind: self.kind,
        }
    }

    /// The driver monitors the table asks for: a breakpoint where an entry is armed, a
    /// watchpoint on the absent entry of each pending one (with the monitor on).
    fn wanted(s: &State<T>) -> BTreeSet<Monitor> {
        s.entries
            .values()
            .filter_map(|e| match (e.state, e.pa) {
                (BreakpointState::Armed, Some(pa)) => Some(Monitor::Physical(pa)),
                (BreakpointState::Armed, None) => Some(Monitor::Breakpoint(e.va)),
                (BreakpointState::Pending, _) => e.watch.map(Monitor::Watch),
            })
            .collect()
    }

    fn driver_monitor(&self, m: Monitor) -> EventMonitor {
        match m {
            Monitor::Breakpoint(va) => self.monitor(va),
            Monitor::Physical(pa) => EventMonitor::Breakpoint {
                address: BreakpointAddress::Physical(pa),
                kind: self.kind,
            },
            Monitor::Watch(va) => EventMonitor::Watchpoint {
                address: BreakpointAddress::Virtual(va),
                len: 8,
                access: MemoryAccess::Write,
            },
        }
    }

    /// The driver changes that make driver monitors match the table, for an event's
    /// answer; `installed` is updated as if they were applied (a driver that fails one
    /// fails the wait).
    fn plan(&self, s: &mut State<T>) -> Vec<MonitorChange> {
        let wanted = Self::wanted(s);
        let mut changes = Vec::new();
        let stale: Vec<Monitor> = s.installed.difference(&wanted).copied().collect();
        for m in stale {
            s.installed.remove(&m);
            s.stats.driver_removes += 1;
            changes.push(MonitorChange::Disable(self.driver_monitor(m)));
        }
        let missing: Vec<Monitor> = wanted.difference(&s.installed).copied().collect();
        for m in missing {
            s.installed.insert(m);
            s.stats.driver_inserts += 1;
            changes.push(MonitorChange::Enable(self.driver_monitor(m)));
        }
        changes
    }

    /// Within an event: checks pending entries (those the handler added too) and plans
    /// the driver changes for the answer. A walk that fails leaves its entry pending, to
    /// be reported by the next [`wait`](Self::wait).
    fn settle(&self, s: &mut State<T>) -> Vec<MonitorChange> {
        // Armed physical entries are walked again before each wait, not at each event.
        if let Ok(n) = self.check_pending(s, false) {
            s.stats.armed_later += n;
        }
        self.plan(s)
    }

    /// Walks the page tables of every pending entry afresh: arms those now present,
    /// finds the absent entry of the others (page-table monitor). Returns how many were
    /// armed; the first error is returned after every entry was looked at. With
    /// `rewalk_armed`, armed entries at physical addresses are walked too (they follow
    /// their page, or go pending).
    fn check_pending(&self, s: &mut State<T>, rewalk_armed: bool) -> Result<u64, VmiError> {
        if !s
            .entries
            .values()
            .any(|e| e.state == BreakpointState::Pending || (rewalk_armed && e.pa.is_some()))
        {
            return Ok(0);
        }
        // The guest may have run since anything was cached.
        self.core.invalidate_caches();
        let mut armed = 0;
        let mut first_err = None;
        for e in s.entries.values_mut() {
            if e.state != BreakpointState::Pending {
                // Physical: follow the page (or go pending with it).
                if rewalk_armed && e.pa.is_some() {
                    match self.page_state(e.space, e.va) {
                        Ok((state, pa)) => {
                            e.state = state;
                            e.pa = pa;
                        }
                        Err(err) => {
                            first_err.get_or_insert(err);
                        }
                    }
                }
                continue;
            }
            match self.page_state(e.space, e.va) {
                Ok((BreakpointState::Armed, pa)) => {
                    e.state = BreakpointState::Armed;
                    e.watch = None;
                    e.pa = pa;
                    armed += 1;
                }
                Ok((BreakpointState::Pending, _)) => {
                    if let Some(base) = self.direct_map {
                        let ctx = AddressContext {
                            va: e.va,
                            root: e.space.root(),
                        };
                        match D::Architecture::absent_entry(self.core, ctx) {
                            Ok(at) => e.watch = at.and_then(|pa| base.checked_add(pa.0)),
                            Err(err) => {
                                e.watch = None;
                                first_err.get_or_insert(err);
                            }
                        }
                    }
                }
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        first_err.map_or(Ok(armed), Err)
    }

    /// Arms pending entries whose page is present, then sets and removes driver
    /// monitors so that they match the table.
    fn sync(&self, s: &mut State<T>) -> Result<(), VmiError> {
        let mut first_err = None;
        match self.check_pending(s, true) {
            Ok(n) => s.stats.armed_later += n,
            Err(e) => first_err = Some(e),
        }
        let wanted = Self::wanted(s);
        let stale: Vec<Monitor> = s.installed.difference(&wanted).copied().collect();
        for m in stale {
            match self.core.monitor_disable(self.driver_monitor(m)) {
                Ok(()) => {
                    s.installed.remove(&m);
                    s.stats.driver_removes += 1;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let missing: Vec<Monitor> = wanted.difference(&s.installed).copied().collect();
        for m in missing {
            match self.core.monitor_enable(self.driver_monitor(m)) {
                Ok(()) => {
                    s.installed.insert(m);
                    s.stats.driver_inserts += 1;
                }
                Err(e) => {
                    match m {
                        // Not armed after all: pending until the next check.
                        Monitor::Breakpoint(va) => {
                            for entry in s.entries.values_mut().filter(|entry| entry.va == va) {
                                entry.state = BreakpointState::Pending;
                            }
                        }
                        Monitor::Physical(pa) => {
                            for entry in s.entries.values_mut().filter(|e| e.pa == Some(pa)) {
                                entry.state = BreakpointState::Pending;
                                entry.pa = None;
                            }
                        }
                        // No watchpoint: the entry is re-checked at each wait instead.
                        Monitor::Watch(va) => {
                            for entry in s.entries.values_mut() {
                                if entry.watch == Some(va) {
                                    entry.watch = None;
                                }
                            }
                        }
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl<D: VmiRead + VmiEventControl, T> Drop for BreakpointManager<'_, D, T> {
    fn drop(&mut self) {
        // Every driver breakpoint goes, whatever the table says. Errors cannot be
        // reported from here; the driver removes what is left when it detaches.
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        s.entries.clear();
        for m in std::mem::take(&mut s.installed) {
            let _ = self.core.monitor_disable(match m {
                Monitor::Breakpoint(va) => EventMonitor::Breakpoint {
                    address: BreakpointAddress::Virtual(va),
                    kind: self.kind,
                },
                Monitor::Physical(pa) => EventMonitor::Breakpoint {
                    address: BreakpointAddress::Physical(pa),
                    kind: self.kind,
                },
                Monitor::Watch(va) => EventMonitor::Watchpoint {
                    address: BreakpointAddress::Virtual(va),
                    len: 8,
                    access: MemoryAccess::Write,
                },
            });
        }
    }
}

/// A breakpoint removed when the handle drops (from [`BreakpointManager::add_scoped`]).
pub struct BreakpointHandle<'m, 'a, D, T>
where
    D: VmiRead + VmiEventControl,
    D::Architecture: BreakpointEvents,
    T: Clone,
{
    manager: &'m BreakpointManager<'a, D, T>,
    id: Option<BreakpointId>,
}

impl<D, T> BreakpointHandle<'_, '_, D, T>
where
    D: VmiRead + VmiEventControl,
    D::Architecture: BreakpointEvents,
    T: Clone,
{
    /// The breakpoint's id.
    pub fn id(&self) -> BreakpointId {
        // Set from construction until `keep`, which consumes the handle.
        self.id.unwrap_or(BreakpointId(0))
    }

    /// Keeps the breakpoint after the handle goes (until removed or the manager drops).
    pub fn keep(mut self) -> BreakpointId {
        self.id.take().unwrap_or(BreakpointId(0))
    }
}

impl<D, T> Drop for BreakpointHandle<'_, '_, D, T>
where
    D: VmiRead + VmiEventControl,
    D::Architecture: BreakpointEvents,
    T: Clone,
{
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // An error here leaves the driver breakpoint to the manager's drop.
            let _ = self.manager.remove(id);
        }
    }
}
