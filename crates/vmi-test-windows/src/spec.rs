//! The declarative guest description and the manifest (ground truth) it produces.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a reader without registers can find the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Windows 7 style fixed mapping before 8, low stub after.
    #[default]
    Auto,
    /// x64 `PROCESSOR_START_BLOCK` at physical 0x1000.
    LowStub,
    /// Kernel VA = PA + 0xFFFFF80000000000.
    Fixed,
    /// Nothing but the image itself (RSDS scan).
    Scan,
}

/// Build options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// PRNG seed: self-ref index, cookie, KASLR bases, user bases.
    pub seed: u64,
    /// RAM size in bytes.
    pub size: u64,
    /// Fill unused frames with PRNG bytes from this seed.
    pub noise: Option<u64>,
    /// Map the kernel image with 2 MiB pages.
    pub large_pages: bool,
    /// PCID bits ORed into user processes' `DirectoryTableBase` and CR3.
    pub pcid: u64,
    /// Extra named events in the target's handle table (> 254 gives a level-1 table).
    pub extra_handles: usize,
    /// Kernel discovery aid.
    pub discovery: Discovery,
    /// Write a plain (decoded) `KDDEBUGGER_DATA64`.
    pub kdbg: bool,
    /// PML4 self-reference index (default: 0x1ED before 1607, random after).
    pub selfref: Option<u64>,
    /// Physical address of the System PML4.
    pub dtb: Option<u64>,
    /// KVA shadow: vCPU 0's CR3 is the current process's *user* PML4, which maps the user
    /// half plus only the system-call entry page, the IDT and the KPCR of the kernel half
    /// (no kernel image header, no self-reference).
    #[serde(default)]
    pub kva_shadow: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 1,
            size: 64 << 20,
            noise: None,
            large_pages: false,
            pcid: 0,
            extra_handles: 0,
            discovery: Discovery::Auto,
            kdbg: false,
            selfref: None,
            dtb: None,
            kva_shadow: false,
        }
    }
}

/// A handle a process holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandleSpec {
    /// A named event.
    Event(String),
    /// A named mutant.
    Mutant(String),
    /// A file on `\Device\HarddiskVolume3`, path given from the volume root.
    File(String),
    /// Another process, by pid.
    Process(u64),
    /// A thread: pid and index in that process's threads.
    Thread(u64, usize),
}

/// One process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// `ImageFileName` (15 bytes at most are stored).
    pub name: String,
    /// Process id.
    pub pid: u64,
    /// Parent process id.
    pub ppid: u64,
    /// Session id (`None`: no session, like System and smss).
    pub session: Option<u32>,
    /// Seconds after boot it was created.
    pub create_s: u64,
    /// Win32 image path (`None` for the kernel-only System process).
    pub image: Option<String>,
    /// Command line.
    pub cmdline: String,
    /// DLLs: (base name, full path); ntdll first.
    pub dlls: Vec<(String, String)>,
    /// Number of threads.
    pub threads: usize,
    /// Extra environment variables (after SystemRoot and ComSpec).
    pub env: Vec<(String, String)>,
    /// Handles.
    pub handles: Vec<HandleSpec>,
}

/// A kernel module besides ntoskrnl: base name, full path, size.
pub type ModuleSpec = (String, String, u64);

/// The whole guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSpec {
    /// Processes; the first must be System (pid 4, no image).
    pub processes: Vec<ProcessSpec>,
    /// Drivers after ntoskrnl.exe.
    pub kernel_modules: Vec<ModuleSpec>,
    /// Options.
    pub options: Options,
}

fn s(x: &str) -> String {
    x.to_owned()
}

