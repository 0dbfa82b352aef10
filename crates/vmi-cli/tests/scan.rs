//! `vmi scan` with YARA rules against the live test guest and its ELF, kdump and LiME
//! dumps (synthetic Windows images: `tests/windows.rs`): matches the
//! guest planted (the environment marker of `vmi_sleeper`, the kernel's `linux_banner`)
//! at the exact pid, address and region the guest's own truth gives; the same matches
//! live and on the dump; the same matches as Volatility 3's `vmayarascan` and
//! `yarascan` on the dump; a malformed rules file gives YARA-X's message and exit code 1.

mod common;

use std::path::Path;
use std::process::Command;

use common::vmi;
use serde_json::Value;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Truth, Userland};

/// `vmi --json scan --rules RULES ARGS`: the matches (one object per line).
fn scan(target: &str, rules: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "scan", "--rules", rules.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = vmi(target, &all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vmi scan {args:?} on {target} failed: {stderr}"
    );
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(summary.starts_with("scanned "), "summary line: {stderr}");
    eprintln!("[{target} scan {args:?}] {summary}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Where the guest says the value of the environment marker lies: pid and address.
fn marker_address(truth: &Truth) -> (u64, u64) {
    let (pid, at) = truth.env_marker_address().expect("vmi_sleeper in truth");
    (u64::from(pid), at)
}

fn find<'a>(matches: &'a [Value], rule: &str, key: &str, value: &Value) -> Option<&'a Value> {
    matches
        .iter()
        .find(|m| m["rule"] == rule && &m[key] == value)
}

const MARKER_VALUE: &str = "VMI-ENV-MARKER-5a17c0de";

