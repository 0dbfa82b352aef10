//! Xen's binary interfaces written again as plain `zerocopy` structs.
//!
//! The layouts are those of Xen's public headers (`xen/vm_event.h` v7,
//! `xen/io/ring.h`, `xen/arch-x86/hvm/save.h`, `xen/arch-x86/xen-x86_64.h`), identical
//! in Debian's 4.17 and 4.20 `libxen-dev`. With the `xen-sys` feature the FFI module
//! checks every size and field offset below against the bindgen-generated structs at
//! compile time, so a header change breaks the build instead of the guest.
//!
//! Ring and request bytes come from a page the hypervisor (and, for requests, a guest's
//! actions) writes: they are copied out and parsed with `read_from_bytes`, never
//! referenced in place.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// The vm_event interface version this driver speaks (Xen 4.15 to 4.22).
pub const VM_EVENT_INTERFACE_VERSION: u32 = 7;

/// Size of a Xen page.
pub const XEN_PAGE_SIZE: usize = 4096;

/// `VM_EVENT_FLAG_*`.
pub mod flags {
    /// The vCPU is paused until the response arrives.
    pub const VCPU_PAUSED: u32 = 1 << 0;
    /// Emulate the faulting instruction (mem_access responses).
    pub const EMULATE: u32 = 1 << 2;
    /// Toggle single-stepping on this vCPU.
    pub const TOGGLE_SINGLESTEP: u32 = 1 << 4;
    /// Switch the vCPU to the altp2m view in `altp2m_idx`.
    pub const ALTERNATE_P2M: u32 = 1 << 7;
    /// Set the vCPU's registers from `data.regs.x86`.
    pub const SET_REGISTERS: u32 = 1 << 8;
}

/// `VM_EVENT_REASON_*`.
pub mod reason {
    /// A page's access permissions were violated.
    pub const MEM_ACCESS: u32 = 1;
    /// A monitored control register was written.
    pub const WRITE_CTRLREG: u32 = 4;
    /// A monitored MSR was written.
    pub const MOV_TO_MSR: u32 = 5;
    /// `int3` was executed.
    pub const SOFTWARE_BREAKPOINT: u32 = 6;
    /// One instruction was single-stepped.
    pub const SINGLESTEP: u32 = 7;
    /// The guest made a `HVMOP_guest_request_vm_event` hypercall.
    pub const GUEST_REQUEST: u32 = 8;
    /// A debug exception (#DB).
    pub const DEBUG_EXCEPTION: u32 = 9;
    /// CPUID was executed.
    pub const CPUID: u32 = 10;
}

/// `VM_EVENT_X86_*`: control-register indices of `write_ctrlreg` events.
pub mod ctrlreg {
    /// CR0.
    pub const CR0: u32 = 0;
    /// CR3.
    pub const CR3: u32 = 1;
    /// CR4.
    pub const CR4: u32 = 2;
}

/// `MEM_ACCESS_*` bits of a mem_access event.
pub mod mem_access {
    /// Read.
    pub const R: u32 = 1 << 0;
    /// Write.
    pub const W: u32 = 1 << 1;
    /// Execute.
    pub const X: u32 = 1 << 2;
    /// `gla` holds the guest-linear address.
    pub const GLA_VALID: u32 = 1 << 3;
}

/// `XEN_DOMINF_*` flags of a domain.
pub mod dominf {
    /// The domain is dying.
    pub const DYING: u32 = 1 << 0;
    /// HVM (or PVH) guest, as opposed to PV.
    pub const HVM_GUEST: u32 = 1 << 1;
    /// Shut down.
    pub const SHUTDOWN: u32 = 1 << 2;
    /// Paused by control software.
    pub const PAUSED: u32 = 1 << 3;
    /// Blocked.
    pub const BLOCKED: u32 = 1 << 4;
    /// Running.
    pub const RUNNING: u32 = 1 << 5;
    /// Hardware-assisted paging.
    pub const HAP: u32 = 1 << 8;
}

