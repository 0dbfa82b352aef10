//! The driver against the in-memory Xen: ring bytes, wrap-around, versions, unknown
//! reasons, registers, memory, clean-up, and a failure of every library call.

#![allow(clippy::field_reassign_with_default)] // fixtures read best as a default plus the fields under test

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_arch_amd64::{EventReason, Registers};
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, Gfn, MemoryAccess, Pa, VcpuId, VmiCore,
    VmiError, VmiEventControl, VmiEventResponse, VmiQueryRegisters, VmiRead, VmiSetRegisters,
    VmiVmControl, VmiWrite,
};
use vmi_driver_xen::abi::{self, HvmHwCpu, PvContext, VmEvent, XenMemAccess, flags, reason, sring};
use vmi_driver_xen::fake::{FakeXen, calls};
use vmi_driver_xen::{DomId, EventStats, MonitorOp, ViewId, XenDriver};
use zerocopy::{FromZeros, IntoBytes};

const T: Duration = Duration::from_millis(200);

fn cr3_request(vcpu: u32, old: u64, new: u64) -> VmEvent {
    let mut e = VmEvent::new_zeroed();
    e.version = 7;
    e.flags = flags::VCPU_PAUSED;
    e.reason = reason::WRITE_CTRLREG;
    e.vcpu_id = vcpu;
    e.u = [u64::from(abi::ctrlreg::CR3), new, old, 0];
    e.regs.rip = 0xffff_ffff_8100_0000 + new;
    e.regs.cr3 = new;
    e
}

fn hvm() -> (FakeXen, DomId, XenDriver<FakeXen>) {
    let xen = FakeXen::new();
    let d = xen.add_hvm_domain(64);
    let drv = XenDriver::new(xen.clone(), d).expect("attach");
    (xen, d, drv)
}

