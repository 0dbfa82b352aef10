//! The guard process: it undoes what the driver did to the VM when the process using the
//! driver dies without cleaning up (`SIGKILL`, the OOM killer, `abort`, a crash).
//!
//! # Why a process
//!
//! QEMU (measured on 7.2) does nothing when a client goes away: the gdbstub keeps the
//! breakpoints and watchpoints of a gdb client that vanished, and the VM stops at the
//! next hit (state `debug`) and waits forever; a VM stopped with QMP `stop` stays
//! `paused` after that QMP client is gone; QMP `cont` alone does not help (the first
//! hit stops the VM again). Only a new gdb client can remove them (`z`, or `D`, which
//! removes all and resumes). Nothing inside the dying process can be relied on for
//! that, so another process does it.
//!
//! # Mechanism
//!
//! At the first action that changes the VM (pause, resume, connecting the gdbstub) the
//! driver makes a `SOCK_SEQPACKET` socket pair and forks twice: the grandchild is the
//! guard (the middle child exits at once and is reaped, so no zombie is left and the
//! guard belongs to init or the nearest subreaper). The guard never `exec`s (a library
//! has no binary of its own to run) and, because the process may have had other threads
//! at the fork, runs only async-signal-safe code: plain system calls on stack buffers
//! and on data prepared before the fork, no allocation, no locks, no panics. It closes
//! every inherited descriptor except its end of the pair (so the VMI process's QMP and
//! gdbstub connections close when that process dies), points stdin and stdout at
//! `/dev/null`, leaves the process group and session (`setsid`: Ctrl-C and
//! `kill -- -PGID` reach only the tool), ignores SIGINT, SIGHUP, SIGQUIT, SIGTERM and
//! SIGPIPE, and blocks in `recv`. It lives exactly as long as the driver's end of the
//! pair (plus its clean-up); only SIGKILL stops it earlier.
//!
//! The driver keeps it informed (one record per message): the gdbstub's address when it
//! connects to one, the socket of a gdbstub it started, each breakpoint or watchpoint
//! before inserting it and after removing it, a thread borrowed by an injection (what to
//! give back, in records of at most 4 KiB, armed by a last record once complete) and its
//! release, and a clean-detach record when dropped
//! (the guard exits). `recv` returning end-of-file without that record means the process
//! is gone, however it died (the kernel closes the descriptors of a dead process); a
//! hand-over record (the driver is done but a borrowed thread is still out) starts the
//! same clean-up at once. The
//! guard then, within a deadline of 2 s per step:
//! 1. connects to the gdbstub (free now: it serves one client). A thread borrowed by an
//!    injection and not yet given back is given back first (module `giveback`: it may
//!    let the VM run until the thread returns from its step). If the VM was running
//!    when the driver attached, it sends `D` (QEMU removes every gdb breakpoint and
//!    watchpoint and resumes the VM); else it removes each journaled one with `z` and
//!    leaves the VM stopped. A packet left half-sent by the dead process is answered
//!    with `-` by QEMU: the guard sends its packet again.
//! 2. connects to the QMP socket the driver used (free now, too), stops a gdbstub the
//!    driver started (HMP `gdbserver none`) and restores the run state found at attach
//!    (`cont` or `stop`);
//! 3. removes the private directory of that gdbstub's socket;
//! 4. says on stderr what it did, and exits.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::QemuError;
use crate::gdb::GdbAddress;

mod giveback;
mod guard;
mod wire;

/// Breakpoints and watchpoints the guard can remember one by one; beyond, it falls back
/// to `D` (removes all, resumes) followed by QMP `stop` for a VM found paused.
const MAX_BPS: usize = 256;
/// Room for a `sun_path` with its NUL.
const PATH_ROOM: usize = 108;
/// The largest record.
const MAX_RECORD: usize = 1 + 128;
/// Per-step deadline of the guard's clean-up.
const STEP_MS: i64 = 2000;

