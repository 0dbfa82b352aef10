//! The PE parser on real files and on seeded mutations (no panic, bounded).

use vmi_os_windows::pe::{CodeView, PeImage};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/pe")
            .join(name),
    )
    .unwrap()
}

/// A reader over a file-layout image.
fn file_reader<'a>(
    pe: &'a PeImage,
    file: &'a [u8],
) -> impl FnMut(u32, usize) -> Option<Vec<u8>> + 'a {
    move |rva, len| {
        let off = pe.file_offset(rva)? as usize;
        let end = off.checked_add(len)?.min(file.len());
        file.get(off..end).map(<[u8]>::to_vec)
    }
}

fn codeview_of(file: &[u8]) -> Option<CodeView> {
    let pe = PeImage::parse(file).ok()?;
    pe.codeview(file_reader(&pe, file))
}

#[test]
fn real_files_codeview() {
    for (name, key, pdb) in [
        (
            "dump_syms_regtest64.exe",
            "72E103A85CB249078B76B2E7C06257B1-3",
            "dump_syms_regtest64.pdb",
        ),
        (
            "pe_only_symbol_test.dll",
            "2A5EAB481FAB4A17A9761CDC14FE531A-1",
            "pe_only_symbol_test.pdb",
        ),
        (
            "winpmem_x64.sys",
            "EC3ADFC48553401A9C19E3BF858874AF-1",
            "\\winpmem.pdb",
        ),
    ] {
        let f = fixture(name);
        let pe = PeImage::parse(&f).unwrap();
        assert_eq!(pe.machine, 0x8664, "{name}");
        assert!(!pe.sections.is_empty(), "{name}");
        let cv = codeview_of(&f).unwrap_or_else(|| panic!("{name}: no CodeView"));
        assert_eq!(cv.isf_key(), key, "{name}");
        assert!(
            cv.pdb_name
                .to_ascii_lowercase()
                .ends_with(&pdb.to_ascii_lowercase()),
            "{name}: {}",
            cv.pdb_name
        );
        let _ = pe.exports(file_reader(&pe, &f));
    }
    let pe = PeImage::parse(&fixture("winpmem_x64.sys")).unwrap();
    assert_eq!(pe.subsystem, 1, "native driver");
}

#[test]
fn seeded_mutations_never_panic() {
    let mut files = vec![
        fixture("dump_syms_regtest64.exe"),
        fixture("winpmem_x64.sys"),
    ];
    let isf = vmi_test_windows::load_isf("9C00B19DBDE003DBFE4AB4216993C843-1").unwrap();
    let img =
        vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
    let k = img.manifest.kernel.pa as usize;
    // The kernel image as it sits in memory (header, debug directory, exports).
    files.push(img.raw()[k..k + 0x30_0000].to_vec());
    let mut rng = vmi_test_windows::Rng::new(10);
    for round in 0..3000 {
        let mut f = files[round % files.len()].clone();
        let n = 1 + rng.range(0, 16) as usize;
        for _ in 0..n {
            // Mostly the headers, sometimes anywhere.
            let limit = if rng.range(0, 4) == 0 {
                f.len()
            } else {
                0x400.min(f.len())
            };
            let at = rng.range(0, limit as u64) as usize;
            f[at] = rng.next() as u8;
        }
        if let Ok(pe) = PeImage::parse(&f) {
            let _ = pe.codeview(file_reader(&pe, &f));
            let _ = pe.exports(file_reader(&pe, &f));
            // The in-memory reading of the same bytes.
            let mem = |rva: u32, len: usize| {
                f.get(rva as usize..(rva as usize + len).min(f.len()))
                    .map(<[u8]>::to_vec)
            };
            let _ = pe.codeview(mem);
        }
        let _ = CodeView::parse(&f[f.len().saturating_sub(64)..]);
    }
}
