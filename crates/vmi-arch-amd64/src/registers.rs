//! AMD64 vCPU registers.

use vmi_core::{Pa, Va};

/// CR3: the page-table root plus flags (PCID in bits 0–11 when CR4.PCIDE is set, the
/// no-flush bit 63).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cr3(pub u64);

impl Cr3 {
    /// Physical address bits of the root table (bits 12–51).
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

    /// The page-table root, with PCID and flag bits masked off.
    pub fn root(self) -> Pa {
        Pa(self.0 & Self::ADDRESS_MASK)
    }

    /// The PCID bits (meaningful only with CR4.PCIDE).
    pub fn pcid(self) -> u16 {
        (self.0 & 0xfff) as u16
    }
}

impl From<Cr3> for Pa {
    fn from(cr3: Cr3) -> Pa {
        cr3.root()
    }
}

/// CR0 bits the framework looks at.
pub mod cr0 {
    /// Paging enabled.
    pub const PG: u64 = 1 << 31;
    /// Protected mode.
    pub const PE: u64 = 1;
    /// Write protect (supervisor writes honour R/W).
    pub const WP: u64 = 1 << 16;
}

/// CR4 bits the framework looks at.
pub mod cr4 {
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// 57-bit linear addresses: 5-level paging.
    pub const LA57: u64 = 1 << 12;
    /// Process-context identifiers.
    pub const PCIDE: u64 = 1 << 17;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
}

/// EFER bits the framework looks at.
pub mod efer {
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// Long mode enabled.
    pub const LME: u64 = 1 << 8;
    /// No-execute enabled.
    pub const NXE: u64 = 1 << 11;
}

/// A segment register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u32,
    /// Access rights (type, S, DPL, P, AVL, L, D/B, G), as VMX packs them.
    pub access: u32,
}

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The registers of one AMD64 vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // register names are their documentation
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,

    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,

    pub cr0: u64,
    pub cr2: u64,
    pub cr3: Cr3,
    pub cr4: u64,
    pub cr8: u64,

    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,

    pub efer: u64,
    /// IA32_FS_BASE (the same value as `fs.base` in 64-bit mode).
    pub fs_base: u64,
    /// IA32_GS_BASE (the same value as `gs.base` in 64-bit mode).
    pub gs_base: u64,
    /// IA32_KERNEL_GS_BASE: the value `swapgs` exchanges with GS base.
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR: the 64-bit `syscall` entry point.
    pub lstar: u64,
    /// IA32_CSTAR: the compatibility-mode `syscall` entry point.
    pub cstar: u64,
    /// IA32_FMASK.
    pub sfmask: u64,
}

impl Registers {
    /// Whether the vCPU runs in 64-bit long mode with paging.
    pub fn long_mode(&self) -> bool {
        self.efer & efer::LMA != 0 && self.cr0 & cr0::PG != 0
    }

    /// Current privilege level (the DPL of CS, or CS's selector RPL).
    pub fn cpl(&self) -> u8 {
        (self.cs.selector & 3) as u8
    }

    /// The GS base the kernel uses on this vCPU: the active one in kernel mode, else the
    /// one `swapgs` would load.
    pub fn kernel_gs(&self) -> u64 {
        if self.cpl() == 0 {
            self.gs_base
        } else {
            self.kernel_gs_base
        }
    }
}

impl vmi_core::Registers for Registers {
    fn instruction_pointer(&self) -> Va {
        Va(self.rip)
    }

    fn set_instruction_pointer(&mut self, va: Va) {
        self.rip = va.0;
    }

    fn stack_pointer(&self) -> Va {
        Va(self.rsp)
    }

    fn translation_root(&self) -> Pa {
        self.cr3.root()
    }
}
