//! Benchmarks against a live test guest (booted here; skipped with a message without QEMU):
//!
//! * `read_4k/*`: random 4 KiB guest-physical reads through each access path of the
//!   driver, and a plain `mmap` of the RAM file (the ceiling for the mmap path).
//! * `breakpoint_hit/*`: breakpoint hits through the driver's event loop, and through a
//!   minimal raw gdbstub client doing the same continue / stop / step-over cycle (the
//!   ceiling).
#![allow(unsafe_code)] // the plain-mmap ceiling maps the RAM file itself

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rand::{Rng, SeedableRng};
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, Gfn, Va, VmiEventControl, VmiEventResponse,
    VmiRead,
};
use vmi_driver_qemu::{AccessPath, AttachOptions, QemuDriver};
use vmi_test_guest::{GuestConfig, TestGuest};

const RAM_MB: u64 = 512;

fn random_gfns(n: usize) -> Vec<u64> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    // Below the 640 KiB..1 MiB holes' neighbours: plain RAM only.
    (0..n)
        .map(|_| rng.gen_range(0x100..(RAM_MB << 8) - 1))
        .collect()
}

fn reads(c: &mut Criterion, g: &TestGuest) {
    let gfns = random_gfns(4096);
    let mut group = c.benchmark_group("read_4k");
    group.throughput(Throughput::Bytes(4096));
    let mut buf = vec![0u8; 4096];

    let file = std::fs::File::open(g.mem_file()).unwrap();
    // SAFETY: a read-only shared mapping of the guest RAM file; QEMU never truncates it
    // while the guest runs, and the bytes are only copied out (`u8` has no invalid values).
    // Concurrent guest writes can tear a copy, which a benchmark does not care about.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let ceiling = |name: &str, group: &mut criterion::BenchmarkGroup<'_, _>| {
        let mut i = 0;
        let mut buf = vec![0u8; 4096];
        group.bench_function(name, |b| {
            b.iter(|| {
                let off = (gfns[i % gfns.len()] << 12) as usize;
                i += 1;
                buf.copy_from_slice(&map[off..off + 4096]);
                black_box(&buf);
            })
        });
    };
    ceiling("plain_mmap_ceiling", &mut group);
    {
        let d = QemuDriver::attach(g.qmp_socket()).unwrap();
        assert_eq!(d.access_path(), AccessPath::Mmap);
        let mut i = 0;
        group.bench_function("driver_mmap", |b| {
            b.iter(|| {
                d.read_page(Gfn(gfns[i % gfns.len()]), 0, &mut buf).unwrap();
                i += 1;
                black_box(&buf);
            })
        });
    }
    // Measured again: the guest's vCPU thread shares the machine, so the ceiling drifts.
    ceiling("plain_mmap_ceiling_again", &mut group);
    drop(map);

    for (name, path, fast) in [
        ("driver_process_memory", AccessPath::ProcessMemory, true),
        ("driver_hmp_xp", AccessPath::MonitorXp, false),
    ] {
        let d = QemuDriver::attach_with(g.qmp_socket(), AttachOptions::default().access_path(path))
            .unwrap();
        if !fast {
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(3));
        }
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                d.read_page(Gfn(gfns[i % gfns.len()]), 0, &mut buf).unwrap();
                i += 1;
                black_box(&buf);
            })
        });
    }
    group.finish();
}

/// A minimal gdbstub client: just enough for continue / stop / step-over.
struct Raw {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    fn send(&mut self, p: &str) {
        let sum = p.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        self.s
            .write_all(format!("${p}#{sum:02x}").as_bytes())
            .unwrap();
    }
    fn recv(&mut self) -> String {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$')
                && let Some(h) = self.buf[start..].iter().position(|&b| b == b'#')
                && self.buf.len() >= start + h + 3
            {
                let p = String::from_utf8_lossy(&self.buf[start + 1..start + h]).into_owned();
                self.buf.drain(..start + h + 3);
                self.s.write_all(b"+").unwrap();
                return p;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "gdbstub closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
    fn request(&mut self, p: &str) -> String {
        self.send(p);
        loop {
            let r = self.recv();
            if !r.starts_with('T') {
                return r;
            }
        }
    }
}

fn thread_of(stop: &str) -> String {
    stop.split(';')
        .find_map(|kv| kv.strip_prefix("T05thread:").or(kv.strip_prefix("thread:")))
        .unwrap_or("p1.1")
        .to_string()
}

fn breakpoints(c: &mut Criterion, g: &TestGuest) {
    // Entered on every system call: the busiest function the truth names.
    let addr = g.truth().ksym("entry_SYSCALL_64").unwrap();
    let mut group = c.benchmark_group("breakpoint_hit");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));

