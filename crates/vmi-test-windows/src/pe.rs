//! PE32+ headers, debug directory with an RSDS CodeView record, and export directories,
//! laid out for an in-memory image (`PointerToRawData == VirtualAddress`).

/// `.text` characteristics.
pub const SCN_TEXT: u32 = 0x6000_0020;
/// `.rdata` characteristics.
pub const SCN_RDATA: u32 = 0x4000_0040;
/// `.data` characteristics.
pub const SCN_DATA: u32 = 0xC000_0040;
/// Discardable initialised data.
pub const SCN_DISC: u32 = 0x4200_0040;

/// A section: name, RVA, virtual size, characteristics.
pub type Section = (&'static str, u32, u32, u32);

/// The 16 GUID bytes as stored in an RSDS record, from the printed hex form
/// (Data1/2/3 little-endian, Data4 as is).
pub fn guid_bytes(hex: &str) -> [u8; 16] {
    let mut g = [0u8; 16];
    for (i, b) in g.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    let mut out = g;
    out[0..4].copy_from_slice(&[g[3], g[2], g[1], g[0]]);
    out[4..6].copy_from_slice(&[g[5], g[4]]);
    out[6..8].copy_from_slice(&[g[7], g[6]]);
    out
}

/// A GUID derived from a name (FNV-1a based, deterministic), 32 hex digits.
pub fn fake_guid(name: &str) -> String {
    let mut out = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0..2u8 {
        for b in name.bytes().chain([round]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016X}"));
    }
    out
}

/// An export directory placed at `rva`, exporting `exports` (name, RVA), sorted by name.
pub fn build_exports(dll: &str, rva: u32, exports: &[(String, u32)]) -> Vec<u8> {
    let mut names: Vec<&(String, u32)> = exports.iter().collect();
    names.sort();
    let n = names.len() as u32;
    let funcs = rva + 40;
    let name_ptrs = funcs + 4 * n;
    let ords = name_ptrs + 4 * n;
    let strs = ords + 2 * n;
    let mut strings = dll.as_bytes().to_vec();
    strings.push(0);
    let mut ptrs = Vec::new();
    for (nm, _) in &names {
        ptrs.push(strs + strings.len() as u32);
        strings.extend_from_slice(nm.as_bytes());
        strings.push(0);
    }
    let mut b = Vec::new();
    for v in [0u32, 0x5E7A_1B2C, 0, strs, 1, n, n, funcs, name_ptrs, ords] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    // MajorVersion/MinorVersion are two u16 in the third dword: already 0.
    for (_, r) in &names {
        b.extend_from_slice(&r.to_le_bytes());
    }
    for p in &ptrs {
        b.extend_from_slice(&p.to_le_bytes());
    }
    for i in 0..n as u16 {
        b.extend_from_slice(&i.to_le_bytes());
    }
    b.extend_from_slice(&strings);
    b
}

/// What a PE header says.
pub struct PeSpec<'a> {
    /// Preferred (and actual) base.
    pub image_base: u64,
    /// SizeOfImage.
    pub size_of_image: u32,
    /// Sections.
    pub sections: &'a [Section],
    /// CodeView PDB name.
    pub pdb_name: &'a str,
    /// CodeView GUID (printed hex).
    pub guid: &'a str,
    /// CodeView age.
    pub age: u32,
    /// RVA of the debug directory (the RSDS record follows it).
    pub debug_rva: u32,
    /// DLL flag.
    pub dll: bool,
    /// Subsystem (1 native, 3 console).
    pub subsystem: u16,
    /// AddressOfEntryPoint.
    pub entry_rva: u32,
    /// OS version.
    pub os_version: (u16, u16),
    /// Export directory (RVA, size).
    pub export_dir: Option<(u32, u32)>,
}

/// TimeDateStamp used everywhere.
pub const TIMESTAMP: u32 = 0x5E7A_1B2C;

