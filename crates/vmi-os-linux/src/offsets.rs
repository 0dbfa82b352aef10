//! Every structure offset the layer uses, loaded from the profile (BTF) in one place.
//!
//! Nothing is hard-coded: a kernel whose layout lacks a required entry fails with one
//! error naming every missing entry; fields that changed between kernel versions are
//! `Option`s and the code picks what the running kernel has.

#![allow(missing_docs)] // field names are the kernel's

use vmi_profile::{FieldInfo, MissingEntries, Profile, profile_struct};

profile_struct! {
    /// `task_struct` and what hangs off it.
    pub struct TaskOffsets {
        pub tasks: u64 = offset("task_struct", "tasks"),
        pub pid: u64 = offset("task_struct", "pid"),
        pub tgid: u64 = offset("task_struct", "tgid"),
        pub comm: FieldInfo = field("task_struct", "comm"),
        pub real_parent: u64 = offset("task_struct", "real_parent"),
        pub group_leader: u64 = offset("task_struct", "group_leader"),
        pub mm: u64 = offset("task_struct", "mm"),
        pub real_cred: u64 = offset("task_struct", "real_cred"),
        pub flags: u64 = offset("task_struct", "flags"),
        /// `__state` since 5.14.
        pub state_new: Option<u64> = offset("task_struct", "__state"),
        /// `state` before 5.14.
        pub state_old: Option<u64> = offset("task_struct", "state"),
        pub exit_state: u64 = offset("task_struct", "exit_state"),
        pub start_time: u64 = offset("task_struct", "start_time"),
        /// Since 5.5.
        pub start_boottime: Option<u64> = offset("task_struct", "start_boottime"),
        /// Before 5.5.
        pub real_start_time: Option<u64> = offset("task_struct", "real_start_time"),
        pub signal: u64 = offset("task_struct", "signal"),
        /// The thread list before 6.7.
        pub thread_group: Option<u64> = offset("task_struct", "thread_group"),
        /// The thread list since 6.7 (`signal_struct.thread_head`).
        pub thread_node: Option<u64> = offset("task_struct", "thread_node"),
        pub files: u64 = offset("task_struct", "files"),
        pub stack: u64 = offset("task_struct", "stack"),
        pub size: u64 = size("task_struct"),
        pub thread_head: Option<u64> = offset("signal_struct", "thread_head"),
        /// A kernel thread's `struct kthread`: `worker_private` since 5.17,
        /// `set_child_tid` before.
        pub worker_private: Option<u64> = offset("task_struct", "worker_private"),
        pub set_child_tid: Option<u64> = offset("task_struct", "set_child_tid"),
        /// The untruncated name of a kernel thread (6.0+; NULL when it fits `comm`).
        pub kthread_full_name: Option<u64> = offset("kthread", "full_name"),
        /// `kthread->data`: a workqueue worker's `struct worker`.
        pub kthread_data: Option<u64> = offset("kthread", "data"),
        pub worker_desc: Option<FieldInfo> = field("worker", "desc"),
        pub worker_current_work: Option<u64> = offset("worker", "current_work"),
        pub worker_pool: Option<u64> = offset("worker", "pool"),
        pub worker_rescue_wq: Option<u64> = offset("worker", "rescue_wq"),
        /// PID namespaces: `task->thread_pid` (4.19+), `pid.numbers[0..=level]`.
        pub thread_pid: Option<u64> = offset("task_struct", "thread_pid"),
        pub pid_level: Option<u64> = offset("pid", "level"),
        pub pid_numbers: Option<u64> = offset("pid", "numbers"),
        pub upid_nr: Option<u64> = offset("upid", "nr"),
        pub upid_ns: Option<u64> = offset("upid", "ns"),
        pub upid_size: Option<u64> = size("upid"),
        pub nsproxy: Option<u64> = offset("task_struct", "nsproxy"),
        pub nsproxy_uts: Option<u64> = offset("nsproxy", "uts_ns"),
        pub pid_ns_inum: Option<u64> = offset("pid_namespace", "ns.inum"),
        pub cred_uid: u64 = offset("cred", "uid"),
        pub cred_gid: u64 = offset("cred", "gid"),
        pub cred_euid: u64 = offset("cred", "euid"),
        pub cred_egid: u64 = offset("cred", "egid"),
    }
}

