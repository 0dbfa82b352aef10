//! `vmi trace`: a breakpoint on a live target, one line per hit.

use std::sync::atomic::Ordering;

use anyhow::anyhow;
use serde_json::json;
use vmi_arch_amd64::EventReason;
use vmi_core::{
    BreakpointAddress, BreakpointKind, EventMonitor, Va, VmiContext, VmiCore, VmiEventResponse,
    VmiHandler, VmiSession,
};
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_utils::calls::FunctionTracer;
use vmi_utils::decode::Value;
use vmi_utils::syscalls::{ArgValue, SyscallOptions, SyscallTracer};

use super::parse_address_with;
use crate::{Cli, Command, Failure, target};

struct Tracer<'a> {
    os: &'a LinuxOs,
    limit: Option<u64>,
    hits: u64,
    json: bool,
}

impl VmiHandler<QemuDriver, LinuxOs> for Tracer<'_> {
    type Output = u64;

    fn handle_event(
        &mut self,
        ctx: VmiContext<'_, QemuDriver, LinuxOs>,
    ) -> VmiEventResponse<vmi_arch_amd64::Amd64> {
        if !matches!(ctx.event().reason, EventReason::Breakpoint { .. }) {
            return VmiEventResponse::default();
        }
        self.hits += 1;
        let r = ctx.registers();
        let task = self.os.current_task_from_registers(ctx.core(), r);
        let (pid, comm) = match &task {
            Ok(t) => (Some(t.pid), t.comm.clone()),
            Err(e) => (None, format!("<{e}>")),
        };
        // Function arguments in the x86-64 System V order.
        let args = [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9];
        if self.json {
            let line = json!({"hit": self.hits, "vcpu": ctx.vcpu().0, "rip": format!("{:#x}", r.rip),
                "pid": pid, "comm": comm,
                "args": args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>()});
            println!("{line}");
        } else {
            let args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
            println!(
                "#{:<5} {} pid {:<6} {:<16} rip {:#x}  args({})",
                self.hits,
                ctx.vcpu(),
                pid.map_or("?".into(), |p| p.to_string()),
                comm,
                r.rip,
                args.join(", ")
            );
        }
        VmiEventResponse::default()
    }

    fn check_completion(&self) -> Option<u64> {
        self.limit.filter(|&n| self.hits >= n).map(|_| self.hits)
    }
}

/// Runs `vmi trace`.
pub fn run(cli: &Cli, core: &VmiCore<QemuDriver>) -> Result<(), Failure> {
    let Command::Trace {
        location,
        count,
        software,
        syscall,
        pid,
        returns,
    } = &cli.command
    else {
        return Err(anyhow!("not a trace command").into());
    };
    let count = *count;
    let os = {
        let _pause = core.pause_guard()?;
        target::linux(core, cli, None)?
    };
    if !syscall.is_empty() {
        return syscalls(cli, core, &os, syscall, *pid, count, *returns);
    }
    let Some(location) = location.as_deref() else {
        return Err(Failure {
            code: 2,
            error: anyhow!("give a kernel function or address, or --syscall NAMES"),
        });
    };
    let va = Va(parse_address_with(
        location,
        Some(&|name: &str| os.symbol_address(name)),
    )?);
    if *returns {
        return function_returns(cli, core, &os, location, va, count);
    }
    let kind = if *software {
        BreakpointKind::Software
    } else {
        BreakpointKind::Hardware
    };
    let monitor = EventMonitor::Breakpoint {
        address: BreakpointAddress::Virtual(va),
        kind,
    };

    let stop = super::watch::stop_on_ctrl_c()?;

    core.monitor_enable(monitor)?;
    eprintln!("tracing {location} at {va} ({kind:?} breakpoint); Ctrl-C to stop");
    let session = VmiSession::new(core, &os);
    let mut tracer = Tracer {
        os: &os,
        limit: count,
        hits: 0,
        json: cli.json,
    };
    let result = session.handle_until(&mut tracer, &stop);
    // Leave the guest as found, whatever happened.
    let removed = core.monitor_disable(monitor);
    result?;
    removed?;
    eprintln!("{} hit(s); breakpoint removed", tracer.hits);
    Ok(())
}

/// One argument value as JSON: strings and arrays as such, numbers as numbers.
fn arg_json(v: &ArgValue) -> serde_json::Value {
    match v {
        ArgValue::Int(i) => json!(i),
        ArgValue::Uint(u) => json!(u),
        ArgValue::Text(t) => json!(t),
        ArgValue::Str(s) => json!(s),
        ArgValue::StrArray(a) => json!(a),
    }
}

fn arg_text(v: &ArgValue) -> String {
    match v {
        ArgValue::Int(i) => i.to_string(),
        ArgValue::Uint(u) => u.to_string(),
        ArgValue::Text(t) => t.clone(),
        ArgValue::Str(Some(s)) => format!("{s:?}"),
        ArgValue::StrArray(Some(a)) => format!("{a:?}"),
        ArgValue::Str(None) | ArgValue::StrArray(None) => "?".into(),
    }
}

