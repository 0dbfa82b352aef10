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