#[test]
fn ring_init_and_response_bytes_are_exact() {
    let (xen, d, drv) = hvm();
    drv.monitor_enable(EventMonitor::ControlRegisterWrite(3))
        .unwrap();
    let page = xen.ring_bytes(d).unwrap();
    // SHARED_RING_INIT: req_prod 0, req_event 1, rsp_prod 0, rsp_event 1, zero padding
    assert_eq!(
        &page[..16],
        &[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    );
    assert!(page[16..64].iter().all(|b| *b == 0));

    let req = cr3_request(0, 0x1000, 0x2000);
    xen.push_request(d, &req).unwrap();
    let page = xen.ring_bytes(d).unwrap();
    assert_eq!(&page[sring::HEADER..sring::HEADER + 400], req.as_bytes());
    assert_eq!(u32::from_ne_bytes(page[0..4].try_into().unwrap()), 1);

    let mut seen = Vec::new();
    let n = drv
        .wait_for_events(T, &mut |e| {
            seen.push((e.vcpu, e.reason.clone(), e.registers.rip));
            VmiEventResponse::default()
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        seen,
        vec![(
            VcpuId(0),
            EventReason::ControlRegister {
                index: 3,
                old: 0x1000,
                new: 0x2000
            },
            0xffff_ffff_8100_2000
        )]
    );
    let page = xen.ring_bytes(d).unwrap();
    // response in slot 0, rsp_prod 1, req_event asked for the next request
    let mut want = VmEvent::new_zeroed();
    want.version = 7;
    want.flags = flags::VCPU_PAUSED;
    want.reason = reason::WRITE_CTRLREG;
    assert_eq!(&page[sring::HEADER..sring::HEADER + 400], want.as_bytes());
    assert_eq!(u32::from_ne_bytes(page[8..12].try_into().unwrap()), 1);
    assert_eq!(u32::from_ne_bytes(page[4..8].try_into().unwrap()), 2);
    assert_eq!(xen.notifications(), 1);
}

#[test]
fn ring_wraps_around_many_times() {
    let (xen, d, drv) = hvm();
    drv.monitor_enable(EventMonitor::ControlRegisterWrite(3))
        .unwrap();
    let mut total = 0;
    let mut expected_new = 0u64;
    let mut got = Vec::new();
    for round in 0..25u64 {
        // 1..=8 requests per round: every slot count, index wraps past 8 repeatedly
        let k = round % 8 + 1;
        for i in 0..k {
            xen.push_request(d, &cr3_request(0, 0, (round << 8) | i))
                .unwrap();
        }
        if k == 8 {
            assert_eq!(
                xen.push_request(d, &cr3_request(0, 0, 0)),
                Err("ring full"),
                "9th request must not fit"
            );
        }
        total += drv
            .wait_for_events(T, &mut |e| {
                if let EventReason::ControlRegister { new, .. } = e.reason {
                    got.push(new);
                }
                VmiEventResponse::default()
            })
            .unwrap();
        let rsps = xen.take_responses(d);
        assert_eq!(rsps.len() as u64, k);
        assert!(
            rsps.iter()
                .all(|r| r.flags & flags::VCPU_PAUSED != 0 && r.version == 7)
        );
        expected_new += k;
    }
    assert_eq!(total as u64, expected_new);
    let mut want = Vec::new();
    for round in 0..25u64 {
        for i in 0..round % 8 + 1 {
            want.push((round << 8) | i);
        }
    }
    assert_eq!(got, want, "events in ring order");
}

#[test]
fn version_mismatch_and_unknown_reasons_are_answered_not_handed_on() {
    let (xen, d, drv) = hvm();
    drv.monitor_enable(EventMonitor::Cpuid).unwrap();
    let mut old = cr3_request(0, 1, 2);
    old.version = 6;
    let mut unknown = cr3_request(0, 1, 2);
    unknown.reason = 16; // IO_INSTRUCTION (4.18+, same version number)
    let mut odd_cr = cr3_request(0, 1, 2);
    odd_cr.u[0] = u64::from(abi::ctrlreg::CR4 + 1); // XCR0
    let mut bad_vcpu = cr3_request(7, 1, 2);
    bad_vcpu.flags = 0;
    for r in [&old, &unknown, &odd_cr, &bad_vcpu] {
        xen.push_request(d, r).unwrap();
    }
    let n = drv
        .wait_for_events(T, &mut |_| panic!("no request may reach the handler"))
        .unwrap();
    assert_eq!(n, 0);
    let rsps = xen.take_responses(d);
    assert_eq!(rsps.len(), 4);
    for (rsp, req) in rsps.iter().zip([&old, &unknown, &odd_cr, &bad_vcpu]) {
        assert_eq!(rsp.version, 7);
        assert_eq!(rsp.vcpu_id, req.vcpu_id);
        assert_eq!(
            rsp.flags,
            req.flags & flags::VCPU_PAUSED,
            "paused flag echoed, nothing else"
        );
    }
    assert_eq!(
        drv.event_stats(),
        EventStats {
            handled: 0,
            unknown_reason: 2,
            bad_version: 1,
            bad_vcpu: 1,
            responses: 4,
            ..EventStats::default()
        }
    );
}

#[test]
fn garbage_requests_never_panic() {
    let (xen, d, drv) = hvm();
    drv.monitor_enable(EventMonitor::GuestRequest).unwrap();
    let mut rng = SmallRng::seed_from_u64(9);
    let base = cr3_request(0, 1, 2);
    for _ in 0..200 {
        let mut b = [0u8; 400];
        b.copy_from_slice(base.as_bytes());
        for _ in 0..rng.gen_range(1..16) {
            let i = rng.gen_range(0..400);
            b[i] = rng.r#gen();
        }
        if rng.gen_bool(0.3) {
            b[0..4].copy_from_slice(&7u32.to_ne_bytes());
            b[8..12].copy_from_slice(&rng.gen_range(0u32..20).to_ne_bytes());
        }
        xen.push_raw_request(d, &b).unwrap();
        drv.wait_for_events(T, &mut |_| VmiEventResponse::default())
            .unwrap();
        assert_eq!(xen.take_responses(d).len(), 1);
    }
    // a producer that claims far more requests than slots: bounded by the slot count
    let page_prod = 1_000_000u32;
    let _ = page_prod; // (the fake cannot lie about req_prod; the ring bound is unit-tested)
}

#[test]
fn every_known_reason_is_decoded() {
    let xen = FakeXen::new();
    let d = xen.add_hvm_domain_with_vcpus(0x1300, 2);
    let drv = XenDriver::new(xen.clone(), d).unwrap();
    drv.monitor_enable(EventMonitor::MsrWrite(0xc000_0082))
        .unwrap();
    // the breakpoint event is one of ours (the guest's own int3s are not reported)
    xen.write_memory(d, 0x123_4567, &[0x90]);
    drv.monitor_enable(software_breakpoint(0x123_4567)).unwrap();
    let mk = |reason: u32, u: [u64; 4]| {
        let mut e = cr3_request(1, 0, 0);
        e.reason = reason;
        e.u = u;
        e.regs.rip = 0xffff_ffff_8123_4567;
        e
    };
    let reqs = [
        mk(reason::WRITE_CTRLREG, [0, 0x8005_0033, 0x8005_0031, 0]),
        mk(reason::WRITE_CTRLREG, [2, 0x6f0, 0x670, 0]),
        mk(
            reason::MOV_TO_MSR,
            [0xc000_0082, 0xffff_ffff_8160_0000, 0, 0],
        ),
        mk(reason::SOFTWARE_BREAKPOINT, [0x1234, 0, 1, 0]),
        mk(reason::SINGLESTEP, [0x1234, 0, 0, 0]),
        mk(
            reason::MEM_ACCESS,
            [
                0x55,
                0x10,
                0xffff_8880_0005_5010,
                u64::from(abi::mem_access::W | abi::mem_access::GLA_VALID),
            ],
        ),
        mk(reason::GUEST_REQUEST, [0; 4]),
        mk(reason::DEBUG_EXCEPTION, [0x1234, 0x4000, 1, 0]),
        mk(reason::CPUID, [2 | (0x4000_0000u64 << 32), 3, 0, 0]),
    ];
    for r in &reqs[..8] {
        xen.push_request(d, r).unwrap();
    }
    let mut seen = Vec::new();
    let mut handle = |e: &vmi_core::VmiEvent<vmi_arch_amd64::Amd64>| {
        assert_eq!(e.vcpu, VcpuId(1));
        seen.push(e.reason.clone());
        VmiEventResponse::default()
    };
    drv.wait_for_events(T, &mut handle).unwrap();
    xen.push_request(d, &reqs[8]).unwrap();
    drv.wait_for_events(T, &mut handle).unwrap();
    assert_eq!(
        seen,
        vec![
            EventReason::ControlRegister {
                index: 0,
                old: 0x8005_0031,
                new: 0x8005_0033
            },
            EventReason::ControlRegister {
                index: 4,
                old: 0x670,
                new: 0x6f0
            },
            EventReason::Msr {
                index: 0xc000_0082,
                value: 0xffff_ffff_8160_0000
            },
            EventReason::Breakpoint {
                va: vmi_core::Va(0xffff_ffff_8123_4567),
                pa: Some(Pa(0x0123_4567)),
                kind: BreakpointKind::Software
            },
            EventReason::SingleStep,
            EventReason::MemoryAccess {
                va: Some(vmi_core::Va(0xffff_8880_0005_5010)),
                pa: Some(Pa(0x55010)),
                access: MemoryAccess::Write
            },
            EventReason::GuestRequest,
            EventReason::DebugException { dr6: 0x4000 },
            EventReason::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 3
            },
        ]
    );
    let rsps = xen.take_responses(d);
    // mem_access without removal: emulate the access
    assert_eq!(rsps[5].flags, flags::VCPU_PAUSED | flags::EMULATE);
}

#[test]
fn responses_carry_registers_single_step_and_removals() {
    let (xen, d, drv) = hvm();
    drv.monitor_enable(EventMonitor::ControlRegisterWrite(3))
        .unwrap();
    xen.push_request(d, &cr3_request(0, 1, 2)).unwrap();
    drv.wait_for_events(T, &mut |e| {
        let mut r = e.registers.clone();
        r.rax = 0x1234;
        VmiEventResponse::single_step()
            .and_set_registers(r)
            .and_remove_monitor()
    })
    .unwrap();
    let rsp = &xen.take_responses(d)[0];
    assert_eq!(
        rsp.flags,
        flags::VCPU_PAUSED | flags::SET_REGISTERS | flags::TOGGLE_SINGLESTEP
    );
    assert_eq!(rsp.regs.rax, 0x1234);
    assert_eq!(rsp.regs.rip, 0xffff_ffff_8100_0002);
    assert!(
        !xen.monitors(d)
            .contains(&MonitorOp::WriteCtrlreg(abi::ctrlreg::CR3))
    );
}

#[test]
fn breakpoints_are_planted_and_restored() {
    let (xen, d, drv) = hvm();
    xen.write_memory(d, 0x3010, &[0x55]);
    let bp = EventMonitor::Breakpoint {
        address: BreakpointAddress::Physical(Pa(0x3010)),
        kind: BreakpointKind::Software,
    };
    drv.monitor_enable(bp).unwrap();
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0xcc]);
    let mut e = cr3_request(0, 0, 0);
    e.reason = reason::SOFTWARE_BREAKPOINT;
    e.u = [3, 0, 1, 0];
    e.regs.rip = 0xffff_ffff_8000_0010;
    xen.push_request(d, &e).unwrap();
    drv.wait_for_events(T, &mut |_| VmiEventResponse::default().and_remove_monitor())
        .unwrap();
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0x55]);
    // planted again, then left behind by drop: restored
    drv.monitor_enable(bp).unwrap();
    drop(drv);
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0x55]);
    assert!(matches!(
        XenDriver::new(xen.clone(), d)
            .unwrap()
            .monitor_enable(EventMonitor::Breakpoint {
                address: BreakpointAddress::Virtual(vmi_core::Va(0)),
                kind: BreakpointKind::Software
            }),
        Err(VmiError::NotSupported { .. })
    ));
}

