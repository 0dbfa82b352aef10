//! Random physical reads of the 256 MiB test-guest dump in every format, against a plain
//! mmap of the raw RAM image (the ceiling) and memflow reading the same raw file.
//!
//! Dumps come from `$VMI_DUMP_BENCH_DIR` or a test guest booted here (see `common`);
//! without QEMU the bench prints why and measures nothing. `benches/readpath.rs` prints
//! the side-by-side table of issue 17 (physical and virtual reads) from the same dumps.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_core::{Gfn, Pa, VmiCore, VmiRead};
use vmi_driver_dump::DumpDriver;

mod common;
use common::dumps;

const ADDRESSES: usize = 1 << 14;

/// A plain mapping of an ELF core and the file offset of physical address 0, when a
/// `PT_LOAD` starts there and covers `size` bytes (the raw image's).
fn elf_ram_mapping(path: &Path, size: u64) -> Option<(memmap2::Mmap, usize)> {
    let file = std::fs::File::open(path).ok()?;
    #[allow(unsafe_code)]
    // SAFETY: the file is this bench's own dump, opened read-only and mapped private and
    // read-only; nothing writes or truncates it while it is mapped.
    let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }.ok()?;
    let u64_at = |at: usize| Some(u64::from_le_bytes(map.get(at..at + 8)?.try_into().ok()?));
    let u16_at = |at: usize| Some(u16::from_le_bytes(map.get(at..at + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for n in 0..phnum {
        let ph = phoff + n * phentsize;
        let p_type = u32::from_le_bytes(map.get(ph..ph + 4)?.try_into().ok()?);
        if p_type == 1 && u64_at(ph + 0x18)? == 0 && u64_at(ph + 0x20)? >= size {
            let offset = usize::try_from(u64_at(ph + 8)?).ok()?;
            return Some((map, offset));
        }
    }
    None
}

fn bench(c: &mut Criterion) {
    let Some(d) = dumps() else {
        eprintln!("SKIPPED: dump read benchmarks: no QEMU and no $VMI_DUMP_BENCH_DIR");
        return;
    };
    let raw_path = d.dir.join("guest.raw");
    let file = std::fs::File::open(&raw_path).expect("raw dump");
    let size = file.metadata().unwrap().len();
    // The ceiling: a plain private read-only mapping of the raw image.
    #[allow(unsafe_code)]
    // SAFETY: the file is this bench's own copy of the RAM image, opened read-only and
    // mapped private and read-only; nothing writes or truncates it while it is mapped.
    let mmap = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }.expect("mmap");
    let pages = size / 4096;
    let mut rng = SmallRng::seed_from_u64(42);
    let gfns: Vec<u64> = (0..ADDRESSES).map(|_| rng.gen_range(0..pages)).collect();
    let pas: Vec<u64> = (0..ADDRESSES)
        .map(|_| rng.gen_range(0..size - 8) & !7)
        .collect();
    // "Hot": 8-byte reads within 32 pages (of the kernel image area, 16 MiB up), so TLB
    // and cache misses do not drown the per-read cost of the driver itself.
    let hot: Vec<u64> = (0..ADDRESSES)
        .map(|_| (16 << 20) + (rng.gen_range(0..32 * 4096 - 8) & !7))
        .collect();

    let mut g = c.benchmark_group("read");
    g.sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));

    let mut buf = vec![0u8; 4096];
    let mut i = 0usize;
    g.bench_function("ceiling-mmap/page", |b| {
        b.iter(|| {
            i = (i + 1) % ADDRESSES;
            let at = (gfns[i] * 4096) as usize;
            buf.copy_from_slice(&mmap[at..at + 4096]);
            black_box(&buf);
        })
    });
    g.bench_function("ceiling-mmap/u64", |b| {
        b.iter(|| {
            i = (i + 1) % ADDRESSES;
            let at = pas[i] as usize;
            black_box(u64::from_le_bytes(mmap[at..at + 8].try_into().unwrap()))
        })
    });

    g.bench_function("ceiling-mmap/hot-u64", |b| {
        b.iter(|| {
            i = (i + 1) % ADDRESSES;
            let at = hot[i] as usize;
            black_box(u64::from_le_bytes(mmap[at..at + 8].try_into().unwrap()))
        })
    });

    // A control for ELF: the same bare load from a plain mapping of the ELF file, at the
    // file offset of the PT_LOAD that holds physical 0 (QEMU puts it 0x1170 bytes in, so
    // the file's pages are not the raw image's; this separates the file from the driver).
    if let Some((elf, base)) = elf_ram_mapping(&d.dir.join("guest.elf"), size) {
        g.bench_function("ceiling-mmap-elf/u64", |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let at = base + pas[i] as usize;
                black_box(u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()))
            })
        });
        g.bench_function("ceiling-mmap-elf/hot-u64", |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let at = base + hot[i] as usize;
                black_box(u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()))
            })
        });
    }

    // memflow's mapped-file connector on the same raw file.
    {
        use memflow::connector::MmapInfo;
        use memflow::mem::{MemoryMap, PhysicalMemory};
        use memflow::types::{Address, umem};
        let mut map = MemoryMap::<(Address, umem)>::new();
        map.push_range(
            Address::from(0u64),
            Address::from(size),
            Address::from(0u64),
        );
        let mut mem = MmapInfo::try_with_filemap(std::fs::File::open(&raw_path).unwrap(), map)
            .expect("memflow mmap")
            .into_connector();
        g.bench_function("memflow/page", |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                mem.phys_read_into(Address::from(gfns[i] * 4096).into(), &mut buf[..])
                    .unwrap();
                black_box(&buf);
            })
        });
        g.bench_function("memflow/hot-u64", |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let mut v = 0u64;
                mem.phys_read_into(Address::from(hot[i]).into(), &mut v)
                    .unwrap();
                black_box(v)
            })
        });
        g.bench_function("memflow/u64", |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let mut v = 0u64;
                mem.phys_read_into(Address::from(pas[i]).into(), &mut v)
                    .unwrap();
                black_box(v)
            })
        });
    }

    for (name, file) in [
        ("raw", "guest.raw"),
        ("elf", "guest.elf"),
        ("lime", "guest.lime"),
        ("kdump-zlib-flat", "guest.kdump"),
    ] {
        let Ok(dump) = DumpDriver::open(d.dir.join(file)) else {
            eprintln!("SKIPPED: {name}: {file} missing");
            continue;
        };
        g.bench_function(format!("{name}/page"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                dump.read_page(Gfn(gfns[i]), 0, &mut buf).unwrap();
                black_box(&buf);
            })
        });
        g.bench_function(format!("{name}/u64"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let pa = pas[i];
                let mut v = [0u8; 8];
                dump.read_page(Gfn(pa >> 12), (pa & 0xfff) as usize, &mut v)
                    .unwrap();
                black_box(u64::from_le_bytes(v))
            })
        });
        g.bench_function(format!("{name}/hot-u64"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let pa = hot[i];
                let mut v = [0u8; 8];
                dump.read_page(Gfn(pa >> 12), (pa & 0xfff) as usize, &mut v)
                    .unwrap();
                black_box(u64::from_le_bytes(v))
            })
        });
        let core = VmiCore::new(dump).unwrap();
        g.bench_function(format!("{name}/core-page"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                core.read_physical(Pa(gfns[i] * 4096), &mut buf).unwrap();
                black_box(&buf);
            })
        });
        g.bench_function(format!("{name}/core-u64"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                let mut v = [0u8; 8];
                core.read_physical(Pa(pas[i]), &mut v).unwrap();
                black_box(u64::from_le_bytes(v))
            })
        });
        g.bench_function(format!("{name}/core-read_u64"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                black_box(core.read_u64(Pa(pas[i])).unwrap())
            })
        });
        g.bench_function(format!("{name}/core-hot-u64"), |b| {
            b.iter(|| {
                i = (i + 1) % ADDRESSES;
                black_box(core.read_u64(Pa(hot[i])).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
