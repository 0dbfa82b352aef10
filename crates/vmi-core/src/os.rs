//! The OS-layer trait and the OS-agnostic objects it returns.
//!
//! The objects carry what every OS has as typed fields, and what only one OS has as
//! [`OsAttribute`]s (named values, for display: the CLI prints them without knowing the
//! OS); the OS layers' own types (`LinuxTask`, `WinProcess`, ...) stay the rich API.

use std::fmt;
use std::path::Path;

use crate::{Pa, RegistersOf, Va, VmiCore, VmiError, VmiRead};

/// A value of an OS-specific attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OsValue {
    /// Nothing (not known, or absent).
    Null,
    /// A flag.
    Bool(bool),
    /// A count, an id, a size.
    Number(u64),
    /// An address or a bit mask, shown in hex.
    Hex(u64),
    /// Text.
    Text(String),
    /// Several values.
    List(Vec<OsValue>),
}

impl From<Option<String>> for OsValue {
    fn from(v: Option<String>) -> Self {
        v.map_or(OsValue::Null, OsValue::Text)
    }
}

impl fmt::Display for OsValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OsValue::Null => Ok(()),
            OsValue::Bool(b) => write!(f, "{b}"),
            OsValue::Number(n) => write!(f, "{n}"),
            OsValue::Hex(n) => write!(f, "{n:#x}"),
            OsValue::Text(t) => f.write_str(t),
            OsValue::List(l) => {
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                Ok(())
            }
        }
    }
}

/// The kinds of objects [`VmiOs`] returns (see [`VmiOs::attribute_columns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OsObjectKind {
    /// [`OsProcess`].
    Process,
    /// [`OsThread`].
    Thread,
    /// [`OsModule`].
    Module,
    /// [`OsRegion`].
    Region,
    /// [`OsHandle`].
    Handle,
}

/// An OS-specific property of an object (a Linux VMA's device, a Windows thread's TEB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsAttribute {
    /// Its name (a JSON key: lower case, `_` between words).
    pub key: &'static str,
    /// The column header when tables show it, `None` when only detailed output does
    /// (the same text as in [`VmiOs::attribute_columns`], without its `>`).
    pub column: Option<&'static str>,
    /// Its value.
    pub value: OsValue,
}

impl OsAttribute {
    /// An attribute shown only in detailed output.
    pub fn new(key: &'static str, value: OsValue) -> Self {
        Self {
            key,
            column: None,
            value,
        }
    }

    /// An attribute also shown as a table column with this header.
    pub fn column(key: &'static str, column: &'static str, value: OsValue) -> Self {
        Self {
            key,
            column: Some(column),
            value,
        }
    }
}

/// What a walk of guest lists or trees found: every object it could read, and what it
/// had to skip (the address of each object or broken link, and why). An OS layer returns
/// an error instead of an empty listing when it read nothing and skipped something.
#[derive(Debug)]
pub struct OsListing<T> {
    /// The objects read, in walk order.
    pub items: Vec<T>,
    /// What was skipped, and why.
    pub skipped: Vec<(Va, VmiError)>,
}

impl<T> OsListing<T> {
    /// A listing with nothing skipped.
    pub fn complete(items: Vec<T>) -> Self {
        Self {
            items,
            skipped: Vec::new(),
        }
    }
}

/// A process's command line, one type for every OS: Linux keeps the arguments apart
/// (`argv`), Windows keeps one string the program splits itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandLine {
    /// The arguments as the program received them.
    Argv(Vec<String>),
    /// One string.
    Text(String),
}

impl CommandLine {
    /// The arguments: `Argv` as is, `Text` as one argument (none when empty).
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Argv(a) => a.clone(),
            CommandLine::Text(t) if t.is_empty() => Vec::new(),
            CommandLine::Text(t) => vec![t.clone()],
        }
    }

    /// Whether there is no command line (kernel threads, zombies, system processes).
    pub fn is_empty(&self) -> bool {
        match self {
            CommandLine::Argv(a) => a.is_empty(),
            CommandLine::Text(t) => t.is_empty(),
        }
    }
}

impl fmt::Display for CommandLine {
    /// The arguments joined by spaces (as `ps` prints them), or the text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLine::Argv(a) => f.write_str(&a.join(" ")),
            CommandLine::Text(t) => f.write_str(t),
        }
    }
}

