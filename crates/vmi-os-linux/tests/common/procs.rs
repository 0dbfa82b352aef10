//! Every process of a truth that details every process (the realistic userland) against
//! the OS layer: ids, credentials, threads, namespaced pids, host names, command lines,
//! environments, every VMA as `/proc/PID/maps` prints it and every open file as
//! `readlink /proc/PID/fd/N` prints it. Mismatches are collected, not asserted one by
//! one, so a run reports all of them at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use vmi_arch_amd64::Amd64;
use vmi_core::{VmiCore, VmiRead};
use vmi_os_linux::{LinuxOs, LinuxTask};
use vmi_test_guest::{Task, Truth};

/// What was compared, and every mismatch (one line each).
#[derive(Debug, Default)]
pub struct Report {
    /// Mismatches, `pid comm: what: layer … vs truth …`.
    pub mismatches: Vec<String>,
    /// Counts of compared items, by kind.
    pub compared: BTreeMap<&'static str, usize>,
}

impl Report {
    fn count(&mut self, what: &'static str, n: usize) {
        *self.compared.entry(what).or_default() += n;
    }

    fn miss(&mut self, t: &Task, what: &str, detail: String) {
        self.mismatches
            .push(format!("{} {}: {what}: {detail}", t.pid, t.comm));
    }

    /// Print everything and panic when there is a mismatch.
    pub fn assert_clean(&self, label: &str) {
        eprintln!("[{label}] compared {:?}", self.compared);
        if self.mismatches.is_empty() {
            return;
        }
        let mut s = String::new();
        for m in self.mismatches.iter().take(400) {
            let _ = writeln!(s, "  {m}");
        }
        eprintln!(
            "[{label}] {} mismatches between the OS layer and /proc:\n{s}",
            self.mismatches.len()
        );
        panic!(
            "[{label}] {} mismatches, first: {}",
            self.mismatches.len(),
            self.mismatches[0]
        );
    }
}

/// Processes of the truth that may be gone when memory is read: the truth printer (it
/// exits before the guest is ready) and the `sleep` children of `vmi_loop` (one a second).
pub fn transient(truth: &Truth, t: &Task) -> bool {
    if truth.printer_pid == Some(t.pid) {
        return true;
    }
    truth
        .task_by_pid(t.ppid)
        .is_some_and(|p| p.comm == "vmi_loop")
}

/// Whether `/proc`'s name of a task (`Name:`) is the layer's `name` (and `comm` its first
/// 15 bytes). Exactly, but for a workqueue worker: the work item it runs (`+desc`/`-desc`
/// after its id) can change between the truth and the pause, so only its `comm` must
/// start the name.
pub fn same_name(proc_name: &str, ours: &LinuxTask) -> bool {
    same_name_parts(proc_name, &ours.name, &ours.comm, ours.is_kernel_thread())
}

fn same_name_parts(proc_name: &str, name: &str, comm: &str, kernel_thread: bool) -> bool {
    proc_name.starts_with(comm)
        && (proc_name == name || (kernel_thread && comm.starts_with("kworker")))
}

/// Compare every process of `truth` (but [`transient`] ones) with the layer's view.
pub fn compare_every_process<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
) -> Report {
    let mut r = Report::default();
    assert!(
        truth.every_process_detailed(),
        "the truth does not detail every process (busybox userland?)"
    );
    let list = os.process_list(core).expect("process list");
    for (what, why) in &list.skipped {
        r.mismatches
            .push(format!("process list skipped {what}: {why}"));
    }
    let layer: BTreeMap<u32, &LinuxTask> = list.tasks.iter().map(|t| (t.pid, t)).collect();

    // Processes of the layer absent from the truth: only transient ones may appear later.
    let loop_pid = truth.task("vmi_loop").map(|t| t.pid);
    for t in layer.values() {
        let known = truth.task_by_pid(t.pid).is_some();
        let later = Some(t.ppid) == loop_pid || t.comm.starts_with("kworker");
        if !known && !later {
            r.mismatches.push(format!(
                "{} {}: in the layer, not in the truth (ppid {})",
                t.pid, t.comm, t.ppid
            ));
        }
    }

    for t in truth.tasks.iter().filter(|t| !transient(truth, t)) {
        let Some(ours) = layer.get(&t.pid) else {
            r.miss(t, "process", "missing from the layer".into());
            continue;
        };
        r.count("processes", 1);
        compare_task(&mut r, core, os, truth, t, ours);
    }
    r
}

