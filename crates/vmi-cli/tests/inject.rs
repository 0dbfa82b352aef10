//! `vmi inject` against the live test guest: `cat` of files whose bytes the guest wrote
//! (known content), into a process blocked in `wait4` (`vmi_loop`) and into a busy one
//! (a shell loop started for the test); the thread's user registers and the stack bytes
//! read back after the restore equal those saved; the process lives on; refusals (kernel
//! thread, a thread that never returns to user mode, `put` without `--allow-write`) leave
//! the guest as found; `get` and `put` copy exactly; the kernel's code is byte-identical
//! after all sessions.

mod common;

use std::process::Output;
use std::time::Duration;

use common::vmi;
use serde_json::Value;
use vmi_test_guest::{GuestConfig, TestGuest};

/// The guest kernel's code (`Kernel code` of `/proc/iomem`), read from the RAM file.
fn kernel_code(g: &TestGuest) -> Vec<u8> {
    let r = g
        .truth()
        .iomem
        .iter()
        .find(|r| r.name == "Kernel code")
        .expect("Kernel code in /proc/iomem");
    let off = vmi_test_guest::gpa_to_file_offset(g.env().mem_size, r.start).unwrap();
    let bytes = std::fs::read(g.mem_file()).unwrap();
    bytes[usize::try_from(off).unwrap()..][..usize::try_from(r.end - r.start + 1).unwrap()].to_vec()
}

/// The last JSON line of stderr (the summary), after checking every step line parses.
fn summary(out: &Output) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 2, "{err}");
    for s in &lines[..lines.len() - 1] {
        assert!(s["syscall"].is_string() && s["ret"].is_i64(), "{s}");
    }
    lines[lines.len() - 1].clone()
}

