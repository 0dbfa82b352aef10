//! A libvirt domain as the driver's monitor: QMP commands passed through libvirt
//! (`virDomainQemuMonitorCommand`), pause and resume through libvirt's own
//! `virDomainSuspend`/`virDomainResume`, so that libvirt's idea of the domain stays right.
//!
//! # Why the library is loaded at run time
//!
//! libvirt owns the QMP socket of each domain it runs, so we have to go through it. The
//! candidates were: the `virt` crate (libvirt's own Rust bindings, with
//! `qemu_monitor_command` behind its `qemu` feature), spawning `virsh` per command
//! (35 ms a command here, one daemon connection each), or the ten C functions we need
//! loaded with `dlopen` from `libvirt.so.0` and `libvirt-qemu.so.0` (the runtime
//! library, `libvirt0`, which `libvirt-clients` and the daemon bring). `virt` 0.5 pins
//! `libc = "=0.2.183"` (it would move the whole workspace back from 0.2.191), is
//! LGPL-2.1 Rust code compiled into our binaries, and needs `libvirt-dev` and
//! `pkg-config` at build time, hence a cargo feature and two kinds of builds. Loading the
//! library when a `libvirt:` target is opened needs nothing at build time: every build
//! has libvirt targets, and a host without libvirt gets a typed error
//! ([`QemuError::LibvirtUnavailable`]) when one is opened. One connection is kept for the
//! whole attach: a command costs a daemon round trip (well under a millisecond of our
//! time), not a process.
//!
//! libvirt's connections and domain objects are thread-safe (libvirt's "thread safety"
//! guarantee for `virConnectPtr` since 0.6); the driver still uses them under its
//! monitor lock, one call at a time.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::ptr::NonNull;

use libloading::Library;
use serde_json::{Value, json};

use crate::error::QemuError;

type ConnectOpen = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type ConnectClose = unsafe extern "C" fn(*mut c_void) -> c_int;
type LookupByName = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;
type DomainOp = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetState = unsafe extern "C" fn(*mut c_void, *mut c_int, *mut c_int, c_uint) -> c_int;
type MonitorCommand =
    unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_char, c_uint) -> c_int;
type LastErrorMessage = unsafe extern "C" fn() -> *const c_char;
type ErrorFunc = unsafe extern "C" fn(*mut c_void, *mut c_void);
type SetErrorFunc = unsafe extern "C" fn(*mut c_void, Option<ErrorFunc>);

/// libvirt's error handler that prints nothing: errors reach the caller as values
/// (`virGetLastErrorMessage`), not as lines on our stderr.
unsafe extern "C" fn silent(_user: *mut c_void, _error: *mut c_void) {}

/// The functions we use, copied out of the loaded libraries (valid while they stay
/// loaded: [`LibvirtDomain`] keeps both).
struct Api {
    connect_close: ConnectClose,
    domain_free: DomainOp,
    suspend: DomainOp,
    resume: DomainOp,
    get_state: GetState,
    monitor_command: MonitorCommand,
    last_error: LastErrorMessage,
}

/// A domain of a libvirt connection, open for monitor commands.
pub(crate) struct LibvirtDomain {
    api: Api,
    conn: NonNull<c_void>,
    dom: NonNull<c_void>,
    name: String,
    uri: Option<String>,
    // Declared last: unloaded after `drop` has used the functions.
    _qemu_lib: Library,
    _lib: Library,
}

impl std::fmt::Debug for LibvirtDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtDomain")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .finish()
    }
}

// SAFETY: libvirt connection and domain objects may be used from any thread (libvirt
// guarantees thread safety for `virConnectPtr` and the objects made from it since 0.6.0);
// the function pointers are plain code addresses, the libraries stay loaded as long as
// the value lives. The driver uses the value under a mutex, never concurrently.
unsafe impl Send for LibvirtDomain {}

fn load(name: &str) -> Result<Library, QemuError> {
    // SAFETY: loading runs the library's initialisers. libvirt's are its own
    // (thread-local keys, a one-time global init), with no preconditions on the caller;
    // the library is the system's libvirt runtime, as trusted as the daemon we talk to.
    unsafe { Library::new(name) }.map_err(|e| {
        QemuError::LibvirtUnavailable(format!(
            "{name}: {e} (install libvirt's client library: apt-get install libvirt-clients)"
        ))
    })
}

