//! The breakpoint manager on the mock driver: keying by address space, pending
//! breakpoints armed when their page comes in, shared driver breakpoints, removal from a
//! handler, handles and drop.

use std::time::Duration;

use vmi_arch_amd64::{Cr3, EventReason, Registers};
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, MonitorChange, Pa, Va, VcpuId, VmiCore,
    VmiEvent, VmiEventResponse,
};
use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
use vmi_utils::bpm::{AddressSpace, BreakpointManager, BreakpointState};

const KERNEL: Va = Va(0xffff_ffff_8100_0000);
const USER: Va = Va(0x40_1000);

fn bp(va: Va) -> EventMonitor {
    EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(va),
        kind: BreakpointKind::Software,
    }
}

fn hit(va: Va, root: Pa) -> VmiEvent<vmi_arch_amd64::Amd64> {
    let registers = Registers {
        rip: va.0,
        cr3: Cr3(root.0),
        ..Registers::default()
    };
    VmiEvent {
        vcpu: VcpuId(0),
        reason: EventReason::Breakpoint {
            va,
            pa: None,
            kind: BreakpointKind::Software,
        },
        registers,
    }
}

/// Two address spaces sharing the kernel half, `USER` mapped in the first only.
fn two_spaces() -> (VmiCore<MockDriver>, Pa, Pa) {
    let driver = MockDriver::new(32 << 20).live();
    let mut a = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
    a.map(KERNEL, Pa(0x5000), PageSize::Size4K);
    a.map(USER, Pa(0x6000), PageSize::Size4K);
    let mut b = PageTableBuilder::new(&driver, Pa(0x40_0000), Pa(0x50_0000));
    b.map(KERNEL, Pa(0x5000), PageSize::Size4K);
    let (ra, rb) = (a.root(), b.root());
    (VmiCore::new(driver).unwrap(), ra, rb)
}