/// `struct vm_event_x86_selector_reg`: `limit:20, ar:12` packed in a `u32`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct SelectorReg(pub u32);

impl SelectorReg {
    /// The segment limit (20 bits).
    pub fn limit(self) -> u32 {
        self.0 & 0xf_ffff
    }
    /// The access rights (12 bits).
    pub fn ar(self) -> u32 {
        self.0 >> 20
    }
}

/// `struct vm_event_regs_x86` (v7): 344 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[allow(missing_docs)] // field names are Xen's
pub struct VmEventRegsX86 {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rflags: u64,
    pub dr6: u64,
    pub dr7: u64,
    pub rip: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub msr_efer: u64,
    pub msr_star: u64,
    pub msr_lstar: u64,
    pub gdtr_base: u64,
    pub npt_base: u64,
    pub vmtrace_pos: u64,
    pub cs_base: u32,
    pub ss_base: u32,
    pub ds_base: u32,
    pub es_base: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    pub cs: SelectorReg,
    pub ss: SelectorReg,
    pub ds: SelectorReg,
    pub es: SelectorReg,
    pub fs: SelectorReg,
    pub gs: SelectorReg,
    pub shadow_gs: u64,
    pub gdtr_limit: u16,
    pub cs_sel: u16,
    pub ss_sel: u16,
    pub ds_sel: u16,
    pub es_sel: u16,
    pub fs_sel: u16,
    pub gs_sel: u16,
    pub _pad: u16,
}

/// `vm_event_request_t` / `vm_event_response_t` (v7): 400 bytes.
///
/// The event-specific union `u` (32 bytes) is kept as raw words and read through the
/// accessors; which member is valid depends on `reason`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct VmEvent {
    /// `VM_EVENT_INTERFACE_VERSION` of the writer.
    pub version: u32,
    /// `VM_EVENT_FLAG_*`.
    pub flags: u32,
    /// `VM_EVENT_REASON_*`.
    pub reason: u32,
    /// The vCPU.
    pub vcpu_id: u32,
    /// altp2m view of the vCPU (request) or to switch to (response).
    pub altp2m_idx: u16,
    /// Padding.
    pub _pad: [u16; 3],
    /// The reason-specific union, as four 64-bit words.
    pub u: [u64; 4],
    /// `data.regs.x86`.
    pub regs: VmEventRegsX86,
}

impl VmEvent {
    /// `u.write_ctrlreg`: (index, new, old).
    pub fn write_ctrlreg(&self) -> (u32, u64, u64) {
        (self.u[0] as u32, self.u[1], self.u[2])
    }
    /// `u.mov_to_msr`: (msr, new, old).
    pub fn mov_to_msr(&self) -> (u64, u64, u64) {
        (self.u[0], self.u[1], self.u[2])
    }
    /// `u.mem_access`: (gfn, offset, gla, flags).
    pub fn mem_access(&self) -> (u64, u64, u64, u32) {
        (self.u[0], self.u[1], self.u[2], self.u[3] as u32)
    }
    /// `u.software_breakpoint` / `u.debug_exception`: (gfn, pending_dbg, insn_length, type).
    pub fn debug(&self) -> (u64, u64, u32, u8) {
        (
            self.u[0],
            self.u[1],
            self.u[2] as u32,
            (self.u[2] >> 32) as u8,
        )
    }
    /// `u.cpuid`: (insn_length, leaf, subleaf).
    pub fn cpuid(&self) -> (u32, u32, u32) {
        (self.u[0] as u32, (self.u[0] >> 32) as u32, self.u[1] as u32)
    }
}

