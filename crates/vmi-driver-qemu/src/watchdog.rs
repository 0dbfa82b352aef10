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
//! before inserting it and after removing it, and a clean-detach record when dropped
//! (the guard exits). `recv` returning end-of-file without that record means the process
//! is gone, however it died (the kernel closes the descriptors of a dead process). The
//! guard then, within a deadline of 2 s per step:
//! 1. connects to the gdbstub (free now: it serves one client). If the VM was running
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

/// What the guard knows from the start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// The QMP socket the driver uses.
    pub qmp: RawAddr,
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
        // SAFETY: `fork` has no memory preconditions. In the child (0) control goes to
        // `middle`, which never returns: it forks again and `_exit`s, and the grandchild
        // runs `guard_main`, which uses only async-signal-safe system calls on its stack
        // and on `plan` (copied into this frame before the fork) and ends in `_exit`;
        // neither touches a lock or the allocator, so a fork of a multi-threaded process
        // is sound. The parent continues below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            middle(theirs.as_raw_fd(), ours.as_raw_fd(), &plan);
        }
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

// ---------------------------------------------------------------------------------------
// Everything below runs after `fork` and must stay async-signal-safe: no allocation, no
// locks, no formatting machinery, no panics (indexing only where the bound is evident,
// `get` elsewhere, wrapping arithmetic).

fn sys_exit(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once without running destructors or atexit
    // handlers, which is what a forked child of a multi-threaded process must do.
    unsafe { libc::_exit(code) }
}

fn sys_close(fd: RawFd) {
    // SAFETY: closing a descriptor number touches no memory; descriptors in the guard are
    // owned by no Rust object that could use them later (the guard never returns).
    unsafe {
        libc::close(fd);
    }
}

fn sys_write(fd: RawFd, b: &[u8]) -> isize {
    // SAFETY: `b` is a live slice of `b.len()` bytes, only read by the kernel.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) }
}

fn sys_read(fd: RawFd, b: &mut [u8]) -> isize {
    // SAFETY: `b` is a live, exclusive slice of `b.len()` bytes the kernel may fill.
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) }
}

fn now_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live local the kernel writes; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    ts.tv_sec
        .wrapping_mul(1000)
        .wrapping_add(ts.tv_nsec / 1_000_000)
}

/// Waits for `events` on `fd` until `deadline`; `false` on timeout or error.
fn sys_poll(fd: RawFd, events: i16, deadline: i64) -> bool {
    loop {
        let left = deadline.wrapping_sub(now_ms());
        if left <= 0 {
            return false;
        }
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `p` is one live `pollfd`, as the count of 1 says.
        let r = unsafe { libc::poll(&raw mut p, 1, left.min(i32::MAX as i64) as i32) };
        if r > 0 {
            return true;
        }
        if r < 0 && last_errno() != libc::EINTR {
            return false;
        }
    }
}

fn sleep_ms(ms: i32) {
    // SAFETY: a poll on no descriptors is a sleep; the null pointer is allowed with 0.
    unsafe {
        libc::poll(std::ptr::null_mut(), 0, ms);
    }
}

/// The middle child: detach from the session, fork the guard, exit.
fn middle(theirs: RawFd, ours: RawFd, plan: &Plan) -> ! {
    sys_close(ours);
    // SAFETY: `setsid` and `fork` take no pointers. The grandchild continues in
    // `guard_main` (async-signal-safe, never returns); this process exits at once.
    let pid = unsafe {
        libc::setsid();
        libc::fork()
    };
    if pid == 0 {
        guard_main(theirs, plan);
    }
    sys_exit(if pid < 0 { 1 } else { 0 })
}