/// Returns the header page bytes and the debug blob (debug directory + RSDS) for `debug_rva`.
pub fn build_pe(s: &PeSpec<'_>) -> (Vec<u8>, Vec<u8>) {
    let e_lfanew = 0x100usize;
    let mut h = vec![0u8; e_lfanew];
    h[0..2].copy_from_slice(b"MZ");
    h[0x3C..0x40].copy_from_slice(&(e_lfanew as u32).to_le_bytes());
    let mut rsds = b"RSDS".to_vec();
    rsds.extend_from_slice(&guid_bytes(s.guid));
    rsds.extend_from_slice(&s.age.to_le_bytes());
    rsds.extend_from_slice(s.pdb_name.as_bytes());
    rsds.push(0);
    let mut dbg = Vec::new();
    for v in [
        0u32,
        TIMESTAMP,
        0,
        2,
        rsds.len() as u32,
        s.debug_rva + 28,
        s.debug_rva + 28,
    ] {
        dbg.extend_from_slice(&v.to_le_bytes());
    }
    dbg.extend_from_slice(&rsds);
    h.extend_from_slice(b"PE\0\0");
    let chars: u16 = 0x0022 | if s.dll { 0x2000 } else { 0 };
    h.extend_from_slice(&0x8664u16.to_le_bytes());
    h.extend_from_slice(&(s.sections.len() as u16).to_le_bytes());
    h.extend_from_slice(&TIMESTAMP.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&0xF0u16.to_le_bytes());
    h.extend_from_slice(&chars.to_le_bytes());
    let mut opt = vec![0u8; 0xF0];
    let put = |o: &mut Vec<u8>, at: usize, v: &[u8]| o[at..at + v.len()].copy_from_slice(v);
    let code: u32 = s
        .sections
        .iter()
        .filter(|x| x.3 & 0x20 != 0)
        .map(|x| x.2)
        .sum();
    let init: u32 = s
        .sections
        .iter()
        .filter(|x| x.3 & 0x40 != 0)
        .map(|x| x.2)
        .sum();
    put(&mut opt, 0, &0x20Bu16.to_le_bytes());
    opt[2] = 14;
    opt[3] = 20;
    put(&mut opt, 4, &code.to_le_bytes());
    put(&mut opt, 8, &init.to_le_bytes());
    put(&mut opt, 16, &s.entry_rva.to_le_bytes());
    put(&mut opt, 20, &0x1000u32.to_le_bytes());
    put(&mut opt, 24, &s.image_base.to_le_bytes());
    put(&mut opt, 32, &0x1000u32.to_le_bytes());
    put(&mut opt, 36, &0x200u32.to_le_bytes());
    for (i, v) in [
        s.os_version.0,
        s.os_version.1,
        s.os_version.0,
        s.os_version.1,
        s.os_version.0,
        s.os_version.1,
    ]
    .iter()
    .enumerate()
    {
        put(&mut opt, 40 + 2 * i, &v.to_le_bytes());
    }
    put(&mut opt, 56, &s.size_of_image.to_le_bytes());
    put(&mut opt, 60, &0x400u32.to_le_bytes());
    put(&mut opt, 68, &s.subsystem.to_le_bytes());
    put(&mut opt, 70, &0x4160u16.to_le_bytes());
    for (i, v) in [0x10_0000u64, 0x1000, 0x10_0000, 0x1000].iter().enumerate() {
        put(&mut opt, 72 + 8 * i, &v.to_le_bytes());
    }
    put(&mut opt, 108, &16u32.to_le_bytes());
    if let Some((rva, size)) = s.export_dir {
        put(&mut opt, 112, &rva.to_le_bytes());
        put(&mut opt, 116, &size.to_le_bytes());
    }
    put(&mut opt, 112 + 48, &s.debug_rva.to_le_bytes());
    put(&mut opt, 112 + 52, &28u32.to_le_bytes());
    h.extend_from_slice(&opt);
    for (name, rva, vsize, ch) in s.sections {
        let mut n = [0u8; 8];
        let nb = name.as_bytes();
        n[..nb.len().min(8)].copy_from_slice(&nb[..nb.len().min(8)]);
        h.extend_from_slice(&n);
        let raw = (vsize + 0x1FF) & !0x1FF;
        for v in [*vsize, *rva, raw, *rva, 0, 0] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&ch.to_le_bytes());
    }
    (h, dbg)
}