/// A software-breakpoint request of vCPU `vcpu` at guest-physical `pa` (rip in the
/// same page offset).
fn int3_request(vcpu: u32, pa: u64) -> VmEvent {
    let mut e = cr3_request(vcpu, 0, 0);
    e.reason = reason::SOFTWARE_BREAKPOINT;
    e.u = [pa >> 12, 0, 1, 0];
    e.regs.rip = 0xffff_ffff_8000_0000 | pa;
    e
}

fn software_breakpoint(pa: u64) -> EventMonitor {
    EventMonitor::Breakpoint {
        address: BreakpointAddress::Physical(Pa(pa)),
        kind: BreakpointKind::Software,
    }
}

#[test]
fn reads_see_the_original_bytes_and_writes_keep_the_int3() {
    let (xen, d, drv) = hvm();
    xen.write_memory(d, 0x3ffe, &[0x11, 0x22, 0x33, 0x44]);
    drv.monitor_enable(software_breakpoint(0x3fff)).unwrap();
    drv.monitor_enable(software_breakpoint(0x4000)).unwrap();
    assert_eq!(xen.read_memory(d, 0x3ffe, 4), [0x11, 0xcc, 0xcc, 0x44]);
    let mut b = [0u8; 2];
    drv.read_page(Gfn(3), 0xffe, &mut b).unwrap();
    assert_eq!(b, [0x11, 0x22]);
    let mut page = vec![0u8; 2 * 4096];
    assert_eq!(drv.read_frames(Gfn(3), &mut page).unwrap(), [true, true]);
    assert_eq!(&page[0xffe..0x1002], &[0x11, 0x22, 0x33, 0x44]);
    // through the core's cross-page read as well
    let core = VmiCore::new(drv).unwrap();
    assert_eq!(
        core.read_vec(Pa(0x3ffe), 4).unwrap(),
        [0x11, 0x22, 0x33, 0x44]
    );
    // a write over a planted byte changes what it stands for; the int3 stays
    core.write(Pa(0x3fff), &[0x99, 0x98]).unwrap();
    assert_eq!(xen.read_memory(d, 0x3ffe, 4), [0x11, 0xcc, 0xcc, 0x44]);
    assert_eq!(
        core.read_vec(Pa(0x3ffe), 4).unwrap(),
        [0x11, 0x99, 0x98, 0x44]
    );
    drop(core);
    assert_eq!(xen.read_memory(d, 0x3ffe, 4), [0x11, 0x99, 0x98, 0x44]);
}

