//! Recipes: the system calls (and user functions) an injection runs, one after the
//! other, each chosen by the outcome of the one before.

use std::fmt;

/// Linux x86-64 system-call numbers the built-in recipes use.
pub mod nr {
    /// `read(fd, buf, count)`.
    pub const READ: u64 = 0;
    /// `write(fd, buf, count)`.
    pub const WRITE: u64 = 1;
    /// `close(fd)`.
    pub const CLOSE: u64 = 3;
    /// `sched_yield()`.
    pub const SCHED_YIELD: u64 = 24;
    /// `getpid()`.
    pub const GETPID: u64 = 39;
    /// `clone(flags, stack, parent_tid, child_tid, tls)`.
    pub const CLONE: u64 = 56;
    /// `execve(path, argv, envp)`.
    pub const EXECVE: u64 = 59;
    /// `exit(code)`.
    pub const EXIT: u64 = 60;
    /// `fsync(fd)`.
    pub const FSYNC: u64 = 74;
    /// `mmap(addr, length, prot, flags, fd, offset)`.
    pub const MMAP: u64 = 9;
    /// `munmap(addr, length)`.
    pub const MUNMAP: u64 = 11;
    /// `openat(dirfd, path, flags, mode)`.
    pub const OPENAT: u64 = 257;
}

/// `AT_FDCWD`: paths relative to the process's working directory.
pub const AT_FDCWD: i64 = -100;
/// `O_RDONLY | O_CLOEXEC`: the descriptor does not leak into a program the process runs.
pub const O_RDONLY_CLOEXEC: u64 = 0o2_000_000;

/// `clone` flags of [`Recipe::exec`]: `CLONE_PARENT | SIGCHLD` — the new process is
/// the target's sibling, so the target never has to reap it.
pub const CLONE_PARENT_SIGCHLD: u64 = 0x8000 | 17;
/// `clone` flags that share memory or the thread group with the caller: a child made
/// with them would run on the borrowed thread's stack.
const CLONE_SHARING: u64 = 0x100 | 0x4000 | 0x1_0000;

/// `O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC`.
pub const O_WRITE_CREATE_CLOEXEC: u64 = 0o1 | 0o100 | 0o1000 | 0o2_000_000;

/// Most arguments of a system call on x86-64 (`rdi, rsi, rdx, r10, r8, r9`).
pub const MAX_ARGS: usize = 6;

/// One argument of a system call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A plain value.
    Value(u64),
    /// Bytes the injector places in the target's memory (below the stack's red zone);
    /// the argument is their address. A C string must carry its own NUL
    /// ([`Arg::c_string`]).
    Bytes(Vec<u8>),
    /// A buffer of up to this many bytes for the kernel to fill; the argument is its
    /// address. The injector may make it shorter to fit the room it has: the length it
    /// gave is in [`StepOutcome::args`] (pass it as the count with [`Arg::OutLen`]). After
    /// the call, the first `min(result, length)` bytes are read back into
    /// [`StepOutcome::out`] when the result is not negative.
    Out(usize),
    /// The length the injector gave the step's [`Arg::Out`] buffer.
    OutLen,
    /// A NULL-terminated array of pointers to NUL-terminated copies of these strings
    /// (`argv`, `envp`), placed like [`Arg::Bytes`]; the argument is the array's address.
    StrArray(Vec<String>),
}

impl Arg {
    /// A NUL-terminated copy of `s`.
    pub fn c_string(s: &str) -> Arg {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        Arg::Bytes(b)
    }

    /// A signed value (negative file descriptors such as `AT_FDCWD`).
    pub fn int(v: i64) -> Arg {
        Arg::Value(v as u64)
    }
}

