//! The real `vmi` binary against the live test guest and its dumps, compared with the
//! guest's own ground truth; golden files for human output (`UPDATE_EXPECT=1` rewrites
//! them); bad input gives one clear error line and the documented exit code.

mod common;

use std::path::{Path, PathBuf};

use common::{json, vmi};
use serde_json::Value;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Truth, Userland};

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {} (run with UPDATE_EXPECT=1)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_EXPECT=1 updates it)",
        path.display()
    );
}

/// The long-lived tasks of the truth: the test processes and init (not the realistic
/// userland's truth printer, gone once the guest is ready).
fn stable_tasks(truth: &Truth) -> Vec<&vmi_test_guest::truth::Task> {
    truth
        .tasks
        .iter()
        .filter(|t| truth.printer_pid != Some(t.pid))
        .filter(|t| t.comm.starts_with("vmi_") || t.pid == 1)
        .collect()
}

fn check_target(target: &str, truth: &Truth) {
    // ps: every long-lived task, with pid, ppid, tgid and name as the guest said.
    let ps = json(target, &["ps"]);
    let ps = ps.as_array().expect("array");
    for t in stable_tasks(truth) {
        let e = ps
            .iter()
            .find(|e| e["pid"] == t.pid)
            .unwrap_or_else(|| panic!("{target}: pid {} ({}) missing from ps", t.pid, t.comm));
        assert_eq!(
            e["name"],
            t.comm.as_str(),
            "{target}: name of pid {}",
            t.pid
        );
        assert_eq!(e["ppid"], t.ppid, "{target}: ppid of pid {}", t.pid);
        assert_eq!(e["tgid"], t.tgid, "{target}: tgid of pid {}", t.pid);
        assert_eq!(e["uid"], t.uid, "{target}: uid of pid {}", t.pid);
        for key in ["pid", "ppid", "tgid", "name", "cmdline"] {
            assert!(e.get(key).is_some(), "ps entries carry {key}");
        }
    }
    let sleeper = truth.process("vmi_sleeper").expect("vmi_sleeper in truth");
    let e = ps.iter().find(|e| e["pid"] == sleeper.pid).unwrap();
    assert_eq!(e["cmdline"], sleeper.argv.join(" "));

    // env: the marker, read from the process's user memory.
    let env = json(target, &["env", &sleeper.pid.to_string()]);
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "VMI_ENV_MARKER" && v["value"] == "VMI-ENV-MARKER-5a17c0de"),
        "{target}: env marker not found in {env}"
    );

    // maps: equal to /proc/<pid>/maps.
    let mapper = truth.process("vmi_mapper").expect("vmi_mapper in truth");
    let maps = json(target, &["maps", &mapper.pid.to_string()]);
    let maps = maps.as_array().unwrap();
    assert_eq!(maps.len(), mapper.maps.len(), "{target}: VMA count");
    for (ours, theirs) in maps.iter().zip(&mapper.maps) {
        assert_eq!(ours["start"], format!("{:#x}", theirs.start));
        assert_eq!(ours["end"], format!("{:#x}", theirs.end));
        assert_eq!(ours["perms"], theirs.perms.as_str());
        // The kernel prints pseudo paths like [stack] for anonymous regions we leave null.
        if let Some(p) = theirs.path.as_deref().filter(|p| p.starts_with('/')) {
            assert_eq!(ours["path"], p);
        }
    }

    // files: the fds the guest listed.
    let files = json(target, &["files", &mapper.pid.to_string()]);
    for fd in &mapper.fds {
        let ours = files.as_array().unwrap().iter().find(|f| f["fd"] == fd.fd);
        let ours = ours.unwrap_or_else(|| panic!("{target}: fd {} missing", fd.fd));
        if fd.target.starts_with('/') {
            assert_eq!(ours["path"], fd.target.as_str(), "{target}: fd {}", fd.fd);
        }
    }

    // modules: /proc/modules.
    let modules = json(target, &["modules"]);
    let mut ours: Vec<String> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    let mut theirs: Vec<String> = truth.modules.iter().map(|m| m.name.clone()).collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "{target}: modules");
    for m in &truth.modules {
        let o = modules
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == m.name.as_str())
            .unwrap();
        assert_eq!(
            o["base"],
            format!("{:#x}", m.address),
            "{target}: base of {}",
            m.name
        );
    }

    // info: the release.
    let info = json(target, &["info"]);
    assert_eq!(info["os"], "linux");
    assert_eq!(info["kernel_release"], truth.release.as_str());

    // read: the banner at the linux_banner symbol.
    let read = json(target, &["read", "linux_banner", "32"]);
    let banner_hex: String = truth.version.as_bytes()[..32]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(read["bytes"], banner_hex);

    // Human output of the tree, normalised (pids vary between boots), against a golden file.
    let out = vmi(target, &["ps", "--tree"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let normalised: String = text
        .lines()
        .filter(|l| l.contains("vmi_") || l.contains("PID"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            // Keep the indentation of the NAME column and the name/cmdline words.
            let indent = l.find(words.get(4).copied().unwrap_or("")).map_or(0, |i| {
                l[..i]
                    .chars()
                    .rev()
                    .take_while(|c| *c == ' ')
                    .count()
                    .saturating_sub(2)
            });
            format!(
                "{}{}\n",
                " ".repeat(indent),
                words.iter().skip(4).copied().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    golden("ps-tree.txt", &normalised);
}

#[test]
fn live_guest_and_its_dumps() {
    // The busybox userland whatever VMI_GUEST_USERLAND says: the `ps --tree` golden file
    // is its process tree (tests/realistic.rs covers the realistic one).
    let cfg = GuestConfig::default().userland(Userland::Busybox);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let truth = guest.truth().clone();
    let live = format!("qemu:{}", guest.qmp_socket().display());
    check_target(&live, &truth);

    // trace: two hits on a function vmi_loop's `sleep 1` calls, then the guest runs on.
    common::trace_two_sleeps(&live, truth.ksym("hrtimer_nanosleep").unwrap());
    let status = guest
        .qmp(serde_json::json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(status["status"], "running", "the guest runs after trace");

    // The live target's own ELF writer, then QEMU's dumps.
    let ours = guest.dir().join("ours.elf");
    let out = vmi(&live, &["dump", ours.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = guest
        .qmp(serde_json::json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(status["status"], "running", "the guest runs after dump");

    let elf: PathBuf = guest.dir().join("qemu.elf");
    guest.dump(DumpFormat::Elf, &elf).unwrap();
    let kdump: PathBuf = guest.dir().join("qemu.kdump");
    guest.dump(DumpFormat::KdumpZlib, &kdump).unwrap();
    for dump in [&elf, &kdump, &ours] {
        check_target(dump.to_str().unwrap(), &truth);
    }

    // profile export: an ISF that Volatility 3 reads, listing the same processes.
    let isf_dir = guest.dir().join("isf");
    std::fs::create_dir_all(&isf_dir).unwrap();
    let isf = isf_dir.join("linux.json");
    let out = vmi(
        elf.to_str().unwrap(),
        &["profile", "export", isf.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vol = vmi_test_guest::volatility();
    if let Ok(vol) = &vol {
        let out = vmi_test_guest::volatility_command(vol, &isf_dir.join("vol-cache"))
            .args(["-r", "json", "-s"])
            .arg(&isf_dir)
            .arg("-f")
            .arg(&elf)
            .arg("linux.pslist.PsList")
            .output()
            .expect("run vol");
        let rows: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("vol output: {}", String::from_utf8_lossy(&out.stderr)));
        for t in stable_tasks(&truth) {
            assert!(
                rows.as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["PID"] == t.tgid && r["COMM"] == t.comm.as_str()),
                "volatility with our ISF misses pid {} ({})",
                t.pid,
                t.comm
            );
        }
    } else if let Err(why) = vol {
        if vmi_test_guest::guest_required() {
            panic!("volatility3 is required: {why}");
        }
        eprintln!("SKIPPED: the Volatility 3 check of `vmi profile export`: {why}");
    }

    // Unknown pid: exit code 1 and one line.
    let out = vmi(elf.to_str().unwrap(), &["maps", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot find process 999999"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // A truncated dump: a clear error, exit code 3.
    let truncated = guest.dir().join("truncated.elf");
    let bytes = std::fs::read(&elf).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 64]).unwrap();
    let out = vmi(truncated.to_str().unwrap(), &["ps"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Errors that need no guest: one sentence, the documented exit code, no panic.
#[test]
fn bad_targets_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("vmi-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, b"this is not a memory dump\n".repeat(500)).unwrap();

    let cases: Vec<(String, Vec<&str>, i32, &str)> = vec![
        (
            "qemu:/nonexistent/qmp.sock".into(),
            vec!["ps"],
            3,
            "missing-socket.txt",
        ),
        (
            "/nonexistent/dump.elf".into(),
            vec!["ps"],
            3,
            "missing-file.txt",
        ),
        (
            text.display().to_string(),
            vec!["ps"],
            3,
            "wrong-file-type.txt",
        ),
        (
            text.display().to_string(),
            vec!["read", "zz"],
            1,
            "bad-number.txt",
        ),
        ("xen:1".into(), vec!["ps"], 3, "xen.txt"),
    ];
    let mut all = String::new();
    for (target, args, code, name) in cases {
        let out = vmi(&target, &args);
        let mut err =
            String::from_utf8_lossy(&out.stderr).replace(&dir.display().to_string(), "$DIR");
        if cfg!(feature = "xen") {
            // libxen's own complaint ("xencall: error: ..."), printed by the C library
            // before ours.
            err = err
                .lines()
                .filter(|l| !(l.starts_with("xen") && l.contains(": error: ")))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        all.push_str(&format!("# {name}\n{err}"));
    }
    // The xen: target fails differently with the Xen driver built in (no dom0 here).
    golden(
        if cfg!(feature = "xen") {
            "errors-xen.txt"
        } else {
            "errors.txt"
        },
        &all,
    );
    std::fs::remove_dir_all(&dir).ok();
}