#[test]
fn a_hit_on_a_nop_goes_on_past_it_and_keeps_the_int3() {
    let (xen, d, drv) = hvm();
    // the kernel's __fentry__ padding (nop5), then push rbp
    xen.write_memory(d, 0x3010, &[0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55]);
    drv.monitor_enable(software_breakpoint(0x3010)).unwrap();
    let req = int3_request(0, 0x3010);
    xen.push_request(d, &req).unwrap();
    let mut seen = Vec::new();
    drv.wait_for_events(T, &mut |e| {
        seen.push(e.reason.clone());
        VmiEventResponse::default()
    })
    .unwrap();
    assert!(matches!(
        seen[..],
        [EventReason::Breakpoint {
            pa: Some(Pa(0x3010)),
            ..
        }]
    ));
    let rsp = &xen.take_responses(d)[0];
    assert_eq!(rsp.flags, flags::VCPU_PAUSED | flags::SET_REGISTERS);
    assert_eq!(rsp.regs.rip, req.regs.rip + 5);
    assert_eq!(rsp.regs.rsp, req.regs.rsp);
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0xcc], "still armed");
    assert_eq!(drv.event_stats().stepped_over_nops, 1);
    // a handler that moves rip itself is obeyed
    xen.push_request(d, &req).unwrap();
    drv.wait_for_events(T, &mut |e| {
        let mut r = e.registers.clone();
        r.rip = 0xffff_ffff_8100_0000;
        VmiEventResponse::set_registers(r)
    })
    .unwrap();
    assert_eq!(xen.take_responses(d)[0].regs.rip, 0xffff_ffff_8100_0000);
}

#[test]
fn a_hit_elsewhere_is_single_stepped_with_the_original_byte_then_rearmed() {
    let (xen, d, drv) = hvm();
    xen.write_memory(d, 0x3010, &[0x55, 0x48, 0x89, 0xe5]); // push rbp; mov rbp, rsp
    drv.monitor_enable(software_breakpoint(0x3010)).unwrap();
    xen.push_request(d, &int3_request(0, 0x3010)).unwrap();
    let mut events = 0;
    drv.wait_for_events(T, &mut |_| {
        events += 1;
        VmiEventResponse::default()
    })
    .unwrap();
    let rsp = &xen.take_responses(d)[0];
    assert_eq!(rsp.flags, flags::VCPU_PAUSED | flags::TOGGLE_SINGLESTEP);
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0x55], "lifted for the step");
    let mut b = [0u8];
    drv.read_page(Gfn(3), 0x10, &mut b).unwrap();
    assert_eq!(b, [0x55]);
    // the step: the int3 goes back, single-step goes off, the handler sees nothing
    let mut step = cr3_request(0, 0, 0);
    step.reason = reason::SINGLESTEP;
    step.u = [0; 4];
    xen.push_request(d, &step).unwrap();
    drv.wait_for_events(T, &mut |_| {
        events += 1;
        VmiEventResponse::default()
    })
    .unwrap();
    assert_eq!(events, 1);
    let rsp = &xen.take_responses(d)[0];
    assert_eq!(rsp.flags, flags::VCPU_PAUSED | flags::TOGGLE_SINGLESTEP);
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0xcc], "armed again");
    assert_eq!(drv.event_stats().single_stepped, 1);
    drop(drv);
    assert_eq!(xen.read_memory(d, 0x3010, 4), [0x55, 0x48, 0x89, 0xe5]);
}

