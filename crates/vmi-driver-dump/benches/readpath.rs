//! The read table of issue 17, measured side by side in one run: random 4 KiB and 8-byte
//! physical reads and random 8-byte virtual reads of the test guest's raw RAM image
//! through `VmiCore` (with and without its translation cache), memflow 0.2 on the same
//! file, and the ceilings: a plain `mmap` of the file for physical reads, a naive walk
//! that reads the four (or three) page-table entries from that mapping every time for
//! virtual reads.
//!
//! Every tool reads the same seeded addresses; the checksums (wrapping sums of what was
//! read) must be equal. Time is the thread's CPU time (the machine is shared). Figures are the median of 5 runs (taken round the rows), in millions of reads per second.
//! Virtual addresses come from the page tables of vCPU 0 in `guest.elf`, split by the
//! size of the leaf that maps them (4 KiB or 2 MiB).
//!
//! `cargo bench -p vmi-driver-dump --bench readpath [-- FILTER]` (FILTER: a substring of
//! the row names). Dumps: see `common`.

#![allow(missing_docs)] // a bench binary

use std::hint::black_box;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_core::{
    AccessContext, Pa, Registers as _, VcpuId, VmiCore, VmiCoreConfig, VmiQueryRegisters,
};
use vmi_driver_dump::DumpDriver;

mod common;

/// Addresses per set.
const ADDRESSES: usize = 1 << 16;
/// Passes over the set per run.
const PASSES: usize = 8;
const RUNS: usize = 5;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// CPU time of this thread in seconds: on a machine shared with other jobs, wall-clock
/// time counts the time we were not running.
fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `ts` is a valid, writable `timespec` for the duration of the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux kernel we run on supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One run of one row: millions of reads per second (of thread CPU time) and the checksum.
fn measure(pass: &mut dyn FnMut() -> u64) -> (f64, u64) {
    let start = thread_cpu_time();
    let mut sum = 0u64;
    for _ in 0..PASSES {
        sum = sum.wrapping_add(pass());
    }
    let secs = thread_cpu_time() - start;
    ((ADDRESSES * PASSES) as f64 / secs / 1e6, sum)
}

/// Reads `addresses` in batches of 512 with `read` (which fills 8 bytes per address)
/// and returns the wrapping sum of the values.
fn batched(addresses: &[u64], mut read: impl FnMut(&[u64], &mut [u8])) -> u64 {
    let mut values = vec![0u8; 512 * 8];
    let mut s = 0u64;
    for batch in addresses.chunks(512) {
        let values = &mut values[..batch.len() * 8];
        read(batch, values);
        for v in values.chunks_exact(8) {
            s = s.wrapping_add(u64::from_le_bytes(v.try_into().unwrap()));
        }
    }
    s
}

#[inline(always)]
fn u64_at(mem: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(mem.get(at..at + 8)?.try_into().ok()?))
}

/// The ceiling for virtual reads: a 4-level walk from the mapping, nothing cached.
#[inline(always)]
fn naive_read(mem: &[u8], root: u64, va: u64) -> Option<u64> {
    let mut table = root & ADDRESS_MASK;
    for shift in [39u32, 30, 21, 12] {
        let entry = u64_at(mem, table + ((va >> shift) & 0x1ff) * 8)?;
        if entry & 1 == 0 {
            return None;
        }
        if shift == 12 || (shift != 39 && entry & 0x80 != 0) {
            let size = 1u64 << shift;
            return u64_at(
                mem,
                (entry & ADDRESS_MASK & !(size - 1)) | (va & (size - 1)),
            );
        }
        table = entry & ADDRESS_MASK;
    }
    None
}

