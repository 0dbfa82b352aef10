//! Against the real Linux test guest (skipped visibly without QEMU; failing when
//! `VMI_REQUIRE_GUEST=1`): memory, layout, access paths, registers, control, events,
//! clean-up after `SIGKILL`.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vmi_arch_amd64::EventReason;
use vmi_arch_amd64::Registers;
use vmi_core::{
    AccessContext, BreakpointAddress, BreakpointKind, EventMonitor, MemoryAccess, OsProcess, Pa,
    Registers as _, Va, VcpuId, VmState, VmiContext, VmiCore, VmiDriver, VmiError, VmiEventControl,
    VmiEventResponse, VmiHandler, VmiOs, VmiQueryRegisters, VmiRead, VmiSession, VmiVmControl,
};
use vmi_core::{VmiSetRegisters, VmiWrite};
use vmi_driver_qemu::{AccessPath, AttachOptions, GdbMode, QemuDriver, QemuError};
use vmi_test_guest::{GuestConfig, TestGuest, gpa_to_file_offset};

fn status(g: &TestGuest) -> String {
    g.qmp(json!({"execute": "query-status"}))
        .expect("query-status")["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

fn ram_file_bytes(g: &TestGuest, gpa: u64, len: usize) -> Vec<u8> {
    let off = gpa_to_file_offset(g.env().mem_size, gpa).expect("gpa is RAM");
    let mut f = std::fs::File::open(g.mem_file()).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

/// The refusal of a write on a read-only attach: typed, and it says how to allow writes.
fn assert_read_only(e: &VmiError) {
    let VmiError::Driver {
        source: Some(src), ..
    } = e
    else {
        panic!("not a driver error: {e}");
    };
    assert!(
        matches!(
            src.downcast_ref::<QemuError>(),
            Some(QemuError::ReadOnly { .. })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("AttachOptions::writable(true)"),
        "{e}"
    );
}

/// This process holds QEMU's memory read-only: the RAM file is mapped `r--s`, and a
/// `/proc/<pid>/mem` descriptor is open `O_RDONLY`.
fn assert_read_only_handles(g: &TestGuest, path: AccessPath) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let ram = g.mem_file().to_str().unwrap();
    let perms: Vec<&str> = maps
        .lines()
        .filter(|l| l.ends_with(ram))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    if path == AccessPath::Mmap {
        assert!(!perms.is_empty(), "RAM file not mapped");
    }
    assert!(perms.iter().all(|p| !p.contains('w')), "{perms:?}");
    let mut mem_fds = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if t == ram || (t.starts_with("/proc/") && t.ends_with("/mem")) {
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
                .unwrap_or(0);
            assert_eq!(flags & 3, 0, "{t} open with flags {flags:o}");
            mem_fds += 1;
        }
    }
    if path == AccessPath::ProcessMemory {
        assert!(mem_fds > 0, "no /proc/<pid>/mem descriptor");
    }
}

fn ksym(g: &TestGuest, name: &str) -> u64 {
    g.truth()
        .ksym(name)
        .unwrap_or_else(|| panic!("{name} in truth"))
}

/// An OS layer that knows nothing (the driver test needs only a `VmiContext`).
struct NoOs;
impl<D: VmiRead> VmiOs<D> for NoOs {
    fn name(&self) -> &'static str {
        "none"
    }
    fn kernel_image_base(&self, _: &VmiCore<D>) -> Result<Va, VmiError> {
        Err(VmiError::not_supported("kernel_image_base", "NoOs"))
    }
    fn kernel_information_string(&self, _: &VmiCore<D>) -> Result<String, VmiError> {
        Err(VmiError::not_supported("kernel_information_string", "NoOs"))
    }
    fn processes(&self, _: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> {
        Err(VmiError::not_supported("processes", "NoOs"))
    }
}

#[test]
fn memory_layout_registers_control() {
    let Some(g) = TestGuest::boot_or_skip(GuestConfig::default().smp(2).mem_mb(3072)) else {
        return;
    };
    // Missing socket: a clear error.
    let e = QemuDriver::attach(g.dir().join("nope.sock")).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");

    // Writable: this test also sets registers.
    let d = QemuDriver::attach_with(g.qmp_socket(), AttachOptions::default().writable(true))
        .expect("attach");
    assert_eq!(d.access_path(), AccessPath::Mmap);
    let info = d.info().unwrap();
    assert!(info.live && !info.cache_pages);
    assert_eq!(info.vcpus, 2);
    assert_eq!(d.state().unwrap(), VmState::Running);

    // Busy: QMP serves one client per socket.
    let t0 = Instant::now();
    let e = QemuDriver::attach(g.qmp_socket()).unwrap_err();
    assert!(e.to_string().contains("busy"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));

    // The 3 GiB split: GPA 4 GiB+ is backend offset 2 GiB+.
    let ranges = d.physical_ranges().unwrap();
    assert_eq!(ranges[0], Pa(0)..Pa(0x8000_0000));
    assert_eq!(ranges[1], Pa(1 << 32)..Pa((1 << 32) + (1 << 30)));
    let hi = (1u64 << 32) + 0x1234_5000;
    let mut a = vec![0u8; 4096];
    d.read_page(vmi_core::Gfn(hi >> 12), 0, &mut a).unwrap();
    assert_eq!(a, ram_file_bytes(&g, hi, 4096));
    assert!(d.read_page(vmi_core::Gfn(0xb0000), 0, &mut a).is_err());

    // Registers through the gdbstub vs `info registers` (aux socket), VM paused.
    let core = VmiCore::new(d).unwrap();
    {
        let _pause = core.pause_guard().unwrap();
        assert_ne!(status(&g), "running");
        for v in 0..2u16 {
            let r = core.registers(VcpuId(v)).unwrap();
            let text = g
                .qmp(json!({"execute": "human-monitor-command",
                    "arguments": {"command-line": "info registers", "cpu-index": v}}))
                .unwrap();
            let text = text.as_str().unwrap();
            let field = |k: &str| -> u64 {
                let p = text.find(&format!("{k}=")).unwrap() + k.len() + 1;
                u64::from_str_radix(text[p..p + 16].split_whitespace().next().unwrap(), 16).unwrap()
            };
            assert_eq!(r.rip, field("RIP"), "vCPU {v} rip");
            assert_eq!(r.rsp, field("RSP"), "vCPU {v} rsp");
            assert_eq!(r.cr3.0, field("CR3"), "vCPU {v} cr3");
            assert_eq!(r.efer, field("EFER"), "vCPU {v} efer");
            assert_eq!(r.idtr.base, 0xfffffe0000000000);
            assert!(r.long_mode());
            assert_ne!(r.kernel_gs(), 0, "per-CPU GS base");
            let m = core.driver().monitor_registers(VcpuId(v)).unwrap();
            assert_eq!((m.rip, m.cr3, m.rsp), (r.rip, r.cr3, r.rsp));
        }
    }
    assert_eq!(core.vm_state().unwrap(), VmState::Running);
    assert_eq!(status(&g), "running");
    // A resume returns once QEMU runs the VM, though the gdbstub answers a continue only
    // at the next stop: another QMP client (here the harness's own socket) sees it
    // running right after, every time.
    for i in 0..50 {
        drop(core.pause_guard().unwrap());
        assert_eq!(status(&g), "running", "right after resume {i}");
    }

    // Writing registers (gdbstub `P`), restored before the guest runs again.
    {
        let _pause = core.pause_guard().unwrap();
        let orig = core.registers(VcpuId(1)).unwrap();
        let mut changed = orig.clone();
        changed.r15 ^= 0x5a5a;
        changed.rax ^= 1;
        core.set_registers(VcpuId(1), &changed).unwrap();
        let back = core.registers(VcpuId(1)).unwrap();
        assert_eq!((back.r15, back.rax), (changed.r15, changed.rax));
        core.set_registers(VcpuId(1), &orig).unwrap();
        assert_eq!(core.registers(VcpuId(1)).unwrap(), orig);
    }
    assert_eq!(status(&g), "running");

    // The kernel banner at the physical address of `linux_banner` equals the RAM file.
    let regs = core.registers(VcpuId(0)).unwrap();
    let banner_va = Va(ksym(&g, "linux_banner"));
    let pa = core
        .translate_address(regs.address_context(banner_va))
        .unwrap();
    let s = core.read_string(AccessContext::direct(pa), 200).unwrap();
    assert!(s.starts_with("Linux version 6"), "{s}");
    assert_eq!(s.as_bytes(), &ram_file_bytes(&g, pa.0, s.len())[..]);

    // All three access paths give identical bytes (low, kernel, above 4 GiB).
    let mut reference = Vec::new();
    let spots = [pa.0 & !0xfff, 0x9f000, hi];
    for &gpa in &spots {
        let mut b = vec![0u8; 4096];
        core.driver()
            .read_page(vmi_core::Gfn(gpa >> 12), 0, &mut b)
            .unwrap();
        reference.push(b);
    }
    drop(core); // releases QMP socket and gdbstub
    assert_eq!(status(&g), "running");
    let _pause = g.pause();
    let banner_orig = ram_file_bytes(&g, pa.0, 16);
    for path in [
        AccessPath::Mmap,
        AccessPath::ProcessMemory,
        AccessPath::MonitorXp,
    ] {
        // Read-only by default: QEMU's memory is opened read-only, writes are refused
        // with the typed error that says how to allow them.
        let d = QemuDriver::attach_with(g.qmp_socket(), AttachOptions::default().access_path(path))
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(d.access_path(), path);
        assert_read_only_handles(&g, path);
        let e = d
            .write_page(vmi_core::Gfn(pa.0 >> 12), (pa.0 & 0xfff) as usize, b"X")
            .unwrap_err();
        assert_read_only(&e);
        let e = d
            .set_registers(VcpuId(0), &Registers::default())
            .unwrap_err();
        assert_read_only(&e);
        assert_eq!(ram_file_bytes(&g, pa.0, 16), banner_orig);
        for (i, &gpa) in spots.iter().enumerate() {
            let mut b = vec![0u8; 4096];
            d.read_page(vmi_core::Gfn(gpa >> 12), 0, &mut b).unwrap();
            assert!(b == reference[i] || gpa == 0x9f000, "{path:?} at {gpa:#x}");
            // The kernel's read-only banner page never changes.
            if i == 0 {
                assert_eq!(b, reference[0], "{path:?}");
            }
        }
        // Batched (on the process-memory path one process_vm_readv pass): the same
        // bytes, and a piece beyond RAM fails alone, as `read_page` fails it.
        let mut bufs: Vec<Vec<u8>> = spots.iter().map(|_| vec![0u8; 4096]).collect();
        let mut beyond = [0u8; 8];
        let mut reads: Vec<vmi_core::PageRead<'_>> = spots
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&gpa, buf)| vmi_core::PageRead {
                gfn: vmi_core::Gfn(gpa >> 12),
                offset: 0,
                buf,
            })
            .collect();
        reads.insert(
            1,
            vmi_core::PageRead {
                gfn: vmi_core::Gfn(1 << 30),
                offset: 8,
                buf: &mut beyond,
            },
        );
        let mut results = d.read_pages(&mut reads);
        drop(reads);
        assert!(
            matches!(results.remove(1), Err(VmiError::PageUnavailable { .. })),
            "{path:?}"
        );
        for (i, &gpa) in spots.iter().enumerate() {
            results[i]
                .as_ref()
                .unwrap_or_else(|e| panic!("{path:?} batch at {gpa:#x}: {e}"));
            assert!(
                bufs[i] == reference[i] || gpa == 0x9f000,
                "{path:?} batch at {gpa:#x}"
            );
        }
        assert_eq!(d.info().unwrap().cache_pages, path != AccessPath::Mmap);
        drop(d);
        assert_eq!(status(&g), "paused", "{path:?}: left as found");

        // Writable on request: the bytes land in guest RAM (and are put back).
        let w = QemuDriver::attach_with(
            g.qmp_socket(),
            AttachOptions::default().access_path(path).writable(true),
        );
        if path == AccessPath::MonitorXp {
            let e = w.unwrap_err().to_string();
            assert!(e.contains("writable"), "{e}");
            continue;
        }
        let w = w.unwrap_or_else(|e| panic!("{path:?} writable: {e}"));
        let mut changed = banner_orig.clone();
        changed[..5].copy_from_slice(b"XINUL");
        let (gfn, off) = (vmi_core::Gfn(pa.0 >> 12), (pa.0 & 0xfff) as usize);
        w.write_page(gfn, off, &changed).unwrap();
        assert_eq!(ram_file_bytes(&g, pa.0, 16), changed, "{path:?}");
        w.write_page(gfn, off, &banner_orig).unwrap();
        assert_eq!(ram_file_bytes(&g, pa.0, 16), banner_orig, "{path:?}");
        drop(w);
    }
    g.resume().unwrap();

    // Monitor-only mode (no gdbstub): registers still come.
    let d = QemuDriver::attach_with(
        g.qmp_socket(),
        AttachOptions::default().gdb(GdbMode::Disabled),
    )
    .unwrap();
    let r = d.registers(VcpuId(1)).unwrap();
    assert!(r.long_mode());
    assert!(matches!(
        d.monitor_enable(EventMonitor::Breakpoint {
            address: BreakpointAddress::Virtual(banner_va),
            kind: BreakpointKind::Hardware
        }),
        Err(VmiError::Driver { .. })
    ));
    drop(d);

    // QEMU gone mid-session: an error within a second, never a hang.
    let d = QemuDriver::attach(g.qmp_socket()).unwrap();
    g.qmp(json!({"execute": "quit"})).ok();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    assert!(d.state().is_err());
    assert!(d.registers(VcpuId(0)).is_err());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

/// The handler of the breakpoint test: reads `comm` of the current task, single-steps
/// once, continues; records what it saw.
struct Nanosleep {
    bp: Va,
    current_task: u64,
    comm_offset: u64,
    comms: Vec<String>,
    vcpus: std::collections::BTreeSet<u16>,
    stepped: usize,
    state: u8,
}

impl VmiHandler<QemuDriver, NoOs> for Nanosleep {
    type Output = ();

    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, QemuDriver, NoOs>,
    ) -> VmiEventResponse<vmi_arch_amd64::Amd64> {
        match &ctx.event().reason {
            EventReason::Breakpoint { va, kind, .. } => {
                assert_eq!(*va, self.bp);
                assert_eq!(*kind, BreakpointKind::Hardware);
                assert_eq!(ctx.registers().rip, self.bp.0);
                self.vcpus.insert(ctx.vcpu().0);
                let gs = ctx.registers().kernel_gs();
                let task = ctx.read_va(Va(gs + self.current_task)).unwrap();
                let comm = ctx.read_string(Va(task.0 + self.comm_offset), 16).unwrap();
                self.comms.push(comm);
                if self.state == 0 {
                    self.state = 1;
                    return VmiEventResponse::single_step();
                }
                VmiEventResponse::default()
            }
            EventReason::SingleStep => {
                assert_ne!(ctx.registers().rip, self.bp.0, "the step moved on");
                self.stepped += 1;
                VmiEventResponse::default()
            }
            other => panic!("unexpected event {other:?}"),
        }
    }

    fn check_completion(&self) -> Option<()> {
        (self.stepped >= 1 && self.vcpus.len() == 2 && self.comms.len() >= 4).then_some(())
    }
}

