//! The ground truth the guest prints about itself, and its parser.
//!
//! The guest's `/init` prints, on the serial console, a block of lines between
//! `VMI_TRUTH_BEGIN` and `VMI_TRUTH_END` (lines end with `\r\n`). Each line starts with a
//! keyword; the parser turns the block into [`Truth`], which is also written as
//! `truth.json`. Every expected value of a test must come from the truth of the *same*
//! boot: KASLR changes addresses on every boot and Debian updates change the kernel.
//!
//! Line grammar (fields separated by single spaces; the last field may contain spaces):
//!
//! | keyword | fields |
//! |---|---|
//! | `release` | `uname -r` |
//! | `version` | `/proc/version` (the `linux_banner` text without its newline) |
//! | `cmdline` | `/proc/cmdline` |
//! | `hostname` | `hostname` |
//! | `uptime` | `/proc/uptime` |
//! | `ncpus` | number of online CPUs |
//! | `cpuflags` | the `flags` of the first CPU in `/proc/cpuinfo` |
//! | `vuln` | `<name> <text>` from `/sys/devices/system/cpu/vulnerabilities/<name>` |
//! | `task` | `<pid> <ppid> <tgid> <uid> <state> <comm>` (from `/proc/<pid>/status`) |
//! | `proc` | `<pid> <arg_start> <arg_end> <env_start> <env_end> <comm>` (stat fields 48-51) |
//! | `argv` | `<pid> <argument>` (one line per argument, in order) |
//! | `environ` | `<pid> <KEY=VALUE>` (one line per variable, in order) |
//! | `maps` | `<pid> <line of /proc/<pid>/maps>` |
//! | `fd` | `<pid> <fd> <link target>` |
//! | `module` | a line of `/proc/modules` |
//! | `ksym` | a line of `/proc/kallsyms` (`<addr> <type> <name>`) |
//! | `iomem` | a line of `/proc/iomem` (leading spaces = nesting, two per level) |
//! | `vmcoreinfo_note` | `/sys/kernel/vmcoreinfo` (`<paddr hex> <size hex>`) |
//! | `bootmsg` | a boot message of interest (paging mode, page-table isolation, ...) |
//! | `dmesg` | one of the last 20 lines of `dmesg` |
//! | `userland` | `busybox` or `realistic` |
//! | `blocked` | `<pid>` of a process blocked by design: its state (and its threads') cannot change after the truth is printed |
//!
//! The realistic userland prints `proc`, `argv`, `environ`, `maps` and `fd` lines for
//! **every** process (kernel threads and zombies included), plus:
//!
//! | keyword | fields |
//! |---|---|
//! | `ids` | `<pid> <gid> <NSpid> <NStgid> <euid> <egid> <starttime>` (real gid; the pid and tgid in each PID namespace, outermost first, comma-separated; effective ids; start time in clock ticks since boot, `stat` field 22) |
//! | `exe` | `<pid> <path>`: `readlink /proc/<pid>/exe` (none for kernel threads and zombies) |
//! | `thread` | `<pid> <tid> <state> <comm>` (every entry of `/proc/<pid>/task`) |
//! | `ns` | `<pid> <kind> <inode>` (`readlink /proc/<pid>/ns/<kind>` for `pid`, `mnt`, `uts`) |
//! | `uts` | `<inode> <hostname>` (the host name of each UTS namespace) |
//! | `root` | `<pid> <path>`: the process's root directory (`readlink /proc/<pid>/root`) when it is not the printer's; its `maps` and `fd` lines are then read from that root, as the process sees them |
//! | `printer` | `<pid>` of the process printing the truth (it exits right after: leave it out) |
//! | `warning` | something the printer could not ensure (e.g. a process not settled in time) |
//! | `printed` | how long the printer waited and printed |
//!
//! Unknown lines (e.g. a kernel message that got interleaved) are kept in
//! [`Truth::unknown_lines`] instead of failing the parse.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Marker line that opens the truth block.
pub const TRUTH_BEGIN: &str = "VMI_TRUTH_BEGIN";
/// Marker line that closes the truth block.
pub const TRUTH_END: &str = "VMI_TRUTH_END";
/// Marker line printed when the guest is ready (after the truth block).
pub const READY: &str = "VMI_GUEST_READY";
/// Marker lines around the optional full `/proc/kallsyms` dump (`vmi_kallsyms`).
pub const KALLSYMS_BEGIN: &str = "VMI_KALLSYMS_BEGIN";
/// See [`KALLSYMS_BEGIN`].
pub const KALLSYMS_END: &str = "VMI_KALLSYMS_END";
/// The environment marker of `vmi_sleeper`.
pub const ENV_MARKER: &str = "VMI_ENV_MARKER=VMI-ENV-MARKER-5a17c0de";

