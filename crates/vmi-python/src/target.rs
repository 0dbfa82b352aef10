//! `vmi.Target`: an opened target, its OS, reads, translations, symbols, pausing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use vmi_core::{AccessContext, AddressContext, OsValue, Pa, Va, VmState, VmiCore, VmiVmControl};
use vmi_target::{Os, OsOptions, Target};

use crate::error::{Failure, Kind, quote};
use crate::objects;
use crate::typed::Object;

/// Upper bound of one read, as `vmi read`.
pub(crate) const MAX_READ: u64 = 16 << 20;

/// What every Python object of one target shares.
pub(crate) struct Inner {
    /// The spec it was opened with.
    pub(crate) spec: String,
    /// The driver and core; `None` once closed.
    pub(crate) target: RwLock<Option<Target>>,
    /// Whether it is a running VM.
    pub(crate) live: bool,
    /// Whether a `Target.paused()` block paused it (and so must resume it, also when
    /// the target is closed inside the block).
    pub(crate) paused_by_us: AtomicBool,
    /// The OS layer, or why none was recognised.
    pub(crate) os: Result<Os, vmi_target::TargetError>,
}

/// Runs `$body` with `$core` bound to the target's core, paused for the call on a live
/// target (a consistent view; resumed after only if this call paused it).
macro_rules! with_core {
    ($inner:expr, |$core:ident| $body:expr) => {{
        let target = $inner
            .target
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match target.as_ref() {
            Some(vmi_target::Target::Qemu($core)) => {
                let _pause = $core.pause_guard().map_err(crate::error::Failure::from)?;
                $body
            }
            Some(vmi_target::Target::Dump($core)) => $body,
            #[cfg(feature = "xen")]
            Some(vmi_target::Target::Xen($core)) => {
                let _pause = $core.pause_guard().map_err(crate::error::Failure::from)?;
                $body
            }
            #[allow(unreachable_patterns)]
            Some(_) => Err(crate::error::Failure::new(
                crate::error::Kind::NotSupported,
                "this kind of target is not supported by the Python package",
            )),
            None => Err(crate::error::Failure::new(
                crate::error::Kind::Other,
                format!("the target {} is closed", $inner.spec),
            )),
        }
    }};
}
pub(crate) use with_core;

impl Inner {
    /// The OS layer, or the failure that says why it was not recognised.
    pub(crate) fn os(&self) -> Result<&Os, Failure> {
        self.os.as_ref().map_err(Failure::target)
    }

    /// The page-table root of `pid`'s address space, or the kernel's.
    pub(crate) fn root(&self, pid: Option<u64>) -> Result<Pa, Failure> {
        let os = self.os()?;
        with_core!(self, |core| {
            let os = os.as_dyn();
            match pid {
                Some(pid) => {
                    let p = os
                        .process(core, pid)
                        .map_err(|e| Failure::vmi(format!("cannot find process {pid}"), &e))?;
                    p.translation_root.ok_or_else(|| {
                        Failure::new(
                            Kind::Other,
                            format!(
                                "process {pid} has no user address space (a kernel thread or an exited process)"
                            ),
                        )
                    })
                }
                None => Ok(os.kernel_translation_root(core)?),
            }
        })
    }

