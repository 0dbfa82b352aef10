//! Hook round trip (breakpoint hit → handler → resume) on the live test guest: through
//! the [`BreakpointManager`] over the QEMU driver, and through a bare gdbstub client
//! that sends the same packets (`vCont;c`, stop reply, `g`, `vCont;s` over the
//! breakpoint), on the same hot kernel function. Runs bare, manager, bare, manager and
//! prints hits per second and the ratio. Needs QEMU (skipped visibly without).
//!
//! `cargo bench -p vmi-utils --bench roundtrip` (`VMI_BENCH_HITS`, default 300;
//! `VMI_BENCH_ROUNDS`, default 5).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmi_core::{Va, VmiCore, VmiEventResponse};
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};
use vmi_utils::bpm::{AddressSpace, BreakpointManager};

/// A minimal gdb remote-protocol client: framing, checksums, acks.
struct Bare {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Bare {
    fn send(&mut self, payload: &str) {
        let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        self.s
            .write_all(format!("${payload}#{sum:02x}").as_bytes())
            .unwrap();
    }

    fn recv(&mut self) -> String {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$')
                && let Some(end) = self.buf[start..].iter().position(|&b| b == b'#')
                && self.buf.len() >= start + end + 3
            {
                let p = String::from_utf8_lossy(&self.buf[start + 1..start + end]).into_owned();
                self.buf.drain(..start + end + 3);
                self.s.write_all(b"+").unwrap();
                return p;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "gdbstub closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends and returns the answer (a stop reply of the VM stopped by our connection
    /// may come first: skipped).
    fn request(&mut self, payload: &str) -> String {
        self.send(payload);
        loop {
            let p = self.recv();
            if !(p.starts_with('T') || p.starts_with('S')) {
                return p;
            }
        }
    }

    /// Waits for a stop reply, returns its thread.
    fn stop(&mut self) -> String {
        loop {
            let p = self.recv();
            if p.starts_with('T') || p.starts_with('S') {
                return p
                    .split(';')
                    .find_map(|f| f.split_once(':').filter(|(k, _)| k.ends_with("thread")))
                    .map_or_else(|| "1".into(), |(_, t)| t.to_string());
            }
        }
    }
}

fn bare(guest: &TestGuest, va: Va, hits: u32) -> Duration {
    let mut c = Bare {
        s: UnixStream::connect(guest.gdb_socket()).unwrap(),
        buf: Vec::new(),
    };
    c.request("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+");
    assert_eq!(c.request(&format!("Z0,{:x},1", va.0)), "OK");
    let mut selected = String::new();
    let start = Instant::now();
    for _ in 0..hits {
        c.send("vCont;c");
        let thread = c.stop();
        if thread != selected {
            c.request(&format!("Hg{thread}"));
            selected.clone_from(&thread);
        }
        let g = c.request("g");
        assert!(g.len() > 100, "{g}");
        c.send(&format!("vCont;s:{thread}"));
        c.stop();
    }
    let t = start.elapsed();
    assert_eq!(c.request(&format!("z0,{:x},1", va.0)), "OK");
    c.send("D;1");
    let _ = c.recv();
    t
}

fn manager(guest: &TestGuest, va: Va, root: vmi_core::Pa, hits: u32) -> Duration {
    let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
    let bpm = BreakpointManager::new(&core);
    bpm.add(AddressSpace::Kernel(root), va, ()).unwrap();
    // The first hit connects and settles; time the rest.
    let stop = AtomicBool::new(false);
    let mut n = 0;
    let mut start = Instant::now();
    bpm.run_until(&stop, |_, h| {
        if !h.is_empty() {
            if n == 0 {
                start = Instant::now();
            }
            n += 1;
            if n > hits {
                stop.store(true, Ordering::SeqCst);
            }
        }
        VmiEventResponse::default()
    })
    .unwrap();
    start.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    let hits: u32 = std::env::var("VMI_BENCH_HITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let function = "ktime_get";
    let (va, root) = {
        let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
        let os = {
            let _pause = core.pause_guard().unwrap();
            LinuxOs::new(&core).unwrap()
        };
        (
            os.symbol_address(function).unwrap(),
            os.kernel().kernel_root,
        )
    };
    // Warm up the bare path once (the first connection stops and starts the VM).
    bare(&guest, va, 20);
    let mut rates = (Vec::new(), Vec::new());
    let rounds: u32 = std::env::var("VMI_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for _ in 0..rounds {
        let b = bare(&guest, va, hits);
        let m = manager(&guest, va, root, hits);
        let (rb, rm) = (
            f64::from(hits) / b.as_secs_f64(),
            f64::from(hits) / m.as_secs_f64(),
        );
        println!(
            "{function}: bare gdbstub {rb:.0} hits/s ({:.1} µs each), manager {rm:.0} hits/s ({:.1} µs each), ratio {:.2}",
            b.as_secs_f64() * 1e6 / f64::from(hits),
            m.as_secs_f64() * 1e6 / f64::from(hits),
            rm / rb
        );
        rates.0.push(rb);
        rates.1.push(rm);
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "overall: manager / bare = {:.2} ({hits} hits per run, {rounds} runs each, alternating); host load {}",
        sum(&rates.1) / sum(&rates.0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