profile_struct! {
    /// `mm_struct`.
    pub struct MmOffsets {
        pub pgd: u64 = offset("mm_struct", "pgd"),
        pub arg_start: u64 = offset("mm_struct", "arg_start"),
        pub arg_end: u64 = offset("mm_struct", "arg_end"),
        pub env_start: u64 = offset("mm_struct", "env_start"),
        pub env_end: u64 = offset("mm_struct", "env_end"),
        pub exe_file: Option<u64> = offset("mm_struct", "exe_file"),
        /// The VMA maple tree since 6.1.
        pub mm_mt: Option<u64> = offset("mm_struct", "mm_mt"),
        /// The VMA list before 6.1.
        pub mmap: Option<u64> = offset("mm_struct", "mmap"),
        pub vm_start: u64 = offset("vm_area_struct", "vm_start"),
        pub vm_end: u64 = offset("vm_area_struct", "vm_end"),
        pub vm_flags: u64 = offset("vm_area_struct", "vm_flags"),
        pub vm_pgoff: u64 = offset("vm_area_struct", "vm_pgoff"),
        pub vm_file: u64 = offset("vm_area_struct", "vm_file"),
        pub vm_mm: u64 = offset("vm_area_struct", "vm_mm"),
        pub vm_next: Option<u64> = offset("vm_area_struct", "vm_next"),
        /// What `/proc/PID/maps` names `[heap]` and `[stack]` by.
        pub start_brk: Option<u64> = offset("mm_struct", "start_brk"),
        pub brk: Option<u64> = offset("mm_struct", "brk"),
        pub start_stack: Option<u64> = offset("mm_struct", "start_stack"),
        /// `mm->context.flags` (`MM_CONTEXT_HAS_VSYSCALL`).
        pub context_flags: Option<u64> = offset("mm_struct", "context.flags"),
        /// Special mappings (`[vdso]`, `[vvar]`) are named by their `vm_ops`.
        pub vm_ops: Option<u64> = offset("vm_area_struct", "vm_ops"),
        pub vm_private_data: Option<u64> = offset("vm_area_struct", "vm_private_data"),
        pub special_mapping_name: Option<u64> = offset("vm_special_mapping", "name"),
        /// `prctl(PR_SET_VMA_ANON_NAME)` names (5.17+).
        pub anon_name: Option<u64> = offset("vm_area_struct", "anon_name"),
        /// Before 6.2 `anon_name` shares a union with `shared` (valid only without a file).
        pub vma_shared: Option<u64> = offset("vm_area_struct", "shared"),
        pub anon_vma_name_name: Option<u64> = offset("anon_vma_name", "name"),
    }
}

profile_struct! {
    /// The maple tree (6.1+).
    pub struct MapleOffsets {
        pub ma_root: u64 = offset("maple_tree", "ma_root"),
        pub r64_pivot: FieldInfo = field("maple_range_64", "pivot"),
        pub r64_slot: FieldInfo = field("maple_range_64", "slot"),
        pub a64_pivot: FieldInfo = field("maple_arange_64", "pivot"),
        pub a64_slot: FieldInfo = field("maple_arange_64", "slot"),
        /// `meta.end` of a range node (the last slot's place when the node is not full).
        pub r64_meta_end: Option<u64> = offset("maple_range_64", "meta.end"),
        /// `meta.end` of an allocation-range node.
        pub a64_meta_end: Option<u64> = offset("maple_arange_64", "meta.end"),
        pub dense_slot: Option<FieldInfo> = field("maple_node", "slot"),
        pub node_size: u64 = size("maple_node"),
        pub t_dense: i64 = enum_value("maple_type", "maple_dense"),
        pub t_leaf64: i64 = enum_value("maple_type", "maple_leaf_64"),
        pub t_range64: i64 = enum_value("maple_type", "maple_range_64"),
        pub t_arange64: i64 = enum_value("maple_type", "maple_arange_64"),
    }
}

