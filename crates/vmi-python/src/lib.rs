//! The Python package `vmi`: a running QEMU, a Xen domain or a memory dump from Python.
//!
//! ```python
//! import vmi
//! t = vmi.open("qemu:/path/qmp.sock")        # or a dump: vmi.open("guest.elf")
//! t.info                                      # dict, as `vmi info --json`
//! for p in t.os.processes():                  # pid, ppid, name, cmdline, argv, uid...
//!     print(p.pid, p.name, p.cmdline)
//! p = t.os.process(1); p.maps(); p.threads(); p.files(); p.env()
//! t.read(addr, 64, pid=1)                     # bytes; physical with phys=True
//! t.translate(addr, pid=1)                    # dict: pa, page_size, levels...
//! t.object("task_struct", t.symbol("init_task")).comm   # b'swapper/0\x00...'
//! t.export_isf("kernel.json")                 # Volatility 3 ISF, as `vmi profile export`
//! with t.paused(): ...                        # a consistent view across calls
//! for hit in t.trace("do_nanosleep", count=10): ...    # live, as they come: pid, comm, rip, args
//! ```
//!
//! Design: a thin layer over the same functions as the `vmi` command — `vmi_target` opens
//! the target and recognises its OS, every listing goes through `VmiOs` — so a target
//! spec, a result and an error message are the same in both. The GIL is released around
//! every call into the framework (reads, walks, kernel discovery). Errors are
//! `vmi.VmiError` subclasses whose message is the command's; objects a listing could not
//! read are reported as `vmi.IncompleteWarning`s, never silently dropped.
//!
//! Measured (2-core machine under load 4, dev profile for both, 256 MiB ELF dump of the
//! test guest, 52 processes, 5 runs): `python -c "vmi.open(dump).os.processes()"` 0.27 to
//! 0.39 s as a whole process, `vmi --target dump ps --json` 0.22 to 0.49 s; in the
//! interpreter, `open` 0.26 to 0.36 s (kernel discovery, profile from the cache) and
//! `processes()` 3 to 14 ms.
//!
//! Built by maturin (`scripts/setup.sh` installs it into `target/venv`); the extension
//! module is `vmi._vmi`, re-exported by `python/vmi/__init__.py`, with type stubs in
//! `python/vmi/__init__.pyi`. Tests: `crates/vmi-python/tests/` (pytest, against the real
//! test guest and its dump).

#![forbid(unsafe_code)]

mod error;
mod objects;
mod target;
mod trace;
mod typed;

use pyo3::prelude::*;

/// The extension module `vmi._vmi`.
#[pymodule]
fn _vmi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(target::open, m)?)?;
    m.add_class::<target::PyTarget>()?;
    m.add_class::<target::Paused>()?;
    m.add_class::<trace::Trace>()?;
    m.add_class::<objects::PyOs>()?;
    m.add_class::<objects::Process>()?;
    m.add_class::<objects::Thread>()?;
    m.add_class::<objects::Region>()?;
    m.add_class::<objects::File>()?;
    m.add_class::<objects::Module>()?;
    m.add_class::<typed::Object>()?;
    m.add("VmiError", py.get_type::<error::VmiError>())?;
    m.add("TargetError", py.get_type::<error::TargetError>())?;
    m.add(
        "NotSupportedError",
        py.get_type::<error::NotSupportedError>(),
    )?;
    m.add("NotFoundError", py.get_type::<error::NotFoundError>())?;
    m.add("ReadError", py.get_type::<error::ReadError>())?;
    m.add(
        "IncompleteWarning",
        py.get_type::<error::IncompleteWarning>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