/// Longest accepted truth block (lines), a bound against runaway input.
const MAX_LINES: usize = 1_000_000;

/// One task (thread or process) as listed in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// PID (thread id).
    pub pid: u32,
    /// Parent PID (`PPid`).
    pub ppid: u32,
    /// Thread-group id (`Tgid`, the user-visible process id).
    pub tgid: u32,
    /// Real user id.
    pub uid: u32,
    /// State letter (`S`, `R`, `I`, `D`, ...).
    pub state: String,
    /// `comm` (the `Name:` of `/proc/<pid>/status`).
    pub comm: String,
    /// Real group id (realistic userland only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// `NSpid`: the pid in each PID namespace it belongs to, outermost first (realistic
    /// userland only; one entry outside containers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ns_pid: Vec<u32>,
    /// `NStgid`: the tgid in each PID namespace, outermost first (realistic userland only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ns_tgid: Vec<u32>,
    /// Every thread (`/proc/<pid>/task`, the leader included; realistic userland only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<Thread>,
    /// Effective user id (realistic userland only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// Effective group id (realistic userland only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egid: Option<u32>,
    /// Start time in clock ticks (`USER_HZ`, 100 on x86-64) since boot, `stat` field 22
    /// (realistic userland only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// Namespace inodes by kind (`pid`, `mnt`, `uts`; realistic userland only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, u64>,
}

/// One thread of a process (`/proc/<pid>/task/<tid>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    /// Thread id.
    pub tid: u32,
    /// State letter.
    pub state: String,
    /// The thread's own `comm`.
    pub comm: String,
}

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    /// Start address (inclusive).
    #[serde(with = "hex")]
    pub start: u64,
    /// End address (exclusive).
    #[serde(with = "hex")]
    pub end: u64,
    /// Permissions, e.g. `r-xp`.
    pub perms: String,
    /// File offset.
    #[serde(with = "hex")]
    pub offset: u64,
    /// Device `major:minor` (hex).
    pub dev: String,
    /// Inode number (0 for anonymous mappings).
    pub inode: u64,
    /// Path or pseudo-name (`[stack]`, `[vdso]`, ...); `None` for anonymous mappings.
    pub path: Option<String>,
}

/// An open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    /// Descriptor number.
    pub fd: u32,
    /// `readlink /proc/<pid>/fd/<fd>`.
    pub target: String,
}

/// Details of a process: the marked `vmi_*` ones in the busybox userland, every process in
/// the realistic one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Process {
    /// PID.
    pub pid: u32,
    /// `comm`.
    pub comm: String,
    /// `mm->arg_start` (user virtual address of argv strings).
    #[serde(with = "hex")]
    pub arg_start: u64,
    /// `mm->arg_end`.
    #[serde(with = "hex")]
    pub arg_end: u64,
    /// `mm->env_start` (user virtual address of the environment strings).
    #[serde(with = "hex")]
    pub env_start: u64,
    /// `mm->env_end`.
    #[serde(with = "hex")]
    pub env_end: u64,
    /// `/proc/<pid>/cmdline`, split at NULs.
    pub argv: Vec<String>,
    /// `/proc/<pid>/environ`, split at NULs (`KEY=VALUE`).
    pub environ: Vec<String>,
    /// `/proc/<pid>/maps`.
    pub maps: Vec<MapEntry>,
    /// `/proc/<pid>/fd/*`.
    pub fds: Vec<Fd>,
    /// The root directory (`readlink /proc/<pid>/root`) when it differs from the truth
    /// printer's (a chroot'ed container); [`Process::maps`] and [`Process::fds`] are then
    /// as the process itself sees them (paths from its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// `readlink /proc/<pid>/exe` (realistic userland; `None` for kernel threads and
    /// zombies), as the process sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// One line of `/proc/modules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Module name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Reference count.
    pub refcount: u64,
    /// Modules using this one.
    pub used_by: Vec<String>,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
    /// Base address of the module's core (as shown to root).
    #[serde(with = "hex")]
    pub address: u64,
}

