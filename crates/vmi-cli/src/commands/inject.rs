//! `vmi inject`: system calls run inside a process of a live Linux guest.
//!
//! Output: the command's result on stdout (`cat`: the file's bytes, unchanged; `exec`:
//! the new pid; `get` writes the bytes to a local file); a one-line summary on stderr.
//! With `--json`, stderr carries one JSON object per step (`{"step", "syscall", "nr",
//! "args", "ret"}`) and a final summary object (see `docs/cli-json.md`), so stdout stays
//! the result.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use serde_json::json;
use vmi_core::VmiCore;
use vmi_driver_qemu::{AttachOptions, QemuDriver};
use vmi_utils::inject::{
    Arg, InjectError, InjectOptions, InjectReport, Injector, Next, Recipe, Syscall,
};

use crate::{Cli, Failure, InjectArgs, InjectCommand, target};

/// Bytes read per `read` step, and of the buffer the injector may map in the process
/// for reads and writes larger than the stack's scratch area (`--no-buffer`: none).
const CHUNK: usize = 1 << 20;

/// Runs `vmi inject`.
pub fn run(cli: &Cli, spec: &str, args: &InjectArgs) -> Result<(), Failure> {
    if !args.allow_write {
        let what = match args.what {
            InjectCommand::Put { .. } => {
                Some("put writes a file inside the guest (created or overwritten")
            }
            InjectCommand::Exec { .. } => {
                Some("exec starts a program inside the guest (a new process made")
            }
            InjectCommand::Call { .. } => {
                Some("call runs a function of the process, which may change anything (done")
            }
            _ => None,
        };
        if let Some(what) = what {
            return Err(Failure {
                code: 2,
                error: anyhow!(
                    "{what} by process {} with its rights; the change stays after vmi exits): \
                     add --allow-write to do it",
                    args.pid
                ),
            });
        }
    }
    // Registers and the stack are written: a writable attach.
    let options = AttachOptions::default().writable(true);
    let driver = if let Some(parsed) = vmi_target::parse_libvirt(spec) {
        let (uri, domain) = parsed.map_err(target::target_failure)?;
        QemuDriver::attach_libvirt(uri, domain, options).map_err(|e| Failure {
            code: crate::EXIT_TARGET,
            error: anyhow!(e).context(format!("cannot attach to libvirt domain {domain}")),
        })?
    } else if let Some(socket) = spec.strip_prefix("qemu:") {
        QemuDriver::attach_with(socket, options).map_err(|e| Failure {
            code: crate::EXIT_TARGET,
            error: anyhow!(e).context(format!("cannot attach to {socket}")),
        })?
    } else {
        return Err(Failure {
            code: 2,
            error: anyhow!(
                "inject needs a running VM: a QEMU given by its QMP socket (--target \
                 qemu:<QMP socket>) or a libvirt domain (--target libvirt:<domain>); {spec} is \
                 neither"
            ),
        });
    };
    let core = VmiCore::new(driver)?;
    let os = {
        let _pause = core.pause_guard()?;
        target::linux(&core, cli, None)?
    };
    let stop = super::watch::stop_on_ctrl_c()?;
    let options = InjectOptions {
        safe_point_timeout: Duration::from_secs(args.timeout),
        buffer: if args.no_buffer { 0 } else { CHUNK },
        ..InjectOptions::default()
    };
    let injector = Injector::new(&core, &os)
        .with_options(options)
        .with_stop(&stop);
    let mut write_err = None;
    let result = match &args.what {
        InjectCommand::Cat { path, max_bytes } => {
            let mut stdout = std::io::stdout().lock();
            let mut recipe = Recipe::cat(path, CHUNK, *max_bytes, |bytes| {
                match stdout.write_all(bytes) {
                    Ok(()) => true,
                    Err(e) => {
                        write_err = Some(e);
                        false
                    }
                }
            });
            let r = injector.run_in_thread(args.pid, args.tid, &mut recipe);
            drop(recipe);
            stdout.flush().ok();
            r
        }
        InjectCommand::Put { local, path } => {
            let data = read_local(local)?;
            let mut recipe = Recipe::put(path, &data, 0o644);
            let r = injector.run_in_thread(args.pid, args.tid, &mut recipe);
            drop(recipe);
            r
        }
        InjectCommand::Exec { env, command } => {
            let envp = if env.is_empty() {
                vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                ]
            } else {
                env.clone()
            };
            let mut pid = None;
            let mut recipe = Recipe::exec(command.clone(), envp, |p| pid = Some(p));
            let r = injector.run_in_thread(args.pid, args.tid, &mut recipe);
            drop(recipe);
            if let Ok(report) = &r {
                match (pid, report.child_exec) {
                    (Some(p), Some(None)) => println!("{p}"),
                    (p, Some(Some(err))) => {
                        summarize(cli, report);
                        return Err(anyhow!(
                            "execve {} failed in the new process{}: {}; it exited with code 127",
                            command[0],
                            p.map_or(String::new(), |p| format!(" (pid {p})")),
                            vmi_utils::inject::errno_text(err)
                        )
                        .into());
                    }
                    _ => {
                        summarize(cli, report);
                        return Err(anyhow!("the new process was not seen executing").into());
                    }
                }
            }
            r
        }
        InjectCommand::Call {
            function,
            args: fargs,
        } => {
            let (object, symbol) = match function.rsplit_once(':') {
                Some((o, s)) => (Some(o), s),
                None => (None, function.as_str()),
            };
            let values = fargs.iter().map(|a| call_arg(a)).collect::<Vec<Arg>>();
            if values.len() > vmi_utils::inject::MAX_ARGS {
                return Err(Failure {
                    code: 2,
                    error: anyhow!(
                        "{} arguments: a call takes at most {}",
                        values.len(),
                        vmi_utils::inject::MAX_ARGS
                    ),
                });
            }
            let f = injector
                .find_function(args.pid, object, symbol)
                .map_err(|e| Failure {
                    code: 1,
                    error: anyhow!(e),
                })?;
            // The step's name lives as long as the report printed at the end.
            let name: &'static str = Box::leak(symbol.to_owned().into_boxed_str());
            let first = if f.indirect {
                Syscall::function("ifunc resolver", f.address.0, vec![])
            } else {
                Syscall::function(name, f.address.0, values.clone())
            };
            let mut ret = None;
            let mut recipe = Recipe::new(first, |o| {
                if f.indirect && o.index == 0 {
                    if o.ret == 0 {
                        return Next::Fail(format!("the resolver of {symbol} returned 0"));
                    }
                    return Next::Call(Syscall::function(name, o.ret as u64, values.clone()));
                }
                ret = Some(o.ret);
                Next::Done
            });
            let r = injector.run_in_thread(args.pid, args.tid, &mut recipe);
            drop(recipe);
            if let (Ok(_), Some(v)) = (&r, ret) {
                println!("{v}");
            }
            r
        }
        InjectCommand::Get {
            path,
            local,
            max_bytes,
        } => {
            let file = std::fs::File::create(local)
                .map_err(|e| anyhow!(e).context(format!("cannot create {}", local.display())))?;
            let mut out = std::io::BufWriter::new(file);
            let mut recipe = Recipe::cat(path, CHUNK, *max_bytes, |bytes| {
                match out.write_all(bytes) {
                    Ok(()) => true,
                    Err(e) => {
                        write_err = Some(e);
                        false
                    }
                }
            });
            let r = injector.run_in_thread(args.pid, args.tid, &mut recipe);
            drop(recipe);
            let flushed = out.flush();
            if r.is_err() || write_err.is_some() || flushed.is_err() {
                // No half copy left behind.
                let _ = std::fs::remove_file(local);
            }
            if let (Ok(_), Err(e)) = (&r, flushed) {
                write_err.get_or_insert(e);
            }
            r
        }
    };
    let report = result.map_err(|e| Failure {
        code: 1,
        error: match &e {
            InjectError::StuckInSyscall { guarded: true, .. } => anyhow!(e).context(
                "the guest thread is not restored yet: vmi's guard process stays behind to do it",
            ),
            InjectError::StuckInSyscall { .. } | InjectError::Lost(_) => {
                anyhow!(e).context("the guest thread was NOT restored")
            }
            _ => anyhow!(e),
        },
    })?;
    summarize(cli, &report);
    if let Some(e) = write_err {
        return Err(anyhow!(e)
            .context("writing the file's bytes to stdout")
            .into());
    }
    Ok(())
}

