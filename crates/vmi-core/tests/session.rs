//! Sessions, contexts and the event loop on the mock driver.

use std::sync::atomic::AtomicBool;

use vmi_arch_amd64::{Amd64, Cr3, EventReason, Registers};
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, OsProcess, Pa, Va, VcpuId, VmState,
    VmiContext, VmiCore, VmiCoreConfig, VmiError, VmiEvent, VmiEventResponse, VmiHandler, VmiOs,
    VmiRead, VmiSession,
};
use vmi_driver_mock::{MockCall, MockDriver, PageSize, PageTableBuilder};

const ROOT: Pa = Pa(0x10_0000);
const KVA: Va = Va(0xffff_ffff_8100_0000);

/// A toy OS whose "current process" is named by the u64 at KVA.
struct ToyOs;

impl<D: VmiRead<Architecture = Amd64>> VmiOs<D> for ToyOs {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn kernel_image_base(&self, _: &VmiCore<D>) -> Result<Va, VmiError> {
        Ok(KVA)
    }
    fn kernel_information_string(&self, _: &VmiCore<D>) -> Result<String, VmiError> {
        Ok("toy 1.0".into())
    }
    fn processes(&self, _: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> {
        Ok(vec![])
    }
    fn current_process(&self, core: &VmiCore<D>, regs: &Registers) -> Result<OsProcess, VmiError> {
        let pid = core.read_u64((KVA, regs.cr3.root()))?;
        Ok(OsProcess {
            pid,
            ppid: 0,
            name: format!("p{pid}"),
            object: KVA,
            translation_root: Some(regs.cr3.root()),
            is_kernel: false,
            ..OsProcess::default()
        })
    }
}

fn target() -> MockDriver {
    let driver = MockDriver::new(1 << 24).with_vcpus(2);
    let mut b = PageTableBuilder::new(&driver, ROOT, Pa(0x20_0000));
    b.map(KVA, Pa(0x5000), PageSize::Size4K);
    driver.write_u64(Pa(0x5000), 42);
    driver
}

fn regs() -> Registers {
    Registers {
        cr3: Cr3(ROOT.0),
        rip: KVA.0,
        ..Registers::default()
    }
}

/// Needs a `&VmiCore`: a `&VmiContext` and a `&VmiSession` coerce to it by `Deref`.
fn first_byte<D: VmiRead>(core: &VmiCore<D>) -> u8 {
    core.read_u8(Pa(0x5000)).unwrap()
}

struct Counter {
    seen: Vec<(VcpuId, u64, String)>,
    want: usize,
}

impl VmiHandler<MockDriver, ToyOs> for Counter {
    type Output = usize;

    fn handle_event(&mut self, ctx: VmiContext<'_, MockDriver, ToyOs>) -> VmiEventResponse<Amd64> {
        // No CR3 anywhere: the context supplies the event's address space.
        let value = ctx.read_u64(KVA).unwrap();
        let process = ctx.os().current_process().unwrap();
        assert_eq!(first_byte(&ctx), 42);
        self.seen.push((ctx.vcpu(), value, process.name));
        let mut regs = ctx.registers().clone();
        regs.rax = 7;
        VmiEventResponse::single_step().and_set_registers(regs)
    }

    fn check_completion(&self) -> Option<usize> {
        (self.seen.len() >= self.want).then_some(self.seen.len())
    }
}

#[test]
fn event_loop_gives_handlers_a_context_without_cr3() {
    let core = VmiCore::new(target()).unwrap();
    let os = ToyOs;
    let session = VmiSession::new(&core, &os);
    assert_eq!(first_byte(&session), 42);
    assert_eq!(session.os().kernel_information_string().unwrap(), "toy 1.0");
    assert!(matches!(
        session.os().current_process(),
        Err(VmiError::NoRegisters(_))
    ));
    assert!(matches!(
        session.os().threads(1),
        Err(VmiError::NotSupported { .. })
    ));

    let bp = EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(KVA),
        kind: BreakpointKind::Hardware,
    };
    core.monitor_enable(bp).unwrap();
    for vcpu in [0, 1] {
        core.driver().push_event(VmiEvent {
            vcpu: VcpuId(vcpu),
            reason: EventReason::Breakpoint {
                va: KVA,
                pa: None,
                kind: BreakpointKind::Hardware,
            },
            registers: regs(),
        });
    }
    let mut handler = Counter {
        seen: vec![],
        want: 2,
    };
    assert_eq!(session.handle(&mut handler).unwrap(), 2);
    assert_eq!(handler.seen[1], (VcpuId(1), 42, "p42".to_string()));
    // The responses reached the driver: registers set, single-step asked.
    assert_eq!(core.driver().vcpu(VcpuId(1)).unwrap().rax, 7);
    assert!(
        core.driver()
            .responses()
            .iter()
            .all(|r| r.action == vmi_core::EventAction::SingleStep)
    );
    core.monitor_disable(bp).unwrap();
    assert!(core.driver().monitors().is_empty());
}

