//! The guard's side: everything here runs after `fork` in a copy of a possibly
//! multi-threaded process and must stay async-signal-safe: no allocation, no locks, no
//! formatting machinery, no panics (indexing only where the bound is evident, `get`
//! elsewhere, wrapping arithmetic). See the parent module for the design.

#![allow(unsafe_code)]

use std::os::fd::RawFd;

use super::giveback::{Borrowed, Room, give_back};
use super::wire::{GdbReply, HEX, Wire};
use super::{
    Giveback, MAX_ARGS, MAX_BPS, MAX_GIVEBACK_MEMORY, PATH_ROOM, Plan, REC_ARM, REC_BORROW,
    REC_DETACH, REC_GDB, REC_HANDOVER, REC_INSERT, REC_MEMORY, REC_PRIVATE, REC_RELEASE,
    REC_REMOVE, REC_RETRY, REC_THREADS, RECV_ROOM, RawAddr, RawCommand, STEP_MS, last_errno,
};

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

pub(super) fn sys_write(fd: RawFd, b: &[u8]) -> isize {
    // SAFETY: `b` is a live slice of `b.len()` bytes, only read by the kernel.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) }
}

pub(super) fn sys_read(fd: RawFd, b: &mut [u8]) -> isize {
    // SAFETY: `b` is a live, exclusive slice of `b.len()` bytes the kernel may fill.
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) }
}