#[test]
fn without_single_step_a_hit_elsewhere_removes_the_breakpoint_and_says_why() {
    let xen = FakeXen::amd_tcg();
    let d = xen.add_hvm_domain(64);
    let drv = XenDriver::new(xen.clone(), d).unwrap();
    xen.write_memory(d, 0x3010, &[0x55]);
    drv.monitor_enable(software_breakpoint(0x3010)).unwrap();
    xen.push_request(d, &int3_request(0, 0x3010)).unwrap();
    let err = drv
        .wait_for_events(T, &mut |_| VmiEventResponse::default())
        .unwrap_err();
    assert!(err.to_string().contains("needs single-step"), "{err}");
    // answered all the same, the original instruction in place
    assert_eq!(xen.take_responses(d).len(), 1);
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0x55]);
    assert_eq!(drv.planted_breakpoints(), 0);
}

#[test]
fn the_guests_own_int3_goes_back_to_the_guest() {
    let (xen, d, drv) = hvm();
    xen.write_memory(d, 0x3010, &[0x90]);
    xen.write_memory(d, 0x5020, &[0xcc]); // the guest's
    drv.monitor_enable(software_breakpoint(0x3010)).unwrap();
    xen.push_request(d, &int3_request(0, 0x5020)).unwrap();
    // and a hit of ours that a handler removed before this vCPU's event was read
    xen.write_memory(d, 0x6030, &[0x55]);
    xen.push_request(d, &int3_request(0, 0x6030)).unwrap();
    let mut events = 0;
    drv.wait_for_events(T, &mut |_| {
        events += 1;
        VmiEventResponse::default()
    })
    .unwrap();
    assert_eq!(events, 0, "neither is ours");
    assert_eq!(
        xen.injected_breakpoints(d),
        [0],
        "only the guest's int3 is re-raised"
    );
    for rsp in xen.take_responses(d) {
        assert_eq!(rsp.flags, flags::VCPU_PAUSED);
    }
    assert_eq!(drv.event_stats().reinjected, 1);
}

#[test]
fn monitors_changed_in_a_response_apply_before_the_vcpu_goes_on() {
    let (xen, d, drv) = hvm();
    xen.write_memory(d, 0x3010, &[0x55]);
    xen.write_memory(d, 0x3020, &[0x66]);
    let first = EventMonitor::Breakpoint {
        address: BreakpointAddress::Physical(Pa(0x3010)),
        kind: BreakpointKind::Software,
    };
    let second = EventMonitor::Breakpoint {
        address: BreakpointAddress::Physical(Pa(0x3020)),
        kind: BreakpointKind::Software,
    };
    drv.monitor_enable(first).unwrap();
    let mut e = cr3_request(0, 0, 0);
    e.reason = reason::SOFTWARE_BREAKPOINT;
    e.u = [3, 0, 1, 0];
    e.regs.rip = 0xffff_ffff_8000_0010;
    xen.push_request(d, &e).unwrap();
    drv.wait_for_events(T, &mut |_| {
        VmiEventResponse::default()
            .and_change(vmi_core::MonitorChange::Disable(first))
            .and_change(vmi_core::MonitorChange::Enable(second))
    })
    .unwrap();
    assert_eq!(xen.read_memory(d, 0x3010, 1), [0x55], "restored");
    assert_eq!(xen.read_memory(d, 0x3020, 1), [0xcc], "planted");
    drop(drv);
    assert_eq!(xen.read_memory(d, 0x3020, 1), [0x66]);
}

#[test]
fn hvm_registers_read_and_write_through_the_save_blob() {
    let xen = FakeXen::new();
    let d = xen.add_hvm_domain_with_vcpus(64, 2);
    let mut cpu = HvmHwCpu::default();
    cpu.rip = 0xffff_ffff_81a5_92eb;
    cpu.cr3 = 0x563_8000;
    cpu.cr4 = 0x6f0;
    cpu.msr_efer = 0xd01;
    cpu.sel[abi::seg::CS] = 0x10;
    cpu.arbytes[abi::seg::CS] = 0xa09b;
    cpu.base[abi::seg::GS] = 0xffff_8880_0f00_0000;
    cpu.shadow_gs = 0x7f00_0000;
    cpu.fpu_regs[0] = 0x7f;
    cpu.tsc = 99;
    xen.set_hvm_cpu(d, 1, cpu);
    let drv = XenDriver::new(xen.clone(), d).unwrap();
    let r = drv.registers(VcpuId(1)).unwrap();
    assert_eq!(r.rip, 0xffff_ffff_81a5_92eb);
    assert_eq!(r.cr3.0, 0x563_8000);
    assert_eq!(r.cs.selector, 0x10);
    assert_eq!(r.cs.access, 0xa09b);
    assert_eq!(r.gs_base, 0xffff_8880_0f00_0000);
    assert_eq!(r.kernel_gs_base, 0x7f00_0000);
    assert!(r.long_mode() || r.cr0 == 0);
    let mut w = r.clone();
    w.rax = 0xdead;
    w.rip += 1;
    drv.set_registers(VcpuId(1), &w).unwrap();
    let after = xen.hvm_cpu(d, 1).unwrap();
    assert_eq!((after.rax, after.rip), (0xdead, cpu.rip + 1));
    assert_eq!(
        (after.fpu_regs[0], after.tsc),
        (0x7f, 99),
        "fields outside Registers kept"
    );
    assert_eq!(
        xen.hvm_cpu(d, 0).unwrap(),
        HvmHwCpu::default(),
        "other vCPU untouched"
    );
    assert!(matches!(
        drv.registers(VcpuId(2)),
        Err(VmiError::NotFound { .. })
    ));
}

