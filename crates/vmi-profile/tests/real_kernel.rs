//! Real data: the Debian cloud kernel's vmlinuz (see `common` for how it is found).

mod common;

use vmi_profile::image::{Vmlinux, vmlinux_from_image};
use vmi_profile::kallsyms::Kallsyms;
use vmi_profile::linux::profile_from_kernel_image;

use std::path::Path;
use std::process::Command;

use vmi_profile::btf::parse_btf;
use vmi_profile::cache::{CacheKey, ProfileCache};
use vmi_profile::kallsyms::{self, ImageMemory, KallsymsTables};
use vmi_profile::linux::kallsyms_from_vmlinux;
use vmi_profile::profile_struct;

profile_struct! {
    /// What a task walker needs, declared once.
    struct TaskOffsets {
        tasks: u64 = offset("task_struct", "tasks"),
        pid: u64 = offset("task_struct", "pid"),
        comm: u64 = offset("task_struct", "comm"),
        mm: u64 = offset("task_struct", "mm"),
        state: Option<vmi_profile::FieldInfo> = field("task_struct", "__state"),
        old_state: Option<vmi_profile::FieldInfo> = field("task_struct", "state"),
        thread_sp: u64 = offset("task_struct", "thread.sp"),
        pgd: u64 = offset("mm_struct", "pgd"),
        size: u64 = size("task_struct"),
        init_task: u64 = symbol("init_task"),
        pidtype_tgid: i64 = enum_value("pid_type", "PIDTYPE_TGID"),
    }
}

/// `bpftool btf dump file F format raw` parsed into id -> (name, members(name, type id,
/// bits_offset)) for structs and unions.
type RawDump = std::collections::HashMap<u64, (String, Vec<(String, u64, u64)>)>;

