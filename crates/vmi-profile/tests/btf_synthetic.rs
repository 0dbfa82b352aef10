//! BTF parser against small blobs built byte by byte here, plus a seeded mutation fuzz test.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_profile::btf::{MAX_NAME_LEN, parse_btf};
use vmi_profile::{ProfileError, Type, TypeId};
use vmi_test_guest::bounded::{CASE_LIMIT, MemoryCap, memory_cap, within};

/// Minimal BTF writer: types are appended as raw records; ids start at 1.
struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    next: u32,
}

impl Btf {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next: 1,
        }
    }

    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn u32s(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) -> u32 {
        let n = self.s(name);
        let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
        self.u32s(&[n, info, size_or_type]);
        let id = self.next;
        self.next += 1;
        id
    }

    fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
        let id = self.ty(name, 1, 0, false, size);
        self.u32s(&[(u32::from(signed) << 24) | (size * 8)]);
        id
    }

    /// Struct or union with (name, type, bit offset, bitfield size) members; kflag set.
    fn composite(
        &mut self,
        union: bool,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let id = self.ty(
            name,
            if union { 5 } else { 4 },
            members.len() as u32,
            true,
            size,
        );
        for &(m, t, off, bits) in members {
            let n = self.s(m);
            self.u32s(&[n, t, (bits << 24) | off]);
        }
        id
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xEB9Fu16.to_le_bytes());
        out.push(1);
        out.push(0);
        out.extend_from_slice(&24u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A blob using every BTF kind, shaped like the parts of `task_struct` the OS layer reads.
fn sample() -> Vec<u8> {
    let mut b = Btf::new();
    let uint = b.int("unsigned int", 4, false); // 1
    let long = b.int("long int", 8, true); // 2
    let char_ = b.int("char", 1, true); // 3
    let ulong = b.int("long unsigned int", 8, false); // 4
    let list_head = b.composite(false, "list_head", 16, &[]); // 5, patched below via ptrs
    let ptr_lh = b.ty("", 2, 0, false, list_head); // 6
    // Rewrite list_head with members now that the pointer exists: emit a second, complete one.
    let list_head2 = b.composite(
        false,
        "list_head",
        16,
        &[("next", ptr_lh, 0, 0), ("prev", ptr_lh, 64, 0)],
    ); // 7
    let arr = b.ty("", 3, 0, false, 0); // 8: char[16]
    b.u32s(&[char_, uint, 16]);
    let anon_union = b.composite(
        true,
        "",
        8,
        &[("__state", uint, 0, 0), ("old_state", long, 0, 0)],
    ); // 9
    let thread = b.composite(
        false,
        "thread_struct",
        32,
        &[("es", uint, 0, 0), ("sp", ulong, 192, 0)],
    ); // 10
    let anon_struct = b.composite(
        false,
        "",
        16,
        &[
            ("flags_a", uint, 0, 3),
            ("flags_b", uint, 3, 5),
            ("tasks", list_head2, 64, 0),
        ],
    ); // 11
    let pid_t = b.ty("pid_t", 8, 0, false, 2); // 12 typedef pid_t -> long (for the test)
    let cpid = b.ty("", 10, 0, false, pid_t); // 13 const pid_t
    let task = b.composite(
        false,
        "task_struct",
        128,
        &[
            ("pad", uint, 0, 0),
            ("", anon_union, 64, 0),
            ("", anon_struct, 128, 0),
            ("pid", cpid, 256, 0),
            ("comm", arr, 320, 0),
            ("thread", thread, 448, 0),
        ],
    ); // 14
    let e = b.ty("pid_type", 6, 2, false, 4); // 15 enum
    let (p0, p1) = (b.s("PIDTYPE_PID"), b.s("PIDTYPE_TGID"));
    b.u32s(&[p0, 0, p1, 1]);
    let e64 = b.ty("big", 19, 1, false, 8); // 16 enum64
    let big = b.s("BIG");
    b.u32s(&[big, 0x9abc_def0, 0x1234_5678]);
    let fwd = b.ty("mm_struct", 7, 0, false, 0); // 17
    let _vol = b.ty("", 9, 0, false, fwd); // 18
    let _res = b.ty("", 11, 0, false, ptr_lh); // 19
    let proto = b.ty("", 13, 2, false, 2); // 20: long (*)(unsigned int x, ...)
    let x = b.s("x");
    b.u32s(&[x, uint, 0, 0]);
    let _func = b.ty("do_thing", 12, 1, false, proto); // 21
    let var = b.ty("runqueues", 14, 0, false, task); // 22
    b.u32s(&[1]);
    let _sec = b.ty(".data..percpu", 15, 1, false, 128); // 23
    b.u32s(&[var, 0, 128]);
    let _f = b.ty("double", 16, 0, false, 8); // 24
    let _tag = b.ty("user", 17, 0, false, task); // 25
    b.u32s(&[u32::MAX]); // component_idx -1
    let _tt = b.ty("rcu", 18, 0, false, ptr_lh); // 26
    let _ = (e, e64, list_head);
    b.finish()
}

#[test]
fn every_kind_parses_and_fields_resolve() {
    let types = parse_btf(&sample(), "sample").unwrap();
    assert_eq!(types.len(), 27);
    // The complete list_head wins over the empty declaration of the same name.
    assert_eq!(types.find_composite("list_head"), Some(TypeId(7)));
    let f = types.field("task_struct", "__state").unwrap();
    assert_eq!((f.offset, f.size, f.bit_size), (8, Some(4), None));
    let f = types.field("task_struct", "old_state").unwrap();
    assert_eq!((f.offset, f.size), (8, Some(8)));
    let f = types.field("task_struct", "tasks").unwrap();
    assert_eq!((f.offset, f.size), (24, Some(16)));
    assert_eq!(types.offset_of("task_struct", "tasks.prev").unwrap(), 32);
    assert_eq!(
        types.offset_of("task_struct", "thread.sp").unwrap(),
        56 + 24
    );
    let f = types.field("task_struct", "flags_b").unwrap();
    assert_eq!(
        (f.offset, f.bit_offset, f.bit_size, f.bit_in_byte()),
        (16, 131, Some(5), 3)
    );
    let f = types.field("task_struct", "pid").unwrap();
    assert_eq!(
        (f.offset, f.size),
        (32, Some(8)),
        "typedef + const resolve to long"
    );
    assert_eq!(types.field("task_struct", "comm").unwrap().size, Some(16));
    assert_eq!(types.type_size("task_struct"), Some(128));
    assert_eq!(types.type_size("pid_t"), Some(8));
    assert_eq!(types.enum_value("pid_type", "PIDTYPE_TGID"), Some(1));
    assert_eq!(types.enum_value("big", "BIG"), Some(0x1234_5678_9abc_def0));
    assert_eq!(types.describe(TypeId(6)), "struct list_head *");
    assert_eq!(types.describe(TypeId(8)), "char[16]");
    assert!(matches!(
        types.get(TypeId(17)),
        Some(Type::Fwd {
            is_union: false,
            ..
        })
    ));
    assert!(matches!(
        types.get(TypeId(25)),
        Some(Type::DeclTag { component: -1, .. })
    ));
    assert!(matches!(
        types.field("task_struct", "nope"),
        Err(ProfileError::UnknownField { .. })
    ));
    assert!(matches!(
        types.field("no_such", "x"),
        Err(ProfileError::UnknownType { .. })
    ));
}

#[test]
fn legacy_int_bitfields_without_kflag() {
    let mut b = Btf::new();
    // INT with 3 value bits at bit offset 2 (pre-kflag bitfield encoding).
    let bf = b.ty("unsigned int", 1, 0, false, 4);
    b.u32s(&[(2 << 16) | 3]);
    let s = b.ty("s", 4, 1, false, 4);
    let n = b.s("f");
    b.u32s(&[n, bf, 8]);
    let _ = s;
    let types = parse_btf(&b.finish(), "legacy").unwrap();
    let f = types.field("s", "f").unwrap();
    assert_eq!((f.bit_offset, f.bit_size), (10, Some(3)));
}

#[test]
fn malformed_blobs_give_located_errors() {
    let good = sample();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x9f, 0xeb], "too short"),
        (
            {
                let mut v = good.clone();
                v[0] = 0;
                v
            },
            "bad magic",
        ),
        (
            {
                let mut v = good.clone();
                v[1] = 0x9f;
                v[0] = 0xeb;
                v
            },
            "big-endian",
        ),
        (
            {
                let mut v = good.clone();
                v[2] = 2;
                v
            },
            "unsupported version",
        ),
        (
            {
                let mut v = good.clone();
                v[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
                v
            },
            "type section",
        ),
        (
            {
                let mut v = good.clone();
                v.truncate(v.len() - 10);
                v
            },
            "string section",
        ),
        (
            {
                let mut v = good.clone();
                v[24..28].copy_from_slice(&0xffffu32.to_le_bytes());
                v
            },
            "name offset",
        ),
        (
            {
                let mut v = good.clone();
                v[24 + 4 + 3] = 0x1f;
                v
            },
            "unknown kind",
        ),
    ];
    for (blob, want) in cases {
        let e = parse_btf(&blob, "case.btf").unwrap_err().to_string();
        assert!(e.contains("case.btf") && e.contains(want), "{want}: {e}");
    }
    // A dangling reference is caught after parsing.
    let mut b = Btf::new();
    b.ty("", 2, 0, false, 9999);
    let e = parse_btf(&b.finish(), "dangling").unwrap_err().to_string();
    assert!(e.contains("9999"), "{e}");
}