#[test]
fn breakpoints_single_step_watchpoints_two_vcpus() {
    let Some(g) = TestGuest::boot_or_skip(GuestConfig::default().smp(2).mem_mb(512)) else {
        return;
    };
    let profile = vmi_profile::linux::profile_from_kernel_image(g.vmlinux()).expect("BTF");
    let comm_offset = profile.offset_of("task_struct", "comm").unwrap();
    let bp = Va(ksym(&g, "hrtimer_nanosleep"));
    let bp_pa_bytes;
    let core = VmiCore::new(QemuDriver::attach(g.qmp_socket()).unwrap()).unwrap();
    {
        let regs = core.registers(VcpuId(0)).unwrap();
        let pa = core.translate_address(regs.address_context(bp)).unwrap();
        bp_pa_bytes = (pa, core.read_vec(AccessContext::direct(pa), 16).unwrap());
    }
    core.monitor_enable(EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(bp),
        kind: BreakpointKind::Hardware,
    })
    .unwrap();
    // Physical breakpoints are a typed NotSupported.
    assert!(matches!(
        core.monitor_enable(EventMonitor::Breakpoint {
            address: BreakpointAddress::Physical(bp_pa_bytes.0),
            kind: BreakpointKind::Software,
        }),
        Err(VmiError::NotSupported { .. })
    ));
    let os = NoOs;
    let session = VmiSession::new(&core, &os);
    let mut h = Nanosleep {
        bp,
        current_task: ksym(&g, "current_task"),
        comm_offset,
        comms: vec![],
        vcpus: Default::default(),
        stepped: 0,
        state: 0,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    let mut done = false;
    while t0.elapsed() < Duration::from_secs(60) {
        if session.handle_until(&mut h, &stop).unwrap().is_some() {
            done = true;
            break;
        }
    }
    // `handle_until` returns only on completion or stop; the loop guards the time.
    assert!(
        done,
        "breakpoint test did not complete: {:?} {:?}",
        h.vcpus, h.comms
    );
    eprintln!("hits on vCPUs {:?}, comms {:?}", h.vcpus, h.comms);
    // The tasks of the truth, and `sleep`: vmi_loop's `sleep 1` children come and go
    // (never in the truth), and under load they may be the only sleepers caught.
    let mut known: Vec<&str> = g.truth().tasks.iter().map(|t| t.comm.as_str()).collect();
    known.push("sleep");
    assert!(h.comms.iter().all(|c| !c.is_empty()));
    assert!(
        h.comms.iter().any(|c| known.contains(&c.as_str())),
        "{:?} vs {known:?}",
        h.comms
    );
    core.monitor_disable(EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(bp),
        kind: BreakpointKind::Hardware,
    })
    .unwrap();

    // A software breakpoint under TCG does not modify guest RAM.
    if !core.driver().is_kvm() {
        core.monitor_enable(EventMonitor::Breakpoint {
            address: BreakpointAddress::Virtual(bp),
            kind: BreakpointKind::Software,
        })
        .unwrap();
        assert_eq!(
            ram_file_bytes(&g, bp_pa_bytes.0.0, 16),
            bp_pa_bytes.1,
            "TCG software breakpoints leave RAM alone"
        );
        let mut hit = 0;
        let t0 = Instant::now();
        while hit == 0 && t0.elapsed() < Duration::from_secs(20) {
            hit += core
                .driver()
                .wait_for_events(Duration::from_millis(200), &mut |e| {
                    assert!(matches!(
                        e.reason,
                        EventReason::Breakpoint {
                            kind: BreakpointKind::Software,
                            ..
                        }
                    ));
                    VmiEventResponse::default().and_remove_monitor()
                })
                .unwrap();
        }
        assert_eq!(hit, 1);
    }

    // A write watchpoint on jiffies fires, as a memory-access event.
    let jiffies = Va(ksym(&g, "jiffies"));
    core.monitor_enable(EventMonitor::Watchpoint {
        address: BreakpointAddress::Virtual(jiffies),
        len: 8,
        access: MemoryAccess::Write,
    })
    .unwrap();
    let mut seen = None;
    let t0 = Instant::now();
    while seen.is_none() && t0.elapsed() < Duration::from_secs(20) {
        core.driver()
            .wait_for_events(Duration::from_millis(200), &mut |e| {
                seen = Some(e.reason.clone());
                VmiEventResponse::default().and_remove_monitor()
            })
            .unwrap();
    }
    match seen {
        Some(EventReason::MemoryAccess { va, access, .. }) => {
            assert_eq!(va, Some(jiffies));
            assert_eq!(access, MemoryAccess::Write);
        }
        other => panic!("watchpoint: {other:?}"),
    }

    // Nothing monitored: wait returns on time with 0 while the VM runs.
    let t0 = Instant::now();
    let n = core
        .driver()
        .wait_for_events(Duration::from_millis(300), &mut |_| {
            VmiEventResponse::default()
        })
        .unwrap();
    assert_eq!(n, 0);
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(status(&g), "running");
    let _ = session;
    drop(core);
    assert_eq!(status(&g), "running");
    assert_eq!(ram_file_bytes(&g, bp_pa_bytes.0.0, 16), bp_pa_bytes.1);
    kvm_breakpoint_path(&g, bp, bp_pa_bytes);
}

