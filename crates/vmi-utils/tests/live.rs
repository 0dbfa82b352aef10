//! The breakpoint manager, tracker and syscall tracer against the live test guest
//! (skipped visibly without QEMU; failing when `VMI_REQUIRE_GUEST=1`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmi_core::{Pa, Registers as _, Va, VmiCore, VmiEventResponse};
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};
use vmi_utils::bpm::{AddressSpace, BreakpointManager, BreakpointState};

fn status(g: &TestGuest) -> String {
    g.qmp(serde_json::json!({"execute": "query-status"}))
        .expect("query-status")["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tag {
    Nanosleep,
    Wait4,
    UserReturn,
}

/// Kernel breakpoints on two functions `vmi_loop` and its `sleep 1` reach every second,
/// then a user-space breakpoint, set from a handler, in `vmi_loop`'s own address space at
/// the address its `wait4` returns to: it fires in `vmi_loop` only (the `sleep` children
/// run the same busybox binary). When the manager goes, no breakpoint is left and the
/// guest runs.
#[test]
fn breakpoint_manager_on_the_live_guest() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    let loop_pid = guest.truth().process("vmi_loop").expect("vmi_loop").pid;
    let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    let kernel = AddressSpace::Kernel(os.kernel().kernel_root);
    let kpti = os.kernel().kpti == Some(true);
    let sym = |n: &str| os.symbol_address(n).unwrap_or_else(|| panic!("{n}"));
    let loop_root: Pa = os
        .find_process(&core, loop_pid)
        .unwrap()
        .user_root
        .expect("vmi_loop has an address space");
    {
        let bpm = BreakpointManager::new(&core).ignore_root_bits(if kpti { 0x1000 } else { 0 });
        let nanosleep = bpm
            .add(kernel, sym("hrtimer_nanosleep"), Tag::Nanosleep)
            .unwrap();
        let wait4 = bpm.add(kernel, sym("__x64_sys_wait4"), Tag::Wait4).unwrap();
        assert_eq!(bpm.state(nanosleep), Some(BreakpointState::Armed));
        assert_eq!(bpm.state(wait4), Some(BreakpointState::Armed));
        assert_eq!(bpm.driver_breakpoints(), 2);

        let stop = AtomicBool::new(false);
        let seen = RefCell::new(Vec::new());
        let user_bp = RefCell::new(None);
        let deadline = Instant::now() + Duration::from_secs(60);
        bpm.run_until(&stop, |event, hits| {
            assert!(
                Instant::now() < deadline,
                "no user hit within 60 s: {:?}",
                seen.borrow()
            );
            let task = os
                .current_task_from_registers(&core, &event.registers)
                .unwrap();
            for h in hits {
                seen.borrow_mut()
                    .push((h.tag.clone(), task.tgid, task.comm.clone()));
                match h.tag {
                    Tag::Wait4 if task.tgid == loop_pid && user_bp.borrow().is_none() => {
                        // Where vmi_loop's wait4 returns to in user space.
                        let frame = os.syscall_frame(&core, &task).unwrap();
                        let space = AddressSpace::Process(loop_root);
                        let id = bpm.add(space, Va(frame.ip), Tag::UserReturn).unwrap();
                        *user_bp.borrow_mut() = Some((id, frame.ip));
                    }
                    Tag::UserReturn => {
                        assert_eq!(task.tgid, loop_pid, "user hit in another process");
                        assert_eq!(
                            event.registers.instruction_pointer().0,
                            user_bp.borrow().unwrap().1
                        );
                    }
                    _ => {}
                }
            }
            let seen = seen.borrow();
            if seen.iter().any(|(t, _, _)| *t == Tag::UserReturn)
                && seen.iter().any(|(t, _, _)| *t == Tag::Nanosleep)
            {
                stop.store(true, Ordering::SeqCst);
            }
            VmiEventResponse::default()
        })
        .unwrap();
        let seen = seen.into_inner();
        assert!(
            seen.iter()
                .any(|(t, _, c)| *t == Tag::Nanosleep && c == "sleep"),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|(t, p, _)| *t == Tag::Wait4 && *p == loop_pid),
            "{seen:?}"
        );
        assert_eq!(bpm.driver_breakpoints(), 3);
        let stats = bpm.stats();
        eprintln!("manager: {stats:?}");
        assert!(stats.hits >= 3);
    }
    // The manager dropped: no breakpoint is left, the driver sees no event in 2.5 s
    // (vmi_loop runs `sleep 1` every second), the guest runs.
    let mut events = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        events += vmi_core::VmiEventControl::wait_for_events(
            core.driver(),
            Duration::from_millis(250),
            &mut |_| VmiEventResponse::default(),
        )
        .unwrap();
    }
    assert_eq!(events, 0, "a breakpoint was left behind");
    assert_eq!(status(&guest), "running");
    drop(core);
    assert_eq!(status(&guest), "running");
}

