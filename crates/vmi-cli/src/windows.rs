//! The commands on Windows targets, with the same JSON shapes as on Linux.

use std::path::Path;

use anyhow::anyhow;
use serde_json::{Value, json};
use vmi_arch_amd64::Amd64;
use vmi_core::{Pa, VmiCore, VmiQueryRegisters, VmiRead};
use vmi_os_windows::pe::CodeView;
use vmi_os_windows::{WinProcess, WindowsOs};

use crate::commands::{Ctx, PsEntry};
use crate::output::{self, Format, Table};
use crate::{Cli, Failure, target};

/// Why Windows was not recognised.
pub enum Detect {
    /// No Windows kernel in the target.
    NotWindows(anyhow::Error),
    /// A Windows kernel, but no profile for it.
    NoProfile(anyhow::Error),
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn guid_text(cv: &CodeView) -> String {
    let g: String = cv.guid.iter().map(|b| format!("{b:02X}")).collect();
    format!("{g}-{}", cv.age)
}

/// Finds a Windows kernel (from vCPU registers when the target has them, else by
/// scanning memory) and loads its profile: `--profile` (an ISF file or directory, or a
/// PDB), else `--symbol-path` / `_NT_SYMBOL_PATH` (an ISF directory, or a `srv*CACHE*URL`
/// symbol path from which the PDB is downloaded), else the caches.
pub fn detect<D>(core: &VmiCore<D>, cli: &Cli) -> Result<WindowsOs, Detect>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let mut builder = WindowsOs::builder().registers(target::all_registers(core));
    if let Some(p) = &cli.profile {
        builder = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdb")) {
            builder.pdb(p)
        } else {
            builder.isf(p)
        };
    }
    if let Some(sp) = &cli.symbol_path {
        builder = builder.symbol_path(sp.clone());
    }
    if cli.no_cache {
        builder = builder.no_cache();
    }
    let kernel = builder
        .find_kernel(core)
        .map_err(|e| Detect::NotWindows(e.into()))?;
    let cv = kernel.codeview.clone();
    let configured = builder.has_profile_source();
    builder.kernel(kernel).build(core).map_err(|e| {
        Detect::NoProfile(if configured {
            anyhow!(e)
        } else {
            anyhow!(
                "found the Windows kernel {} {}, but no profile: give --profile <ISF or PDB> or \
                 --symbol-path srv*CACHE*https://msdl.microsoft.com/download/symbols",
                cv.pdb_name,
                guid_text(&cv)
            )
        })
    })
}

/// Windows facts for `vmi info`.
pub fn info(w: &WindowsOs, v: &mut Value) {
    let k = w.kernel();
    v["os"] = json!("windows");
    v["kernel_base"] = json!(hex(k.base.0));
    v["kernel_root"] = json!(hex(w.kernel_root().0));
    v["pdb"] = json!(format!(
        "{} {}",
        k.codeview.pdb_name,
        guid_text(&k.codeview)
    ));
    v["paging"] = json!("Level4");
    v["kernel_release"] = json!(null);
}

fn process<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, pid: u32) -> Result<WinProcess, Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    w.win_process(ctx.core, u64::from(pid))
        .map_err(|e| Failure::from(anyhow!(e).context(format!("cannot find process {pid}"))))
}

/// The address space of a process (`--pid`).
pub fn process_root<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, pid: u32) -> Result<Pa, Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    Ok(process(ctx, w, pid)?.dtb)
}

/// `vmi ps`.
pub fn ps<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, tree: bool) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    // What one bad EPROCESS link hides is reported; the rest is listed (issue 14).
    let list = w.process_list(ctx.core)?;
    for (va, e) in &list.skipped {
        ctx.warn(format_args!("skipped the process at {va}: {e}"));
    }
    let entries: Vec<PsEntry> = list
        .items
        .iter()
        .map(|p| {
            let mut errors = Vec::new();
            let cmdline = if p.peb.is_null() {
                String::new()
            } else {
                w.command_line(ctx.core, p).unwrap_or_else(|e| {
                    errors.push(format!("command line: {e}"));
                    String::new()
                })
            };
            PsEntry {
                pid: p.pid,
                ppid: p.ppid,
                tgid: p.pid,
                uid: None,
                gid: None,
                name: p.name.clone(),
                state: if p.exit_time != 0 {
                    "X".into()
                } else {
                    "R".into()
                },
                kernel_thread: p.peb.is_null(),
                argv: if cmdline.is_empty() {
                    vec![]
                } else {
                    vec![cmdline.clone()]
                },
                cmdline,
                task: hex(p.eprocess.0),
                // FILETIME (100 ns since 1601) in nanoseconds.
                start_time_ns: p.create_time.saturating_mul(100),
                ns_pid: None,
                pid_ns: None,
                hostname: None,
                errors,
            }
        })
        .collect();
    for e in &entries {
        for err in &e.errors {
            ctx.warn(format_args!("process {} ({}): {err}", e.pid, e.name));
        }
    }
    ctx.print_ps(&entries, tree)
}