/// One step of a recipe: a system call, or a call of a user function of the process
/// ([`Syscall::function`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syscall {
    /// Its number (`rax`); 0 for a function call.
    pub nr: u64,
    /// Its name, for reports.
    pub name: &'static str,
    /// Its arguments, at most [`MAX_ARGS`].
    pub args: Vec<Arg>,
    /// For a `clone` that makes a new process: the `execve` the child runs first (its
    /// data is placed before the `clone`, so the child has its own copy). If the
    /// `execve` fails the child exits with code 127.
    pub child: Option<Box<Syscall>>,
    /// A user function to call instead of a system call: its address in the process
    /// (e.g. from [`Injector::find_function`](super::Injector::find_function)). The
    /// System V ABI: arguments in `rdi, rsi, rdx, rcx, r8, r9`, `al` 0 (no vector
    /// arguments of a variadic call), the direction flag clear, a 16-byte aligned stack
    /// with a return address that leads back to the injector; the result in `rax`.
    pub function: Option<u64>,
}

impl Syscall {
    /// A call of `nr` (named `name`) with `args`.
    pub fn new(nr: u64, name: &'static str, args: Vec<Arg>) -> Self {
        Self {
            nr,
            name,
            args,
            child: None,
            function: None,
        }
    }

    /// A call of the user function at `address` (named `name`) with `args`.
    ///
    /// The thread is borrowed wherever it was in user mode, as if a signal had come: call
    /// only functions a signal handler may call (async-signal-safe), or the call may
    /// deadlock on a lock the thread holds (then [`InjectError::StuckInSyscall`] after
    /// the step timeout, with the thread not restored).
    ///
    /// [`InjectError::StuckInSyscall`]: super::InjectError::StuckInSyscall
    pub fn function(name: &'static str, address: u64, args: Vec<Arg>) -> Self {
        Self {
            nr: 0,
            name,
            args,
            child: None,
            function: Some(address),
        }
    }
}

/// What one step did, given to the recipe to choose the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The step's index, from 0.
    pub index: u64,
    /// The call's number.
    pub nr: u64,
    /// The call's name.
    pub name: &'static str,
    /// The register values the call was made with (addresses of placed data included).
    pub args: [u64; MAX_ARGS],
    /// How many of [`args`](Self::args) the call declared.
    pub argc: usize,
    /// `rax` after the call: a value, or `-errno`.
    pub ret: i64,
    /// The bytes read back from the step's [`Arg::Out`] buffer (empty without one).
    pub out: Vec<u8>,
    /// Bytes of the scratch area: the most data (all [`Arg::Bytes`] of a step, each
    /// rounded up to 16) a next step can place on the stack.
    pub scratch: usize,
    /// Bytes of the buffer the injector maps for a step that does not fit the stack
    /// ([`InjectOptions::buffer`](super::InjectOptions::buffer)); 0 without one.
    pub buffer: usize,
}

/// What a recipe does after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run this call.
    Call(Syscall),
    /// Done: restore the thread.
    Done,
    /// Give up with this message: restore the thread, the injection fails with
    /// [`InjectError::Recipe`](super::InjectError::Recipe).
    Fail(String),
}

/// The decision function of a recipe.
pub type Decide<'a> = Box<dyn FnMut(&StepOutcome) -> Next + 'a>;

/// Ordered steps: a first system call, then a closure that sees each step's outcome and
/// chooses the next call or finishes (so a reader can loop `read` until it returns 0).
///
/// ```
/// use vmi_utils::inject::{Arg, Next, Recipe, Syscall, nr};
/// let recipe = Recipe::new(Syscall::new(nr::GETPID, "getpid", vec![]), |_| Next::Done);
/// assert_eq!(recipe.first().name, "getpid");
/// ```
pub struct Recipe<'a> {
    first: Syscall,
    decide: Decide<'a>,
}