impl GuestSpec {
    /// The prototype's scenario: System, smss.exe, csrss.exe and vmi_target.exe.
    pub fn default_scenario() -> Self {
        let win = "C:\\Windows\\System32\\";
        let dll = |n: &str| (s(n), format!("{win}{n}"));
        let proc_ = |name: &str, pid, ppid, session, create_s| ProcessSpec {
            name: s(name),
            pid,
            ppid,
            session,
            create_s,
            image: None,
            cmdline: String::new(),
            dlls: vec![],
            threads: 1,
            env: vec![],
            handles: vec![],
        };
        let mut system = proc_("System", 4, 0, None, 0);
        system.threads = 2;
        system.handles = vec![HandleSpec::Process(340)];
        let mut smss = proc_("smss.exe", 340, 4, None, 2);
        smss.image = Some(format!("{win}smss.exe"));
        smss.cmdline = s("\\SystemRoot\\System32\\smss.exe");
        smss.dlls = vec![dll("ntdll.dll")];
        let mut csrss = proc_("csrss.exe", 436, 424, Some(0), 5);
        csrss.image = Some(format!("{win}csrss.exe"));
        csrss.cmdline = s("%SystemRoot%\\system32\\csrss.exe ObjectDirectory=\\Windows");
        csrss.dlls = vec![dll("ntdll.dll"), dll("CSRSRV.dll")];
        csrss.handles = vec![HandleSpec::Process(4244)];
        let mut target = proc_("vmi_target.exe", 4244, 436, Some(1), 600);
        target.image = Some(s("C:\\vmi\\vmi_target.exe"));
        target.cmdline = s("\"C:\\vmi\\vmi_target.exe\" --wait");
        target.dlls = vec![dll("ntdll.dll"), dll("KERNEL32.DLL"), dll("KERNELBASE.dll")];
        target.threads = 2;
        target.env = vec![
            (s("VMI_MARKER"), s("synthetic-guest")),
            (s("Path"), s("C:\\Windows")),
        ];
        target.handles = vec![
            HandleSpec::Event(s("VmiTestEvent")),
            HandleSpec::Mutant(s("VmiTestMutant")),
            HandleSpec::File(s("\\vmi\\data.bin")),
            HandleSpec::Process(436),
            HandleSpec::Thread(4244, 0),
        ];
        let sr = "\\SystemRoot\\system32\\";
        Self {
            processes: vec![system, smss, csrss, target],
            kernel_modules: vec![
                (s("hal.dll"), format!("{sr}hal.dll"), 0x64000),
                (s("kdcom.dll"), format!("{sr}kdcom.dll"), 0xB000),
                (
                    s("vmi_drv.sys"),
                    s("\\SystemRoot\\System32\\drivers\\vmi_drv.sys"),
                    0x9000,
                ),
            ],
            options: Options::default(),
        }
    }

    /// The default scenario with other options.
    pub fn with_options(options: Options) -> Self {
        Self {
            options,
            ..Self::default_scenario()
        }
    }
}

/// Ground truth about the kernel image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelTruth {
    /// Image base.
    pub base: u64,
    /// SizeOfImage.
    pub size: u64,
    /// Physical address of the image.
    pub pa: u64,
    /// System DTB.
    pub dtb: u64,
    /// PML4 self-reference index.
    pub selfref_index: u64,
    /// PTE base derived from it.
    pub pte_base: u64,
    /// Discovery aid planted.
    pub discovery: Discovery,
    /// PDB GUID.
    pub guid: String,
    /// PDB age.
    pub age: u32,
    /// RVA of the debug directory.
    pub debug_rva: u64,
    /// Exports (name → VA).
    pub exports: BTreeMap<String, u64>,
    /// KDBG VA when planted.
    pub kdbg: Option<u64>,
    /// Low-stub `LmTarget` when planted.
    pub low_stub_target: Option<u64>,
    /// `ObHeaderCookie` (10+).
    pub cookie: Option<u8>,
}

/// vCPU 0 registers of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuTruth {
    /// CR3 (with PCID bits when asked; the user PML4 under KVA shadow).
    pub cr3: u64,
    /// The kernel CR3 of the current process (equal to `cr3` without KVA shadow).
    #[serde(default)]
    pub kernel_cr3: u64,
    /// CR0.
    pub cr0: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// IA32_LSTAR (`KiSystemCall64`).
    pub lstar: u64,
    /// GS base (KPCR).
    pub gs_base: u64,
    /// Kernel GS base (the current thread's TEB).
    pub kernel_gs_base: u64,
    /// IDTR base.
    pub idtr_base: u64,
    /// IDTR limit.
    pub idtr_limit: u16,
    /// GDTR base.
    pub gdtr_base: u64,
    /// GDTR limit.
    pub gdtr_limit: u16,
    /// KPCR.
    pub kpcr: u64,
    /// KPRCB.
    pub kprcb: u64,
    /// `KPRCB.CurrentThread`.
    pub current_thread: u64,
    /// IDT vectors whose handler is a named Ki* routine.
    pub idt_known_vectors: BTreeMap<u8, u64>,
}

/// A kernel module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleTruth {
    /// Base name.
    pub name: String,
    /// Full path.
    pub path: String,
    /// Base.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// Loader entry VA.
    pub entry: u64,
    /// CodeView PDB name (user modules and drivers).
    pub pdb: Option<String>,
    /// CodeView GUID.
    pub guid: Option<String>,
}

/// A thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTruth {
    /// Thread id.
    pub tid: u64,
    /// ETHREAD VA.
    pub ethread: u64,
    /// TEB (0 for kernel threads).
    pub teb: u64,
    /// User stack (low, high) or zeros.
    pub stack: (u64, u64),
    /// StartAddress.
    pub start: u64,
    /// Win32StartAddress.
    pub win32start: u64,
    /// CreateTime.
    pub create_time: u64,
}