#[test]
fn hits_are_matched_by_address_space() {
    let (core, ra, rb) = two_spaces();
    let bpm = BreakpointManager::new(&core);
    let k = bpm.add(AddressSpace::Kernel(ra), KERNEL, "kernel").unwrap();
    let u = bpm.add(AddressSpace::Process(ra), USER, "user a").unwrap();
    assert_eq!(bpm.state(k), Some(BreakpointState::Armed));
    assert_eq!(bpm.state(u), Some(BreakpointState::Armed));
    assert_eq!(core.driver().monitors(), vec![bp(KERNEL), bp(USER)]);

    // The kernel breakpoint fires in both spaces; the user one only in its own.
    for ev in [hit(KERNEL, rb), hit(USER, rb), hit(USER, ra)] {
        core.driver().push_event(ev);
    }
    let mut seen = Vec::new();
    let n = bpm
        .wait(Duration::ZERO, |_, hits| {
            seen.push(hits.iter().map(|h| h.tag).collect::<Vec<_>>());
            VmiEventResponse::default()
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(seen, vec![vec!["kernel"], vec!["user a"]]);
    let stats = bpm.stats();
    assert_eq!((stats.hits, stats.foreign_hits), (2, 1));
}

#[test]
fn pending_breakpoint_is_armed_when_its_page_comes_in() {
    let driver = MockDriver::new(32 << 20).live();
    let mut tables = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
    tables.map(KERNEL, Pa(0x5000), PageSize::Size4K);
    let root = tables.root();
    let core = VmiCore::new(driver).unwrap();
    let bpm = BreakpointManager::new(&core);
    let id = bpm.add(AddressSpace::Process(root), USER, 7u32).unwrap();
    assert_eq!(bpm.state(id), Some(BreakpointState::Pending));
    assert!(
        core.driver().monitors().is_empty(),
        "no driver breakpoint yet"
    );
    assert_eq!(bpm.refresh().unwrap(), 0);

    // The page comes in (the builder writes the entries, as the guest's kernel would).
    let mut tables = PageTableBuilder::new(core.driver(), root, Pa(0x30_0000));
    tables.map(USER, Pa(0x7000), PageSize::Size4K);
    core.driver().push_event(hit(USER, root));
    let mut tags = Vec::new();
    bpm.wait(Duration::ZERO, |_, hits| {
        tags.extend(hits.iter().map(|h| h.tag));
        VmiEventResponse::default()
    })
    .unwrap();
    assert_eq!(bpm.state(id), Some(BreakpointState::Armed));
    assert_eq!(core.driver().monitors(), vec![bp(USER)]);
    assert_eq!(tags, [7], "armed before the wait, so the hit is reported");
    assert_eq!(bpm.stats().armed_later, 1);
}

#[test]
fn shared_address_keeps_one_driver_breakpoint_until_the_last_entry_goes() {
    let (core, ra, _) = two_spaces();
    let bpm = BreakpointManager::new(&core);
    let a = bpm.add(AddressSpace::Kernel(ra), KERNEL, 1).unwrap();
    let b = bpm.add(AddressSpace::Kernel(ra), KERNEL, 2).unwrap();
    assert_eq!(core.driver().monitors().len(), 1);
    assert_eq!(bpm.remove(a).unwrap(), Some(1));
    assert_eq!(core.driver().monitors().len(), 1);
    assert_eq!(bpm.remove(b).unwrap(), Some(2));
    assert!(core.driver().monitors().is_empty());
    assert_eq!(bpm.remove(b).unwrap(), None);
}

#[test]
fn handler_adds_and_removes_during_an_event() {
    let (core, ra, _) = two_spaces();
    let bpm = BreakpointManager::new(&core);
    bpm.add(AddressSpace::Kernel(ra), KERNEL, "entry").unwrap();
    core.driver().push_event(hit(KERNEL, ra));
    core.driver().push_event(hit(KERNEL, ra));
    let mut calls = 0;
    bpm.wait(Duration::ZERO, |_, hits| {
        calls += 1;
        // A return breakpoint, then the entry breakpoint removed by the response.
        bpm.add(AddressSpace::Process(ra), USER, "return").unwrap();
        assert_eq!(hits[0].tag, "entry");
        VmiEventResponse::default().and_remove_monitor()
    })
    .unwrap();
    assert_eq!(calls, 1, "the second hit is foreign: its entry is gone");
    assert_eq!(bpm.stats().foreign_hits, 1);
    assert_eq!(core.driver().monitors(), vec![bp(USER)]);
    assert_eq!(
        core.driver().responses()[0].monitors,
        vec![
            MonitorChange::Disable(bp(KERNEL)),
            MonitorChange::Enable(bp(USER))
        ],
        "driver changes travel in the answer, before the vCPU goes on"
    );
    assert!(
        core.driver().responses().iter().all(|r| !r.remove_monitor),
        "the driver's breakpoint is never removed by a response"
    );
}

#[test]
fn handles_and_drop_leave_no_driver_breakpoint() {
    let (core, ra, _) = two_spaces();
    {
        let bpm = BreakpointManager::new(&core);
        {
            let _h = bpm
                .add_scoped(AddressSpace::Kernel(ra), KERNEL, ())
                .unwrap();
            assert_eq!(core.driver().monitors().len(), 1);
        }
        assert!(core.driver().monitors().is_empty());
        let kept = bpm
            .add_scoped(AddressSpace::Process(ra), USER, ())
            .unwrap()
            .keep();
        assert_eq!(bpm.state(kept), Some(BreakpointState::Armed));
        assert_eq!(core.driver().monitors().len(), 1);
    }
    assert!(core.driver().monitors().is_empty());
}

#[test]
fn a_panicking_handler_leaves_no_driver_breakpoint() {
    let (core, ra, _) = two_spaces();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let bpm = BreakpointManager::new(&core);
        bpm.add(AddressSpace::Kernel(ra), KERNEL, ()).unwrap();
        core.driver().push_event(hit(KERNEL, ra));
        let _ = bpm.wait(Duration::ZERO, |_, _| panic!("handler bug"));
    }));
    assert!(result.is_err());
    assert!(core.driver().monitors().is_empty());
}

