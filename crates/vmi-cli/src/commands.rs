//! The commands, generic over the driver.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde_json::json;
use std::cell::Cell;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    AccessContext, AddressContext, Pa, Registers as _, Va, VmiCore, VmiQueryRegisters, VmiRead,
};
use vmi_os_linux::{LinuxOs, LinuxTask};

use crate::output::{self, Format, Table};
use crate::target::{self, Target};
use crate::{Cli, Command, Failure, ProfileCommand, ReadArgs};

/// Upper bound of `vmi read`.
const MAX_READ: u64 = 16 << 20;

/// Opens the target and runs the command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let Some(spec) = cli.target.clone() else {
        return Err(Failure {
            code: 2,
            error: anyhow!("no target: give --target qemu:<QMP socket> or --target <dump file>"),
        });
    };
    match target::open(&spec)? {
        Target::Dump(core) => {
            let vmcoreinfo = core.driver().vmcoreinfo().map(str::to_owned);
            let ctx = Ctx {
                cli: &cli,
                core: &core,
                vmcoreinfo,
                live: false,
                warnings: Cell::new(0),
            };
            ctx.run()?;
            ctx.incomplete()
        }
        Target::Qemu(core) => {
            if let Command::Trace { .. } = &cli.command {
                return crate::commands::trace::run(&cli, &core);
            }
            if let Command::Watch(what) = &cli.command {
                return crate::commands::watch::run(&cli, &core, what);
            }
            // A consistent view: pause while we look (resumed on drop only if we paused).
            let _pause = core.pause_guard()?;
            let ctx = Ctx {
                cli: &cli,
                core: &core,
                vmcoreinfo: None,
                live: true,
                warnings: Cell::new(0),
            };
            ctx.run()?;
            ctx.incomplete()
        }
    }
}

mod trace;
mod watch;

pub(crate) struct Ctx<'a, D: VmiRead<Architecture = Amd64> + VmiQueryRegisters> {
    pub(crate) cli: &'a Cli,
    pub(crate) core: &'a VmiCore<D>,
    vmcoreinfo: Option<String>,
    live: bool,
    /// Warnings printed: objects that could not be read, so the output is incomplete.
    warnings: Cell<usize>,
}

/// Exit code of a command that printed its result but could not read all of it (the
/// warnings on stderr say what is missing).
pub const EXIT_INCOMPLETE: u8 = 4;

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Parses `0x…` hex or decimal.
pub fn parse_number(s: &str) -> anyhow::Result<u64> {
    let s = s.trim().replace('_', "");
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse::<u64>(),
    };
    r.map_err(|_| anyhow!("{s:?} is not a number (use 0x… for hex)"))
}

/// The OS layer found in a target.
pub(crate) enum Os {
    /// Linux.
    Linux(Box<LinuxOs>),
    /// Windows.
    Windows(Box<vmi_os_windows::WindowsOs>),
}

impl Os {
    /// A kernel symbol's run-time address.
    fn symbol_address(&self, name: &str) -> Option<Va> {
        match self {
            Os::Linux(os) => os.symbol_address(name),
            Os::Windows(w) => {
                let rva = w.profile().symbol(name)?.address;
                Some(w.kernel().base + rva)
            }
        }
    }
}

/// Parses a number, or `symbol[+offset]` resolved through the OS layer.
pub(crate) fn parse_address(s: &str, os: Option<&Os>) -> anyhow::Result<u64> {
    match os {
        Some(os) => parse_address_with(s, Some(&|name: &str| os.symbol_address(name))),
        None => parse_address_with(s, None),
    }
}

/// Resolves a kernel symbol name to its run-time address.
pub(crate) type SymbolLookup<'a> = dyn Fn(&str) -> Option<Va> + 'a;

/// Parses a number, or `symbol[+offset]` resolved by `lookup`.
pub(crate) fn parse_address_with(
    s: &str,
    lookup: Option<&SymbolLookup<'_>>,
) -> anyhow::Result<u64> {
    if let Ok(n) = parse_number(s) {
        return Ok(n);
    }
    let (name, offset) = match s.split_once('+') {
        Some((n, o)) => (n, parse_number(o)?),
        None => (s, 0),
    };
    let lookup =
        lookup.ok_or_else(|| anyhow!("{s:?} is not a number, and symbols need an OS layer"))?;
    let va = lookup(name.trim()).ok_or_else(|| anyhow!("unknown kernel symbol {name:?}"))?;
    Ok(va.0.wrapping_add(offset))
}

