//! A small QMP client: greeting, `qmp_capabilities`, id-tagged commands, asynchronous
//! events skipped, every read bounded by a timeout.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::QemuError;

/// Most events of an earlier connection skipped before the greeting.
const MAX_STALE_EVENTS: usize = 64;

/// Longest line we accept from QEMU (`info mtree` of big machines is well below).
const MAX_LINE: usize = 64 << 20;

/// One QMP connection.
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    timeout: Duration,
    broken: bool,
}

/// Connects to a unix socket, mapping the usual failures to clear errors.
pub(crate) fn connect_unix(path: &Path) -> Result<UnixStream, QemuError> {
    UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => QemuError::SocketMissing {
            path: path.to_path_buf(),
        },
        ErrorKind::ConnectionRefused => QemuError::SocketRefused {
            path: path.to_path_buf(),
        },
        _ => QemuError::io(format!("connecting to {}", path.display()), e),
    })
}

impl QmpClient {
    /// Connects, reads the greeting (within `greeting_timeout`, else the socket is busy)
    /// and negotiates capabilities. Commands then time out after `timeout`.
    pub fn connect(
        path: &Path,
        greeting_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, QemuError> {
        let stream = connect_unix(path)?;
        let mut c = QmpClient {
            stream,
            buf: Vec::new(),
            next_id: 1,
            timeout,
            broken: false,
        };
        let deadline = Instant::now() + greeting_timeout;
        // QEMU keeps a monitor's unsent output across connections: an event meant for
        // the previous client (e.g. the RESUME after its `cont`) may come before our
        // greeting. A bounded number of them is skipped.
        let mut greeting = Value::Null;
        for _ in 0..MAX_STALE_EVENTS {
            greeting = match c.read_message(deadline) {
                Ok(v) => v,
                Err(QemuError::Timeout { .. }) => {
                    return Err(QemuError::SocketBusy {
                        what: "QMP",
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(e),
            };
            if greeting.get("event").is_none() {
                break;
            }
        }
        if greeting.get("QMP").is_none() {
            return Err(QemuError::protocol(
                "QMP greeting",
                format!("{greeting} (is {} a QMP socket?)", path.display()),
            ));
        }
        c.execute("qmp_capabilities", None)?;
        Ok(c)
    }

    /// The stream, for its peer credentials.
    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Runs `command` with optional `arguments`, returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QemuError> {
        if self.broken {
            return Err(QemuError::Disconnected { what: "QMP" });
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        if let Err(e) = self.stream.write_all(line.as_bytes()) {
            self.broken = true;
            return Err(match e.kind() {
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                    QemuError::Disconnected { what: "QMP" }
                }
                _ => QemuError::io(format!("sending QMP {command}"), e),
            });
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let reply = match self.read_message(deadline) {
                Ok(r) => r,
                Err(QemuError::Timeout { millis, .. }) => {
                    return Err(QemuError::Timeout {
                        what: "QMP",
                        request: command.to_string(),
                        millis,
                    });
                }
                Err(e) => return Err(e),
            };
            if reply.get("event").is_some() {
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                // A late answer to a request that timed out earlier.
                continue;
            }
            if let Some(err) = reply.get("error") {
                return Err(QemuError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("?").to_string(),
                    desc: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Reads one JSON message (one line), waiting until `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, QemuError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                return serde_json::from_str(text)
                    .map_err(|e| QemuError::protocol("QMP message", format!("{e}: {text}")));
            }
            if self.buf.len() > MAX_LINE {
                self.broken = true;
                return Err(QemuError::protocol("QMP message", "line too long"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QemuError::Timeout {
                    what: "QMP",
                    request: String::new(),
                    millis: 0,
                });
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| QemuError::io("setting QMP read timeout", e))?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.broken = true;
                    return Err(QemuError::Disconnected { what: "QMP" });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let millis = self.timeout.as_millis();
                    if Instant::now() >= deadline {
                        return Err(QemuError::Timeout {
                            what: "QMP",
                            request: String::new(),
                            millis,
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(match e.kind() {
                        ErrorKind::ConnectionReset => QemuError::Disconnected { what: "QMP" },
                        _ => QemuError::io("reading from QMP", e),
                    });
                }
            }
        }
    }
}
