//! The synthetic kernel of the hostile tests (and of the `linux_walkers` fuzz target,
//! which includes this file by path): VMCOREINFO, page tables, a task list, credentials,
//! mm/VMA and printk layouts, and the profile that describes them, built by hand.
//! Everything lives in one 2 MiB kernel mapping of the mock driver.
#![allow(dead_code)]

use vmi_core::{Pa, Va, VmiCore, VmiError};
use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
use vmi_os_linux::{Limits, LinuxOs};
use vmi_profile::{
    Composite, IntEncoding, Member, Metadata, OsKind, Profile, Symbol, SymbolTable, Type,
    TypesBuilder,
};

/// Offset of `mm_struct.mm_mt` in the maple profile (`ma_root` 8 bytes further).
pub const MM_MT: u64 = 0x140;
/// Offset of `vm_area_struct.anon_name` in the maple profile.
pub const VMA_ANON_NAME: u64 = 0x88;
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
pub const SWAPPER: u64 = 0xffff_ffff_82a1_0000;
pub const REGION_VA: u64 = 0xffff_ffff_82a0_0000;
pub const REGION_PA: u64 = 0x40_0000;
pub const ROOT: u64 = REGION_PA + (SWAPPER - REGION_VA);
pub const INIT_TASK: u64 = 0xffff_ffff_82a2_0000;
pub const CRED: u64 = 0xffff_ffff_82a1_8000;
pub const TASK_SIZE: u64 = 0x1000;
pub const BANNER: u64 = 0xffff_ffff_82a1_9000;

/// Layout of the synthetic `task_struct` (offset, size) and `cred`.
pub const TASK_FIELDS: &[(&str, u64, u64)] = &[
    ("__state", 0x18, 4),
    ("stack", 0x20, 8),
    ("flags", 0x2c, 4),
    ("tasks", 0x100, 16),
    ("mm", 0x120, 8),
    ("exit_state", 0x130, 4),
    ("pid", 0x140, 4),
    ("tgid", 0x144, 4),
    ("real_parent", 0x150, 8),
    ("group_leader", 0x158, 8),
    ("thread_group", 0x160, 16),
    ("start_time", 0x170, 8),
    ("start_boottime", 0x178, 8),
    ("real_cred", 0x180, 8),
    ("comm", 0x188, 16),
    ("files", 0x198, 8),
    ("signal", 0x1a0, 8),
];
pub const CRED_FIELDS: &[(&str, u64, u64)] = &[
    ("uid", 4, 4),
    ("gid", 8, 4),
    ("euid", 12, 4),
    ("egid", 16, 4),
];
pub const MM_FIELDS: &[(&str, u64, u64)] = &[
    ("pgd", 0x48, 8),
    ("arg_start", 0x100, 8),
    ("arg_end", 0x108, 8),
    ("env_start", 0x110, 8),
    ("env_end", 0x118, 8),
    ("mmap", 0x120, 8),
];
pub const VMA_FIELDS: &[(&str, u64, u64)] = &[
    ("vm_start", 0, 8),
    ("vm_end", 8, 8),
    ("vm_next", 16, 8),
    ("vm_mm", 0x40, 8),
    ("vm_flags", 0x50, 8),
    ("vm_pgoff", 0x78, 8),
    ("vm_file", 0x80, 8),
];

/// Fields of a synthetic struct: (name, offset, size).
pub type Fields = &'static [(&'static str, u64, u64)];

/// The printk ring buffer (5.10+ layout, offsets of the synthetic profile).
pub const PRINTK_STRUCTS: &[(&str, u64, Fields)] = &[
    (
        "printk_ringbuffer",
        0x60,
        &[("desc_ring", 0, 0x40), ("text_data_ring", 0x40, 0x20)],
    ),
    (
        "prb_desc_ring",
        0x40,
        &[
            ("count_bits", 0, 4),
            ("descs", 8, 8),
            ("infos", 16, 8),
            ("head_id", 24, 8),
            ("tail_id", 32, 8),
        ],
    ),
    (
        "prb_desc",
        24,
        &[("state_var", 0, 8), ("text_blk_lpos", 8, 16)],
    ),
    ("prb_data_blk_lpos", 16, &[("begin", 0, 8), ("next", 8, 8)]),
    (
        "prb_data_ring",
        0x20,
        &[("size_bits", 0, 4), ("data", 8, 8)],
    ),
    (
        "printk_info",
        0x58,
        &[
            ("seq", 0, 8),
            ("ts_nsec", 8, 8),
            ("text_len", 16, 2),
            ("caller_id", 20, 4),
        ],
    ),
];
/// `prb` (a pointer to the ring buffer), the ring buffer, its arrays and its text.
pub const PRB: u64 = 0xffff_ffff_82a3_0000;
pub const RB: u64 = PRB + 0x100;
pub const DESCS: u64 = 0xffff_ffff_82a4_0000;
pub const INFOS: u64 = 0xffff_ffff_82a5_0000;
pub const LOG_DATA: u64 = 0xffff_ffff_82a7_0000;