/// `vmi threads`.
pub fn threads<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, pid: u32) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let p = process(ctx, w, pid)?;
    let threads = w.win_threads(ctx.core, &p)?;
    if ctx.format() == Format::Json {
        let rows: Vec<_> = threads
            .iter()
            .map(|t| {
                json!({"tid": t.tid, "pid": t.pid, "name": null, "state": "-",
                       "task": hex(t.ethread.0), "teb": hex(t.teb.0),
                       "start_address": hex(t.start_address.0),
                       "win32_start_address": hex(t.win32_start_address.0)})
            })
            .collect();
        return Ok(output::json(&rows)?);
    }
    let mut table = Table::new(&[">TID", ">PID", "ETHREAD", "TEB", "START"]);
    for t in &threads {
        table.row(vec![
            t.tid.to_string(),
            t.pid.to_string(),
            hex(t.ethread.0),
            hex(t.teb.0),
            hex(t.win32_start_address.0),
        ]);
    }
    table.print()?;
    Ok(())
}

/// `vmi modules`: kernel modules (drivers).
pub fn modules<D>(ctx: &Ctx<'_, D>, w: &WindowsOs) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let mods = w.kernel_modules(ctx.core)?;
    if ctx.format() == Format::Json {
        let rows: Vec<_> = mods
            .iter()
            .map(|m| {
                json!({"name": m.name, "base": hex(m.base.0), "size": m.size,
                            "state": "Live", "path": m.path})
            })
            .collect();
        return Ok(output::json(&rows)?);
    }
    let mut table = Table::new(&["NAME", "BASE", ">SIZE", "PATH"]);
    for m in &mods {
        table.row(vec![
            m.name.clone(),
            hex(m.base.0),
            m.size.to_string(),
            m.path.clone(),
        ]);
    }
    table.print()?;
    Ok(())
}

/// `vmi maps`: the VADs.
pub fn maps<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, pid: u32) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let p = process(ctx, w, pid)?;
    let vads = w.vads(ctx.core, &p)?;
    let perms = |v: &vmi_os_windows::WinVad| {
        let r = v.rights();
        format!(
            "{}{}{}{}",
            if r.read { 'r' } else { '-' },
            if r.write { 'w' } else { '-' },
            if r.execute { 'x' } else { '-' },
            if v.private { 'p' } else { 's' }
        )
    };
    if ctx.format() == Format::Json {
        let rows: Vec<_> = vads
            .iter()
            .map(|v| {
                json!({"start": hex(v.start.0), "end": hex(v.end.0.wrapping_add(1)),
                       "perms": perms(v), "offset": "0x0", "flags": hex(u64::from(v.protection)),
                       "protection": v.protection_name(), "tag": v.tag, "path": v.file})
            })
            .collect();
        return Ok(output::json(&rows)?);
    }
    let mut table = Table::new(&["START", "END", "PERMS", "PROTECTION", "PATH"]);
    for v in &vads {
        table.row(vec![
            format!("{:012x}", v.start.0),
            format!("{:012x}", v.end.0.wrapping_add(1)),
            perms(v),
            v.protection_name().into(),
            v.file.clone().unwrap_or_default(),
        ]);
    }
    table.print()?;
    Ok(())
}

/// `vmi files` / `vmi handles`: the handle table, with types and names.
pub fn files<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, pid: u32) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let p = process(ctx, w, pid)?;
    let handles = w.handles(ctx.core, &p)?;
    if ctx.format() == Format::Json {
        let rows: Vec<_> = handles
            .iter()
            .map(|h| {
                json!({"fd": h.handle, "path": h.name, "file": hex(h.object.0),
                       "type": h.type_name, "access": hex(u64::from(h.access))})
            })
            .collect();
        return Ok(output::json(&rows)?);
    }
    let mut table = Table::new(&[">HANDLE", "TYPE", "ACCESS", "NAME"]);
    for h in &handles {
        table.row(vec![
            hex(h.handle),
            h.type_name
                .clone()
                .unwrap_or_else(|| format!("#{}", h.type_index)),
            hex(u64::from(h.access)),
            h.name.clone().unwrap_or_default(),
        ]);
    }
    table.print()?;
    Ok(())
}

/// `vmi env`.
pub fn env<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, pid: u32) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let p = process(ctx, w, pid)?;
    let vars = w.environment(ctx.core, &p)?;
    if ctx.format() == Format::Json {
        let rows: Vec<_> = vars
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        return Ok(output::json(&rows)?);
    }
    let mut out = output::stdout();
    for (k, v) in &vars {
        use std::io::Write;
        writeln!(out, "{k}={v}")?;
    }
    Ok(())
}

/// `vmi profile export`.
pub fn export<D>(ctx: &Ctx<'_, D>, w: &WindowsOs, out: &Path) -> Result<(), Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let options = vmi_profile::isf::ExportOptions {
        producer: "vmi".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
    };
    vmi_profile::isf::write_isf(w.profile(), &options, out)
        .map_err(|e| anyhow!(e).context(format!("cannot write {}", out.display())))?;
    if ctx.format() == Format::Json {
        return Ok(output::json(
            &json!({"written": out.display().to_string()}),
        )?);
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}
