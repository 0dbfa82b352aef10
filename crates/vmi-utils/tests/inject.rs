//! The injector on the live test guest: 100 injections in a row into a busy process,
//! each exact and verified; its failure paths: a recipe that fails, panics, runs
//! past the step limit or is stopped (Ctrl-C) mid-way leaves the thread restored — the
//! process lives on and the next injection reads the file exactly; `fork` is refused
//! before it runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vmi_core::VmiCore;
use vmi_driver_qemu::{AttachOptions, QemuDriver};
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};
use vmi_utils::inject::{Arg, InjectError, InjectOptions, Injector, Next, Recipe, Syscall, nr};

fn alive(g: &TestGuest, pid: u32) {
    let out = g
        .run(
            &format!("kill -0 {pid} && cut -d' ' -f3 /proc/{pid}/stat"),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(out.rc, 0, "pid {pid} gone: {}", out.output);
    assert!(["R", "S"].contains(&out.output.trim()), "{}", out.output);
}

/// getpid forever: only the injector's limits end it.
fn getpid_loop<'a>(mut each: impl FnMut(u64) + 'a) -> Recipe<'a> {
    let call = Syscall::new(nr::GETPID, "getpid", vec![]);
    let again = call.clone();
    Recipe::new(call, move |o| {
        each(o.index);
        Next::Call(again.clone())
    })
}

#[test]
fn failed_stopped_and_panicking_recipes_leave_the_thread_restored() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let t = Duration::from_secs(60);
    assert_eq!(guest.run("printf 'abc\\n' > /tmp/vmi-f", t).unwrap().rc, 0);
    let busy = guest
        .run("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!", t)
        .unwrap();
    let pid: u32 = busy.output.trim().parse().expect("busy pid");
    let core = VmiCore::new(
        QemuDriver::attach_with(guest.qmp_socket(), AttachOptions::default().writable(true))
            .unwrap(),
    )
    .unwrap();
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    let cat_works = || {
        let mut got = Vec::new();
        let mut r = Recipe::cat("/tmp/vmi-f", 4096, 1 << 20, |b| {
            got.extend_from_slice(b);
            true
        });
        let report = Injector::new(&core, &os).run(pid, &mut r).unwrap();
        drop(r);
        assert_eq!(got, b"abc\n");
        assert_eq!(report.restored.as_ref(), Some(&report.saved));
        assert_eq!(report.memory_restored, Some(true));
    };

    // The guest's own answer comes back: getpid in the target is the target's pid.
    let mut seen = None;
    let mut r = Recipe::new(Syscall::new(nr::GETPID, "getpid", vec![]), |o| {
        seen = Some(o.ret);
        Next::Done
    });
    Injector::new(&core, &os).run(pid, &mut r).unwrap();
    drop(r);
    assert_eq!(seen, Some(i64::from(pid)));

    // The same, on Xen (the in-memory fake) with this moment's memory.
    injection_on_the_xen_fake(&guest, &core, &os, pid);

    // 100 injections in a row into the busy process, each exact and verified.
    for _ in 0..100 {
        cat_works();
    }
    alive(&guest, pid);

    // Step limit.
    let opts = InjectOptions {
        max_steps: 50,
        ..InjectOptions::default()
    };
    let e = Injector::new(&core, &os)
        .with_options(opts)
        .run(pid, &mut getpid_loop(|_| {}))
        .unwrap_err();
    assert!(matches!(e, InjectError::TooManySteps(50)), "{e}");
    alive(&guest, pid);
    cat_works();

    // Stopped mid-recipe, as by Ctrl-C.
    let stop = AtomicBool::new(false);
    let e = Injector::new(&core, &os)
        .with_stop(&stop)
        .run(
            pid,
            &mut getpid_loop(|i| {
                if i == 10 {
                    stop.store(true, Ordering::SeqCst);
                }
            }),
        )
        .unwrap_err();
    assert!(matches!(e, InjectError::Interrupted), "{e}");
    alive(&guest, pid);
    cat_works();

    // A recipe that panics.
    let e = Injector::new(&core, &os)
        .run(pid, &mut getpid_loop(|i| assert!(i < 3, "recipe bug")))
        .unwrap_err();
    assert!(
        matches!(e, InjectError::Recipe(ref m) if m.contains("panicked")),
        "{e}"
    );
    alive(&guest, pid);

    // A step too large for the scratch area: refused, restored.
    let big = Syscall::new(
        nr::WRITE,
        "write",
        vec![
            vmi_utils::inject::Arg::Value(1),
            vmi_utils::inject::Arg::Bytes(vec![0; 1 << 20]),
            vmi_utils::inject::Arg::Value(1 << 20),
        ],
    );
    let e = Injector::new(&core, &os)
        .run(pid, &mut Recipe::new(big, |_| Next::Done))
        .unwrap_err();
    assert!(matches!(e, InjectError::InvalidStep { .. }), "{e}");
    alive(&guest, pid);
    cat_works();

    // fork would give a child the injector's registers: refused, restored.
    let fork = Syscall::new(57, "fork", vec![]);
    let e = Injector::new(&core, &os)
        .run(pid, &mut Recipe::new(fork, |_| Next::Done))
        .unwrap_err();
    assert!(
        matches!(e, InjectError::InvalidStep { name: "fork", .. }),
        "{e}"
    );
    alive(&guest, pid);
    cat_works();

    let _ = guest.run(&format!("kill {pid}"), t);
}