const REC_GDB: u8 = b'G';
const REC_PRIVATE: u8 = b'P';
const REC_INSERT: u8 = b'Z';
const REC_REMOVE: u8 = b'z';
const REC_DETACH: u8 = b'X';
const REC_RETRY: u8 = b'F';
const REC_BORROW: u8 = b'H';
const REC_THREADS: u8 = b'T';
const REC_MEMORY: u8 = b'S';
const REC_ARM: u8 = b'A';
const REC_RELEASE: u8 = b'h';
const REC_HANDOVER: u8 = b'O';

/// Most bytes of a borrowed thread's memory the guard can put back.
pub(crate) const MAX_GIVEBACK_MEMORY: usize = 64 << 10;
/// Room for the gdbstub's vCPU thread ids (each followed by a comma).
const THREADS_ROOM: usize = 8192;
/// Most registers the guard writes back.
pub(crate) const MAX_GIVEBACK_REGS: usize = 32;
/// Guest bytes per memory record.
const MEMORY_RECORD: usize = 4096;
/// The guard's receive buffer: room for the largest record.
const RECV_ROOM: usize = 1 + 4 + MEMORY_RECORD;
/// Length of a [`REC_BORROW`] record.
const BORROW_LEN: usize = 1 + 11 * 8 + 5 * 3 + 1 + MAX_GIVEBACK_REGS * 11;

/// A register as the gdbstub numbers it, and its size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RegSlot {
    pub num: u16,
    pub size: u8,
}

/// What the guard needs to give a borrowed thread back (see `giveback`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Giveback {
    pub stop_ip: u64,
    pub stop_sp: u64,
    pub saved_ip: u64,
    pub saved_sp: u64,
    /// The page-table root, already masked with `root_mask`.
    pub root: u64,
    pub root_mask: u64,
    pub syscall_ip: u64,
    pub exit_nr: u64,
    pub wait_ms: u64,
    pub mem_va: u64,
    pub mem_len: u64,
    pub ip: RegSlot,
    pub sp: RegSlot,
    pub root_reg: RegSlot,
    /// Where a system call's number goes (`rax`).
    pub ret_reg: RegSlot,
    /// Its first argument (`rdi`).
    pub arg0_reg: RegSlot,
    /// Registers to write back, with their values.
    pub regs: [(RegSlot, u64); MAX_GIVEBACK_REGS],
    pub nregs: usize,
}

impl Giveback {
    fn encode(&self) -> [u8; BORROW_LEN] {
        let mut r = [0u8; BORROW_LEN];
        r[0] = REC_BORROW;
        let words = [
            self.stop_ip,
            self.stop_sp,
            self.saved_ip,
            self.saved_sp,
            self.root,
            self.root_mask,
            self.syscall_ip,
            self.exit_nr,
            self.wait_ms,
            self.mem_va,
            self.mem_len,
        ];
        let mut at = 1;
        for w in words {
            r[at..at + 8].copy_from_slice(&w.to_le_bytes());
            at += 8;
        }
        for slot in [self.ip, self.sp, self.root_reg, self.ret_reg, self.arg0_reg] {
            r[at..at + 2].copy_from_slice(&slot.num.to_le_bytes());
            r[at + 2] = slot.size;
            at += 3;
        }
        let n = self.nregs.min(MAX_GIVEBACK_REGS);
        r[at] = n as u8;
        at += 1;
        for (slot, v) in &self.regs[..n] {
            r[at..at + 2].copy_from_slice(&slot.num.to_le_bytes());
            r[at + 2] = slot.size;
            r[at + 3..at + 11].copy_from_slice(&v.to_le_bytes());
            at += 11;
        }
        r
    }