profile_struct! {
    /// Files, paths, dentries and mounts.
    pub struct PathOffsets {
        pub f_path: u64 = offset("file", "f_path"),
        pub path_mnt: u64 = offset("path", "mnt"),
        pub path_dentry: u64 = offset("path", "dentry"),
        pub d_parent: u64 = offset("dentry", "d_parent"),
        pub d_name: u64 = offset("dentry", "d_name"),
        pub qstr_name: u64 = offset("qstr", "name"),
        pub qstr_len: u64 = offset("qstr", "len"),
        pub mount_mnt: u64 = offset("mount", "mnt"),
        pub mnt_parent: u64 = offset("mount", "mnt_parent"),
        pub mnt_mountpoint: u64 = offset("mount", "mnt_mountpoint"),
        pub mnt_root: u64 = offset("vfsmount", "mnt_root"),
        pub mnt_sb: Option<u64> = offset("vfsmount", "mnt_sb"),
        pub d_inode: Option<u64> = offset("dentry", "d_inode"),
        pub i_ino: Option<u64> = offset("inode", "i_ino"),
        pub s_type: Option<u64> = offset("super_block", "s_type"),
        pub fs_name: Option<u64> = offset("file_system_type", "name"),
        pub fdt: u64 = offset("files_struct", "fdt"),
        pub max_fds: u64 = offset("fdtable", "max_fds"),
        pub fd: u64 = offset("fdtable", "fd"),
        /// `d_path` details: pseudo files named by `d_op->d_dname`, unlinked files.
        pub d_op: Option<u64> = offset("dentry", "d_op"),
        pub d_dname: Option<u64> = offset("dentry_operations", "d_dname"),
        pub d_hash_pprev: Option<u64> = offset("dentry", "d_hash.pprev"),
        /// The `maps` device and inode columns.
        pub f_inode: Option<u64> = offset("file", "f_inode"),
        pub i_sb: Option<u64> = offset("inode", "i_sb"),
        pub s_dev: Option<u64> = offset("super_block", "s_dev"),
        /// A process's root (`task->fs->root`): paths are shown relative to it.
        pub task_fs: Option<u64> = offset("task_struct", "fs"),
        pub fs_root: Option<u64> = offset("fs_struct", "root"),
    }
}

profile_struct! {
    /// Kernel modules.
    pub struct ModuleOffsets {
        pub modules: u64 = symbol("modules"),
        pub list: u64 = offset("module", "list"),
        pub name: FieldInfo = field("module", "name"),
        pub state: u64 = offset("module", "state"),
        /// 6.4+: `mem[MOD_*]`.
        pub mem: Option<u64> = offset("module", "mem"),
        pub mem_size: Option<u64> = size("module_memory"),
        pub mm_base: Option<u64> = offset("module_memory", "base"),
        pub mm_size: Option<u64> = offset("module_memory", "size"),
        pub mod_text: Option<i64> = enum_value("mod_mem_type", "MOD_TEXT"),
        pub mod_mem_num: Option<i64> = enum_value("mod_mem_type", "MOD_MEM_NUM_TYPES"),
        /// Before 6.4.
        pub core_layout: Option<u64> = offset("module", "core_layout"),
        pub init_layout: Option<u64> = offset("module", "init_layout"),
        pub ml_base: Option<u64> = offset("module_layout", "base"),
        pub ml_size: Option<u64> = offset("module_layout", "size"),
        pub live: i64 = enum_value("module_state", "MODULE_STATE_LIVE"),
        pub coming: i64 = enum_value("module_state", "MODULE_STATE_COMING"),
        pub going: i64 = enum_value("module_state", "MODULE_STATE_GOING"),
        pub unformed: i64 = enum_value("module_state", "MODULE_STATE_UNFORMED"),
    }
}

profile_struct! {
    /// The printk ring buffer (5.10+).
    pub struct PrintkOffsets {
        pub prb: u64 = symbol("prb"),
        pub desc_ring: u64 = offset("printk_ringbuffer", "desc_ring"),
        pub text_data_ring: u64 = offset("printk_ringbuffer", "text_data_ring"),
        pub count_bits: u64 = offset("prb_desc_ring", "count_bits"),
        pub descs: u64 = offset("prb_desc_ring", "descs"),
        pub infos: u64 = offset("prb_desc_ring", "infos"),
        pub head_id: u64 = offset("prb_desc_ring", "head_id"),
        pub tail_id: u64 = offset("prb_desc_ring", "tail_id"),
        pub desc_size: u64 = size("prb_desc"),
        pub state_var: u64 = offset("prb_desc", "state_var"),
        pub text_blk_lpos: u64 = offset("prb_desc", "text_blk_lpos"),
        pub lpos_begin: u64 = offset("prb_data_blk_lpos", "begin"),
        pub lpos_next: u64 = offset("prb_data_blk_lpos", "next"),
        pub size_bits: u64 = offset("prb_data_ring", "size_bits"),
        pub data: u64 = offset("prb_data_ring", "data"),
        pub info_size: u64 = size("printk_info"),
        pub seq: u64 = offset("printk_info", "seq"),
        pub ts_nsec: u64 = offset("printk_info", "ts_nsec"),
        pub text_len: u64 = offset("printk_info", "text_len"),
        pub caller_id: u64 = offset("printk_info", "caller_id"),
    }
}

