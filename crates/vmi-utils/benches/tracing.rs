//! Tracing a busy process (issue 15's figure): the guest's `vmi_opens N` opens
//! `/etc/hostname` N times from one shell, with no fork. Measured: the workload's wall
//! time untraced, then with every `openat` traced by the [`SyscallTracer`] (entries,
//! arguments decoded), as events per second and the guest's slowdown. Rounds alternate
//! untraced and traced on the same guest. Needs QEMU (skipped visibly without).
//!
//! `cargo bench -p vmi-utils --bench tracing` (`VMI_BENCH_OPENS`, default 300;
//! `VMI_BENCH_ROUNDS`, default 3).
//!
//! Under TCG, QEMU's gdbstub flushes every translated block at each breakpoint stop, so
//! an event costs the guest the re-translation of the code it runs next; the driver
//! steps over a no-op first instruction (the kernel's `__fentry__` site) by moving `rip`,
//! which saves the second stop of a single-step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmi_core::VmiCore;
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};
use vmi_utils::syscalls::{SyscallOptions, SyscallTracer};

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workload(guest: &TestGuest, n: u32) -> Duration {
    let t = Instant::now();
    let out = guest
        .run(&format!("vmi_opens {n}"), Duration::from_secs(1800))
        .expect("workload");
    assert_eq!(out.rc, 0, "{}", out.output);
    t.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let n = env("VMI_BENCH_OPENS", 300);
    let rounds = env("VMI_BENCH_ROUNDS", 3);
    let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
    let os = {
        let _pause = core.pause_guard().unwrap();
        LinuxOs::new(&core).unwrap()
    };
    workload(&guest, n); // warm-up
    let (mut plain, mut traced, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let u = workload(&guest, n);
        let stop = AtomicBool::new(false);
        let tracer =
            SyscallTracer::new(&core, &os, &["openat"], SyscallOptions::default()).expect("tracer");
        let (t, seen) = std::thread::scope(|s| {
            let run = s.spawn(|| {
                let mut seen = 0u64;
                tracer
                    .run_until(&stop, |e| {
                        if e.comm == "vmi_opens" {
                            seen += 1;
                        }
                    })
                    .expect("trace");
                seen
            });
            let t = workload(&guest, n);
            stop.store(true, Ordering::SeqCst);
            (t, run.join().unwrap())
        });
        drop(tracer);
        assert!(seen >= u64::from(n), "saw {seen} of {n} opens");
        println!(
            "vmi_opens {n}: untraced {:.2} s, traced {:.2} s ({seen} events of the workload, {:.1} events/s, {:.1} ms each); slowdown {:.0}x",
            u.as_secs_f64(),
            t.as_secs_f64(),
            seen as f64 / t.as_secs_f64(),
            t.as_secs_f64() * 1e3 / seen as f64,
            t.as_secs_f64() / u.as_secs_f64()
        );
        plain.push(u.as_secs_f64());
        traced.push(t.as_secs_f64());
        events.push(seen as f64 / t.as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median over {rounds} rounds: {:.1} events/s, untraced {:.2} s, traced {:.2} s; host load {}",
        median(&mut events),
        median(&mut plain),
        median(&mut traced),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