/// Copies a function pointer of type `T` named `symbol` out of `lib`.
fn symbol<T: Copy>(lib: &Library, symbol: &str) -> Result<T, QemuError> {
    let mut name = symbol.as_bytes().to_vec();
    name.push(0);
    // SAFETY: every `T` this is called with is the `unsafe extern "C" fn` type matching
    // the C prototype of `symbol` in libvirt's headers (libvirt-host.h, libvirt-domain.h,
    // libvirt-qemu.h, virterror.h; stable ABI since the versions noted at each call).
    // The pointer is used only while `lib` stays loaded (see `LibvirtDomain`).
    unsafe { lib.get::<T>(&name) }
        .map(|s| *s)
        .map_err(|e| QemuError::LibvirtUnavailable(format!("{symbol}: {e}")))
}

fn c_string(what: &str, s: &str) -> Result<CString, QemuError> {
    CString::new(s).map_err(|_| QemuError::Libvirt {
        operation: format!("passing {what}"),
        message: format!("{s:?} contains a NUL byte"),
    })
}

impl LibvirtDomain {
    /// Connects to libvirt at `uri` (`None`: libvirt's default, `LIBVIRT_DEFAULT_URI` or
    /// `qemu:///system` for root) and looks up the domain called `name`.
    pub(crate) fn open(uri: Option<&str>, name: &str) -> Result<LibvirtDomain, QemuError> {
        let lib = load("libvirt.so.0")?;
        let qemu_lib = load("libvirt-qemu.so.0")?;
        // virConnectOpen 0.0.3, virConnectClose 0.0.3, virDomainLookupByName 0.1.0,
        // virDomainFree 0.0.3, virDomainSuspend/Resume 0.0.3, virGetLastErrorMessage
        // 1.0.6, virSetErrorFunc 0.1.0, virDomainGetState 0.9.2,
        // virDomainQemuMonitorCommand 0.8.3.
        let connect_open: ConnectOpen = symbol(&lib, "virConnectOpen")?;
        let lookup: LookupByName = symbol(&lib, "virDomainLookupByName")?;
        let set_error_func: SetErrorFunc = symbol(&lib, "virSetErrorFunc")?;
        let api = Api {
            connect_close: symbol(&lib, "virConnectClose")?,
            domain_free: symbol(&lib, "virDomainFree")?,
            suspend: symbol(&lib, "virDomainSuspend")?,
            resume: symbol(&lib, "virDomainResume")?,
            get_state: symbol(&lib, "virDomainGetState")?,
            monitor_command: symbol(&qemu_lib, "virDomainQemuMonitorCommand")?,
            last_error: symbol(&lib, "virGetLastErrorMessage")?,
        };
        // SAFETY: `virSetErrorFunc(void *userData, virErrorFunc handler)`: a null user
        // pointer (never dereferenced by `silent`) and a handler with the C signature
        // `void (*)(void *, virErrorPtr)` that touches neither argument.
        unsafe { set_error_func(std::ptr::null_mut(), Some(silent)) };
        let uri_c = uri.map(|u| c_string("the libvirt URI", u)).transpose()?;
        let name_c = c_string("the domain name", name)?;
        let where_ = uri.unwrap_or("libvirt's default URI");
        // SAFETY: `virConnectOpen(const char *name)`: a NUL-terminated string that
        // outlives the call, or null for the default URI. Returns an owned connection or
        // null.
        let conn = unsafe { connect_open(uri_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())) };
        let Some(conn) = NonNull::new(conn) else {
            return Err(QemuError::Libvirt {
                operation: format!("connecting to {where_}"),
                message: last_error(&api),
            });
        };
        // SAFETY: `virDomainLookupByName(virConnectPtr, const char *)`: the live
        // connection just opened and a NUL-terminated name that outlives the call.
        // Returns an owned domain reference or null.
        let dom = unsafe { lookup(conn.as_ptr(), name_c.as_ptr()) };
        let Some(dom) = NonNull::new(dom) else {
            let message = last_error(&api);
            // SAFETY: the connection is live and ours, closed once, not used after.
            unsafe { (api.connect_close)(conn.as_ptr()) };
            return Err(QemuError::Libvirt {
                operation: format!("looking up domain {name} at {where_}"),
                message,
            });
        };
        Ok(LibvirtDomain {
            api,
            conn,
            dom,
            name: name.to_owned(),
            uri: uri.map(str::to_owned),
            _qemu_lib: qemu_lib,
            _lib: lib,
        })
    }

    /// The domain's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The libvirt URI (`None`: libvirt's default).
    pub(crate) fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// Runs a QMP command through libvirt (`virDomainQemuMonitorCommand`, which marks
    /// the domain "tainted: custom-monitor" in libvirt's log) and returns its `return`.
    /// The command carries no `id`: libvirt adds its own.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QemuError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let text = c_string("a QMP command", &msg.to_string())?;
        let mut result: *mut c_char = std::ptr::null_mut();
        // SAFETY: `virDomainQemuMonitorCommand(virDomainPtr, const char *cmd, char
        // **result, unsigned int flags)`: our live domain reference, a NUL-terminated
        // command that outlives the call, a valid out-pointer, flags 0 (QMP). On success
        // `*result` is a NUL-terminated string allocated with malloc, ours to free.
        let rc =
            unsafe { (self.api.monitor_command)(self.dom.as_ptr(), text.as_ptr(), &mut result, 0) };
        if rc < 0 || result.is_null() {
            return Err(QemuError::Libvirt {
                operation: format!("QMP {command} on domain {}", self.name),
                message: last_error(&self.api),
            });
        }
        // SAFETY: `result` is non-null and NUL-terminated (see above); it is read once
        // here, then freed once with the allocator libvirt used (`free`), never used after.
        let reply = unsafe {
            let s = CStr::from_ptr(result).to_string_lossy().into_owned();
            libc::free(result.cast());
            s
        };
        let reply: Value = serde_json::from_str(&reply).map_err(|e| {
            QemuError::protocol("QMP reply through libvirt", format!("{e}: {reply}"))
        })?;
        if let Some(err) = reply.get("error") {
            return Err(QemuError::Command {
                command: command.to_string(),
                class: err["class"].as_str().unwrap_or("?").to_string(),
                desc: err["desc"].as_str().unwrap_or("?").to_string(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Pauses the domain through libvirt (`virDomainSuspend`).
    pub(crate) fn suspend(&mut self) -> Result<(), QemuError> {
        self.domain_op(self.api.suspend, "suspending")
    }

    /// Resumes the domain through libvirt (`virDomainResume`).
    pub(crate) fn resume(&mut self) -> Result<(), QemuError> {
        self.domain_op(self.api.resume, "resuming")
    }

    /// libvirt's own idea of the domain's state, without a trip to QEMU (a fifth of the
    /// time of a monitor command): whether it runs, and whether it is paused because a
    /// client suspended it through libvirt (libvirt's `VIR_DOMAIN_PAUSED_USER`, set when
    /// the suspend returns). `None` for any other state, which only QEMU can tell
    /// precisely.
    pub(crate) fn quick_state(&mut self) -> Result<Option<bool>, QemuError> {
        const RUNNING: c_int = 1;
        const PAUSED: c_int = 3;
        const PAUSED_USER: c_int = 1;
        let (mut state, mut reason): (c_int, c_int) = (0, 0);
        // SAFETY: `virDomainGetState(virDomainPtr, int *state, int *reason, unsigned int
        // flags)`: our live domain reference, two valid out-pointers, flags 0.
        let rc = unsafe { (self.api.get_state)(self.dom.as_ptr(), &mut state, &mut reason, 0) };
        if rc < 0 {
            return Err(QemuError::Libvirt {
                operation: format!("state of domain {}", self.name),
                message: last_error(&self.api),
            });
        }
        Ok(match (state, reason) {
            (RUNNING, _) => Some(true),
            (PAUSED, PAUSED_USER) => Some(false),
            _ => None,
        })
    }

    fn domain_op(&mut self, op: DomainOp, what: &str) -> Result<(), QemuError> {
        // SAFETY: `virDomainSuspend`/`virDomainResume(virDomainPtr)`: our live domain
        // reference; no other argument.
        if unsafe { op(self.dom.as_ptr()) } < 0 {
            return Err(QemuError::Libvirt {
                operation: format!("{what} domain {}", self.name),
                message: last_error(&self.api),
            });
        }
        Ok(())
    }
}

/// libvirt's last error of this thread, as text.
fn last_error(api: &Api) -> String {
    // SAFETY: `virGetLastErrorMessage(void)` returns a pointer to a NUL-terminated
    // thread-local string owned by libvirt (never null: "no error" when there is none),
    // valid until the next libvirt call on this thread; it is copied at once.
    unsafe {
        let p = (api.last_error)();
        if p.is_null() {
            return "unknown libvirt error".into();
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

impl Drop for LibvirtDomain {
    fn drop(&mut self) {
        // SAFETY: the domain reference and the connection are ours, live, and released
        // exactly once here (domain first: it holds a reference on the connection).
        unsafe {
            (self.api.domain_free)(self.dom.as_ptr());
            (self.api.connect_close)(self.conn.as_ptr());
        }
    }
}
