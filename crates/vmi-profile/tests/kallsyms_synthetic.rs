//! kallsyms decoder and table search against tables built here in the 5.x, 6.1 (Debian,
//! with `kallsyms_seqs_of_names` backported) and 6.12 layouts, read through an in-memory
//! [`KernelMemory`].

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_profile::kallsyms::{self, AddressEncoding, ImageMemory, KallsymsTables};
use vmi_profile::{KernelMemory, VmcoreInfo};
use vmi_test_guest::bounded::{CASE_LIMIT, within};

/// Every test of this binary together stays under 1 GiB of live heap: a blow-up on hostile
/// input aborts the binary instead of exhausting the machine.
#[global_allocator]
static ALLOC: vmi_test_guest::bounded::MemoryCap = vmi_test_guest::bounded::memory_cap(1 << 30);

const RODATA: u64 = 0xffff_ffff_8200_0000;
const TEXT: u64 = 0xffff_ffff_8100_0000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Layout {
    /// `kallsyms_addresses`, 8-byte markers, no seqs (5.x without base-relative).
    V5Absolute,
    /// offsets + relative_base before num_syms, seqs between markers and token table.
    V61,
    /// num_syms first; offsets, relative_base and seqs after the token index (6.4+).
    V612,
}

fn tokens() -> Vec<Vec<u8>> {
    let multi = [
        "init_",
        "task",
        "_text",
        "kallsyms_",
        "per_cpu",
        "sys_",
        "_start",
        "ab",
    ];
    let mut m = multi.iter();
    (0..=255u8)
        .map(|b| {
            if (0x21..0x7f).contains(&b) {
                vec![b]
            } else if let Some(t) = m.next() {
                t.as_bytes().to_vec()
            } else {
                format!("~{b}").into_bytes()
            }
        })
        .collect()
}

/// Greedy compression with the token table above.
fn compress(s: &[u8], toks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let best = (0..256)
            .filter(|&t| s[i..].starts_with(&toks[t]))
            .max_by_key(|&t| toks[t].len())
            .expect("every printable byte is a token");
        out.push(best as u8);
        i += toks[best].len();
    }
    out
}

fn align(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

fn symbols(n: usize) -> Vec<(char, String, u64)> {
    let mut v = vec![
        ('A', "fixed_percpu_data".to_owned(), 0),
        ('A', "per_cpu_runqueues".to_owned(), 0x2_c000),
        ('T', "_text".to_owned(), TEXT),
        ('T', "_stext".to_owned(), TEXT + 0x1000),
    ];
    for i in 0..n {
        v.push((
            't',
            format!("sys_func_{i}"),
            TEXT + 0x2000 + 0x40 * i as u64,
        ));
    }
    // A "big" symbol whose compressed length needs two bytes.
    v.push(('t', format!("long_{}", "x".repeat(300)), TEXT + 0x20_0000));
    v.push(('D', "linux_banner".to_owned(), RODATA + 0x11_ffe0));
    v.push(('D', "init_task".to_owned(), RODATA + 0xa1_aa40));
    v
}

struct Built {
    image: Vec<u8>,
    tables: KallsymsTables,
}

fn build(layout: Layout, syms: &[(char, String, u64)]) -> Built {
    let toks = tokens();
    let n = syms.len();
    let mut names = Vec::new();
    let mut markers = Vec::new();
    for (i, (k, name, _)) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.push(names.len() as u64);
        }
        let mut full = vec![*k as u8];
        full.extend_from_slice(name.as_bytes());
        let c = compress(&full, &toks);
        if c.len() >= 0x80 {
            names.push(0x80 | (c.len() & 0x7f) as u8);
            names.push((c.len() >> 7) as u8);
        } else {
            names.push(c.len() as u8);
        }
        names.extend_from_slice(&c);
    }
    let mut token_table = Vec::new();
    let mut token_index = Vec::new();
    for t in &toks {
        token_index.extend_from_slice(&(token_table.len() as u16).to_le_bytes());
        token_table.extend_from_slice(t);
        token_table.push(0);
    }
    let base = TEXT;
    let offsets: Vec<u8> = syms
        .iter()
        .flat_map(|&(_, _, a)| {
            let o: i32 = if a < 0x100_0000 {
                a as i32
            } else {
                (base as i64 - 1 - a as i64) as i32
            };
            o.to_le_bytes()
        })
        .collect();
    let seqs = vec![0u8; 3 * n];

    let mut img = vec![0u8; 0x40]; // some unrelated bytes first
    let mut t = KallsymsTables::default();
    let at = |img: &Vec<u8>| RODATA + img.len() as u64;
    let markers_bytes = |width: usize| -> Vec<u8> {
        markers
            .iter()
            .flat_map(|m| m.to_le_bytes()[..width].to_vec())
            .collect()
    };
    match layout {
        Layout::V5Absolute | Layout::V61 => {
            if layout == Layout::V5Absolute {
                t.addresses = Some(at(&img));
                for (_, _, a) in syms {
                    img.extend_from_slice(&a.to_le_bytes());
                }
            } else {
                t.offsets = Some(at(&img));
                img.extend_from_slice(&offsets);
                align(&mut img);
                t.relative_base = Some(at(&img));
                img.extend_from_slice(&base.to_le_bytes());
            }
            t.num_syms = at(&img);
            img.extend_from_slice(&(n as u64).to_le_bytes());
            t.names = at(&img);
            img.extend_from_slice(&names);
            align(&mut img);
            t.markers = Some(at(&img));
            img.extend_from_slice(&markers_bytes(if layout == Layout::V5Absolute {
                8
            } else {
                4
            }));
            align(&mut img);
            if layout == Layout::V61 {
                img.extend_from_slice(&seqs);
                align(&mut img);
            }
            t.token_table = at(&img);
            img.extend_from_slice(&token_table);
            align(&mut img);
            t.token_index = at(&img);
            img.extend_from_slice(&token_index);
            align(&mut img);
        }
        Layout::V612 => {
            t.num_syms = at(&img);
            img.extend_from_slice(&(n as u32).to_le_bytes());
            align(&mut img);
            t.names = at(&img);
            img.extend_from_slice(&names);
            align(&mut img);
            t.markers = Some(at(&img));
            img.extend_from_slice(&markers_bytes(4));
            align(&mut img);
            t.token_table = at(&img);
            img.extend_from_slice(&token_table);
            align(&mut img);
            t.token_index = at(&img);
            img.extend_from_slice(&token_index);
            align(&mut img);
            t.offsets = Some(at(&img));
            img.extend_from_slice(&offsets);
            align(&mut img);
            t.relative_base = Some(at(&img));
            img.extend_from_slice(&base.to_le_bytes());
            img.extend_from_slice(&seqs);
            align(&mut img);
        }
    }
    img.extend_from_slice(&[0x5a; 0x100]);
    Built {
        image: img,
        tables: t,
    }
}