/// A process (Linux thread-group leader, Windows `EPROCESS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsProcess {
    /// Process id.
    pub pid: u64,
    /// Parent's process id.
    pub ppid: u64,
    /// Short name (`comm` on Linux, `ImageFileName` on Windows).
    pub name: String,
    /// Address of the kernel object describing it.
    pub object: Va,
    /// Page-table root of its address space (`None` for kernel threads).
    pub translation_root: Option<Pa>,
    /// Whether it is a kernel thread / system process without user space.
    pub is_kernel: bool,
    /// Real user id, where the OS has numeric ones (Linux).
    pub uid: Option<u32>,
    /// Real group id, where the OS has numeric ones (Linux).
    pub gid: Option<u32>,
    /// The run state as one letter, as `ps` prints it (Linux `R`, `S`, `Z`...; Windows
    /// `R`, or `X` once exited).
    pub state: Option<char>,
    /// Start time in nanoseconds: on Linux since boot, on Windows since 1601-01-01
    /// (`CreateTime`, a FILETIME, × 100).
    pub start_time_ns: Option<u64>,
    /// The pid in the process's own PID namespace, where the OS has them (Linux; differs
    /// from `pid` inside a container).
    pub namespace_pid: Option<u64>,
    /// What could not be read of this process (other fields are then incomplete).
    pub problems: Vec<String>,
    /// OS-specific properties.
    pub attributes: Vec<OsAttribute>,
}

/// The namespaces of a process, where the OS has them (Linux).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsNamespaces {
    /// Inode number of its PID namespace (as in `pid:[N]`).
    pub pid_namespace: Option<u64>,
    /// The host name of its UTS namespace.
    pub hostname: Option<String>,
}

/// A thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsThread {
    /// Thread id.
    pub tid: u64,
    /// Owning process id.
    pub pid: u64,
    /// Address of the kernel object describing it.
    pub object: Va,
    /// Its name, where the OS keeps one.
    pub name: Option<String>,
    /// The run state as one letter, where the OS layer reads one.
    pub state: Option<char>,
    /// OS-specific properties.
    pub attributes: Vec<OsAttribute>,
}

/// A loaded kernel module or driver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsModule {
    /// Name.
    pub name: String,
    /// Load address.
    pub base: Va,
    /// Size in bytes.
    pub size: u64,
    /// Full path where the OS records one.
    pub path: Option<String>,
    /// Its state (`Live`, `Loading`, `Unloading`).
    pub state: Option<&'static str>,
    /// OS-specific properties.
    pub attributes: Vec<OsAttribute>,
}

/// Access rights of a memory region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionProtection {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

impl fmt::Display for RegionProtection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on, ch| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.execute, 'x')
        )
    }
}

/// A region of a process's address space (Linux VMA, Windows VAD).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsRegion {
    /// First address.
    pub start: Va,
    /// One past the last address.
    pub end: Va,
    /// Access rights.
    pub protection: RegionProtection,
    /// Backing file path, for file-backed regions.
    pub path: Option<String>,
    /// Shared between address spaces (`s` in `/proc/PID/maps`), else private (`p`).
    pub shared: bool,
    /// Offset in the backing file (0 when anonymous or unknown).
    pub offset: u64,
    /// The OS's own flags (Linux `vm_flags`, Windows the MM protection index).
    pub flags: u64,
    /// What to call it: the path, or a name such as `[heap]`, `[stack]`, `[vdso]`.
    pub name: Option<String>,
    /// Address of the kernel object describing it.
    pub object: Va,
    /// OS-specific properties.
    pub attributes: Vec<OsAttribute>,
}

impl OsRegion {
    /// Rights and sharing as `/proc/PID/maps` prints them (`r-xp`).
    pub fn perms(&self) -> String {
        format!("{}{}", self.protection, if self.shared { 's' } else { 'p' })
    }
}

/// An open file or handle of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsHandle {
    /// The number the process uses (Linux file descriptor, Windows handle value).
    pub id: u64,
    /// Address of the kernel object (`struct file`, the object body).
    pub object: Va,
    /// What it refers to, as the OS names it (`readlink /proc/PID/fd/N`, an object name).
    pub path: Option<String>,
    /// Why the name could not be read, if it could not.
    pub error: Option<String>,
    /// OS-specific properties.
    pub attributes: Vec<OsAttribute>,
}

/// One kernel log record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsLogRecord {
    /// Sequence number.
    pub seq: u64,
    /// Timestamp (nanoseconds since boot).
    pub ts_nsec: u64,
    /// The message text (lines separated by `\n`).
    pub text: String,
}

impl OsLogRecord {
    /// The lines as `dmesg` prints them: `[    1.234567] text`, the timestamp repeated
    /// on each line of a multi-line record.
    pub fn lines(&self) -> Vec<String> {
        log_lines(self.ts_nsec, &self.text)
    }
}

