//! Lists the processes of a memory dump or RAM image with their command lines, from
//! guest memory alone: `cargo run --release -p vmi-os-linux --example pslist -- DUMP`.

use std::io::Write;

use vmi_core::VmiCore;
use vmi_driver_dump::DumpDriver;
use vmi_os_linux::LinuxOs;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).ok_or("usage: pslist DUMP")?;
    let driver = DumpDriver::open(&path)?;
    let note = driver.vmcoreinfo().map(str::to_owned);
    let core = VmiCore::new(driver)?;
    let mut builder = LinuxOs::builder();
    if let Some(note) = note {
        builder = builder.vmcoreinfo(note);
    }
    let os = builder.build(&core)?;
    let list = os.process_list(&core)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:>7} {:>7} {:<16} CMDLINE", "PID", "PPID", "COMM")?;
    for t in &list.tasks {
        let cmd = os
            .cmdline(&core, t)
            .map(|a| a.join(" "))
            .unwrap_or_default();
        writeln!(out, "{:>7} {:>7} {:<16} {cmd}", t.tgid, t.ppid, t.comm)?;
    }
    for (at, e) in &list.skipped {
        writeln!(out, "skipped {at}: {e}")?;
    }
    Ok(())
}