/// A VAD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VadTruth {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// Pool tag.
    pub tag: String,
    /// MM protection index (0..31).
    pub protection: u32,
    /// PrivateMemory.
    pub private: bool,
    /// Backing file (Win32 path) for image VADs.
    pub file: Option<String>,
    /// CommitCharge.
    pub commit: u64,
    /// Node VA.
    pub va: u64,
    /// Parent node VA (0 for the root).
    pub parent: u64,
}

/// A handle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleTruth {
    /// Handle value.
    pub handle: u64,
    /// Object type name.
    pub type_name: String,
    /// Object body VA.
    pub object: u64,
    /// Granted access.
    pub access: u32,
    /// Display name as Volatility prints it.
    pub name: String,
}

/// A page in a special PTE state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialPage {
    /// VA.
    pub va: u64,
    /// `present`, `transition`, `pagefile` or `demand_zero`.
    pub state: String,
    /// Frame for present/transition.
    pub pa: Option<u64>,
    /// Marker text at the page start (readable pages).
    pub marker: Option<String>,
    /// Page-file offset (pagefile pages).
    pub pagefile_offset: Option<u64>,
}

/// A user module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserModuleTruth {
    /// Base name.
    pub name: String,
    /// Full path.
    pub path: String,
    /// Base.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// CodeView PDB name.
    pub pdb: String,
    /// CodeView GUID.
    pub guid: String,
    /// CodeView age.
    pub age: u32,
    /// `_LDR_DATA_TABLE_ENTRY` VA.
    pub ldr_entry: u64,
    /// In InInitializationOrderModuleList.
    pub in_init: bool,
    /// LoadTime.
    pub load_time: u64,
}

/// A process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessTruth {
    /// ImageFileName as stored.
    pub name: String,
    /// Pid.
    pub pid: u64,
    /// Parent pid.
    pub ppid: u64,
    /// EPROCESS VA.
    pub eprocess: u64,
    /// EPROCESS PA.
    pub eprocess_pa: u64,
    /// PML4 PA.
    pub dtb: u64,
    /// Raw `DirectoryTableBase` (with PCID bits).
    pub directory_table_base: u64,
    /// Session id.
    pub session: Option<u32>,
    /// CreateTime (FILETIME).
    pub create_time: u64,
    /// Has user space.
    pub user: bool,
    /// `_TOKEN` VA.
    pub token: u64,
    /// SIDs, user first.
    pub sids: Vec<String>,
    /// Privileges.Present.
    pub privileges_present: u64,
    /// Privileges.Enabled.
    pub privileges_enabled: u64,
    /// Win32 image path.
    pub image_path: Option<String>,
    /// NT image path (`SeAuditProcessCreationInfo`).
    pub nt_image_path: Option<String>,
    /// Command line.
    pub cmdline: Option<String>,
    /// Environment, in block order.
    pub env: Vec<(String, String)>,
    /// PEB VA (0 for System).
    pub peb: u64,
    /// Threads.
    pub threads: Vec<ThreadTruth>,
    /// Modules, load order.
    pub modules: Vec<UserModuleTruth>,
    /// VADs by address.
    pub vads: Vec<VadTruth>,
    /// Handles.
    pub handles: Vec<HandleTruth>,
    /// 0 or 1.
    pub handle_table_levels: u8,
    /// Pages in special PTE states.
    pub special_pages: Vec<SpecialPage>,
}

/// The ground truth of one image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `<GUID>-<age>` of the ISF.
    pub isf: String,
    /// PDB name.
    pub pdb_name: String,
    /// `major.minor.build`.
    pub nt_version: String,
    /// Build label.
    pub label: String,
    /// Kernel.
    pub kernel: KernelTruth,
    /// KUSER_SHARED_DATA physical frame.
    pub kuser_pa: u64,
    /// Physical runs (start, length) in bytes.
    pub physical_runs: Vec<(u64, u64)>,
    /// Selected kernel symbol VAs.
    pub symbols: BTreeMap<String, u64>,
    /// vCPU 0.
    pub vcpu0: VcpuTruth,
    /// Kernel modules in load order.
    pub kernel_modules: Vec<ModuleTruth>,
    /// Processes in list order.
    pub processes: Vec<ProcessTruth>,
    /// Options used.
    pub options: Option<Options>,
}

impl Manifest {
    /// The process with `pid`.
    pub fn process(&self, pid: u64) -> Option<&ProcessTruth> {
        self.processes.iter().find(|p| p.pid == pid)
    }
}