/// Signals, descriptors and name of the guard; returns the descriptor of its end of the
/// pair (moved above 2 if needed).
fn guard_setup(sock: RawFd) -> RawFd {
    // Signals: ignore those that would kill us together with the tool.
    for sig in [
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        // SAFETY: `sa` is a fully initialised local (SIG_IGN, empty mask) that outlives
        // the call; the old action is not requested (null).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_IGN;
            libc::sigemptyset(&raw mut sa.sa_mask);
            libc::sigaction(sig, &raw const sa, std::ptr::null_mut());
        }
    }
    // SAFETY: `set` is a live local initialised by `sigemptyset`; the old mask is not
    // requested.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const set, std::ptr::null_mut());
        libc::prctl(
            libc::PR_SET_NAME,
            c"vmi-qemu-guard".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // Descriptors: all but ours (moved to >= 3) and stderr are closed, stdin/stdout go to
    // /dev/null, so the dying tool's sockets and pipes close with it.
    let keep = if sock < 3 {
        // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` takes integers and returns a new descriptor.
        let k = unsafe { libc::fcntl(sock, libc::F_DUPFD_CLOEXEC, 3) };
        if k < 0 {
            sys_exit(1);
        }
        k
    } else {
        sock
    };
    let lo = keep as u32;
    // SAFETY: `close_range` takes plain integers and closes descriptors only.
    let ok = unsafe {
        (lo == 3 || libc::syscall(libc::SYS_close_range, 3u32, lo - 1, 0u32) == 0)
            && libc::syscall(libc::SYS_close_range, lo + 1, u32::MAX, 0u32) == 0
    };
    if !ok {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a live local the kernel writes.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut rl) } == 0 {
            rl.rlim_cur.min(1 << 20) as RawFd
        } else {
            4096
        };
        for fd in 3..limit {
            if fd != keep {
                sys_close(fd);
            }
        }
    }
    // SAFETY: the path is a NUL-terminated literal; `dup2`/`close` take integers.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    keep
}

#[derive(Clone, Copy)]
struct Bp {
    ztype: u8,
    addr: u64,
    len: u64,
}

struct Journal {
    gdb: Option<RawAddr>,
    private: [u8; PATH_ROOM],
    private_len: usize,
    bps: [Bp; MAX_BPS],
    n: usize,
    overflow: bool,
}

fn le64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(v)
}

