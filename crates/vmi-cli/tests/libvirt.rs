//! `vmi` on a domain run by libvirtd (`libvirt:NAME`): the test guest defined as a
//! transient TCG domain with libvirt's default (anonymous) RAM, so that monitor commands
//! go through libvirt and memory through the QEMU process; `ps`, `trace`, `dump` and
//! `inject` compared with the guest's own truth. The domain is destroyed at the end, also on
//! failure (and a libvirtd the harness had to start is stopped).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{json, vmi};
use vmi_test_guest::{LibvirtConfig, LibvirtGuest, Truth, cache, guest_required};

/// `ps` shows every long-lived task of the truth (init and the `vmi_*` processes) with
/// the pid, parent, name and uid the guest printed.
fn check_ps(target: &str, truth: &Truth) {
    let ps = json(target, &["ps"]);
    let ps = ps.as_array().expect("array");
    let stable: Vec<_> = truth
        .tasks
        .iter()
        .filter(|t| t.comm.starts_with("vmi_") || t.pid == 1)
        .collect();
    assert!(stable.len() >= 6, "the truth lists the test processes");
    for t in stable {
        let e = ps
            .iter()
            .find(|e| e["pid"] == t.pid)
            .unwrap_or_else(|| panic!("{target}: pid {} ({}) missing from ps", t.pid, t.comm));
        assert_eq!(e["name"], t.comm.as_str(), "{target}: name of {}", t.pid);
        assert_eq!(e["ppid"], t.ppid, "{target}: ppid of {}", t.pid);
        assert_eq!(e["uid"], t.uid, "{target}: uid of {}", t.pid);
    }
    let sleeper = truth.process("vmi_sleeper").expect("vmi_sleeper in truth");
    let e = ps.iter().find(|e| e["pid"] == sleeper.pid).unwrap();
    assert_eq!(e["cmdline"], sleeper.argv.join(" "));
}

/// The domain runs, as libvirt and QEMU both say, and has no gdbstub directory of ours
/// left in its libvirt directory.
fn check_left_running(guest: &LibvirtGuest, after: &str) {
    assert_eq!(
        guest.state().unwrap(),
        "running",
        "libvirt's state after {after}"
    );
    let status = guest.qmp(r#"{"execute":"query-status"}"#).unwrap();
    assert_eq!(
        status["return"]["status"], "running",
        "QEMU's state after {after}"
    );
    let dirs: Vec<_> = std::fs::read_dir("/var/lib/libvirt/qemu")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(guest.name()))
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmi-qemu-"))
        .collect();
    assert!(
        dirs.is_empty(),
        "gdbstub directories left after {after}: {dirs:?}"
    );
}