    /// Reads `buf.len()` bytes at `ctx`: all of them, or the readable prefix when
    /// `partial` (an error when not even one byte is readable).
    pub(crate) fn read(
        &self,
        ctx: AccessContext,
        len: u64,
        partial: bool,
    ) -> Result<Vec<u8>, Failure> {
        if len > MAX_READ {
            return Err(Failure::new(
                Kind::Other,
                format!("length must be 0..={MAX_READ} bytes"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        with_core!(self, |core| {
            if partial && len > 0 {
                let n = core.read_available(ctx, &mut buf);
                if n == 0 {
                    core.read(ctx, &mut buf[..1])
                        .map_err(|e| Failure::vmi(format!("cannot read {ctx}"), &e))?;
                }
                buf.truncate(n);
            } else {
                core.read(ctx, &mut buf)
                    .map_err(|e| Failure::vmi(format!("cannot read {ctx}"), &e))?;
            }
            Ok(buf)
        })
    }
}

/// A target opened by [`open`]: a running QEMU, a Xen domain or a memory dump.
#[pyclass(frozen, module = "vmi", name = "Target")]
pub struct PyTarget {
    pub(crate) inner: Arc<Inner>,
}

/// Opens a target and recognises its OS.
///
/// `target` is `qemu:/path/qmp.sock` (a running QEMU, by its QMP socket),
/// `libvirt:NAME` or `libvirt+URI:NAME` (a domain run by libvirt, through libvirt), a dump
/// file (raw, ELF, kdump, LiME, Windows crash dump), or `xen:DOMID` (a Xen domain, from
/// dom0 as root, in a package built with the `xen` feature; otherwise
/// `vmi.NotSupportedError`). The keyword arguments
/// are the `vmi` command's global options. Raises `vmi.TargetError` when the target cannot
/// be opened; an OS that is not recognised is raised by the first call that needs it
/// (`Target.info` still works).
#[pyfunction]
#[pyo3(signature = (target, *, kernel=None, system_map=None, profile=None, symbol_path=None, no_cache=false))]
pub fn open(
    py: Python<'_>,
    target: String,
    kernel: Option<std::path::PathBuf>,
    system_map: Option<std::path::PathBuf>,
    profile: Option<std::path::PathBuf>,
    symbol_path: Option<String>,
    no_cache: bool,
) -> PyResult<PyTarget> {
    #[cfg(not(feature = "xen"))]
    if target.starts_with("xen:") {
        return Err(Failure::new(
            Kind::NotSupported,
            format!(
                "{target}: this vmi package was built without the Xen driver \
                 (build it in dom0 with `maturin build --features xen`: needs libxen-dev and libclang)"
            ),
        )
        .into());
    }
    let options = OsOptions {
        kernel,
        system_map,
        profile,
        symbol_path,
        no_cache,
    };
    let inner = py.detach(move || -> Result<Inner, Failure> {
        let opened = vmi_target::open(&target).map_err(|e| Failure::target(&e))?;
        let vmcoreinfo = opened.vmcoreinfo().map(str::to_owned);
        let os = match &opened {
            Target::Qemu(core) => {
                let _pause = core.pause_guard()?;
                vmi_target::detect_os(core, &options, None)
            }
            Target::Dump(core) => vmi_target::detect_os(core, &options, vmcoreinfo.as_deref()),
            #[cfg(feature = "xen")]
            Target::Xen(core) => {
                let _pause = core.pause_guard()?;
                vmi_target::detect_os(core, &options, None)
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(Failure::new(
                    Kind::NotSupported,
                    "this kind of target is not supported by the Python package",
                ));
            }
        };
        Ok(Inner {
            spec: target,
            live: opened.is_live(),
            target: RwLock::new(Some(opened)),
            paused_by_us: AtomicBool::new(false),
            os,
        })
    })?;
    Ok(PyTarget {
        inner: Arc::new(inner),
    })
}

/// An OS-specific value as Python: numbers and addresses as `int`.
pub(crate) fn value_to_py<'py>(py: Python<'py>, v: &OsValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        OsValue::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        OsValue::Number(n) | OsValue::Hex(n) => n.into_pyobject(py)?.into_any(),
        OsValue::Text(t) => t.into_pyobject(py)?.into_any(),
        OsValue::List(l) => {
            let items = l
                .iter()
                .map(|v| value_to_py(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        _ => py.None().into_bound(py),
    })
}

#[pymethods]
impl PyTarget {
    /// What `vmi info --json` shows: target kind, live, vCPUs, OS, kernel release, KASLR
    /// slide... (addresses as `"0x…"` strings, as in the JSON).
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let facts = py.detach(|| {
            let live = inner.live;
            with_core!(inner, |core| Ok(vmi_target::info(
                core,
                live,
                inner.os.as_ref().map(|o| o.as_dyn())
            )))
        })?;
        let d = PyDict::new(py);
        for a in &facts {
            match &a.value {
                OsValue::Hex(n) => d.set_item(a.key, format!("{n:#x}"))?,
                v => d.set_item(a.key, value_to_py(py, v)?)?,
            }
        }
        Ok(d)
    }

    /// The target's OS (`vmi.Os`); raises `vmi.TargetError` when none was recognised.
    #[getter]
    fn os(&self) -> PyResult<objects::PyOs> {
        self.inner.os()?;
        Ok(objects::PyOs {
            inner: self.inner.clone(),
        })
    }

    /// Whether the target is a running VM (not a dump).
    #[getter]
    fn live(&self) -> bool {
        self.inner.live
    }

    /// Reads `size` bytes at `address`: virtual in the kernel's address space, in process
    /// `pid`'s with `pid=`, or physical with `phys=True`. Raises `vmi.ReadError` when a
    /// byte cannot be read; with `partial=True`, returns the readable prefix instead
    /// (raising only when not even the first byte is readable). At most 16 MiB.
    #[pyo3(signature = (address, size, pid=None, phys=false, partial=false))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        address: u64,
        size: u64,
        pid: Option<u64>,
        phys: bool,
        partial: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if phys && pid.is_some() {
            return Err(Failure::new(Kind::Other, "give either pid= or phys=True").into());
        }
        let inner = &self.inner;
        let bytes = py.detach(|| -> Result<Vec<u8>, Failure> {
            let ctx = if phys {
                AccessContext::direct(Pa(address))
            } else {
                AccessContext::paging(Va(address), inner.root(pid)?)
            };
            inner.read(ctx, size, partial)
        })?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Translates virtual address `va` (the kernel's address space, or process `pid`'s):
    /// a dict with `va`, `root`, `pa`, `page_size`, `writable`, `user`, `no_execute` and
    /// the page-table `levels` walked. Raises `vmi.ReadError` on a page fault.
    #[pyo3(signature = (va, pid=None))]
    fn translate<'py>(
        &self,
        py: Python<'py>,
        va: u64,
        pid: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inner = &self.inner;
        let (root, t) = py.detach(|| -> Result<_, Failure> {
            let root = inner.root(pid)?;
            let ctx = AddressContext::new(Va(va), root);
            let t = with_core!(inner, |core| core.translate(ctx).map_err(|e| Failure::vmi(
                format!("cannot translate {} (root {root})", Va(va)),
                &e
            )))?;
            Ok((root, t))
        })?;
        let d = PyDict::new(py);
        d.set_item("va", va)?;
        d.set_item("root", root.0)?;
        d.set_item("pa", t.pa.0)?;
        d.set_item("page_size", t.page_size)?;
        d.set_item("writable", t.flags.writable)?;
        d.set_item("user", t.flags.user)?;
        d.set_item("no_execute", t.flags.no_execute)?;
        let levels = PyList::empty(py);
        for s in t.steps() {
            let l = PyDict::new(py);
            l.set_item("level", s.name)?;
            l.set_item("index", s.index)?;
            l.set_item("entry_address", s.entry_pa.0)?;
            l.set_item("entry", s.entry)?;
            levels.append(l)?;
        }
        d.set_item("levels", levels)?;
        Ok(d)
    }

    /// The run-time address of kernel symbol `name` (KASLR applied).
    fn symbol(&self, py: Python<'_>, name: String) -> PyResult<u64> {
        let inner = &self.inner;
        let va = py.detach(|| -> Result<Va, Failure> {
            let os = inner.os()?;
            with_core!(inner, |core| Ok(os.as_dyn().kernel_symbol(core, &name)?))
        })?;
        Ok(va.0)
    }

    /// Writes the target's profile to `path` as a Volatility 3 ISF (JSON), as
    /// `vmi profile export --format isf PATH`: link-time symbol addresses, and for Linux
    /// the running kernel's banner as `linux_banner`, so Volatility matches it to the
    /// memory (`vol -s DIR`). Raises `vmi.TargetError` when no OS was recognised and
    /// `vmi.VmiError` when the file cannot be written.
    fn export_isf(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| -> Result<(), Failure> {
            let os = inner.os()?;
            // The export reads no memory: the driver type only picks the trait object.
            os.as_dyn::<vmi_driver_qemu::QemuDriver>()
                .export_profile(&path)
                .map_err(|e| Failure::vmi(format!("cannot write {}", path.display()), &e))
        })?;
        Ok(())
    }

    /// The kernel object of type `type_name` (a struct or union of the profile, such as
    /// `"task_struct"`) at virtual address `address` (the kernel's address space, or
    /// process `pid`'s): its fields read as attributes, by the profile's layout.
    #[pyo3(signature = (type_name, address, pid=None))]
    fn object(
        &self,
        py: Python<'_>,
        type_name: String,
        address: u64,
        pid: Option<u64>,
    ) -> PyResult<Object> {
        let inner = self.inner.clone();
        py.detach(move || Object::new(inner, &type_name, address, pid))
            .map_err(Into::into)
    }

    /// A context manager that keeps a live target paused in its block (a consistent view
    /// across calls), and resumes it after only if it paused it. On a dump it does nothing.
    fn paused(&self) -> Paused {
        Paused {
            inner: self.inner.clone(),
            resume: AtomicBool::new(false),
        }
    }

    /// Breaks on kernel function (or address) `location` of a live Linux target and
    /// returns an iterator of its hits as they come, one dict each (`hit`, `vcpu`, `rip`,
    /// `pid`, `comm`, `args`: the first six arguments), as `vmi trace --json`. The
    /// breakpoint (hardware, or `software=True`) is armed on return and removed after
    /// `count` hits (`None`: no limit), at `timeout` seconds, at Ctrl-C
    /// (`KeyboardInterrupt`), at `close()` or the end of a `with` block, or when the
    /// iterator is freed (a `for` loop left early). The guest runs meanwhile; a hit not
    /// yet taken holds it stopped at the breakpoint.
    #[pyo3(signature = (location, count=Some(10), timeout=None, software=false))]
    fn trace(
        &self,
        py: Python<'_>,
        location: String,
        count: Option<u64>,
        timeout: Option<f64>,
        software: bool,
    ) -> PyResult<crate::trace::Trace> {
        crate::trace::Trace::start(py, self.inner.clone(), &location, count, timeout, software)
    }

    /// Detaches from the target (a live QEMU's QMP socket is free again, a guest a
    /// `paused()` block paused is resumed). Every later call raises `vmi.VmiError`.
    /// Closing twice does nothing; `with vmi.open(...) as t:` closes at the end.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| {
            let mut target = inner.target.write().unwrap_or_else(PoisonError::into_inner);
            let resumed = resume_if_paused_by_us(target.as_ref(), inner);
            // Dropping the driver detaches (QMP, gdbstub), also when resuming failed.
            drop(target.take());
            resumed
        })?;
        Ok(())
    }

    /// Whether [`close`](Self::close) was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .target
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let os = match &self.inner.os {
            Ok(Os::Linux(l)) => format!(
                "linux {}",
                l.kernel().release.as_deref().unwrap_or("(release unknown)")
            ),
            Ok(_) => "windows".to_owned(),
            Err(_) => "OS not recognised".to_owned(),
        };
        let live = if self.inner.live { "live" } else { "dump" };
        let closed = if self.closed() { ", closed" } else { "" };
        format!(
            "<vmi.Target {} {os} ({live}{closed})>",
            quote(&self.inner.spec)
        )
    }
}