    /// Parses a [`REC_BORROW`] record (async-signal-safe: no allocation, no panics).
    fn decode(rec: &[u8]) -> Option<Giveback> {
        if rec.len() != BORROW_LEN || rec.first() != Some(&REC_BORROW) {
            return None;
        }
        let word = |i: usize| -> u64 {
            let mut b = [0u8; 8];
            for (d, s) in b.iter_mut().zip(rec.get(1 + i * 8..).unwrap_or(&[])) {
                *d = *s;
            }
            u64::from_le_bytes(b)
        };
        let slot_at = |at: usize| -> RegSlot {
            RegSlot {
                num: u16::from_le_bytes([
                    rec.get(at).copied().unwrap_or(0),
                    rec.get(at + 1).copied().unwrap_or(0),
                ]),
                size: rec.get(at + 2).copied().unwrap_or(0).min(8),
            }
        };
        let base = 1 + 11 * 8;
        let mut g = Giveback {
            stop_ip: word(0),
            stop_sp: word(1),
            saved_ip: word(2),
            saved_sp: word(3),
            root: word(4),
            root_mask: word(5),
            syscall_ip: word(6),
            exit_nr: word(7),
            wait_ms: word(8),
            mem_va: word(9),
            mem_len: word(10),
            ip: slot_at(base),
            sp: slot_at(base + 3),
            root_reg: slot_at(base + 6),
            ret_reg: slot_at(base + 9),
            arg0_reg: slot_at(base + 12),
            ..Giveback::default()
        };
        let mut at = base + 15;
        let n = usize::from(*rec.get(at)?);
        if n > MAX_GIVEBACK_REGS {
            return None;
        }
        at += 1;
        for i in 0..n {
            let slot = slot_at(at);
            let mut v = [0u8; 8];
            for (d, s) in v.iter_mut().zip(rec.get(at + 3..at + 11)?) {
                *d = *s;
            }
            *g.regs.get_mut(i)? = (slot, u64::from_le_bytes(v));
            at += 11;
        }
        g.nregs = n;
        Some(g)
    }
}

/// A socket address ready for `connect(2)`: built before the fork, used after it.
#[derive(Clone, Copy)]
pub(crate) struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RawAddr(family {}, {} bytes)",
            self.storage.ss_family, self.len
        )
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: `sockaddr_storage` is a plain C struct of integers and byte arrays, for
    // which all-zero bytes are a valid value (family AF_UNSPEC).
    unsafe { std::mem::zeroed() }
}

impl RawAddr {
    /// A unix socket address; `None` when the path does not fit `sun_path`.
    pub(crate) fn unix(path: &Path) -> Option<RawAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() >= PATH_ROOM || bytes.contains(&0) {
            return None;
        }
        let mut un = libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; PATH_ROOM],
        };
        for (d, s) in un.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        Some(Self::from_struct(&un, len))
    }

    /// The first address of a gdbstub (TCP names are resolved now).
    pub(crate) fn gdb(addr: &GdbAddress) -> Option<RawAddr> {
        match addr {
            GdbAddress::Unix(p) => Self::unix(p),
            GdbAddress::Tcp(a) => {
                use std::net::ToSocketAddrs;
                match a.to_socket_addrs().ok()?.next()? {
                    std::net::SocketAddr::V4(v4) => {
                        let sin = libc::sockaddr_in {
                            sin_family: libc::AF_INET as libc::sa_family_t,
                            sin_port: v4.port().to_be(),
                            sin_addr: libc::in_addr {
                                s_addr: u32::from_ne_bytes(v4.ip().octets()),
                            },
                            sin_zero: [0; 8],
                        };
                        Some(Self::from_struct(&sin, std::mem::size_of_val(&sin)))
                    }
                    std::net::SocketAddr::V6(v6) => {
                        let sin6 = libc::sockaddr_in6 {
                            sin6_family: libc::AF_INET6 as libc::sa_family_t,
                            sin6_port: v6.port().to_be(),
                            sin6_flowinfo: v6.flowinfo(),
                            sin6_addr: libc::in6_addr {
                                s6_addr: v6.ip().octets(),
                            },
                            sin6_scope_id: v6.scope_id(),
                        };
                        Some(Self::from_struct(&sin6, std::mem::size_of_val(&sin6)))
                    }
                }
            }
        }
    }

    fn from_struct<T: Copy>(sa: &T, len: usize) -> RawAddr {
        let mut storage = zeroed_storage();
        let n = len
            .min(std::mem::size_of::<T>())
            .min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `sa` is a live `T` of at least `n` bytes and `storage` a distinct local
        // of at least `n` bytes (both bounded above); `T` is one of the `sockaddr_*`
        // structs, plain bytes, so copying its first `n` bytes is a valid byte copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (sa as *const T).cast::<u8>(),
                (&raw mut storage).cast::<u8>(),
                n,
            );
        }
        RawAddr {
            storage,
            len: n as libc::socklen_t,
        }
    }

    fn bytes(&self) -> &[u8] {
        let n = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is a live, initialised `sockaddr_storage` borrowed for the
        // lifetime of the returned slice, and `n` is at most its size.
        unsafe { std::slice::from_raw_parts((&raw const self.storage).cast::<u8>(), n) }
    }

    fn from_bytes(b: &[u8]) -> Option<RawAddr> {
        if b.len() < 2 || b.len() > std::mem::size_of::<libc::sockaddr_storage>() {
            return None;
        }
        let mut storage = zeroed_storage();
        // SAFETY: `storage` is a local of `size_of::<sockaddr_storage>()` bytes, at least
        // `b.len()` (checked above); `b` is a distinct, live slice; any bytes are a valid
        // `sockaddr_storage`.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), (&raw mut storage).cast::<u8>(), b.len());
        }
        Some(RawAddr {
            storage,
            len: b.len() as libc::socklen_t,
        })
    }
}

