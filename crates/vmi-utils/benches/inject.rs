//! `cat` of a 4 KiB and a 1 MiB guest file injected into a live process of the test
//! guest (QEMU TCG): time from `Injector::run` to the restore, the part spent waiting for
//! the thread's safe point, steps and breakpoint hits. The target is a shell loop
//! started for the bench (always in user mode: the safe point comes at once). Each file
//! is read with the stack's scratch area only and with a 1 MiB buffer mapped by the
//! injector (`InjectOptions::buffer`). Needs QEMU (skipped visibly without).
//!
//! `cargo bench -p vmi-utils --bench inject` (`VMI_BENCH_ROUNDS`, default 5).

use std::time::Duration;

use vmi_core::VmiCore;
use vmi_driver_qemu::{AttachOptions, QemuDriver};
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};
use vmi_utils::inject::{InjectOptions, Injector, Recipe};

fn main() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let rounds: usize = std::env::var("VMI_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let t = Duration::from_secs(120);
    for cmd in [
        "head -c 4096 /dev/urandom > /tmp/b4k",
        "head -c 1048576 /dev/urandom > /tmp/b1m",
    ] {
        assert_eq!(guest.run(cmd, t).unwrap().rc, 0, "{cmd}");
    }
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
    println!("file     buffer   bytes    steps  hits  safe point ms  total ms  (per round)");
    for (path, size) in [("/tmp/b4k", 4096usize), ("/tmp/b1m", 1 << 20)] {
        for buffer in [0usize, 1 << 20] {
            let injector = Injector::new(&core, &os).with_options(InjectOptions {
                buffer,
                ..InjectOptions::default()
            });
            for _ in 0..rounds {
                let mut got = 0usize;
                let mut recipe = Recipe::cat(path, 1 << 20, 16 << 20, |b| {
                    got += b.len();
                    true
                });
                let r = injector.run(pid, &mut recipe).unwrap();
                drop(recipe);
                assert_eq!(got, size);
                assert_eq!(r.restored.as_ref(), Some(&r.saved));
                assert_eq!(r.memory_restored, Some(true));
                println!(
                    "{path:<8} {buffer:<8} {got:<8} {:<6} {:<5} {:<14.1} {:.1}",
                    r.steps.len(),
                    r.hits,
                    r.taken_after.as_secs_f64() * 1000.0,
                    r.elapsed.as_secs_f64() * 1000.0
                );
            }
        }
    }
    let _ = guest.run(&format!("kill {pid}"), t);
}