/// One range of `/proc/iomem`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IomemRange {
    /// First byte.
    #[serde(with = "hex")]
    pub start: u64,
    /// Last byte (inclusive, as printed).
    #[serde(with = "hex")]
    pub end: u64,
    /// Name, e.g. `System RAM`, `Kernel code`.
    pub name: String,
    /// Nesting depth (0 = top level).
    pub depth: u32,
}

/// `/sys/kernel/vmcoreinfo`: where the VMCOREINFO ELF note lives in guest physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmcoreinfoNote {
    /// Guest physical address of the note.
    #[serde(with = "hex")]
    pub paddr: u64,
    /// Size of the note in bytes.
    pub size: u64,
}

/// Everything the guest reported about itself in one boot (see the module docs).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Truth {
    /// `uname -r`.
    pub release: String,
    /// `/proc/version`: the `linux_banner` string without the trailing newline.
    pub version: String,
    /// Kernel command line.
    pub cmdline: String,
    /// Host name (`vmiguest`).
    pub hostname: String,
    /// First field of `/proc/uptime` in seconds.
    pub uptime_seconds: f64,
    /// Number of online CPUs.
    pub ncpus: u32,
    /// CPU flags of the first CPU (`la57`, `pti`, `pcid`, ...).
    pub cpu_flags: Vec<String>,
    /// `/sys/devices/system/cpu/vulnerabilities/*` (e.g. `meltdown` → `Mitigation: PTI`).
    pub cpu_vulnerabilities: BTreeMap<String, String>,
    /// All tasks, in `/proc` order.
    pub tasks: Vec<Task>,
    /// The marked `vmi_*` processes with details, in `/proc` order.
    pub processes: Vec<Process>,
    /// `/proc/modules`.
    pub modules: Vec<Module>,
    /// Runtime (KASLR-shifted) addresses of selected kernel symbols, by name.
    #[serde(with = "hex_map")]
    pub ksyms: BTreeMap<String, u64>,
    /// `/proc/iomem` (all ranges).
    pub iomem: Vec<IomemRange>,
    /// Location of the VMCOREINFO note.
    pub vmcoreinfo_note: Option<VmcoreinfoNote>,
    /// The VMCOREINFO text (`KEY=VALUE` lines), read by the host from guest RAM at
    /// [`Truth::vmcoreinfo_note`] after boot; `None` if that failed.
    pub vmcoreinfo: Option<String>,
    /// Boot messages of interest (`dmesg | grep`: paging, page-table isolation, ...).
    pub boot_messages: Vec<String>,
    /// The last lines of `dmesg`.
    pub dmesg_tail: Vec<String>,
    /// File holding the full `/proc/kallsyms` (only with the `vmi_kallsyms` option).
    pub kallsyms_path: Option<PathBuf>,
    /// The userland that printed this truth (`busybox`, `realistic`; `None` for logs older
    /// than the `userland` line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userland: Option<String>,
    /// Processes blocked by design: their state, and their threads', cannot change after
    /// the truth was printed, so tests may compare it (see [`Truth::blocked_by_design`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<u32>,
    /// PID of the process that printed the truth (realistic userland): it exited before
    /// the guest was ready, leave it out of comparisons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printer_pid: Option<u32>,
    /// Host name of each UTS namespace, by namespace inode (realistic userland).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uts_hostnames: BTreeMap<u64, String>,
    /// What the printer could not ensure (should be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How long the printer waited for the workload and printed (realistic userland).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printed: Option<String>,
    /// Lines of the block that matched no keyword (should be empty).
    pub unknown_lines: Vec<String>,
}

