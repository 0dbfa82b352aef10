//! The real `vmi` binary against the realistic guest (Debian userland, production-shaped
//! processes, the truth of every process): `ps` for **every** process of the truth (the
//! truth printer and `vmi_loop`'s transient `sleep`s excepted) and `threads`, `maps`,
//! `files`, `env` for every process with an address space, each equal to what `/proc`
//! printed, on the guest's ELF and kdump dumps and live. Mismatches are collected and
//! reported together.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Truth, Userland};

fn vmi(target: &str, cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
        .arg("--target")
        .arg(target)
        .arg("--json")
        .args(args)
        .env("VMI_PROFILE_CACHE", cache)
        .output()
        .expect("run vmi")
}

/// `/proc`'s name of a task (`Name:`) against the name `vmi ps` prints: equal (kernel
/// threads by their full name), but for a workqueue worker, whose work item (`+desc` /
/// `-desc` after its id) can change between the truth and the pause: there the id only.
fn same_name(proc_name: &str, name: &str, kernel_thread: bool) -> bool {
    if proc_name == name {
        return true;
    }
    let id = |n: &str| n.find(['+', '-']).map_or(n, |i| &n[..i]).to_owned();
    kernel_thread
        && name.starts_with("kworker/")
        && !name.starts_with("kworker/R-")
        && id(proc_name) == id(name)
}

/// The `/proc/PID/maps` line of a `vmi maps` entry.
fn maps_line(v: &Value) -> String {
    let hex = |k: &str| {
        let s = v[k].as_str().unwrap_or("?");
        u64::from_str_radix(s.trim_start_matches("0x"), 16)
            .map_or_else(|_| s.to_owned(), |n| format!("{n:08x}"))
    };
    let head = format!(
        "{}-{} {} {} {} {}",
        hex("start"),
        hex("end"),
        v["perms"].as_str().unwrap_or("?"),
        hex("offset"),
        v["dev"].as_str().unwrap_or("?"),
        v["inode"]
    );
    match v["name"].as_str() {
        Some(n) => format!("{head:<72} {n}"),
        None => head,
    }
}

struct Checker<'a> {
    target: String,
    cache: std::path::PathBuf,
    truth: &'a Truth,
    mismatches: Vec<String>,
    runs: usize,
}

