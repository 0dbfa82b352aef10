//! The injector's failure paths on the live test guest: a recipe that fails, panics, runs
//! past the step limit or is stopped (Ctrl-C) mid-way leaves the thread restored — the
//! process lives on and the next injection reads the file exactly; `fork` is refused
//! before it runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vmi_core::VmiCore;
use vmi_driver_qemu::{AttachOptions, QemuDriver};
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};
use vmi_utils::inject::{InjectError, InjectOptions, Injector, Next, Recipe, Syscall, nr};

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
