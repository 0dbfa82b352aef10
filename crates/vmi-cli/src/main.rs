//! `vmi`: introspect a running QEMU or a memory dump from the shell.
//!
//! ```text
//! vmi --target qemu:/path/qmp.sock ps        # a running QEMU, attached by its QMP socket
//! vmi --target libvirt:web1 ps               # a domain run by libvirtd, through libvirt
//! vmi --target guest.elf ps --json           # a dump (raw, ELF, kdump, LiME, Windows)
//! ```
//!
//! Exit codes: 0 success, 1 the command failed, 2 bad usage, 3 the target could not be
//! opened or its OS not recognised, 4 printed but incomplete, 130 `scan` stopped by Ctrl-C.
//! Errors are one sentence; `-v` adds the cause chain.
//! The JSON schemas of `--json` are documented in `docs/cli-json.md`.

#![forbid(unsafe_code)]

mod commands;
mod os;
mod output;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Look into a running VM or a memory dump.
#[derive(Parser, Debug)]
#[command(name = "vmi", version, about, propagate_version = true)]
pub struct Cli {
    /// What to introspect: `qemu:<QMP socket path>`, `libvirt:<domain>` (`libvirt+<URI>:<domain>`),
    /// or a dump file (format detected).
    #[arg(long, short = 't', global = true, env = "VMI_TARGET")]
    target: Option<String>,

    /// Print JSON (stable, documented schema) instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// Show the cause chain of errors.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,

    /// Kernel image for types (vmlinux with .BTF or a vmlinuz bzImage). Default: BTF read
    /// from guest memory.
    #[arg(long, global = true)]
    kernel: Option<PathBuf>,

    /// System.map for symbols. Default: kallsyms decoded from guest memory.
    #[arg(long, global = true)]
    system_map: Option<PathBuf>,

    /// A Volatility 3 ISF (JSON or .json.xz) to use as the profile.
    #[arg(long, global = true)]
    profile: Option<PathBuf>,

    /// Windows symbol path (`srv*CACHE*URL`), for Windows targets.
    #[arg(long, global = true)]
    symbol_path: Option<String>,

    /// Do not read or write the on-disk profile cache.
    #[arg(long, global = true)]
    no_cache: bool,

    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Target kind, architecture, vCPUs, paging, OS, kernel release, KASLR slide.
    Info,
    /// Processes: pid, ppid, uid, name, command line.
    Ps {
        /// Show the parent/child tree.
        #[arg(long)]
        tree: bool,
        /// Include kernel threads.
        #[arg(long, short = 'k')]
        kernel_threads: bool,
    },
    /// Threads of a process.
    Threads {
        /// Process id.
        pid: u32,
    },
    /// Loaded kernel modules.
    Modules,
    /// Memory regions (VMAs) of a process.
    Maps {
        /// Process id.
        pid: u32,
    },
    /// Open files of a process (on Windows: its handles, with types and names).
    #[command(alias = "handles")]
    Files {
        /// Process id.
        pid: u32,
    },
    /// Environment variables of a process (read from its user memory).
    Env {
        /// Process id.
        pid: u32,
    },
    /// The kernel log.
    Dmesg,
    /// Hexdump of guest memory.
    Read(ReadArgs),
    /// Translate a virtual address, showing each page-table level.
    Translate {
        /// Virtual address (hex with 0x, or decimal), or a kernel symbol.
        address: String,
        /// In this process's address space (default: the kernel's).
        #[arg(long)]
        pid: Option<u32>,
        /// In the address space with this page-table root.
        #[arg(long, conflicts_with = "pid")]
        cr3: Option<String>,
    },
    /// Scan memory with YARA rules: every process's regions (default), some processes,
    /// the kernel, or physical memory. One line (or JSON object) per string match.
    Scan(ScanArgs),
    /// Write an ELF core of the target (physical memory, CPU state, VMCOREINFO).
    Dump {
        /// Output file.
        out: PathBuf,
    },
    /// Break on a kernel function or address of a live target and print each hit.
    ///
    /// With `--syscall`, trace Linux system calls instead, with decoded arguments.
    Trace {
        /// Kernel symbol or address.
        #[arg(required_unless_present = "syscall", conflicts_with = "syscall")]
        location: Option<String>,
        /// Stop after this many hits (default: until Ctrl-C).
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Use a software breakpoint instead of a hardware one.
        #[arg(long)]
        software: bool,
        /// System calls to trace, by name (`openat,execve`).
        #[arg(long, value_delimiter = ',')]
        syscall: Vec<String>,
        /// Only system calls of this process.
        #[arg(long, requires = "syscall")]
        pid: Option<u32>,
        /// Report each call at its return, with its return value `ret`.
        #[arg(long = "return")]
        returns: bool,
    },
    /// Watch what happens in a live target, one line per event.
    #[command(subcommand)]
    Watch(WatchCommand),
    /// Run system calls inside a process of a live Linux guest (qemu: targets), through
    /// one of its threads, which is then restored exactly; no agent in the guest.
    Inject(InjectArgs),
    /// Profile operations.
    #[command(subcommand)]
    Profile(ProfileCommand),
}

/// `vmi watch` sub-commands.
#[derive(Subcommand, Debug)]
pub enum WatchCommand {
    /// Process and thread lifecycle (Linux): fork/clone, exec with file name and argv,
    /// exit with code or signal.
    Procs {
        /// Stop after this many events (default: until Ctrl-C).
        #[arg(long, short = 'n')]
        count: Option<u64>,
    },
}

