//! The OS-layer trait and the OS-agnostic objects it returns.

use std::fmt;

use crate::{Pa, RegistersOf, Va, VmiCore, VmiError, VmiRead};

/// A process (Linux thread-group leader, Windows `EPROCESS`).
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// A thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsThread {
    /// Thread id.
    pub tid: u64,
    /// Owning process id.
    pub pid: u64,
    /// Address of the kernel object describing it.
    pub object: Va,
    /// Its name, where the OS keeps one.
    pub name: Option<String>,
}

/// A loaded kernel module or driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsModule {
    /// Name.
    pub name: String,
    /// Load address.
    pub base: Va,
    /// Size in bytes.
    pub size: u64,
    /// Full path where the OS records one.
    pub path: Option<String>,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsRegion {
    /// First address.
    pub start: Va,
    /// One past the last address.
    pub end: Va,
    /// Access rights.
    pub protection: RegionProtection,
    /// Backing file path, for file-backed regions.
    pub path: Option<String>,
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
}
