//! A minimal QMP client: one connection per call (QEMU serves one client per socket at a
//! time), capabilities negotiation, asynchronous events skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Longest accepted reply line (a bound; `info mtree` and friends are far smaller).
const MAX_LINE: u64 = 64 << 20;

struct Conn<'a> {
    socket: &'a Path,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn<'_> {
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::Qmp {
            socket: self.socket.to_path_buf(),
            detail: detail.into(),
        }
    }

    fn read_msg(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = std::io::Read::take(&mut self.reader, MAX_LINE)
            .read_line(&mut line)
            .map_err(|e| self.err(format!("read: {e}")))?;
        if n == 0 {
            return Err(self.err("connection closed"));
        }
        serde_json::from_str(&line)
            .map_err(|e| self.err(format!("bad json `{}`: {e}", line.trim())))
    }

    fn call(&mut self, cmd: &Value) -> Result<Value> {
        let mut text = cmd.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| self.err(format!("write: {e}")))?;
        loop {
            let msg = self.read_msg()?;
            if msg.get("event").is_some() {
                continue;
            }
            if let Some(e) = msg.get("error") {
                return Err(self.err(format!("error reply to {cmd}: {e}")));
            }
            return Ok(msg.get("return").cloned().unwrap_or(Value::Null));
        }
    }
}

/// Connect to a QMP socket, negotiate capabilities and run `commands` in order, returning
/// each `return` value. An `error` reply is an [`Error::Qmp`].
pub fn execute(socket: &Path, commands: &[Value], timeout: Duration) -> Result<Vec<Value>> {
    let qerr = |d: String| Error::Qmp {
        socket: socket.to_path_buf(),
        detail: d,
    };
    let stream = UnixStream::connect(socket).map_err(|e| qerr(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| qerr(e.to_string()))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| qerr(e.to_string()))?;
    let writer = stream.try_clone().map_err(|e| qerr(e.to_string()))?;
    let mut c = Conn {
        socket,
        reader: BufReader::new(stream),
        writer,
    };
    // QEMU keeps a monitor's unsent output across connections: an event meant for the
    // previous client (the RESUME after its `cont`) may come before our greeting.
    let mut greeting = c.read_msg()?;
    for _ in 0..64 {
        if greeting.get("event").is_none() {
            break;
        }
        greeting = c.read_msg()?;
    }
    if greeting.get("QMP").is_none() {
        return Err(c.err(format!("unexpected greeting {greeting}")));
    }
    c.call(&json!({"execute": "qmp_capabilities"}))?;
    commands.iter().map(|cmd| c.call(cmd)).collect()
}

/// Run one QMP command.
pub fn command(socket: &Path, cmd: &Value, timeout: Duration) -> Result<Value> {
    let mut v = execute(socket, std::slice::from_ref(cmd), timeout)?;
    Ok(v.pop().unwrap_or(Value::Null))
}

/// Run one HMP command through `human-monitor-command` and return its text output.
pub fn hmp(socket: &Path, command_line: &str, timeout: Duration) -> Result<String> {
    let v = command(
        socket,
        &json!({"execute": "human-monitor-command", "arguments": {"command-line": command_line}}),
        timeout,
    )?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}
