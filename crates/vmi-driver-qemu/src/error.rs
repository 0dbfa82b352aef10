//! The driver's error type; converts into [`VmiError::Driver`] with itself as the source.

use std::path::PathBuf;

use vmi_core::VmiError;

/// What went wrong talking to QEMU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// The socket path does not exist.
    #[error("socket {path} does not exist (is QEMU running with this -qmp/-gdb path?)")]
    SocketMissing {
        /// The path.
        path: PathBuf,
    },

    /// The socket exists but nothing accepts connections (QEMU exited and left it behind).
    #[error("nothing listens on {path} (QEMU gone?)")]
    SocketRefused {
        /// The path.
        path: PathBuf,
    },

    /// The connection was accepted by the kernel but QEMU never greeted us: QMP and the
    /// gdbstub serve one client per socket.
    #[error("busy: another client holds this {what} socket ({path})")]
    SocketBusy {
        /// `"QMP"` or `"gdbstub"`.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },

    /// QEMU closed the connection (it exited or dropped us).
    #[error("QEMU closed the {what} connection (QEMU gone?)")]
    Disconnected {
        /// `"QMP"` or `"gdbstub"`.
        what: &'static str,
    },

    /// QEMU did not answer in time.
    #[error("no answer from QEMU's {what} within {millis} ms to {request}")]
    Timeout {
        /// `"QMP"` or `"gdbstub"`.
        what: &'static str,
        /// The request.
        request: String,
        /// The timeout.
        millis: u128,
    },

    /// A QMP command failed.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },

    /// A gdbstub request was refused (`E..` or empty reply).
    #[error("gdbstub refused {request}: {reply:?}")]
    GdbRefused {
        /// The request.
        request: String,
        /// The reply (`""` means "not supported").
        reply: String,
    },

    /// QEMU sent something we cannot parse.
    #[error("unexpected {what} from QEMU: {detail}")]
    Protocol {
        /// Which protocol or command output.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },

    /// The guest is not x86-64.
    #[error("guest architecture is {arch}, this driver supports x86_64 only")]
    WrongArchitecture {
        /// What `query-target` said.
        arch: String,
    },

    /// No guest RAM was found in the memory map.
    #[error("no guest RAM found: {0}")]
    NoRam(String),

    /// A write on a read-only attach (the default).
    #[error(
        "{operation} needs a writable attach: this one is read-only \
         (attach with AttachOptions::writable(true))"
    )]
    ReadOnly {
        /// What was refused.
        operation: &'static str,
    },

    /// The gdbstub is not available (taken, disabled or failed to start).
    #[error("gdbstub unavailable: {0}")]
    GdbUnavailable(String),

    /// libvirt's client library could not be loaded (a `libvirt:` target on a host
    /// without libvirt).
    #[error("libvirt is not available: {0}")]
    LibvirtUnavailable(String),

    /// A libvirt call failed.
    #[error("libvirt: {operation}: {message}")]
    Libvirt {
        /// What was being done.
        operation: String,
        /// libvirt's message.
        message: String,
    },

    /// I/O failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl QemuError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn protocol(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Protocol {
            what,
            detail: detail.into(),
        }
    }
}

impl From<QemuError> for VmiError {
    fn from(e: QemuError) -> Self {
        VmiError::Driver {
            driver: "qemu",
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}