impl Truth {
    /// The first task whose `comm` is `comm`.
    pub fn task(&self, comm: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.comm == comm)
    }

    /// The first marked process whose `comm` is `comm` (e.g. `vmi_sleeper`).
    pub fn process(&self, comm: &str) -> Option<&Process> {
        self.processes.iter().find(|p| p.comm == comm)
    }

    /// Where the value of [`crate::ENV_MARKER`] lies in `vmi_sleeper`'s memory, by the
    /// guest's own `/proc`: its pid, and `mm->env_start` plus the variables before it and
    /// the marker's `KEY=`.
    pub fn env_marker_address(&self) -> Option<(u32, u64)> {
        let sleeper = self.process("vmi_sleeper")?;
        let (key, _) = crate::ENV_MARKER.split_once('=')?;
        let before: u64 = sleeper
            .environ
            .iter()
            .take_while(|e| *e != crate::ENV_MARKER)
            .map(|e| e.len() as u64 + 1)
            .sum();
        Some((
            sleeper.pid,
            sleeper.env_start + before + key.len() as u64 + 1,
        ))
    }

    /// The task with this pid.
    pub fn task_by_pid(&self, pid: u32) -> Option<&Task> {
        self.tasks.iter().find(|t| t.pid == pid)
    }

    /// The detailed process with this pid.
    pub fn process_by_pid(&self, pid: u32) -> Option<&Process> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// Whether the guest guarantees that `pid` (and its threads) stayed blocked since the
    /// truth was printed: only then may a test compare its state.
    pub fn blocked_by_design(&self, pid: u32) -> bool {
        self.blocked.contains(&pid)
    }

    /// Whether every process got details (`processes`), not only the marked ones.
    pub fn every_process_detailed(&self) -> bool {
        self.userland.as_deref() == Some("realistic")
    }

    /// The host name `pid` sees (its UTS namespace's), if the truth has it.
    pub fn hostname_of(&self, pid: u32) -> Option<&str> {
        let ino = self.task_by_pid(pid)?.namespaces.get("uts")?;
        self.uts_hostnames.get(ino).map(String::as_str)
    }

    /// Marked processes whose parent is `ppid`.
    pub fn children_of(&self, ppid: u32) -> Vec<&Task> {
        self.tasks.iter().filter(|t| t.ppid == ppid).collect()
    }

    /// Runtime address of a kernel symbol reported in the truth.
    pub fn ksym(&self, name: &str) -> Option<u64> {
        self.ksyms.get(name).copied()
    }

    /// The `System RAM` ranges (top level) as `(first, last)` inclusive pairs.
    pub fn system_ram(&self) -> Vec<(u64, u64)> {
        self.iomem
            .iter()
            .filter(|r| r.depth == 0 && r.name == "System RAM")
            .map(|r| (r.start, r.end))
            .collect()
    }

    /// The value of a VMCOREINFO key (e.g. `NUMBER(pgtable_l5_enabled)`, `KERNELOFFSET`).
    pub fn vmcoreinfo_value(&self, key: &str) -> Option<&str> {
        self.vmcoreinfo.as_deref()?.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Whether the kernel runs with 5-level paging (VMCOREINFO, else the `la57` CPU flag
    /// together with a `5-level` boot message).
    pub fn five_level_paging(&self) -> bool {
        match self.vmcoreinfo_value("NUMBER(pgtable_l5_enabled)") {
            Some(v) => v.trim() == "1",
            None => self.cpu_flags.iter().any(|f| f == "la57"),
        }
    }

    /// Whether kernel page-table isolation (KPTI) is on.
    pub fn kpti(&self) -> bool {
        self.cpu_vulnerabilities
            .get("meltdown")
            .is_some_and(|v| v.contains("PTI"))
            || self
                .boot_messages
                .iter()
                .any(|m| m.contains("page tables isolation: enabled"))
    }

    /// Whether the command line disabled KASLR.
    pub fn nokaslr(&self) -> bool {
        self.cmdline.split_whitespace().any(|w| w == "nokaslr")
    }
}

/// Addresses are written as `"0x..."` strings in JSON: 64-bit values do not survive tools
/// that read numbers as doubles (jq, JavaScript). Plain numbers are accepted on input.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum HexOrNum {
        Num(u64),
        Str(String),
    }

    impl HexOrNum {
        pub(super) fn value(self) -> Result<u64, String> {
            match self {
                HexOrNum::Num(n) => Ok(n),
                HexOrNum::Str(s) => {
                    let t = s.strip_prefix("0x").unwrap_or(&s);
                    u64::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a hex address"))
                }
            }
        }
    }

    pub(super) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        HexOrNum::deserialize(d)?.value().map_err(D::Error::custom)
    }
}

