//! `vmi watch procs` and `vmi trace --syscall` against the live test guest: the `sleep 1`
//! that the guest's `vmi_loop` script runs every second must appear with its exact argv,
//! and after every session (normal end, Ctrl-C) the guest runs with no breakpoint left.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmi_test_guest::{GuestConfig, TestGuest};

fn vmi(target: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
        .arg("--target")
        .arg(target)
        .args(args)
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .output()
        .expect("run vmi")
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "vmi failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn status(g: &TestGuest) -> String {
    g.qmp(serde_json::json!({"execute": "query-status"}))
        .unwrap()["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// The guest keeps running `sleep 1` after a session: a fresh `watch` sees an exec.
fn assert_runs_clean(g: &TestGuest, live: &str) {
    assert_eq!(status(g), "running");
    let events = lines(&vmi(live, &["--json", "watch", "procs", "--count", "3"]));
    assert_eq!(events.len(), 3);
}

#[test]
fn watch_procs_reports_vmi_loop_sleeps() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    let live = format!("qemu:{}", guest.qmp_socket().display());
    let loop_pid = u64::from(guest.truth().process("vmi_loop").expect("vmi_loop").pid);
    let events = lines(&vmi(&live, &["--json", "watch", "procs", "--count", "20"]));
    for e in &events {
        eprintln!("{e}");
    }
    assert_eq!(events.len(), 20);
    // Each `sleep 1` of vmi_loop: fork (child of vmi_loop), exec with the exact argv,
    // exit with code 0, in this order.
    let execs: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "exec" && e["ppid"] == loop_pid)
        .collect();
    assert!(execs.len() >= 3, "{events:?}");
    for x in &execs {
        assert_eq!(x["argv"], serde_json::json!(["sleep", "1"]), "{x}");
        // busybox ash runs its own applets through /proc/self/exe; the kernel names the
        // task after the file until busybox renames itself to the applet.
        let filename = x["filename"].as_str().unwrap();
        assert!(["/proc/self/exe", "/bin/sleep"].contains(&filename), "{x}");
        assert_eq!(x["comm"], filename.rsplit('/').next().unwrap(), "{x}");
        assert_eq!(x["problems"], serde_json::json!([]), "{x}");
        let pid = &x["pid"];
        let at = |kind: &str| {
            events
                .iter()
                .position(|e| e["event"] == kind && e["pid"] == *pid && e["tid"] == *pid)
        };
        let exec_at = at("exec").unwrap();
        if let Some(fork_at) = at("fork") {
            assert!(fork_at < exec_at);
            assert_eq!(events[fork_at]["ppid"], loop_pid);
            assert_eq!(events[fork_at]["thread"], false);
        }
        if let Some(exit_at) = at("exit") {
            assert!(exit_at > exec_at);
            assert_eq!(events[exit_at]["exit_code"], 0);
            assert_eq!(events[exit_at]["comm"], "sleep");
        }
    }
    // Every exec of the window came with its fork and exit, except at the edges.
    let forks = events
        .iter()
        .filter(|e| e["event"] == "fork" && e["ppid"] == loop_pid)
        .count();
    assert!(forks + 1 >= execs.len(), "{events:?}");
    assert_runs_clean(&guest, &live);

    // Ctrl-C in the middle of a session.
    let child = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["--target", &live, "--json", "watch", "procs"])
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "slow to stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"event\":\"exec\""),
        "no exec in 6 s: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_runs_clean(&guest, &live);

    // Killed outright (SIGKILL) while tracing: the QEMU driver's guard process removes
    // the breakpoints and lets the guest run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["--target", &live, "--json", "watch", "procs"])
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(guest.dir().join("killed.stderr")).unwrap())
        .spawn()
        .unwrap();
    // Killed while tracing: after its first event.
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("\"event\""), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while status(&guest) != "running" && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status(&guest),
        "running",
        "after SIGKILL: {}",
        std::fs::read_to_string(guest.dir().join("killed.stderr")).unwrap_or_default()
    );
    assert_runs_clean(&guest, &live);
}