#[test]
fn typedef_cycles_do_not_hang() {
    let mut b = Btf::new();
    b.ty("a", 8, 0, false, 2);
    b.ty("b", 8, 0, false, 1);
    let types = parse_btf(&b.finish(), "cycle").unwrap();
    assert_eq!(types.resolve(TypeId(1)), None);
    assert_eq!(types.size_of(TypeId(1)), None);
    assert!(types.describe(TypeId(1)).len() < 1000);
}

/// Every test of this binary together stays under 1 GiB of live heap.
#[global_allocator]
static ALLOC: MemoryCap = memory_cap(1 << 30);

/// Issue 14: a hostile kernel's BTF whose structs hold two anonymous members of the next
/// struct's type, 64 levels deep (2^64 paths), and a struct holding two anonymous members of
/// its own type. `task_struct` offsets are looked up through anonymous members, so each
/// lookup walked every path.
#[test]
fn hostile_btf_anonymous_member_graph_does_not_hang() {
    const LEVELS: u32 = 64;
    let mut b = Btf::new();
    let int = b.int("int", 4, true); // 1
    // Ids 2..=LEVELS+1: level k holds two anonymous members of level k+1; the last level
    // holds two of the first (a cycle) and the named leaf.
    for k in 0..LEVELS {
        let id = 2 + k;
        let next = if k + 1 == LEVELS { 2 } else { id + 1 };
        let name = if k == 0 { "task_struct" } else { "" };
        let mut members = vec![("", next, 0, 0), ("", next, 32, 0)];
        if k + 1 == LEVELS {
            members.push(("leaf", int, 64, 0));
        }
        assert_eq!(b.composite(false, name, 16, &members), id);
    }
    let me = b.next;
    b.composite(false, "selfish", 8, &[("", me, 0, 0), ("", me, 0, 0)]);
    let types = parse_btf(&b.finish(), "hostile").unwrap();
    within("anonymous member graph", CASE_LIMIT, move || {
        assert!(types.field("task_struct", "nope").is_err());
        assert!(types.field("task_struct", "leaf.x").is_err());
        assert!(types.field("selfish", "nope").is_err());
        // Found through the first anonymous member at each level, depth first: the path is
        // 63 levels deep (within the depth cap), at offset 0 of each.
        let f = types.field("task_struct", "leaf").unwrap();
        assert_eq!(f.bit_offset, 64);
    });
}