/// A kernel log record's lines as `dmesg` prints them: `[    1.234567] text`, the
/// timestamp (nanoseconds since boot) repeated on each line of a multi-line text.
pub fn log_lines(ts_nsec: u64, text: &str) -> Vec<String> {
    let prefix = format!(
        "[{:5}.{:06}] ",
        ts_nsec / 1_000_000_000,
        (ts_nsec % 1_000_000_000) / 1000
    );
    text.split('\n').map(|l| format!("{prefix}{l}")).collect()
}

/// What an OS layer knows how to find.
///
/// Every method has a default that returns [`VmiError::NotSupported`] naming the
/// operation, except the ones every OS layer must provide. OS layers add their own,
/// richer operations on their concrete type.
pub trait VmiOs<D: VmiRead>: Send + Sync {
    /// Short name of the OS layer (`"linux"`, `"windows"`).
    fn name(&self) -> &'static str;

    /// Where the kernel image starts in virtual memory.
    fn kernel_image_base(&self, core: &VmiCore<D>) -> Result<Va, VmiError>;

    /// A human-readable kernel version (Linux banner, Windows build).
    fn kernel_information_string(&self, core: &VmiCore<D>) -> Result<String, VmiError>;

    /// Every process.
    fn processes(&self, core: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError>;

    /// One process by id.
    fn process(&self, core: &VmiCore<D>, pid: u64) -> Result<OsProcess, VmiError> {
        self.processes(core)?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| VmiError::NotFound {
                kind: "process",
                name: pid.to_string(),
            })
    }

    /// The threads of a process.
    fn threads(&self, _core: &VmiCore<D>, _pid: u64) -> Result<Vec<OsThread>, VmiError> {
        Err(VmiError::not_supported("listing threads", self.name()))
    }

    /// Loaded kernel modules.
    fn modules(&self, _core: &VmiCore<D>) -> Result<Vec<OsModule>, VmiError> {
        Err(VmiError::not_supported(
            "listing kernel modules",
            self.name(),
        ))
    }

    /// Memory regions of a process.
    fn memory_regions(&self, _core: &VmiCore<D>, _pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        Err(VmiError::not_supported(
            "listing memory regions",
            self.name(),
        ))
    }

    /// The process running on the vCPU whose registers are given.
    fn current_process(
        &self,
        _core: &VmiCore<D>,
        _registers: &RegistersOf<D>,
    ) -> Result<OsProcess, VmiError> {
        Err(VmiError::not_supported(
            "finding the current process",
            self.name(),
        ))
    }

    /// The thread running on the vCPU whose registers are given.
    fn current_thread(
        &self,
        _core: &VmiCore<D>,
        _registers: &RegistersOf<D>,
    ) -> Result<OsThread, VmiError> {
        Err(VmiError::not_supported(
            "finding the current thread",
            self.name(),
        ))
    }

    /// The first `count` system-call arguments at a system-call entry.
    fn syscall_arguments(
        &self,
        _core: &VmiCore<D>,
        _registers: &RegistersOf<D>,
        _count: usize,
    ) -> Result<Vec<u64>, VmiError> {
        Err(VmiError::not_supported(
            "reading system-call arguments",
            self.name(),
        ))
    }

    /// Every process, and the ones that could not be read. The default lists
    /// [`processes`](Self::processes) with nothing skipped.
    fn process_list(&self, core: &VmiCore<D>) -> Result<OsListing<OsProcess>, VmiError> {
        self.processes(core).map(OsListing::complete)
    }

    /// The command line of a process (empty for kernel threads and zombies).
    fn process_cmdline(
        &self,
        _core: &VmiCore<D>,
        _process: &OsProcess,
    ) -> Result<CommandLine, VmiError> {
        Err(VmiError::not_supported(
            "reading command lines",
            self.name(),
        ))
    }

    /// The path of a process's executable, `None` when it has none (kernel threads).
    fn process_image_path(
        &self,
        _core: &VmiCore<D>,
        _process: &OsProcess,
    ) -> Result<Option<String>, VmiError> {
        Err(VmiError::not_supported(
            "reading executable paths",
            self.name(),
        ))
    }

    /// The environment of a process: each variable's name and value (`None` for an
    /// entry without `=`), in the process's order.
    fn process_environment(
        &self,
        _core: &VmiCore<D>,
        _process: &OsProcess,
    ) -> Result<Vec<(String, Option<String>)>, VmiError> {
        Err(VmiError::not_supported("reading environments", self.name()))
    }

    /// The namespaces of a process, on an OS that has them.
    fn process_namespaces(
        &self,
        _core: &VmiCore<D>,
        _process: &OsProcess,
    ) -> Result<OsNamespaces, VmiError> {
        Err(VmiError::not_supported("reading namespaces", self.name()))
    }

