//! The guard process, against the real Linux test guest: a tracing process is killed with
//! `SIGKILL` (while the VM is stopped at its breakpoint, while it runs with breakpoints
//! and a watchpoint inserted, with a VM found paused, with a gdbstub the driver started)
//! and the VM must run again within a second with no breakpoint left, as found.
//!
//! Independent truth: QEMU's own state through the harness's aux QMP socket, and a raw
//! gdb client of this file asking QEMU to remove each breakpoint (`z`): QEMU answers `OK`
//! for one that is there and `E22` for one that is not.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::json;
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, MemoryAccess, Va, VcpuId, VmiEventControl,
    VmiEventResponse, VmiQueryRegisters,
};
use vmi_driver_qemu::QemuDriver;
use vmi_test_guest::{GuestConfig, TestGuest};

fn status(g: &TestGuest) -> String {
    g.qmp(json!({"execute": "query-status"}))
        .expect("query-status")["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

fn ksym(g: &TestGuest, name: &str) -> u64 {
    g.truth()
        .ksym(name)
        .unwrap_or_else(|| panic!("{name} in truth"))
}

/// The `filename` of QEMU's `gdb` chardev, if it has one (aux socket).
fn gdb_chardev(g: &TestGuest) -> Option<String> {
    let v = g.qmp(json!({"execute": "query-chardev"})).unwrap();
    v.as_array()?.iter().find_map(|c| {
        (c["label"].as_str()? == "gdb").then(|| c["filename"].as_str().map(str::to_owned))?
    })
}

/// A raw gdb client: sends each packet, returns each reply (acks and stop replies
/// skipped); ends with `D` (removes everything, resumes) when `detach`.
fn gdb_probe(socket: &Path, packets: &[String], detach: bool) -> Vec<String> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut pending = Vec::new();
    let mut request = |s: &mut UnixStream, p: &str| -> String {
        let sum = p.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        s.write_all(format!("${p}#{sum:02x}").as_bytes()).unwrap();
        loop {
            while let Some(start) = pending.iter().position(|&c| c == b'$') {
                let Some(end) = pending[start..].iter().position(|&c| c == b'#') else {
                    break;
                };
                let end = start + end;
                if pending.len() < end + 3 {
                    break;
                }
                let body = String::from_utf8_lossy(&pending[start + 1..end]).into_owned();
                pending.drain(..end + 3);
                s.write_all(b"+").unwrap();
                if body.starts_with('T') || body.starts_with('S') {
                    continue; // the stop our connection caused
                }
                return body;
            }
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).expect("gdbstub reply");
            assert!(n > 0, "gdbstub closed");
            pending.extend_from_slice(&b[..n]);
        }
    };
    let mut out: Vec<String> = packets.iter().map(|p| request(&mut s, p)).collect();
    if detach {
        out.push(request(&mut s, "D;1"));
    }
    out
}

