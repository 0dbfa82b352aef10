//! The commands, written once over [`VmiOs`] and generic over the driver: the OS layer is
//! chosen at run time ([`crate::os::detect`]), and what only one OS has reaches the output
//! as [`OsAttribute`]s.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde_json::{Value, json};
use std::cell::Cell;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    AccessContext, AddressContext, CommandLine, OsAttribute, OsNamespaces, OsObjectKind, OsProcess,
    OsValue, Pa, Registers as _, Va, VmiCore, VmiError, VmiQueryRegisters, VmiRead,
};

use crate::os::DynOs;
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
    if let Command::Inject(args) = &cli.command {
        return inject::run(&cli, &spec, args);
    }
    match target::open(&spec)? {
        Target::Dump(core) => {
            let vmcoreinfo = core.driver().vmcoreinfo().map(str::to_owned);
            run_on(&cli, &core, vmcoreinfo, false)
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
            run_on(&cli, &core, None, true)
        }
        #[cfg(feature = "xen")]
        Target::Xen(core) => {
            if let Command::Trace { .. } | Command::Watch(_) = &cli.command {
                return Err(anyhow!("trace and watch work on qemu: targets only").into());
            }
            let _pause = core.pause_guard()?;
            run_on(&cli, &core, None, true)
        }
        // A driver this build of the CLI does not know (enabled by another crate).
        _ => Err(anyhow!("{spec}: this kind of target is not supported by this vmi").into()),
    }
}

/// Runs the command on an opened core.
fn run_on<D>(
    cli: &Cli,
    core: &VmiCore<D>,
    vmcoreinfo: Option<String>,
    live: bool,
) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters + 'static,
{
    let ctx = Ctx {
        cli,
        core,
        vmcoreinfo,
        live,
        warnings: Cell::new(0),
    };
    ctx.run()?;
    ctx.incomplete()
}

mod inject;
pub(crate) mod scan;
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

/// An attribute value in JSON: addresses and masks as `"0x…"` strings.
fn json_value(v: &OsValue) -> Value {
    match v {
        OsValue::Null => Value::Null,
        OsValue::Bool(b) => json!(b),
        OsValue::Number(n) => json!(n),
        OsValue::Hex(n) => json!(hex(*n)),
        OsValue::Text(t) => json!(t),
        OsValue::List(l) => Value::Array(l.iter().map(json_value).collect()),
        _ => Value::Null,
    }
}

/// Adds OS-specific attributes to a JSON object.
fn with_attributes(mut v: Value, attributes: &[OsAttribute]) -> Value {
    for a in attributes {
        v[a.key] = json_value(&a.value);
    }
    v
}

/// The table columns of the OS-specific attributes of objects of `kind`.
fn attribute_columns<D: VmiRead>(os: &DynOs<D>, kind: OsObjectKind) -> Vec<String> {
    os.attribute_columns(kind)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The cells of the OS-specific attribute columns.
fn attribute_cells(attributes: &[OsAttribute]) -> impl Iterator<Item = String> + '_ {
    attributes
        .iter()
        .filter(|a| a.column.is_some())
        .map(|a| a.value.to_string())
}

/// One `ps` row; the same shape for every OS (`uid`/`gid` are `null` where the OS has none).
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
    pub(crate) pid_ns: Option<u64>,
    /// Host name of the process's UTS namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hostname: Option<String>,
    /// What could not be read for this process (its fields above are then incomplete).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) errors: Vec<String>,
}

impl<D: VmiRead<Architecture = Amd64> + VmiQueryRegisters + 'static> Ctx<'_, D> {
    /// Prints a warning about something that could not be read, and counts it.
    pub(crate) fn warn(&self, message: impl std::fmt::Display) {
        eprintln!("warning: {message}");
        self.warnings.set(self.warnings.get() + 1);
    }

