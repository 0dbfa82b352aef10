//! Shared test support: a read-only driver over the test guest's RAM file, and the checks
//! every configuration runs against the guest's truth.

#![allow(dead_code, missing_docs)]

pub mod procs;

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vmi_arch_amd64::{Amd64, PagingMode};
use vmi_core::{Gfn, Pa, PageAbsence, VmiCore, VmiDriver, VmiError, VmiInfo, VmiOs, VmiRead};
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{Truth, gpa_to_file_offset};

/// Guest RAM as a file (QEMU's `memory-backend-file`), read with `pread`: the q35 layout
/// (identity below 2 or 2.75 GiB, the rest from 4 GiB).
pub struct RamFile {
    file: File,
    size: u64,
    /// Bytes read in place of the file's, at these guest-physical addresses.
    patches: Vec<(u64, Vec<u8>)>,
}

impl RamFile {
    pub fn open(path: &Path, size: u64) -> std::io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            size,
            patches: Vec::new(),
        })
    }

    /// Reads `bytes` at `pa` instead of the guest's (the file is not changed).
    pub fn patched(mut self, pa: Pa, bytes: &[u8]) -> Self {
        self.patches.push((pa.0, bytes.to_vec()));
        self
    }
}

impl VmiDriver for RamFile {
    type Architecture = Amd64;
    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: 4096,
            max_gfn: Gfn((self.size + (4 << 30)) >> 12),
            vcpus: 0,
            live: false,
            cache_pages: false,
            kind: "ramfile",
        })
    }
}

impl VmiRead for RamFile {
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        if offset + buf.len() > 4096 {
            return Err(VmiError::InvalidArgument("crosses a page".into()));
        }
        let gpa = (gfn.0 << 12) + offset as u64;
        let off = gpa_to_file_offset(self.size, gpa).ok_or(VmiError::PageUnavailable {
            gfn,
            reason: PageAbsence::BeyondMemory,
        })?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| VmiError::io("reading the RAM file", e))?;
        let end = gpa + buf.len() as u64;
        for (at, bytes) in &self.patches {
            let lo = (*at).max(gpa);
            let hi = (at + bytes.len() as u64).min(end);
            if lo < hi {
                buf[(lo - gpa) as usize..(hi - gpa) as usize]
                    .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
            }
        }
        Ok(())
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        let low = if self.size >= 0xb000_0000 {
            0x8000_0000
        } else {
            0xb000_0000
        };
        let below = self.size.min(low);
        let mut r = vec![Pa(0)..Pa(below)];
        if self.size > below {
            r.push(Pa(1 << 32)..Pa((1 << 32) + self.size - below));
        }
        Ok(r)
    }
}

/// Prints and returns true when the test should be skipped.
pub fn skip(msg: &str) {
    eprintln!("SKIPPED: {msg}");
}

/// Tasks whose presence does not depend on timing: the `vmi_*` processes (but the truth
/// printer of the realistic userland, gone once the guest is ready), init, kthreadd and
/// kernel threads other than workers.
pub fn long_lived(truth: &Truth, t: &vmi_test_guest::Task) -> bool {
    if truth.printer_pid == Some(t.pid) {
        return false;
    }
    t.comm.starts_with("vmi_") || t.pid <= 2 || (t.ppid == 2 && !t.comm.starts_with("kworker"))
}