/// The planted matches on `target`; returns the physical addresses of the marker and
/// the banner (to compare live and dump).
fn check(target: &str, rules: &Path, truth: &Truth) -> (Value, Value) {
    let (pid, va) = marker_address(truth);
    let sleeper = truth.process("vmi_sleeper").unwrap();
    let region = sleeper
        .maps
        .iter()
        .find(|m| m.start <= va && va < m.end)
        .expect("the marker's VMA in /proc/PID/maps");

    // Every process: the marker at its pid, address and VMA, with its bytes.
    let all = scan(target, rules, &[]);
    let hit = all
        .iter()
        .find(|m| m["rule"] == "env_marker" && m["pid"] == pid && m["va"] == format!("{va:#x}"))
        .unwrap_or_else(|| panic!("{target}: marker at pid {pid} {va:#x} not among {all:?}"));
    assert_eq!(hit["space"], "process");
    assert_eq!(hit["string"], "$value");
    assert_eq!(hit["region"]["start"], format!("{:#x}", region.start));
    assert_eq!(hit["region"]["end"], format!("{:#x}", region.end));
    assert_eq!(hit["region"]["name"].as_str(), region.path.as_deref());
    assert_eq!(hit["length"], MARKER_VALUE.len());
    assert_eq!(hit["bytes"], hex(MARKER_VALUE.as_bytes()));
    let marker_pa = hit["pa"].clone();
    assert!(marker_pa.is_string(), "{hit}");
    // Each match once, though chunks overlap.
    let mut keys: Vec<String> = all
        .iter()
        .map(|m| format!("{} {} {} {}", m["rule"], m["string"], m["pid"], m["va"]))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "{target}: a match reported twice");

    // Only that process.
    let one = scan(target, rules, &["--pid", &pid.to_string()]);
    assert!(one.iter().all(|m| m["pid"] == pid), "{one:?}");
    let again = find(&one, "env_marker", "va", &Value::from(format!("{va:#x}")))
        .expect("the marker with --pid");
    assert_eq!(again, hit);

    // The kernel: linux_banner in the image, at its symbol's address.
    let banner = truth
        .ksym("linux_banner")
        .expect("linux_banner in kallsyms");
    let kernel = scan(target, rules, &["--kernel-space"]);
    let k = find(
        &kernel,
        "banner",
        "va",
        &Value::from(format!("{banner:#x}")),
    )
    .unwrap_or_else(|| panic!("{target}: banner at {banner:#x} not among {kernel:?}"));
    assert_eq!(k["space"], "kernel");
    assert_eq!(k["pid"], Value::Null);
    assert_eq!(k["region"]["name"], "[kernel]");
    let banner_pa = k["pa"].clone();
    assert!(banner_pa.is_string(), "{k}");

    // Physical memory: both, at the physical addresses the translations gave.
    let phys = scan(target, rules, &["--physical"]);
    for (rule, pa) in [("banner", &banner_pa), ("env_marker", &marker_pa)] {
        let p = find(&phys, rule, "pa", pa)
            .unwrap_or_else(|| panic!("{target}: {rule} at pa {pa} not in the physical scan"));
        assert_eq!(p["space"], "physical");
        assert_eq!(p["va"], Value::Null);
    }
    (marker_pa, banner_pa)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn scan_finds_planted_matches_live_and_in_a_dump() {
    let cfg = GuestConfig::default().userland(Userland::Busybox);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let truth = guest.truth().clone();
    let rules = guest.dir().join("planted.yar");
    std::fs::write(
        &rules,
        format!(
            "rule env_marker {{ strings: $value = \"{MARKER_VALUE}\" condition: $value }}\n\
             rule banner {{ strings: $b = \"Linux version {} (\" condition: $b }}\n",
            truth.release
        ),
    )
    .unwrap();

    let live = format!("qemu:{}", guest.qmp_socket().display());
    let live_found = check(&live, &rules, &truth);
    let status = guest
        .qmp(serde_json::json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(status["status"], "running", "the guest runs after scan");

    // The human table: a header and the marker's line.
    let out = vmi(&live, &["scan", "--rules", rules.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("RULE STRING"), "{text}");
    let (pid, va) = marker_address(&truth);
    assert!(
        text.lines().any(|l| l.starts_with("env_marker $value")
            && l.contains(&format!(" {pid} "))
            && l.contains(&format!("{va:#x}"))),
        "{text}"
    );

    interrupted_scan_resumes_the_guest(&guest, &live);

    // The same matches on an ELF dump of the paused guest.
    guest.pause().expect("pause");
    let elf = guest.dir().join("scan.elf");
    guest.dump(DumpFormat::Elf, &elf).unwrap();
    let dump_found = check(elf.to_str().unwrap(), &rules, &truth);
    assert_eq!(
        dump_found, live_found,
        "physical addresses live and in the dump"
    );

    // And on the other dump formats of the same paused guest: kdump (compressed pages)
    // and LiME (no registers: the OS layer finds the kernel in memory).
    let kdump = guest.dir().join("scan.kdump");
    guest.dump(DumpFormat::KdumpZlib, &kdump).unwrap();
    let lime = guest.dir().join("scan.lime");
    let ram = std::fs::read(guest.mem_file()).expect("the guest's RAM file");
    std::fs::write(&lime, vmi_driver_dump::build_lime(&[(0, &ram)])).unwrap();
    drop(ram);
    for dump in [&kdump, &lime] {
        let found = check(dump.to_str().unwrap(), &rules, &truth);
        assert_eq!(found, live_found, "physical addresses live and in {dump:?}");
        std::fs::remove_file(dump).ok();
    }

    volatility_agrees(&elf, &rules);

    // A malformed rules file: YARA-X's message, exit code 1, one line, no panic.
    let bad = guest.dir().join("bad.yar");
    std::fs::write(&bad, "rule broken { strings: $a = \"x\" condition: $b }\n").unwrap();
    let out = vmi(
        elf.to_str().unwrap(),
        &["scan", "--rules", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot compile the YARA rules in")
            && err.contains("line 1: unknown pattern `$b`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // A missing one.
    let out = vmi(
        elf.to_str().unwrap(),
        &["scan", "--rules", "/nonexistent/rules.yar"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot open the rules file /nonexistent/rules.yar"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// Volatility 3 with our ISF on the same dump, as an independent scanner: its
/// `linux.vmayarascan` finds what `vmi scan` finds in processes (rule, pid, address);
/// its `yarascan` scans the kernel's virtual address space, where the direct map holds
/// all of physical memory (our `--physical`, at `page_offset_base + pa`) and the image
/// mapping the kernel (our `--kernel-space`). Compared as sets: Volatility reports some
/// matches twice (its chunks overlap without an owner).
fn volatility_agrees(dump: &Path, rules: &Path) {
    let vol = match vmi_test_guest::volatility() {
        Ok(vol) => vol,
        Err(why) => return skip_or_fail(&why),
    };
    // The interpreter `vol` runs on: its `#!` line (pip writes one), else its neighbour.
    let python = std::fs::read_to_string(&vol)
        .ok()
        .and_then(|t| Some(t.lines().next()?.strip_prefix("#!")?.trim().to_owned()))
        .filter(|p| !p.is_empty() && !p.contains(' '))
        .map_or_else(|| vol.with_file_name("python"), Into::into);
    let has_yara = Command::new(&python)
        .args(["-c", "import yara"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_yara {
        return skip_or_fail("yara-python is not installed next to volatility3");
    }
    let target = dump.to_str().unwrap();
    let isf_dir = dump.with_extension("isf");
    std::fs::create_dir_all(&isf_dir).unwrap();
    let out = vmi(
        target,
        &[
            "profile",
            "export",
            isf_dir.join("linux.json").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_vol = |plugin: &str| -> Vec<Value> {
        let t = std::time::Instant::now();
        let out = vmi_test_guest::volatility_command(&vol, &isf_dir.join("vol-cache"))
            .args(["-r", "json", "-s"])
            .arg(&isf_dir)
            .arg("-f")
            .arg(dump)
            .args([plugin, "--yara-file"])
            .arg(rules)
            .output()
            .expect("run vol");
        eprintln!("[volatility {plugin}] {:?}", t.elapsed());
        let rows: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("vol {plugin}: {}", String::from_utf8_lossy(&out.stderr)));
        rows.as_array().expect("array").clone()
    };
    // Volatility prints 48-bit offsets; kernel addresses are sign-extended.
    let canonical = |a: u64| {
        if a & (1 << 47) != 0 {
            a | 0xffff_0000_0000_0000
        } else {
            a
        }
    };
    // With the yara-x Python package installed (the scan bench's peer), Volatility scans
    // with YARA-X, which names rules by namespace: `default.env_marker`.
    let rule_name = |v: &Value| {
        let name = v.as_str().unwrap();
        name.strip_prefix("default.").unwrap_or(name).to_owned()
    };
    let num =
        |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let set = |rows: Vec<(String, u64, u64)>| -> std::collections::BTreeSet<(String, u64, u64)> {
        rows.into_iter().collect()
    };

    let theirs = set(run_vol("linux.vmayarascan.VmaYaraScan")
        .iter()
        .map(|r| {
            (
                rule_name(&r["Rule"]),
                r["PID"].as_u64().unwrap(),
                canonical(r["Offset"].as_u64().unwrap()),
            )
        })
        .collect());
    let ours = set(scan(target, rules, &[])
        .iter()
        .map(|m| {
            (
                m["rule"].as_str().unwrap().to_owned(),
                m["pid"].as_u64().unwrap(),
                num(&m["va"]),
            )
        })
        .collect());
    assert!(!ours.is_empty());
    assert_eq!(ours, theirs, "process matches: vmi scan vs vmayarascan");

    let info = {
        let out = vmi(target, &["--json", "info"]);
        serde_json::from_slice::<Value>(&out.stdout).expect("info JSON")
    };
    let direct_map = num(&info["page_offset_base"]);
    let kernel = scan(target, rules, &["--kernel-space"]);
    let physical = scan(target, rules, &["--physical"]);
    let theirs: Vec<(String, u64)> = run_vol("yarascan.YaraScan")
        .iter()
        .map(|r| {
            (
                rule_name(&r["Rule"]),
                canonical(r["Offset"].as_u64().unwrap()),
            )
        })
        .collect();
    let in_direct_map = |a: u64| a.checked_sub(direct_map).is_some_and(|o| o < 1 << 46);
    let theirs_physical = set(theirs
        .iter()
        .filter(|(_, a)| in_direct_map(*a))
        .map(|(r, a)| (r.clone(), 0, a - direct_map))
        .collect());
    let theirs_image = set(theirs
        .iter()
        .filter(|(_, a)| *a >= 0xffff_ffff_8000_0000)
        .map(|(r, a)| (r.clone(), 0, *a))
        .collect());
    let ours_physical = set(physical
        .iter()
        .map(|m| (m["rule"].as_str().unwrap().to_owned(), 0, num(&m["pa"])))
        .collect());
    let ours_image = set(kernel
        .iter()
        .filter(|m| m["region"]["name"] == "[kernel]")
        .map(|m| (m["rule"].as_str().unwrap().to_owned(), 0, num(&m["va"])))
        .collect());
    assert_eq!(
        ours_physical, theirs_physical,
        "--physical vs yarascan's direct map"
    );
    assert_eq!(
        ours_image, theirs_image,
        "--kernel-space vs yarascan's kernel image"
    );
}

fn skip_or_fail(why: &str) {
    if vmi_test_guest::guest_required() {
        panic!("the Volatility 3 comparison is required: {why}");
    }
    eprintln!("SKIPPED: the Volatility 3 comparison of `vmi scan`: {why}");
}

/// Ctrl-C (SIGINT) during a long scan of a live guest: exit 130, the guest runs again.
fn interrupted_scan_resumes_the_guest(guest: &TestGuest, live: &str) {
    use std::io::{BufRead, BufReader, Read};
    // Every 8 zero bytes: millions of matches, minutes of output.
    let rules = guest.dir().join("zeros.yar");
    std::fs::write(
        &rules,
        "rule zeros { strings: $z = { 00 00 00 00 00 00 00 00 } condition: $z }\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmi"))
        .args(["--target", live, "scan", "--physical", "--rules"])
        .arg(&rules)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vmi");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // The header comes once the Ctrl-C handler is in place and the guest paused.
    let mut header = String::new();
    stdout.read_line(&mut header).unwrap();
    assert!(header.starts_with("RULE STRING"), "{header}");
    let status = guest
        .qmp(serde_json::json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(status["status"], "paused", "paused while it scans");
    // Keep reading, so that no worker blocks on a full pipe.
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    drain.join().unwrap().unwrap();
    eprintln!(
        "[interrupted scan] stopped {:?} after SIGINT",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("error: interrupted"), "{stderr}");
    let status = guest
        .qmp(serde_json::json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(status["status"], "running", "the guest runs after Ctrl-C");
}