/// Runs `recipe` in `pid` and checks the thread came back exactly.
fn run_verified(core: &VmiCore<QemuDriver>, os: &LinuxOs, pid: u32, recipe: &mut Recipe<'_>) {
    let report = Injector::new(core, os).run(pid, recipe).unwrap();
    assert_eq!(report.restored.as_ref(), Some(&report.saved));
    assert_eq!(report.memory_restored, Some(true));
}

#[test]
fn functions_of_the_process_found_by_their_elf_symbols_and_called() {
    let cfg = GuestConfig::default()
        .userland(vmi_test_guest::Userland::Realistic)
        .control(true);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let t = Duration::from_secs(60);
    // A glibc program back in user mode ten times a second.
    let out = guest
        .run(
            "bash -c 'while :; do : > /tmp/vmi-bash-ready; sleep 0.1; done' \
             >/dev/null 2>&1 & echo $!",
            t,
        )
        .unwrap();
    let pid: u32 = out.output.trim().parse().expect("bash pid");
    // Until bash runs its loop it may still be loading its libraries.
    let ready = (0..200).any(|_| {
        let done = guest.run("test -e /tmp/vmi-bash-ready", t).unwrap().rc == 0;
        if !done {
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    });
    assert!(ready, "bash {pid} never ran its loop");
    let core = VmiCore::new(
        QemuDriver::attach_with(guest.qmp_socket(), AttachOptions::default().writable(true))
            .unwrap(),
    )
    .unwrap();
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    let injector = Injector::new(&core, &os);
    // getpid, from libc: the process's own pid.
    let f = injector
        .find_function(pid, Some("libc.so.6"), "getpid")
        .unwrap();
    assert!(f.object.ends_with("libc.so.6"), "{f:?}");
    assert!(!f.indirect);
    let mut got = None;
    let mut r = Recipe::new(Syscall::function("getpid", f.address.0, vec![]), |o| {
        got = Some(o.ret);
        Next::Done
    });
    run_verified(&core, &os, pid, &mut r);
    drop(r);
    assert_eq!(got, Some(i64::from(pid)));

    // snprintf (variadic), into a buffer the injector reads back.
    let f = injector
        .find_function(pid, Some("libc"), "snprintf")
        .unwrap();
    let call = Syscall::function(
        "snprintf",
        f.address.0,
        vec![
            Arg::Out(64),
            Arg::OutLen,
            Arg::c_string("%d-%s"),
            Arg::Value(42),
            Arg::c_string("vmi"),
        ],
    );
    let mut got = None;
    let mut r = Recipe::new(call, |o| {
        got = Some((o.ret, o.out.clone()));
        Next::Done
    });
    run_verified(&core, &os, pid, &mut r);
    drop(r);
    assert_eq!(got, Some((6, b"42-vmi".to_vec())));

    // strlen is an indirect function in glibc: its resolver first, then what it chose.
    let f = injector.find_function(pid, None, "strlen").unwrap();
    assert!(f.indirect, "{f:?}");
    let mut lengths = Vec::new();
    let mut r = Recipe::new(
        Syscall::function("strlen resolver", f.address.0, vec![]),
        |o| {
            if o.index == 0 {
                return Next::Call(Syscall::function(
                    "strlen",
                    o.ret as u64,
                    vec![Arg::c_string("introspection")],
                ));
            }
            lengths.push(o.ret);
            Next::Done
        },
    );
    run_verified(&core, &os, pid, &mut r);
    drop(r);
    assert_eq!(lengths, [13]);

    // Not there, or not a function: typed errors naming what was searched.
    let e = injector
        .find_function(pid, Some("libc.so.6"), "no_such_function_here")
        .unwrap_err();
    assert!(
        matches!(e, InjectError::NoSuchFunction { ref objects, .. } if objects.len() == 1),
        "{e}"
    );
    let e = injector
        .find_function(pid, Some("libc.so.6"), "environ")
        .unwrap_err();
    assert!(e.to_string().contains("not a function"), "{e}");

    alive(&guest, pid);
    let _ = guest.run(&format!("kill {pid}"), t);
}

/// The value the counting loop last wrote (it renames each value into place: a read
/// never sees a half-written file).
fn count(g: &TestGuest) -> u64 {
    g.read_number("/tmp/vmi-count", Duration::from_secs(10))
        .unwrap()
}

#[test]
fn a_step_stuck_in_the_kernel_is_given_back_by_the_guard_once_the_session_ends() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let t = Duration::from_secs(60);
    assert_eq!(guest.run("mkfifo /tmp/vmi-fifo", t).unwrap().rc, 0);
    let out = guest
        .run(
            "sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/vmi-count.t; \
             mv /tmp/vmi-count.t /tmp/vmi-count; done' \
             >/dev/null 2>&1 & echo $!",
            t,
        )
        .unwrap();
    let pid: u32 = out.output.trim().parse().expect("pid");
    let _ = count(&guest);

    // The injected openat of a FIFO blocks until a writer comes: the step times out and
    // the thread is left to the guard when the session (the driver) ends.
    let err = {
        let core = VmiCore::new(
            QemuDriver::attach_with(guest.qmp_socket(), AttachOptions::default().writable(true))
                .unwrap(),
        )
        .unwrap();
        let os = {
            let _pause = core.pause_guard().unwrap();
            LinuxOs::new(&core).unwrap()
        };
        let opts = InjectOptions {
            step_timeout: Duration::from_secs(3),
            ..InjectOptions::default()
        };
        let mut r = Recipe::cat("/tmp/vmi-fifo", 4096, 1 << 20, |_| true);
        Injector::new(&core, &os)
            .with_options(opts)
            .run(pid, &mut r)
            .unwrap_err()
    };
    assert!(
        matches!(err, InjectError::StuckInSyscall { guarded: true, .. }),
        "{err}"
    );
    let stuck = count(&guest);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&guest),
        stuck,
        "the thread is still in the injected openat"
    );

    // A writer: the open returns, the guard gives the thread back, the loop counts on.
    assert_eq!(guest.run("echo x > /tmp/vmi-fifo", t).unwrap().rc, 0);
    let back = (0..120).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        count(&guest) > stuck
    });
    assert!(
        back,
        "the loop did not count on: the thread was not given back"
    );
    alive(&guest, pid);

    // The guard is done with the gdbstub: a new session injects and verifies.
    assert_eq!(guest.run("printf 'abc\\n' > /tmp/vmi-f", t).unwrap().rc, 0);
    let core = (0..60)
        .find_map(|_| {
            let c = QemuDriver::attach_with(
                guest.qmp_socket(),
                AttachOptions::default().writable(true),
            )
            .ok()
            .and_then(|d| VmiCore::new(d).ok());
            if c.is_none() {
                std::thread::sleep(Duration::from_millis(500));
            }
            c
        })
        .expect("attach after the guard");
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    let mut got = Vec::new();
    let mut r = Recipe::cat("/tmp/vmi-f", 4096, 1 << 20, |b| {
        got.extend_from_slice(b);
        true
    });
    let report = Injector::new(&core, &os).run(pid, &mut r).unwrap();
    drop(r);
    assert_eq!(got, b"abc\n");
    assert_eq!(report.restored.as_ref(), Some(&report.saved));
    assert_eq!(report.memory_restored, Some(true));
    let _ = guest.run(&format!("kill {pid}"), t);
}

