//! `translate_address` cold and cached, and random `read_u64` through translation, on
//! the mock driver: 64 MiB of guest memory mapped with 4 KiB pages.

#![allow(missing_docs)] // criterion_group! generates undocumented items
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vmi_core::{AccessContext, AddressContext, Pa, Va, VmiCore, VmiCoreConfig};
use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};

const BASE: Va = Va(0xffff_8880_0000_0000);
const DATA: u64 = 0x1000_0000;
const PAGES: u64 = 16 * 1024; // 64 MiB
const ROOT: Pa = Pa(0x10_0000);

fn target() -> MockDriver {
    let driver = MockDriver::new(1 << 30);
    let mut b = PageTableBuilder::new(&driver, ROOT, Pa(0x20_0000));
    for i in 0..PAGES {
        b.map(BASE + i * 4096, Pa(DATA + i * 4096), PageSize::Size4K);
    }
    driver
}

fn bench(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(7);
    let addrs: Vec<Va> = (0..4096)
        .map(|_| BASE + rng.gen_range(0..PAGES * 4096 - 8))
        .collect();

    let mut g = c.benchmark_group("translate_address");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    let uncached = VmiCore::with_config(
        target(),
        VmiCoreConfig {
            translation_cache: 0,
            page_cache: Some(0),
            statistics: false,
        },
    )
    .unwrap();
    g.bench_function("cold (no cache, full walk)", |b| {
        b.iter(|| {
            for &va in &addrs {
                uncached
                    .translate_address(AddressContext::new(va, ROOT))
                    .unwrap();
            }
        })
    });
    let cached = VmiCore::with_config(
        target(),
        VmiCoreConfig {
            translation_cache: 1 << 16,
            page_cache: Some(0),
            statistics: false,
        },
    )
    .unwrap();
    g.bench_function("cached", |b| {
        b.iter_batched(
            || {
                for &va in &addrs {
                    cached
                        .translate_address(AddressContext::new(va, ROOT))
                        .unwrap();
                }
            },
            |()| {
                for &va in &addrs {
                    cached
                        .translate_address(AddressContext::new(va, ROOT))
                        .unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("read_u64 via translation");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("random, translation cache on", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &va in &addrs {
                sum = sum.wrapping_add(cached.read_u64(AccessContext::paging(va, ROOT)).unwrap());
            }
            sum
        })
    });
    g.bench_function("random, no caches", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &va in &addrs {
                sum = sum.wrapping_add(uncached.read_u64(AccessContext::paging(va, ROOT)).unwrap());
            }
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