/// Every present leaf under `root` that lies inside the image: (virtual address, size).
fn leaves(mem: &[u8], root: u64) -> Vec<(u64, u64)> {
    fn walk(mem: &[u8], table: u64, shift: u32, base: u64, out: &mut Vec<(u64, u64)>) {
        for i in 0..512u64 {
            let Some(entry) = u64_at(mem, table + i * 8) else {
                return;
            };
            if entry & 1 == 0 {
                continue;
            }
            let va = base | (i << shift);
            let size = 1u64 << shift;
            if shift == 12 || (shift != 39 && entry & 0x80 != 0) {
                let pa = entry & ADDRESS_MASK & !(size - 1);
                if pa + size <= mem.len() as u64 {
                    // Sign-extend bit 47.
                    out.push((((va << 16) as i64 >> 16) as u64, size));
                }
            } else {
                walk(mem, entry & ADDRESS_MASK, shift - 9, va, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(mem, root & ADDRESS_MASK, 39, 0, &mut out);
    out
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let Some(d) = common::dumps() else {
        eprintln!("SKIPPED: read-path table: no QEMU and no $VMI_DUMP_BENCH_DIR");
        return;
    };
    let raw_path = d.dir.join("guest.raw");
    let file = std::fs::File::open(&raw_path).expect("guest.raw");
    let size = file.metadata().unwrap().len();
    #[allow(unsafe_code)]
    // SAFETY: the file is this bench's own copy of the RAM image, opened read-only and
    // mapped private and read-only; nothing writes or truncates it while it is mapped.
    let mmap = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }.expect("mmap");
    let mem: &[u8] = &mmap;
    let root = DumpDriver::open(d.dir.join("guest.elf"))
        .and_then(|elf| elf.registers(VcpuId(0)))
        .expect("guest.elf with vCPU 0 registers (for CR3)")
        .translation_root()
        .0;

    let mut rng = SmallRng::seed_from_u64(42);
    let pages = size / 4096;
    let gfns: Vec<u64> = (0..ADDRESSES).map(|_| rng.gen_range(0..pages)).collect();
    let pas: Vec<u64> = (0..ADDRESSES)
        .map(|_| rng.gen_range(0..size - 8) & !7)
        .collect();
    let all = leaves(mem, root);
    let set = |rng: &mut SmallRng, size: u64| -> (usize, Vec<u64>) {
        let of: Vec<u64> = all.iter().filter(|l| l.1 == size).map(|l| l.0).collect();
        assert!(!of.is_empty(), "no {size:#x} leaves under {root:#x}");
        let vas = (0..ADDRESSES)
            .map(|_| of[rng.gen_range(0..of.len())] + (rng.gen_range(0..size) & !7))
            .collect();
        (of.len(), vas)
    };
    let (n4k, va4k) = set(&mut rng, 1 << 12);
    let (n2m, va2m) = set(&mut rng, 1 << 21);
    println!(
        "guest.raw: {} MiB, root {root:#x}: {n4k} 4 KiB leaves, {n2m} 2 MiB leaves; \
         {ADDRESSES} addresses per set, {PASSES} passes, median of {RUNS}",
        size >> 20
    );

    let open_core = |translation_cache| {
        VmiCore::with_config(
            DumpDriver::open(&raw_path).expect("raw dump"),
            VmiCoreConfig {
                translation_cache,
                ..VmiCoreConfig::default()
            },
        )
        .expect("core")
    };
    let cached = open_core(vmi_core::DEFAULT_TRANSLATION_CACHE);
    let uncached = open_core(0);

    use memflow::connector::MmapInfo;
    use memflow::mem::{MemoryMap, MemoryView, PhysicalMemory, VirtualDma};
    use memflow::types::{Address, umem};
    let connector = || {
        let mut map = MemoryMap::<(Address, umem)>::new();
        map.push_range(
            Address::from(0u64),
            Address::from(size),
            Address::from(0u64),
        );
        MmapInfo::try_with_filemap(std::fs::File::open(&raw_path).unwrap(), map)
            .expect("memflow mmap")
            .into_connector()
    };
    let mut mf_phys = connector();
    let mut mf_phys2 = connector();
    let virt = || {
        VirtualDma::new(
            connector(),
            memflow::architecture::x86::x64::ARCH,
            memflow::architecture::x86::x64::new_translator(Address::from(root)),
        )
    };
    let (mut mf_virt4k, mut mf_virt2m) = (virt(), virt());

    type Row<'a> = (&'a str, &'a str, Box<dyn FnMut() -> u64 + 'a>);
    let first_u64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    let (mut page1, mut page2, mut page3) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
    let mut rows: Vec<Row> = Vec::new();
    rows.push((
        "4 KiB physical",
        "plain mmap",
        Box::new(|| {
            let mut s = 0u64;
            for &g in &gfns {
                let at = (g * 4096) as usize;
                page1.copy_from_slice(&mem[at..at + 4096]);
                s = s.wrapping_add(first_u64(black_box(&page1[..])));
            }
            s
        }),
    ));
    rows.push((
        "4 KiB physical",
        "memflow 0.2",
        Box::new(|| {
            let mut s = 0u64;
            for &g in &gfns {
                mf_phys
                    .phys_read_into(Address::from(g * 4096).into(), &mut page2[..])
                    .unwrap();
                s = s.wrapping_add(first_u64(black_box(&page2[..])));
            }
            s
        }),
    ));
    rows.push((
        "4 KiB physical",
        "VmiCore",
        Box::new(|| {
            let mut s = 0u64;
            for &g in &gfns {
                cached.read_physical(Pa(g * 4096), &mut page3).unwrap();
                s = s.wrapping_add(first_u64(black_box(&page3[..])));
            }
            s
        }),
    ));
    rows.push((
        "8 B physical",
        "plain mmap",
        Box::new(|| {
            let mut s = 0u64;
            for &pa in &pas {
                let at = pa as usize;
                s = s.wrapping_add(u64::from_le_bytes(mem[at..at + 8].try_into().unwrap()));
            }
            s
        }),
    ));
    rows.push((
        "8 B physical",
        "VmiCore::read_batch (512 per call)",
        Box::new(|| {
            batched(&pas, |batch, values| {
                let mut requests: Vec<(AccessContext, &mut [u8])> = batch
                    .iter()
                    .zip(values.chunks_exact_mut(8))
                    .map(|(&pa, v)| (AccessContext::direct(Pa(pa)), v))
                    .collect();
                for r in cached.read_batch(&mut requests) {
                    r.unwrap();
                }
            })
        }),
    ));
    rows.push((
        "8 B physical",
        "memflow 0.2",
        Box::new(|| {
            let mut s = 0u64;
            for &pa in &pas {
                let mut v = 0u64;
                mf_phys2
                    .phys_read_into(Address::from(pa).into(), &mut v)
                    .unwrap();
                s = s.wrapping_add(v);
            }
            s
        }),
    ));
    rows.push((
        "8 B physical",
        "VmiCore",
        Box::new(|| {
            let mut s = 0u64;
            for &pa in &pas {
                s = s.wrapping_add(cached.read_u64(Pa(pa)).unwrap());
            }
            s
        }),
    ));
    let cached_ref = &cached;
    for (set_name, vas) in [
        ("8 B virtual, 4 KiB-mapped", &va4k),
        ("8 B virtual, 2 MiB-mapped", &va2m),
    ] {
        rows.push((
            set_name,
            "naive uncached walk",
            Box::new(move || {
                let mut s = 0u64;
                for &va in vas {
                    s = s.wrapping_add(naive_read(mem, root, va).unwrap());
                }
                s
            }),
        ));
        for (name, core) in [
            ("VmiCore, translation cache", &cached),
            ("VmiCore, no translation cache", &uncached),
        ] {
            rows.push((
                set_name,
                name,
                Box::new(move || {
                    let mut s = 0u64;
                    for &va in vas {
                        s = s.wrapping_add(
                            core.read_u64(AccessContext::paging(va, Pa(root))).unwrap(),
                        );
                    }
                    s
                }),
            ));
        }
        rows.push((
            set_name,
            "VmiCore::read_batch (512 per call), translation cache",
            Box::new(move || {
                let cached = &cached_ref;
                batched(vas, |batch, values| {
                    let mut requests: Vec<(AccessContext, &mut [u8])> = batch
                        .iter()
                        .zip(values.chunks_exact_mut(8))
                        .map(|(&va, v)| (AccessContext::paging(va, Pa(root)), v))
                        .collect();
                    for r in cached.read_batch(&mut requests) {
                        r.unwrap();
                    }
                })
            }),
        ));
    }
    for (set_name, vas, mf) in [
        ("8 B virtual, 4 KiB-mapped", &va4k, &mut mf_virt4k),
        ("8 B virtual, 2 MiB-mapped", &va2m, &mut mf_virt2m),
    ] {
        rows.push((
            set_name,
            "memflow 0.2",
            Box::new(move || {
                let mut s = 0u64;
                for &va in vas {
                    let mut v = 0u64;
                    mf.read_into(Address::from(va), &mut v).unwrap();
                    s = s.wrapping_add(v);
                }
                s
            }),
        ));
    }

    let wanted = |set: &str, tool: &str| {
        filter
            .as_deref()
            .is_none_or(|f| set.contains(f) || tool.contains(f))
    };
    rows.retain(|(set, tool, _)| wanted(set, tool));
    // Runs go round the rows, so that a change of machine load hits every row alike.
    let mut rates = vec![Vec::new(); rows.len()];
    let mut sums = vec![0u64; rows.len()];
    for _ in 0..RUNS {
        for (n, (_, _, pass)) in rows.iter_mut().enumerate() {
            let (rate, sum) = measure(pass);
            rates[n].push(rate);
            sums[n] = sum;
        }
    }
    println!("| random reads | tool | M reads/s | checksum |");
    println!("|---|---|---|---|");
    for (n, (set, tool, _)) in rows.iter().enumerate() {
        rates[n].sort_by(f64::total_cmp);
        let rate = rates[n][RUNS / 2];
        println!("| {set} | {tool} | {rate:.2} | {:#018x} |", sums[n]);
    }
}