    {
        let mut raw = Raw {
            s: UnixStream::connect(g.gdb_socket()).unwrap(),
            buf: Vec::new(),
        };
        raw.request("qSupported:multiprocess+");
        assert_eq!(raw.request(&format!("Z1,{addr:x},1")), "OK");
        group.bench_function("raw_gdbstub_cycle_ceiling", |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    raw.send("vCont;c");
                    let stop = raw.recv();
                    let t = thread_of(&stop);
                    raw.send(&format!("vCont;s:{t}"));
                    raw.recv();
                }
                t0.elapsed()
            })
        });
        raw.request(&format!("z1,{addr:x},1"));
        raw.request("D;1");
    }

    let d = QemuDriver::attach(g.qmp_socket()).unwrap();
    d.monitor_enable(EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(Va(addr)),
        kind: BreakpointKind::Hardware,
    })
    .unwrap();
    group.bench_function("driver_event_loop", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            let mut n = 0;
            while n < iters {
                n += d
                    .wait_for_events(Duration::from_secs(1), &mut |e| {
                        black_box(e.registers.rip);
                        VmiEventResponse::default()
                    })
                    .unwrap() as u64;
            }
            t0.elapsed()
        })
    });
    drop(d);
    group.finish();
}

/// Event-loop overhead without waiting for the guest: every event is a single-step, so
/// the rate is bounded by the round trips, not by how often the guest hits a breakpoint.
fn single_steps(c: &mut Criterion, g: &TestGuest) {
    let addr = g.truth().ksym("hrtimer_nanosleep").unwrap();
    let mut group = c.benchmark_group("single_step_event");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    {
        let mut raw = Raw {
            s: UnixStream::connect(g.gdb_socket()).unwrap(),
            buf: Vec::new(),
        };
        raw.request("qSupported:multiprocess+");
        raw.request("qXfer:features:read:target.xml:0,ffb");
        for (name, with_regs) in [("raw_step_ceiling", false), ("raw_step_plus_g", true)] {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        raw.send("vCont;s:p1.1");
                        black_box(raw.recv());
                        if with_regs {
                            black_box(raw.request("g"));
                        }
                    }
                    t0.elapsed()
                })
            });
        }
        raw.request("D;1");
    }
    let d = QemuDriver::attach(g.qmp_socket()).unwrap();
    let bp = EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(Va(addr)),
        kind: BreakpointKind::Hardware,
    };
    d.monitor_enable(bp).unwrap();
    // First hit, then step forever.
    while d
        .wait_for_events(Duration::from_secs(1), &mut |_| {
            VmiEventResponse::single_step().and_remove_monitor()
        })
        .unwrap()
        == 0
    {}
    group.bench_function("driver_event_loop", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            let mut n = 0;
            while n < iters {
                n += d
                    .wait_for_events(Duration::from_secs(1), &mut |e| {
                        black_box(e.registers.rip);
                        VmiEventResponse::single_step()
                    })
                    .unwrap() as u64;
            }
            t0.elapsed()
        })
    });
    d.wait_for_events(Duration::from_secs(1), &mut |_| VmiEventResponse::default())
        .unwrap();
    drop(d);
    group.finish();
}

fn main() {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists()
        && std::env::var("VMI_REQUIRE_GUEST").as_deref() != Ok("1")
    {
        eprintln!("SKIPPED: vmi-driver-qemu benches need qemu-system-x86_64");
        return;
    }
    let Some(g) = TestGuest::boot_or_skip(GuestConfig::default().mem_mb(RAM_MB)) else {
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    reads(&mut c, &g);
    breakpoints(&mut c, &g);
    single_steps(&mut c, &g);
    c.final_summary();
}
