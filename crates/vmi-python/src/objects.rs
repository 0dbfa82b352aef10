//! `vmi.Os` and what it lists: processes, threads, memory regions, open files, modules.
//! The same objects on every OS (the `VmiOs` trait); what only one OS has is in
//! `attributes`.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vmi_core::{CommandLine, OsAttribute, OsNamespaces, OsProcess, VmiError};

use crate::error::{Failure, quote, warn, warn_skipped};
use crate::target::{Inner, value_to_py, with_core};

/// OS-specific attributes as a dict.
fn attributes<'py>(py: Python<'py>, attrs: &[OsAttribute]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for a in attrs {
        d.set_item(a.key, value_to_py(py, &a.value)?)?;
    }
    Ok(d)
}

/// The OS of a target (`Target.os`).
#[pyclass(frozen, module = "vmi", name = "Os")]
pub struct PyOs {
    pub(crate) inner: Arc<Inner>,
}

/// A process as `vmi ps --json` shows it.
fn process_of(inner: &Arc<Inner>, p: OsProcess) -> Result<Process, Failure> {
    let os = inner.os()?;
    let mut errors = p.problems.clone();
    let (cmdline, ns) = with_core!(inner, |core| {
        let os = os.as_dyn();
        let cmdline = os.process_cmdline(core, &p).unwrap_or_else(|e| {
            errors.push(format!("command line: {e}"));
            CommandLine::Argv(Vec::new())
        });
        let ns = match os.process_namespaces(core, &p) {
            Ok(ns) => ns,
            Err(VmiError::NotSupported { .. }) => OsNamespaces::default(),
            Err(e) => {
                errors.push(format!("namespaces: {e}"));
                OsNamespaces::default()
            }
        };
        Ok((cmdline, ns))
    })?;
    Ok(Process {
        inner: inner.clone(),
        cmdline: cmdline.to_string(),
        argv: cmdline.argv(),
        errors,
        pid_ns: ns.pid_namespace,
        hostname: ns.hostname,
        process: p,
    })
}

/// Warns about what could not be read of each process, as `vmi ps` does.
fn warn_processes(py: Python<'_>, list: &[Process]) -> PyResult<()> {
    for p in list {
        for e in &p.errors {
            warn(
                py,
                &format!("process {} ({}): {e}", p.process.pid, p.process.name),
            )?;
        }
    }
    Ok(())
}

#[pymethods]
impl PyOs {
    /// The OS layer's name: `"linux"` or `"windows"`.
    #[getter]
    fn name(&self) -> PyResult<&'static str> {
        let os = self.inner.os()?;
        Ok(match os {
            vmi_target::Os::Linux(_) => "linux",
            _ => "windows",
        })
    }

    /// Every process (kernel threads included; `kernel_thread` tells them), with its
    /// command line, as `vmi ps --json`. A process that could not be read is warned
    /// about (`vmi.IncompleteWarning`), never silently left out.
    fn processes(&self, py: Python<'_>) -> PyResult<Vec<Process>> {
        let inner = &self.inner;
        let (list, skipped) = py.detach(|| -> Result<_, Failure> {
            let os = inner.os()?;
            let listing = with_core!(inner, |core| Ok(os.as_dyn().process_list(core)?))?;
            let list = listing
                .items
                .into_iter()
                .map(|p| process_of(inner, p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((list, listing.skipped))
        })?;
        warn_skipped(py, "process", &skipped)?;
        warn_processes(py, &list)?;
        Ok(list)
    }

    /// The process with id `pid`; raises `vmi.NotFoundError` when there is none.
    fn process(&self, py: Python<'_>, pid: u64) -> PyResult<Process> {
        let inner = &self.inner;
        let p = py.detach(|| -> Result<_, Failure> {
            let os = inner.os()?;
            let p = with_core!(inner, |core| os
                .as_dyn()
                .process(core, pid)
                .map_err(|e| Failure::vmi(format!("cannot find process {pid}"), &e)))?;
            process_of(inner, p)
        })?;
        warn_processes(py, std::slice::from_ref(&p))?;
        Ok(p)
    }

    /// Loaded kernel modules (Linux modules, Windows drivers).
    fn modules(&self, py: Python<'_>) -> PyResult<Vec<Module>> {
        let inner = &self.inner;
        let listing = py.detach(|| -> Result<_, Failure> {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os.as_dyn().module_list(core)?))
        })?;
        warn_skipped(py, "module", &listing.skipped)?;
        Ok(listing
            .items
            .into_iter()
            .map(|m| Module { module: m })
            .collect())
    }

    /// The kernel log, one string per line as `vmi dmesg` prints it.
    fn dmesg(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let inner = &self.inner;
        let records = py.detach(|| -> Result<_, Failure> {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os.as_dyn().kernel_log(core)?))
        })?;
        Ok(records.iter().flat_map(|r| r.lines()).collect())
    }

    fn __repr__(&self) -> String {
        match self.inner.os() {
            Ok(vmi_target::Os::Linux(l)) => format!(
                "<vmi.Os linux {}>",
                l.kernel().release.as_deref().unwrap_or("(release unknown)")
            ),
            Ok(_) => "<vmi.Os windows>".to_owned(),
            Err(e) => format!("<vmi.Os not recognised: {}>", e.message),
        }
    }
}