/// [`hex`] for the values of a name → address map.
mod hex_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        m: &BTreeMap<String, u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, format!("{v:#x}"))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, u64>, D::Error> {
        let raw = BTreeMap::<String, super::hex::HexOrNum>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| Ok((k, v.value().map_err(D::Error::custom)?)))
            .collect()
    }
}

fn err(line: usize, detail: impl Into<String>) -> Error {
    Error::Truth {
        line,
        detail: detail.into(),
    }
}

fn dec<T: std::str::FromStr>(line: usize, what: &str, s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| err(line, format!("{what}: `{s}` is not a decimal number")))
}

/// A comma-separated list of decimal numbers (at most 64: PID namespaces nest 32 deep).
fn dec_list(line: usize, what: &str, s: &str) -> Result<Vec<u32>> {
    let v = s
        .split(',')
        .map(|x| dec(line, what, x))
        .collect::<Result<Vec<u32>>>()?;
    if v.len() > 64 {
        return Err(err(line, format!("{what}: {} entries", v.len())));
    }
    Ok(v)
}

fn hex(line: usize, what: &str, s: &str) -> Result<u64> {
    let t = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(t, 16).map_err(|_| err(line, format!("{what}: `{s}` is not hex")))
}

/// Split off `n` space-separated fields; the remainder (possibly empty) is returned last.
fn fields<'a>(line: usize, s: &'a str, n: usize, what: &str) -> Result<(Vec<&'a str>, &'a str)> {
    let mut out = Vec::with_capacity(n);
    let mut rest = s.trim_start();
    for _ in 0..n {
        let (f, r) = match rest.split_once(char::is_whitespace) {
            Some((f, r)) => (f, r.trim_start()),
            None if !rest.is_empty() => (rest, ""),
            None => return Err(err(line, format!("{what}: expected {n} fields in `{s}`"))),
        };
        out.push(f);
        rest = r;
    }
    Ok((out, rest))
}

/// Parse one line of `/proc/<pid>/maps`.
pub fn parse_maps_line(s: &str) -> Option<MapEntry> {
    let (f, rest) = fields(0, s, 5, "maps").ok()?;
    let (a, b) = f[0].split_once('-')?;
    let path = rest.trim();
    Some(MapEntry {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        perms: f[1].to_owned(),
        offset: u64::from_str_radix(f[2], 16).ok()?,
        dev: f[3].to_owned(),
        inode: f[4].parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_owned()),
    })
}

/// Parse one line of `/proc/modules`.
pub fn parse_module_line(s: &str) -> Option<Module> {
    let (f, rest) = fields(0, s, 6, "module").ok()?;
    let _ = rest;
    Some(Module {
        name: f[0].to_owned(),
        size: f[1].parse().ok()?,
        refcount: f[2].parse().ok()?,
        used_by: f[3]
            .split(',')
            .filter(|m| !m.is_empty() && *m != "-")
            .map(str::to_owned)
            .collect(),
        state: f[4].to_owned(),
        address: u64::from_str_radix(f[5].trim_start_matches("0x"), 16).ok()?,
    })
}

