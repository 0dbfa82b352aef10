//! The host side of the guest's command channel ([`crate::GuestConfig::control`]): the
//! guest's second serial port is a UNIX socket (`DIR/ctl.sock`), where `vmi_ctl` reads one
//! request line `ID COMMAND` and answers `VMI_CTL_BEGIN ID`, the command's output and
//! `VMI_CTL_END ID RC`. Tests use it to start workloads at a chosen moment (e.g. once a
//! tracer is armed) and read the truth the workload prints.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// File name of the command channel's socket in the guest directory.
pub const CTL_SOCKET: &str = "ctl.sock";

/// Most bytes of output one command may return.
pub const MAX_OUTPUT: usize = 16 << 20;

/// What a command printed (stdout and stderr, interleaved) and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlOutput {
    /// Exit status of `sh -c COMMAND` in the guest.
    pub rc: i32,
    /// Its output, lines joined by `\n`.
    pub output: String,
}

impl CtlOutput {
    /// The output's lines.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.output.lines()
    }
}

/// Request ids, unique in this process: an answer to a request of an earlier
/// connection (one that timed out) never passes for a newer one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A connection to `vmi_ctl`.
#[derive(Debug)]
pub(crate) struct Ctl {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Ctl {
    /// Connect and wait (up to `timeout`) until `vmi_ctl` answers: it starts after the
    /// ready marker, and what is sent before it reads the port is lost, so the first
    /// exchange is an idempotent ping, repeated until answered.
    pub(crate) fn connect(socket: &Path, timeout: Duration) -> Result<Ctl> {
        let s = UnixStream::connect(socket).map_err(Error::io("connect", socket))?;
        let writer = s.try_clone().map_err(Error::io("dup", socket))?;
        let mut ctl = Ctl {
            reader: BufReader::new(s),
            writer,
        };
        let deadline = Instant::now() + timeout;
        loop {
            match ctl.request("echo pong", Duration::from_secs(2)) {
                Ok(out) if out.output.trim() == "pong" => return Ok(ctl),
                Ok(_) | Err(Error::Ctl(_)) if Instant::now() < deadline => {}
                Ok(out) => {
                    return Err(Error::Ctl(format!(
                        "vmi_ctl answered the ping with {:?}",
                        out.output
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Run `command` in the guest, waiting up to `timeout` for it to finish.
    pub(crate) fn request(&mut self, command: &str, timeout: Duration) -> Result<CtlOutput> {
        if command.contains('\n') || command.contains('\r') {
            return Err(Error::Config("a guest command is one line".into()));
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.writer
            .write_all(format!("{id} {command}\n").as_bytes())
            .map_err(|e| Error::Ctl(format!("send: {e}")))?;
        let deadline = Instant::now() + timeout;
        let begin = format!("VMI_CTL_BEGIN {id}");
        let end = format!("VMI_CTL_END {id} ");
        let mut started = false;
        let mut output = String::new();
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Ctl(format!(
                    "`{command}`: no answer within {} s{}",
                    timeout.as_secs_f32(),
                    if started { " (started)" } else { "" }
                )));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| Error::Ctl(format!("timeout: {e}")))?;
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return Err(Error::Ctl("the channel closed".into())),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // What came of a partial line stays in `line`: read on.
                    continue;
                }
                Err(e) => return Err(Error::Ctl(format!("receive: {e}"))),
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            let text = text.trim_end_matches(['\n', '\r']);
            if !started {
                started = text == begin;
                continue;
            }
            if let Some(rc) = text.strip_prefix(&end) {
                let rc = rc
                    .trim()
                    .parse()
                    .map_err(|_| Error::Ctl(format!("bad end line `{text}`")))?;
                return Ok(CtlOutput { rc, output });
            }
            if output.len() + text.len() > MAX_OUTPUT {
                return Err(Error::Ctl(format!(
                    "`{command}` printed more than {MAX_OUTPUT} bytes"
                )));
            }
            output.push_str(text);
            output.push('\n');
        }
    }
}

/// Run `command` in the guest whose directory is `dir` (booted with
/// [`crate::GuestConfig::control`], e.g. by `cargo xtask guest up --control`), over a
/// connection of its own; for tools outside the process that booted the guest.
pub fn run_in(dir: &Path, command: &str, timeout: Duration) -> Result<CtlOutput> {
    Ctl::connect(&dir.join(CTL_SOCKET), timeout)?.request(command, timeout)
}