/// `cat` through `vmi inject` must print `want` exactly and restore the thread.
fn cat_ok(live: &str, pid: u32, path: &str, want: &[u8]) -> Value {
    let started = std::time::Instant::now();
    let out = vmi(
        live,
        &["--json", "inject", "--pid", &pid.to_string(), "cat", path],
    );
    eprintln!(
        "vmi inject cat {path}: {:?} (whole command)",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "inject cat {path} into {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), want.len(), "{path}");
    assert!(out.stdout == want, "{path}: bytes differ");
    let s = summary(&out);
    eprintln!("{path} into {pid}: {s}");
    assert_eq!(s["registers_restored"], true, "{s}");
    assert_eq!(s["memory_restored"], true, "{s}");
    s
}

fn alive(g: &TestGuest, pid: u32) {
    let t = Duration::from_secs(60);
    let out = g
        .run(
            &format!("kill -0 {pid} && cut -d' ' -f3 /proc/{pid}/stat"),
            t,
        )
        .unwrap();
    assert_eq!(out.rc, 0, "pid {pid} gone: {}", out.output);
    let state = out.output.trim();
    assert!(["R", "S"].contains(&state), "pid {pid} in state {state}");
}

#[test]
fn inject_cat_restores_the_thread_and_refuses_clearly() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let live = format!("qemu:{}", guest.qmp_socket().display());
    let t = Duration::from_secs(60);
    let code = kernel_code(&guest);

    // Known content: a short file and one of many read chunks (`seq`, 108 894 bytes).
    let small = b"vmi inject\nline two\n";
    assert_eq!(
        guest
            .run("printf 'vmi inject\\nline two\\n' > /tmp/vmi-small", t)
            .unwrap()
            .rc,
        0
    );
    assert_eq!(guest.run("seq 1 20000 > /tmp/vmi-seq", t).unwrap().rc, 0);
    let seq: Vec<u8> = (1..=20000)
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect();

    // A process blocked in wait4 most of the time: it returns to user mode every second.
    let loop_pid = guest.truth().process("vmi_loop").expect("vmi_loop").pid;
    let s = cat_ok(&live, loop_pid, "/tmp/vmi-small", small);
    // openat, read (data), read (0), close.
    assert_eq!(s["steps"], 4, "{s}");
    // 106 KiB: one stack-sized read, then the buffer the injector maps for the rest
    // (and unmaps: the process's maps are the same afterwards).
    let maps = |g: &TestGuest| {
        g.run(&format!("cat /proc/{loop_pid}/maps"), t)
            .unwrap()
            .output
    };
    let before = maps(&guest);
    let s = cat_ok(&live, loop_pid, "/tmp/vmi-seq", &seq);
    let steps = s["steps"].as_u64().unwrap();
    assert!(steps <= 8, "{s}");
    assert_eq!(maps(&guest), before, "the buffer is unmapped");
    let out = vmi(
        &live,
        &[
            "--json",
            "inject",
            "--pid",
            &loop_pid.to_string(),
            "--no-buffer",
            "cat",
            "/tmp/vmi-seq",
        ],
    );
    assert!(out.stdout == seq, "--no-buffer: bytes differ");
    let s = summary(&out);
    assert!(s["steps"].as_u64().unwrap() > 10, "--no-buffer: {s}");
    alive(&guest, loop_pid);
    // `get`: the same bytes into a local file.
    let local = guest.dir().join("vmi-seq.copy");
    let out = vmi(
        &live,
        &[
            "inject",
            "--pid",
            &loop_pid.to_string(),
            "get",
            "/tmp/vmi-seq",
            local.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(std::fs::read(&local).unwrap() == seq, "get: bytes differ");
    // A failed `get` leaves no local file.
    let missing = guest.dir().join("missing.copy");
    let out = vmi(
        &live,
        &[
            "inject",
            "--pid",
            &loop_pid.to_string(),
            "get",
            "/nonexistent",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists());

    // `put`: refused without --allow-write (nothing created), then the guest's own `cat`
    // and `wc -c` see exactly the local bytes.
    let text: String = (1..=1500).map(|n| format!("put line {n}\n")).collect();
    let src = guest.dir().join("put.src");
    std::fs::write(&src, &text).unwrap();
    let put = |extra: &[&str]| {
        let pid = loop_pid.to_string();
        let mut a = vec!["inject", "--pid", &pid];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["put", src.to_str().unwrap(), "/tmp/vmi-put"]);
        vmi(&live, &a)
    };
    let out = put(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-write"));
    assert_eq!(guest.run("test -e /tmp/vmi-put", t).unwrap().rc, 1);
    let out = put(&["--allow-write"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = guest.run("wc -c < /tmp/vmi-put", t).unwrap();
    assert_eq!(size.output.trim(), text.len().to_string());
    let back = guest.run("cat /tmp/vmi-put", t).unwrap();
    assert_eq!(back.output.trim_end(), text.trim_end());
    alive(&guest, loop_pid);
    // 1 MiB of random bytes (through the buffer vmi maps): the guest's own sha256sum.
    let blob: Vec<u8> = {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let blob_src = guest.dir().join("put.bin");
    std::fs::write(&blob_src, &blob).unwrap();
    let out = vmi(
        &live,
        &[
            "--json",
            "inject",
            "--pid",
            &loop_pid.to_string(),
            "--allow-write",
            "put",
            blob_src.to_str().unwrap(),
            "/tmp/vmi-put.bin",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert!(
        s["steps"].as_u64().unwrap() <= 8,
        "one write through the buffer: {s}"
    );
    let host = std::process::Command::new("sha256sum")
        .arg(&blob_src)
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    let want = host.split_whitespace().next().unwrap();
    let got = guest.run("sha256sum /tmp/vmi-put.bin", t).unwrap().output;
    assert_eq!(got.split_whitespace().next(), Some(want), "{got}");
    assert_eq!(guest.run("rm /tmp/vmi-put.bin", t).unwrap().rc, 0);
    alive(&guest, loop_pid);

    // `exec`: refused without --allow-write; then a sibling of vmi_loop runs the
    // command: the guest sees the pid vmi printed, and so does `vmi ps`.
    let exec = |extra: &[&str], cmd: &[&str]| {
        let pid = loop_pid.to_string();
        let mut a = vec!["inject", "--pid", &pid];
        a.extend_from_slice(extra);
        a.push("exec");
        a.push("--");
        a.extend_from_slice(cmd);
        vmi(&live, &a)
    };
    let script = [
        "/bin/sh",
        "-c",
        "echo $$ > /tmp/vmi-exec.pid; exec sleep 1000",
    ];
    let out = exec(&[], &script);
    assert_eq!(out.status.code(), Some(2));
    let out = exec(&["--allow-write"], &script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("exec prints the new pid");
    let mut seen = String::new();
    for _ in 0..40 {
        seen = guest
            .run("cat /tmp/vmi-exec.pid 2>/dev/null || true", t)
            .unwrap()
            .output
            .trim()
            .to_string();
        if !seen.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(seen, new_pid.to_string());
    // The shell wrote the file before its `exec sleep`: wait (bounded) for the exec, so
    // that the guest's state no longer changes when vmi reads it.
    let mut cmdline = String::new();
    for _ in 0..40 {
        cmdline = guest
            .run(&format!("tr '\\0' ' ' < /proc/{new_pid}/cmdline; echo"), t)
            .unwrap()
            .output;
        if cmdline.trim() == "sleep 1000" {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(cmdline.trim(), "sleep 1000");
    alive(&guest, new_pid);
    alive(&guest, loop_pid);
    let ps = vmi(&live, &["--json", "ps"]);
    let procs: Value = serde_json::from_slice(&ps.stdout).expect("ps json");
    let p = procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == new_pid)
        .unwrap_or_else(|| panic!("vmi ps does not show {new_pid}"));
    assert_eq!(p["argv"], serde_json::json!(["sleep", "1000"]), "{p}");
    assert_eq!(guest.run(&format!("kill {new_pid}"), t).unwrap().rc, 0);
    // A program that does not exist: execve's error, the child gone, vmi_loop fine.
    let out = exec(&["--allow-write"], &["/nonexistent/prog"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ENOENT") && err.contains("code 127"), "{err}");
    alive(&guest, loop_pid);

    // A busy process, in user space all the time: 20 injections in a row.
    let busy = guest
        .run("sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!", t)
        .unwrap();
    assert_eq!(busy.rc, 0);
    let busy_pid: u32 = busy.output.trim().parse().expect("busy pid");
    for _ in 0..20 {
        cat_ok(&live, busy_pid, "/tmp/vmi-small", small);
    }
    alive(&guest, busy_pid);
    alive(&guest, loop_pid);

    // A missing file: the guest's error, the thread restored.
    let out = vmi(
        &live,
        &[
            "inject",
            "--pid",
            &loop_pid.to_string(),
            "cat",
            "/nonexistent",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ENOENT"), "{err}");

    // Refused: a kernel thread (kthreadd is pid 2).
    let out = vmi(&live, &["inject", "--pid", "2", "cat", "/tmp/vmi-small"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernel thread"), "{err}");
    assert!(out.stdout.is_empty());

    // Refused: a thread blocked for good (sleep 100000) never reaches user mode.
    let sleeper = guest
        .truth()
        .process("vmi_sleeper")
        .expect("vmi_sleeper")
        .pid;
    let out = vmi(
        &live,
        &[
            "inject",
            "--pid",
            &sleeper.to_string(),
            "--timeout",
            "3",
            "cat",
            "/tmp/vmi-small",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not return to user mode"), "{err}");
    alive(&guest, sleeper);

    assert_eq!(guest.run(&format!("kill {busy_pid}"), t).unwrap().rc, 0);
    let after = kernel_code(&guest);
    let diff = code.iter().zip(&after).position(|(a, b)| a != b);
    assert!(diff.is_none(), "kernel code changed at offset {diff:?}");
}

/// Runs `vmi --json inject ARGS…` in the background, stdout and stderr piped.
fn spawn_inject(live: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_vmi"))
        .arg("--target")
        .arg(live)
        .arg("--json")
        .arg("inject")
        .args(args)
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vmi")
}

/// SIGKILLs `child` and returns its stderr, read until every holder closed it: the
/// guard process inherits it and closes it when its clean-up is done.
fn kill_and_wait_for_guard(mut child: std::process::Child) -> String {
    use std::io::Read;
    let mut err = child.stderr.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("the guard did not finish within 90 s")
}

/// The value the counting loop last wrote (it renames each value into place: a read
/// never sees a half-written file).
fn count(g: &TestGuest) -> u64 {
    g.read_number("/tmp/vmi-count", Duration::from_secs(10))
        .unwrap()
}

/// The counting loop lives and counts on.
fn counts_on(g: &TestGuest, pid: u32, what: &str) {
    alive(g, pid);
    let a = count(g);
    std::thread::sleep(Duration::from_millis(500));
    let b = count(g);
    assert!(b > a, "{what}: the loop stopped counting ({a} then {b})");
}

#[test]
fn a_vmi_killed_mid_recipe_leaves_the_thread_given_back_by_its_guard() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let live = format!("qemu:{}", guest.qmp_socket().display());
    let t = Duration::from_secs(60);
    let setup = "printf 'vmi inject\\nline two\\n' > /tmp/vmi-small && mkfifo /tmp/vmi-fifo \
                 && dd if=/dev/urandom of=/tmp/vmi-big bs=1024 count=1024 2>/dev/null";
    assert_eq!(guest.run(setup, t).unwrap().rc, 0);
    // The target counts in a shell loop: registers or stack given back wrong would crash
    // it or stop the count.
    let target = guest
        .run(
            "sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/vmi-count.t; \
             mv /tmp/vmi-count.t /tmp/vmi-count; done' \
             >/dev/null 2>&1 & echo $!",
            t,
        )
        .unwrap();
    let pid: u32 = target.output.trim().parse().expect("target pid");
    let pids = pid.to_string();
    counts_on(&guest, pid, "before");

    // 1. Killed while the borrowed thread is inside the injected `openat` of a FIFO (it
    // blocks until a writer comes): the guard waits for the thread to come back.
    let child = spawn_inject(&live, &["--pid", &pids, "cat", "/tmp/vmi-fifo"]);
    let blocked = (0..120).any(|_| {
        let s = guest
            .run(&format!("cat /proc/{pid}/syscall"), t)
            .map(|o| o.output)
            .unwrap_or_default();
        if s.split_whitespace().next() == Some("257") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
        false
    });
    assert!(blocked, "the thread never blocked in the injected openat");
    let (tx, rx) = std::sync::mpsc::channel();
    let killer = std::thread::spawn(move || tx.send(kill_and_wait_for_guard(child)));
    // A writer lets the open return; the guard then gives the thread back.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(guest.run("echo x > /tmp/vmi-fifo", t).unwrap().rc, 0);
    let err = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("guard report");
    killer.join().unwrap().unwrap();
    eprintln!("killed in openat: {err}");
    assert!(
        err.contains("borrowed thread given back (registers and memory read back equal)"),
        "{err}"
    );
    counts_on(&guest, pid, "after the kill in openat");
    cat_ok(&live, pid, "/tmp/vmi-small", b"vmi inject\nline two\n");

    // 2. Killed at whatever point a 1 MiB `cat` (about 200 system calls) has reached:
    // stopped at a step's return, in a step, taking the thread, or not yet started.
    for delay_ms in [700u64, 1100, 1500, 1900] {
        // Without the buffer: about 200 steps, so the kill lands mid-recipe.
        let child = spawn_inject(
            &live,
            &["--pid", &pids, "--no-buffer", "cat", "/tmp/vmi-big"],
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        let err = kill_and_wait_for_guard(child);
        eprintln!("killed after {delay_ms} ms: {err}");
        for bad in [
            "left borrowed",
            "not given back",
            "refused",
            "differs",
            "may remain",
        ] {
            assert!(!err.contains(bad), "killed after {delay_ms} ms: {err}");
        }
        counts_on(&guest, pid, &format!("after a kill at {delay_ms} ms"));
    }
    cat_ok(&live, pid, "/tmp/vmi-small", b"vmi inject\nline two\n");
    let log = guest.run(
        "dmesg | grep -E 'segfault|general protection|traps:' || true",
        t,
    );
    let log = log.unwrap().output;
    assert!(!log.contains(&format!("[{pid}]")), "{log}");
    assert_eq!(guest.run(&format!("kill {pid}"), t).unwrap().rc, 0);
}

#[test]
fn inject_tid_borrows_a_worker_when_the_main_thread_waits_and_calls_its_functions() {
    let cfg = GuestConfig::default()
        .userland(vmi_test_guest::Userland::Realistic)
        .control(true);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let live = format!("qemu:{}", guest.qmp_socket().display());
    let t = Duration::from_secs(60);
    assert_eq!(
        guest
            .run("printf 'from a worker\\n' > /tmp/vmi-small", t)
            .unwrap()
            .rc,
        0
    );
    // A server's shape: the main thread waits in join for good, a worker wakes every
    // 100 ms.
    let py = "python3 -c \"import threading, time; w = threading.Thread(target=lambda: \
              [time.sleep(0.1) for _ in iter(int, 1)]); w.start(); w.join()\" \
              >/dev/null 2>&1 & echo $!";
    let out = guest.run(py, t).unwrap();
    let pid: u32 = out.output.trim().parse().expect("python pid");
    let worker: u32 = (0..100)
        .find_map(|_| {
            let l = guest
                .run(&format!("ls /proc/{pid}/task"), t)
                .unwrap()
                .output;
            let tids: Vec<u32> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if tids.len() == 2 {
                return tids.into_iter().find(|&x| x != pid);
            }
            std::thread::sleep(Duration::from_millis(100));
            None
        })
        .expect("the worker thread");
    let (pids, tids) = (pid.to_string(), worker.to_string());

    // The main thread never comes back to user mode: refused, and the error names the
    // worker.
    let out = vmi(
        &live,
        &[
            "inject",
            "--pid",
            &pids,
            "--timeout",
            "3",
            "cat",
            "/tmp/vmi-small",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not return to user mode"), "{err}");
    assert!(
        err.contains(&format!("other threads of the process: {worker}")),
        "{err}"
    );

    // The worker: exact bytes, its registers and stack restored.
    for _ in 0..3 {
        let out = vmi(
            &live,
            &[
                "--json",
                "inject",
                "--pid",
                &pids,
                "--tid",
                &tids,
                "cat",
                "/tmp/vmi-small",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"from a worker\n");
        let s = summary(&out);
        assert_eq!(s["tid"], worker, "{s}");
        assert_eq!(s["pid"], pid, "{s}");
        assert_eq!(s["registers_restored"], true, "{s}");
        assert_eq!(s["memory_restored"], true, "{s}");
    }

    // Functions of the process, called in the worker: getpid (libc), strlen (an
    // indirect function: resolver first), refused without --allow-write, unknown.
    let call = |extra: &[&str]| {
        let mut a = vec!["inject", "--pid", &pids, "--tid", &tids];
        a.extend_from_slice(extra);
        vmi(&live, &a)
    };
    let out = call(&["call", "libc.so.6:getpid"]);
    assert_eq!(out.status.code(), Some(2), "without --allow-write");
    let out = call(&["--allow-write", "call", "libc.so.6:getpid"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{pid}\n"));
    let out = call(&["--allow-write", "call", "libc:strlen", "introspection"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "13\n");
    let out = call(&["--allow-write", "call", "no_such_function_here"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no function no_such_function_here"), "{err}");

    // A thread the process does not have.
    let out = vmi(
        &live,
        &[
            "inject",
            "--pid",
            &pids,
            "--tid",
            "999999",
            "cat",
            "/tmp/vmi-small",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {pid} has no thread 999999")),
        "{err}"
    );

    // Both threads live on, in their usual states.
    let state = |tid: u32| {
        guest
            .run(&format!("cut -d' ' -f3 /proc/{pid}/task/{tid}/stat"), t)
            .unwrap()
            .output
            .trim()
            .to_owned()
    };
    assert_eq!(state(pid), "S");
    assert!(["R", "S"].contains(&state(worker).as_str()));
    let _ = guest.run(&format!("kill {pid}"), t);
}