#[test]
fn pv_registers_decode_cr3_and_write_back() {
    let xen = FakeXen::new();
    let d = xen.add_pv_domain(0x20_0000);
    let mut ctx = PvContext::default();
    ctx.user_regs.rip = 0xffff_ffff_81a4_42b5;
    ctx.user_regs.rsp = 0xffff_ffff_82a0_3db8;
    ctx.user_regs.cs = 0xe033;
    ctx.ctrlreg[0] = 0x8005_0033;
    ctx.ctrlreg[3] = 0x0001_3ca1_5000; // an L4 above 4 GiB of machine memory: x86_64 encoding
    ctx.ctrlreg[4] = 0x660;
    xen.set_pv_context(d, 0, ctx);
    let drv = XenDriver::new(xen.clone(), d).unwrap();
    assert_eq!(drv.guest_kind(), vmi_driver_xen::GuestKind::Pv);
    let r = drv.registers(VcpuId(0)).unwrap();
    assert_eq!(r.cr3.0, 0x0001_3ca1_5000);
    assert_eq!(r.rip, 0xffff_ffff_81a4_42b5);
    assert!(r.long_mode());
    let mut w = r;
    w.rbx = 7;
    drv.set_registers(VcpuId(0), &w).unwrap();
    let back = xen.pv_context(d, 0).unwrap();
    assert_eq!(back.user_regs.rbx, 7);
    assert_eq!(back.ctrlreg[3], ctx.ctrlreg[3], "CR3 left alone");
    assert!(matches!(
        drv.physical_ranges(),
        Err(VmiError::NotSupported { .. })
    ));
    // PV frames are machine frames: no max-GFN bound on them
    xen.write_memory(d, 0x0001_3ca1_5000, b"MFN");
    let mut b = [0u8; 3];
    drv.read_page(Gfn(0x13ca15), 0, &mut b).unwrap();
    assert_eq!(&b, b"MFN");
}

/// A 4-level walk through the core over fake memory: the banner behind a kernel address.
#[test]
fn core_translates_and_reads_write_restores() {
    let (xen, d, drv) = hvm();
    let va = 0xffff_ffff_8120_0040u64;
    let (pml4, pdpt, pd, pt, page): (u64, u64, u64, u64, u64) =
        (0x1000, 0x2000, 0x3000, 0x4000, 0x5000);
    let idx = |l: u32| (va >> (12 + 9 * l)) & 0x1ff;
    xen.write_memory(d, pml4 + idx(3) * 8, &(pdpt | 3).to_le_bytes());
    xen.write_memory(d, pdpt + idx(2) * 8, &(pd | 3).to_le_bytes());
    xen.write_memory(d, pd + idx(1) * 8, &(pt | 3).to_le_bytes());
    xen.write_memory(d, pt + idx(0) * 8, &(page | 3).to_le_bytes());
    xen.write_memory(d, page + 0x40, b"Linux version 6.1.0");
    let mut cpu = HvmHwCpu::default();
    cpu.cr3 = pml4;
    cpu.cr0 = 0x8000_0011;
    cpu.msr_efer = 0x500;
    xen.set_hvm_cpu(d, 0, cpu);
    let core = VmiCore::new(drv).unwrap();
    let regs = core.registers(VcpuId(0)).unwrap();
    let ctx = vmi_core::Registers::address_context(&regs, vmi_core::Va(va));
    assert_eq!(core.read_vec(ctx, 19).unwrap(), b"Linux version 6.1.0");
    core.write_u8(ctx, b'X').unwrap();
    assert_eq!(xen.read_memory(d, page + 0x40, 1), b"X");
    core.write_u8(ctx, b'L').unwrap();
    assert_eq!(xen.read_memory(d, page + 0x40, 5), b"Linux");
}

