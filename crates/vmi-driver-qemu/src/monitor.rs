//! The driver's monitor: QEMU's QMP socket, or a libvirt domain whose QMP socket libvirt
//! owns (commands passed through libvirt). Everything above speaks QMP and HMP (as
//! `human-monitor-command`) through this one type.

use serde_json::{Value, json};

use crate::error::QemuError;
use crate::libvirt::LibvirtDomain;
use crate::qmp::QmpClient;

/// Where monitor commands go.
#[derive(Debug)]
pub(crate) enum Monitor {
    /// A QMP socket of our own.
    Qmp(QmpClient),
    /// A libvirt domain.
    Libvirt(Box<LibvirtDomain>),
}

impl Monitor {
    /// Runs `command` with optional `arguments`, returns its `return` value.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        match self {
            Monitor::Qmp(q) => q.execute(command, arguments),
            Monitor::Libvirt(d) => d.execute(command, arguments),
        }
    }

    /// Runs an HMP command line, optionally on vCPU `cpu`, returning its text output.
    pub(crate) fn hmp(
        &mut self,
        command_line: &str,
        cpu: Option<u16>,
    ) -> Result<String, QemuError> {
        let mut args = json!({ "command-line": command_line });
        if let Some(cpu) = cpu {
            args["cpu-index"] = json!(cpu);
        }
        let v = self.execute("human-monitor-command", Some(args))?;
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| QemuError::protocol("HMP reply", v.to_string()))
    }

    /// QEMU's pid and uid from the socket's peer credentials (QMP sockets only).
    pub(crate) fn peer_cred(&self) -> Option<(u32, u32)> {
        match self {
            Monitor::Qmp(q) => crate::sys::peer_cred(q.stream()),
            Monitor::Libvirt(_) => None,
        }
    }

    /// Stops the vCPUs: QMP `stop`, or libvirt's suspend (so libvirt knows).
    pub(crate) fn stop(&mut self) -> Result<(), QemuError> {
        match self {
            Monitor::Qmp(q) => q.execute("stop", None).map(drop),
            Monitor::Libvirt(d) => d.suspend(),
        }
    }

    /// Lets the vCPUs run: QMP `cont`, or libvirt's resume. libvirt refuses to resume
    /// a domain it believes runs (QEMU stopped behind its back, e.g. by a gdbstub, is
    /// still "running" to it until QEMU's `STOP` event arrives): then `cont` goes
    /// through the monitor.
    pub(crate) fn cont(&mut self) -> Result<(), QemuError> {
        match self {
            Monitor::Qmp(q) => q.execute("cont", None).map(drop),
            Monitor::Libvirt(d) => match d.resume() {
                Ok(()) => Ok(()),
                Err(e) => match d.execute("cont", None) {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e),
                },
            },
        }
    }
}
