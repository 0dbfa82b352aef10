//! VMCOREINFO, System.map, ISF and cache: behaviour, errors, and seeded fuzzing.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_profile::cache::{self, CacheKey, ProfileCache};
use vmi_profile::isf::{ExportOptions, export_isf, parse_isf};
use vmi_profile::sysmap::{parse_system_map, write_system_map};
use vmi_profile::{
    Metadata, OsKind, PdbId, Profile, ProfileError, Symbol, SymbolTable, VmcoreInfo,
};
use vmi_test_guest::bounded::{CASE_LIMIT, MemoryCap, memory_cap, within};

const VMCOREINFO: &str = "OSRELEASE=6.1.0-56-cloud-amd64\n\
BUILD-ID=3b43fad503487449049240\n\
PAGESIZE=4096\n\
SYMBOL(init_uts_ns)=ffffffff9f01b4a0\n\
OFFSET(uts_namespace.name)=0\n\
SYMBOL(swapper_pg_dir)=ffffffff9f010000\n\
SYMBOL(_stext)=ffffffff9d800000\n\
NUMBER(VMALLOC_START)=0xffffa4c000000000\n\
SIZE(page)=64\n\
LENGTH(zone.free_area)=11\n\
NUMBER(phys_base)=-2013265920\n\
NUMBER(pgtable_l5_enabled)=0\n\
SYMBOL(kallsyms_names)=ffffffff9e975590\n\
KERNELOFFSET=1c800000\n\
CRASHTIME=1700000000\n\
X86_EXTRA=yes\n";

#[test]
fn vmcoreinfo_parses_typed_values() {
    let mut text = VMCOREINFO.replace(
        "BUILD-ID=3b43fad503487449049240",
        "BUILD-ID=3b43fad503487449",
    );
    text.push('\0');
    text.push_str("garbage after the NUL is ignored");
    let v = VmcoreInfo::parse(text.as_bytes()).unwrap();
    assert_eq!(v.osrelease.as_deref(), Some("6.1.0-56-cloud-amd64"));
    assert_eq!(
        v.build_id.as_deref(),
        Some(&[0x3b, 0x43, 0xfa, 0xd5, 0x03, 0x48, 0x74, 0x49][..])
    );
    assert_eq!(v.page_size, Some(4096));
    assert_eq!(v.kernel_offset, Some(0x1c80_0000));
    assert_eq!(v.symbol("_stext"), Some(0xffff_ffff_9d80_0000));
    assert_eq!(v.offset("uts_namespace", "name"), Some(0));
    assert_eq!(v.size("page"), Some(64));
    assert_eq!(v.lengths["zone.free_area"], 11);
    assert_eq!(
        v.number("VMALLOC_START"),
        Some(0xffff_a4c0_0000_0000u64 as i64)
    );
    assert_eq!(v.phys_base(), Some((-2_013_265_920i64) as u64));
    assert_eq!(v.pgtable_l5_enabled(), Some(false));
    assert_eq!(v.crash_time, Some(1_700_000_000));
    assert_eq!(v.other["X86_EXTRA"], "yes");
}

#[test]
fn vmcoreinfo_errors_name_the_line_and_find_locates_the_block() {
    let e = VmcoreInfo::parse(b"OSRELEASE=x\nSYMBOL(a)=zz\n").unwrap_err();
    assert!(matches!(e, ProfileError::Vmcoreinfo { line: 2, .. }), "{e}");
    let e = VmcoreInfo::parse(b"OSRELEASE=x\nno equals sign\n").unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(VmcoreInfo::parse(b"BUILD-ID=abc\n").is_err());

    let ok = VMCOREINFO.replace("BUILD-ID=3b43fad503487449049240\n", "");
    let mut ram = vec![0u8; 10_000];
    // A decoy copy without KERNELOFFSET first, then the real block.
    ram[100..100 + 22].copy_from_slice(b"OSRELEASE=decoy\nA=1\n\0\0");
    ram[5000..5000 + ok.len()].copy_from_slice(ok.as_bytes());
    let (at, v) = VmcoreInfo::find(&ram).unwrap();
    assert_eq!(at, 5000);
    assert_eq!(v.kernel_offset, Some(0x1c80_0000));
}