#[test]
fn drop_leaves_the_guest_as_found() {
    let xen = FakeXen::new();
    let d = xen.add_hvm_domain(64);
    {
        let drv = XenDriver::new(xen.clone(), d).unwrap();
        drv.pause().unwrap();
        drv.pause().unwrap();
        drv.monitor_enable(EventMonitor::ControlRegisterWrite(3))
            .unwrap();
        drv.monitor_enable(EventMonitor::PageAccess {
            gfn: Gfn(5),
            access: MemoryAccess::Write,
        })
        .unwrap();
        let v = drv.altp2m_create_view(XenMemAccess::RWX).unwrap();
        drv.set_mem_access(v, Gfn(6), XenMemAccess::RX).unwrap();
        drv.altp2m_switch_to_view(v).unwrap();
        // a request nobody handles: must be answered on drop
        xen.push_request(d, &cr3_request(0, 1, 2)).unwrap();
        assert_eq!(xen.pause_count(d), 2);
        assert!(!xen.restricted_frames(d).is_empty());
    }
    assert_eq!(xen.pause_count(d), 0);
    assert!(!xen.ring_enabled(d));
    assert!(xen.monitors(d).is_empty());
    assert!(xen.restricted_frames(d).is_empty());
    assert_eq!(xen.altp2m_state(d), (false, Default::default(), 0));
    assert_eq!(xen.bound_ports(), 0);
}

#[test]
fn drop_during_a_panicking_handler_cleans_up() {
    let xen = FakeXen::new();
    let d = xen.add_hvm_domain(64);
    let x2 = xen.clone();
    let r = std::panic::catch_unwind(move || {
        let drv = XenDriver::new(x2.clone(), d).unwrap();
        drv.pause().unwrap();
        drv.monitor_enable(EventMonitor::ControlRegisterWrite(3))
            .unwrap();
        x2.push_request(d, &cr3_request(0, 1, 2)).unwrap();
        x2.push_request(d, &cr3_request(0, 2, 3)).unwrap();
        let _ = drv.wait_for_events(T, &mut |_| panic!("handler bug"));
    });
    assert!(r.is_err());
    assert_eq!(xen.pause_count(d), 0);
    assert!(!xen.ring_enabled(d));
    assert_eq!(xen.bound_ports(), 0);
}

#[test]
fn amd_tcg_refusals_are_typed_not_supported() {
    let xen = FakeXen::amd_tcg();
    let d = xen.add_hvm_domain(64);
    let drv = XenDriver::new(xen.clone(), d).unwrap();
    let is_ns = |r: Result<(), VmiError>| match r {
        Err(e @ VmiError::NotSupported { .. }) => {
            assert!(
                e.to_string()
                    .ends_with("is not supported by this hypervisor"),
                "{e}"
            );
            true
        }
        other => panic!("expected NotSupported, got {other:?}"),
    };
    assert!(is_ns(drv.set_mem_access(
        ViewId(0),
        Gfn(1),
        XenMemAccess::R
    )));
    assert!(is_ns(drv.monitor_enable(EventMonitor::PageAccess {
        gfn: Gfn(1),
        access: MemoryAccess::Execute
    })));
    assert!(is_ns(drv.altp2m_enable()));
    assert!(is_ns(drv.altp2m_create_view(XenMemAccess::RWX).map(|_| ())));
    assert!(is_ns(drv.monitor(MonitorOp::Singlestep, true)));
    // CR3 events still work
    drv.monitor_enable(EventMonitor::ControlRegisterWrite(3))
        .unwrap();
    assert_eq!(
        drv.wait_for_events(Duration::from_millis(10), &mut |_| unreachable!())
            .unwrap(),
        0
    );
    drop(drv);
    assert!(xen.monitors(d).is_empty());
}

#[test]
fn pv_monitoring_is_not_supported() {
    let xen = FakeXen::new();
    let d = xen.add_pv_domain(64);
    let drv = XenDriver::new(xen, d).unwrap();
    assert!(matches!(
        drv.monitor_enable(EventMonitor::ControlRegisterWrite(3)),
        Err(VmiError::NotSupported { .. })
    ));
    assert!(matches!(
        drv.wait_for_events(T, &mut |_| VmiEventResponse::default()),
        Err(VmiError::InvalidArgument(_))
    ));
}

#[test]
fn memory_bounds_and_missing_frames() {
    let (_xen, _d, drv) = hvm();
    let mut b = [0u8; 16];
    assert!(matches!(
        drv.read_page(Gfn(0), 4090, &mut b),
        Err(VmiError::InvalidArgument(_))
    ));
    assert!(matches!(
        drv.read_page(Gfn(64), 0, &mut b),
        Err(VmiError::PageUnavailable { gfn: Gfn(64), .. })
    ));
    assert!(matches!(
        drv.write_page(Gfn(1 << 40), 0, &b),
        Err(VmiError::PageUnavailable { .. })
    ));
    assert_eq!(drv.physical_ranges().unwrap(), vec![Pa(0)..Pa(64 * 4096)]);
}