/// Room for a [`RawCommand`]'s strings.
const CMD_ROOM: usize = 1024;
/// Most arguments of a [`RawCommand`] (program included).
pub(crate) const MAX_ARGS: usize = 8;

/// A program and its arguments for `execv`, prepared before the fork: NUL-terminated
/// strings one after the other, the program's path first.
#[derive(Clone, Copy)]
pub(crate) struct RawCommand {
    pub(super) buf: [u8; CMD_ROOM],
    pub(super) argc: usize,
}

impl std::fmt::Debug for RawCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawCommand({} arguments)", self.argc)
    }
}

impl RawCommand {
    /// The command `args` (`args[0]` an absolute path); `None` when it does not fit or an
    /// argument holds a NUL byte.
    pub(crate) fn new(args: &[&[u8]]) -> Option<RawCommand> {
        if args.is_empty() || args.len() > MAX_ARGS || !args[0].starts_with(b"/") {
            return None;
        }
        let mut c = RawCommand {
            buf: [0; CMD_ROOM],
            argc: args.len(),
        };
        let mut at = 0usize;
        for a in args {
            if a.contains(&0) {
                return None;
            }
            let end = at.checked_add(a.len())?;
            if end >= CMD_ROOM {
                return None;
            }
            c.buf[at..end].copy_from_slice(a);
            at = end + 1; // the NUL is already there
        }
        Some(c)
    }
}

/// What the guard knows from the start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// The QMP socket the driver uses (`None` for libvirt: its socket is the daemon's,
    /// and the run state is left to `D`, which resumes a VM found running).
    pub qmp: Option<RawAddr>,
    /// Without a QMP socket: the command that resumes a VM found running (libvirt:
    /// `virsh resume NAME`), run once the gdbstub is detached (QEMU pauses the VM when a
    /// gdb client goes away).
    pub resume: Option<RawCommand>,
    /// The VM ran when the driver attached (else it is left stopped).
    pub found_running: bool,
}