/// The KVM code path of software breakpoints, run under TCG: QEMU leaves RAM alone here,
/// so the test writes the `int3` that QEMU would write under KVM into the RAM file
/// itself (with the VM paused: the vCPUs never run it), and checks that reads through
/// the driver see the byte it replaced, that a write through the driver keeps the
/// `int3` and lands once the breakpoint goes, and that hits are stepped over as under
/// KVM (breakpoint removed for the step, inserted again).
fn kvm_breakpoint_path(g: &TestGuest, bp: Va, (pa, original): (Pa, Vec<u8>)) {
    let opts = AttachOptions::default()
        .writable(true)
        .kvm_breakpoints(true);
    let core = VmiCore::new(QemuDriver::attach_with(g.qmp_socket(), opts).unwrap()).unwrap();
    let ctx = core.registers(VcpuId(0)).unwrap().address_context(bp);
    let sw = EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(bp),
        kind: BreakpointKind::Software,
    };
    let read = |core: &VmiCore<QemuDriver>| core.read_vec(AccessContext::from(ctx), 16).unwrap();
    core.pause().unwrap();
    core.monitor_enable(sw).unwrap();
    write_ram_file(g, pa.0, &[0xcc]);
    assert_eq!(ram_file_bytes(g, pa.0, 1), [0xcc]);
    assert_eq!(
        read(&core),
        original,
        "the int3 is hidden from virtual reads"
    );
    assert_eq!(
        core.read_vec(AccessContext::direct(pa), 16).unwrap(),
        original,
        "and from physical ones"
    );
    // A write over the int3 keeps it in RAM; reads show what was written.
    let written = original[0] ^ 0x5a;
    core.write(AccessContext::direct(pa), &[written]).unwrap();
    assert_eq!(ram_file_bytes(g, pa.0, 1), [0xcc]);
    assert_eq!(read(&core)[0], written);
    // Removed: QEMU (under KVM) puts its saved byte back, then the driver the written one.
    core.monitor_disable(sw).unwrap();
    assert_eq!(ram_file_bytes(g, pa.0, 1), [written]);
    write_ram_file(g, pa.0, &original[..1]);
    assert_eq!(read(&core), original);
    core.resume().unwrap();

    // Hits, each stepped over with the breakpoint removed and inserted again.
    core.monitor_enable(sw).unwrap();
    let (mut hits, t0) = (0, Instant::now());
    while hits < 3 && t0.elapsed() < Duration::from_secs(30) {
        hits += core
            .driver()
            .wait_for_events(Duration::from_millis(200), &mut |e| {
                assert!(matches!(e.reason, EventReason::Breakpoint { va, .. } if va == bp));
                VmiEventResponse::default()
            })
            .unwrap();
    }
    assert!(hits >= 3, "{hits} hits");
    core.monitor_disable(sw).unwrap();
    drop(core);
    assert_eq!(status(g), "running");
    assert_eq!(ram_file_bytes(g, pa.0, 16), original);
}