impl fmt::Debug for Recipe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipe")
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl<'a> Recipe<'a> {
    /// A recipe starting with `first`; `decide` chooses each next step.
    pub fn new(first: Syscall, decide: impl FnMut(&StepOutcome) -> Next + 'a) -> Self {
        Self {
            first,
            decide: Box::new(decide),
        }
    }

    /// The first call.
    pub fn first(&self) -> &Syscall {
        &self.first
    }

    /// The next step after `outcome`.
    pub fn decide(&mut self, outcome: &StepOutcome) -> Next {
        (self.decide)(outcome)
    }

    /// `cat PATH`: `openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)`, then `read` in chunks of
    /// up to `chunk` bytes until it returns 0, each chunk handed to `sink` (which returns
    /// `false` to stop early), then `close`. Stops (and closes) after `max_bytes`. A failed
    /// `openat` or `read` fails the recipe with the error's name, after the `close`. One
    /// a signal interrupted (`EINTR`: a blocking open or read of a FIFO while a child of
    /// the borrowed thread's process exits, say) is issued again, up to 16 times in all,
    /// as a program's own retry loop would.
    pub fn cat(
        path: &str,
        chunk: usize,
        max_bytes: u64,
        mut sink: impl FnMut(&[u8]) -> bool + 'a,
    ) -> Self {
        let shown = path.to_string();
        let mut fd: Option<u64> = None;
        let mut total: u64 = 0;
        let mut failure: Option<String> = None;
        // What fits the stack first; `chunk` once a read filled that (a file larger than
        // the stack's room: the injector may map a buffer for it).
        let read = move |fd: u64, o: &StepOutcome, filled: bool| {
            let len = if filled || o.buffer == 0 {
                chunk
            } else {
                chunk.min(o.scratch.saturating_sub(16).max(1))
            };
            Syscall::new(
                nr::READ,
                "read",
                vec![Arg::Value(fd), Arg::Out(len), Arg::OutLen],
            )
        };
        let close = |fd: u64| Syscall::new(nr::CLOSE, "close", vec![Arg::Value(fd)]);
        let open = {
            let path = path.to_string();
            move || {
                Syscall::new(
                    nr::OPENAT,
                    "openat",
                    vec![
                        Arg::int(AT_FDCWD),
                        Arg::c_string(&path),
                        Arg::Value(O_RDONLY_CLOEXEC),
                        Arg::Value(0),
                    ],
                )
            }
        };
        let mut interrupted = 0u32;
        let mut again = move |o: &StepOutcome| {
            let retry = o.ret == -EINTR && interrupted < MAX_INTERRUPTED;
            interrupted += u32::from(retry);
            retry
        };
        Self::new(open(), move |o| match o.nr {
            nr::OPENAT => {
                if again(o) {
                    return Next::Call(open());
                }
                if o.ret < 0 {
                    return Next::Fail(format!("openat {shown}: {}", errno_text(o.ret)));
                }
                fd = Some(o.ret as u64);
                Next::Call(read(o.ret as u64, o, false))
            }
            nr::READ => {
                let Some(f) = fd else {
                    return Next::Fail("read without an open file".into());
                };
                if again(o) {
                    return Next::Call(read(f, o, o.args[2] as usize >= chunk));
                }
                if o.ret < 0 {
                    failure = Some(format!("read {shown}: {}", errno_text(o.ret)));
                    return Next::Call(close(f));
                }
                if o.ret == 0 {
                    return Next::Call(close(f));
                }
                total = total.saturating_add(o.out.len() as u64);
                if !sink(&o.out) {
                    return Next::Call(close(f));
                }
                if total >= max_bytes {
                    failure = Some(format!("{shown}: longer than {max_bytes} bytes"));
                    return Next::Call(close(f));
                }
                // The length given is the step's third argument.
                let filled = o.ret as u64 >= o.args[2];
                Next::Call(read(f, o, filled))
            }
            _ => match failure.take() {
                Some(f) => Next::Fail(f),
                None => Next::Done,
            },
        })
    }

    /// `exec`: `clone(CLONE_PARENT|SIGCHLD)` in the target, and in the new process
    /// `execve(argv[0], argv, envp)` (no `PATH` search: give a path). The new process is
    /// the target's sibling (its parent is the target's parent). `on_pid` gets the new
    /// pid. A failed `clone` fails the recipe; a failed `execve` is reported by the
    /// injector ([`InjectReport::child_exec`](super::InjectReport::child_exec)).
    pub fn exec(argv: Vec<String>, envp: Vec<String>, mut on_pid: impl FnMut(u32) + 'a) -> Self {
        let path = argv.first().cloned().unwrap_or_default();
        let mut child = Syscall::new(
            nr::EXECVE,
            "execve",
            vec![
                Arg::c_string(&path),
                Arg::StrArray(argv),
                Arg::StrArray(envp),
            ],
        );
        child.child = None;
        let mut clone = Syscall::new(
            nr::CLONE,
            "clone",
            vec![
                Arg::Value(CLONE_PARENT_SIGCHLD),
                Arg::Value(0),
                Arg::Value(0),
                Arg::Value(0),
                Arg::Value(0),
            ],
        );
        clone.child = Some(Box::new(child));
        Self::new(clone, move |o| {
            if o.ret < 0 {
                return Next::Fail(format!("clone: {}", errno_text(o.ret)));
            }
            on_pid(u32::try_from(o.ret).unwrap_or(0));
            Next::Done
        })
    }

    /// `put`: `openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, mode)`, then
    /// `write` of `data` in chunks that fit the scratch area (a short write goes on
    /// from where it stopped), `fsync`, `close`. A failed `openat` or `write` fails the
    /// recipe after the `close` (a failed write leaves the file partly written).
    pub fn put(path: &str, data: &'a [u8], mode: u32) -> Self {
        let shown = path.to_string();
        let mut fd: Option<u64> = None;
        let mut done: usize = 0;
        let mut failure: Option<String> = None;
        let write = |fd: u64, chunk: &[u8]| {
            Syscall::new(
                nr::WRITE,
                "write",
                vec![
                    Arg::Value(fd),
                    Arg::Bytes(chunk.to_vec()),
                    Arg::Value(chunk.len() as u64),
                ],
            )
        };
        let close = |fd: u64| Syscall::new(nr::CLOSE, "close", vec![Arg::Value(fd)]);
        Self::new(
            Syscall::new(
                nr::OPENAT,
                "openat",
                vec![
                    Arg::int(AT_FDCWD),
                    Arg::c_string(path),
                    Arg::Value(O_WRITE_CREATE_CLOEXEC),
                    Arg::Value(u64::from(mode)),
                ],
            ),
            move |o| {
                // The next chunk: what fits the scratch area (16-byte rounding kept).
                let next = |fd: u64, done: usize| {
                    let room = o.scratch.saturating_sub(16).max(o.buffer).max(1);
                    let end = done.saturating_add(room).min(data.len());
                    write(fd, &data[done..end])
                };
                match o.nr {
                    nr::OPENAT => {
                        if o.ret < 0 {
                            return Next::Fail(format!("openat {shown}: {}", errno_text(o.ret)));
                        }
                        let f = o.ret as u64;
                        fd = Some(f);
                        if data.is_empty() {
                            return Next::Call(Syscall::new(
                                nr::FSYNC,
                                "fsync",
                                vec![Arg::Value(f)],
                            ));
                        }
                        Next::Call(next(f, 0))
                    }
                    nr::WRITE => {
                        let Some(f) = fd else {
                            return Next::Fail("write without an open file".into());
                        };
                        if o.ret <= 0 {
                            failure = Some(format!(
                                "write {shown} at byte {done}: {}",
                                if o.ret == 0 {
                                    "wrote nothing".into()
                                } else {
                                    errno_text(o.ret)
                                }
                            ));
                            return Next::Call(close(f));
                        }
                        done = done.saturating_add(o.ret as usize).min(data.len());
                        if done < data.len() {
                            return Next::Call(next(f, done));
                        }
                        Next::Call(Syscall::new(nr::FSYNC, "fsync", vec![Arg::Value(f)]))
                    }
                    nr::FSYNC => match fd {
                        Some(f) => Next::Call(close(f)),
                        None => Next::Fail("fsync without an open file".into()),
                    },
                    _ => match failure.take() {
                        Some(f) => Next::Fail(f),
                        None => Next::Done,
                    },
                }
            },
        )
    }
}