/// Every test of this binary together stays under 1 GiB of live heap: a blow-up on hostile
/// input aborts the binary instead of exhausting the machine.
#[global_allocator]
static ALLOC: MemoryCap = memory_cap(1 << 30);

#[test]
fn hostile_buildid_multibyte_does_not_panic() {
    // Issue 14: a guest user planted this block in its own memory; zero-file discovery found
    // it and the BUILD-ID slice `value[0..2]` cut the euro sign (exit 101 on every command).
    within("multibyte BUILD-ID", CASE_LIMIT, || {
        let block = "OSRELEASE=6.1.0\nPAGESIZE=4096\nKERNELOFFSET=1000000\nBUILD-ID=\u{20ac}a\n";
        let e = VmcoreInfo::parse(block.as_bytes()).unwrap_err();
        assert!(matches!(e, ProfileError::Vmcoreinfo { line: 4, .. }), "{e}");
        // Found in memory among the real note: the decoy is skipped, the real block wins.
        let mut ram = vec![0u8; 3 * 4096];
        ram[..block.len()].copy_from_slice(block.as_bytes());
        let real = VMCOREINFO.as_bytes();
        ram[8192..8192 + real.len()].copy_from_slice(real);
        let (at, v) = VmcoreInfo::find(&ram).unwrap();
        assert_eq!((at, v.kernel_offset), (8192, Some(0x1c80_0000)));
        // Every multi-byte or non-hex spelling of a build id is an error, never a panic.
        for bad in [
            "\u{20ac}a",
            "a\u{20ac}",
            "\u{e9}\u{e9}",
            "+f",
            "-1",
            " f",
            "0x",
            "f",
            "",
            "zz",
        ] {
            let text = format!("BUILD-ID={bad}\n");
            assert!(VmcoreInfo::parse(text.as_bytes()).is_err(), "{bad:?}");
        }
        let v = VmcoreInfo::parse(b"BUILD-ID=00fFaA\n").unwrap();
        assert_eq!(v.build_id.as_deref(), Some(&[0, 0xff, 0xaa][..]));
    });
}

#[test]
fn hostile_vmcoreinfo_numbers_are_strict_ascii() {
    within("strict numbers", CASE_LIMIT, || {
        for bad in [
            "SYMBOL(a)=+ff",
            "SYMBOL(a)=\u{ff11}",
            "SYMBOL(a)=10000000000000000",
            "OFFSET(a.b)=+1",
            "OFFSET(a.b)=1\u{0661}",
            "PAGESIZE=18446744073709551616",
            "NUMBER(a)=--1",
            "NUMBER(a)=0x+1",
            "KERNELOFFSET=\u{20ac}",
        ] {
            let text = format!("{bad}\n");
            assert!(VmcoreInfo::parse(text.as_bytes()).is_err(), "{bad:?}");
        }
        // Invalid UTF-8 in a key or a kept value is an error naming the line.
        let e = VmcoreInfo::parse(b"OSRELEASE=x\nA\xff=1\n").unwrap_err();
        assert!(matches!(e, ProfileError::Vmcoreinfo { line: 2, .. }), "{e}");
        let e = VmcoreInfo::parse(b"OSRELEASE=\xe2\x82\n").unwrap_err();
        assert!(matches!(e, ProfileError::Vmcoreinfo { line: 1, .. }), "{e}");
        let v =
            VmcoreInfo::parse(b"NUMBER(a)=-9223372036854775808\nNUMBER(b)=18446744073709551615\n")
                .unwrap();
        assert_eq!((v.number("a"), v.number("b")), (Some(i64::MIN), Some(-1)));
    });
}