/// Every check of the OS layer against the truth of the same boot. `label` names the
/// driver and configuration in messages.
pub fn check_all<D: VmiRead<Architecture = Amd64>>(
    label: &str,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
) {
    let k = os.kernel();
    eprintln!(
        "[{label}] release {:?} slide {:#x} phys_base {:#x} root {} {:?} pob {} kpti {:?} profile {:?} in {:?}",
        k.release,
        k.kaslr_offset,
        k.phys_base,
        k.kernel_root,
        k.paging_mode,
        k.page_offset_base,
        k.kpti,
        k.profile_origin,
        k.discovery_time
    );
    assert_eq!(
        k.release.as_deref(),
        Some(truth.release.as_str()),
        "[{label}] release"
    );
    assert_eq!(
        k.banner.as_deref().map(str::trim_end),
        Some(truth.version.as_str()),
        "[{label}] banner"
    );
    assert_eq!(
        k.paging_mode == PagingMode::Level5,
        truth.five_level_paging(),
        "[{label}] paging mode"
    );
    assert_eq!(k.kpti, Some(truth.kpti()), "[{label}] kpti");
    if let Some(pob) = truth.ksym("page_offset_base") {
        let v = core
            .read_u64((vmi_core::Va(pob), k.kernel_root))
            .expect("page_offset_base readable");
        assert_eq!(k.page_offset_base.0, v, "[{label}] page_offset_base");
    }

    // kallsyms from memory equal /proc/kallsyms.
    let mut compared = 0;
    for (name, &addr) in &truth.ksyms {
        if let Some(ours) = os.symbol_address(name) {
            assert_eq!(ours.0, addr, "[{label}] symbol {name}");
            compared += 1;
        }
    }
    assert!(compared >= 20, "[{label}] only {compared} symbols compared");

    // The kernel log (read a batch of descriptors at a time): records in sequence order,
    // and the first record of the boot, when still in the ring, is the banner.
    let log = os.dmesg(core).expect("dmesg");
    assert!(log.len() > 50, "[{label}] only {} log records", log.len());
    assert!(
        log.windows(2).all(|w| w[0].seq < w[1].seq),
        "[{label}] log sequence numbers"
    );
    if log[0].seq == 0 {
        assert!(
            log[0].text.starts_with("Linux version"),
            "[{label}] first log record: {:?}",
            log[0].text
        );
    }

    // Processes.
    let list = os.process_list(core).expect("process list");
    assert!(
        list.skipped.is_empty(),
        "[{label}] skipped: {:?}",
        list.skipped
    );
    for t in truth
        .tasks
        .iter()
        .filter(|t| t.pid == t.tgid && long_lived(truth, t))
    {
        let ours = list
            .tasks
            .iter()
            .find(|p| p.pid == t.pid)
            .unwrap_or_else(|| panic!("[{label}] process {} {} missing", t.pid, t.comm));
        // /proc shows a kernel thread's full name; comm holds 15 bytes of it.
        let comm = &t.comm[..t.comm.len().min(15)];
        assert_eq!(
            (ours.tgid, ours.ppid, ours.comm.as_str(), ours.uid),
            (t.tgid, t.ppid, comm, t.uid),
            "[{label}] process {}",
            t.pid
        );
        // And its whole name as /proc shows it (a kernel thread's full name), but for a
        // worker whose work item can change after the truth.
        assert!(
            procs::same_name(&t.comm, ours),
            "[{label}] name of {}: {:?} vs {:?}",
            t.pid,
            ours.name,
            t.comm
        );
        // Only a process blocked by design keeps the state the truth printed (vmi_loop
        // wakes every second: comparing it flaked with "R" vs "S").
        if truth.blocked_by_design(t.pid) {
            assert_eq!(
                ours.state.letter().to_string(),
                t.state,
                "[{label}] state of {}",
                t.comm
            );
        }
    }
    let long_names: Vec<&str> = list
        .tasks
        .iter()
        .filter(|p| p.name.len() > 15 && !p.comm.starts_with("kworker"))
        .map(|p| p.name.as_str())
        .collect();
    eprintln!("[{label}] kernel threads with long names: {long_names:?}");
    let generic = VmiOs::<D>::processes(os, core).expect("VmiOs::processes");
    assert_eq!(generic.len(), list.tasks.len());

    // Threads: every truth thread of a long-lived process is found.
    let threads = os.all_threads(core).expect("threads");
    for t in truth.tasks.iter().filter(|t| long_lived(truth, t)) {
        assert!(
            threads
                .tasks
                .iter()
                .any(|x| x.pid == t.pid && x.tgid == t.tgid),
            "[{label}] thread {} {} missing",
            t.pid,
            t.comm
        );
    }

    // User memory: environment marker, command lines (of the long-lived `vmi_*` processes
    // with an address space: the realistic userland details every process, zombies and
    // transient ones too; tests/realistic.rs compares those).
    for p in truth.processes.iter().filter(|p| {
        p.comm.starts_with("vmi_")
            && !p.maps.is_empty()
            && truth
                .task_by_pid(p.pid)
                .is_some_and(|t| long_lived(truth, t))
    }) {
        let task = list
            .tasks
            .iter()
            .find(|t| t.pid == p.pid)
            .expect("marked process");
        let argv = os.cmdline(core, task).expect("cmdline");
        assert_eq!(argv, p.argv, "[{label}] argv of {}", p.comm);
        let env = os.environment(core, task).expect("environment");
        assert_eq!(env, p.environ, "[{label}] environ of {}", p.comm);
    }
    let sleeper = truth.process("vmi_sleeper").expect("vmi_sleeper in truth");
    // vmi_sleeper sleeps in nanosleep (35) or clock_nanosleep (230): its saved user
    // registers hold the system call, and CS is 64-bit user code.
    let task = list.tasks.iter().find(|t| t.pid == sleeper.pid).unwrap();
    let frame = os.syscall_frame(core, task).expect("pt_regs");
    assert!(matches!(frame.nr, 35 | 230), "[{label}] syscall {frame:?}");
    assert_eq!(frame.cs, 0x33, "[{label}] user cs {frame:?}");
    assert!(
        sleeper
            .environ
            .iter()
            .any(|e| e == vmi_test_guest::ENV_MARKER)
    );

    // VMAs and files of vmi_mapper.
    let mapper = truth.process("vmi_mapper").expect("vmi_mapper in truth");
    let task = list.tasks.iter().find(|t| t.pid == mapper.pid).unwrap();
    let vmas = os.vmas(core, task).expect("vmas");
    assert!(
        vmas.skipped.is_empty(),
        "[{label}] vma skipped: {:?}",
        vmas.skipped
    );
    let ours: Vec<(u64, u64, String, u64, Option<String>)> = vmas
        .vmas
        .iter()
        .map(|v| (v.start.0, v.end.0, v.perms(), v.offset(), v.path.clone()))
        .collect();
    // /proc/<pid>/maps names special mappings ([stack], [vdso]...) that are anonymous VMAs.
    let want: Vec<(u64, u64, String, u64, Option<String>)> = mapper
        .maps
        .iter()
        .map(|m| {
            let path = m.path.clone().filter(|p| p.starts_with('/'));
            (
                m.start,
                m.end,
                m.perms.clone(),
                if path.is_some() { m.offset } else { 0 },
                path,
            )
        })
        .collect();
    let ours_cmp: Vec<_> = ours
        .iter()
        .map(|(s, e, p, o, path)| {
            (
                *s,
                *e,
                p.clone(),
                if path.is_some() { *o } else { 0 },
                path.clone(),
            )
        })
        .collect();
    assert_eq!(ours_cmp, want, "[{label}] maps of vmi_mapper");
    let exe = os.exe_path(core, task).expect("exe path");
    assert_eq!(exe.as_deref(), Some("/bin/vmi_mapper"), "[{label}] exe");
    let fds = os.open_files(core, task).expect("open files");
    for f in &mapper.fds {
        let ours = fds
            .iter()
            .find(|o| o.fd == f.fd)
            .unwrap_or_else(|| panic!("[{label}] fd {} missing", f.fd));
        assert_eq!(
            ours.path.as_deref().ok(),
            Some(f.target.as_str()),
            "[{label}] fd {}",
            f.fd
        );
    }

    // Modules.
    let vmi_os_linux::ModuleList {
        modules: mods,
        skipped,
    } = os.module_list(core).expect("modules");
    assert!(skipped.is_empty(), "[{label}] module skipped: {skipped:?}");
    let mut ours: Vec<_> = mods
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.size,
                m.base.0,
                m.state.proc_name().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<_> = truth
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.size, m.address, m.state.clone()))
        .collect();
    ours.sort();
    want.sort();
    assert_eq!(ours, want, "[{label}] modules");

    // Hostname, uptime, dmesg.
    assert_eq!(
        os.hostname(core).expect("hostname"),
        truth.hostname,
        "[{label}] hostname"
    );
    let up = os.uptime(core).expect("uptime").as_secs_f64();
    assert!(
        up + 1.0 >= truth.uptime_seconds && up < truth.uptime_seconds + 3600.0,
        "[{label}] uptime {up} vs truth {}",
        truth.uptime_seconds
    );
    let log = os.dmesg(core).expect("dmesg");
    assert!(log.len() > 50, "[{label}] only {} log records", log.len());
    assert!(log[0].text.starts_with("Linux version") || log[0].seq > 0);
    let lines: Vec<String> = log.iter().flat_map(|r| r.lines()).collect();
    for t in &truth.dmesg_tail {
        assert!(
            lines.iter().any(|l| l == t),
            "[{label}] dmesg line {t:?} not found"
        );
    }
}