fn compare_task<D: VmiRead<Architecture = Amd64>>(
    r: &mut Report,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
    t: &Task,
    ours: &LinuxTask,
) {
    if !same_name(&t.comm, ours) {
        r.miss(
            t,
            "name",
            format!("{:?} (comm {:?}) vs {:?}", ours.name, ours.comm, t.comm),
        );
    }
    let want = (t.tgid, t.ppid, t.uid, t.gid, t.euid, t.egid);
    let got = (
        ours.tgid,
        ours.ppid,
        ours.uid,
        Some(ours.gid),
        Some(ours.euid),
        Some(ours.egid),
    );
    if got != want {
        r.miss(
            t,
            "tgid/ppid/uid/gid/euid/egid",
            format!("{got:?} vs {want:?}"),
        );
    }
    // /proc's start time is in clock ticks (USER_HZ = 100 on x86-64) since boot.
    if let Some(ticks) = t.start_ticks {
        let ours_ticks = ours.start_boottime_ns.map(|ns| ns / 10_000_000);
        if ours_ticks != Some(ticks) {
            r.miss(t, "start time", format!("{ours_ticks:?} ticks vs {ticks}"));
        }
    }
    let blocked = truth.blocked_by_design(t.pid);
    if blocked && ours.state.letter().to_string() != t.state {
        r.miss(
            t,
            "state",
            format!("{} vs {}", ours.state.letter(), t.state),
        );
    }
    if !t.ns_pid.is_empty() && ours.ns_pids != t.ns_pid {
        r.miss(t, "NSpid", format!("{:?} vs {:?}", ours.ns_pids, t.ns_pid));
    }
    if !ours.problems.is_empty() {
        r.miss(t, "problems", format!("{:?}", ours.problems));
    }

    // Namespaces: the PID namespace and the host name the task sees.
    match os.task_namespaces(core, ours) {
        Ok(ns) => {
            if let Some(&ino) = t.namespaces.get("pid")
                && ns.pid_ns.map(u64::from) != Some(ino)
            {
                r.miss(t, "pid namespace", format!("{:?} vs {ino}", ns.pid_ns));
            }
            if let Some(host) = truth.hostname_of(t.pid)
                && ns.hostname.as_deref() != Some(host)
            {
                r.miss(t, "hostname", format!("{:?} vs {host:?}", ns.hostname));
            }
        }
        Err(e) => r.miss(t, "namespaces", format!("error {e}")),
    }

    // Threads: every tid with its comm (and state when blocked by design).
    match os.threads_of(core, ours.task) {
        Ok(list) => {
            if !list.skipped.is_empty() {
                r.miss(t, "threads skipped", format!("{:?}", list.skipped));
            }
            let got: BTreeMap<u32, &LinuxTask> = list.tasks.iter().map(|x| (x.pid, x)).collect();
            let want: Vec<u32> = t.threads.iter().map(|x| x.tid).collect();
            let got_ids: Vec<u32> = got.keys().copied().collect();
            if got_ids != want {
                r.miss(t, "thread ids", format!("{got_ids:?} vs {want:?}"));
            }
            for th in &t.threads {
                let Some(x) = got.get(&th.tid) else { continue };
                r.count("threads", 1);
                if !same_name(&th.comm, x) || x.tgid != t.pid {
                    r.miss(
                        t,
                        "thread",
                        format!(
                            "{} {:?} tgid {} vs {:?} tgid {}",
                            th.tid, x.comm, x.tgid, th.comm, t.pid
                        ),
                    );
                }
                if blocked && x.state.letter().to_string() != th.state {
                    r.miss(
                        t,
                        "thread state",
                        format!("{} {} vs {}", th.tid, x.state.letter(), th.state),
                    );
                }
            }
        }
        Err(e) => r.miss(t, "threads", format!("error {e}")),
    }

    let Some(p) = truth.process_by_pid(t.pid) else {
        r.miss(t, "truth", "no details in the truth".into());
        return;
    };
    let no_mm = ours.mm.is_none();

    // The executable, as the process sees its path.
    r.count("exe", 1);
    match (os.exe_path(core, ours), &p.exe) {
        (Ok(got), want) if got.as_ref() == want.as_ref() => {}
        (Err(_), None) if no_mm => {}
        (got, want) => r.miss(t, "exe", format!("{got:?} vs {want:?}")),
    }

    // Command line and environment.
    for (what, got, want) in [
        ("cmdline", os.cmdline(core, ours), &p.argv),
        ("environ", os.environment(core, ours), &p.environ),
    ] {
        r.count(what, 1);
        match got {
            Ok(v) if v == *want => {}
            Err(_) if no_mm && want.is_empty() => {}
            Ok(v) => r.miss(t, what, format!("{v:?} vs {want:?}")),
            Err(e) => r.miss(t, what, format!("error {e} vs {want:?}")),
        }
    }

    // VMAs, as /proc/PID/maps prints them.
    let vmas = os.vmas(core, ours);
    match &vmas {
        Err(_) if no_mm && p.maps.is_empty() => {}
        Err(e) => r.miss(
            t,
            "maps",
            format!("error {e} ({} lines in /proc)", p.maps.len()),
        ),
        Ok(list) => {
            if !list.skipped.is_empty() {
                r.miss(t, "maps skipped", format!("{:?}", list.skipped));
            }
            let got: Vec<String> = list.vmas.iter().map(|v| v.maps_line()).collect();
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
            r.count("vmas", want.len());
            diff_lines(r, t, "maps", &got, &want);
        }
    }

    // Open files, as readlink /proc/PID/fd/N prints them.
    match os.open_files(core, ours) {
        Ok(files) => {
            let got: Vec<String> = files
                .iter()
                .map(|f| match &f.path {
                    Ok(p) => format!("{} {p}", f.fd),
                    Err(e) => format!("{} <error {e}>", f.fd),
                })
                .collect();
            let want: Vec<String> = p
                .fds
                .iter()
                .map(|f| format!("{} {}", f.fd, f.target))
                .collect();
            r.count("fds", want.len());
            diff_lines(r, t, "fds", &got, &want);
        }
        Err(e) => r.miss(t, "fds", format!("error {e} ({} in /proc)", p.fds.len())),
    }
}

