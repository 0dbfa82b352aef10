//! The Linux walkers over a mutable mock kernel: a task list, credentials, an mm with a
//! VMA list, and a printk ring, laid out in one 2 MiB kernel mapping of the mock driver.
//! The fuzz input is a list of 8-byte writes (offset, value) into that mapping; then
//! processes, threads, VMAs, command lines and the kernel log are read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmi_core::{Pa, Va, VmiCore};
use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
use vmi_os_linux::{Limits, LinuxOs};
use vmi_profile::{
    Composite, IntEncoding, Member, Metadata, OsKind, Profile, Symbol, SymbolTable, Type,
    TypesBuilder,
};

const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const REGION_VA: u64 = 0xffff_ffff_82a0_0000;
const REGION_PA: u64 = 0x40_0000;
const SWAPPER: u64 = REGION_VA + 0x1_0000;
const ROOT: u64 = REGION_PA + 0x1_0000;
const INIT_TASK: u64 = REGION_VA + 0x2_0000;
const CRED: u64 = REGION_VA + 0x1_8000;
const BANNER: u64 = REGION_VA + 0x1_9000;
const PRB: u64 = REGION_VA + 0x3_0000;
const TASK_SIZE: u64 = 0x1000;
const TASKS: u64 = 6;

type Fields = &'static [(&'static str, u64, u64)];

const STRUCTS: &[(&str, u64, Fields)] = &[
    (
        "task_struct",
        0x800,
        &[
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
        ],
    ),
    (
        "cred",
        0x40,
        &[
            ("uid", 4, 4),
            ("gid", 8, 4),
            ("euid", 12, 4),
            ("egid", 16, 4),
        ],
    ),
    (
        "mm_struct",
        0x200,
        &[
            ("pgd", 0x48, 8),
            ("arg_start", 0x100, 8),
            ("arg_end", 0x108, 8),
            ("env_start", 0x110, 8),
            ("env_end", 0x118, 8),
            ("mmap", 0x120, 8),
        ],
    ),
    (
        "vm_area_struct",
        0x100,
        &[
            ("vm_start", 0, 8),
            ("vm_end", 8, 8),
            ("vm_next", 16, 8),
            ("vm_mm", 0x40, 8),
            ("vm_flags", 0x50, 8),
            ("vm_pgoff", 0x78, 8),
            ("vm_file", 0x80, 8),
        ],
    ),
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

fn profile() -> Profile {
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
    for &(name, size, fields) in STRUCTS {
        let members: Vec<Member> = fields
            .iter()
            .map(|&(fname, offset, fsize)| {
                let ty = match ints.get(&fsize) {
                    Some(&t) => t,
                    None => b.push(Type::Array {
                        element: ints[&1],
                        index: ints[&4],
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
    }
    let types = b.build().expect("synthetic types");
    let sym = |name: &str, address| Symbol {
        name: name.into(),
        address,
        kind: Some('D'),
    };
    Profile::new(
        Metadata {
            os: OsKind::Linux,
            ..Metadata::default()
        },
        SymbolTable::new(vec![
            sym("init_task", INIT_TASK),
            sym("linux_banner", BANNER),
            sym("prb", PRB),
        ]),
        types,
    )
}

fn write(d: &MockDriver, va: u64, data: &[u8]) {
    d.write_physical(Pa(REGION_PA + (va - REGION_VA)), data);
}

fuzz_target!(|data: &[u8]| {
    let d = MockDriver::new(16 << 20);
    let mut tables = PageTableBuilder::new(&d, Pa(ROOT), Pa(0x80_0000));
    tables.map(Va(REGION_VA), Pa(REGION_PA), PageSize::Size2M);
    write(&d, BANNER, b"Linux version 6.1.0-fuzz\n\0");
    for i in 0..=TASKS {
        let t = INIT_TASK + i * TASK_SIZE;
        let link = |j: u64| INIT_TASK + (j % (TASKS + 1)) * TASK_SIZE + 0x100;
        write(&d, t + 0x140, &(i as u32).to_le_bytes());
        write(&d, t + 0x144, &(i as u32).to_le_bytes());
        write(&d, t + 0x188, format!("task{i}\0").as_bytes());
        write(&d, t + 0x150, &INIT_TASK.to_le_bytes());
        write(&d, t + 0x158, &t.to_le_bytes());
        write(&d, t + 0x160, &(t + 0x160).to_le_bytes());
        write(&d, t + 0x168, &(t + 0x160).to_le_bytes());
        write(&d, t + 0x180, &CRED.to_le_bytes());
        write(&d, t + 0x100, &link(i + 1).to_le_bytes());
        write(&d, t + 0x108, &link(i + TASKS).to_le_bytes());
    }
    // The input: (offset within the first 512 KiB of the mapping, value) pairs.
    for w in data.chunks_exact(12) {
        let off = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])) % (512 << 10);
        write(&d, REGION_VA + (off & !7), &w[4..12]);
    }
    let Ok(core) = VmiCore::new(d) else {
        return;
    };
    let phys_base = ROOT.wrapping_sub(SWAPPER - START_KERNEL_MAP) as i64;
    let vmcoreinfo = format!(
        "OSRELEASE=6.1.0-fuzz\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)={SWAPPER:x}\n\
         NUMBER(phys_base)={phys_base}\nKERNELOFFSET=0\n"
    );
    let Ok(os) = LinuxOs::builder()
        .no_cache()
        .vmcoreinfo(vmcoreinfo)
        .profile(profile())
        .limits(Limits {
            max_list: 1024,
            ..Limits::default()
        })
        .build(&core)
    else {
        return;
    };
    if let Ok(list) = os.process_list(&core) {
        let _ = os.all_threads(&core);
        for t in list.tasks.iter().take(8) {
            let _ = os.cmdline(&core, t);
            let _ = os.vmas(&core, t);
        }
    }
    let _ = os.dmesg(&core);
});