/// The tracker and the syscall tracer (with returns) on one guest: `vmi_loop`'s
/// `sleep 1` as fork → exec `[sleep, 1]` → exit 0, its `openat` of its counter file and
/// its child's `execve`, with what they returned.
fn tracker_and_syscalls(cfg: GuestConfig) {
    use vmi_utils::syscalls::{ArgValue, SyscallOptions, SyscallTracer};
    use vmi_utils::tracker::{ProcessEventKind, ProcessTracker};

    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let loop_pid = guest.truth().process("vmi_loop").expect("vmi_loop").pid;
    let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    let release = os.kernel().release.clone().unwrap_or_default();

    let mut events = Vec::new();
    {
        let tracker = ProcessTracker::new(&core, &os).unwrap();
        let stop = AtomicBool::new(false);
        tracker
            .run_until(&stop, |e| {
                events.push(e);
                // Two whole sleeps: fork, exec, exit twice after a first exec.
                let done = events
                    .iter()
                    .filter(|e| e.kind == ProcessEventKind::Exit && e.ppid == loop_pid)
                    .count();
                if done >= 2 {
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .unwrap();
    }
    let sleeps: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == ProcessEventKind::Exec && e.ppid == loop_pid)
        .map(|e| e.pid)
        .collect();
    assert!(!sleeps.is_empty(), "{release}: {events:#?}");
    for pid in sleeps {
        let of = |k: ProcessEventKind| events.iter().position(|e| e.kind == k && e.tid == pid);
        let exec = &events[of(ProcessEventKind::Exec).unwrap()];
        assert_eq!(
            exec.argv.as_deref(),
            Some(&["sleep".to_string(), "1".into()][..]),
            "{release}: {exec:?}"
        );
        assert!(exec.problems.is_empty(), "{release}: {exec:?}");
        if let Some(exit) = of(ProcessEventKind::Exit) {
            assert!(exit > of(ProcessEventKind::Exec).unwrap());
            assert_eq!(
                events[exit].exit_code,
                Some(0),
                "{release}: {:?}",
                events[exit]
            );
        }
        if let Some(fork) = of(ProcessEventKind::Fork) {
            assert!(fork < of(ProcessEventKind::Exec).unwrap());
            assert_eq!(events[fork].ppid, loop_pid);
        }
    }

    let mut calls = Vec::new();
    {
        let options = SyscallOptions {
            pid: None,
            returns: true,
        };
        let tracer = SyscallTracer::new(&core, &os, &["openat", "execve"], options).unwrap();
        let stop = AtomicBool::new(false);
        tracer
            .run_until(&stop, |c| {
                calls.push(c);
                if calls.len() >= 4 {
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .unwrap();
    }
    for c in &calls {
        let arg = |n: &str| c.args.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert!(c.problems.is_empty(), "{release}: {c:?}");
        match c.syscall.as_str() {
            "openat" => {
                assert_eq!(c.pid, loop_pid, "{release}: {c:?}");
                assert_eq!(
                    arg("filename"),
                    Some(ArgValue::Str(Some("/tmp/vmi_loop.count".into())))
                );
                assert_eq!(
                    arg("flags"),
                    Some(ArgValue::Text("O_WRONLY|O_CREAT|O_TRUNC".into()))
                );
                assert!(c.ret.unwrap() >= 0, "{release}: {c:?}");
            }
            "execve" => {
                assert_eq!(
                    arg("argv"),
                    Some(ArgValue::StrArray(Some(vec!["sleep".into(), "1".into()]))),
                    "{release}: {c:?}"
                );
                assert_eq!(c.ret, Some(0), "{release}: {c:?}");
            }
            other => panic!("{other}"),
        }
    }
    for w in calls.windows(2) {
        assert_ne!(w[0].syscall, w[1].syscall, "{release}: {calls:#?}");
    }
    eprintln!(
        "{release}: {} lifecycle events, {} calls",
        events.len(),
        calls.len()
    );
    drop(os);
    drop(core);
    assert_eq!(status(&guest), "running");
}

#[test]
fn tracker_and_syscalls_on_bullseye_5_10() {
    tracker_and_syscalls(
        GuestConfig::default().kernel("bullseye:linux-image-cloud-amd64".parse().unwrap()),
    );
}

#[test]
fn tracker_and_syscalls_on_trixie_6_12() {
    tracker_and_syscalls(
        GuestConfig::default().kernel("trixie:linux-image-cloud-amd64".parse().unwrap()),
    );
}

/// `AT_ENTRY` from `mm->saved_auxv`.
fn auxv_entry(core: &VmiCore<QemuDriver>, os: &LinuxOs, mm: Va) -> u64 {
    const AT_ENTRY: u64 = 9;
    let off = os.profile().offset_of("mm_struct", "saved_auxv").unwrap();
    let root = os.kernel().kernel_root;
    for i in 0..64u64 {
        let at = |k: u64| {
            core.read_u64(vmi_core::AccessContext::paging(
                mm + off + (2 * i + k) * 8,
                root,
            ))
            .unwrap()
        };
        match at(0) {
            0 => break,
            AT_ENTRY => return at(1),
            _ => {}
        }
    }
    panic!("no AT_ENTRY in saved_auxv");
}

/// A breakpoint on a program's entry point, set when the kernel finishes `execve` (the
/// new address space has no page of the program's text yet): pending, watched by the
/// page-table monitor, armed when the first instruction fetch faults the page in, and hit
/// by that very first execution, in that process only.
#[test]
fn pending_breakpoint_on_an_entry_point_fires_at_its_first_execution() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    let loop_pid = guest.truth().process("vmi_loop").expect("vmi_loop").pid;
    let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    let kpti = os.kernel().kpti == Some(true);
    let bpm = BreakpointManager::new(&core)
        .ignore_root_bits(if kpti { 0x1000 } else { 0 })
        .with_page_table_monitor(os.kernel().page_offset_base);
    let kernel = AddressSpace::Kernel(os.kernel().kernel_root);
    bpm.add(
        kernel,
        os.symbol_address("finalize_exec").unwrap(),
        Tag::Nanosleep,
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    let target = RefCell::new(None);
    let mut hit = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut handler = |event: &vmi_core::VmiEvent<vmi_arch_amd64::Amd64>,
                       hits: &[vmi_utils::bpm::Hit<Tag>]| {
        let task = os
            .current_task_from_registers(&core, &event.registers)
            .unwrap();
        let mut response = VmiEventResponse::default();
        for h in hits {
            match h.tag {
                Tag::Nanosleep if task.ppid == loop_pid && target.borrow().is_none() => {
                    // finalize_exec of vmi_loop's `sleep`: where it will start, AT_ENTRY
                    // of the auxiliary vector the kernel just built (the user registers
                    // get it only after finalize_exec).
                    let entry = auxv_entry(&core, &os, task.mm.unwrap());
                    let space = AddressSpace::Process(task.user_root.unwrap());
                    let id = bpm.add(space, Va(entry), Tag::UserReturn).unwrap();
                    *target.borrow_mut() = Some((id, task.pid, entry, bpm.state(id)));
                    response = response.and_remove_monitor();
                }
                Tag::UserReturn => {
                    hit = Some((task.pid, event.registers.instruction_pointer().0));
                    stop.store(true, Ordering::SeqCst);
                }
                _ => {}
            }
        }
        response
    };
    while !stop.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "no hit within 60 s: {:?} {:?} {:?}",
            target.borrow(),
            bpm.stats(),
            bpm.list()
        );
        bpm.wait(Duration::from_millis(100), &mut handler).unwrap();
    }
    let (_, pid, entry, state) = target.into_inner().unwrap();
    assert_eq!(
        state,
        Some(BreakpointState::Pending),
        "the entry page was present at exec"
    );
    assert_eq!(hit, Some((pid, entry)));
    let stats = bpm.stats();
    eprintln!("manager: {stats:?}");
    assert!(
        stats.page_table_writes >= 1 && stats.armed_later == 1,
        "{stats:?}"
    );
    drop(bpm);
    assert_eq!(status(&guest), "running");
}