/// The injector on Xen, through the same traits, on the in-memory fake: the memory and
/// vCPU state of the live guest at a moment its busy process `pid` runs are copied into
/// a fake Xen domain, and a thread of this test plays the vCPU: it raises the
/// breakpoint events Xen would raise (int3s the driver planted in the domain's frames)
/// and carries out the system calls the injector points it at (`getpid`, a `write`
/// whose bytes it reads, a `read` whose buffer it fills). Afterwards the domain's
/// memory is byte-identical to the copy and the thread's registers are the saved ones.
fn injection_on_the_xen_fake(
    guest: &TestGuest,
    core: &VmiCore<QemuDriver>,
    os: &LinuxOs,
    pid: u32,
) {
    use std::sync::atomic::AtomicBool;
    use vmi_arch_amd64::Registers;
    use vmi_core::{Va, VcpuId, VmiSetRegisters};
    use vmi_driver_xen::XenDriver;
    use vmi_driver_xen::abi::{VmEvent, VmEventRegsX86, flags, reason};
    use vmi_driver_xen::fake::FakeXen;
    use vmi_utils::inject::{Arg, RED_ZONE};

    // A moment where vCPU 0 runs the busy process, whose user registers saved at its
    // last kernel entry (the injector's first safe point) leave 1 KiB of writable stack
    // below the red zone (the shell's stack goes deeper only now and then: the page
    // below is often not there yet).
    let mut regs0 = None;
    for _ in 0..500 {
        core.pause().unwrap();
        let r = core.registers(VcpuId(0)).unwrap();
        let room = |t: &vmi_os_linux::LinuxTask| {
            let f = os.syscall_frame(core, t).ok()?;
            core.translate(vmi_core::AddressContext::new(
                Va(f.sp.checked_sub(RED_ZONE + 1024)?),
                r.cr3.root(),
            ))
            .ok()
            .filter(|t| t.flags.user && t.flags.writable)
        };
        if let Ok(t) = os.current_task_from_registers(core, &r)
            && t.tgid == pid
            && r.cpl() == 3
            && room(&t).is_some()
        {
            regs0 = Some(r);
            break;
        }
        core.resume().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let regs0: Registers = regs0.expect("vCPU 0 never ran the busy process with stack room");
    let ram = std::fs::read(guest.mem_file()).unwrap();
    core.resume().unwrap();

    let xen = FakeXen::new();
    let d = xen.add_hvm_domain(ram.len() as u64 / 4096);
    for (i, page) in ram.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != 0) {
            xen.write_memory(d, i as u64 * 4096, page);
        }
    }
    let drv = XenDriver::new(xen.clone(), d).unwrap();
    drv.set_registers(VcpuId(0), &regs0).unwrap();
    let xcore = VmiCore::new(drv).unwrap();
    let xos = {
        let _pause = xcore.pause_guard().unwrap();
        LinuxOs::new(&xcore).unwrap()
    };
    let injector = Injector::new(&xcore, &xos);
    let (task, root) = injector.target_thread(pid, None).unwrap();
    let frame = xos.syscall_frame(&xcore, &task).unwrap();
    let syscall_at = injector.find_syscall(&task, root).unwrap();
    let pa_of = |va: u64| {
        xcore
            .translate(vmi_core::AddressContext::new(Va(va), root))
            .ok()
            .map(|t| t.pa.0)
    };
    let safe_pa = pa_of(frame.ip).expect("the safe point is mapped");

    // The thread at its safe point, as Xen reports a vCPU in user mode.
    let mut start = VmEventRegsX86 {
        rip: frame.ip,
        rsp: frame.sp,
        rdi: frame.args[0],
        rsi: frame.args[1],
        rdx: frame.args[2],
        r10: frame.args[3],
        r8: frame.args[4],
        r9: frame.args[5],
        rflags: 0x246,
        cr0: regs0.cr0,
        cr3: root.0,
        cr4: regs0.cr4,
        msr_efer: regs0.efer,
        fs_base: if regs0.cpl() == 3 { regs0.fs_base } else { 0 },
        gs_base: 0,
        shadow_gs: regs0.kernel_gs(),
        ..VmEventRegsX86::default()
    };
    start.cs_sel = 0x33;
    start.ss_sel = 0x2b;
    let event = |regs: &VmEventRegsX86, why: u32, pa: u64| VmEvent {
        version: 7,
        flags: flags::VCPU_PAUSED,
        reason: why,
        u: if why == reason::SOFTWARE_BREAKPOINT {
            [pa >> 12, 0, 1, 0]
        } else {
            [0; 4]
        },
        regs: *regs,
        ..VmEvent::default()
    };
    let int3_at = |pa: u64| xen.read_memory(d, pa, 1) == [0xcc];
    let write_virt = |va: u64, data: &[u8]| {
        for (i, b) in data.iter().enumerate() {
            xen.write_memory(d, pa_of(va + i as u64).unwrap(), &[*b]);
        }
    };
    let read_virt = |va: u64, len: usize| -> Vec<u8> {
        (0..len as u64)
            .map(|i| xen.read_memory(d, pa_of(va + i).unwrap(), 1)[0])
            .collect()
    };

    let done = AtomicBool::new(false);
    let (written, report, seen) = std::thread::scope(|s| {
        // The vCPU.
        let cpu = s.spawn(|| {
            let mut written = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let wait = |what: &str, mut ok: Box<dyn FnMut() -> bool + '_>| loop {
                if ok() {
                    return true;
                }
                if done.load(Ordering::SeqCst) {
                    return false;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the vCPU waited for {what}"
                );
                std::thread::sleep(Duration::from_millis(1));
            };
            if !wait("the safe point's int3", Box::new(|| int3_at(safe_pa))) {
                return written;
            }
            let mut regs = start;
            xen.push_request(d, &event(&regs, reason::SOFTWARE_BREAKPOINT, safe_pa))
                .unwrap();
            loop {
                let mut rsp = Vec::new();
                if !wait(
                    "a response",
                    Box::new(|| {
                        rsp = xen.take_responses(d);
                        !rsp.is_empty()
                    }),
                ) {
                    return written;
                }
                let r = rsp.remove(0);
                if r.flags & flags::SET_REGISTERS != 0 {
                    regs = r.regs;
                }
                if r.flags & flags::TOGGLE_SINGLESTEP != 0 {
                    // Stepping over an int3 of the driver's: one step, then it plants
                    // it again (and turns single-step off, another toggle).
                    xen.push_request(d, &event(&regs, reason::SINGLESTEP, 0))
                        .unwrap();
                    continue;
                }
                // Run: the `syscall` the injector pointed the thread at, carried out.
                if regs.rip == syscall_at.0 {
                    let ret: i64 = match regs.rax {
                        nr::GETPID => i64::from(pid),
                        nr::WRITE => {
                            written = read_virt(regs.rsi, regs.rdx as usize);
                            regs.rdx as i64
                        }
                        nr::READ => {
                            let typed = b"typed on xen";
                            let n = typed.len().min(regs.rdx as usize);
                            write_virt(regs.rsi, &typed[..n]);
                            n as i64
                        }
                        _ => -38, // ENOSYS
                    };
                    regs.rax = ret as u64;
                    regs.rip += 2;
                    regs.rcx = regs.rip;
                    regs.r11 = regs.rflags;
                }
                // The next int3 the thread meets, or it runs on for good.
                match pa_of(regs.rip).filter(|&pa| int3_at(pa)) {
                    Some(pa) => xen
                        .push_request(d, &event(&regs, reason::SOFTWARE_BREAKPOINT, pa))
                        .unwrap(),
                    None => return written,
                }
            }
        });
        let mut seen = Vec::new();
        let mut steps = vec![
            Syscall::new(
                nr::WRITE,
                "write",
                vec![
                    Arg::Value(1),
                    Arg::Bytes(b"hello from the injector".to_vec()),
                    Arg::Value(23),
                ],
            ),
            Syscall::new(
                nr::READ,
                "read",
                vec![Arg::Value(0), Arg::Out(64), Arg::OutLen],
            ),
        ]
        .into_iter();
        let mut recipe = Recipe::new(Syscall::new(nr::GETPID, "getpid", vec![]), |o| {
            seen.push((o.name, o.ret, o.out.clone()));
            steps.next().map_or(Next::Done, Next::Call)
        });
        let report = injector.run(pid, &mut recipe);
        drop(recipe);
        done.store(true, Ordering::SeqCst);
        (cpu.join().unwrap(), report, seen)
    });
    let report = report.unwrap();
    eprintln!(
        "xen fake: {} steps, {} breakpoint hits, safe point {:#x}, syscall at {:#x}, scratch {:#x}..{:#x}",
        report.steps.len(),
        report.hits,
        report.safe_point.0,
        report.syscall_at.0,
        report.scratch.0.0,
        report.scratch.1.0
    );
    assert_eq!(
        seen,
        vec![
            ("getpid", i64::from(pid), vec![]),
            ("write", 23, vec![]),
            ("read", 12, b"typed on xen".to_vec()),
        ]
    );
    assert_eq!(written, b"hello from the injector");
    assert_eq!(report.restored.as_ref(), Some(&report.saved));
    assert_eq!(report.memory_restored, Some(true));
    assert_eq!(report.saved.rip, frame.ip);
    assert!(
        report.crash_guard.is_err(),
        "the Xen driver has no crash guard"
    );
    // Every int3 gone, every scratch byte back: the domain is the copy again.
    drop(xcore);
    for (i, page) in ram.chunks(4096).enumerate() {
        assert!(
            xen.read_memory(d, i as u64 * 4096, 4096) == page,
            "frame {i:#x} differs from the copy"
        );
    }
}