profile_struct! {
    /// Namespaces, time, per-CPU data, registers saved on the kernel stack.
    pub struct MiscOffsets {
        pub init_uts_ns: Option<u64> = symbol("init_uts_ns"),
        pub uts_name: Option<u64> = offset("uts_namespace", "name"),
        pub nodename: Option<FieldInfo> = field("new_utsname", "nodename"),
        pub tkr_mono_base: Option<u64> = offset("timekeeper", "tkr_mono.base"),
        pub offs_boot: Option<u64> = offset("timekeeper", "offs_boot"),
        pub pt_regs_size: Option<u64> = size("pt_regs"),
        pub pt_di: Option<u64> = offset("pt_regs", "di"),
        pub pt_si: Option<u64> = offset("pt_regs", "si"),
        pub pt_dx: Option<u64> = offset("pt_regs", "dx"),
        pub pt_r10: Option<u64> = offset("pt_regs", "r10"),
        pub pt_r8: Option<u64> = offset("pt_regs", "r8"),
        pub pt_r9: Option<u64> = offset("pt_regs", "r9"),
        pub pt_orig_ax: Option<u64> = offset("pt_regs", "orig_ax"),
        pub pt_ip: Option<u64> = offset("pt_regs", "ip"),
        pub pt_sp: Option<u64> = offset("pt_regs", "sp"),
        pub pt_cs: Option<u64> = offset("pt_regs", "cs"),
        pub pcpu_hot_current: Option<u64> = offset("pcpu_hot", "current_task"),
        pub x86_capability: Option<u64> = offset("cpuinfo_x86", "x86_capability"),
    }
}

/// All offset groups; the task group is required, the others load lazily per feature.
#[derive(Clone, Debug)]
pub(crate) struct Offsets {
    pub(crate) task: TaskOffsets,
    pub(crate) mm: Result<MmOffsets, MissingEntries>,
    pub(crate) maple: Result<MapleOffsets, MissingEntries>,
    pub(crate) path: Result<PathOffsets, MissingEntries>,
    pub(crate) module: Result<ModuleOffsets, MissingEntries>,
    pub(crate) printk: Result<PrintkOffsets, MissingEntries>,
    pub(crate) misc: MiscOffsets,
}

impl Offsets {
    pub(crate) fn load(p: &Profile) -> Result<Self, MissingEntries> {
        let task = TaskOffsets::load(p)?;
        if task.state_new.is_none() && task.state_old.is_none() {
            return Err(MissingEntries {
                target: "TaskOffsets",
                entries: vec!["offset task_struct.__state or task_struct.state".into()],
            });
        }
        Ok(Self {
            task,
            mm: MmOffsets::load(p),
            maple: MapleOffsets::load(p),
            path: PathOffsets::load(p),
            module: ModuleOffsets::load(p),
            printk: PrintkOffsets::load(p),
            misc: MiscOffsets::load(p).unwrap_or_else(|_| unreachable_misc()),
        })
    }
}

/// `MiscOffsets` has only optional entries, so its `load` cannot fail; this keeps the
/// types honest without a panic path.
fn unreachable_misc() -> MiscOffsets {
    MiscOffsets {
        init_uts_ns: None,
        uts_name: None,
        nodename: None,
        tkr_mono_base: None,
        offs_boot: None,
        pt_regs_size: None,
        pt_di: None,
        pt_si: None,
        pt_dx: None,
        pt_r10: None,
        pt_r8: None,
        pt_r9: None,
        pt_orig_ax: None,
        pt_ip: None,
        pt_sp: None,
        pt_cs: None,
        pcpu_hot_current: None,
        x86_capability: None,
    }
}