#[test]
fn fuzz_vmcoreinfo() {
    let seed = VMCOREINFO.as_bytes();
    assert!(VmcoreInfo::parse(seed).is_ok(), "the seed must parse");
    let mut rng = SmallRng::seed_from_u64(0x00c0_e1f0);
    let mut parsed = 0;
    for case in 0..3000 {
        let mut v = mutate(&mut rng, seed);
        if case % 4 == 0 {
            // Multi-byte text where numbers and build ids are expected.
            let i = rng.gen_range(0..=v.len());
            let utf8 = ["\u{20ac}", "\u{e9}", "\u{ff11}", "\u{0661}"][rng.gen_range(0..4)];
            v.splice(i..i, utf8.bytes());
        }
        if case % 50 == 0 {
            // Thousands of decoy blocks in a large haystack.
            let mut ram = Vec::with_capacity(4 << 20);
            while ram.len() + v.len() < 4 << 20 {
                ram.extend_from_slice(&v);
                ram.push(0);
            }
            within(
                "vmcoreinfo find in 4 MiB of decoys",
                CASE_LIMIT,
                move || {
                    let _ = VmcoreInfo::find(&ram);
                },
            );
        }
        parsed += usize::from(within("vmcoreinfo parse", CASE_LIMIT, move || {
            let ok = VmcoreInfo::parse(&v).is_ok();
            let _ = VmcoreInfo::find(&v);
            ok
        }));
    }
    assert!(
        parsed > 100,
        "only {parsed} of 3000 mutants parsed: the seed is too broken"
    );
}

const SYSMAP: &str = "ffffffff81000000 T _text\n\
ffffffff81000000 T startup_64\n\
garbage line\n\
ffffffff82a1aa40 D init_task\n\
zzzz T bad_address\n\
ffffffff8211ffe0 R linux_banner\r\n\
0000000000000000 A fixed_percpu_data\n\
ffffffffc0000000 t mod_func\t[dummy]\n\
ffffffff81000010 TT two_letters\n";

#[test]
fn system_map_counts_bad_lines_and_round_trips() {
    let m = parse_system_map(SYSMAP.as_bytes(), "System.map").unwrap();
    assert_eq!((m.symbols.len(), m.bad_lines, m.module_lines), (5, 3, 1));
    assert_eq!(m.symbols.address("init_task"), Some(0xffff_ffff_82a1_aa40));
    assert_eq!(m.symbols.get("linux_banner").unwrap().kind, Some('R'));
    let (s, off) = m.symbols.nearest(0xffff_ffff_82a1_aa48).unwrap();
    assert_eq!((s.name.as_str(), off), ("init_task", 8));
    assert!(
        m.symbols
            .nearest(0x10)
            .is_some_and(|(s, _)| s.name == "fixed_percpu_data")
    );
    let again = parse_system_map(write_system_map(&m.symbols).as_bytes(), "again").unwrap();
    assert_eq!(again.symbols, m.symbols);
    let moved = m.symbols.relocated(0x1000);
    assert_eq!(moved.address("_text"), Some(0xffff_ffff_8100_1000));
    assert_eq!(
        moved.address("fixed_percpu_data"),
        Some(0),
        "absolute symbols stay"
    );
    let e = parse_system_map(b"nothing useful\n", "empty.map").unwrap_err();
    assert!(e.to_string().contains("empty.map"), "{e}");
}

#[test]
fn fuzz_system_map() {
    let mut rng = SmallRng::seed_from_u64(0x5157_e3a9);
    for _ in 0..3000 {
        let v = mutate(&mut rng, SYSMAP.as_bytes());
        let at: u64 = rng.r#gen();
        within("system map mutant", CASE_LIMIT, move || {
            if let Ok(m) = parse_system_map(&v, "fuzz") {
                let _ = m.symbols.nearest(at);
            }
        });
    }
}