/// System calls a recipe may not run: they would leave the borrowed thread, or a new
/// task sharing its registers, running with the injector's state (`fork`/`clone`
/// children return to the injector's `syscall` with its stack; `execve` and `exit`
/// never return to be restored; `rt_sigreturn` replaces every register).
pub const REFUSED_SYSCALLS: &[(u64, &str)] = &[
    (15, "rt_sigreturn"),
    (56, "clone"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (60, "exit"),
    (231, "exit_group"),
    (322, "execveat"),
    (435, "clone3"),
];

/// Why `call` cannot be a step, `None` when it can.
pub fn refusal(call: &Syscall) -> Option<String> {
    if call.args.len() > MAX_ARGS {
        return Some(format!(
            "{} arguments (at most {MAX_ARGS})",
            call.args.len()
        ));
    }
    if call.function.is_some() {
        if call.child.is_some() {
            return Some("a function call cannot carry a child's call".into());
        }
    } else if let Some(child) = &call.child {
        let flags = match call.args.first() {
            Some(Arg::Value(f)) => *f,
            _ => return Some("clone with a child needs its flags as a value".into()),
        };
        if call.nr != nr::CLONE || flags & CLONE_SHARING != 0 {
            return Some(
                "a child call needs a clone that makes a new process (no CLONE_VM, CLONE_VFORK, CLONE_THREAD)"
                    .into(),
            );
        }
        if child.nr != nr::EXECVE || child.child.is_some() || child.args.len() > MAX_ARGS {
            return Some("the child's call must be one execve".into());
        }
        return None;
    }
    if call.function.is_none()
        && let Some((_, name)) = REFUSED_SYSCALLS.iter().find(|(n, _)| *n == call.nr)
    {
        return Some(format!(
            "{name} is not supported: the thread (or a child sharing its state) would run on with the injector's registers"
        ));
    }
    let outs = call
        .args
        .iter()
        .filter(|a| matches!(a, Arg::Out(_)))
        .count();
    if outs > 1 {
        return Some("two output buffers".into());
    }
    None
}

/// `-errno` as its name and text (`ENOENT (No such file or directory)`), the number for
/// names not in this short list.
pub fn errno_text(ret: i64) -> String {
    let e = ret.checked_neg().unwrap_or(0);
    let name = match e {
        1 => "EPERM (operation not permitted)",
        2 => "ENOENT (no such file or directory)",
        4 => "EINTR (interrupted system call)",
        5 => "EIO (input/output error)",
        9 => "EBADF (bad file descriptor)",
        11 => "EAGAIN (resource temporarily unavailable)",
        12 => "ENOMEM (cannot allocate memory)",
        13 => "EACCES (permission denied)",
        14 => "EFAULT (bad address)",
        17 => "EEXIST (file exists)",
        20 => "ENOTDIR (not a directory)",
        21 => "EISDIR (is a directory)",
        22 => "EINVAL (invalid argument)",
        24 => "EMFILE (too many open files)",
        28 => "ENOSPC (no space left on device)",
        30 => "EROFS (read-only file system)",
        36 => "ENAMETOOLONG (file name too long)",
        38 => "ENOSYS (function not implemented)",
        40 => "ELOOP (too many levels of symbolic links)",
        _ => return format!("error {e}"),
    };
    name.to_string()
}

/// `-EINTR`, as a system call returns it.
const EINTR: i64 = 4;

/// How many times [`Recipe::cat`] issues a call a signal interrupted again.
const MAX_INTERRUPTED: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cat_issues_an_interrupted_call_again_a_bounded_number_of_times() {
        let mut r = Recipe::cat("/tmp/fifo", 4096, 1 << 20, |_| true);
        for _ in 0..MAX_INTERRUPTED {
            assert!(
                matches!(r.decide(&outcome(nr::OPENAT, -EINTR, b"")), Next::Call(c) if c.nr == nr::OPENAT && c.args[1] == Arg::Bytes(b"/tmp/fifo\0".to_vec()))
            );
        }
        assert!(
            matches!(r.decide(&outcome(nr::OPENAT, -EINTR, b"")), Next::Fail(m) if m.contains("EINTR"))
        );
        let mut r = Recipe::cat("/tmp/fifo", 4096, 1 << 20, |_| true);
        let Next::Call(read) = r.decide(&outcome(nr::OPENAT, 3, b"")) else {
            panic!()
        };
        let mut interrupted = outcome(nr::READ, -EINTR, b"");
        interrupted.args[2] = match read.args[1] {
            Arg::Out(n) => n as u64,
            ref a => panic!("{a:?}"),
        };
        assert!(
            matches!(r.decide(&interrupted), Next::Call(c) if c.nr == nr::READ && c.args[0] == Arg::Value(3))
        );
    }

    fn outcome(nr: u64, ret: i64, out: &[u8]) -> StepOutcome {
        StepOutcome {
            index: 0,
            nr,
            name: "",
            args: [0; 6],
            argc: 0,
            ret,
            out: out.to_vec(),
            scratch: 4096,
            buffer: 0,
        }
    }

    #[test]
    fn cat_opens_reads_until_zero_and_closes() {
        let mut got = Vec::new();
        {
            let mut r = Recipe::cat("/etc/x", 4096, 1 << 20, |b| {
                got.extend_from_slice(b);
                true
            });
            assert_eq!(r.first().nr, nr::OPENAT);
            assert_eq!(r.first().args[1], Arg::Bytes(b"/etc/x\0".to_vec()));
            let Next::Call(c) = r.decide(&outcome(nr::OPENAT, 3, b"")) else {
                panic!()
            };
            assert_eq!(c.nr, nr::READ);
            assert_eq!(c.args[0], Arg::Value(3));
            assert!(
                matches!(r.decide(&outcome(nr::READ, 2, b"ab")), Next::Call(c) if c.nr == nr::READ)
            );
            assert!(
                matches!(r.decide(&outcome(nr::READ, 0, b"")), Next::Call(c) if c.nr == nr::CLOSE)
            );
            assert_eq!(r.decide(&outcome(nr::CLOSE, 0, b"")), Next::Done);
        }
        assert_eq!(got, b"ab");
    }

    #[test]
    fn cat_reads_what_fits_the_stack_first_then_whole_chunks() {
        let mut r = Recipe::cat("/f", 1 << 20, 1 << 30, |_| true);
        let mut open = outcome(nr::OPENAT, 3, b"");
        open.buffer = 1 << 20;
        let len = |n: &Next| match n {
            Next::Call(c) => match c.args[1] {
                Arg::Out(n) => n,
                _ => panic!("{c:?}"),
            },
            n => panic!("{n:?}"),
        };
        assert_eq!(len(&r.decide(&open)), 4096 - 16, "what fits the stack");
        let mut full = outcome(nr::READ, 4080, &[b'x'; 4080]);
        full.buffer = 1 << 20;
        full.args[2] = 4080;
        assert_eq!(
            len(&r.decide(&full)),
            1 << 20,
            "the file is larger: whole chunks"
        );
        let mut short = outcome(nr::READ, 10, &[b'x'; 10]);
        short.buffer = 1 << 20;
        short.args[2] = 1 << 20;
        assert_eq!(
            len(&r.decide(&short)),
            4096 - 16,
            "a short read: back to the stack"
        );
    }

    #[test]
    fn cat_reports_errors_after_closing() {
        let mut r = Recipe::cat("/nope", 4096, 1 << 20, |_| true);
        assert!(
            matches!(r.decide(&outcome(nr::OPENAT, -2, b"")), Next::Fail(m) if m.contains("ENOENT"))
        );
        let mut r = Recipe::cat("/d", 4096, 1 << 20, |_| true);
        r.decide(&outcome(nr::OPENAT, 4, b""));
        assert!(
            matches!(r.decide(&outcome(nr::READ, -21, b"")), Next::Call(c) if c.nr == nr::CLOSE)
        );
        assert!(
            matches!(r.decide(&outcome(nr::CLOSE, 0, b"")), Next::Fail(m) if m.contains("EISDIR"))
        );
    }

    #[test]
    fn put_writes_in_scratch_sized_chunks_and_resumes_short_writes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut r = Recipe::put("/tmp/p", &data, 0o644);
        let Next::Call(w) = r.decide(&outcome(nr::OPENAT, 5, b"")) else {
            panic!()
        };
        // 4096 of scratch, 16 kept: 4080 bytes.
        assert_eq!(w.args[1], Arg::Bytes(data[..4080].to_vec()));
        // A short write of 100: the next starts at 100.
        let Next::Call(w) = r.decide(&outcome(nr::WRITE, 100, b"")) else {
            panic!()
        };
        assert_eq!(w.args[1], Arg::Bytes(data[100..4180].to_vec()));
        let (mut cur, mut at) = (w, 100);
        loop {
            let Arg::Bytes(b) = &cur.args[1] else {
                panic!("{cur:?}")
            };
            assert!(b.len() <= 4080 && *b == data[at..at + b.len()]);
            at += b.len();
            match r.decide(&outcome(nr::WRITE, b.len() as i64, b"")) {
                Next::Call(c) if c.nr == nr::WRITE => cur = c,
                Next::Call(c) => {
                    assert_eq!(c.nr, nr::FSYNC);
                    break;
                }
                n => panic!("{n:?}"),
            }
        }
        assert_eq!(at, data.len());
        assert!(
            matches!(r.decide(&outcome(nr::FSYNC, 0, b"")), Next::Call(c) if c.nr == nr::CLOSE)
        );
        assert_eq!(r.decide(&outcome(nr::CLOSE, 0, b"")), Next::Done);
    }

    #[test]
    fn steps_that_would_leave_the_thread_hijacked_are_refused() {
        for nr in [56, 57, 58, 59, 60, 231, 322, 435, 15] {
            assert!(refusal(&Syscall::new(nr, "x", vec![])).is_some(), "{nr}");
        }
        assert!(
            refusal(&Syscall::new(
                nr::READ,
                "read",
                vec![Arg::Out(1), Arg::Out(2)]
            ))
            .is_some()
        );
        assert!(refusal(&Syscall::new(nr::READ, "read", vec![Arg::Value(0); 7])).is_some());
        assert_eq!(refusal(&Syscall::new(nr::GETPID, "getpid", vec![])), None);
        // exec's clone with its child execve passes; a clone sharing memory, a child
        // other than execve, or a child on another call do not.
        let exec = Recipe::exec(vec!["/bin/true".into()], vec![], |_| {});
        assert_eq!(refusal(exec.first()), None);
        let mut shared = exec.first().clone();
        shared.args[0] = Arg::Value(CLONE_PARENT_SIGCHLD | 0x100);
        assert!(refusal(&shared).is_some());
        let mut not_exec = exec.first().clone();
        not_exec.child = Some(Box::new(Syscall::new(nr::GETPID, "getpid", vec![])));
        assert!(refusal(&not_exec).is_some());
        let mut on_read = Syscall::new(nr::READ, "read", vec![Arg::Value(0)]);
        on_read.child = exec.first().child.clone();
        assert!(refusal(&on_read).is_some());
    }

    #[test]
    fn errno_text_of_unknown_and_extreme_values() {
        assert_eq!(errno_text(-9999), "error 9999");
        assert_eq!(errno_text(i64::MIN), "error 0");
    }
}