/// Issue 14: names were found by scanning for the NUL from the name's offset to the end of
/// the string section: 200,000 types named at the start of a 16 MiB run without NUL cost
/// 200,000 scans of 16 MiB. Each scan is now bounded by `MAX_NAME_LEN`.
#[test]
fn hostile_btf_long_string_without_nul_is_not_quadratic() {
    const TYPES: usize = 200_000;
    let run = 16 << 20;
    // Every type named at offset 1 (no NUL within MAX_NAME_LEN): refused at the first type.
    let mut b = Btf::new();
    b.strings.extend(std::iter::repeat_n(b'a', run));
    b.strings.push(0);
    for _ in 0..TYPES {
        b.u32s(&[1, 1 << 24, 4, 32]);
    }
    let blob = b.finish();
    within("names without NUL", CASE_LIMIT, move || {
        let e = parse_btf(&blob, "hostile").unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    });
    // Every type named just inside the limit, near the end of the run: accepted, and fast.
    let mut b = Btf::new();
    b.strings.extend(std::iter::repeat_n(b'a', run));
    b.strings.push(0);
    let off = (b.strings.len() - 1 - MAX_NAME_LEN) as u32;
    for _ in 0..TYPES {
        b.u32s(&[off, 1 << 24, 4, 32]);
    }
    let blob = b.finish();
    within("long names near the end", CASE_LIMIT, move || {
        let types = parse_btf(&blob, "hostile").unwrap();
        assert_eq!(types.len(), TYPES + 1);
        assert_eq!(types.name_of(TypeId(1)).map(str::len), Some(MAX_NAME_LEN));
    });
}

/// Seeded, bounded mutation fuzzing: no panic, no hang, and anything that parses answers
/// every lookup.
#[test]
fn fuzz_btf_parser() {
    let seed = sample();
    let mut rng = SmallRng::seed_from_u64(0x05ee_db7f);
    for _ in 0..4000 {
        let mut v = seed.clone();
        for _ in 0..rng.gen_range(1..8) {
            match rng.gen_range(0..4) {
                0 => {
                    let i = rng.gen_range(0..v.len());
                    v[i] = rng.r#gen();
                }
                1 => {
                    let i = rng.gen_range(0..v.len().saturating_sub(4).max(1));
                    let w: u32 = [0, 1, 0xff, 0xffff, 0x7fff_ffff, u32::MAX][rng.gen_range(0..6)];
                    let end = (i + 4).min(v.len());
                    v[i..end].copy_from_slice(&w.to_le_bytes()[..end - i]);
                }
                2 => {
                    let n = rng.gen_range(0..v.len());
                    v.truncate(n);
                }
                _ => {
                    let i = rng.gen_range(0..v.len());
                    v.insert(i, rng.r#gen());
                }
            }
            if v.is_empty() {
                break;
            }
        }
        within("btf mutant", CASE_LIMIT, move || {
            if let Ok(types) = parse_btf(&v, "fuzz") {
                for (id, _) in types.iter() {
                    let _ = types.size_of(id);
                    let _ = types.describe(id);
                    let _ = types.resolve(id);
                }
                let _ = types.field("task_struct", "thread.sp");
                let _ = types.field("task_struct", "flags_b");
            }
        });
    }
}
