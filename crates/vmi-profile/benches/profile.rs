//! Benchmarks on the real Debian kernel (found like the real-data tests do; skipped with a
//! message when there is none): BTF → types, vmlinuz → full profile, kallsyms decoding from
//! memory, cache load.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vmi_profile::btf::parse_btf;
use vmi_profile::cache::{self, CacheKey};
use vmi_profile::image::{Vmlinux, vmlinux_from_image};
use vmi_profile::kallsyms::{self, ImageMemory};
use vmi_profile::linux::{kallsyms_from_vmlinux, profile_from_kernel_bytes};

#[path = "../tests/common/mod.rs"]
mod common;

fn benches(c: &mut Criterion) {
    let Some(path) = common::kernel_images().into_iter().next() else {
        eprintln!("SKIPPED benches: no Debian kernel image available");
        return;
    };
    let vmlinuz = std::fs::read(&path).unwrap();
    let elf_bytes = vmlinux_from_image(&vmlinuz, "vmlinuz")
        .unwrap()
        .into_owned();
    let elf = Vmlinux::parse(&elf_bytes, "vmlinux").unwrap();
    let btf = elf.btf().unwrap();
    eprintln!("kernel {}: BTF {} bytes", path.display(), btf.len());

    let mut g = c.benchmark_group("profile");
    g.sample_size(20);
    g.bench_function("btf_to_types_4MB", |b| {
        b.iter(|| parse_btf(black_box(btf), "vmlinux").unwrap())
    });
    g.bench_function("vmlinuz_to_full_profile", |b| {
        b.iter(|| profile_from_kernel_bytes(black_box(&vmlinuz), "vmlinuz").unwrap())
    });
    let k = kallsyms_from_vmlinux(&elf).unwrap();
    let mem = ImageMemory::new(elf.loaded_sections());
    let stext = k.address("_stext").unwrap();
    g.bench_function("kallsyms_decode_from_memory", |b| {
        b.iter(|| kallsyms::decode(&mem, black_box(&k.tables), None, &[("_stext", stext)]).unwrap())
    });
    g.bench_function("kallsyms_search_in_image", |b| {
        b.iter(|| kallsyms_from_vmlinux(black_box(&elf)).unwrap())
    });

    let profile = profile_from_kernel_bytes(&vmlinuz, "vmlinuz").unwrap();
    let key = CacheKey::for_profile(&profile).unwrap();
    let encoded = cache::encode(&profile, &key);
    eprintln!("cache entry: {} bytes", encoded.len());
    let p = std::path::Path::new("bench.vmiprof");
    g.bench_function("cache_decode", |b| {
        b.iter(|| cache::decode(black_box(&encoded), &key, p).unwrap())
    });
    let dir = std::env::temp_dir().join(format!("vmi-profile-bench-{}", std::process::id()));
    let store = cache::ProfileCache::new(&dir);
    store.store(&key, &profile).unwrap();
    g.bench_function("cache_load_file", |b| {
        b.iter(|| store.load(black_box(&key)).unwrap().unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(profile, benches);
criterion_main!(profile);