/// Byte offsets of the shared ring header (`struct vm_event_sring`): four `RING_IDX`
/// (u32) then padding up to 64 bytes, then the entries.
pub mod sring {
    /// `req_prod`: written by the producer (Xen).
    pub const REQ_PROD: usize = 0;
    /// `req_event`: the consumer asks for a notification at this index.
    pub const REQ_EVENT: usize = 4;
    /// `rsp_prod`: written by us.
    pub const RSP_PROD: usize = 8;
    /// `rsp_event`: Xen asks for a notification at this index.
    pub const RSP_EVENT: usize = 12;
    /// Size of the header; entries start here.
    pub const HEADER: usize = 64;
}

/// One save record's descriptor in an HVM context blob (`struct hvm_save_descriptor`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct HvmSaveDescriptor {
    /// Record type (`HVM_SAVE_CODE(...)`).
    pub typecode: u16,
    /// Instance (the vCPU for CPU records).
    pub instance: u16,
    /// Length of the record after this descriptor.
    pub length: u32,
}

/// `HVM_SAVE_CODE(CPU)`.
pub const HVM_SAVE_CODE_CPU: u16 = 2;
/// `HVM_SAVE_CODE(END)`.
pub const HVM_SAVE_CODE_END: u16 = 0;

/// `struct hvm_hw_cpu`: 1032 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[allow(missing_docs)] // field names are Xen's
pub struct HvmHwCpu {
    pub fpu_regs: [u8; 512],
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
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
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
    /// cs, ds, es, fs, gs, ss, tr, ldtr.
    pub sel: [u32; 8],
    /// cs, ds, es, fs, gs, ss, tr, ldtr, idtr, gdtr.
    pub limit: [u32; 10],
    /// cs, ds, es, fs, gs, ss, tr, ldtr, idtr, gdtr.
    pub base: [u64; 10],
    /// cs, ds, es, fs, gs, ss, tr, ldtr.
    pub arbytes: [u32; 8],
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub shadow_gs: u64,
    pub msr_flags: u64,
    pub msr_lstar: u64,
    pub msr_star: u64,
    pub msr_cstar: u64,
    pub msr_syscall_mask: u64,
    pub msr_efer: u64,
    pub msr_tsc_aux: u64,
    pub tsc: u64,
    pub pending_event: u32,
    pub error_code: u32,
    pub flags: u32,
    pub pad0: u32,
}

impl Default for HvmHwCpu {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Index of each segment in [`HvmHwCpu`]'s `sel`/`limit`/`base`/`arbytes` arrays.
pub mod seg {
    /// CS.
    pub const CS: usize = 0;
    /// DS.
    pub const DS: usize = 1;
    /// ES.
    pub const ES: usize = 2;
    /// FS.
    pub const FS: usize = 3;
    /// GS.
    pub const GS: usize = 4;
    /// SS.
    pub const SS: usize = 5;
    /// TR.
    pub const TR: usize = 6;
    /// LDTR.
    pub const LDTR: usize = 7;
    /// IDTR (limit and base only).
    pub const IDTR: usize = 8;
    /// GDTR (limit and base only).
    pub const GDTR: usize = 9;
}

/// `struct cpu_user_regs` of an x86_64 PV vCPU: 200 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[allow(missing_docs)] // field names are Xen's
pub struct PvUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    /// `cs` (u16), pad, `saved_upcall_mask` (u8), pad.
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    /// Selectors in the low 16 bits of each word.
    pub ss: u64,
    pub es: u64,
    pub ds: u64,
    pub fs: u64,
    pub gs: u64,
}