pub fn off(name: &str) -> u64 {
    TASK_FIELDS.iter().find(|f| f.0 == name).unwrap().1
}

pub fn profile() -> Profile {
    profile_with(false)
}

/// The synthetic profile; with `maple`, `mm_struct.mm_mt` and the maple-tree node types of
/// 6.1 (`maple_range_64`: 15 pivots, 16 slots, metadata in the last slot's place;
/// `maple_arange_64`: 9 pivots, 10 slots, 10 gaps, metadata), so VMAs come from the tree.
pub fn profile_with(maple: bool) -> Profile {
    let mut b = TypesBuilder::new();
    let mut ints = std::collections::HashMap::new();
    for size in [1u32, 2, 4, 8] {
        let n = b.name(&format!("u{}", size * 8));
        let id = b.push(Type::Int {
            name: n,
            size,
            encoding: IntEncoding::default(),
            bits: (size * 8) as u8,
            bit_offset: 0,
        });
        ints.insert(u64::from(size), id);
    }
    let index = ints[&4];
    let strukt = |b: &mut TypesBuilder, name: &str, size: u64, fields: &[(&str, u64, u64)]| {
        let members: Vec<Member> = fields
            .iter()
            .map(|&(fname, offset, fsize)| {
                let ty = match ints.get(&fsize) {
                    Some(&t) => t,
                    None => b.push(Type::Array {
                        element: ints[&1],
                        index,
                        count: fsize as u32,
                    }),
                };
                Member {
                    name: b.name(fname),
                    ty,
                    bit_offset: offset * 8,
                    bitfield_size: 0,
                }
            })
            .collect();
        let members = b.members(members);
        let name = b.name(name);
        b.push(Type::Struct(Composite {
            name,
            size,
            members,
        }));
    };
    strukt(&mut b, "task_struct", 0x800, TASK_FIELDS);
    strukt(&mut b, "cred", 0x40, CRED_FIELDS);
    let mut mm_fields = MM_FIELDS.to_vec();
    if maple {
        // mm_struct gains mm_mt (found by name; its own type does not matter here).
        mm_fields.push(("mm_mt", MM_MT, 16));
        // What /proc/PID/maps names [heap] and [stack] by.
        mm_fields.extend([
            ("start_brk", 0x160, 8),
            ("brk", 0x168, 8),
            ("start_stack", 0x170, 8),
        ]);
    }
    strukt(&mut b, "mm_struct", 0x200, &mm_fields);
    let mut vma_fields = VMA_FIELDS.to_vec();
    if maple {
        // PR_SET_VMA_ANON_NAME (5.17+): a pointer to `struct anon_vma_name`.
        vma_fields.push(("anon_name", VMA_ANON_NAME, 8));
        strukt(
            &mut b,
            "anon_vma_name",
            8,
            &[("kref", 0, 4), ("name", 4, 4)],
        );
    }
    strukt(&mut b, "vm_area_struct", 0x100, &vma_fields);
    for &(name, size, fields) in PRINTK_STRUCTS {
        strukt(&mut b, name, size, fields);
    }
    if maple {
        strukt(&mut b, "maple_tree", 16, &[("ma_root", 8, 8)]);
        // mm_struct gains mm_mt (found by name; its own type does not matter here).
        let mut fields = MM_FIELDS.to_vec();
        fields.push(("mm_mt", MM_MT, 16));
        strukt(
            &mut b,
            "mm_struct",
            0x200,
            Box::leak(fields.into_boxed_slice()),
        );
        let meta_members = [("end", 0u64), ("gap", 1)]
            .iter()
            .map(|&(f, off)| Member {
                name: b.name(f),
                ty: ints[&1],
                bit_offset: off * 8,
                bitfield_size: 0,
            })
            .collect::<Vec<_>>();
        let members = b.members(meta_members);
        let name = b.name("maple_metadata");
        let meta = Some(b.push(Type::Struct(Composite {
            name,
            size: 2,
            members,
        })));
        let u64t = ints[&8];
        let node = |b: &mut TypesBuilder, name: &str, arrays: &[(&str, u64, u32)], meta_at: u64| {
            let mut members: Vec<Member> = arrays
                .iter()
                .map(|&(f, off, count)| {
                    let ty = b.push(Type::Array {
                        element: u64t,
                        index,
                        count,
                    });
                    Member {
                        name: b.name(f),
                        ty,
                        bit_offset: off * 8,
                        bitfield_size: 0,
                    }
                })
                .collect();
            if let Some(meta) = meta {
                members.push(Member {
                    name: b.name("meta"),
                    ty: meta,
                    bit_offset: meta_at * 8,
                    bitfield_size: 0,
                });
            }
            let members = b.members(members);
            let name = b.name(name);
            b.push(Type::Struct(Composite {
                name,
                size: 256,
                members,
            }));
        };
        node(
            &mut b,
            "maple_range_64",
            &[("pivot", 8, 15), ("slot", 128, 16)],
            248,
        );
        node(
            &mut b,
            "maple_arange_64",
            &[("pivot", 8, 9), ("slot", 80, 10), ("gap", 160, 10)],
            240,
        );
        node(&mut b, "maple_node", &[("slot", 8, 31)], 248);
        let values = [
            "maple_dense",
            "maple_leaf_64",
            "maple_range_64",
            "maple_arange_64",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| vmi_profile::Enumerator {
            name: b.name(n),
            value: i as i64,
        })
        .collect::<Vec<_>>();
        let values = b.enumerators(values);
        let name = b.name("maple_type");
        b.push(Type::Enum {
            name,
            size: 4,
            signed: false,
            values,
        });
    }
    let types = b.build().unwrap();
    let symbols = SymbolTable::new(vec![
        Symbol {
            name: "init_task".into(),
            address: INIT_TASK,
            kind: Some('D'),
        },
        Symbol {
            name: "linux_banner".into(),
            address: BANNER,
            kind: Some('D'),
        },
        Symbol {
            name: "prb".into(),
            address: PRB,
            kind: Some('D'),
        },
    ]);
    Profile::new(
        Metadata {
            os: OsKind::Linux,
            ..Metadata::default()
        },
        symbols,
        types,
    )
}

