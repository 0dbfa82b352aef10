//! Field offsets and symbol RVAs resolved once from the profile.
//!
//! Version differences are handled as field alternatives (the first path that exists
//! wins), not as version numbers, so one code path covers Windows 7 to 11.

use vmi_profile::{FieldInfo, Profile};

use crate::WindowsError;

/// A bitfield (or plain field) location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bits {
    pub offset: u64,
    pub shift: u32,
    pub width: u32,
}

impl Bits {
    fn from(f: FieldInfo) -> Self {
        let width = f
            .bit_size
            .unwrap_or_else(|| (f.size.unwrap_or(8) * 8).min(64) as u32);
        Self {
            offset: f.offset,
            shift: f.bit_in_byte(),
            width,
        }
    }

    /// Extracts the field from the 8 bytes read at `offset`.
    pub fn get(self, raw: u64) -> u64 {
        let v = raw >> self.shift;
        if self.width >= 64 {
            v
        } else {
            v & ((1u64 << self.width) - 1)
        }
    }
}

pub(crate) struct Resolver<'p> {
    p: &'p Profile,
    missing: Vec<String>,
}

impl<'p> Resolver<'p> {
    fn off(&mut self, t: &str, path: &str) -> u64 {
        match self.p.offset_of(t, path) {
            Ok(o) => o,
            Err(_) => {
                self.missing.push(format!("{t}.{path}"));
                0
            }
        }
    }
    fn opt(&self, t: &str, path: &str) -> Option<u64> {
        self.p.offset_of(t, path).ok()
    }
    fn first(&mut self, t: &str, paths: &[&str]) -> u64 {
        match paths.iter().find_map(|p| self.opt(t, p)) {
            Some(o) => o,
            None => {
                self.missing.push(format!("{t}.{}", paths.join("|")));
                0
            }
        }
    }
    fn bits(&mut self, t: &str, paths: &[&str]) -> Bits {
        match paths.iter().find_map(|p| self.p.field(t, p).ok()) {
            Some(f) => Bits::from(f),
            None => {
                self.missing.push(format!("{t}.{}", paths.join("|")));
                Bits {
                    offset: 0,
                    shift: 0,
                    width: 0,
                }
            }
        }
    }
    fn size(&mut self, t: &str) -> u64 {
        match self.p.size_of(t) {
            Ok(s) => s,
            Err(_) => {
                self.missing.push(format!("sizeof({t})"));
                0
            }
        }
    }
    fn sym(&mut self, s: &str) -> u64 {
        match self.p.symbol_address(s) {
            Ok(a) => a,
            Err(_) => {
                self.missing.push(format!("symbol {s}"));
                0
            }
        }
    }
}

macro_rules! offsets {
    ($($field:ident : $ty:ty),* $(,)?) => {
        /// Every offset the layer uses.
        #[derive(Clone, Debug)]
        pub(crate) struct Offsets { $(pub $field: $ty,)* }
    };
}

offsets! {
    // symbols (RVAs)
    ps_active_process_head: u64, ps_loaded_module_list: u64, ps_initial_system_process: u64,
    ob_type_index_table: u64, ob_header_cookie: Option<u64>, ob_info_mask_to_offset: Option<u64>,
    nt_build_number: Option<u64>,
    // EPROCESS
    ep_links: u64, ep_pid: u64, ep_ppid: u64, ep_name: u64, ep_dtb: u64, ep_peb: u64,
    ep_session: u64, ep_create_time: u64, ep_exit_time: u64, ep_thread_head: u64,
    ep_object_table: u64, ep_token: u64, ep_vad_root: u64,
    ep_wow64: Option<u64>, ep_audit_name: Option<u64>, ep_active_threads: u64,
    session_id: u64,
    // threads
    th_list_entry: u64, th_tid: u64, th_pid: u64, th_teb: u64, th_start: u64, th_win32_start: u64,
    th_create_time: u64, th_process: u64,
    // loader
    kldr_type_links: u64, kldr_base: u64, kldr_size: u64, kldr_full: u64, kldr_basename: u64,
    ldr_load_links: u64, ldr_mem_links: u64, ldr_init_links: u64, ldr_base: u64, ldr_size: u64,
    ldr_full: u64, ldr_basename: u64,
    peb_ldr: u64, peb_params: u64,
    pld_load: u64, pld_mem: u64, pld_init: u64,
    pp_image: u64, pp_cmdline: u64, pp_env: u64, pp_env_size: Option<u64>,
    us_length: u64, us_buffer: u64,
    // VADs
    vad_left: u64, vad_right: u64, vad_start: u64, vad_start_high: Option<u64>, vad_end: u64,
    vad_end_high: Option<u64>, vad_protection: Bits, vad_private: Bits, vad_subsection: u64,
    subsection_ca: u64, ca_file: u64, fo_name: u64, fo_device: u64,
    // handles and objects
    ht_code: u64, hte_size: u64, hte_object: Bits, hte_access: Bits, hte_ptr_bits: bool,
    oh_body: u64, oh_type_index: u64, oh_info_mask: u64, ohni_name: u64, ohni_size: u64,
    ot_name: u64, ohci_size: u64,
    // tokens
    tok_groups: u64, tok_count: u64, tok_present: Option<u64>, tok_enabled: Option<u64>,
    tok_default: Option<u64>, sa_size: u64, sa_sid: u64, sa_attrs: u64,
    // CPU
    kpcr_prcb: u64, prcb_current: u64, kpcr_self: Option<u64>,
    // KUSER
    ku_major: u64, ku_minor: u64,
}