/// `struct vcpu_guest_context` of an x86_64 PV vCPU (`vcpu_guest_context_x86_64_t`):
/// 5168 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[allow(missing_docs)] // field names are Xen's
pub struct PvContext {
    pub fpu_ctxt: [u8; 512],
    pub flags: u64,
    pub user_regs: PvUserRegs,
    /// 256 × `struct trap_info` (16 bytes each).
    pub trap_ctxt: [u8; 4096],
    pub ldt_base: u64,
    pub ldt_ents: u64,
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    pub kernel_ss: u64,
    pub kernel_sp: u64,
    /// CR0..CR7; CR3 holds the page-table root's machine frame in Xen's x86_64
    /// `xen_pfn_to_cr3` encoding (the frame shifted left by 12).
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

impl Default for PvContext {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// `xen_cr3_to_pfn` for x86_64 (`xen-x86_64.h`): a plain shift of the 64-bit value.
/// (The 12-bit rotation in 32 bits is x86_32's "extended CR3" and would lose every frame
/// at or above 2^20, i.e. page tables above 4 GiB of machine memory.)
pub fn xen_cr3_to_pfn(cr3: u64) -> u64 {
    cr3 >> 12
}

/// `xen_pfn_to_cr3` for x86_64: a plain shift.
pub fn xen_pfn_to_cr3(pfn: u64) -> u64 {
    pfn << 12
}

/// `xenmem_access_t`: second-level page permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XenMemAccess {
    /// No access.
    N = 0,
    /// Read.
    R = 1,
    /// Write.
    W = 2,
    /// Read and write.
    RW = 3,
    /// Execute.
    X = 4,
    /// Read and execute.
    RX = 5,
    /// Write and execute.
    WX = 6,
    /// Everything.
    RWX = 7,
    /// The domain's default access.
    Default = 10,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets as Xen's headers give them (checked by hand against the
    /// unpacked 4.17 and 4.20 headers; the `xen-sys` build checks them against bindgen).
    #[test]
    fn layouts_match_xen_headers() {
        assert_eq!(size_of::<VmEventRegsX86>(), 344);
        assert_eq!(size_of::<VmEvent>(), 400);
        assert_eq!(offset_of!(VmEvent, u), 24);
        assert_eq!(offset_of!(VmEvent, regs), 56);
        assert_eq!(offset_of!(VmEventRegsX86, npt_base), 248);
        assert_eq!(offset_of!(VmEventRegsX86, cs_base), 264);
        assert_eq!(offset_of!(VmEventRegsX86, cs), 296);
        assert_eq!(offset_of!(VmEventRegsX86, shadow_gs), 320);
        assert_eq!(size_of::<HvmHwCpu>(), 1032);
        assert_eq!(offset_of!(HvmHwCpu, rip), 512 + 16 * 8);
        assert_eq!(offset_of!(HvmHwCpu, msr_efer), 992);
        assert_eq!(size_of::<PvUserRegs>(), 200);
        assert_eq!(size_of::<PvContext>(), 5168);
        assert_eq!(offset_of!(PvContext, ctrlreg), 4984);
        assert_eq!(offset_of!(PvContext, fs_base), 5144);
    }

    #[test]
    fn cr3_encoding_round_trips() {
        for pfn in [0u64, 1, 0x7cf26, 0xfffff, 0x100000, 0x13ca15, 0xffff_ffff] {
            assert_eq!(xen_cr3_to_pfn(xen_pfn_to_cr3(pfn)), pfn);
        }
        // x86_64: the plain address, also above 4 GiB (seen on nested Xen: an L4 at
        // machine frame 0x13ac62 reported as 0x13ac62000)
        assert_eq!(xen_pfn_to_cr3(0x7cf26), 0x7cf2_6000);
        assert_eq!(xen_cr3_to_pfn(0x1_3ac6_2000), 0x13ac62);
    }

    #[test]
    fn union_accessors_follow_the_c_layout() {
        let mut e = VmEvent::new_zeroed();
        // vm_event_cpuid { insn_length, leaf, subleaf, _pad }
        e.u[0] = 2 | (0x4000_0000u64 << 32);
        e.u[1] = 7;
        assert_eq!(e.cpuid(), (2, 0x4000_0000, 7));
        // vm_event_debug { gfn, pending_dbg, insn_length, type, _pad[3] }
        e.u = [0x1234, 0x4000, 1 | (3u64 << 32), 0];
        assert_eq!(e.debug(), (0x1234, 0x4000, 1, 3));
    }
}