/// Writes guest RAM through the RAM file, behind the driver's back (QEMU's part).
fn write_ram_file(g: &TestGuest, gpa: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let off = gpa_to_file_offset(g.env().mem_size, gpa).expect("gpa is RAM");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(g.mem_file())
        .unwrap();
    f.write_all_at(data, off).unwrap();
}

/// Child half of the kill test: attach, insert breakpoints, run the event loop; killed.
#[test]
fn kill_child_helper() {
    let Ok(qmp) = std::env::var("VMI_QEMU_KILL_CHILD_QMP") else {
        return; // only as the child of `killed_session_leaves_guest_recoverable`
    };
    let addrs: Vec<u64> = std::env::var("VMI_QEMU_KILL_CHILD_BPS")
        .unwrap()
        .split(',')
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .collect();
    // Without the guard process: what QEMU does on its own, and `recover`.
    let d = QemuDriver::attach_with(&qmp, AttachOptions::default().guard(false)).unwrap();
    for (i, a) in addrs.iter().enumerate() {
        d.monitor_enable(EventMonitor::Breakpoint {
            address: BreakpointAddress::Virtual(Va(*a)),
            kind: if i % 2 == 0 {
                BreakpointKind::Software
            } else {
                BreakpointKind::Hardware
            },
        })
        .unwrap();
    }
    println!("READY");
    loop {
        d.wait_for_events(Duration::from_millis(100), &mut |_| {
            VmiEventResponse::default()
        })
        .unwrap();
    }
}