/// Polls the aux socket until `want`, up to `limit`; the time it took.
fn wait_status(g: &TestGuest, want: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let s = status(g);
        let t = since.elapsed();
        if s == want {
            return t;
        }
        assert!(t < limit, "status {s}, not {want}, {t:?} after the kill");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The guest keeps running for `d`: a breakpoint left on `hrtimer_nanosleep` would stop
/// it within ~1 s (`vmi_loop` sleeps once a second).
fn stays_running(g: &TestGuest, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        assert_eq!(status(g), "running", "{:?} after the guard", t0.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tracing process (this test binary in helper mode), its stdout lines and, once it
/// and its guard have both exited (end of file on the shared stderr), that stderr.
struct Tracer {
    child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl Tracer {
    fn start(g: &TestGuest, mode: &str, monitors: &[(&str, u64)]) -> Tracer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "guard_child_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VMI_QEMU_GUARD_CHILD_QMP", g.qmp_socket())
            .env("VMI_QEMU_GUARD_CHILD_MODE", mode)
            .env(
                "VMI_QEMU_GUARD_CHILD_MONITORS",
                monitors
                    .iter()
                    .map(|(k, a)| format!("{k}:{a:x}"))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // its own process group, as a shell job would be
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = channel();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        Tracer {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for a stdout line with `prefix`; returns what follows it.
    fn expect(&mut self, prefix: &str) -> String {
        let t0 = Instant::now();
        loop {
            let left = Duration::from_secs(60).saturating_sub(t0.elapsed());
            match self.lines.recv_timeout(left) {
                // (the harness's "test … " may precede the first line on the same line)
                Ok(l) => {
                    if let Some(at) = l.find(prefix) {
                        return l[at + prefix.len()..].trim().to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let err = self.stderr.recv_timeout(Duration::from_secs(5));
                    panic!("no {prefix} from the tracer: {err:?}");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let err = self.stderr.recv_timeout(Duration::from_secs(5));
                    panic!("tracer exited before {prefix}: {err:?}");
                }
            }
        }
    }

    /// `SIGKILL`: no destructor, no handler runs. The instant of the kill.
    fn kill(&mut self) -> Instant {
        let t = Instant::now();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        t
    }

    /// The stderr of the tracer and its guard, once both are gone; and when that was.
    fn guard_report(&self, killed: Instant) -> (String, Duration) {
        let s = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .expect("the guard exits within 10 s");
        (s, killed.elapsed())
    }
}

/// Child half: attach, insert the monitors, run the event loop until killed. In `hold`
/// mode the handler never returns from the first event (the VM stays stopped there); in
/// `abort` mode it aborts the process there (`SIGABRT`, no destructor runs).
#[test]
fn guard_child_helper() {
    let Ok(qmp) = std::env::var("VMI_QEMU_GUARD_CHILD_QMP") else {
        return; // only as the child of the tests below
    };
    let mode = std::env::var("VMI_QEMU_GUARD_CHILD_MODE").unwrap();
    let d = QemuDriver::attach(&qmp).unwrap();
    for m in std::env::var("VMI_QEMU_GUARD_CHILD_MONITORS")
        .unwrap()
        .split(',')
    {
        let (kind, a) = m.split_once(':').unwrap();
        let address = BreakpointAddress::Virtual(Va(u64::from_str_radix(a, 16).unwrap()));
        d.monitor_enable(match kind {
            "sw" => EventMonitor::Breakpoint {
                address,
                kind: BreakpointKind::Software,
            },
            "hw" => EventMonitor::Breakpoint {
                address,
                kind: BreakpointKind::Hardware,
            },
            _ => EventMonitor::Watchpoint {
                address,
                len: 8,
                access: MemoryAccess::Write,
            },
        })
        .unwrap();
    }
    let chardevs = d.qmp("query-chardev", None).unwrap();
    let gdb = chardevs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == "gdb")
        .and_then(|c| c["filename"].as_str())
        .unwrap_or("none")
        .to_string();
    println!("GDB {gdb}");
    println!("READY");
    loop {
        d.wait_for_events(Duration::from_millis(100), &mut |_| {
            if mode != "run" {
                println!("HIT");
                std::io::stdout().flush().unwrap();
                if mode == "abort" {
                    std::process::abort();
                }
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            VmiEventResponse::default()
        })
        .unwrap();
    }
}

/// Starts a gdbstub of the test's own (QEMU has none of the driver's left) to look at
/// breakpoints with; breakpoints survive a gdbserver restart in QEMU.
fn probe_socket(g: &TestGuest) -> PathBuf {
    let probe = g.dir().join("probe-gdb.sock");
    g.hmp(&format!(
        "gdbserver unix:{},server=on,wait=off",
        probe.display()
    ))
    .unwrap();
    probe
}

/// `unix:/dir/gdb.sock,server=on` (or `disconnected:unix:…`) → the socket path.
fn chardev_path(filename: &str) -> PathBuf {
    let f = filename.strip_prefix("disconnected:").unwrap_or(filename);
    PathBuf::from(f.strip_prefix("unix:").unwrap().split(',').next().unwrap())
}

/// The directory of a gdbstub socket the driver started: `vmi-qemu-<16 hex>`, 0700, ours.
fn assert_private_dir(socket: &Path) -> PathBuf {
    let dir = socket.parent().unwrap().to_path_buf();
    let name = dir.file_name().unwrap().to_str().unwrap();
    let hex = name
        .strip_prefix("vmi-qemu-")
        .unwrap_or_else(|| panic!("{name}"));
    assert_eq!(hex.len(), 16, "{name}");
    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{name}");
    let m = std::fs::symlink_metadata(&dir).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{}", dir.display());
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(m.uid(), me);
    dir
}

#[test]
fn killed_tracer_leaves_guest_running_without_breakpoints() {
    let Some(g) = TestGuest::boot_or_skip(GuestConfig::default().mem_mb(256)) else {
        return;
    };
    let nanosleep = ksym(&g, "hrtimer_nanosleep");
    let do_nanosleep = ksym(&g, "do_nanosleep");
    let never = ksym(&g, "asm_exc_divide_error");
    let banner = ksym(&g, "linux_banner");
    let gdb_socket = g.gdb_socket().to_path_buf();
    let e22 = |r: &[String]| r.iter().all(|x| x == "E22");
    let mut figures = Vec::new();

    // 1. Killed while the VM is stopped at its breakpoint (software and hardware).
    let mut t = Tracer::start(&g, "hold", &[("sw", nanosleep), ("hw", do_nanosleep)]);
    t.expect("READY");
    t.expect("HIT");
    assert_eq!(
        status(&g),
        "debug",
        "the tracer holds the VM at its breakpoint"
    );
    let killed = t.kill();
    let to_running = wait_status(&g, "running", killed, Duration::from_secs(1));
    let (report, done) = t.guard_report(killed);
    assert!(report.contains("vmi-driver-qemu guard:"), "{report}");
    assert!(
        report.contains("breakpoints removed; VM running"),
        "{report}"
    );
    figures.push(format!(
        "stopped at a breakpoint: running {to_running:?} after SIGKILL, guard done {done:?}"
    ));
    stays_running(&g, Duration::from_millis(1500));
    let r = gdb_probe(
        &gdb_socket,
        &[
            format!("z0,{nanosleep:x},1"),
            format!("z1,{do_nanosleep:x},1"),
        ],
        true,
    );
    assert!(e22(&r[..2]), "breakpoints left behind: {r:?}");
    wait_status(&g, "running", Instant::now(), Duration::from_secs(1));

    // 2. Killed while the VM runs with a breakpoint and a watchpoint inserted.
    let mut t = Tracer::start(&g, "run", &[("sw", never), ("ww", banner)]);
    t.expect("READY");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&g), "running");
    let killed = t.kill();
    let (report, done) = t.guard_report(killed);
    assert!(
        report.contains("breakpoints removed; VM running"),
        "{report}"
    );
    assert!(done < Duration::from_secs(1), "guard took {done:?}");
    assert_eq!(status(&g), "running");
    figures.push(format!(
        "running with breakpoints: guard done {done:?} after SIGKILL"
    ));
    let r = gdb_probe(
        &gdb_socket,
        &[format!("z0,{never:x},1"), format!("z2,{banner:x},8")],
        true,
    );
    assert!(e22(&r[..2]), "breakpoint or watchpoint left behind: {r:?}");
    wait_status(&g, "running", Instant::now(), Duration::from_secs(1));

    // 3. A VM found paused: the tracer resumes it and holds it at a breakpoint; after
    //    the kill it is stopped again, as found, without the breakpoint.
    g.pause().unwrap();
    let mut t = Tracer::start(&g, "hold", &[("sw", nanosleep)]);
    t.expect("READY");
    t.expect("HIT");
    let killed = t.kill();
    let (report, done) = t.guard_report(killed);
    assert!(report.contains("VM left stopped, as found"), "{report}");
    figures.push(format!("found paused: guard done {done:?} after SIGKILL"));
    let st = status(&g);
    assert!(st == "paused" || st == "debug", "{st}");
    let r = gdb_probe(&gdb_socket, &[format!("z0,{nanosleep:x},1")], false);
    assert!(e22(&r), "breakpoint left behind: {r:?}");
    let st = status(&g);
    assert!(st == "paused" || st == "debug", "{st}");
    g.resume().unwrap();
    stays_running(&g, Duration::from_millis(1500));

    // 4. No gdbstub in QEMU: the driver starts one on a socket in a private directory;
    //    the guard stops it and removes the directory.
    g.hmp("gdbserver none").unwrap();
    assert_eq!(gdb_chardev(&g), None);
    let mut t = Tracer::start(&g, "hold", &[("sw", nanosleep)]);
    let private = chardev_path(&t.expect("GDB"));
    let dir = assert_private_dir(&private);
    t.expect("READY");
    t.expect("HIT");
    let killed = t.kill();
    let to_running = wait_status(&g, "running", killed, Duration::from_secs(1));
    let (report, done) = t.guard_report(killed);
    assert!(
        report.contains("breakpoints removed; VM running"),
        "{report}"
    );
    figures.push(format!(
        "private gdbstub: running {to_running:?} after SIGKILL, guard done {done:?}"
    ));
    assert_eq!(
        gdb_chardev(&g),
        None,
        "the guard stops the gdbstub the driver started"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Breakpoints outlive a gdbserver restart in QEMU: look with a fresh one.
    let r = gdb_probe(&probe_socket(&g), &[format!("z0,{nanosleep:x},1")], true);
    assert!(e22(&r[..1]), "breakpoint left behind: {r:?}");
    g.hmp("gdbserver none").unwrap();
    stays_running(&g, Duration::from_millis(1500));

    // 5. The tracer crashes at its breakpoint (abort: SIGABRT, no unwinding).
    let mut t = Tracer::start(&g, "abort", &[("sw", nanosleep)]);
    let dir = assert_private_dir(&chardev_path(&t.expect("GDB")));
    t.expect("READY");
    t.expect("HIT");
    let hit = Instant::now();
    let to_running = wait_status(&g, "running", hit, Duration::from_secs(1));
    let (report, _) = t.guard_report(hit);
    assert!(
        report.contains("breakpoints removed; VM running"),
        "{report}"
    );
    figures.push(format!(
        "abort at a breakpoint: running {to_running:?} after the hit"
    ));
    assert!(!dir.exists(), "{} left behind", dir.display());
    stays_running(&g, Duration::from_millis(1500));

    // 6. SIGTERM to the tracer's whole process group (a shell's job control, a service
    //    manager): the guard has left the group and cleans up after the tracer.
    let mut t = Tracer::start(&g, "hold", &[("hw", do_nanosleep)]);
    let dir = assert_private_dir(&chardev_path(&t.expect("GDB")));
    t.expect("READY");
    t.expect("HIT");
    let killed = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", t.child.id())])
        .status()
        .unwrap();
    assert!(ok.success());
    t.child.wait().unwrap();
    let to_running = wait_status(&g, "running", killed, Duration::from_secs(1));
    let (report, _) = t.guard_report(killed);
    assert!(
        report.contains("breakpoints removed; VM running"),
        "{report}"
    );
    figures.push(format!(
        "SIGTERM to the process group: running {to_running:?} after it"
    ));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let r = gdb_probe(&probe_socket(&g), &[format!("z1,{do_nanosleep:x},1")], true);
    assert!(e22(&r[..1]), "breakpoint left behind: {r:?}");
    g.hmp("gdbserver none").unwrap();

    // 7. A clean detach with a private gdbstub: stopped and removed by the driver itself
    //    (the guard is told and leaves the VM alone).
    let d = QemuDriver::attach(g.qmp_socket()).unwrap();
    d.registers(VcpuId(0)).unwrap();
    let private = chardev_path(&gdb_chardev(&g).expect("the driver's gdbstub"));
    let dir = assert_private_dir(&private);
    drop(d);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_eq!(gdb_chardev(&g), None);
    assert_eq!(status(&g), "running");

    for f in figures {
        eprintln!("guard: {f}");
    }
}