fn small_profile() -> Profile {
    // A profile with types from a real-looking ISF document.
    let isf = serde_json::json!({
        "metadata": {"format": "6.2.0", "linux": {}},
        "base_types": {
            "unsigned int": {"size": 4, "signed": false, "kind": "int", "endian": "little"},
            "char": {"size": 1, "signed": true, "kind": "char", "endian": "little"},
            "pointer": {"size": 8, "signed": false, "kind": "int", "endian": "little"}
        },
        "user_types": {
            "list_head": {"kind": "struct", "size": 16, "fields": {
                "next": {"offset": 0, "type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "list_head"}}},
                "prev": {"offset": 8, "type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "list_head"}}}
            }},
            "anon_1": {"kind": "union", "size": 4, "fields": {
                "__state": {"offset": 0, "type": {"kind": "base", "name": "unsigned int"}}
            }},
            "task_struct": {"kind": "struct", "size": 64, "fields": {
                "u": {"offset": 8, "anonymous": true, "type": {"kind": "union", "name": "anon_1"}},
                "flags": {"offset": 12, "type": {"kind": "bitfield", "bit_position": 3, "bit_length": 2,
                          "type": {"kind": "base", "name": "unsigned int"}}},
                "tasks": {"offset": 16, "type": {"kind": "struct", "name": "list_head"}},
                "comm": {"offset": 32, "type": {"kind": "array", "count": 16, "subtype": {"kind": "base", "name": "char"}}},
                "mm": {"offset": 48, "type": {"kind": "pointer", "subtype": {"kind": "struct", "name": "mm_struct"}}},
                "state": {"offset": 56, "type": {"kind": "enum", "name": "state_e"}}
            }}
        },
        "enums": {"state_e": {"size": 4, "base": "unsigned int", "constants": {"RUNNING": 0, "DEAD": 64}}},
        "symbols": {
            "init_task": {"address": 18446744071606217280u64, "type": {"kind": "struct", "name": "task_struct"}},
            "linux_banner": {"address": 18446744071596802016u64, "constant_data": "TGludXggdmVyc2lvbiA2LjEuMCAjMSBTTVAK"}
        }
    });
    parse_isf(&serde_json::to_vec(&isf).unwrap(), "small.json").unwrap()
}

#[test]
fn isf_import_export_round_trip() {
    let p = small_profile();
    assert_eq!(p.metadata.os, OsKind::Linux);
    assert_eq!(
        p.metadata.banner.as_deref(),
        Some("Linux version 6.1.0 #1 SMP\n")
    );
    assert_eq!(p.metadata.kernel_release.as_deref(), Some("6.1.0"));
    assert_eq!(p.offset_of("task_struct", "__state").unwrap(), 8);
    let f = p.field("task_struct", "flags").unwrap();
    assert_eq!((f.bit_offset, f.bit_size), (12 * 8 + 3, Some(2)));
    assert_eq!(p.offset_of("task_struct", "tasks.prev").unwrap(), 24);
    assert_eq!(p.enum_value("state_e", "DEAD"), Some(64));
    assert_eq!(
        p.symbol_address("init_task").unwrap(),
        0xffff_ffff_82a1_aa40
    );

    let out = export_isf(&p, &ExportOptions::default());
    assert_eq!(out["metadata"]["format"], "6.2.0");
    assert_eq!(out["symbols"]["init_task"]["type"]["name"], "task_struct");
    assert_eq!(
        out["user_types"]["task_struct"]["fields"]["flags"]["type"]["bit_position"],
        3
    );
    assert_eq!(
        out["user_types"]["mm_struct"]["size"], 0,
        "opaque type exported empty"
    );
    let back = parse_isf(&serde_json::to_vec(&out).unwrap(), "back.json").unwrap();
    for path in ["__state", "flags", "tasks.prev", "comm", "mm", "state"] {
        assert_eq!(back.field("task_struct", path).unwrap(), {
            let mut f = p.field("task_struct", path).unwrap();
            f.ty = back.field("task_struct", path).unwrap().ty;
            f
        });
    }
    assert_eq!(back.metadata.banner, p.metadata.banner);
}

#[test]
fn windows_isf_fixture_matches_memflow_offsets() {
    // ntkrnlmp.pdb 1C9875F76C8F0FBF3EB9A9D7C1C27406-1 (19041) from the Windows-Symbol-Tables
    // project; expected values from memflow-win32's offset table for the same PDB.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let p = vmi_profile::isf::load_isf(&dir.join("isf/1C9875F76C8F0FBF3EB9A9D7C1C27406-1.json.xz"))
        .unwrap();
    assert_eq!(p.metadata.os, OsKind::Windows);
    assert_eq!(
        p.metadata.pdb.unwrap().to_string(),
        "1C9875F76C8F0FBF3EB9A9D7C1C274061"
    );
    let toml = std::fs::read_to_string(
        dir.join("memflow/10_0_19041_X64_1C9875F76C8F0FBF3EB9A9D7C1C274061.toml"),
    )
    .unwrap();
    let want = |k: &str| -> u64 {
        toml.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} = ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        p.offset_of("_EPROCESS", "ActiveProcessLinks").unwrap(),
        want("eproc_link")
    );
    assert_eq!(
        p.offset_of("_EPROCESS", "UniqueProcessId").unwrap(),
        want("eproc_pid")
    );
    assert_eq!(
        p.offset_of("_EPROCESS", "ImageFileName").unwrap(),
        want("eproc_name")
    );
    assert_eq!(p.offset_of("_EPROCESS", "Peb").unwrap(), want("eproc_peb"));
    assert_eq!(
        p.offset_of("_EPROCESS", "Pcb.DirectoryTableBase").unwrap(),
        want("kproc_dtb")
    );
    assert_eq!(
        p.offset_of("_EPROCESS", "ThreadListHead").unwrap(),
        want("eproc_thread_list")
    );
    assert_eq!(
        p.offset_of("_EPROCESS", "VadRoot").unwrap(),
        want("eproc_vad_root")
    );
    assert_eq!(p.offset_of("_KTHREAD", "Teb").unwrap(), want("kthread_teb"));
    assert_eq!(
        p.offset_of("_TEB", "ProcessEnvironmentBlock").unwrap(),
        want("teb_peb")
    );
    assert!(p.symbol_address("PsActiveProcessHead").is_ok());
}

#[test]
fn fuzz_isf_import() {
    let seed =
        serde_json::to_vec(&export_isf(&small_profile(), &ExportOptions::default())).unwrap();
    let mut rng = SmallRng::seed_from_u64(0x15f);
    for _ in 0..1500 {
        let v = mutate(&mut rng, &seed);
        within("isf mutant", CASE_LIMIT, move || {
            if let Ok(p) = parse_isf(&v, "fuzz") {
                let _ = p.field("task_struct", "tasks.prev");
                let _ = export_isf(&p, &ExportOptions::default());
            }
        });
    }
}

#[test]
fn cache_round_trip_and_rejections() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("profile-cache-test");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = ProfileCache::new(&dir);
    let mut p = small_profile();
    p.metadata.build_id = Some(vec![1, 2, 3]);
    let key = CacheKey::for_profile(&p).unwrap();
    assert_eq!(key, CacheKey::BuildId(vec![1, 2, 3]));
    assert!(cache.load(&key).unwrap().is_none());
    let path = cache.store(&key, &p).unwrap();
    let back = cache.load(&key).unwrap().unwrap();
    assert_eq!(back, p);
    assert_eq!(
        back.offset_of("task_struct", "__state").unwrap(),
        8,
        "indexes rebuilt"
    );
    assert_eq!(
        back.symbol_address("init_task").unwrap(),
        0xffff_ffff_82a1_aa40
    );

    let good = std::fs::read(&path).unwrap();
    let other = CacheKey::Pdb(PdbId {
        guid: [0; 16],
        age: 1,
    });
    let e = cache::decode(&good, &other, &path).unwrap_err();
    assert!(e.to_string().contains("another key"), "{e}");
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(
        cache::decode(&flipped, &key, &path)
            .unwrap_err()
            .to_string()
            .contains("checksum")
    );
    let mut version = good.clone();
    version[8] = 99;
    assert!(
        cache::decode(&version, &key, &path)
            .unwrap_err()
            .to_string()
            .contains("version")
    );
    assert!(cache::decode(&good[..good.len() - 1], &key, &path).is_err());
    std::fs::write(&path, b"VMIPROF").unwrap();
    let e = cache.load(&key).unwrap_err();
    assert!(
        matches!(e, ProfileError::Cache { .. }) && e.to_string().contains(".vmiprof"),
        "{e}"
    );
}