/// Report the lines only one side has (at most 8 of each side per process, plus counts).
fn diff_lines(r: &mut Report, t: &Task, what: &str, got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let only_got: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
    let only_want: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
    if only_got.is_empty() && only_want.is_empty() {
        r.miss(
            t,
            what,
            format!("same {} lines, different order", got.len()),
        );
        return;
    }
    r.miss(
        t,
        what,
        format!(
            "{} lines vs {} in /proc; {} only in the layer, {} only in /proc",
            got.len(),
            want.len(),
            only_got.len(),
            only_want.len()
        ),
    );
    for g in only_got.iter().take(8) {
        r.miss(t, what, format!("layer only: {g}"));
    }
    for w in only_want.iter().take(8) {
        r.miss(t, what, format!("/proc only: {w}"));
    }
}

#[cfg(test)]
mod tests {
    use super::same_name_parts as same;

    #[test]
    fn kernel_thread_names() {
        assert!(same("vmi_server", "vmi_server", "vmi_server", false));
        assert!(!same("vmi_serverX", "vmi_server", "vmi_server", false));
        // A worker's work item may change between the truth and the pause.
        assert!(same(
            "kworker/0:1-events",
            "kworker/0:1+mm",
            "kworker/0:1",
            true
        ));
        assert!(!same("kworker/0:10", "kworker/0:1", "kworker/0:1", false));
        // Other kernel threads: the full name exactly.
        assert!(same(
            "ext4-rsv-conversion",
            "ext4-rsv-conversion",
            "ext4-rsv-conver",
            true
        ));
        assert!(!same(
            "ext4-rsv-conversion",
            "ext4-rsv-conver",
            "ext4-rsv-conver",
            true
        ));
    }
}