pub(super) fn now_ms() -> i64 {
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
pub(super) fn sys_poll(fd: RawFd, events: i16, deadline: i64) -> bool {
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

pub(super) fn sleep_ms(ms: i32) {
    // SAFETY: a poll on no descriptors is a sleep; the null pointer is allowed with 0.
    unsafe {
        libc::poll(std::ptr::null_mut(), 0, ms);
    }
}

/// The middle child: detach from the session, fork the guard, exit.
pub(super) fn middle(theirs: RawFd, ours: RawFd, plan: &Plan, room: *mut u8, room_len: usize) -> ! {
    sys_close(ours);
    // SAFETY: `setsid` and `fork` take no pointers. The grandchild continues in
    // `guard_main` (async-signal-safe, never returns); this process exits at once.
    let pid = unsafe {
        libc::setsid();
        libc::fork()
    };
    if pid == 0 {
        // SAFETY: `room` is this process's copy of a live allocation of `room_len`
        // bytes made before the fork; nothing else in this single-threaded process
        // refers to it and nothing frees it (the guard ends in `_exit`).
        let room = unsafe { std::slice::from_raw_parts_mut(room, room_len) };
        guard_main(theirs, plan, room);
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
pub(super) struct Bp {
    pub(super) ztype: u8,
    pub(super) addr: u64,
    pub(super) len: u64,
}

struct Journal {
    gdb: Option<RawAddr>,
    private: [u8; PATH_ROOM],
    private_len: usize,
    bps: [Bp; MAX_BPS],
    n: usize,
    overflow: bool,
    /// The driver's clean-up failed (else: the process died).
    retry: bool,
    /// A thread borrowed from the guest, to give back.
    borrowed: Borrowed,
    /// The driver handed the borrowed thread over (else: it died or its clean-up failed).
    handover: bool,
}

fn le64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(v)
}

impl Journal {
    fn new() -> Journal {
        Journal {
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
            retry: false,
            borrowed: Borrowed::new(),
            handover: false,
        }
    }

    fn apply(&mut self, rec: &[u8], room: &mut Room<'_>) {
        match rec.first() {
            Some(&REC_BORROW) => self.borrowed.begin(Giveback::decode(rec), room),
            Some(&REC_THREADS) => self.borrowed.threads(rec.get(1..).unwrap_or(&[]), room),
            Some(&REC_MEMORY) if rec.len() >= 5 => {
                let offset = le64(rec.get(1..5).unwrap_or(&[])) as usize;
                self.borrowed
                    .memory(offset, rec.get(5..).unwrap_or(&[]), room);
            }
            Some(&REC_ARM) => self.borrowed.arm(),
            Some(&REC_RELEASE) => self.borrowed.release(),
            Some(&REC_GDB) => self.gdb = rec.get(1..).and_then(RawAddr::from_bytes),
            Some(&REC_RETRY) => self.retry = true,
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

/// `z<t>,<addr hex>,<len hex>` into `out`; returns its length.
pub(super) fn z_body(bp: &Bp, out: &mut [u8; 48]) -> usize {
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

pub(super) fn write_all(fd: RawFd, mut b: &[u8], deadline: i64) -> bool {
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

fn guard_main(sock: RawFd, plan: &Plan, room: &mut [u8]) -> ! {
    let sock = guard_setup(sock);
    let mut j = Journal::new();
    let (memory, threads) = room.split_at_mut(MAX_GIVEBACK_MEMORY.min(room.len()));
    let mut room = Room { memory, threads };
    let mut rec = [0u8; RECV_ROOM];
    loop {
        // SAFETY: `rec` is a live local buffer of `rec.len()` bytes the kernel fills.
        let n = unsafe { libc::recv(sock, rec.as_mut_ptr().cast(), rec.len(), 0) };
        if n > 0 {
            let r = rec.get(..n as usize).unwrap_or(&[]);
            if r.first() == Some(&REC_DETACH) {
                sys_exit(0);
            }
            if r.first() == Some(&REC_HANDOVER) {
                j.handover = true;
                break;
            }
            j.apply(r, &mut room);
            continue;
        }
        if n < 0 && last_errno() == libc::EINTR {
            continue;
        }
        break; // end of file (the driver's process is gone) or an error
    }
    sys_close(sock);
    recover(plan, &j, &room);
    sys_exit(0)
}

fn recover(plan: &Plan, j: &Journal, room: &Room<'_>) {
    let mut gdb_note: &[u8] = b"";
    let mut borrowed_note: &[u8] = b"";
    if let Some(addr) = &j.gdb {
        let deadline = now_ms().wrapping_add(STEP_MS);
        gdb_note = match connect(addr, deadline) {
            None => b"; gdbstub unreachable (breakpoints may remain)",
            Some(fd) => {
                let mut wire = Wire::new(fd);
                let bps = j.bps.get(..j.n).unwrap_or(&[]);
                if j.borrowed.armed() {
                    borrowed_note = give_back(&mut wire, bps, &j.borrowed, room);
                }
                let deadline = now_ms().wrapping_add(STEP_MS);
                let mut ok = true;
                if !plan.found_running && !j.overflow {
                    for bp in bps {
                        let mut body = [0u8; 48];
                        let len = z_body(bp, &mut body);
                        if wire.request(body.get(..len).unwrap_or(&[]), deadline) == GdbReply::Lost
                        {
                            ok = false;
                            break;
                        }
                    }
                } else {
                    ok = wire.request(b"D;1", deadline) == GdbReply::Ok;
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
    // QEMU serves one QMP client per socket and may not have seen the dead process's
    // connection close yet: the greeting then never comes. Try a few times.
    let mut qmp_note: &[u8] = b"; QMP unreachable (run state not restored)";
    let attempts = if plan.qmp.is_some() {
        QMP_ATTEMPTS
    } else {
        qmp_note = match (&plan.resume, plan.found_running) {
            (_, false) => b"; VM left stopped, as found",
            (Some(cmd), true) => {
                // QEMU pauses the VM when a gdb client leaves: let it see our close first.
                sleep_ms(100);
                if run(cmd, now_ms().wrapping_add(STEP_MS.wrapping_mul(5))) {
                    b"; VM resumed (virsh resume)"
                } else {
                    b"; virsh resume failed (run state not restored)"
                }
            }
            (None, true) => b"; no virsh to resume the VM (run state not restored)",
        };
        0
    };
    for _ in 0..attempts {
        let deadline = now_ms().wrapping_add(STEP_MS);
        let (note, done) = qmp_restore(plan, j, deadline);
        qmp_note = note;
        if done {
            break;
        }
        sleep_ms(100);
    }
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
    let why: &[u8] = if j.handover {
        b"vmi-driver-qemu guard: the driver handed over a borrowed thread still in a system call"
    } else if j.retry {
        b"vmi-driver-qemu guard: the driver's clean-up failed, tried again"
    } else {
        b"vmi-driver-qemu guard: the process using the driver ended without detaching"
    };
    say(&[why, borrowed_note, gdb_note, qmp_note, b"\n"]);
}

/// Runs `cmd` (fork, `execv`) and waits for it until `deadline` (then kills it); whether
/// it exited with status 0.
fn run(cmd: &RawCommand, deadline: i64) -> bool {
    // The argument pointers, into `cmd.buf` (NUL-terminated strings one after another).
    let mut argv: [*const libc::c_char; MAX_ARGS + 1] = [std::ptr::null(); MAX_ARGS + 1];
    let mut at = 0usize;
    for slot in argv.iter_mut().take(cmd.argc.min(MAX_ARGS)) {
        let Some(rest) = cmd.buf.get(at..) else {
            return false;
        };
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return false;
        };
        *slot = rest.as_ptr().cast();
        at = at.wrapping_add(len).wrapping_add(1);
    }
    // SAFETY: `fork` has no memory preconditions; the guard is single-threaded. The child
    // only calls `execv` and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `argv[0]` and every further non-null entry point at NUL-terminated
        // strings inside `cmd.buf`, which this (copied) frame keeps alive; the array ends
        // with a null pointer (it has one slot more than `MAX_ARGS`). `execv` replaces the
        // process or returns on failure.
        unsafe {
            libc::execv(argv[0], argv.as_ptr());
        }
        sys_exit(127);
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a live local the kernel writes.
        let r = unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if r < 0 && last_errno() != libc::EINTR {
            return false;
        }
        if deadline.wrapping_sub(now_ms()) <= 0 {
            // SAFETY: signalling and reaping our own child touch no memory of ours but
            // `status`, a live local.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &raw mut status, 0);
            }
            return false;
        }
        sleep_ms(10);
    }
}

/// Attempts of the QMP step (each up to `STEP_MS`).
const QMP_ATTEMPTS: usize = 3;

/// One attempt to restore the run state over QMP (and stop a private gdbstub): the note to
/// print, and whether it succeeded.
fn qmp_restore(plan: &Plan, j: &Journal, deadline: i64) -> (&'static [u8], bool) {
    let Some(qmp) = &plan.qmp else {
        return (b"; no QMP socket", false);
    };
    match connect(qmp, deadline) {
        None => (b"; QMP unreachable (run state not restored)", false),
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
                (true, true) => (b"; VM running", true),
                (true, false) => (b"; VM left stopped, as found", true),
                (false, _) => (b"; QMP did not answer (run state not restored)", false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::watchdog::bp_record;

    #[test]
    fn raw_commands_run_report_their_status_and_are_bounded() {
        let ok = RawCommand::new(&[b"/bin/sh", b"-c", b"exit 0"]).unwrap();
        assert!(run(&ok, now_ms() + 5000));
        let fails = RawCommand::new(&[b"/bin/sh", b"-c", b"exit 3"]).unwrap();
        assert!(!run(&fails, now_ms() + 5000));
        let missing = RawCommand::new(&[b"/nonexistent/virsh", b"resume"]).unwrap();
        assert!(!run(&missing, now_ms() + 5000));
        let slow = RawCommand::new(&[b"/bin/sleep", b"10"]).unwrap();
        let t0 = now_ms();
        assert!(!run(&slow, now_ms() + 200));
        assert!(now_ms() - t0 < 3000, "killed at the deadline");
        // Relative programs, NUL bytes, too many or too long arguments: refused.
        assert!(RawCommand::new(&[b"sh"]).is_none());
        assert!(RawCommand::new(&[b"/bin/sh", b"a\0b"]).is_none());
        assert!(RawCommand::new(&[b"/bin/sh".as_slice(); MAX_ARGS + 1]).is_none());
        assert!(RawCommand::new(&[b"/bin/sh", &[b'x'; 2000]]).is_none());
        assert!(RawCommand::new(&[]).is_none());
    }

    #[test]
    fn packets_and_z_bodies() {
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
        let (mut mem, mut thr) = (vec![0u8; 128], vec![0u8; 64]);
        let mut room = Room {
            memory: &mut mem,
            threads: &mut thr,
        };
        let mut j = Journal::new();
        j.apply(&bp_record(REC_INSERT, 0, 0x1000, 1), &mut room);
        j.apply(&bp_record(REC_INSERT, 1, 0x2000, 1), &mut room);
        j.apply(&bp_record(REC_INSERT, 1, 0x2000, 1), &mut room); // duplicate
        j.apply(&bp_record(REC_REMOVE, 0, 0x1000, 1), &mut room);
        j.apply(&bp_record(REC_REMOVE, 0, 0x9999, 1), &mut room); // unknown
        assert_eq!(j.n, 1);
        assert_eq!((j.bps[0].ztype, j.bps[0].addr), (1, 0x2000));
        j.apply(b"Zshort", &mut room); // malformed: ignored
        assert_eq!(j.n, 1);
        for i in 0..MAX_BPS as u64 {
            j.apply(&bp_record(REC_INSERT, 0, 0x10_0000 + i, 1), &mut room);
        }
        assert_eq!(j.n, MAX_BPS);
        assert!(j.overflow);
        let addr = RawAddr::unix(Path::new("/run/x/gdb.sock")).unwrap();
        let mut rec = vec![REC_GDB];
        rec.extend_from_slice(addr.bytes());
        j.apply(&rec, &mut room);
        assert_eq!(j.gdb.unwrap().bytes(), addr.bytes());
        j.apply(b"P/run/x/gdb.sock", &mut room);
        assert_eq!(&j.private[..j.private_len], b"/run/x/gdb.sock");
        j.apply(b"P", &mut room);
        assert_eq!(j.private_len, 0);
        j.apply(b"G", &mut room);
        assert!(j.gdb.is_none());
    }
}