#[test]
fn stop_flag_ends_the_loop() {
    let core = VmiCore::new(target()).unwrap();
    let session = VmiSession::new(&core, &ToyOs);
    let stop = AtomicBool::new(true);
    let mut handler = Counter {
        seen: vec![],
        want: 1,
    };
    assert_eq!(session.handle_until(&mut handler, &stop).unwrap(), None);
}

#[test]
fn pause_guard_leaves_the_vm_as_found() {
    let core = VmiCore::new(target()).unwrap();
    {
        let guard = core.pause_guard().unwrap();
        assert!(guard.will_resume());
        assert_eq!(core.vm_state().unwrap(), VmState::Paused);
    }
    assert_eq!(core.vm_state().unwrap(), VmState::Running);

    // Already paused: the guard does not resume it.
    core.pause().unwrap();
    {
        let guard = core.pause_guard().unwrap();
        assert!(!guard.will_resume());
    }
    assert_eq!(core.vm_state().unwrap(), VmState::Paused);
    let resumes = core
        .driver()
        .calls()
        .iter()
        .filter(|c| **c == MockCall::Resume)
        .count();
    assert_eq!(resumes, 1);
}

#[test]
fn reads_cross_pages_and_report_partial_access() {
    let driver = target();
    driver.write_physical(Pa(0x6ffc), &[1, 2, 3, 4, 5, 6, 7, 8]);
    driver.make_hole(vmi_core::Gfn(0x8));
    let core = VmiCore::new(driver).unwrap();
    assert_eq!(
        core.read_u64(Pa(0x6ffc)).unwrap(),
        u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8])
    );
    let mut buf = [0u8; 16];
    let err = core.read(Pa(0x7ff8), &mut buf).unwrap_err();
    match err {
        VmiError::PartialAccess {
            expected,
            completed,
            ref source,
            ..
        } => {
            assert_eq!((expected, completed), (16, 8));
            assert!(source.is_memory_unavailable());
        }
        other => panic!("expected a partial access, got {other:?}"),
    }
    assert_eq!(core.read_available(Pa(0x7ff8), &mut buf), 8);
    // Inside one page (the single-chunk fast path): the page's own error, never a partial
    // access; a read that ends exactly at the page's end; an empty read touches nothing.
    let err = core.read_u64(Pa(0x8010)).unwrap_err();
    assert!(err.is_memory_unavailable() && !matches!(err, VmiError::PartialAccess { .. }));
    let err = core.read(Pa(0x8ffc), &mut [0u8; 8]).unwrap_err();
    assert!(err.is_memory_unavailable() && !matches!(err, VmiError::PartialAccess { .. }));
    let mut end = [0u8; 8];
    core.read(Pa(0x6ff8), &mut end).unwrap();
    assert_eq!(end[4..], [1, 2, 3, 4]);
    core.read(Pa(0x8010), &mut []).unwrap();
    // A string that ends before the hole reads fine.
    core.driver().write_physical(Pa(0x7ffc), b"abc\0");
    assert_eq!(core.read_string(Pa(0x7ffc), 64).unwrap(), "abc");
    // UTF-16.
    core.driver()
        .write_physical(Pa(0x6000), &[b'h', 0, b'i', 0]);
    assert_eq!(core.read_string_utf16(Pa(0x6000), 4, 64).unwrap(), "hi");
}

#[test]
fn page_cache_on_a_slow_target_counts_and_invalidates_on_write() {
    let core = VmiCore::with_config(
        target().live(),
        VmiCoreConfig {
            statistics: true,
            ..VmiCoreConfig::default()
        },
    )
    .unwrap();
    assert_eq!(core.read_u64(Pa(0x5000)).unwrap(), 42);
    assert_eq!(core.read_u64(Pa(0x5000)).unwrap(), 42);
    let s = core.page_cache_stats();
    assert_eq!((s.hits, s.misses), (1, 1));
    core.write_u64(Pa(0x5000), 43).unwrap();
    assert_eq!(core.read_u64(Pa(0x5000)).unwrap(), 43);
}

#[test]
fn the_core_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VmiCore<MockDriver>>();
    let core = VmiCore::new(target()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    assert_eq!(core.read_u64((KVA, ROOT)).unwrap(), 42);
                }
            });
        }
    });
}