impl Checker<'_> {
    fn miss(&mut self, pid: u32, what: &str, detail: String) {
        let comm = self.truth.task_by_pid(pid).map_or("?", |t| t.comm.as_str());
        self.mismatches
            .push(format!("{}: {pid} {comm}: {what}: {detail}", self.target));
    }

    /// Run a command; `None` (and a mismatch) unless it succeeded completely (exit 0).
    fn json(&mut self, pid: u32, args: &[&str]) -> Option<Value> {
        self.runs += 1;
        let out = vmi(&self.target, &self.cache, args);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            self.miss(pid, args[0], format!("exit {:?}: {err}", out.status.code()));
            return None;
        }
        serde_json::from_slice(&out.stdout).ok().or_else(|| {
            self.miss(pid, args[0], "output is not JSON".into());
            None
        })
    }

    fn check(&mut self) {
        let truth = self.truth;
        let Some(ps) = self.json(0, &["ps"]) else {
            return;
        };
        let ps: BTreeMap<u64, Value> = ps
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["pid"].as_u64()?, e.clone())))
            .collect();
        let loop_pid = truth.task("vmi_loop").map(|t| t.pid);
        for t in &truth.tasks {
            let transient =
                truth.printer_pid == Some(t.pid) || (Some(t.ppid) == loop_pid && t.comm == "sleep");
            if transient {
                continue;
            }
            let Some(e) = ps.get(&u64::from(t.pid)) else {
                self.miss(t.pid, "ps", "missing".into());
                continue;
            };
            let kthread = e["kernel_thread"].as_bool().unwrap_or(false);
            if !same_name(&t.comm, e["name"].as_str().unwrap_or(""), kthread) {
                self.miss(t.pid, "ps name", format!("{} vs {:?}", e["name"], t.comm));
            }
            let got = (&e["ppid"], &e["tgid"], &e["uid"], &e["gid"]);
            let want = (
                &Value::from(t.ppid),
                &Value::from(t.tgid),
                &Value::from(t.uid),
                &t.gid.map_or(Value::Null, Value::from),
            );
            if got != want {
                self.miss(t.pid, "ps ids", format!("{got:?} vs {want:?}"));
            }
            if truth.blocked_by_design(t.pid) && e["state"] != t.state.as_str() {
                self.miss(t.pid, "ps state", format!("{} vs {}", e["state"], t.state));
            }
            if let Some(&ns) = t.ns_pid.last()
                && e["ns_pid"] != ns
            {
                self.miss(t.pid, "ps ns_pid", format!("{} vs {ns}", e["ns_pid"]));
            }
            if let Some(&ino) = t.namespaces.get("pid")
                && e["pid_ns"] != ino
            {
                self.miss(t.pid, "ps pid_ns", format!("{} vs {ino}", e["pid_ns"]));
            }
            if let Some(host) = truth.hostname_of(t.pid)
                && e["hostname"] != host
            {
                self.miss(
                    t.pid,
                    "ps hostname",
                    format!("{} vs {host:?}", e["hostname"]),
                );
            }
            let Some(p) = truth.process_by_pid(t.pid) else {
                continue;
            };
            if e["argv"] != Value::from(p.argv.clone()) {
                self.miss(t.pid, "ps argv", format!("{} vs {:?}", e["argv"], p.argv));
            }
            // The per-process commands for processes with an address space (kernel
            // threads and zombies have none: empty in /proc, checked by the OS tests).
            if p.maps.is_empty() {
                continue;
            }
            self.process(t, p);
        }
    }

    fn process(&mut self, t: &vmi_test_guest::Task, p: &vmi_test_guest::Process) {
        let pid = t.pid.to_string();
        if let Some(th) = self.json(t.pid, &["threads", &pid]) {
            let got: Vec<(u64, String)> = th
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    (
                        x["tid"].as_u64().unwrap_or(0),
                        x["name"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let want: Vec<(u64, String)> = t
                .threads
                .iter()
                .map(|x| (u64::from(x.tid), x.comm.clone()))
                .collect();
            if got != want {
                self.miss(t.pid, "threads", format!("{got:?} vs {want:?}"));
            }
        }
        if let Some(maps) = self.json(t.pid, &["maps", &pid]) {
            let got: Vec<String> = maps
                .as_array()
                .into_iter()
                .flatten()
                .map(maps_line)
                .collect();
            let want: Vec<String> = p
                .maps
                .iter()
                .map(|m| {
                    let head = format!(
                        "{:08x}-{:08x} {} {:08x} {} {}",
                        m.start, m.end, m.perms, m.offset, m.dev, m.inode
                    );
                    match &m.path {
                        Some(n) => format!("{head:<72} {n}"),
                        None => head,
                    }
                })
                .collect();
            if got != want {
                let first = got
                    .iter()
                    .zip(&want)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("first difference: {a:?} vs {b:?}"))
                    .unwrap_or_default();
                self.miss(
                    t.pid,
                    "maps",
                    format!("{} lines vs {}; {first}", got.len(), want.len()),
                );
            }
        }
        if let Some(files) = self.json(t.pid, &["files", &pid]) {
            let got: Vec<String> = files
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| format!("{} {}", f["fd"], f["path"].as_str().unwrap_or("<null>")))
                .collect();
            let want: Vec<String> = p
                .fds
                .iter()
                .map(|f| format!("{} {}", f.fd, f.target))
                .collect();
            if got != want {
                self.miss(t.pid, "files", format!("{got:?} vs {want:?}"));
            }
        }
        if let Some(env) = self.json(t.pid, &["env", &pid]) {
            let got: Vec<String> = env
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| match v["value"].as_str() {
                    Some(val) => format!("{}={val}", v["name"].as_str().unwrap_or("")),
                    None => v["name"].as_str().unwrap_or("").to_owned(),
                })
                .collect();
            if got != p.environ {
                self.miss(t.pid, "env", format!("{got:?} vs {:?}", p.environ));
            }
        }
    }
}

#[test]
fn every_process_equals_proc() {
    let cfg = GuestConfig::default().userland(Userland::Realistic);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let truth = guest.truth().clone();
    assert!(truth.warnings.is_empty(), "{:?}", truth.warnings);
    let cache = guest.dir().join("profiles");
    guest.pause().expect("pause");
    let elf = guest.dir().join("qemu.elf");
    guest.dump(DumpFormat::Elf, &elf).unwrap();
    let kdump = guest.dir().join("qemu.kdump");
    guest.dump(DumpFormat::KdumpZlib, &kdump).unwrap();
    let live = format!("qemu:{}", guest.qmp_socket().display());
    let mut all = Vec::new();
    for target in [elf.display().to_string(), kdump.display().to_string(), live] {
        let t0 = Instant::now();
        let mut c = Checker {
            target,
            cache: cache.clone(),
            truth: &truth,
            mismatches: Vec::new(),
            runs: 0,
        };
        c.check();
        eprintln!(
            "{}: {} vmi runs in {:.1} s, {} mismatches",
            c.target,
            c.runs,
            t0.elapsed().as_secs_f64(),
            c.mismatches.len()
        );
        all.extend(c.mismatches);
    }
    guest.resume().expect("resume");
    for m in all.iter().take(300) {
        eprintln!("  {m}");
    }
    assert!(
        all.is_empty(),
        "{} mismatches, first: {}",
        all.len(),
        all[0]
    );
}