fn vmcoreinfo_for(t: &KallsymsTables) -> VmcoreInfo {
    let mut text = String::from("OSRELEASE=6.1.0-test\nPAGESIZE=4096\nKERNELOFFSET=0\n");
    text += &format!("SYMBOL(_stext)={:x}\n", TEXT + 0x1000);
    text += &format!("SYMBOL(kallsyms_names)={:x}\n", t.names);
    text += &format!("SYMBOL(kallsyms_num_syms)={:x}\n", t.num_syms);
    text += &format!("SYMBOL(kallsyms_token_table)={:x}\n", t.token_table);
    text += &format!("SYMBOL(kallsyms_token_index)={:x}\n", t.token_index);
    if let Some(o) = t.offsets {
        text += &format!("SYMBOL(kallsyms_offsets)={o:x}\n");
    }
    if let Some(b) = t.relative_base {
        text += &format!("SYMBOL(kallsyms_relative_base)={b:x}\n");
    }
    if let Some(a) = t.addresses {
        text += &format!("SYMBOL(kallsyms_addresses)={a:x}\n");
    }
    VmcoreInfo::parse(text.as_bytes()).unwrap()
}

fn check(k: &kallsyms::Kallsyms, syms: &[(char, String, u64)]) {
    assert_eq!(k.symbols.len(), syms.len());
    for (s, (kind, name, addr)) in k.symbols.iter().zip(syms) {
        assert_eq!((&s.name, s.address, s.kind), (name, *addr, Some(*kind)));
    }
}

#[test]
fn decodes_each_layout_via_vmcoreinfo_and_by_search() {
    let syms = symbols(700);
    for layout in [Layout::V5Absolute, Layout::V61, Layout::V612] {
        let b = build(layout, &syms);
        let mem = ImageMemory::new(vec![(RODATA, &b.image[..])]);
        let want = if layout == Layout::V5Absolute {
            AddressEncoding::Absolute
        } else {
            AddressEncoding::AbsolutePercpu
        };
        if layout != Layout::V5Absolute {
            let k = kallsyms::from_vmcoreinfo(&mem, &vmcoreinfo_for(&b.tables))
                .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
            assert_eq!(k.encoding, want, "{layout:?}");
            check(&k, &syms);
        }
        let k = kallsyms::decode(&mem, &b.tables, None, &[("_stext", TEXT + 0x1000)])
            .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        check(&k, &syms);
        let extent = RODATA..RODATA + b.image.len() as u64;
        let found = kallsyms::search(&mem, extent, TEXT..RODATA + 0x100_0000, &[])
            .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        assert_eq!(found.encoding, want, "{layout:?}");
        assert_eq!(found.tables.names, b.tables.names, "{layout:?}");
        check(&found, &syms);
        assert_eq!(found.address("init_task"), Some(RODATA + 0xa1_aa40));
    }
}