/// `vmi trace --syscall NAMES`: one line per call.
fn syscalls(
    cli: &Cli,
    core: &VmiCore<QemuDriver>,
    os: &LinuxOs,
    names: &[String],
    pid: Option<u32>,
    count: Option<u64>,
    returns: bool,
) -> Result<(), Failure> {
    let stop = super::watch::stop_on_ctrl_c()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let tracer = SyscallTracer::new(core, os, &names, SyscallOptions { pid, returns })?;
    eprintln!(
        "tracing system calls {}{}; Ctrl-C to stop",
        names.join(", "),
        pid.map_or(String::new(), |p| format!(" of pid {p}"))
    );
    let mut seen = 0u64;
    let mut out_err = None;
    let result = tracer.run_until(&stop, |e| {
        if count.is_some_and(|n| seen >= n) || out_err.is_some() {
            return;
        }
        seen += 1;
        let line = if cli.json {
            let args: serde_json::Map<String, serde_json::Value> = e
                .args
                .iter()
                .map(|(k, v)| (k.clone(), arg_json(v)))
                .collect();
            let mut v = json!({
                "time_ns": e.time_ns, "vcpu": e.vcpu.0, "pid": e.pid, "tid": e.tid,
                "comm": e.comm, "syscall": e.syscall, "args": args, "problems": e.problems,
            });
            if returns {
                v["ret"] = json!(e.ret);
            }
            v.to_string()
        } else {
            let args: Vec<String> = e
                .args
                .iter()
                .map(|(k, v)| format!("{k}={}", arg_text(v)))
                .collect();
            let mut line = format!(
                "{:<6} {:<6} {:<16} {}({})",
                e.pid,
                e.tid,
                e.comm,
                e.syscall,
                args.join(", ")
            );
            if let Some(r) = e.ret {
                line.push_str(&format!(" = {r}"));
            }
            for p in &e.problems {
                line.push_str(&format!("  [{p}]"));
            }
            line
        };
        if let Err(err) = super::watch::write_line(&line) {
            out_err = Some(err);
            stop.store(true, Ordering::SeqCst);
        }
        if count.is_some_and(|n| seen >= n) {
            stop.store(true, Ordering::SeqCst);
        }
    });
    let stats = tracer.stats();
    // Every breakpoint goes here, whatever happened.
    drop(tracer);
    result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    eprintln!(
        "{seen} call(s); {} breakpoint hit(s), {} not ours; breakpoints removed",
        stats.hits, stats.foreign_hits
    );
    Ok(())
}

/// `vmi trace FUNCTION --return`: one line per call, at its return.
fn function_returns(
    cli: &Cli,
    core: &VmiCore<QemuDriver>,
    os: &LinuxOs,
    location: &str,
    va: Va,
    count: Option<u64>,
) -> Result<(), Failure> {
    let stop = super::watch::stop_on_ctrl_c()?;
    // A symbol's prototype (BTF) decodes arguments and return value.
    let name = os.symbol_address(location).map(|_| location);
    let tracer = FunctionTracer::new(core, os, va, name, true)?;
    eprintln!("tracing {location} at {va} with returns; Ctrl-C to stop");
    let mut seen = 0u64;
    let mut out_err = None;
    let result = tracer.run_until(&stop, |c| {
        if count.is_some_and(|n| seen >= n) || out_err.is_some() {
            return;
        }
        seen += 1;
        let args: Vec<String> = c.args.iter().map(|a| format!("{a:#x}")).collect();
        let ret = c.ret.map(|r| format!("{r:#x}"));
        let line = if cli.json {
            let params: serde_json::Map<String, serde_json::Value> = c
                .params
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect();
            json!({"hit": seen, "vcpu": c.vcpu.0, "rip": format!("{:#x}", c.rip), "pid": c.pid,
                "tid": c.tid, "comm": c.comm, "args": args, "ret": ret, "params": params,
                "ret_value": c.ret_decoded.as_ref().map(value_json), "problems": c.problems})
            .to_string()
        } else {
            format!(
                "#{:<5} {} pid {:<6} {:<16} rip {:#x}  args({}) = {}",
                seen,
                c.vcpu,
                c.pid.map_or("?".into(), |p| p.to_string()),
                c.comm,
                c.rip,
                if c.params.is_empty() {
                    args.join(", ")
                } else {
                    c.params
                        .iter()
                        .map(|(k, v)| format!("{k}={}", value_json(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                c.ret_decoded.as_ref().map_or_else(
                    || ret.clone().unwrap_or_else(|| "?".into()),
                    |v| value_json(v).to_string()
                )
            )
        };
        if let Err(err) = super::watch::write_line(&line) {
            out_err = Some(err);
            stop.store(true, Ordering::SeqCst);
        }
        if count.is_some_and(|n| seen >= n) {
            stop.store(true, Ordering::SeqCst);
        }
    });
    let stats = tracer.stats();
    drop(tracer);
    result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    eprintln!(
        "{seen} call(s); {} breakpoint hit(s); breakpoints removed",
        stats.hits
    );
    Ok(())
}

/// A decoded value as JSON: numbers, strings, enum names, `"0x…"` pointers, objects for
/// structs, `{"unreadable": why}`.
fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => json!(i),
        Value::Uint(u) => json!(u),
        Value::Bool(b) => json!(b),
        Value::Enum(e) | Value::Str(e) => json!(e),
        Value::Ptr(p) => json!(format!("{p:#x}")),
        Value::Struct(fields) => serde_json::Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Value::Unreadable(why) => json!({ "unreadable": why }),
    }
}