/// An argument of `call`: an integer (decimal, possibly negative, or `0x` hex) as a
/// value; `str:TEXT` or anything else as a C string.
fn call_arg(a: &str) -> Arg {
    if let Some(text) = a.strip_prefix("str:") {
        return Arg::c_string(text);
    }
    let hex = a
        .strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    match (hex, a.parse::<i64>(), a.parse::<u64>()) {
        (Some(v), _, _) => Arg::Value(v),
        (_, Ok(v), _) => Arg::int(v),
        (_, _, Ok(v)) => Arg::Value(v),
        _ => Arg::c_string(a),
    }
}

/// Most bytes `put` copies.
const MAX_PUT: u64 = 256 << 20;

fn read_local(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow!(e).context(format!("cannot open {}", path.display())))?;
    let mut data = Vec::new();
    file.take(MAX_PUT + 1)
        .read_to_end(&mut data)
        .map_err(|e| anyhow!(e).context(format!("cannot read {}", path.display())))?;
    if data.len() as u64 > MAX_PUT {
        return Err(anyhow!("{} is larger than {MAX_PUT} bytes", path.display()).into());
    }
    Ok(data)
}

fn summarize(cli: &Cli, r: &InjectReport) {
    let registers = r.restored.as_ref().map(|x| *x == r.saved);
    if cli.json {
        for (i, s) in r.steps.iter().enumerate() {
            eprintln!(
                "{}",
                json!({"step": i, "syscall": s.name, "nr": s.nr,
                    "args": s.args.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>(),
                    "ret": s.ret})
            );
        }
        eprintln!(
            "{}",
            json!({"pid": r.pid, "tid": r.tid,
                "safe_point": format!("{:#x}", r.safe_point.0),
                "syscall_at": format!("{:#x}", r.syscall_at.0),
                "scratch": [format!("{:#x}", r.scratch.0.0), format!("{:#x}", r.scratch.1.0)],
                "steps": r.steps.len(), "hits": r.hits, "foreign_hits": r.foreign_hits,
                "elapsed_ms": r.elapsed.as_secs_f64() * 1000.0,
                "registers_restored": registers, "memory_restored": r.memory_restored,
                "crash_guard": r.crash_guard.as_ref().err()})
        );
    } else {
        if let Err(why) = &r.crash_guard {
            eprintln!(
                "note: had vmi died mid-recipe, the thread could not have been restored: {why}"
            );
        }
        let verified = match (registers, r.memory_restored) {
            (Some(true), Some(true)) => "registers and stack verified".to_string(),
            (None, _) | (_, None) => "not verified (the thread did not stop again)".to_string(),
            (reg, mem) => format!("MISMATCH: registers equal {reg:?}, stack equal {mem:?}"),
        };
        eprintln!(
            "pid {} (tid {}): {} system calls via syscall at {:#x}, {} breakpoint hits, {:.1} ms; thread restored, {verified}",
            r.pid,
            r.tid,
            r.steps.len(),
            r.syscall_at.0,
            r.hits,
            r.elapsed.as_secs_f64() * 1000.0
        );
    }
}