/// A process: a Linux thread-group leader, a Windows `EPROCESS`.
#[pyclass(frozen, module = "vmi", name = "Process")]
pub struct Process {
    inner: Arc<Inner>,
    process: OsProcess,
    /// The command line, its arguments joined by spaces (as `ps` prints it).
    #[pyo3(get)]
    cmdline: String,
    /// The arguments (on Windows, the command line as one string).
    #[pyo3(get)]
    argv: Vec<String>,
    /// What could not be read of this process (its other fields are then incomplete).
    #[pyo3(get)]
    errors: Vec<String>,
    /// Inode number of its PID namespace (Linux).
    #[pyo3(get)]
    pid_ns: Option<u64>,
    /// Host name of its UTS namespace (Linux).
    #[pyo3(get)]
    hostname: Option<String>,
}

impl Process {
    /// Runs `f` on the OS layer and the process.
    fn with_os<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'a> Fn(&'a Inner) -> Result<T, Failure> + Send + Sync,
    ) -> PyResult<T> {
        let inner = &self.inner;
        Ok(py.detach(|| f(inner))?)
    }
}

#[pymethods]
impl Process {
    /// Process id.
    #[getter]
    fn pid(&self) -> u64 {
        self.process.pid
    }
    /// Parent's process id.
    #[getter]
    fn ppid(&self) -> u64 {
        self.process.ppid
    }
    /// Short name (`comm` on Linux, `ImageFileName` on Windows).
    #[getter]
    fn name(&self) -> &str {
        &self.process.name
    }
    /// Real user id (Linux), else `None`.
    #[getter]
    fn uid(&self) -> Option<u32> {
        self.process.uid
    }
    /// Real group id (Linux), else `None`.
    #[getter]
    fn gid(&self) -> Option<u32> {
        self.process.gid
    }
    /// The run state as one letter (`R`, `S`, `Z`...), or `None`.
    #[getter]
    fn state(&self) -> Option<String> {
        self.process.state.map(String::from)
    }
    /// Whether it is a kernel thread / system process.
    #[getter]
    fn kernel_thread(&self) -> bool {
        self.process.is_kernel
    }
    /// Address of the kernel object (`task_struct`, `EPROCESS`).
    #[getter]
    fn task(&self) -> u64 {
        self.process.object.0
    }
    /// Page-table root of its address space (`None` for kernel threads).
    #[getter]
    fn translation_root(&self) -> Option<u64> {
        self.process.translation_root.map(|p| p.0)
    }
    /// Start time in nanoseconds (Linux: since boot; Windows: since 1601).
    #[getter]
    fn start_time_ns(&self) -> Option<u64> {
        self.process.start_time_ns
    }
    /// The pid in its own PID namespace (Linux; differs inside a container).
    #[getter]
    fn ns_pid(&self) -> Option<u64> {
        self.process.namespace_pid
    }
    /// OS-specific properties.
    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attributes(py, &self.process.attributes)
    }

    /// Its memory regions (Linux VMAs, Windows VADs), as `vmi maps PID`.
    fn maps(&self, py: Python<'_>) -> PyResult<Vec<Region>> {
        let p = &self.process;
        let listing = self.with_os(py, |inner| {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os.as_dyn().memory_region_list(core, p)?))
        })?;
        warn_skipped(py, "memory region", &listing.skipped)?;
        Ok(listing
            .items
            .into_iter()
            .map(|r| Region { region: r })
            .collect())
    }

    /// Its threads, as `vmi threads PID`.
    fn threads(&self, py: Python<'_>) -> PyResult<Vec<Thread>> {
        let p = &self.process;
        let listing = self.with_os(py, |inner| {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os.as_dyn().thread_list(core, p)?))
        })?;
        warn_skipped(py, "thread", &listing.skipped)?;
        Ok(listing
            .items
            .into_iter()
            .map(|t| Thread { thread: t })
            .collect())
    }

    /// Its open files (Linux) or handles (Windows), as `vmi files PID`.
    fn files(&self, py: Python<'_>) -> PyResult<Vec<File>> {
        let p = &self.process;
        let listing = self.with_os(py, |inner| {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os.as_dyn().handles(core, p)?))
        })?;
        warn_skipped(py, "handle", &listing.skipped)?;
        for h in &listing.items {
            if let Some(e) = &h.error {
                warn(
                    py,
                    &format!("the path of fd {} ({:#x}): {e}", h.id, h.object.0),
                )?;
            }
        }
        Ok(listing
            .items
            .into_iter()
            .map(|h| File { handle: h })
            .collect())
    }

    /// Its environment, read from its memory: `(name, value)` pairs in its order
    /// (`value` is `None` for an entry without `=`; `dict(p.env())` for a dict).
    fn env(&self, py: Python<'_>) -> PyResult<Vec<(String, Option<String>)>> {
        let p = &self.process;
        self.with_os(py, |inner| {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os
                .as_dyn()
                .process_environment(core, p)?))
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<vmi.Process pid={} ppid={} name={} cmdline={}>",
            self.process.pid,
            self.process.ppid,
            quote(&self.process.name),
            quote(&self.cmdline)
        )
    }
}