fn bpftool_dump(vmlinux: &Path) -> Option<RawDump> {
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(vmlinux)
        .args(["format", "raw"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut dump = RawDump::new();
    let mut cur: Option<u64> = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix('[') {
            cur = None;
            let (id, rest) = rest.split_once("] ")?;
            if rest.starts_with("STRUCT ") || rest.starts_with("UNION ") {
                let name = rest.split('\'').nth(1)?.to_owned();
                let id: u64 = id.parse().ok()?;
                dump.insert(id, (name, Vec::new()));
                cur = Some(id);
            }
        } else if let (Some(id), Some(m)) = (cur, l.strip_prefix("\t'")) {
            let name = m.split('\'').next()?.to_owned();
            let field = |k: &str| -> Option<u64> {
                m.split(k).nth(1)?.split_whitespace().next()?.parse().ok()
            };
            let entry = (name, field("type_id=")?, field("bits_offset=")?);
            dump.get_mut(&id)?.1.push(entry);
        }
    }
    (!dump.is_empty()).then_some(dump)
}

/// Byte offset of `field` in the first struct named `s`, descending into `(anon)` members
/// the way a reader of bpftool's output does by hand.
fn bpftool_offset(dump: &RawDump, s: &str, field: &str) -> Option<u64> {
    fn find(dump: &RawDump, id: u64, field: &str, depth: usize) -> Option<u64> {
        let (_, members) = dump.get(&id)?;
        for (n, ty, bits) in members {
            if n == field {
                return Some(*bits);
            }
            if n == "(anon)"
                && depth < 8
                && let Some(b) = find(dump, *ty, field, depth + 1)
            {
                return Some(bits + b);
            }
        }
        None
    }
    let id = dump
        .iter()
        .filter(|(_, (n, m))| n == s && !m.is_empty())
        .map(|(id, _)| *id)
        .min()?;
    find(dump, id, field, 0).map(|b| b / 8)
}

#[test]
fn vmlinuz_profile_matches_bpftool_and_known_offsets() {
    if common::kernel_image_or_skip("vmlinuz_profile_matches_bpftool").is_none() {
        return;
    }
    // Every kernel in the shared cache (bookworm 6.1, and trixie 6.12 once the test-guest
    // crate has fetched it).
    for path in common::kernel_images() {
        check_kernel(&path);
    }
}

fn check_kernel(path: &Path) {
    let path = path.to_owned();
    let p = profile_from_kernel_image(&path).expect("profile");
    eprintln!(
        "{:?} {:?}: {} types, {} symbols",
        p.metadata.kernel_release,
        p.metadata.sources,
        p.types.len(),
        p.symbols.len()
    );
    let t = TaskOffsets::load(&p).expect("every entry");
    match (t.state, t.old_state) {
        (Some(s), None) => assert_eq!(s.size, Some(4), "__state is an unsigned int since 5.14"),
        (None, Some(s)) => assert_eq!(s.size, Some(8), "state was a long before 5.14"),
        other => panic!("exactly one of __state and state: {other:?}"),
    }
    assert_eq!(t.pidtype_tgid, 1);
    let banner = p.metadata.banner.as_deref().expect("banner");
    assert!(
        banner.starts_with("Linux version ") && banner.contains("#1 "),
        "{banner}"
    );

    // Independent truth 1: bpftool on the vmlinux ELF (ours, decompressed; or the
    // test-guest crate's, next to the vmlinuz).
    let bytes = std::fs::read(&path).unwrap();
    let elf = vmlinux_from_image(&bytes, "vmlinuz").unwrap();
    let vmlinux = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmlinux-from-vmlinuz");
    std::fs::write(&vmlinux, &elf).unwrap();
    match bpftool_dump(&vmlinux) {
        Some(dump) => {
            let state = if t.state.is_some() {
                "__state"
            } else {
                "state"
            };
            for name in [
                "tasks",
                "pid",
                "comm",
                "mm",
                state,
                "thread",
                "real_parent",
                "cred",
            ] {
                let want = bpftool_offset(&dump, "task_struct", name).unwrap();
                assert_eq!(
                    p.offset_of("task_struct", name).unwrap(),
                    want,
                    "task_struct.{name}"
                );
            }
            for name in ["pgd", "start_code", "arg_start", "env_start"] {
                let want = bpftool_offset(&dump, "mm_struct", name).unwrap();
                assert_eq!(
                    p.offset_of("mm_struct", name).unwrap(),
                    want,
                    "mm_struct.{name}"
                );
            }
            eprintln!("offsets equal bpftool's");
        }
        None => eprintln!("bpftool not available: skipped the bpftool comparison"),
    }
    // Independent truth 2: the table measured on this kernel (docs/linux-guest.md, section 6).
    if p.metadata
        .kernel_release
        .as_deref()
        .is_some_and(|r| r.starts_with("6.1.") && r.ends_with("-cloud-amd64"))
    {
        assert_eq!(
            (t.tasks, t.comm, t.mm, t.pid, t.pgd),
            (0x890, 0xba0, 0x8e0, 0x970, 0x48)
        );
        assert_eq!(
            (t.size, t.thread_sp, t.state.map(|s| s.offset)),
            (9728, 0x14d8, Some(0x18))
        );
        assert_eq!(p.symbols.address("_text"), Some(0xffff_ffff_8100_0000));
        assert_eq!(
            p.symbols.address("linux_banner"),
            Some(0xffff_ffff_8211_ffe0)
        );
        assert_eq!(t.init_task, 0xffff_ffff_82a1_aa40);
        assert_eq!(p.symbols.len(), 87_347);
    }
}

#[test]
fn btf_from_vmlinuz_equals_btf_from_vmlinux() {
    let Some(path) = common::kernel_image_or_skip("btf_from_vmlinuz_equals_btf_from_vmlinux")
    else {
        return;
    };
    let from_vmlinuz = profile_from_kernel_image(&path).unwrap().types;
    // The test-guest crate extracts vmlinux with its own code; else use the lz4/xz tools.
    let sibling = path.with_file_name("vmlinux");
    let elf = if sibling.is_file() {
        std::fs::read(&sibling).unwrap()
    } else {
        eprintln!(
            "no independently extracted vmlinux beside {}: skipped",
            path.display()
        );
        return;
    };
    let parsed = Vmlinux::parse(&elf, "vmlinux").unwrap();
    let from_vmlinux = parse_btf(parsed.btf().unwrap(), "vmlinux").unwrap();
    assert_eq!(from_vmlinux.len(), from_vmlinuz.len());
    assert!(from_vmlinux == from_vmlinuz, "types differ");
    let v = profile_from_kernel_image(&sibling).unwrap();
    assert_eq!(
        v.metadata.banner,
        profile_from_kernel_image(&path).unwrap().metadata.banner
    );
}

#[test]
fn kallsyms_found_in_the_image_are_self_consistent() {
    let Some(path) =
        common::kernel_image_or_skip("kallsyms_found_in_the_image_are_self_consistent")
    else {
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    let elf_bytes = vmlinux_from_image(&bytes, "vmlinuz").unwrap();
    let elf = Vmlinux::parse(&elf_bytes, "vmlinux").unwrap();
    let k = kallsyms_from_vmlinux(&elf).unwrap();
    assert_eq!(
        k.address("_text"),
        Some(0xffff_ffff_8100_0000),
        "link-time _text"
    );
    let release = vmi_profile::image::release_from_banner(elf.banner().as_deref().unwrap_or(""))
        .map(str::to_owned);
    if release.is_some_and(|r| r.starts_with("6.1.") && r.ends_with("-cloud-amd64")) {
        // The real System.map of this kernel (docs/linux-guest.md, section 6).
        assert_eq!(k.tables.num_syms, 0xffff_ffff_8217_5588);
        assert_eq!(k.tables.names, 0xffff_ffff_8217_5590);
        assert_eq!(k.address("init_top_pgt"), Some(0xffff_ffff_82a1_0000));
        assert_eq!(k.address("page_offset_base"), Some(0xffff_ffff_8239_8480));
        assert_eq!(k.address("vmcoreinfo_data"), Some(0xffff_ffff_8334_2040));
    }
    // And the VMCOREINFO path (table addresses given, as 6.0+ kernels list them) agrees.
    let mem = ImageMemory::new(elf.loaded_sections());
    let tables = KallsymsTables {
        markers: None,
        ..k.tables
    };
    let again = kallsyms::decode(
        &mem,
        &tables,
        None,
        &[("_stext", k.address("_stext").unwrap())],
    )
    .unwrap();
    assert_eq!(
        again,
        Kallsyms {
            tables,
            ..k.clone()
        }
    );
    assert!(
        k.symbols
            .iter()
            .any(|s| s.name == "init_task" && s.kind == Some('D'))
    );
}

#[test]
fn real_profile_round_trips_through_the_cache() {
    let Some(path) = common::kernel_image_or_skip("real_profile_round_trips_through_the_cache")
    else {
        return;
    };
    let p = profile_from_kernel_image(&path).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-cache");
    let cache = ProfileCache::new(&dir);
    let key = CacheKey::for_profile(&p).unwrap();
    let file = cache.store(&key, &p).unwrap();
    let start = std::time::Instant::now();
    let back = cache.load(&key).unwrap().unwrap();
    eprintln!(
        "cache file {} bytes, loaded in {:?} (debug build; see benches for release figures)",
        std::fs::metadata(&file).unwrap().len(),
        start.elapsed()
    );
    assert!(back == p);
    assert_eq!(
        back.offset_of("task_struct", "thread.sp").unwrap(),
        p.offset_of("task_struct", "thread.sp").unwrap()
    );
}

#[test]
fn isf_export_round_trips() {
    let Some(path) = common::kernel_image_or_skip("isf_export_round_trips") else {
        return;
    };
    let p = profile_from_kernel_image(&path).expect("profile");
    let v = vmi_profile::isf::export_isf(&p, &Default::default());
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmlinux-isf.json");
    std::fs::write(&out, serde_json::to_vec(&v).unwrap()).unwrap();
    eprintln!("wrote {}", out.display());
    let back = vmi_profile::isf::load_isf(&out).expect("import");
    for (s, f) in [
        ("task_struct", "tasks"),
        ("task_struct", "__state"),
        ("task_struct", "thread.sp"),
        ("mm_struct", "pgd"),
    ] {
        assert_eq!(
            back.field(s, f).unwrap().offset,
            p.field(s, f).unwrap().offset,
            "{s}.{f}"
        );
    }
    assert_eq!(back.metadata.banner, p.metadata.banner);
    assert_eq!(
        back.symbols.address("init_task"),
        p.symbols.address("init_task")
    );
}