pub fn vmcoreinfo() -> String {
    let phys_base = ROOT.wrapping_sub(SWAPPER - START_KERNEL_MAP) as i64;
    format!(
        "OSRELEASE=6.1.0-mock\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)={SWAPPER:x}\n\
         NUMBER(phys_base)={phys_base}\nKERNELOFFSET=0\n"
    )
}

/// A kernel with `n` processes (pids 1..=n) after `init_task`, in a 2 MiB mapping.
pub struct Mock {
    pub driver: MockDriver,
}

pub fn task_va(i: u64) -> u64 {
    INIT_TASK + i * TASK_SIZE
}

pub fn va_to_pa(va: u64) -> Pa {
    Pa(REGION_PA + (va - REGION_VA))
}

impl Mock {
    pub fn new(n: u64) -> Self {
        let driver = MockDriver::new(16 << 20);
        let mut tables = PageTableBuilder::new(&driver, Pa(ROOT), Pa(0x80_0000));
        tables.map(Va(REGION_VA), Pa(REGION_PA), PageSize::Size2M);
        let m = Self { driver };
        m.write(BANNER, b"Linux version 6.1.0-mock\n\0");
        m.write_u32(CRED + 4, 0);
        for i in 0..=n {
            let t = task_va(i);
            m.write_u32(t + off("pid"), i as u32);
            m.write_u32(t + off("tgid"), i as u32);
            m.write_u32(t + off("__state"), 1);
            m.write(t + off("comm"), format!("task{i}\0").as_bytes());
            m.write_u64(t + off("real_parent"), INIT_TASK);
            m.write_u64(t + off("real_cred"), CRED);
            let next = task_va((i + 1) % (n + 1)) + off("tasks");
            let prev = task_va((i + n) % (n + 1)) + off("tasks");
            m.write_u64(t + off("tasks"), next);
            m.write_u64(t + off("tasks") + 8, prev);
        }
        m
    }

    pub fn write(&self, va: u64, data: &[u8]) {
        self.driver.write_physical(va_to_pa(va), data);
    }
    pub fn write_u32(&self, va: u64, v: u32) {
        self.write(va, &v.to_le_bytes());
    }
    pub fn write_u64(&self, va: u64, v: u64) {
        self.write(va, &v.to_le_bytes());
    }

    pub fn os(self, limits: Limits) -> (VmiCore<MockDriver>, LinuxOs) {
        self.os_with(limits, profile())
    }

    pub fn os_with(self, limits: Limits, profile: Profile) -> (VmiCore<MockDriver>, LinuxOs) {
        self.try_os(limits, profile).expect("mock kernel")
    }

    /// The core and the OS layer over this kernel, or why they could not be built (the
    /// fuzz target's writes may break what the layer needs to start).
    pub fn try_os(
        self,
        limits: Limits,
        profile: Profile,
    ) -> Result<(VmiCore<MockDriver>, LinuxOs), VmiError> {
        let core = VmiCore::new(self.driver)?;
        let os = LinuxOs::builder()
            .no_cache()
            .vmcoreinfo(vmcoreinfo())
            .profile(profile)
            .limits(limits)
            .build(&core)?;
        Ok((core, os))
    }
}
