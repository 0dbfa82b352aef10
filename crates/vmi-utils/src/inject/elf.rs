//! Finding a function exported by an ELF object mapped in a process, from the process's
//! memory alone (no file): its program headers, its dynamic section, and the dynamic
//! symbol table through the GNU or System V hash table, as the dynamic linker looks
//! symbols up. Everything read is the guest's: every count and offset is bounded and
//! checked, and a bad table is an error, never a panic or an unbounded walk.

/// Reads `len` bytes of the process at a virtual address.
pub(crate) type ReadFn<'a> = dyn Fn(u64, usize) -> Result<Vec<u8>, String> + 'a;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const DT_VERSYM: u64 = 0x6fff_fff0;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const SYM_SIZE: u64 = 24;
/// Most program headers read.
const MAX_PHDRS: usize = 128;
/// Most bytes of a dynamic section read.
const MAX_DYNAMIC: usize = 64 << 10;
/// Most hash buckets or bloom words accepted.
const MAX_TABLE: u64 = 1 << 22;
/// Most chain entries looked at in one lookup.
const MAX_CHAIN: usize = 1 << 16;

/// A symbol found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub address: u64,
    /// `STT_GNU_IFUNC`: the address is the resolver's.
    pub indirect: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn gnu_hash(name: &[u8]) -> u32 {
    name.iter().fold(5381u32, |h, &c| {
        h.wrapping_mul(33).wrapping_add(u32::from(c))
    })
}

fn sysv_hash(name: &[u8]) -> u32 {
    let mut h = 0u32;
    for &c in name {
        h = (h << 4).wrapping_add(u32::from(c));
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
    }
    h
}

/// The tables of one object.
struct Tables {
    bias: u64,
    symtab: u64,
    strtab: u64,
    strsz: u64,
    gnu_hash: Option<u64>,
    hash: Option<u64>,
    versym: Option<u64>,
}

fn bad(what: &str) -> String {
    format!("malformed ELF object: {what}")
}

fn tables(read: &ReadFn<'_>, base: u64) -> Result<Tables, String> {
    let h = read(base, 64)?;
    if h.get(..4) != Some(b"\x7fELF") || h.get(4) != Some(&2) || h.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF object".into());
    }
    let phoff = u64_at(&h, 0x20).ok_or_else(|| bad("header"))?;
    let phentsize = u16_at(&h, 0x36).ok_or_else(|| bad("header"))?;
    let phnum = usize::from(u16_at(&h, 0x38).ok_or_else(|| bad("header"))?);
    if phentsize != 56 || phnum == 0 || phnum > MAX_PHDRS || phoff > 1 << 20 {
        return Err(bad("program header table"));
    }
    let ph = read(
        base.checked_add(phoff)
            .ok_or_else(|| bad("program header offset"))?,
        phnum * 56,
    )?;
    let mut first_load = None;
    let mut dynamic = None;
    for i in 0..phnum {
        let at = i * 56;
        let kind = u32_at(&ph, at).ok_or_else(|| bad("program header"))?;
        let offset = u64_at(&ph, at + 8).ok_or_else(|| bad("program header"))?;
        let vaddr = u64_at(&ph, at + 16).ok_or_else(|| bad("program header"))?;
        let memsz = u64_at(&ph, at + 40).ok_or_else(|| bad("program header"))?;
        if kind == PT_LOAD && offset == 0 && first_load.is_none() {
            first_load = Some(vaddr);
        }
        if kind == PT_DYNAMIC && dynamic.is_none() {
            dynamic = Some((vaddr, memsz));
        }
    }
    let load = first_load.ok_or("no PT_LOAD segment maps the header")?;
    let (dvaddr, dsize) = dynamic.ok_or("no dynamic section (a static program?)")?;
    let bias = base.wrapping_sub(load & !0xfff);
    let dyn_va = bias.wrapping_add(dvaddr);
    let dsize = usize::try_from(dsize)
        .unwrap_or(usize::MAX)
        .min(MAX_DYNAMIC)
        & !15;
    let d = read(dyn_va, dsize)?;
    // glibc may have relocated the entries in place (then they are addresses) or not
    // (offsets from the load address, below `bias` when it is not 0).
    let reloc = |v: u64| {
        if bias != 0 && v < bias {
            bias.wrapping_add(v)
        } else {
            v
        }
    };
    let mut t = Tables {
        bias,
        symtab: 0,
        strtab: 0,
        strsz: 0,
        gnu_hash: None,
        hash: None,
        versym: None,
    };
    for e in d.chunks_exact(16) {
        let (Some(tag), Some(val)) = (u64_at(e, 0), u64_at(e, 8)) else {
            break;
        };
        match tag {
            DT_NULL => break,
            DT_SYMTAB => t.symtab = reloc(val),
            DT_STRTAB => t.strtab = reloc(val),
            DT_STRSZ => t.strsz = val,
            DT_GNU_HASH => t.gnu_hash = Some(reloc(val)),
            DT_HASH => t.hash = Some(reloc(val)),
            DT_VERSYM => t.versym = Some(reloc(val)),
            _ => {}
        }
    }
    if t.symtab == 0 || t.strtab == 0 || t.strsz == 0 {
        return Err(bad("dynamic section without a symbol or string table"));
    }
    Ok(t)
}