/// Issue 14: cache files were written to predictable `*.tmp<pid>` names with `fs::write`,
/// which follows a symlink planted there, and loaded through symlinks. Now the directory is
/// private (0700, ours, not a symlink), temporaries are created `O_EXCL` under unpredictable
/// names, and entries are opened with `O_NOFOLLOW`.
#[test]
fn hostile_cache_symlinks_are_not_followed() {
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("profile-cache-hostile");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let victim = root.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let dir = root.join("cache");
    let cache = ProfileCache::new(&dir);
    let p = small_profile();
    let key = CacheKey::for_btf(b"some btf bytes");
    let entry = cache.path_for(&key);
    // Created private.
    cache.store(&CacheKey::for_btf(b"other"), &p).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    // The old predictable temporary names, planted as symlinks to the victim: unused.
    for pid in [std::process::id(), 1, 2, 3] {
        symlink(&victim, entry.with_extension(format!("tmp{pid}"))).unwrap();
    }
    // The entry itself planted as a symlink: loading refuses it, storing replaces the link.
    symlink(&victim, &entry).unwrap();
    assert!(cache.load(&key).is_err(), "a symlinked entry is not read");
    cache.store(&key, &p).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        !std::fs::symlink_metadata(&entry)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(cache.load(&key).unwrap().unwrap(), p);
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A group/world-accessible directory is tightened; a symlinked directory is refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    cache.store(&key, &p).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let linked = root.join("linked-cache");
    symlink(&dir, &linked).unwrap();
    let e = ProfileCache::new(&linked).store(&key, &p).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    // Keys of content read from guest memory are the content's hash, never a guest claim.
    assert_ne!(CacheKey::for_btf(b"a"), CacheKey::for_btf(b"b"));
    assert!(CacheKey::for_btf(b"a").text().starts_with("btf-sha256:"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn fuzz_cache_decoding() {
    let mut p = small_profile();
    p.metadata = Metadata {
        banner: Some("b".into()),
        ..Metadata::default()
    };
    p.symbols = SymbolTable::new(vec![Symbol {
        name: "x".into(),
        address: 1,
        kind: None,
    }]);
    let key = CacheKey::Banner("b".into());
    let good = cache::encode(&p, &key);
    let path = std::path::Path::new("fuzz.vmiprof");
    let mut rng = SmallRng::seed_from_u64(0xcac4e);
    for i in 0..3000 {
        let mut v = mutate(&mut rng, &good);
        if i % 2 == 0 && v.len() >= 28 {
            // Fix up the checksum so mutations reach the payload decoder.
            let key_len = u32::from_le_bytes(v[12..16].try_into().unwrap()) as usize;
            if 28 + key_len <= v.len() {
                let mut h = crc32fast::Hasher::new();
                h.update(&v[28..]);
                let c = h.finalize();
                v[24..28].copy_from_slice(&c.to_le_bytes());
            }
        }
        let key = key.clone();
        within("cache mutant", CASE_LIMIT, move || {
            if let Ok(p) = cache::decode(&v, &key, path) {
                let _ = p.field("task_struct", "tasks.prev");
                for (id, _) in p.types.iter() {
                    let _ = p.types.describe(id);
                }
            }
        });
    }
}

/// Byte-level mutations of a seed input: flips, interesting values, truncation, insertion.
fn mutate(rng: &mut SmallRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        if v.is_empty() {
            break;
        }
        let i = rng.gen_range(0..v.len());
        match rng.gen_range(0..5) {
            0 => v[i] = rng.r#gen(),
            1 => {
                const BYTES: &[u8] = b"0123456789abcdef=()\n\"{}[],:-";
                v[i] = BYTES[rng.gen_range(0..BYTES.len())];
            }
            2 => v.truncate(i),
            3 => v.insert(i, rng.r#gen()),
            _ => {
                let n = rng.gen_range(0..16).min(v.len() - i);
                v.drain(i..i + n);
            }
        }
    }
    v
}