impl Journal {
    fn apply(&mut self, rec: &[u8]) {
        match rec.first() {
            Some(&REC_GDB) => self.gdb = rec.get(1..).and_then(RawAddr::from_bytes),
            Some(&REC_PRIVATE) => {
                let p = rec.get(1..).unwrap_or(&[]);
                if p.len() < PATH_ROOM {
                    self.private = [0; PATH_ROOM];
                    for (d, s) in self.private.iter_mut().zip(p) {
                        *d = *s;
                    }
                    self.private_len = p.len();
                }
            }
            Some(&tag @ (REC_INSERT | REC_REMOVE)) if rec.len() == 18 => {
                let bp = Bp {
                    ztype: rec[1],
                    addr: le64(&rec[2..10]),
                    len: le64(&rec[10..18]),
                };
                let live = &mut self.bps[..self.n.min(MAX_BPS)];
                let at = live
                    .iter()
                    .position(|b| b.ztype == bp.ztype && b.addr == bp.addr && b.len == bp.len);
                match (tag, at) {
                    (REC_INSERT, None) => {
                        if self.n < MAX_BPS {
                            self.bps[self.n] = bp;
                            self.n += 1;
                        } else {
                            self.overflow = true;
                        }
                    }
                    (REC_REMOVE, Some(i)) => {
                        self.n -= 1;
                        self.bps[i] = self.bps[self.n];
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// A packet `$body#cs` in a fixed buffer.
struct Packet {
    buf: [u8; 64],
    len: usize,
}

impl Packet {
    fn new(body: &[u8]) -> Packet {
        let mut p = Packet {
            buf: [0; 64],
            len: 0,
        };
        p.push(b'$');
        let mut sum = 0u8;
        for &c in body {
            sum = sum.wrapping_add(c);
            p.push(c);
        }
        p.push(b'#');
        p.push(HEX[(sum >> 4) as usize]);
        p.push(HEX[(sum & 15) as usize]);
        p
    }

    fn push(&mut self, c: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = c;
            self.len += 1;
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `z<t>,<addr hex>,<len hex>` into `out`; returns its length.
fn z_body(bp: &Bp, out: &mut [u8; 48]) -> usize {
    let mut n = 0;
    let mut put = |c: u8, n: &mut usize| {
        if let Some(s) = out.get_mut(*n) {
            *s = c;
            *n += 1;
        }
    };
    put(b'z', &mut n);
    put(b'0'.wrapping_add(bp.ztype % 10), &mut n);
    for v in [bp.addr, bp.len] {
        put(b',', &mut n);
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 15) as usize;
            if d != 0 || started || i == 0 {
                started = true;
                put(HEX[d], &mut n);
            }
        }
    }
    n
}

fn write_all(fd: RawFd, mut b: &[u8], deadline: i64) -> bool {
    while !b.is_empty() {
        let n = sys_write(fd, b);
        if n > 0 {
            b = b.get(n as usize..).unwrap_or(&[]);
            continue;
        }
        let e = last_errno();
        if n < 0 && (e == libc::EAGAIN || e == libc::EINTR) {
            if !sys_poll(fd, libc::POLLOUT, deadline) {
                return false;
            }
            continue;
        }
        return false;
    }
    true
}

/// Connects a non-blocking stream socket to `addr`, retrying while the listener's
/// backlog is full, until `deadline`.
fn connect(addr: &RawAddr, deadline: i64) -> Option<RawFd> {
    let family = addr.storage.ss_family as libc::c_int;
    loop {
        // SAFETY: plain integer arguments.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `addr.storage` is a live `sockaddr_storage` and `addr.len` is at most
        // its size (see `RawAddr`), so the kernel reads only inside it.
        let r = unsafe { libc::connect(fd, (&raw const addr.storage).cast(), addr.len) };
        if r == 0 {
            return Some(fd);
        }
        let e = last_errno();
        if e == libc::EINPROGRESS {
            // TCP: wait for the handshake, then check its outcome.
            if sys_poll(fd, libc::POLLOUT, deadline) {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: `err` and `len` are live locals; `len` holds `err`'s size.
                let ok = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&raw mut err).cast(),
                        &raw mut len,
                    )
                } == 0;
                if ok && err == 0 {
                    return Some(fd);
                }
            }
            sys_close(fd);
            return None;
        }
        sys_close(fd);
        // A unix listener with a full backlog says EAGAIN: QEMU has not accepted yet.
        if (e == libc::EAGAIN || e == libc::EINTR) && now_ms() < deadline {
            sleep_ms(5);
            continue;
        }
        return None;
    }
}

/// What a gdb request got back.
#[derive(PartialEq, Eq)]
enum GdbReply {
    Ok,
    Refused,
    Lost,
}

/// Sends `body` as a packet and waits for its reply, skipping acks and stop replies and
/// sending the packet again on a `-` (QEMU's parser may hold a half packet of the dead
/// client).
fn gdb_request(fd: RawFd, body: &[u8], deadline: i64) -> GdbReply {
    let pkt = Packet::new(body);
    if !write_all(fd, pkt.bytes(), deadline) {
        return GdbReply::Lost;
    }
    let mut resent = 0;
    // 0 idle, 1 in body, 2 first checksum digit, 3 second checksum digit
    let mut state = 0u8;
    let mut head = [0u8; 2];
    let mut blen = 0usize;
    let mut buf = [0u8; 1024];
    loop {
        if !sys_poll(fd, libc::POLLIN, deadline) {
            return GdbReply::Lost;
        }
        let n = sys_read(fd, &mut buf);
        if n <= 0 {
            if n < 0 && matches!(last_errno(), libc::EAGAIN | libc::EINTR) {
                continue;
            }
            return GdbReply::Lost;
        }
        for &c in buf.get(..n as usize).unwrap_or(&[]) {
            match state {
                0 => match c {
                    b'$' => {
                        state = 1;
                        blen = 0;
                        head = [0; 2];
                    }
                    b'-' if resent < 8 => {
                        resent += 1;
                        if !write_all(fd, pkt.bytes(), deadline) {
                            return GdbReply::Lost;
                        }
                    }
                    _ => {}
                },
                1 => {
                    if c == b'#' {
                        state = 2;
                    } else {
                        if let Some(h) = head.get_mut(blen) {
                            *h = c;
                        }
                        blen = blen.saturating_add(1);
                    }
                }
                2 => state = 3,
                _ => {
                    state = 0;
                    if !write_all(fd, b"+", deadline) {
                        return GdbReply::Lost;
                    }
                    match head[0] {
                        // Stop replies (e.g. the T02 our connection caused): not ours.
                        b'T' | b'S' => continue,
                        b'W' | b'X' => return GdbReply::Lost,
                        _ => {}
                    }
                    return if blen == 2 && head == *b"OK" {
                        GdbReply::Ok
                    } else {
                        GdbReply::Refused
                    };
                }
            }
        }
    }
}

/// Classifies QMP lines by their start: waits for the greeting (`{"QMP"`) or for the
/// answer to a command (`{"return"` / `{"error"`), skipping events.
struct QmpLines {
    prefix: [u8; 10],
    plen: usize,
    buf: [u8; 2048],
    have: usize,
    pos: usize,
}

#[derive(PartialEq, Eq)]
enum QmpLine {
    Greeting,
    Return,
    Error,
}

impl QmpLines {
    fn next(&mut self, fd: RawFd, deadline: i64) -> Option<QmpLine> {
        loop {
            while self.pos < self.have {
                let c = self.buf[self.pos];
                self.pos += 1;
                if c == b'\n' {
                    let p = self.prefix.get(..self.plen).unwrap_or(&[]);
                    self.plen = 0;
                    if p.starts_with(b"{\"QMP\"") {
                        return Some(QmpLine::Greeting);
                    }
                    if p.starts_with(b"{\"return\"") {
                        return Some(QmpLine::Return);
                    }
                    if p.starts_with(b"{\"error\"") {
                        return Some(QmpLine::Error);
                    }
                } else if let Some(s) = self.prefix.get_mut(self.plen) {
                    *s = c;
                    self.plen += 1;
                }
            }
            if !sys_poll(fd, libc::POLLIN, deadline) {
                return None;
            }
            let n = sys_read(fd, &mut self.buf);
            if n <= 0 {
                if n < 0 && matches!(last_errno(), libc::EAGAIN | libc::EINTR) {
                    continue;
                }
                return None;
            }
            self.have = n as usize;
            self.pos = 0;
        }
    }

    fn command(&mut self, fd: RawFd, line: &[u8], deadline: i64) -> Option<QmpLine> {
        if !write_all(fd, line, deadline) {
            return None;
        }
        loop {
            match self.next(fd, deadline)? {
                QmpLine::Greeting => continue,
                r => return Some(r),
            }
        }
    }
}

fn say(parts: &[&[u8]]) {
    for p in parts {
        sys_write(2, p);
    }
}

fn guard_main(sock: RawFd, plan: &Plan) -> ! {
    let sock = guard_setup(sock);
    let mut j = Journal {
        gdb: None,
        private: [0; PATH_ROOM],
        private_len: 0,
        bps: [Bp {
            ztype: 0,
            addr: 0,
            len: 0,
        }; MAX_BPS],
        n: 0,
        overflow: false,
    };
    let mut rec = [0u8; 256];
    loop {
        // SAFETY: `rec` is a live local buffer of `rec.len()` bytes the kernel fills.
        let n = unsafe { libc::recv(sock, rec.as_mut_ptr().cast(), rec.len(), 0) };
        if n > 0 {
            let r = rec.get(..n as usize).unwrap_or(&[]);
            if r.first() == Some(&REC_DETACH) {
                sys_exit(0);
            }
            j.apply(r);
            continue;
        }
        if n < 0 && last_errno() == libc::EINTR {
            continue;
        }
        break; // end of file (the driver's process is gone) or an error
    }
    sys_close(sock);
    recover(plan, &j);
    sys_exit(0)
}

fn recover(plan: &Plan, j: &Journal) {
    let mut gdb_note: &[u8] = b"";
    if let Some(addr) = &j.gdb {
        let deadline = now_ms().wrapping_add(STEP_MS);
        gdb_note = match connect(addr, deadline) {
            None => b"; gdbstub unreachable (breakpoints may remain)",
            Some(fd) => {
                let mut ok = true;
                if !plan.found_running && !j.overflow {
                    for bp in j.bps.get(..j.n).unwrap_or(&[]) {
                        let mut body = [0u8; 48];
                        let len = z_body(bp, &mut body);
                        if gdb_request(fd, body.get(..len).unwrap_or(&[]), deadline)
                            == GdbReply::Lost
                        {
                            ok = false;
                            break;
                        }
                    }
                } else {
                    ok = gdb_request(fd, b"D;1", deadline) == GdbReply::Ok;
                }
                sys_close(fd);
                if ok {
                    b"; gdbstub breakpoints removed"
                } else {
                    b"; gdbstub did not answer (breakpoints may remain)"
                }
            }
        };
    }
    let deadline = now_ms().wrapping_add(STEP_MS);
    let qmp_note: &[u8] = match connect(&plan.qmp, deadline) {
        None => b"; QMP unreachable (run state not restored)",
        Some(fd) => {
            let mut lines = QmpLines {
                prefix: [0; 10],
                plen: 0,
                buf: [0; 2048],
                have: 0,
                pos: 0,
            };
            let mut ok = lines.next(fd, deadline) == Some(QmpLine::Greeting)
                && lines.command(fd, b"{\"execute\":\"qmp_capabilities\"}\n", deadline)
                    == Some(QmpLine::Return);
            if ok && j.private_len > 0 {
                ok = lines.command(
                    fd,
                    b"{\"execute\":\"human-monitor-command\",\
                      \"arguments\":{\"command-line\":\"gdbserver none\"}}\n",
                    deadline,
                ) == Some(QmpLine::Return);
            }
            if ok {
                let cmd: &[u8] = if plan.found_running {
                    b"{\"execute\":\"cont\"}\n"
                } else {
                    b"{\"execute\":\"stop\"}\n"
                };
                ok = lines.command(fd, cmd, deadline).is_some();
            }
            sys_close(fd);
            match (ok, plan.found_running) {
                (true, true) => b"; VM running",
                (true, false) => b"; VM left stopped, as found",
                (false, _) => b"; QMP did not answer (run state not restored)",
            }
        }
    };
    if j.private_len > 0 {
        // The socket, then its private directory (the part before the last '/').
        let mut path = [0u8; PATH_ROOM + 1];
        for (d, s) in path
            .iter_mut()
            .zip(j.private.get(..j.private_len).unwrap_or(&[]))
        {
            *d = *s;
        }
        // SAFETY: `path` is NUL-terminated (one byte more than the longest path).
        unsafe {
            libc::unlink(path.as_ptr().cast());
        }
        if let Some(slash) = path
            .get(..j.private_len)
            .and_then(|p| p.iter().rposition(|&c| c == b'/'))
            && slash > 0
            && let Some(c) = path.get_mut(slash)
        {
            *c = 0;
            // SAFETY: `path` is NUL-terminated at `slash`.
            unsafe {
                libc::rmdir(path.as_ptr().cast());
            }
        }
    }
    say(&[
        b"vmi-driver-qemu guard: the process using the driver ended without detaching",
        gdb_note,
        qmp_note,
        b"\n",
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_and_z_bodies() {
        assert_eq!(Packet::new(b"D;1").bytes(), b"$D;1#b0");
        assert_eq!(Packet::new(b"OK").bytes(), b"$OK#9a");
        let mut out = [0u8; 48];
        let n = z_body(
            &Bp {
                ztype: 1,
                addr: 0xffff_ffff_8100_0000,
                len: 1,
            },
            &mut out,
        );
        assert_eq!(&out[..n], b"z1,ffffffff81000000,1");
        let n = z_body(
            &Bp {
                ztype: 2,
                addr: 0,
                len: 8,
            },
            &mut out,
        );
        assert_eq!(&out[..n], b"z2,0,8");
    }

    #[test]
    fn journal_tracks_inserts_and_removals_and_overflows() {
        let mut j = Journal {
            gdb: None,
            private: [0; PATH_ROOM],
            private_len: 0,
            bps: [Bp {
                ztype: 0,
                addr: 0,
                len: 0,
            }; MAX_BPS],
            n: 0,
            overflow: false,
        };
        j.apply(&bp_record(REC_INSERT, 0, 0x1000, 1));
        j.apply(&bp_record(REC_INSERT, 1, 0x2000, 1));
        j.apply(&bp_record(REC_INSERT, 1, 0x2000, 1)); // duplicate
        j.apply(&bp_record(REC_REMOVE, 0, 0x1000, 1));
        j.apply(&bp_record(REC_REMOVE, 0, 0x9999, 1)); // unknown
        assert_eq!(j.n, 1);
        assert_eq!((j.bps[0].ztype, j.bps[0].addr), (1, 0x2000));
        j.apply(b"Zshort"); // malformed: ignored
        assert_eq!(j.n, 1);
        for i in 0..MAX_BPS as u64 {
            j.apply(&bp_record(REC_INSERT, 0, 0x10_0000 + i, 1));
        }
        assert_eq!(j.n, MAX_BPS);
        assert!(j.overflow);
        let addr = RawAddr::unix(Path::new("/run/x/gdb.sock")).unwrap();
        let mut rec = vec![REC_GDB];
        rec.extend_from_slice(addr.bytes());
        j.apply(&rec);
        assert_eq!(j.gdb.unwrap().bytes(), addr.bytes());
        j.apply(b"P/run/x/gdb.sock");
        assert_eq!(&j.private[..j.private_len], b"/run/x/gdb.sock");
        j.apply(b"P");
        assert_eq!(j.private_len, 0);
        j.apply(b"G");
        assert!(j.gdb.is_none());
    }

    #[test]
    fn raw_addresses() {
        assert!(RawAddr::unix(Path::new(&"x".repeat(200))).is_none());
        let t = RawAddr::gdb(&GdbAddress::Tcp("127.0.0.1:1234".into())).unwrap();
        assert_eq!(t.storage.ss_family as i32, libc::AF_INET);
        assert_eq!(t.len as usize, std::mem::size_of::<libc::sockaddr_in>());
    }
}