#[test]
fn killed_session_leaves_guest_recoverable() {
    let Some(g) = TestGuest::boot_or_skip(GuestConfig::default().mem_mb(256)) else {
        return;
    };
    let names = ["hrtimer_nanosleep", "do_nanosleep"];
    let addrs: Vec<u64> = names.iter().map(|n| ksym(&g, n)).collect();
    // Original bytes at the breakpoints (physical, through a short-lived driver).
    let originals: Vec<(u64, Vec<u8>)> = {
        let core = VmiCore::new(
            QemuDriver::attach_with(
                g.qmp_socket(),
                AttachOptions::default().gdb(GdbMode::Disabled),
            )
            .unwrap(),
        )
        .unwrap();
        let regs = core.registers(VcpuId(0)).unwrap();
        addrs
            .iter()
            .map(|&a| {
                let pa = core.translate_address(regs.address_context(Va(a))).unwrap();
                (pa.0, core.read_vec(AccessContext::direct(pa), 16).unwrap())
            })
            .collect()
    };
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "kill_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VMI_QEMU_KILL_CHILD_QMP", g.qmp_socket())
        .env(
            "VMI_QEMU_KILL_CHILD_BPS",
            addrs
                .iter()
                .map(|a| format!("{a:x}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let t0 = Instant::now();
    while !line.contains("READY") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        assert!(t0.elapsed() < Duration::from_secs(30));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    // What QEMU does on its own: the breakpoints stay, the VM stops at the next hit
    // and waits for the dead client.
    std::thread::sleep(Duration::from_secs(1));
    let after_kill = status(&g);
    eprintln!("state after SIGKILL: {after_kill}");
    for (pa, bytes) in &originals {
        assert_eq!(
            &ram_file_bytes(&g, *pa, 16),
            bytes,
            "RAM at {pa:#x} after kill"
        );
    }
    // Recovery: a new attach (or QemuDriver::recover) detaches the stale client state.
    let state = QemuDriver::recover(g.qmp_socket()).unwrap();
    assert_eq!(state, VmState::Running);
    // The breakpoints are gone: the guest keeps running through nanosleep.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&g), "running");
    for (pa, bytes) in &originals {
        assert_eq!(&ram_file_bytes(&g, *pa, 16), bytes);
    }
    // And the QMP socket is free again.
    drop(QemuDriver::attach(g.qmp_socket()).unwrap());
    assert_eq!(status(&g), "running");
}