#[test]
fn non_canonical_address_is_refused() {
    let (core, ra, _) = two_spaces();
    let bpm = BreakpointManager::<_, ()>::new(&core);
    let err = bpm
        .add(AddressSpace::Kernel(ra), Va(0x8000_0000_0000_0000), ())
        .unwrap_err();
    assert!(err.to_string().contains("non-canonical"), "{err}");
    assert!(bpm.is_empty());
}

#[test]
fn kpti_user_root_matches_with_ignored_bit() {
    let (core, ra, _) = two_spaces();
    let bpm = BreakpointManager::new(&core).ignore_root_bits(0x1000);
    bpm.add(AddressSpace::Process(ra), USER, ()).unwrap();
    core.driver().push_event(hit(USER, Pa(ra.0 | 0x1000)));
    let mut n = 0;
    bpm.wait(Duration::ZERO, |_, hits| {
        n += hits.len();
        VmiEventResponse::default()
    })
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn page_table_monitor_arms_at_the_write_of_the_entry() {
    let driver = MockDriver::new(32 << 20).live();
    let mut tables = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
    tables.map(KERNEL, Pa(0x5000), PageSize::Size4K);
    let root = tables.root();
    let core = VmiCore::new(driver).unwrap();
    let direct_map = Va(0xffff_8880_0000_0000);
    let bpm = BreakpointManager::new(&core).with_page_table_monitor(direct_map);
    let id = bpm.add(AddressSpace::Process(root), USER, ()).unwrap();
    assert_eq!(bpm.state(id), Some(BreakpointState::Pending));
    // USER's PML4 entry (index 0) is the absent one: watched through the direct map.
    let watch = EventMonitor::Watchpoint {
        address: BreakpointAddress::Virtual(Va(direct_map.0 + root.0)),
        len: 8,
        access: vmi_core::MemoryAccess::Write,
    };
    assert_eq!(core.driver().monitors(), vec![watch]);
    assert_eq!(bpm.watched_entries(), 1);

    // A write to the watched entry that leaves the page absent: the manager's own
    // event (the handler never sees it), the page still pending.
    let watch_event = VmiEvent {
        vcpu: VcpuId(0),
        reason: EventReason::MemoryAccess {
            va: Some(Va(direct_map.0 + root.0)),
            pa: None,
            access: vmi_core::MemoryAccess::Write,
        },
        registers: Registers::default(),
    };
    core.driver().push_event(watch_event);
    let mut called = 0;
    bpm.wait(Duration::ZERO, |_, _| {
        called += 1;
        VmiEventResponse::default()
    })
    .unwrap();
    assert_eq!(called, 0, "the manager's own event");
    assert_eq!(bpm.stats().page_table_writes, 1);
    assert_eq!(bpm.state(id), Some(BreakpointState::Pending));
    assert_eq!(core.driver().monitors(), vec![watch]);

    // A neighbour 2 MiB away is mapped (new PDPT, PD): the watch moves down to USER's
    // PD entry in the same stop; then USER itself is mapped: armed in that stop.
    let k = bpm.add(AddressSpace::Kernel(root), KERNEL, ()).unwrap();
    core.driver().push_event(hit(KERNEL, root));
    core.driver().push_event(hit(KERNEL, root));
    let mut step = 0;
    bpm.wait(Duration::ZERO, |_, _| {
        let mut tables =
            PageTableBuilder::new(core.driver(), root, Pa(0x30_0000 + step * 0x10_0000));
        let va = if step == 0 {
            Va(USER.0 + (2 << 20))
        } else {
            USER
        };
        tables.map(va, Pa(0x7000), PageSize::Size4K);
        step += 1;
        VmiEventResponse::default()
    })
    .unwrap();
    let responses = core.driver().responses();
    let moved = &responses[1].monitors;
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(moved[0], MonitorChange::Disable(watch));
    assert!(
        matches!(
            moved[1],
            MonitorChange::Enable(EventMonitor::Watchpoint { .. })
        ) && moved[1] != MonitorChange::Enable(watch),
        "{moved:?}"
    );
    let MonitorChange::Enable(deeper) = moved[1] else {
        unreachable!()
    };
    assert_eq!(
        responses[2].monitors,
        vec![
            MonitorChange::Disable(deeper),
            MonitorChange::Enable(bp(USER))
        ],
        "armed in the same stop"
    );
    assert_eq!(bpm.state(id), Some(BreakpointState::Armed));
    bpm.remove(k).unwrap();
    assert_eq!(core.driver().monitors(), vec![bp(USER)]);
    drop(bpm);
    assert!(core.driver().monitors().is_empty());
}

fn physical(pa: u64) -> EventMonitor {
    EventMonitor::Breakpoint {
        address: BreakpointAddress::Physical(Pa(pa)),
        kind: BreakpointKind::Software,
    }
}

/// A driver that takes physical addresses (Xen's): each armed entry becomes a breakpoint
/// where it translates in its own address space, follows its page when the page moves,
/// and goes pending (no int3) when the page goes out.
#[test]
fn physical_breakpoints_follow_their_page() {
    let core = VmiCore::new(MockDriver::new(32 << 20).live().physical_breakpoints()).unwrap();
    let mut a = PageTableBuilder::new(core.driver(), Pa(0x10_0000), Pa(0x20_0000));
    a.map(KERNEL, Pa(0x5000), PageSize::Size4K);
    a.map(USER, Pa(0x6000), PageSize::Size4K);
    let mut b = PageTableBuilder::new(core.driver(), Pa(0x40_0000), Pa(0x50_0000));
    b.map(KERNEL, Pa(0x5000), PageSize::Size4K);
    b.map(USER, Pa(0x9000), PageSize::Size4K);
    let (ra, rb) = (a.root(), b.root());
    let bpm = BreakpointManager::new(&core);
    let k = bpm
        .add(AddressSpace::Kernel(ra), KERNEL + 0x10, "kernel")
        .unwrap();
    let u = bpm.add(AddressSpace::Process(ra), USER, "user a").unwrap();
    assert_eq!(bpm.state(k), Some(BreakpointState::Armed));
    assert_eq!(
        core.driver().monitors(),
        vec![physical(0x5010), physical(0x6000)]
    );
    assert_eq!(bpm.driver_breakpoints(), 2);

    // Hits are still matched by virtual address and address space.
    for ev in [hit(KERNEL + 0x10, rb), hit(USER, rb), hit(USER, ra)] {
        core.driver().push_event(ev);
    }
    let mut seen = Vec::new();
    bpm.wait(Duration::ZERO, |_, hits| {
        seen.extend(hits.iter().map(|h| h.tag));
        VmiEventResponse::default()
    })
    .unwrap();
    assert_eq!(seen, ["kernel", "user a"]);
    assert_eq!(
        core.driver().monitors(),
        vec![physical(0x5010), physical(0x6000)]
    );

    // The user page moves to another frame: the breakpoint follows it.
    a.map(USER, Pa(0x8000), PageSize::Size4K);
    bpm.refresh().unwrap();
    assert_eq!(
        core.driver().monitors(),
        vec![physical(0x5010), physical(0x8000)]
    );
    // It goes out: pending, no int3 left in the frame it had.
    a.set_raw_entry(USER, 1, 0);
    bpm.refresh().unwrap();
    assert_eq!(bpm.state(u), Some(BreakpointState::Pending));
    assert_eq!(core.driver().monitors(), vec![physical(0x5010)]);
    // And comes back.
    a.map(USER, Pa(0x7000), PageSize::Size4K);
    assert_eq!(bpm.refresh().unwrap(), 1);
    assert_eq!(
        core.driver().monitors(),
        vec![physical(0x5010), physical(0x7000)]
    );
    drop(bpm);
    assert!(core.driver().monitors().is_empty());
}