/// Symbol `i` if it is `name`, defined and the default version: `Some(Found)`.
fn check(read: &ReadFn<'_>, t: &Tables, i: u64, name: &[u8]) -> Result<Option<Found>, String> {
    let at = i
        .checked_mul(SYM_SIZE)
        .and_then(|o| t.symtab.checked_add(o))
        .ok_or_else(|| bad("symbol index"))?;
    let s = read(at, SYM_SIZE as usize)?;
    let st_name = u64::from(u32_at(&s, 0).ok_or_else(|| bad("symbol"))?);
    let info = *s.get(4).ok_or_else(|| bad("symbol"))?;
    let shndx = u16_at(&s, 6).ok_or_else(|| bad("symbol"))?;
    let value = u64_at(&s, 8).ok_or_else(|| bad("symbol"))?;
    let len = name.len() as u64 + 1;
    if st_name.checked_add(len).is_none_or(|end| end > t.strsz) {
        return Ok(None);
    }
    let got = read(t.strtab.wrapping_add(st_name), len as usize)?;
    if got.get(..name.len()) != Some(name) || got.last() != Some(&0) {
        return Ok(None);
    }
    if shndx == 0 || value == 0 {
        return Ok(None); // undefined here: imported
    }
    if let Some(v) = t.versym {
        let ver = read(v.wrapping_add(i.wrapping_mul(2)), 2)?;
        if u16_at(&ver, 0).is_some_and(|x| x & 0x8000 != 0) {
            return Ok(None); // a hidden, non-default version
        }
    }
    let kind = info & 0xf;
    if kind != STT_FUNC && kind != STT_GNU_IFUNC {
        return Err(format!(
            "{} is not a function (symbol type {kind})",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(Some(Found {
        address: t.bias.wrapping_add(value),
        indirect: kind == STT_GNU_IFUNC,
    }))
}

fn lookup_gnu(
    read: &ReadFn<'_>,
    t: &Tables,
    at: u64,
    name: &[u8],
) -> Result<Option<Found>, String> {
    let h = read(at, 16)?;
    let nbuckets = u64::from(u32_at(&h, 0).ok_or_else(|| bad("GNU hash"))?);
    let symoffset = u64::from(u32_at(&h, 4).ok_or_else(|| bad("GNU hash"))?);
    let bloom = u64::from(u32_at(&h, 8).ok_or_else(|| bad("GNU hash"))?);
    if nbuckets == 0 || nbuckets > MAX_TABLE || bloom > MAX_TABLE {
        return Err(bad("GNU hash table size"));
    }
    let hash = gnu_hash(name);
    let buckets = at + 16 + bloom * 8;
    let chains = buckets + nbuckets * 4;
    let b = read(buckets + u64::from(hash) % nbuckets * 4, 4)?;
    let first = u64::from(u32_at(&b, 0).ok_or_else(|| bad("GNU hash bucket"))?);
    if first < symoffset {
        return Ok(None);
    }
    for i in (first..).take(MAX_CHAIN) {
        let c = read(chains + (i - symoffset) * 4, 4)?;
        let c = u32_at(&c, 0).ok_or_else(|| bad("GNU hash chain"))?;
        if (c | 1) == (hash | 1)
            && let Some(f) = check(read, t, i, name)?
        {
            return Ok(Some(f));
        }
        if c & 1 != 0 {
            return Ok(None);
        }
    }
    Err(bad("GNU hash chain without an end"))
}

fn lookup_sysv(
    read: &ReadFn<'_>,
    t: &Tables,
    at: u64,
    name: &[u8],
) -> Result<Option<Found>, String> {
    let h = read(at, 8)?;
    let nbucket = u64::from(u32_at(&h, 0).ok_or_else(|| bad("hash"))?);
    let nchain = u64::from(u32_at(&h, 4).ok_or_else(|| bad("hash"))?);
    if nbucket == 0 || nbucket > MAX_TABLE || nchain > MAX_TABLE {
        return Err(bad("hash table size"));
    }
    let b = read(at + 8 + u64::from(sysv_hash(name)) % nbucket * 4, 4)?;
    let mut i = u64::from(u32_at(&b, 0).ok_or_else(|| bad("hash bucket"))?);
    for _ in 0..MAX_CHAIN {
        if i == 0 || i >= nchain {
            return Ok(None);
        }
        if let Some(f) = check(read, t, i, name)? {
            return Ok(Some(f));
        }
        let c = read(at + 8 + nbucket * 4 + i * 4, 4)?;
        i = u64::from(u32_at(&c, 0).ok_or_else(|| bad("hash chain"))?);
    }
    Err(bad("hash chain without an end"))
}

/// `name` among the dynamic symbols of the ELF object mapped at `base`: `None` when it
/// does not export it; `Err` when its tables cannot be read or make no sense.
pub(crate) fn find(read: &ReadFn<'_>, base: u64, name: &str) -> Result<Option<Found>, String> {
    let t = tables(read, base)?;
    let name = name.as_bytes();
    match (t.gnu_hash, t.hash) {
        (Some(g), _) => lookup_gnu(read, &t, g, name),
        (None, Some(h)) => lookup_sysv(read, &t, h, name),
        (None, None) => Err(bad("no hash table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared object image as the loader maps it: header, program headers, dynamic
    /// section, GNU or System V hash, symbols, strings, laid out at their vaddrs.
    fn image(gnu: bool, relocated_at: Option<u64>) -> Vec<u8> {
        let mut m = vec![0u8; 0x2000];
        let put = |m: &mut Vec<u8>, at: usize, b: &[u8]| m[at..at + b.len()].copy_from_slice(b);
        put(&mut m, 0, b"\x7fELF\x02\x01\x01");
        put(&mut m, 0x10, &3u16.to_le_bytes()); // ET_DYN
        put(&mut m, 0x20, &64u64.to_le_bytes());
        put(&mut m, 0x36, &56u16.to_le_bytes());
        put(&mut m, 0x38, &2u16.to_le_bytes());
        // PT_LOAD at 0, PT_DYNAMIC at 0x400.
        put(&mut m, 64, &PT_LOAD.to_le_bytes());
        put(&mut m, 64 + 40, &0x2000u64.to_le_bytes());
        put(&mut m, 120, &PT_DYNAMIC.to_le_bytes());
        put(&mut m, 120 + 16, &0x400u64.to_le_bytes());
        put(&mut m, 120 + 40, &(6 * 16u64).to_le_bytes());
        let rel = relocated_at.unwrap_or(0);
        let hash_tag = if gnu { DT_GNU_HASH } else { DT_HASH };
        let dynamic = [
            (DT_SYMTAB, 0x800 + rel),
            (DT_STRTAB, 0xc00 + rel),
            (DT_STRSZ, 0x100),
            (hash_tag, 0x600 + rel),
            (DT_NULL, 0),
        ];
        for (i, (tag, v)) in dynamic.iter().enumerate() {
            put(&mut m, 0x400 + i * 16, &tag.to_le_bytes());
            put(&mut m, 0x400 + i * 16 + 8, &v.to_le_bytes());
        }
        // Strings and symbols: 0 null, 1 getpid (func), 2 environ (object),
        // 3 strlen (ifunc), 4 imported (undefined).
        let names = ["", "getpid", "environ", "strlen", "imported"];
        let mut off = 1u32;
        for (i, n) in names.iter().enumerate().skip(1) {
            put(&mut m, 0xc00 + off as usize, n.as_bytes());
            let at = 0x800 + i * 24;
            put(&mut m, at, &off.to_le_bytes());
            let kind = [0, STT_FUNC, 1, STT_GNU_IFUNC, STT_FUNC][i];
            m[at + 4] = 0x10 | kind;
            let shndx: u16 = if i == 4 { 0 } else { 12 };
            put(&mut m, at + 6, &shndx.to_le_bytes());
            let value: u64 = if i == 4 { 0 } else { 0x1000 + 0x10 * i as u64 };
            put(&mut m, at + 8, &value.to_le_bytes());
            off += n.len() as u32 + 1;
        }
        if gnu {
            // One bucket, symoffset 1, one bloom word; chain ends at symbol 4.
            put(&mut m, 0x600, &1u32.to_le_bytes());
            put(&mut m, 0x604, &1u32.to_le_bytes());
            put(&mut m, 0x608, &1u32.to_le_bytes());
            put(&mut m, 0x618, &1u32.to_le_bytes()); // bucket 0 -> symbol 1
            for (i, name) in names.iter().enumerate().skip(1) {
                let h = gnu_hash(name.as_bytes()) & !1 | u32::from(i == 4);
                put(&mut m, 0x61c + (i - 1) * 4, &h.to_le_bytes());
            }
        } else {
            // One bucket, chain 1 -> 2 -> 3 -> 4 -> 0.
            put(&mut m, 0x600, &1u32.to_le_bytes());
            put(&mut m, 0x604, &5u32.to_le_bytes());
            put(&mut m, 0x608, &1u32.to_le_bytes());
            for i in 1..5u32 {
                let next = if i == 4 { 0 } else { i + 1 };
                put(&mut m, 0x60c + i as usize * 4, &next.to_le_bytes());
            }
        }
        m
    }

    fn reader(m: &[u8], base: u64) -> impl Fn(u64, usize) -> Result<Vec<u8>, String> + '_ {
        move |va, len| {
            let off = va.checked_sub(base).ok_or("below")? as usize;
            m.get(off..off.checked_add(len).ok_or("wrap")?)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("unmapped {va:#x}"))
        }
    }

    #[test]
    fn finds_functions_through_both_hash_tables_relocated_or_not() {
        let base = 0x7f00_0000_0000u64;
        for gnu in [true, false] {
            for relocated in [None, Some(base)] {
                let m = image(gnu, relocated);
                let read = reader(&m, base);
                let f = find(&read, base, "getpid").unwrap().unwrap();
                assert_eq!(
                    f.address,
                    base + 0x1010,
                    "gnu {gnu}, relocated {relocated:?}"
                );
                assert!(!f.indirect);
                let s = find(&read, base, "strlen").unwrap().unwrap();
                assert_eq!((s.address, s.indirect), (base + 0x1030, true));
                assert_eq!(find(&read, base, "imported").unwrap(), None);
                assert_eq!(find(&read, base, "absent").unwrap(), None);
                assert!(
                    find(&read, base, "environ")
                        .unwrap_err()
                        .contains("not a function")
                );
            }
        }
    }

    #[test]
    fn hostile_images_give_errors_not_panics_or_endless_walks() {
        let base = 0x5555_0000_0000u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let started = std::time::Instant::now();
        for round in 0..3000 {
            let mut m = image(round % 2 == 0, None);
            for _ in 0..(1 + next() % 12) {
                let at = (next() % m.len() as u64) as usize;
                m[at] = next() as u8;
            }
            let read = reader(&m, base);
            let _ = find(&read, base, "getpid");
            let _ = find(&read, base, "strlen");
        }
        // A chain that never ends (zeros forever past the first four entries): bounded.
        let mut m = image(true, None);
        for i in 0..4usize {
            let h = gnu_hash(b"zzz") & !1;
            m[0x61c + i * 4..0x620 + i * 4].copy_from_slice(&h.to_le_bytes());
        }
        let endless = |va: u64, len: usize| -> Result<Vec<u8>, String> {
            let off = (va - base) as usize;
            if off >= 0x62c {
                return Ok(vec![0; len]);
            }
            Ok(m[off..off + len].to_vec())
        };
        let e = find(&endless, base, "zzz").unwrap_err();
        assert!(e.contains("without an end"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }
}