/// `with target.paused(): ...`
#[pyclass(frozen, module = "vmi", name = "Paused")]
pub struct Paused {
    inner: Arc<Inner>,
    resume: AtomicBool,
}

/// Resumes the target if a `paused()` block paused it.
fn resume_if_paused_by_us(target: Option<&Target>, inner: &Inner) -> Result<(), Failure> {
    if inner.paused_by_us.swap(false, Ordering::SeqCst) {
        match target {
            Some(Target::Qemu(core)) => core.resume()?,
            #[cfg(feature = "xen")]
            Some(Target::Xen(core)) => core.resume()?,
            _ => {}
        }
    }
    Ok(())
}

/// Pauses a running VM for a `paused()` block; whether it was running (and so paused).
fn pause_if_running<D: VmiVmControl>(core: &VmiCore<D>) -> Result<bool, Failure> {
    if core.vm_state()? != VmState::Running {
        return Ok(false);
    }
    core.pause()?;
    // What was cached while it ran may be stale.
    core.invalidate_caches();
    Ok(true)
}

#[pymethods]
impl Paused {
    fn __enter__(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        let this = slf.get();
        py.detach(|| -> Result<(), Failure> {
            let target = this
                .inner
                .target
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let paused = match target.as_ref() {
                Some(Target::Qemu(core)) => pause_if_running(core)?,
                #[cfg(feature = "xen")]
                Some(Target::Xen(core)) => pause_if_running(core)?,
                Some(_) => false,
                None => {
                    return Err(Failure::new(
                        Kind::Other,
                        format!("the target {} is closed", this.inner.spec),
                    ));
                }
            };
            if paused {
                this.inner.paused_by_us.store(true, Ordering::SeqCst);
                this.resume.store(true, Ordering::SeqCst);
            }
            Ok(())
        })?;
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        if self.resume.swap(false, Ordering::SeqCst) {
            py.detach(|| {
                let target = self
                    .inner
                    .target
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                resume_if_paused_by_us(target.as_ref(), &self.inner)
            })?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<vmi.Paused {}>", quote(&self.inner.spec))
    }
}
