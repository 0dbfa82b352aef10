//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, booting or talking to the test guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external program could not be started or failed.
    #[error("command `{command}` failed: {detail}")]
    Command {
        /// The command line (program and arguments).
        command: String,
        /// Exit status and the tail of its output, or why it could not start.
        detail: String,
    },
    /// A required host tool is not installed.
    #[error("required tool `{tool}` not found ({hint})")]
    MissingTool {
        /// The program name.
        tool: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// The kernel package name could not be resolved with apt.
    #[error("cannot resolve kernel package `{spec}`: {detail}")]
    KernelResolve {
        /// The requested kernel (`[suite:]package`).
        spec: String,
        /// Why.
        detail: String,
    },
    /// The kernel image (bzImage) is malformed or uses an unsupported compression.
    #[error("vmlinuz: {0}")]
    Vmlinuz(String),
    /// The configuration is invalid.
    #[error("invalid guest configuration: {0}")]
    Config(String),
    /// The guest's command channel failed (not started, closed, no answer in time).
    #[error("guest command channel: {0}")]
    Ctl(String),
    /// QEMU exited before the guest became ready.
    #[error(
        "qemu exited during boot ({status}); serial log tail:\n{serial_tail}\nqemu log:\n{qemu_log}"
    )]
    QemuExited {
        /// Exit status as text.
        status: String,
        /// Last lines of the serial console.
        serial_tail: String,
        /// QEMU's own stderr/stdout.
        qemu_log: String,
    },
    /// The ready marker did not appear in time.
    #[error("guest not ready after {seconds} s; serial log tail:\n{serial_tail}")]
    BootTimeout {
        /// The timeout that elapsed.
        seconds: u64,
        /// Last lines of the serial console.
        serial_tail: String,
    },
    /// A QMP exchange failed (transport, protocol or an error reply).
    #[error("qmp on {socket}: {detail}")]
    Qmp {
        /// The socket used.
        socket: PathBuf,
        /// What happened (for an error reply: its class and description).
        detail: String,
    },
    /// The ground-truth block is missing or malformed.
    #[error("truth line {line}: {detail}")]
    Truth {
        /// 1-based line number inside the truth block (0: block-level problem).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// `guest.env` is missing a key or is malformed.
    #[error("guest.env {path}: {detail}")]
    GuestEnv {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