/// `vmi inject` arguments.
#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The process to borrow a thread from.
    #[arg(long)]
    pid: u32,
    /// The thread to borrow (default: the process's main thread). A thread that rarely
    /// leaves the kernel, e.g. a server's main thread waiting for its workers, never
    /// reaches a safe point: pick one that runs (the error lists the others).
    #[arg(long)]
    tid: Option<u32>,
    /// Seconds to wait for the thread to return to user mode.
    #[arg(long, default_value = "10")]
    timeout: u64,
    /// Never map a buffer in the process: reads and writes larger than the few KiB of
    /// stack below the red zone then take one system call per few KiB instead of one per
    /// MiB (the buffer is a private anonymous mapping, unmapped before the thread is
    /// given back).
    #[arg(long)]
    no_buffer: bool,
    /// Allow commands that change the guest (`put`: the process creates or overwrites
    /// the file with its own rights; `exec`: it starts a program): the change stays.
    #[arg(long)]
    allow_write: bool,
    /// What to run.
    #[command(subcommand)]
    what: InjectCommand,
}

/// `vmi inject` sub-commands.
#[derive(Subcommand, Debug)]
pub enum InjectCommand {
    /// Print a guest file's bytes (openat, read until 0, close).
    Cat {
        /// The file, as the process would open it (relative to its working directory).
        path: String,
        /// Stop with an error after this many bytes.
        #[arg(long, default_value = "268435456")]
        max_bytes: u64,
    },
    /// Copy a local file into the guest (creates or truncates GUEST_PATH, mode 0644 minus
    /// the process's umask); needs --allow-write.
    Put {
        /// The local file (at most 256 MiB).
        local: PathBuf,
        /// The guest file, as the process would open it.
        path: String,
    },
    /// Start a program in the guest: the process makes a sibling (clone with
    /// CLONE_PARENT) that runs execve(CMD[0], CMD, ENV); prints the new pid. Needs
    /// --allow-write.
    Exec {
        /// Environment of the new program, `NAME=VALUE` (repeat); default `PATH` only.
        #[arg(long = "env")]
        env: Vec<String>,
        /// The program (a path: no PATH search) and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Call a function that the process's program or one of its libraries exports,
    /// `[OBJECT:]SYMBOL` (`libc.so.6:getpid`, `libc:strlen`, or `getpid` to search every
    /// object in mapping order), with up to six arguments: integers (decimal, or hex with
    /// 0x) as values, anything else as a NUL-terminated string placed in the process's
    /// memory (`str:TEXT` for text that looks like a number); prints the return value
    /// (`rax`, signed). A GNU indirect function (glibc's `strlen`) is resolved by calling
    /// its resolver first. Call only what a signal handler could (the thread is borrowed
    /// wherever it was). Needs --allow-write: a function may change anything.
    Call {
        /// `[OBJECT:]SYMBOL`.
        function: String,
        /// The arguments.
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Copy a guest file to a local file (removed again if the copy fails).
    Get {
        /// The guest file, as the process would open it.
        path: String,
        /// The local file to write.
        local: PathBuf,
        /// Stop with an error after this many bytes.
        #[arg(long, default_value = "268435456")]
        max_bytes: u64,
    },
}

/// `vmi read` arguments.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Address (hex with 0x, or decimal), or a kernel symbol.
    address: String,
    /// Number of bytes (default 256, at most 16 MiB).
    #[arg(default_value = "256")]
    len: String,
    /// Virtual address in this process's address space.
    #[arg(long, conflicts_with_all = ["cr3", "phys"])]
    pid: Option<u32>,
    /// Virtual address in the address space with this page-table root.
    #[arg(long, conflicts_with = "phys")]
    cr3: Option<String>,
    /// The address is physical.
    #[arg(long)]
    phys: bool,
}

/// `vmi scan` arguments.
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// YARA rules file (source text, compiled once).
    #[arg(long)]
    rules: PathBuf,
    /// Only these processes (repeat, or comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["kernel_space", "physical"])]
    pid: Vec<u32>,
    /// The kernel: its image (`_text`..`_end` on Linux) and every loaded module.
    #[arg(long, conflicts_with = "physical")]
    kernel_space: bool,
    /// All of physical memory.
    #[arg(long)]
    physical: bool,
    /// Worker threads (default: one per CPU).
    #[arg(long, default_value = "0")]
    threads: usize,
    /// Matches shown per rule; the rest are counted and reported on stderr (and, with
    /// `--json`, in a closing `truncated` object per rule). 0 shows every match.
    #[arg(long, default_value_t = commands::scan::DEFAULT_MAX_MATCHES, value_name = "N")]
    max_matches: u64,
}

/// `vmi profile` sub-commands.
#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Export the target's profile.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "isf")]
        format: ProfileFormat,
        /// Output file (`.json` or `.json.xz`... written as plain JSON).
        out: PathBuf,
    },
}

/// Profile export formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProfileFormat {
    /// Volatility 3 Intermediate Symbol Format (JSON).
    Isf,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// The error.
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

/// Exit code when the target cannot be opened or understood.
pub const EXIT_TARGET: u8 = 3;

fn main() -> ExitCode {
    // A bug must still end in one sentence, not a Rust panic dump.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error in vmi ({what}); please report it");
    }));
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { error, .. })
            if error.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            // The reader went away (`vmi ps | head`): not an error.
            ExitCode::SUCCESS
        }
        Err(Failure { code, error }) => {
            // One line: what failed and, after a colon, the innermost cause.
            match error
                .chain()
                .last()
                .filter(|_| error.chain().nth(1).is_some())
            {
                Some(root) if !verbose => eprintln!("error: {error}: {root}"),
                _ => eprintln!("error: {error}"),
            }
            if verbose {
                for cause in error.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::from(code)
        }
    }
}