#[test]
fn ps_trace_and_dump_through_libvirt() {
    let Some(guest) = LibvirtGuest::boot_or_skip(LibvirtConfig::default()) else {
        return;
    };
    let truth = guest.truth().clone();
    let target = format!("libvirt:{}", guest.name());

    // ps, by libvirt's default URI and by an explicit one.
    check_ps(&target, &truth);
    check_left_running(&guest, "ps");
    let explicit = format!("libvirt+qemu:///system:{}", guest.name());
    let info = json(&explicit, &["info"]);
    assert_eq!(info["live"], true);
    assert_eq!(info["kernel_release"], guest.kernel_release());

    // trace: two hits on the function vmi_loop's `sleep 1` calls (a breakpoint through
    // a gdbstub started in the domain's directory), then the guest runs on.
    common::trace_two_sleeps(&target, truth.ksym("hrtimer_nanosleep").unwrap());
    // No breakpoint left behind: vmi_loop sleeps every second, so a breakpoint still
    // in QEMU's gdbstub would have stopped the VM (state `debug`) by now.
    std::thread::sleep(Duration::from_millis(2500));
    check_left_running(&guest, "trace");

    // A `vmi trace` killed with SIGKILL at a hit: its guard process removes the
    // breakpoint and resumes the domain through virsh (it cannot call libvirt), and the
    // next attach replaces the gdbstub whose socket directory the guard removed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["--target", &target, "--json", "trace", "hrtimer_nanosleep"])
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.contains("\"rip\""),
        "a first hit before the kill: {first:?}"
    );
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while guest.state().unwrap() != "running" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2500));
    check_left_running(&guest, "a SIGKILL of trace");
    let out = vmi(&target, &["trace", "hrtimer_nanosleep", "--count", "1"]);
    assert!(
        out.status.success(),
        "trace after a killed trace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(2500));
    check_left_running(&guest, "the trace after a killed trace");

    // dump: the domain's memory through libvirt into our ELF writer; the dump shows the
    // same processes.
    let dump = guest.dir().join("guest.elf");
    let out = vmi(&target, &["dump", dump.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_left_running(&guest, "dump");
    check_ps(dump.to_str().unwrap(), &truth);

    check_python(&guest, &truth);

    // inject: vmi_loop (back in user mode every second) reads a file through its own
    // system calls, over a writable attach through libvirt; the guest runs on after.
    let loop_pid = truth.process("vmi_loop").expect("vmi_loop in truth").pid;
    let out = vmi(
        &target,
        &[
            "inject",
            "--pid",
            &loop_pid.to_string(),
            "cat",
            "/proc/sys/kernel/osrelease",
        ],
    );
    assert!(
        out.status.success(),
        "inject through libvirt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", guest.kernel_release()),
        "inject cat /proc/sys/kernel/osrelease through libvirt"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registers and stack verified"),
        "the thread restored and verified: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(2500));
    check_left_running(&guest, "inject");

    // A domain libvirt does not know: one clear error line, the target exit code.
    let out = vmi("libvirt:vmi-no-such-domain", &["ps"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot attach to libvirt domain vmi-no-such-domain"),
        "{err}"
    );
}

/// The Python package on the same domain: `vmi.open("libvirt:NAME")` lists the truth's
/// processes, and Volatility's own `linux.pslist` runs through `vmi+libvirt://NAME`.
/// Needs the project venv of `scripts/setup.sh` (a visible skip without it, a failure
/// with `VMI_REQUIRE_GUEST=1`).
fn check_python(guest: &LibvirtGuest, truth: &Truth) {
    let python = cache::workspace_root().join("target/venv/bin/python");
    let usable = python.exists()
        && Command::new(&python)
            .args(["-c", "import vmi, volatility3"])
            .status()
            .is_ok_and(|s| s.success());
    if !usable {
        let why = format!(
            "{} cannot import vmi and volatility3 (scripts/setup.sh)",
            python.display()
        );
        assert!(!guest_required(), "VMI_REQUIRE_GUEST=1 but {why}");
        eprintln!("SKIPPED: the Python part of the libvirt test: {why}");
        return;
    }
    let script = "import json, sys, vmi\n\
                  with vmi.open(sys.argv[1]) as t:\n\
                  \x20   print(json.dumps([[p.pid, p.name] for p in t.os.processes()]))\n";
    let out = Command::new(&python)
        .args(["-c", script, &format!("libvirt:{}", guest.name())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vmi.open(libvirt:...): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<(u32, String)> = serde_json::from_slice(&out.stdout).unwrap();
    for t in truth.tasks.iter().filter(|t| t.comm.starts_with("vmi_")) {
        assert!(
            listed
                .iter()
                .any(|(pid, name)| *pid == t.pid && *name == t.comm),
            "Python: pid {} ({}) missing from {listed:?}",
            t.pid,
            t.comm
        );
    }

    let plugins = Command::new(&python)
        .args(["-m", "vmi.volatility", "--plugin-dir"])
        .output()
        .unwrap();
    assert!(plugins.status.success());
    let plugins = String::from_utf8_lossy(&plugins.stdout).trim().to_owned();
    let cache_dir = guest.dir().join("vol-cache");
    std::fs::create_dir_all(&cache_dir).unwrap();
    let location = format!("vmi+libvirt://{}", guest.name());
    let vol = "import sys\nfrom volatility3.cli import main\nsys.argv[0] = 'vol'\nmain()\n";
    let out = Command::new(&python)
        .args(["-c", vol, "-q", "--cache-path"])
        .arg(&cache_dir)
        .args(["-p", &plugins, "-f", &location, "linux.pslist"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vol linux.pslist on {location}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sleeper = truth.process("vmi_sleeper").expect("vmi_sleeper in truth");
    assert!(
        text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&sleeper.pid.to_string().as_str()) && f.contains(&"vmi_sleeper")
        }),
        "vol linux.pslist on {location} lacks vmi_sleeper (pid {}): {text}",
        sleeper.pid
    );
    assert_eq!(
        guest.state().unwrap(),
        "running",
        "libvirt's state after vol"
    );
}