#[test]
fn trace_syscalls_of_vmi_loop_with_decoded_arguments() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    let live = format!("qemu:{}", guest.qmp_socket().display());
    let loop_pid = u64::from(guest.truth().process("vmi_loop").expect("vmi_loop").pid);

    // vmi_loop's `echo "$n" > /tmp/vmi_loop.count` and its child's exec of `sleep 1`,
    // at their returns.
    let calls = lines(&vmi(
        &live,
        &[
            "--json",
            "trace",
            "--syscall",
            "openat,execve",
            "--return",
            "--count",
            "6",
        ],
    ));
    for c in &calls {
        eprintln!("{c}");
    }
    assert_eq!(calls.len(), 6);
    let opens: Vec<&Value> = calls
        .iter()
        .filter(|c| c["syscall"] == "openat" && c["pid"] == loop_pid)
        .collect();
    let execs: Vec<&Value> = calls
        .iter()
        .filter(|c| c["syscall"] == "execve" && c["comm"] == "vmi_loop")
        .collect();
    assert!(opens.len() >= 2 && execs.len() >= 2, "{calls:?}");
    // vmi_loop alternates the two; a return breakpoint set too late would pair an
    // entry with a later call's return and repeat it.
    for w in calls.windows(2) {
        assert_ne!(w[0]["syscall"], w[1]["syscall"], "{calls:?}");
    }
    for o in &opens {
        assert_eq!(o["args"]["filename"], "/tmp/vmi_loop.count", "{o}");
        assert_eq!(o["args"]["flags"], "O_WRONLY|O_CREAT|O_TRUNC", "{o}");
        assert_eq!(o["args"]["dfd"], -100, "AT_FDCWD: {o}");
        assert_eq!(o["args"]["mode"], "0o666", "{o}");
        assert!(o["ret"].as_i64().unwrap() >= 0, "{o}");
        assert_eq!(o["tid"], o["pid"]);
    }
    for x in &execs {
        assert_eq!(x["args"]["argv"], serde_json::json!(["sleep", "1"]), "{x}");
        assert!(
            ["/proc/self/exe", "/bin/sleep"].contains(&x["args"]["filename"].as_str().unwrap()),
            "{x}"
        );
        assert_eq!(x["ret"], 0, "{x}");
        assert_eq!(x["problems"], serde_json::json!([]), "{x}");
    }

    // --pid: only vmi_loop's calls, at their entries (no `ret`).
    let calls = lines(&vmi(
        &live,
        &[
            "--json",
            "trace",
            "--syscall",
            "wait4,openat",
            "--pid",
            &loop_pid.to_string(),
            "--count",
            "4",
        ],
    ));
    assert_eq!(calls.len(), 4);
    for c in &calls {
        assert_eq!(c["pid"], loop_pid, "{c}");
        assert!(c.get("ret").is_none(), "{c}");
        if c["syscall"] == "wait4" {
            assert_eq!(c["args"]["upid"], -1, "{c}");
        }
    }
    assert!(calls.iter().any(|c| c["syscall"] == "wait4"), "{calls:?}");
    assert_runs_clean(&guest, &live);

    // The function form still works next to --syscall.
    let hits = lines(&vmi(
        &live,
        &["--json", "trace", "hrtimer_nanosleep", "--count", "1"],
    ));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["comm"], "sleep");

    // A function with its return value: do_sys_openat2(dfd, filename, how) returns
    // vmi_loop's new descriptor (3, as openat above).
    let calls = lines(&vmi(
        &live,
        &[
            "--json",
            "trace",
            "do_sys_openat2",
            "--return",
            "--count",
            "2",
        ],
    ));
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert_eq!(c["pid"], loop_pid, "{c}");
        // An int argument: the upper half of rdi is the caller's.
        let dfd = u64::from_str_radix(c["args"][0].as_str().unwrap().trim_start_matches("0x"), 16)
            .unwrap();
        assert_eq!(dfd & 0xffff_ffff, 0xffff_ff9c, "AT_FDCWD: {c}");
        assert_eq!(c["ret"], "0x3", "{c}");
        // Decoded by the kernel's BTF prototype, read at the entry.
        let p = &c["params"];
        assert_eq!(p["dfd"], -100, "{c}");
        assert_eq!(p["filename"], "/tmp/vmi_loop.count", "{c}");
        let flags = p["how"]["flags"].as_u64().unwrap();
        assert_eq!(flags & 0o7777, 0o1101, "O_WRONLY|O_CREAT|O_TRUNC: {c}");
        assert_eq!(p["how"]["mode"], 0o666, "{c}");
        assert_eq!(c["ret_value"], 3, "{c}");
    }

    // A name without an entry point: an error, nothing left behind.
    let out = vmi(&live, &["trace", "--syscall", "openat,no_such_call"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("__x64_sys_no_such_call"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_runs_clean(&guest, &live);
}
