//! `vmi watch procs`: process lifecycle of a live Linux guest, one line per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::anyhow;
use serde_json::json;
use vmi_core::VmiCore;
use vmi_driver_qemu::QemuDriver;
use vmi_utils::tracker::{ProcessEvent, ProcessEventKind, ProcessTracker};

use crate::{Cli, Failure, WatchCommand, target};

/// A flag set by Ctrl-C (SIGINT; with the `ctrlc` crate's `termination` feature off,
/// SIGTERM still ends the process and the driver's guard cleans up): the loop checks it
/// at least every 100 ms, then every breakpoint is removed and the guest left running.
pub(crate) fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    Ok(stop)
}

/// Writes one line to stdout now (a reader that went away is an error, not a panic).
pub(crate) fn write_line(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// One event as a JSON object (schema in `docs/cli-json.md`).
fn event_json(e: &ProcessEvent) -> serde_json::Value {
    json!({
        "event": e.kind.name(),
        "time_ns": e.time_ns,
        "vcpu": e.vcpu.0,
        "pid": e.pid,
        "tid": e.tid,
        "ppid": e.ppid,
        "comm": e.comm,
        "thread": e.thread,
        "filename": e.filename,
        "argv": e.argv,
        "exit_code": e.exit_code,
        "signal": e.signal,
        "problems": e.problems,
    })
}

fn event_line(e: &ProcessEvent) -> String {
    let what = match e.kind {
        ProcessEventKind::Fork if e.thread => "clone".to_string(),
        ProcessEventKind::Fork => "fork".to_string(),
        ProcessEventKind::Exec => format!(
            "exec  {} {}",
            e.filename.as_deref().unwrap_or("?"),
            e.argv.as_ref().map_or("?".into(), |a| format!("{a:?}"))
        ),
        ProcessEventKind::Exit => match (e.exit_code, e.signal) {
            (Some(c), _) => format!("exit  code {c}"),
            (_, Some(s)) => format!("exit  signal {s}"),
            _ => "exit".into(),
        },
    };
    let mut line = format!(
        "{:<6} {:<6} {:<6} {:<16} {what}",
        e.pid, e.tid, e.ppid, e.comm
    );
    for p in &e.problems {
        line.push_str(&format!("  [{p}]"));
    }
    line
}

/// Runs `vmi watch`.
pub fn run(cli: &Cli, core: &VmiCore<QemuDriver>, what: &WatchCommand) -> Result<(), Failure> {
    let WatchCommand::Procs { count } = what;
    let os = {
        let _pause = core.pause_guard()?;
        target::linux(core, cli, None)?
    };
    let stop = stop_on_ctrl_c()?;
    let tracker = ProcessTracker::new(core, &os)?;
    eprintln!("watching fork, exec and exit; Ctrl-C to stop");
    if !cli.json {
        println!(
            "{:<6} {:<6} {:<6} {:<16} EVENT",
            "PID", "TID", "PPID", "COMM"
        );
    }
    let mut seen = 0u64;
    let mut out_err = None;
    let result = tracker.run_until(&stop, |e| {
        if count.is_some_and(|n| seen >= n) || out_err.is_some() {
            return;
        }
        seen += 1;
        let line = if cli.json {
            event_json(&e).to_string()
        } else {
            event_line(&e)
        };
        if let Err(err) = write_line(&line) {
            out_err = Some(err);
            stop.store(true, Ordering::SeqCst);
        }
        if count.is_some_and(|n| seen >= n) {
            stop.store(true, Ordering::SeqCst);
        }
    });
    // Leave the guest as found, whatever happened: every breakpoint goes here.
    let stats = tracker.stats();
    drop(tracker);
    result?;
    if let Some(e) = out_err {
        return Err(e.into());
    }
    eprintln!(
        "{seen} event(s); {} breakpoint hit(s); breakpoints removed",
        stats.hits
    );
    Ok(())
}