#[test]
fn base_relative_and_place_relative_encodings() {
    // 6.15+ (relative_base + u32) and 7.0 (place-relative) reuse the 6.12 layout.
    let syms: Vec<_> = symbols(40).into_iter().filter(|s| s.2 >= TEXT).collect();
    let mut b = build(Layout::V612, &syms);
    let offs = b.tables.offsets.unwrap();
    let at = (offs - RODATA) as usize;
    for (i, (_, _, a)) in syms.iter().enumerate() {
        let o = (a - TEXT) as u32;
        b.image[at + 4 * i..at + 4 * i + 4].copy_from_slice(&o.to_le_bytes());
    }
    let mem = ImageMemory::new(vec![(RODATA, &b.image[..])]);
    let k = kallsyms::decode(&mem, &b.tables, None, &[]).unwrap();
    assert_eq!(k.encoding, AddressEncoding::BaseRelative);
    check(&k, &syms);

    for (i, (_, _, a)) in syms.iter().enumerate() {
        let place = offs + 4 * i as u64;
        let o = a.wrapping_sub(place) as i64 as i32;
        b.image[at + 4 * i..at + 4 * i + 4].copy_from_slice(&o.to_le_bytes());
    }
    let mut t = b.tables;
    t.relative_base = None;
    let mem = ImageMemory::new(vec![(RODATA, &b.image[..])]);
    let k = kallsyms::decode(&mem, &t, None, &[]).unwrap();
    assert_eq!(k.encoding, AddressEncoding::PlaceRelative);
    check(&k, &syms);
}

#[test]
fn wrong_expectation_and_missing_vmcoreinfo_entries_are_errors() {
    let syms = symbols(10);
    let b = build(Layout::V61, &syms);
    let mem = ImageMemory::new(vec![(RODATA, &b.image[..])]);
    let e = kallsyms::decode(&mem, &b.tables, None, &[("_stext", 1)]).unwrap_err();
    assert!(e.to_string().contains("_stext"), "{e}");
    let e = kallsyms::from_vmcoreinfo(&mem, &VmcoreInfo::parse(b"OSRELEASE=5.10\n").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("SYMBOL(kallsyms_"), "{e}");
    // Reads outside the image fail with the address.
    let mut t = b.tables;
    t.num_syms = 0x1000;
    let e = kallsyms::decode(&mem, &t, None, &[]).unwrap_err();
    assert!(e.to_string().contains("0x1000"), "{e}");
}

/// Memory that counts reads, to prove the decoder's work is bounded on hostile tables.
struct Counting<'a>(ImageMemory<'a>, std::cell::Cell<u64>);

impl KernelMemory for Counting<'_> {
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), vmi_profile::MemoryError> {
        self.1.set(self.1.get() + buf.len() as u64);
        self.0.read(va, buf)
    }
}

#[test]
fn fuzz_kallsyms_decoder_and_search() {
    let syms = symbols(300);
    let mut rng = SmallRng::seed_from_u64(0x6b61_6c6c);
    for layout in [Layout::V61, Layout::V612, Layout::V5Absolute] {
        let b = build(layout, &syms);
        for round in 0..150 {
            let mut img = b.image.clone();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..img.len());
                img[i] = match rng.gen_range(0..3) {
                    0 => rng.r#gen(),
                    1 => 0xff,
                    _ => 0,
                };
            }
            let tables = b.tables;
            within("kallsyms mutant", CASE_LIMIT, move || {
                let mem = Counting(
                    ImageMemory::new(vec![(RODATA, &img[..])]),
                    Default::default(),
                );
                let _ = kallsyms::decode(&mem, &tables, None, &[]);
                if round % 10 == 0 {
                    let extent = RODATA..RODATA + img.len() as u64;
                    let _ = kallsyms::search(&mem, extent, TEXT..RODATA + 0x100_0000, &[]);
                }
                assert!(mem.1.get() < 1 << 30, "unbounded reads");
            });
        }
    }
}
