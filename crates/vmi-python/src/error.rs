//! Errors as Python exceptions, with the message the `vmi` command prints.
//!
//! The command prints `error: WHAT: ROOT CAUSE` (what failed and, when the error has a
//! cause, the innermost one); an exception's message is the same text without `error: `.
//! The kind of failure picks the exception class, all under `vmi.VmiError`.

use pyo3::exceptions::{PyException, PyUserWarning};
use pyo3::prelude::*;

pyo3::create_exception!(
    vmi,
    VmiError,
    PyException,
    "Every error of the vmi package (the message is the one the vmi command prints)."
);
pyo3::create_exception!(
    vmi,
    TargetError,
    VmiError,
    "The target cannot be opened, or its OS was not recognised."
);
pyo3::create_exception!(
    vmi,
    NotSupportedError,
    VmiError,
    "The target, driver or OS layer does not support the operation (xen:, a dump's pause...)."
);
pyo3::create_exception!(
    vmi,
    NotFoundError,
    VmiError,
    "A process, symbol, type or field does not exist."
);
pyo3::create_exception!(
    vmi,
    ReadError,
    VmiError,
    "Guest memory cannot be read: a page fault, a page absent from the dump."
);
pyo3::create_exception!(
    vmi,
    IncompleteWarning,
    PyUserWarning,
    "Some objects of a listing could not be read (the listing holds every other one)."
);

/// Which exception class a failure raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `vmi.VmiError`.
    Other,
    /// `vmi.TargetError`.
    Target,
    /// `vmi.NotSupportedError`.
    NotSupported,
    /// `vmi.NotFoundError`.
    NotFound,
    /// `vmi.ReadError`.
    Read,
}

/// A failure, made without the GIL and raised with it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) message: String,
}

impl Failure {
    /// A failure with this message.
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// `context: root cause of e`, as the command prints an error with context.
    pub(crate) fn vmi(context: impl Into<String>, e: &vmi_core::VmiError) -> Self {
        Self::new(kind_of(e), format!("{}: {}", context.into(), root_cause(e)))
    }

    /// A framework error without context: its text, and its root cause if it has one.
    pub(crate) fn bare(e: &vmi_core::VmiError) -> Self {
        Self::new(kind_of(e), cli_message(e))
    }

    /// A target failure.
    pub(crate) fn target(e: &vmi_target::TargetError) -> Self {
        let kind = match e {
            vmi_target::TargetError::Vmi(v) if kind_of(v) == Kind::NotSupported => {
                Kind::NotSupported
            }
            _ => Kind::Target,
        };
        Self::new(kind, cli_message(e))
    }
}

impl From<vmi_core::VmiError> for Failure {
    fn from(e: vmi_core::VmiError) -> Self {
        Self::bare(&e)
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> Self {
        match f.kind {
            Kind::Other => VmiError::new_err(f.message),
            Kind::Target => TargetError::new_err(f.message),
            Kind::NotSupported => NotSupportedError::new_err(f.message),
            Kind::NotFound => NotFoundError::new_err(f.message),
            Kind::Read => ReadError::new_err(f.message),
        }
    }
}

/// The exception class of a framework error.
fn kind_of(e: &vmi_core::VmiError) -> Kind {
    match e {
        vmi_core::VmiError::NotSupported { .. } => Kind::NotSupported,
        vmi_core::VmiError::NotFound { .. } => Kind::NotFound,
        e if e.is_memory_unavailable() => Kind::Read,
        vmi_core::VmiError::PartialAccess { .. } => Kind::Read,
        _ => Kind::Other,
    }
}

/// The innermost cause of `e` (itself when it has none).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(s) = e.source() {
        e = s;
    }
    e.to_string()
}

/// `what: root cause`, or `what` when the error has no cause: the command's one line.
pub(crate) fn cli_message(e: &(dyn std::error::Error + 'static)) -> String {
    match e.source() {
        Some(_) => format!("{e}: {}", root_cause(e)),
        None => e.to_string(),
    }
}

/// Warns (`vmi.IncompleteWarning`) about each object a listing skipped, with the warning
/// text of the command.
pub(crate) fn warn_skipped(
    py: Python<'_>,
    what: &str,
    skipped: &[(vmi_core::Va, vmi_core::VmiError)],
) -> PyResult<()> {
    for (va, e) in skipped {
        warn(py, &format!("skipped the {what} at {va}: {e}"))?;
    }
    Ok(())
}

/// Issues one `vmi.IncompleteWarning`.
pub(crate) fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    let category = py.get_type::<IncompleteWarning>();
    let text = std::ffi::CString::new(message.replace('\0', "\\0"))
        .map_err(|e| VmiError::new_err(e.to_string()))?;
    PyErr::warn(py, &category, &text, 1)
}

/// `s` quoted as Python's `repr` of a `str` quotes it (for `__repr__`s).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