/// One `ps` row; the same shape for every OS (`uid`/`gid` are `null` on Windows).
#[derive(Serialize)]
pub(crate) struct PsEntry {
    pub(crate) pid: u64,
    pub(crate) ppid: u64,
    pub(crate) tgid: u64,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) kernel_thread: bool,
    pub(crate) cmdline: String,
    pub(crate) argv: Vec<String>,
    pub(crate) task: String,
    pub(crate) start_time_ns: u64,
    /// The pid in the process's own PID namespace (differs inside a container).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ns_pid: Option<u64>,
    /// Inode number of the process's PID namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pid_ns: Option<u32>,
    /// Host name of the process's UTS namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hostname: Option<String>,
    /// What could not be read for this process (its fields above are then incomplete).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) errors: Vec<String>,
}

impl<D: VmiRead<Architecture = Amd64> + VmiQueryRegisters> Ctx<'_, D> {
    /// Prints a warning about something that could not be read, and counts it.
    pub(crate) fn warn(&self, message: impl std::fmt::Display) {
        eprintln!("warning: {message}");
        self.warnings.set(self.warnings.get() + 1);
    }

    /// `Ok` when nothing was missing, else the [`EXIT_INCOMPLETE`] failure.
    fn incomplete(&self) -> Result<(), Failure> {
        match self.warnings.get() {
            0 => Ok(()),
            n => Err(Failure {
                code: EXIT_INCOMPLETE,
                error: anyhow!(
                    "the result is incomplete: {n} object(s) could not be read (see the warnings above)"
                ),
            }),
        }
    }

    pub(crate) fn format(&self) -> Format {
        if self.cli.json {
            Format::Json
        } else {
            Format::Human
        }
    }

    fn linux(&self) -> Result<LinuxOs, Failure> {
        target::linux(self.core, self.cli, self.vmcoreinfo.as_deref())
    }

    /// The target's OS: Linux first (cheap when the dump carries VMCOREINFO), then Windows.
    fn os(&self) -> Result<Os, Failure> {
        let linux = match self.linux() {
            Ok(os) => return Ok(Os::Linux(Box::new(os))),
            // The kernel was found, its profile was not: that error, not a Windows attempt.
            Err(e)
                if e.error
                    .downcast_ref::<vmi_core::VmiError>()
                    .is_some_and(target::linux_found) =>
            {
                return Err(e);
            }
            Err(e) => e,
        };
        match crate::windows::detect(self.core, self.cli) {
            Ok(os) => Ok(Os::Windows(Box::new(os))),
            Err(crate::windows::Detect::NotWindows(w)) => Err(Failure {
                code: crate::EXIT_TARGET,
                error: anyhow!(
                    "no Linux or Windows kernel recognised in the {} target (Linux: {}; Windows: {})",
                    self.core.info().kind,
                    linux
                        .error
                        .chain()
                        .last()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    w.chain().last().map(|c| c.to_string()).unwrap_or_default(),
                ),
            }),
            Err(crate::windows::Detect::NoProfile(e)) => Err(Failure {
                code: crate::EXIT_TARGET,
                error: e,
            }),
        }
    }

    fn run(&self) -> Result<(), Failure> {
        match &self.cli.command {
            Command::Info => self.info(),
            Command::Ps {
                tree,
                kernel_threads,
            } => self.ps(*tree, *kernel_threads),
            Command::Threads { pid } => self.threads(*pid),
            Command::Modules => self.modules(),
            Command::Maps { pid } => self.maps(*pid),
            Command::Files { pid } => self.files(*pid),
            Command::Env { pid } => self.env(*pid),
            Command::Dmesg => self.dmesg(),
            Command::Read(args) => self.read(args),
            Command::Translate { address, pid, cr3 } => {
                self.translate(address, *pid, cr3.as_deref())
            }
            Command::Dump { out } => self.dump(out),
            Command::Trace { .. } | Command::Watch(_) => Err(Failure {
                code: 1,
                error: anyhow!(
                    "trace and watch need a live target (qemu:<QMP socket>); {} is a dump",
                    self.core.info().kind
                ),
            }),
            Command::Profile(ProfileCommand::Export { format: _, out }) => self.export(out),
        }
    }

    fn info(&self) -> Result<(), Failure> {
        let info = self.core.info();
        let regs = target::all_registers(self.core);
        let os = self.os();
        let mut v = json!({
            "target": info.kind,
            "live": self.live,
            "arch": "amd64",
            "vcpus": info.vcpus,
            "registers": !regs.is_empty(),
            "max_physical_address": hex((info.max_gfn.0 + 1) << 12),
        });
        match &os {
            Ok(Os::Windows(w)) => crate::windows::info(w, &mut v),
            Ok(Os::Linux(os)) => {
                let k = os.kernel();
                v["os"] = json!("linux");
                v["kernel_release"] = json!(k.release);
                v["banner"] = json!(k.banner.as_deref().map(str::trim_end));
                v["paging"] = json!(format!("{:?}", k.paging_mode));
                v["kaslr_slide"] = json!(hex(k.kaslr_offset));
                v["phys_base"] = json!(hex(k.phys_base));
                v["page_offset_base"] = json!(hex(k.page_offset_base.0));
                v["kernel_root"] = json!(hex(k.kernel_root.0));
                v["kpti"] = json!(k.kpti);
                v["profile"] = json!(format!("{:?}", k.profile_origin));
            }
            Err(e) => {
                v["os"] = json!(null);
                v["os_error"] = json!(format!("{:#}", e.error));
                v["paging"] = json!(format!("{:?}", self.core.paging_mode()));
            }
        }
        if self.format() == Format::Json {
            return Ok(output::json(&v)?);
        }
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let s = |x: &serde_json::Value| match x {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        for key in [
            "target",
            "live",
            "arch",
            "vcpus",
            "registers",
            "max_physical_address",
            "os",
            "kernel_release",
            "banner",
            "paging",
            "kaslr_slide",
            "phys_base",
            "page_offset_base",
            "kernel_root",
            "kpti",
            "profile",
            "kernel_base",
            "pdb",
            "os_error",
        ] {
            if let Some(val) = v.get(key) {
                pairs.push((key, s(val)));
            }
        }
        output::key_values(&pairs)?;
        Ok(())
    }

    fn find(&self, os: &LinuxOs, pid: u32) -> Result<LinuxTask, Failure> {
        os.find_process(self.core, pid).map_err(|e| Failure {
            code: 1,
            error: anyhow!(e).context(format!("cannot find process {pid}")),
        })
    }

    fn ps(&self, tree: bool, kernel_threads: bool) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::ps(self, &w, tree),
        };
        let list = os.process_list(self.core)?;
        let entries: Vec<PsEntry> = list
            .tasks
            .iter()
            .filter(|t| kernel_threads || !t.is_kernel_thread() || self.format() == Format::Json)
            .map(|t| {
                let mut errors = t.problems.clone();
                // Kernel threads and zombies have no command line (as in /proc).
                let argv = if t.mm.is_none() {
                    Vec::new()
                } else {
                    os.cmdline(self.core, t).unwrap_or_else(|e| {
                        errors.push(format!("command line: {e}"));
                        Vec::new()
                    })
                };
                let ns = os.task_namespaces(self.core, t).unwrap_or_else(|e| {
                    errors.push(format!("namespaces: {e}"));
                    vmi_os_linux::TaskNamespaces {
                        pid_ns: None,
                        hostname: None,
                    }
                });
                PsEntry {
                    pid: t.pid.into(),
                    ppid: t.ppid.into(),
                    tgid: t.tgid.into(),
                    uid: Some(t.uid),
                    gid: Some(t.gid),
                    name: t.comm.clone(),
                    state: t.state.letter().to_string(),
                    kernel_thread: t.is_kernel_thread(),
                    cmdline: argv.join(" "),
                    argv,
                    task: hex(t.task.0),
                    start_time_ns: t.start_time_ns,
                    ns_pid: (!t.ns_pids.is_empty()).then(|| t.ns_pid().into()),
                    pid_ns: ns.pid_ns,
                    hostname: ns.hostname,
                    errors,
                }
            })
            .collect();
        for (va, e) in &list.skipped {
            self.warn(format_args!("skipped the task at {va}: {e}"));
        }
        for e in &entries {
            for err in &e.errors {
                self.warn(format_args!("process {} ({}): {err}", e.pid, e.name));
            }
        }
        self.print_ps(&entries, tree)
    }

    pub(crate) fn print_ps(&self, entries: &[PsEntry], tree: bool) -> Result<(), Failure> {
        if self.format() == Format::Json {
            return Ok(output::json(&entries)?);
        }
        // Containers: the namespaced pid and the UTS host name, shown when some process
        // lives in another PID or UTS namespace than init's.
        let init = entries.iter().find(|e| e.pid == 1);
        let host = init.and_then(|e| e.hostname.clone());
        let other_ns = |e: &PsEntry| e.ns_pid.is_some_and(|n| n != e.pid);
        let other_host = |e: &PsEntry| e.hostname.is_some() && e.hostname != host;
        let containers = entries.iter().any(|e| other_ns(e) || other_host(e));
        let mut head = vec![">PID", ">PPID", ">UID", "S"];
        if containers {
            head.extend([">NSPID", "HOST"]);
        }
        head.extend(["NAME", "CMDLINE"]);
        let mut table = Table::new(&head);
        let row = |e: &PsEntry, indent: usize| {
            let mut r = vec![
                e.pid.to_string(),
                e.ppid.to_string(),
                e.uid.map_or("-".into(), |u| u.to_string()),
                e.state.clone(),
            ];
            if containers {
                r.push(if other_ns(e) {
                    e.ns_pid.map(|n| n.to_string()).unwrap_or_default()
                } else {
                    String::new()
                });
                r.push(if other_host(e) {
                    e.hostname.clone().unwrap_or_default()
                } else {
                    String::new()
                });
            }
            r.push(format!("{}{}", "  ".repeat(indent), e.name));
            r.push(if e.kernel_thread {
                format!("[{}]", e.name)
            } else {
                e.cmdline.clone()
            });
            r
        };
        if tree {
            let mut children: BTreeMap<u64, Vec<&PsEntry>> = BTreeMap::new();
            let pids: std::collections::HashSet<u64> = entries.iter().map(|e| e.pid).collect();
            let mut roots = Vec::new();
            for e in entries {
                if e.pid != e.ppid && pids.contains(&e.ppid) {
                    children.entry(e.ppid).or_default().push(e);
                } else {
                    roots.push(e);
                }
            }
            // Iterative depth-first walk, bounded by the number of entries.
            let mut stack: Vec<(&PsEntry, usize)> =
                roots.into_iter().rev().map(|e| (e, 0)).collect();
            let mut emitted = 0;
            while let Some((e, depth)) = stack.pop() {
                emitted += 1;
                if emitted > entries.len() {
                    break;
                }
                table.row(row(e, depth));
                if let Some(kids) = children.get(&e.pid) {
                    for k in kids.iter().rev() {
                        stack.push((k, depth + 1));
                    }
                }
            }
        } else {
            for e in entries {
                table.row(row(e, 0));
            }
        }
        table.print()?;
        Ok(())
    }

    fn threads(&self, pid: u32) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::threads(self, &w, pid),
        };
        let leader = self.find(&os, pid)?;
        let list = os.threads_of(self.core, leader.task)?;
        let rows: Vec<_> = list
            .tasks
            .iter()
            .map(|t| {
                json!({"tid": t.pid, "pid": t.tgid, "name": t.comm, "state": t.state.letter().to_string(),
                       "task": hex(t.task.0), "ns_tid": t.ns_pid(), "ns_pids": t.ns_pids})
            })
            .collect();
        if self.format() == Format::Json {
            return Ok(output::json(&rows)?);
        }
        let mut table = Table::new(&[">TID", ">PID", "S", "NAME", "TASK"]);
        for t in &list.tasks {
            table.row(vec![
                t.pid.to_string(),
                t.tgid.to_string(),
                t.state.letter().to_string(),
                t.comm.clone(),
                hex(t.task.0),
            ]);
        }
        table.print()?;
        Ok(())
    }

    fn modules(&self) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::modules(self, &w),
        };
        let list = os.module_list(self.core)?;
        let (mods, skipped) = (list.modules, list.skipped);
        for (va, e) in &skipped {
            self.warn(format_args!("skipped the module at {va}: {e}"));
        }
        if self.format() == Format::Json {
            let rows: Vec<_> = mods
                .iter()
                .map(|m| {
                    json!({"name": m.name, "base": hex(m.base.0), "size": m.size,
                               "state": m.state.proc_name(), "module": hex(m.module.0)})
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut table = Table::new(&["NAME", "BASE", ">SIZE", "STATE"]);
        for m in &mods {
            table.row(vec![
                m.name.clone(),
                hex(m.base.0),
                m.size.to_string(),
                m.state.proc_name().into(),
            ]);
        }
        table.print()?;
        Ok(())
    }

    fn maps(&self, pid: u32) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::maps(self, &w, pid),
        };
        let task = self.find(&os, pid)?;
        let list = os.vmas(self.core, &task)?;
        for (va, e) in &list.skipped {
            self.warn(format_args!("skipped the VMA at {va}: {e}"));
        }
        if self.format() == Format::Json {
            let rows: Vec<_> = list
                .vmas
                .iter()
                .map(|v| {
                    json!({"start": hex(v.start.0), "end": hex(v.end.0), "perms": v.perms(),
                               "offset": hex(v.offset()), "flags": hex(v.flags), "path": v.path,
                               "name": v.name, "dev": v.dev_string(), "inode": v.inode,
                               "vma": hex(v.vma.0)})
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut table = Table::new(&["START", "END", "PERMS", ">OFFSET", "DEV", ">INODE", "NAME"]);
        for v in &list.vmas {
            table.row(vec![
                format!("{:012x}", v.start.0),
                format!("{:012x}", v.end.0),
                v.perms(),
                format!("{:08x}", v.offset()),
                v.dev_string(),
                v.inode.to_string(),
                v.name.clone().unwrap_or_default(),
            ]);
        }
        table.print()?;
        Ok(())
    }

    fn files(&self, pid: u32) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::files(self, &w, pid),
        };
        let task = self.find(&os, pid)?;
        let files = os.open_files(self.core, &task)?;
        for f in &files {
            if let Err(e) = &f.path {
                self.warn(format_args!(
                    "the path of fd {} ({:#x}): {e}",
                    f.fd, f.file.0
                ));
            }
        }
        if self.format() == Format::Json {
            let rows: Vec<_> = files
                .iter()
                .map(|f| match &f.path {
                    Ok(p) => json!({"fd": f.fd, "path": p, "file": hex(f.file.0)}),
                    Err(e) => json!({"fd": f.fd, "path": null, "error": e, "file": hex(f.file.0)}),
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut table = Table::new(&[">FD", "PATH"]);
        for f in &files {
            let p = match &f.path {
                Ok(p) => p.clone(),
                Err(e) => format!("<{e}>"),
            };
            table.row(vec![f.fd.to_string(), p]);
        }
        table.print()?;
        Ok(())
    }

    fn env(&self, pid: u32) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::env(self, &w, pid),
        };
        let task = self.find(&os, pid)?;
        let vars = os.environment(self.core, &task)?;
        if self.format() == Format::Json {
            let map: Vec<_> = vars
                .iter()
                .map(|v| match v.split_once('=') {
                    Some((k, val)) => json!({"name": k, "value": val}),
                    None => json!({"name": v, "value": null}),
                })
                .collect();
            return Ok(output::json(&map)?);
        }
        let mut out = output::stdout();
        for v in &vars {
            use std::io::Write;
            writeln!(out, "{v}")?;
        }
        Ok(())
    }

    fn dmesg(&self) -> Result<(), Failure> {
        let os =
            match self.os()? {
                Os::Linux(os) => os,
                Os::Windows(_) => return Err(anyhow!(
                    "dmesg is not supported for Windows targets (there is no kernel ring buffer)"
                )
                .into()),
            };
        let records = os.dmesg(self.core)?;
        if self.format() == Format::Json {
            let rows: Vec<_> = records
                .iter()
                .map(|r| json!({"seq": r.seq, "ts_nsec": r.ts_nsec, "text": r.text}))
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut out = output::stdout();
        for r in &records {
            use std::io::Write;
            for line in r.lines() {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    }

    /// The page-table root for `--pid`/`--cr3`, or the kernel's.
    fn root(&self, os: Option<&Os>, pid: Option<u32>, cr3: Option<&str>) -> Result<Pa, Failure> {
        if let Some(cr3) = cr3 {
            return Ok(vmi_arch_amd64::Cr3(parse_number(cr3)?).root());
        }
        if let Some(pid) = pid {
            let os = os.ok_or_else(|| anyhow!("--pid needs a recognised OS"))?;
            let os = match os {
                Os::Linux(os) => os,
                Os::Windows(w) => return crate::windows::process_root(self, w, pid),
            };
            let task = self.find(os, pid)?;
            return task.user_root.ok_or_else(|| {
                Failure::from(anyhow!(
                    "process {pid} has no user address space (a kernel thread or an exited process)"
                ))
            });
        }
        match os {
            Some(Os::Linux(os)) => return Ok(os.kernel().kernel_root),
            Some(Os::Windows(w)) => return Ok(w.kernel_root()),
            None => {}
        }
        let regs: Vec<Registers> = target::all_registers(self.core);
        regs.first().map(|r| r.translation_root()).ok_or_else(|| {
            Failure::from(anyhow!(
                "no address space: the OS was not recognised and the target has no registers; use --phys or --cr3"
            ))
        })
    }

    fn read(&self, args: &ReadArgs) -> Result<(), Failure> {
        let os = self.os().ok();
        let address = parse_address(&args.address, os.as_ref())?;
        let len = parse_number(&args.len)?;
        if len == 0 || len > MAX_READ {
            return Err(anyhow!("length must be 1..={MAX_READ} bytes").into());
        }
        let ctx = if args.phys {
            AccessContext::direct(Pa(address))
        } else {
            AccessContext::paging(
                Va(address),
                self.root(os.as_ref(), args.pid, args.cr3.as_deref())?,
            )
        };
        let mut buf = vec![0u8; len as usize];
        let n = self.core.read_available(ctx, &mut buf);
        if n == 0 {
            // Report why with the real error.
            self.core
                .read(ctx, &mut buf[..1])
                .with_context(|| format!("cannot read {ctx}"))?;
        }
        if self.format() == Format::Json {
            let hexstr: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
            return Ok(output::json(
                &json!({"address": hex(address), "length": len,
                "readable": n, "bytes": hexstr}),
            )?);
        }
        output::hexdump(address, &buf, n)?;
        if n < buf.len() {
            eprintln!(
                "note: bytes from {:#x} on are unreadable",
                address + n as u64
            );
        }
        Ok(())
    }

    fn translate(&self, address: &str, pid: Option<u32>, cr3: Option<&str>) -> Result<(), Failure> {
        let os = self.os().ok();
        let va = Va(parse_address(address, os.as_ref())?);
        let root = self.root(os.as_ref(), pid, cr3)?;
        let ctx = AddressContext::new(va, root);
        let result = self.core.translate(ctx);
        let steps: Vec<_> = match &result {
            Ok(t) => t.steps().to_vec(),
            Err(_) => Vec::new(),
        };
        if self.format() == Format::Json {
            let v = match &result {
                Ok(t) => json!({
                    "va": hex(va.0), "root": hex(root.0), "pa": hex(t.pa.0),
                    "page_size": t.page_size, "writable": t.flags.writable, "user": t.flags.user,
                    "no_execute": t.flags.no_execute,
                    "levels": steps.iter().map(|s| json!({"level": s.name, "index": s.index,
                        "entry_address": hex(s.entry_pa.0), "entry": hex(s.entry)})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"va": hex(va.0), "root": hex(root.0), "error": e.to_string(),
                    "fault": e.page_fault().map(|pf| json!({"level": pf.level, "entry": hex(pf.entry),
                        "kind": pf.kind.to_string()}))}),
            };
            output::json(&v)?;
            return result.map(|_| ()).map_err(|e| Failure::from(anyhow!(e)));
        }
        let mut table = Table::new(&["LEVEL", ">INDEX", "ENTRY ADDRESS", "ENTRY"]);
        for s in &steps {
            table.row(vec![
                s.name.into(),
                s.index.to_string(),
                hex(s.entry_pa.0),
                format!("{:#018x}", s.entry),
            ]);
        }
        match result {
            Ok(t) => {
                table.print()?;
                output::key_values(&[
                    ("virtual", hex(va.0)),
                    ("physical", hex(t.pa.0)),
                    ("page size", format!("{} KiB", t.page_size / 1024)),
                    (
                        "rights",
                        format!(
                            "{}{}{}",
                            if t.flags.user { "user " } else { "kernel " },
                            if t.flags.writable { "rw" } else { "ro" },
                            if t.flags.no_execute { " nx" } else { " x" }
                        ),
                    ),
                ])?;
                Ok(())
            }
            Err(e) => Err(anyhow!(e)
                .context(format!("cannot translate {va} (root {root})"))
                .into()),
        }
    }

    fn dump(&self, out: &std::path::Path) -> Result<(), Failure> {
        let regs = target::all_registers(self.core);
        let os = self.os().ok();
        let vmcoreinfo = self.vmcoreinfo.clone().or_else(|| match &os {
            Some(Os::Linux(o)) => Some(vmcoreinfo_text(o.vmcoreinfo())),
            _ => None,
        });
        let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let total: u64 = self
            .core
            .driver()
            .physical_ranges()?
            .iter()
            .map(|r| r.end.0.saturating_sub(r.start.0))
            .sum();
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let options = vmi_driver_dump::ElfCoreOptions {
            registers: (!regs.is_empty()).then_some(regs.as_slice()),
            vmcoreinfo: vmcoreinfo.as_deref(),
        };
        let summary = vmi_driver_dump::write_elf_core(
            self.core.driver(),
            &options,
            BufWriter::new(file),
            |p: vmi_driver_dump::WriteProgress| bar.set_position(p.done),
        )
        .with_context(|| format!("writing {}", out.display()))?;
        bar.finish_and_clear();
        if summary.bytes_skipped > 0 {
            eprintln!(
                "note: {} bytes could not be read and are absent from the dump",
                summary.bytes_skipped
            );
        }
        if self.format() == Format::Json {
            return Ok(output::json(&json!({"written": out.display().to_string(),
                "bytes": summary.file_size, "segments": summary.segments}))?);
        }
        eprintln!(
            "wrote {} ({} bytes of memory in {} segments, {} vCPU register sets)",
            out.display(),
            summary.bytes_written,
            summary.segments,
            regs.len()
        );
        Ok(())
    }

    fn export(&self, out: &std::path::Path) -> Result<(), Failure> {
        let os = match self.os()? {
            Os::Linux(os) => os,
            Os::Windows(w) => return crate::windows::export(self, &w, out),
        };
        // Link-time symbol addresses and the running kernel's banner: what Volatility 3
        // expects (it finds the KASLR shift itself).
        os.write_isf(out)
            .map_err(|e| anyhow!(e).context(format!("cannot write {}", out.display())))?;
        if self.format() == Format::Json {
            return Ok(output::json(
                &json!({"written": out.display().to_string()}),
            )?);
        }
        eprintln!("wrote {}", out.display());
        Ok(())
    }
}

/// VMCOREINFO as the kernel writes it (`KEY=VALUE` lines), for the dump's note.
fn vmcoreinfo_text(v: &vmi_profile::VmcoreInfo) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(r) = &v.osrelease {
        let _ = writeln!(s, "OSRELEASE={r}");
    }
    if let Some(id) = &v.build_id {
        let hexid: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(s, "BUILD-ID={hexid}");
    }
    if let Some(p) = v.page_size {
        let _ = writeln!(s, "PAGESIZE={p}");
    }
    for (k, a) in &v.symbols {
        let _ = writeln!(s, "SYMBOL({k})={a:x}");
    }
    for (k, n) in &v.sizes {
        let _ = writeln!(s, "SIZE({k})={n}");
    }
    for (k, n) in &v.offsets {
        let _ = writeln!(s, "OFFSET({k})={n}");
    }
    for (k, n) in &v.lengths {
        let _ = writeln!(s, "LENGTH({k})={n}");
    }
    for (k, n) in &v.numbers {
        let _ = writeln!(s, "NUMBER({k})={n}");
    }
    for (k, val) in &v.other {
        let _ = writeln!(s, "{k}={val}");
    }
    if let Some(o) = v.kernel_offset {
        let _ = writeln!(s, "KERNELOFFSET={o:x}");
    }
    s
}