impl Offsets {
    pub(crate) fn resolve(p: &Profile) -> Result<Self, WindowsError> {
        let mut r = Resolver { p, missing: vec![] };
        let e = "_EPROCESS";
        let kldr = if p.size_of("_KLDR_DATA_TABLE_ENTRY").is_ok() {
            "_KLDR_DATA_TABLE_ENTRY"
        } else {
            "_LDR_DATA_TABLE_ENTRY"
        };
        let ldr = "_LDR_DATA_TABLE_ENTRY";
        let v = "_MMVAD_SHORT";
        let balanced = r.opt(e, "VadRoot.Root").is_none();
        let ptr_bits = r.opt("_HANDLE_TABLE_ENTRY", "ObjectPointerBits").is_some();
        let o = Offsets {
            ps_active_process_head: r.sym("PsActiveProcessHead"),
            ps_loaded_module_list: r.sym("PsLoadedModuleList"),
            ps_initial_system_process: r.sym("PsInitialSystemProcess"),
            ob_type_index_table: r.sym("ObTypeIndexTable"),
            ob_header_cookie: p.symbol_address("ObHeaderCookie").ok(),
            ob_info_mask_to_offset: p.symbol_address("ObpInfoMaskToOffset").ok(),
            nt_build_number: p.symbol_address("NtBuildNumber").ok(),
            ep_links: r.off(e, "ActiveProcessLinks"),
            ep_pid: r.off(e, "UniqueProcessId"),
            ep_ppid: r.off(e, "InheritedFromUniqueProcessId"),
            ep_name: r.off(e, "ImageFileName"),
            ep_dtb: r.off(e, "Pcb.DirectoryTableBase"),
            ep_peb: r.off(e, "Peb"),
            ep_session: r.off(e, "Session"),
            ep_create_time: r.off(e, "CreateTime"),
            ep_exit_time: r.off(e, "ExitTime"),
            ep_thread_head: r.off(e, "ThreadListHead"),
            ep_object_table: r.off(e, "ObjectTable"),
            ep_token: r.off(e, "Token"),
            ep_vad_root: if balanced {
                r.off(e, "VadRoot.BalancedRoot.RightChild")
            } else {
                r.off(e, "VadRoot.Root")
            },
            ep_wow64: ["WoW64Process", "Wow64Process"]
                .iter()
                .find_map(|f| r.opt(e, f)),
            ep_audit_name: r.opt(e, "SeAuditProcessCreationInfo.ImageFileName"),
            ep_active_threads: r.off(e, "ActiveThreads"),
            session_id: r.off("_MM_SESSION_SPACE", "SessionId"),
            th_list_entry: r.off("_ETHREAD", "ThreadListEntry"),
            th_tid: r.off("_ETHREAD", "Cid.UniqueThread"),
            th_pid: r.off("_ETHREAD", "Cid.UniqueProcess"),
            th_teb: r.off("_ETHREAD", "Tcb.Teb"),
            th_start: r.off("_ETHREAD", "StartAddress"),
            th_win32_start: r.off("_ETHREAD", "Win32StartAddress"),
            th_create_time: r.off("_ETHREAD", "CreateTime"),
            th_process: r.off("_ETHREAD", "Tcb.Process"),
            kldr_type_links: r.off(kldr, "InLoadOrderLinks"),
            kldr_base: r.off(kldr, "DllBase"),
            kldr_size: r.off(kldr, "SizeOfImage"),
            kldr_full: r.off(kldr, "FullDllName"),
            kldr_basename: r.off(kldr, "BaseDllName"),
            ldr_load_links: r.off(ldr, "InLoadOrderLinks"),
            ldr_mem_links: r.off(ldr, "InMemoryOrderLinks"),
            ldr_init_links: r.off(ldr, "InInitializationOrderLinks"),
            ldr_base: r.off(ldr, "DllBase"),
            ldr_size: r.off(ldr, "SizeOfImage"),
            ldr_full: r.off(ldr, "FullDllName"),
            ldr_basename: r.off(ldr, "BaseDllName"),
            peb_ldr: r.off("_PEB", "Ldr"),
            peb_params: r.off("_PEB", "ProcessParameters"),
            pld_load: r.off("_PEB_LDR_DATA", "InLoadOrderModuleList"),
            pld_mem: r.off("_PEB_LDR_DATA", "InMemoryOrderModuleList"),
            pld_init: r.off("_PEB_LDR_DATA", "InInitializationOrderModuleList"),
            pp_image: r.off("_RTL_USER_PROCESS_PARAMETERS", "ImagePathName"),
            pp_cmdline: r.off("_RTL_USER_PROCESS_PARAMETERS", "CommandLine"),
            pp_env: r.off("_RTL_USER_PROCESS_PARAMETERS", "Environment"),
            pp_env_size: r.opt("_RTL_USER_PROCESS_PARAMETERS", "EnvironmentSize"),
            us_length: r.off("_UNICODE_STRING", "Length"),
            us_buffer: r.off("_UNICODE_STRING", "Buffer"),
            vad_left: r.first(v, &["VadNode.Left", "LeftChild"]),
            vad_right: r.first(v, &["VadNode.Right", "RightChild"]),
            vad_start: r.off(v, "StartingVpn"),
            vad_start_high: r.opt(v, "StartingVpnHigh"),
            vad_end: r.off(v, "EndingVpn"),
            vad_end_high: r.opt(v, "EndingVpnHigh"),
            vad_protection: r.bits(v, &["u.VadFlags.Protection"]),
            vad_private: r.bits(v, &["u.VadFlags.PrivateMemory"]),
            vad_subsection: r.off("_MMVAD", "Subsection"),
            subsection_ca: r.off("_SUBSECTION", "ControlArea"),
            ca_file: r.off("_CONTROL_AREA", "FilePointer"),
            fo_name: r.off("_FILE_OBJECT", "FileName"),
            fo_device: r.off("_FILE_OBJECT", "DeviceObject"),
            ht_code: r.off("_HANDLE_TABLE", "TableCode"),
            hte_size: r.size("_HANDLE_TABLE_ENTRY"),
            hte_object: r.bits("_HANDLE_TABLE_ENTRY", &["ObjectPointerBits", "Object"]),
            hte_access: r.bits(
                "_HANDLE_TABLE_ENTRY",
                &["GrantedAccessBits", "GrantedAccess"],
            ),
            hte_ptr_bits: ptr_bits,
            oh_body: r.off("_OBJECT_HEADER", "Body"),
            oh_type_index: r.off("_OBJECT_HEADER", "TypeIndex"),
            oh_info_mask: r.off("_OBJECT_HEADER", "InfoMask"),
            ohni_name: r.off("_OBJECT_HEADER_NAME_INFO", "Name"),
            ohni_size: r.size("_OBJECT_HEADER_NAME_INFO"),
            ohci_size: r.size("_OBJECT_HEADER_CREATOR_INFO"),
            ot_name: r.off("_OBJECT_TYPE", "Name"),
            tok_groups: r.off("_TOKEN", "UserAndGroups"),
            tok_count: r.off("_TOKEN", "UserAndGroupCount"),
            tok_present: r.opt("_TOKEN", "Privileges.Present"),
            tok_enabled: r.opt("_TOKEN", "Privileges.Enabled"),
            tok_default: r.opt("_TOKEN", "Privileges.EnabledByDefault"),
            sa_size: r.size("_SID_AND_ATTRIBUTES"),
            sa_sid: r.off("_SID_AND_ATTRIBUTES", "Sid"),
            sa_attrs: r.off("_SID_AND_ATTRIBUTES", "Attributes"),
            kpcr_prcb: r.off("_KPCR", "Prcb"),
            prcb_current: r.off("_KPRCB", "CurrentThread"),
            kpcr_self: r.opt("_KPCR", "Self"),
            ku_major: r.off("_KUSER_SHARED_DATA", "NtMajorVersion"),
            ku_minor: r.off("_KUSER_SHARED_DATA", "NtMinorVersion"),
        };
        if r.missing.is_empty() {
            Ok(o)
        } else {
            Err(WindowsError::Profile(r.missing.join(", ")))
        }
    }
}