    /// The threads of a process, and the ones that could not be read. The default lists
    /// [`threads`](Self::threads) with nothing skipped.
    fn thread_list(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsThread>, VmiError> {
        self.threads(core, process.pid).map(OsListing::complete)
    }

    /// Loaded kernel modules, and the ones that could not be read. The default lists
    /// [`modules`](Self::modules) with nothing skipped.
    fn module_list(&self, core: &VmiCore<D>) -> Result<OsListing<OsModule>, VmiError> {
        self.modules(core).map(OsListing::complete)
    }

    /// Memory regions of a process, and the ones that could not be read. The default
    /// lists [`memory_regions`](Self::memory_regions) with nothing skipped.
    fn memory_region_list(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsRegion>, VmiError> {
        self.memory_regions(core, process.pid)
            .map(OsListing::complete)
    }

    /// Open files (Linux) or handles (Windows) of a process.
    fn handles(
        &self,
        _core: &VmiCore<D>,
        _process: &OsProcess,
    ) -> Result<OsListing<OsHandle>, VmiError> {
        Err(VmiError::not_supported(
            "listing open files and handles",
            self.name(),
        ))
    }

    /// The kernel log, oldest record first, on an OS that keeps one in memory.
    fn kernel_log(&self, _core: &VmiCore<D>) -> Result<Vec<OsLogRecord>, VmiError> {
        Err(VmiError::not_supported(
            "reading the kernel log",
            self.name(),
        ))
    }

    /// The run-time address of a kernel symbol.
    fn kernel_symbol(&self, _core: &VmiCore<D>, name: &str) -> Result<Va, VmiError> {
        Err(VmiError::NotFound {
            kind: "kernel symbol",
            name: name.to_owned(),
        })
    }

    /// The page-table root of the kernel's address space.
    fn kernel_translation_root(&self, _core: &VmiCore<D>) -> Result<Pa, VmiError> {
        Err(VmiError::not_supported(
            "finding the kernel address space",
            self.name(),
        ))
    }

    /// The table columns of the attributes this layer puts on objects of `kind`, in the
    /// order they come: lets a caller lay out a table that has no row yet. A header that
    /// starts with `>` is a right-aligned (numeric) column.
    fn attribute_columns(&self, _kind: OsObjectKind) -> Vec<&'static str> {
        Vec::new()
    }

    /// What the OS layer found about the kernel, for display (`kernel_release`,
    /// `kernel_base`, `kaslr_slide`...), in display order.
    fn kernel_facts(&self, _core: &VmiCore<D>) -> Vec<OsAttribute> {
        Vec::new()
    }

    /// The text an ELF core of this guest should carry for other tools to find the
    /// kernel (Linux: the `VMCOREINFO` note), if any.
    fn crash_dump_note(&self) -> Option<String> {
        None
    }

    /// Writes the profile in use as a Volatility 3 ISF.
    fn export_profile(&self, _path: &Path) -> Result<(), VmiError> {
        Err(VmiError::not_supported(
            "exporting the profile",
            self.name(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_of_both_kinds() {
        let argv = CommandLine::Argv(vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()]);
        assert_eq!(argv.to_string(), "/bin/sh -c sleep 1");
        assert_eq!(argv.argv().len(), 3);
        let text = CommandLine::Text(r#""C:\a b.exe" /x"#.into());
        assert_eq!(text.argv(), vec![r#""C:\a b.exe" /x"#.to_owned()]);
        assert!(CommandLine::Text(String::new()).argv().is_empty());
        assert!(CommandLine::Argv(Vec::new()).is_empty());
    }

    #[test]
    fn values_print_as_tables_show_them() {
        assert_eq!(OsValue::Hex(0x1f0003).to_string(), "0x1f0003");
        assert_eq!(OsValue::Null.to_string(), "");
        let l = OsValue::List(vec![OsValue::Number(1), OsValue::Number(42)]);
        assert_eq!(l.to_string(), "1,42");
        assert_eq!(OsValue::from(None::<String>), OsValue::Null);
    }

    #[test]
    fn region_perms_and_log_lines() {
        let r = OsRegion {
            protection: RegionProtection {
                read: true,
                write: false,
                execute: true,
            },
            shared: true,
            ..OsRegion::default()
        };
        assert_eq!(r.perms(), "r-xs");
        let rec = OsLogRecord {
            seq: 7,
            ts_nsec: 1_234_567_890,
            text: "a\nb".into(),
        };
        assert_eq!(rec.lines(), ["[    1.234567] a", "[    1.234567] b"]);
    }
}