#[test]
fn batched_frame_reads_match_single_reads_and_flag_missing_frames() {
    let (xen, d, drv) = hvm();
    xen.write_memory(d, 62 * 4096 + 5, b"near the end");
    xen.write_memory(d, 63 * 4096, b"last");
    // frames 62..66: 62 and 63 exist, 64.. are beyond the domain
    let mut buf = vec![0xaau8; 4 * 4096];
    let ok = drv.read_frames(Gfn(62), &mut buf).expect("batch");
    assert_eq!(ok, vec![true, true, false, false]);
    assert_eq!(&buf[5..17], b"near the end");
    assert_eq!(&buf[4096..4100], b"last");
    assert!(buf[2 * 4096..].iter().all(|b| *b == 0));
    let mut one = vec![0u8; 4096];
    drv.read_page(Gfn(62), 0, &mut one).expect("single");
    assert_eq!(one, buf[..4096]);
    // not whole pages, or too many at once
    assert!(matches!(
        drv.read_frames(Gfn(0), &mut [0u8; 100]),
        Err(VmiError::InvalidArgument(_))
    ));
    let mut big = vec![0u8; (XenDriver::<FakeXen>::MAX_BATCH_FRAMES + 1) * 4096];
    assert!(matches!(
        drv.read_frames(Gfn(0), &mut big),
        Err(VmiError::InvalidArgument(_))
    ));
    // a frame number that overflows is not read
    let mut two = vec![0u8; 2 * 4096];
    assert_eq!(
        drv.read_frames(Gfn(u64::MAX), &mut two).unwrap(),
        vec![false, false]
    );
}

#[test]
fn resume_without_pause_is_refused() {
    let (xen, d, drv) = hvm();
    assert!(drv.resume().is_err());
    drv.pause().unwrap();
    assert_eq!(drv.state().unwrap(), vmi_core::VmState::Paused);
    drv.resume().unwrap();
    assert_eq!(xen.pause_count(d), 0);
    assert!(matches!(
        XenDriver::new(xen, 999),
        Err(VmiError::NotFound { .. })
    ));
}

/// Every library call fails once, at the point the driver makes it: the driver returns
/// an error (never panics or hangs) and still leaves the guest as found.
#[test]
fn errors_from_every_call() {
    let mut pv_calls = 0;
    for &call in calls::ALL {
        if matches!(call, "xc_vcpu_getcontext" | "xc_vcpu_setcontext") {
            // PV-only: exercised on a PV domain
            let xen = FakeXen::new();
            let d = xen.add_pv_domain(64);
            let drv = XenDriver::new(xen.clone(), d).unwrap();
            xen.fail(call, 22);
            let mut w = Registers::default();
            w.rax = 1;
            assert!(drv.set_registers(VcpuId(0), &w).is_err());
            pv_calls += 1;
            continue;
        }
        for errno in [1, 22, 95] {
            let xen = FakeXen::new();
            let d = xen.add_hvm_domain_with_vcpus(64, 1);
            xen.write_memory(d, 0x1000, &[0x90]);
            xen.fail(call, errno);
            let Ok(drv) = XenDriver::new(xen.clone(), d) else {
                assert!(matches!(
                    call,
                    "xc_domain_getinfolist" | "xc_domain_maximum_gpfn"
                ));
                continue;
            };
            let mut results: Vec<Result<(), VmiError>> = vec![
                drv.pause(),
                drv.resume(),
                drv.registers(VcpuId(0)).map(|_| ()),
                drv.set_registers(VcpuId(0), &Registers::default()),
                drv.read_page(Gfn(1), 0, &mut [0u8; 1]),
                drv.write_page(Gfn(1), 0, &[0x90]),
                drv.monitor_enable(EventMonitor::ControlRegisterWrite(3)),
                drv.monitor_enable(EventMonitor::Breakpoint {
                    address: BreakpointAddress::Physical(Pa(0x1000)),
                    kind: BreakpointKind::Software,
                }),
                drv.monitor_enable(EventMonitor::PageAccess {
                    gfn: Gfn(2),
                    access: MemoryAccess::Read,
                }),
                drv.altp2m_create_view(XenMemAccess::RWX).map(|_| ()),
            ];
            let _ = xen.push_request(d, &cr3_request(0, 1, 2));
            results.push(
                drv.wait_for_events(Duration::from_millis(5), &mut |_| {
                    VmiEventResponse::default()
                })
                .map(|_| ()),
            );
            results.push(drv.state().map(|_| ()));
            let failed = results.iter().filter(|r| r.is_err()).count();
            let close = drv.close();
            let made = xen.calls().contains(&call);
            assert!(
                !made || failed > 0 || close.is_err() || call == "xenevtchn_pending",
                "{call}: a failing call went unnoticed"
            );
            xen.heal(call);
            // whatever failed, nothing of ours is left once the calls work again
            if let Ok(drv) = XenDriver::new(xen.clone(), d) {
                drv.close().unwrap();
            }
            assert_eq!(
                xen.read_memory(d, 0x1000, 1),
                [0x90],
                "{call}/{errno}: int3 left behind"
            );
            if !matches!(call, "xc_domain_unpause") {
                assert_eq!(xen.pause_count(d), 0, "{call}/{errno}: left paused");
            }
        }
    }
    assert_eq!(pv_calls, 2);
}