/// A thread.
#[pyclass(frozen, module = "vmi", name = "Thread")]
pub struct Thread {
    thread: vmi_core::OsThread,
}

#[pymethods]
impl Thread {
    /// Thread id.
    #[getter]
    fn tid(&self) -> u64 {
        self.thread.tid
    }
    /// Owning process id.
    #[getter]
    fn pid(&self) -> u64 {
        self.thread.pid
    }
    /// Its name, where the OS keeps one.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.thread.name.as_deref()
    }
    /// Run state as one letter, or `None`.
    #[getter]
    fn state(&self) -> Option<String> {
        self.thread.state.map(String::from)
    }
    /// Address of the kernel object.
    #[getter]
    fn task(&self) -> u64 {
        self.thread.object.0
    }
    /// OS-specific properties.
    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attributes(py, &self.thread.attributes)
    }
    fn __repr__(&self) -> String {
        format!(
            "<vmi.Thread tid={} pid={} name={}>",
            self.thread.tid,
            self.thread.pid,
            quote(self.thread.name.as_deref().unwrap_or(""))
        )
    }
}

/// A memory region (Linux VMA, Windows VAD).
#[pyclass(frozen, module = "vmi", name = "Region")]
pub struct Region {
    region: vmi_core::OsRegion,
}

#[pymethods]
impl Region {
    /// First address.
    #[getter]
    fn start(&self) -> u64 {
        self.region.start.0
    }
    /// One past the last address.
    #[getter]
    fn end(&self) -> u64 {
        self.region.end.0
    }
    /// Rights and sharing as `/proc/PID/maps` prints them (`r-xp`).
    #[getter]
    fn perms(&self) -> String {
        self.region.perms()
    }
    /// Offset in the backing file.
    #[getter]
    fn offset(&self) -> u64 {
        self.region.offset
    }
    /// The OS's own flags (Linux `vm_flags`).
    #[getter]
    fn flags(&self) -> u64 {
        self.region.flags
    }
    /// Backing file path, for file-backed regions.
    #[getter]
    fn path(&self) -> Option<&str> {
        self.region.path.as_deref()
    }
    /// The path, or a name such as `[heap]`, `[stack]`, `[vdso]`.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.region.name.as_deref()
    }
    /// Address of the kernel object (`vm_area_struct`, `MMVAD`).
    #[getter]
    fn object(&self) -> u64 {
        self.region.object.0
    }
    /// OS-specific properties (Linux: `dev`, `inode`).
    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attributes(py, &self.region.attributes)
    }
    fn __repr__(&self) -> String {
        format!(
            "<vmi.Region {:#x}-{:#x} {} {}>",
            self.region.start.0,
            self.region.end.0,
            self.region.perms(),
            self.region.name.as_deref().unwrap_or("")
        )
    }
}

/// An open file (Linux) or handle (Windows).
#[pyclass(frozen, module = "vmi", name = "File")]
pub struct File {
    handle: vmi_core::OsHandle,
}

#[pymethods]
impl File {
    /// The descriptor (Linux) or handle value (Windows).
    #[getter]
    fn fd(&self) -> u64 {
        self.handle.id
    }
    /// What it refers to, as `readlink /proc/PID/fd/N` (or the object name).
    #[getter]
    fn path(&self) -> Option<&str> {
        self.handle.path.as_deref()
    }
    /// Why the path could not be read, if it could not.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.handle.error.as_deref()
    }
    /// Address of the kernel object (`struct file`, the object body).
    #[getter]
    fn file(&self) -> u64 {
        self.handle.object.0
    }
    /// OS-specific properties.
    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attributes(py, &self.handle.attributes)
    }
    fn __repr__(&self) -> String {
        format!(
            "<vmi.File fd={} path={}>",
            self.handle.id,
            quote(self.handle.path.as_deref().unwrap_or(""))
        )
    }
}

/// A loaded kernel module or driver.
#[pyclass(frozen, module = "vmi", name = "Module")]
pub struct Module {
    module: vmi_core::OsModule,
}

#[pymethods]
impl Module {
    /// Name.
    #[getter]
    fn name(&self) -> &str {
        &self.module.name
    }
    /// Load address.
    #[getter]
    fn base(&self) -> u64 {
        self.module.base.0
    }
    /// Size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.module.size
    }
    /// Full path, where the OS records one.
    #[getter]
    fn path(&self) -> Option<&str> {
        self.module.path.as_deref()
    }
    /// Its state (`Live`, `Loading`, `Unloading`), or `None`.
    #[getter]
    fn state(&self) -> Option<&'static str> {
        self.module.state
    }
    /// OS-specific properties.
    #[getter]
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        attributes(py, &self.module.attributes)
    }
    fn __repr__(&self) -> String {
        format!(
            "<vmi.Module {} base={:#x} size={}>",
            self.module.name, self.module.base.0, self.module.size
        )
    }
}