/// Parse one line of `/proc/iomem` (indentation gives the depth).
pub fn parse_iomem_line(s: &str) -> Option<IomemRange> {
    let indent = s.len() - s.trim_start_matches(' ').len();
    let (range, name) = s.trim_start().split_once(" : ")?;
    let (a, b) = range.split_once('-')?;
    Some(IomemRange {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        name: name.to_owned(),
        depth: u32::try_from(indent / 2).ok()?,
    })
}

impl Truth {
    /// Parse the lines between the markers (markers themselves excluded; `\r` is ignored).
    pub fn parse_block(block: &str) -> Result<Truth> {
        let mut t = Truth::default();
        let mut seen_release = false;
        for (i, raw) in block.split('\n').enumerate() {
            let n = i + 1;
            if n > MAX_LINES {
                return Err(err(n, "truth block too long"));
            }
            let line = raw.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "release" => {
                    t.release = rest.to_owned();
                    seen_release = true;
                }
                "version" => t.version = rest.to_owned(),
                "cmdline" => t.cmdline = rest.to_owned(),
                "hostname" => t.hostname = rest.to_owned(),
                "uptime" => {
                    let (f, _) = fields(n, rest, 1, "uptime")?;
                    t.uptime_seconds = dec(n, "uptime", f[0])?;
                }
                "ncpus" => t.ncpus = dec(n, "ncpus", rest.trim())?,
                "cpuflags" => t.cpu_flags = rest.split_whitespace().map(str::to_owned).collect(),
                "vuln" => {
                    let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    t.cpu_vulnerabilities
                        .insert(name.to_owned(), text.to_owned());
                }
                "task" => {
                    let (f, comm) = fields(n, rest, 5, "task")?;
                    t.tasks.push(Task {
                        pid: dec(n, "pid", f[0])?,
                        ppid: dec(n, "ppid", f[1])?,
                        tgid: dec(n, "tgid", f[2])?,
                        uid: dec(n, "uid", f[3])?,
                        state: f[4].to_owned(),
                        comm: comm.to_owned(),
                        gid: None,
                        euid: None,
                        egid: None,
                        start_ticks: None,
                        ns_pid: Vec::new(),
                        ns_tgid: Vec::new(),
                        threads: Vec::new(),
                        namespaces: BTreeMap::new(),
                    });
                }
                "ids" | "thread" | "ns" => {
                    let (f, value) = fields(n, rest, 1, key)?;
                    let pid: u32 = dec(n, "pid", f[0])?;
                    let task =
                        t.tasks
                            .iter_mut()
                            .rev()
                            .find(|x| x.pid == pid)
                            .ok_or_else(|| {
                                err(n, format!("{key} for pid {pid} before its task line"))
                            })?;
                    match key {
                        "ids" => {
                            let (g, _) = fields(n, value, 6, "ids")?;
                            task.gid = Some(dec(n, "gid", g[0])?);
                            task.ns_pid = dec_list(n, "NSpid", g[1])?;
                            task.ns_tgid = dec_list(n, "NStgid", g[2])?;
                            task.euid = Some(dec(n, "euid", g[3])?);
                            task.egid = Some(dec(n, "egid", g[4])?);
                            task.start_ticks = Some(dec(n, "starttime", g[5])?);
                        }
                        "thread" => {
                            let (g, comm) = fields(n, value, 2, "thread")?;
                            task.threads.push(Thread {
                                tid: dec(n, "tid", g[0])?,
                                state: g[1].to_owned(),
                                comm: comm.to_owned(),
                            });
                        }
                        _ => {
                            let (g, _) = fields(n, value, 2, "ns")?;
                            task.namespaces
                                .insert(g[0].to_owned(), dec(n, "ns inode", g[1])?);
                        }
                    }
                }
                "uts" => {
                    let (f, host) = fields(n, rest, 1, "uts")?;
                    t.uts_hostnames
                        .insert(dec(n, "uts inode", f[0])?, host.to_owned());
                }
                "blocked" => t.blocked.push(dec(n, "blocked pid", rest.trim())?),
                "printer" => t.printer_pid = Some(dec(n, "printer pid", rest.trim())?),
                "userland" => t.userland = Some(rest.trim().to_owned()),
                "warning" => t.warnings.push(rest.to_owned()),
                "printed" => t.printed = Some(rest.to_owned()),
                "proc" => {
                    let (f, comm) = fields(n, rest, 5, "proc")?;
                    let pid = dec(n, "pid", f[0])?;
                    if t.processes.iter().any(|p| p.pid == pid) {
                        return Err(err(n, format!("proc {pid} listed twice")));
                    }
                    t.processes.push(Process {
                        pid,
                        comm: comm.to_owned(),
                        arg_start: dec(n, "arg_start", f[1])?,
                        arg_end: dec(n, "arg_end", f[2])?,
                        env_start: dec(n, "env_start", f[3])?,
                        env_end: dec(n, "env_end", f[4])?,
                        ..Process::default()
                    });
                }
                "argv" | "environ" | "maps" | "fd" | "root" | "exe" => {
                    let (f, value) = fields(n, rest, 1, key)?;
                    let pid: u32 = dec(n, "pid", f[0])?;
                    let p = t
                        .processes
                        .iter_mut()
                        .find(|p| p.pid == pid)
                        .ok_or_else(|| {
                            err(n, format!("{key} for pid {pid} before its proc line"))
                        })?;
                    match key {
                        "argv" => p.argv.push(value.to_owned()),
                        "environ" => p.environ.push(value.to_owned()),
                        "root" => p.root = Some(value.to_owned()),
                        "exe" => p.exe = Some(value.to_owned()),
                        "maps" => p.maps.push(
                            parse_maps_line(value)
                                .ok_or_else(|| err(n, format!("bad maps line `{value}`")))?,
                        ),
                        _ => {
                            let (f, target) = fields(n, value, 1, "fd")?;
                            p.fds.push(Fd {
                                fd: dec(n, "fd", f[0])?,
                                target: target.to_owned(),
                            });
                        }
                    }
                }
                "module" => t.modules.push(
                    parse_module_line(rest)
                        .ok_or_else(|| err(n, format!("bad module line `{rest}`")))?,
                ),
                "ksym" => {
                    let (f, _) = fields(n, rest, 3, "ksym")?;
                    let addr = hex(n, "ksym address", f[0])?;
                    t.ksyms.entry(f[2].to_owned()).or_insert(addr);
                }
                "iomem" => t.iomem.push(
                    parse_iomem_line(rest)
                        .ok_or_else(|| err(n, format!("bad iomem line `{rest}`")))?,
                ),
                "vmcoreinfo_note" => {
                    let (f, _) = fields(n, rest, 2, "vmcoreinfo_note")?;
                    t.vmcoreinfo_note = Some(VmcoreinfoNote {
                        paddr: hex(n, "vmcoreinfo paddr", f[0])?,
                        size: hex(n, "vmcoreinfo size", f[1])?,
                    });
                }
                "bootmsg" => t.boot_messages.push(rest.to_owned()),
                "dmesg" => t.dmesg_tail.push(rest.to_owned()),
                _ => t.unknown_lines.push(line.to_owned()),
            }
        }
        if !seen_release {
            return Err(err(0, "no `release` line in the truth block"));
        }
        Ok(t)
    }

    /// Find the truth block in a serial log (CRLF or LF line ends) and parse it.
    pub fn from_serial_log(log: &str) -> Result<Truth> {
        let block = section(log, TRUTH_BEGIN, TRUTH_END).ok_or_else(|| {
            err(
                0,
                format!("no {TRUTH_BEGIN} .. {TRUTH_END} block in the serial log"),
            )
        })?;
        Truth::parse_block(&block)
    }
}

/// The lines strictly between a `begin` and an `end` marker line (`\r` removed), if both
/// are present.
pub fn section(log: &str, begin: &str, end: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in log.split('\n') {
        let line = line.trim_end_matches('\r');
        if !inside {
            inside = line == begin;
            continue;
        }
        if line == end {
            return Some(out);
        }
        out.push_str(line);
        out.push('\n');
    }
    None
}

#[cfg(test)]
mod tests;