/// The driver's side of a running guard.
///
/// Dropping it without [`Watchdog::disarm`] closes the pair: the guard cleans up.
pub(crate) struct Watchdog {
    sock: OwnedFd,
    warned: AtomicBool,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("sock", &self.sock.as_raw_fd())
            .finish()
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Watchdog {
    /// Starts the guard.
    pub(crate) fn spawn(plan: Plan) -> Result<Watchdog, QemuError> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: `fds` is a live array of two `c_int`, which `socketpair` fills on
        // success; no other memory is touched.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(QemuError::io(
                "creating the guard's socket pair",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `socketpair` succeeded: both descriptors are open and owned by nobody
        // else; each is wrapped exactly once.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The memory the guard keeps a borrowed thread's bytes and the vCPU ids in:
        // allocated now, as the guard may not allocate. Only the child's copy is used.
        let mut room = vec![0u8; MAX_GIVEBACK_MEMORY + THREADS_ROOM];
        // SAFETY: `fork` has no memory preconditions. In the child (0) control goes to
        // `middle`, which never returns: it forks again and `_exit`s, and the grandchild
        // runs `guard_main`, which uses only async-signal-safe system calls on its stack,
        // on `plan` (copied into this frame before the fork) and on `room` (allocated
        // before the fork, never freed in the child) and ends in `_exit`;
        // neither touches a lock or the allocator, so a fork of a multi-threaded process
        // is sound. The parent continues below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            guard::middle(
                theirs.as_raw_fd(),
                ours.as_raw_fd(),
                &plan,
                room.as_mut_ptr(),
                room.len(),
            );
        }
        drop(room);
        drop(theirs);
        if pid < 0 {
            return Err(QemuError::io(
                "forking the guard process",
                std::io::Error::last_os_error(),
            ));
        }
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child; `status` is a live local the kernel writes.
            let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
            if r >= 0 || last_errno() != libc::EINTR {
                break;
            }
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(QemuError::io(
                "forking the guard process (second fork)",
                std::io::Error::other(format!("middle process status {status:#x}")),
            ));
        }
        Ok(Watchdog {
            sock: ours,
            warned: AtomicBool::new(false),
        })
    }

    fn send(&self, record: &[u8]) {
        let sock = &self.sock;
        // SAFETY: `sock` is open (owned by `self`, borrowed for the call); `record` is a
        // live slice of `record.len()` bytes that the kernel only reads.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                record.as_ptr().cast(),
                record.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n != record.len() as isize && !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!(
                "vmi-driver-qemu: the guard process is gone ({}): if this process dies \
                 now, the VM may stay stopped or keep breakpoints (recover with \
                 QemuDriver::recover)",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Sends a record, waiting up to a step's deadline for room in the socket.
    fn send_waiting(&self, record: &[u8]) -> bool {
        let fd = self.sock.as_raw_fd();
        let deadline = guard::now_ms().wrapping_add(STEP_MS);
        loop {
            // SAFETY: `fd` is open (owned by `self`); `record` is a live slice the kernel
            // only reads.
            let n = unsafe {
                libc::send(
                    fd,
                    record.as_ptr().cast(),
                    record.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n == record.len() as isize {
                return true;
            }
            let again = n < 0 && matches!(last_errno(), libc::EAGAIN | libc::EINTR);
            if !again || !guard::sys_poll(fd, libc::POLLOUT, deadline) {
                return false;
            }
        }
    }

    /// A thread borrowed from the guest: what to give back if we die (`giveback`),
    /// the original `memory` and the gdbstub's vCPU thread ids.
    pub(crate) fn note_borrowed(
        &self,
        plan: &Giveback,
        memory: &[u8],
        threads: &[String],
    ) -> Result<(), String> {
        if memory.len() > MAX_GIVEBACK_MEMORY || plan.mem_len != memory.len() as u64 {
            return Err(format!(
                "{} bytes to put back; the guard keeps at most {MAX_GIVEBACK_MEMORY}",
                memory.len()
            ));
        }
        let ids: usize = threads.iter().map(|t| t.len() + 1).sum();
        if ids > THREADS_ROOM || threads.iter().any(|t| t.contains(',') || t.len() > 32) {
            return Err(format!(
                "{} vCPU thread ids do not fit the guard",
                threads.len()
            ));
        }
        let mut ok = self.send_waiting(&plan.encode());
        let mut rec = Vec::with_capacity(RECV_ROOM);
        for t in threads {
            if rec.len() + t.len() + 1 > 1024 {
                ok &= self.send_waiting(&rec);
                rec.clear();
            }
            if rec.is_empty() {
                rec.push(REC_THREADS);
            }
            rec.extend_from_slice(t.as_bytes());
            rec.push(b',');
        }
        if !rec.is_empty() {
            ok &= self.send_waiting(&rec);
        }
        for (i, chunk) in memory.chunks(MEMORY_RECORD).enumerate() {
            rec.clear();
            rec.push(REC_MEMORY);
            rec.extend_from_slice(&((i * MEMORY_RECORD) as u32).to_le_bytes());
            rec.extend_from_slice(chunk);
            ok &= self.send_waiting(&rec);
        }
        ok &= self.send_waiting(&[REC_ARM]);
        if ok {
            Ok(())
        } else {
            self.send(&[REC_RELEASE]);
            Err(format!(
                "the guard process did not take the journal ({})",
                std::io::Error::last_os_error()
            ))
        }
    }

    /// The borrowed thread is given back.
    pub(crate) fn note_released(&self) {
        self.send(&[REC_RELEASE]);
    }

    /// The gdbstub in use.
    pub(crate) fn note_gdb(&self, addr: &GdbAddress) {
        match RawAddr::gdb(addr) {
            Some(a) => {
                let mut rec = [0u8; MAX_RECORD];
                rec[0] = REC_GDB;
                let b = a.bytes();
                rec[1..1 + b.len()].copy_from_slice(b);
                self.send(&rec[..1 + b.len()]);
            }
            None => eprintln!(
                "vmi-driver-qemu: the guard cannot reach the gdbstub at {addr}: breakpoints \
                 survive a crash of this process"
            ),
        }
    }

    /// The gdbstub is no longer ours to clean up (the connection failed).
    pub(crate) fn note_gdb_gone(&self) {
        self.send(&[REC_GDB]);
    }

    /// The gdbstub we started is stopped again.
    pub(crate) fn note_private_gone(&self) {
        self.send(&[REC_PRIVATE]);
    }

    /// A gdbstub we started, listening on `socket` inside a private directory.
    pub(crate) fn note_private(&self, socket: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let b = socket.as_os_str().as_bytes();
        if b.len() < PATH_ROOM {
            let mut rec = [0u8; 1 + PATH_ROOM];
            rec[0] = REC_PRIVATE;
            rec[1..1 + b.len()].copy_from_slice(b);
            self.send(&rec[..1 + b.len()]);
        }
    }

    /// A breakpoint or watchpoint about to be inserted (`Z<ztype>,<addr>,<len>`).
    pub(crate) fn note_insert(&self, ztype: u8, addr: u64, len: u64) {
        self.send(&bp_record(REC_INSERT, ztype, addr, len));
    }

    /// A breakpoint or watchpoint removed.
    pub(crate) fn note_remove(&self, ztype: u8, addr: u64, len: u64) {
        self.send(&bp_record(REC_REMOVE, ztype, addr, len));
    }

    /// The driver's own clean-up failed: the guard tries again once the driver is gone.
    pub(crate) fn note_cleanup_failed(&self) {
        self.send(&[REC_RETRY]);
    }

    /// The driver undid everything itself but a borrowed thread that did not come back
    /// (a step stuck in the kernel): the guard gives it back (connecting to the gdbstub,
    /// which the driver left running), then cleans up as after a crash.
    pub(crate) fn hand_over(&self) {
        self.send(&[REC_HANDOVER]);
    }

    /// Clean detach: the driver undid everything itself; the guard exits.
    pub(crate) fn disarm(&self) {
        self.send(&[REC_DETACH]);
    }
}

fn bp_record(tag: u8, ztype: u8, addr: u64, len: u64) -> [u8; 18] {
    let mut r = [0u8; 18];
    r[0] = tag;
    r[1] = ztype;
    r[2..10].copy_from_slice(&addr.to_le_bytes());
    r[10..18].copy_from_slice(&len.to_le_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrow_records_of_any_bytes_do_not_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = Giveback {
            nregs: 3,
            ..Giveback::default()
        }
        .encode();
        for _ in 0..20_000 {
            let mut rec = valid.to_vec();
            for _ in 0..(next() % 8) {
                let i = (next() % rec.len() as u64) as usize;
                rec[i] = next() as u8;
            }
            rec.truncate((next() % (BORROW_LEN as u64 + 8)) as usize);
            if let Some(g) = Giveback::decode(&rec) {
                assert!(g.nregs <= MAX_GIVEBACK_REGS);
                assert!(g.ip.size <= 8 && g.sp.size <= 8);
            }
        }
    }

    #[test]
    fn raw_addresses() {
        assert!(RawAddr::unix(Path::new(&"x".repeat(200))).is_none());
        let t = RawAddr::gdb(&GdbAddress::Tcp("127.0.0.1:1234".into())).unwrap();
        assert_eq!(t.storage.ss_family as i32, libc::AF_INET);
        assert_eq!(t.len as usize, std::mem::size_of::<libc::sockaddr_in>());
    }
}