    /// Warns about each object a walk skipped.
    fn warn_skipped(&self, what: &str, skipped: &[(Va, VmiError)]) {
        for (va, e) in skipped {
            self.warn(format_args!("skipped the {what} at {va}: {e}"));
        }
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

    /// The target's OS, recognised at run time.
    fn os(&self) -> Result<DynOs<D>, Failure> {
        crate::os::detect(self.core, self.cli, self.vmcoreinfo.as_deref())
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
            Command::Scan(args) => self.scan(args),
            Command::Trace { .. } | Command::Watch(_) | Command::Inject(_) => Err(Failure {
                code: 1,
                error: anyhow!(
                    "trace and watch need a live target (qemu:<QMP socket> or libvirt:<domain>); {} is a dump",
                    self.core.info().kind
                ),
            }),
            Command::Profile(ProfileCommand::Export { format: _, out }) => self.export(out),
        }
    }

    fn info(&self) -> Result<(), Failure> {
        let os = target::with_spinner(|| {
            vmi_target::detect_os(
                self.core,
                &target::os_options(self.cli),
                self.vmcoreinfo.as_deref(),
            )
        });
        let facts = vmi_target::info(self.core, self.live, os.as_ref().map(|o| o.as_dyn()));
        let mut v = json!({});
        let mut keys = Vec::with_capacity(facts.len());
        for a in &facts {
            v[a.key] = json_value(&a.value);
            keys.push(a.key);
        }
        if self.format() == Format::Json {
            return Ok(output::json(&v)?);
        }
        let s = |x: &Value| match x {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let pairs: Vec<(&str, String)> = keys
            .into_iter()
            .filter_map(|k| v.get(k).map(|val| (k, s(val))))
            .collect();
        output::key_values(&pairs)?;
        Ok(())
    }

    /// The process `pid`, or the failure that says it cannot be found.
    fn find(&self, os: &DynOs<D>, pid: u32) -> Result<OsProcess, Failure> {
        os.process(self.core, u64::from(pid)).map_err(|e| Failure {
            code: 1,
            error: anyhow!(e).context(format!("cannot find process {pid}")),
        })
    }

    fn ps(&self, tree: bool, kernel_threads: bool) -> Result<(), Failure> {
        let os = self.os()?;
        let list = os.process_list(self.core)?;
        let entries: Vec<PsEntry> = list
            .items
            .iter()
            // Hidden by default: kernel threads, which have no address space of their own
            // (Linux's kthreads). Windows' System and Registry processes have one: shown,
            // as every Windows tool lists them.
            .filter(|p| {
                kernel_threads
                    || !p.is_kernel
                    || p.translation_root.is_some()
                    || self.format() == Format::Json
            })
            .map(|p| {
                let mut errors = p.problems.clone();
                let cmdline = os.process_cmdline(self.core, p).unwrap_or_else(|e| {
                    errors.push(format!("command line: {e}"));
                    CommandLine::Argv(Vec::new())
                });
                let ns = match os.process_namespaces(self.core, p) {
                    Ok(ns) => ns,
                    Err(VmiError::NotSupported { .. }) => OsNamespaces::default(),
                    Err(e) => {
                        errors.push(format!("namespaces: {e}"));
                        OsNamespaces::default()
                    }
                };
                PsEntry {
                    pid: p.pid,
                    ppid: p.ppid,
                    tgid: p.pid,
                    uid: p.uid,
                    gid: p.gid,
                    name: p.name.clone(),
                    state: p.state.map_or_else(|| "-".into(), String::from),
                    kernel_thread: p.is_kernel,
                    cmdline: cmdline.to_string(),
                    argv: cmdline.argv(),
                    task: hex(p.object.0),
                    start_time_ns: p.start_time_ns.unwrap_or(0),
                    ns_pid: p.namespace_pid,
                    pid_ns: ns.pid_namespace,
                    hostname: ns.hostname,
                    errors,
                }
            })
            .collect();
        self.warn_skipped("process", &list.skipped);
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
        let os = self.os()?;
        let process = self.find(&os, pid)?;
        let list = os.thread_list(self.core, &process)?;
        self.warn_skipped("thread", &list.skipped);
        let state = |s: Option<char>| s.map_or_else(|| "-".to_owned(), String::from);
        if self.format() == Format::Json {
            let rows: Vec<_> = list
                .items
                .iter()
                .map(|t| {
                    with_attributes(
                        json!({"tid": t.tid, "pid": t.pid, "name": t.name,
                               "state": state(t.state), "task": hex(t.object.0)}),
                        &t.attributes,
                    )
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut head = vec![
            ">TID".to_owned(),
            ">PID".into(),
            "S".into(),
            "NAME".into(),
            "TASK".into(),
        ];
        head.extend(attribute_columns(&os, OsObjectKind::Thread));
        let mut table = Table::new(&head);
        for t in &list.items {
            let mut row = vec![
                t.tid.to_string(),
                t.pid.to_string(),
                state(t.state),
                t.name.clone().unwrap_or_default(),
                hex(t.object.0),
            ];
            row.extend(attribute_cells(&t.attributes));
            table.row(row);
        }
        table.print()?;
        Ok(())
    }

    fn modules(&self) -> Result<(), Failure> {
        let os = self.os()?;
        let list = os.module_list(self.core)?;
        self.warn_skipped("module", &list.skipped);
        if self.format() == Format::Json {
            let rows: Vec<_> = list
                .items
                .iter()
                .map(|m| {
                    let mut v = json!({"name": m.name, "base": hex(m.base.0), "size": m.size,
                                       "state": m.state});
                    if let Some(p) = &m.path {
                        v["path"] = json!(p);
                    }
                    with_attributes(v, &m.attributes)
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let paths = list.items.iter().any(|m| m.path.is_some());
        let mut head = vec![
            "NAME".to_owned(),
            "BASE".into(),
            ">SIZE".into(),
            "STATE".into(),
        ];
        head.extend(attribute_columns(&os, OsObjectKind::Module));
        if paths {
            head.push("PATH".into());
        }
        let mut table = Table::new(&head);
        for m in &list.items {
            let mut row = vec![
                m.name.clone(),
                hex(m.base.0),
                m.size.to_string(),
                m.state.unwrap_or("-").into(),
            ];
            row.extend(attribute_cells(&m.attributes));
            if paths {
                row.push(m.path.clone().unwrap_or_default());
            }
            table.row(row);
        }
        table.print()?;
        Ok(())
    }

    fn maps(&self, pid: u32) -> Result<(), Failure> {
        let os = self.os()?;
        let process = self.find(&os, pid)?;
        let list = os.memory_region_list(self.core, &process)?;
        self.warn_skipped("memory region", &list.skipped);
        if self.format() == Format::Json {
            let rows: Vec<_> = list
                .items
                .iter()
                .map(|r| {
                    with_attributes(
                        json!({"start": hex(r.start.0), "end": hex(r.end.0), "perms": r.perms(),
                               "offset": hex(r.offset), "flags": hex(r.flags), "path": r.path,
                               "name": r.name}),
                        &r.attributes,
                    )
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut head = vec![
            "START".to_owned(),
            "END".into(),
            "PERMS".into(),
            ">OFFSET".into(),
        ];
        head.extend(attribute_columns(&os, OsObjectKind::Region));
        head.push("NAME".into());
        let mut table = Table::new(&head);
        for r in &list.items {
            let mut row = vec![
                format!("{:012x}", r.start.0),
                format!("{:012x}", r.end.0),
                r.perms(),
                format!("{:08x}", r.offset),
            ];
            row.extend(attribute_cells(&r.attributes));
            row.push(r.name.clone().unwrap_or_default());
            table.row(row);
        }
        table.print()?;
        Ok(())
    }

    fn files(&self, pid: u32) -> Result<(), Failure> {
        let os = self.os()?;
        let process = self.find(&os, pid)?;
        let list = os.handles(self.core, &process)?;
        self.warn_skipped("handle", &list.skipped);
        for h in &list.items {
            if let Some(e) = &h.error {
                self.warn(format_args!(
                    "the path of fd {} ({:#x}): {e}",
                    h.id, h.object.0
                ));
            }
        }
        if self.format() == Format::Json {
            let rows: Vec<_> = list
                .items
                .iter()
                .map(|h| {
                    let mut v = json!({"fd": h.id, "path": h.path, "file": hex(h.object.0)});
                    if let Some(e) = &h.error {
                        v["error"] = json!(e);
                    }
                    with_attributes(v, &h.attributes)
                })
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut head = vec![">FD".to_owned()];
        head.extend(attribute_columns(&os, OsObjectKind::Handle));
        head.push("PATH".into());
        let mut table = Table::new(&head);
        for h in &list.items {
            let mut row = vec![h.id.to_string()];
            row.extend(attribute_cells(&h.attributes));
            row.push(match (&h.path, &h.error) {
                (_, Some(e)) => format!("<{e}>"),
                (Some(p), None) => p.clone(),
                (None, None) => String::new(),
            });
            table.row(row);
        }
        table.print()?;
        Ok(())
    }

    fn env(&self, pid: u32) -> Result<(), Failure> {
        let os = self.os()?;
        let process = self.find(&os, pid)?;
        let vars = os.process_environment(self.core, &process)?;
        if self.format() == Format::Json {
            let rows: Vec<_> = vars
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            return Ok(output::json(&rows)?);
        }
        let mut out = output::stdout();
        for (k, v) in &vars {
            use std::io::Write;
            match v {
                Some(v) => writeln!(out, "{k}={v}")?,
                None => writeln!(out, "{k}")?,
            }
        }
        Ok(())
    }

    fn dmesg(&self) -> Result<(), Failure> {
        let os = self.os()?;
        let records = os.kernel_log(self.core).map_err(|e| match e {
            VmiError::NotSupported { .. } => anyhow!(
                "dmesg is not supported for {} targets (the OS keeps no kernel log this layer reads)",
                os.name()
            ),
            e => anyhow!(e),
        })?;
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

    /// Parses a number, or `symbol[+offset]` resolved through the OS layer.
    fn parse_address(&self, s: &str, os: Option<&DynOs<D>>) -> anyhow::Result<u64> {
        match os {
            Some(os) => parse_address_with(
                s,
                Some(&|name: &str| os.kernel_symbol(self.core, name).ok()),
            ),
            None => parse_address_with(s, None),
        }
    }

    /// The page-table root for `--pid`/`--cr3`, or the kernel's.
    fn root(
        &self,
        os: Option<&DynOs<D>>,
        pid: Option<u32>,
        cr3: Option<&str>,
    ) -> Result<Pa, Failure> {
        if let Some(cr3) = cr3 {
            return Ok(vmi_arch_amd64::Cr3(parse_number(cr3)?).root());
        }
        if let Some(pid) = pid {
            let os = os.ok_or_else(|| anyhow!("--pid needs a recognised OS"))?;
            let process = self.find(os, pid)?;
            return process.translation_root.ok_or_else(|| {
                Failure::from(anyhow!(
                    "process {pid} has no user address space (a kernel thread or an exited process)"
                ))
            });
        }
        if let Some(os) = os {
            return Ok(os.kernel_translation_root(self.core)?);
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
        let address = self.parse_address(&args.address, os.as_ref())?;
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
        let va = Va(self.parse_address(address, os.as_ref())?);
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
        let vmcoreinfo = self
            .vmcoreinfo
            .clone()
            .or_else(|| os.as_ref().and_then(|o| o.crash_dump_note()));
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
        let os = self.os()?;
        os.export_profile(out)
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
