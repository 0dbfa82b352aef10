//! Page walks over tables built in the mock driver, checked against an independent
//! model: the list of mappings the test made, searched linearly.

use proptest::prelude::*;
use vmi_arch_amd64::paging::pte;
use vmi_arch_amd64::{Amd64, PagingMode};
use vmi_core::{AddressContext, FaultKind, Pa, Va, VmiCore, VmiCoreConfig, VmiError};
use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};

const ROOT: Pa = Pa(0x10_0000);
const TABLES: Pa = Pa(0x20_0000);

/// The oracle: which mapping contains `va`, and where it lands.
fn expected(mappings: &[(Va, Pa, PageSize)], va: Va) -> Option<Pa> {
    mappings.iter().rev().find_map(|&(base, pa, size)| {
        let off = va.0.wrapping_sub(base.0);
        (off < size.bytes()).then(|| Pa(pa.0 + off))
    })
}

fn fault_kind(e: &VmiError) -> Option<(FaultKind, u8)> {
    e.page_fault().map(|pf| (pf.kind, pf.level))
}

fn canonical4(raw: u64) -> Va {
    // Sign-extend bit 47.
    Va(((raw << 16) as i64 >> 16) as u64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random 4 KiB, 2 MiB and 1 GiB mappings; random probes inside and outside them.
    #[test]
    fn random_mappings_match_the_model(
        maps in prop::collection::vec((any::<u64>(), 0u64..0x4_0000, 0u8..3), 1..12),
        probes in prop::collection::vec(any::<u64>(), 1..32),
        level5 in any::<bool>(),
    ) {
        let driver = MockDriver::new(1 << 40);
        let mode = if level5 { PagingMode::Level5 } else { PagingMode::Level4 };
        let mut b = PageTableBuilder::with_mode(&driver, ROOT, TABLES, mode);
        let mut model = Vec::new();
        for (raw_va, frame, size) in maps {
            let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][size as usize];
            let va = canonical4(raw_va).align_down(size.bytes());
            // Physical targets far above the table area so tables and data don't overlap.
            let pa = Pa(0x1_0000_0000 + frame * size.bytes()).align_down(size.bytes());
            // Skip mappings whose larger/smaller page would overlap an existing one at a
            // different granularity (the builder doesn't split pages).
            if model.iter().any(|&(v, _, s): &(Va, Pa, PageSize)| {
                let (lo, hi) = (v.0, v.0 + s.bytes());
                va.0 < hi && lo < va.0 + size.bytes() && s != size
            }) {
                continue;
            }
            b.map(va, pa, size);
            model.push((va, pa, size));
        }
        let core = VmiCore::new(driver).unwrap();
        core.set_paging_mode(mode);
        let mut addresses: Vec<Va> = probes.into_iter().map(canonical4).collect();
        for &(va, _, size) in &model {
            addresses.push(va + size.bytes() / 2);
            addresses.push(va + size.bytes() - 1);
        }
        for va in addresses {
            let got = core.translate_address(AddressContext::new(va, ROOT));
            match expected(&model, va) {
                Some(pa) => prop_assert_eq!(got.unwrap(), pa),
                None => prop_assert_eq!(fault_kind(&got.unwrap_err()).map(|k| k.0), Some(FaultKind::NotPresent)),
            }
            // And the cached path gives the same answer.
            let again = core.translate_address(AddressContext::new(va, ROOT));
            prop_assert_eq!(again.ok(), expected(&model, va));
        }
    }
}

#[test]
fn large_pages_report_size_and_flags() {
    let driver = MockDriver::new(1 << 34);
    let mut b = PageTableBuilder::new(&driver, ROOT, TABLES);
    b.map_with(
        Va(0xffff_8880_0000_0000),
        Pa(0x4000_0000),
        PageSize::Size1G,
        pte::WRITABLE | pte::NO_EXECUTE,
    );
    b.map_with(Va(0x4020_0000), Pa(0x60_0000), PageSize::Size2M, pte::USER);
    let core = VmiCore::new(driver).unwrap();

    let t = core
        .translate(AddressContext::new(Va(0xffff_8880_1234_5678), ROOT))
        .unwrap();
    assert_eq!(t.pa, Pa(0x4000_0000 + 0x1234_5678));
    assert_eq!(t.page_size, 1 << 30);
    assert!(t.flags.writable && !t.flags.user && t.flags.no_execute);
    assert_eq!(t.steps().len(), 2);
    assert_eq!(t.steps()[1].name, "PDPT");

    let t = core
        .translate(AddressContext::new(Va(0x4020_0123), ROOT))
        .unwrap();
    assert_eq!(t.pa, Pa(0x60_0123));
    assert_eq!(t.page_size, 2 << 20);
    assert!(!t.flags.writable && t.flags.user && !t.flags.no_execute);
    assert_eq!(t.steps().len(), 3);
}

#[test]
fn ps_bit_in_pml4_is_a_reserved_bit_fault() {
    let driver = MockDriver::new(1 << 34);
    let mut b = PageTableBuilder::new(&driver, ROOT, TABLES);
    b.set_raw_entry(
        Va(0x8000_0000_0000 >> 1),
        4,
        0x4000_0000 | pte::PRESENT | pte::PAGE_SIZE,
    );
    let core = VmiCore::new(driver).unwrap();
    let err = core
        .translate_address(AddressContext::new(Va(0x4000_0000_0000), ROOT))
        .unwrap_err();
    assert_eq!(fault_kind(&err), Some((FaultKind::ReservedBit, 4)));
}

#[test]
fn ps_bit_in_pml5_is_a_reserved_bit_fault() {
    let driver = MockDriver::new(1 << 34);
    let mut b = PageTableBuilder::with_mode(&driver, ROOT, TABLES, PagingMode::Level5);
    b.set_raw_entry(Va(0), 5, 0x4000_0000 | pte::PRESENT | pte::PAGE_SIZE);
    let core = VmiCore::new(driver).unwrap();
    core.set_paging_mode(PagingMode::Level5);
    let err = core
        .translate_address(AddressContext::new(Va(0x1000), ROOT))
        .unwrap_err();
    assert_eq!(fault_kind(&err), Some((FaultKind::ReservedBit, 5)));
}

#[test]
fn reserved_low_bits_of_a_2m_page_fault() {
    let driver = MockDriver::new(1 << 34);
    let mut b = PageTableBuilder::new(&driver, ROOT, TABLES);
    b.set_raw_entry(
        Va(0x20_0000),
        2,
        0x20_0000 | 0x4000 | pte::PRESENT | pte::PAGE_SIZE,
    );
    let core = VmiCore::new(driver).unwrap();
    let err = core
        .translate_address(AddressContext::new(Va(0x20_0000), ROOT))
        .unwrap_err();
    assert_eq!(fault_kind(&err), Some((FaultKind::ReservedBit, 2)));
}

#[test]
fn non_canonical_addresses_fault_before_the_walk() {
    let core = VmiCore::new(MockDriver::new(1 << 24)).unwrap();
    let err = core
        .translate_address(AddressContext::new(Va(0x0000_8000_0000_0000), ROOT))
        .unwrap_err();
    assert_eq!(fault_kind(&err), Some((FaultKind::NonCanonical, 0)));
    assert!(
        core.driver().calls().is_empty(),
        "no memory read for a non-canonical address"
    );
    // The same address is canonical with 5-level paging.
    core.set_paging_mode(PagingMode::Level5);
    let err = core
        .translate_address(AddressContext::new(Va(0x0000_8000_0000_0000), ROOT))
        .unwrap_err();
    assert_eq!(fault_kind(&err), Some((FaultKind::NotPresent, 5)));
}

#[test]
fn five_level_mapping_above_48_bits() {
    let driver = MockDriver::new(1 << 34);
    let mut b = PageTableBuilder::with_mode(&driver, ROOT, TABLES, PagingMode::Level5);
    let va = Va(0xff11_0000_0000_0000);
    b.map(va, Pa(0x7000), PageSize::Size4K);
    let core = VmiCore::new(driver).unwrap();
    core.set_paging_mode(PagingMode::Level5);
    let t = core
        .translate(AddressContext::new(va + 0x10, ROOT))
        .unwrap();
    assert_eq!(t.pa, Pa(0x7010));
    assert_eq!(t.steps().len(), 5);
    assert_eq!(t.steps()[0].name, "PML5");
}

#[test]
fn pcid_bits_are_masked_from_cr3() {
    use vmi_arch_amd64::Cr3;
    let driver = MockDriver::new(1 << 24);
    let mut b = PageTableBuilder::new(&driver, ROOT, TABLES);
    b.map(Va(0x1000), Pa(0x9000), PageSize::Size4K);
    let core = VmiCore::new(driver).unwrap();
    let cr3 = Cr3(ROOT.0 | 0x5 | (1 << 63));
    assert_eq!(
        core.translate_address(AddressContext::new(Va(0x1008), cr3))
            .unwrap(),
        Pa(0x9008)
    );
}

#[test]
fn translation_cache_counts_and_invalidates() {
    let driver = MockDriver::new(1 << 24);
    let mut b = PageTableBuilder::new(&driver, ROOT, TABLES);
    b.map(Va(0x1000), Pa(0x9000), PageSize::Size4K);
    let core = VmiCore::with_config(
        driver,
        VmiCoreConfig {
            statistics: true,
            ..VmiCoreConfig::default()
        },
    )
    .unwrap();
    let ctx = AddressContext::new(Va(0x1008), ROOT);
    core.translate_address(ctx).unwrap();
    core.translate_address(ctx).unwrap();
    let s = core.translation_cache_stats();
    assert_eq!((s.hits, s.misses), (1, 1));
    core.invalidate_translation(ctx);
    core.translate_address(ctx).unwrap();
    assert_eq!(core.translation_cache_stats().misses, 2);
}

/// The architecture type is what the mock reports.
#[test]
fn mock_is_amd64() {
    fn arch_of<D: vmi_core::VmiDriver<Architecture = Amd64>>(_: &D) {}
    arch_of(&MockDriver::new(4096));
}

/// The translation cache keeps one entry per 2 MiB region (its large leaf or its page
/// table): every address of a region with scattered 4 KiB pages, of a 2 MiB page and of
/// the 2 MiB parts of a 1 GiB page translates, faults (same level, same entry) and hits
/// exactly as the uncached walk says.
#[test]
fn region_cache_agrees_with_the_walk() {
    let driver = MockDriver::new(1 << 40);
    let mut b = PageTableBuilder::new(&driver, ROOT, TABLES);
    let small = Va(0x7f00_0020_0000);
    let mut model = Vec::new();
    for (page, frame) in [
        (0u64, 0x4_1000u64),
        (1, 0x9_0000),
        (7, 0x4_2000),
        (511, 0x1_0000),
    ] {
        model.push((
            small + page * 4096,
            Pa(0x1_0000_0000 + frame),
            PageSize::Size4K,
        ));
    }
    model.push((
        Va(0xffff_8880_0040_0000),
        Pa(0x2_0020_0000),
        PageSize::Size2M,
    ));
    model.push((
        Va(0xffff_8881_0000_0000),
        Pa(0x3_0000_0000),
        PageSize::Size1G,
    ));
    for &(va, pa, size) in &model {
        b.map(va, pa, size);
    }
    let cached = VmiCore::with_config(
        driver,
        VmiCoreConfig {
            statistics: true,
            ..VmiCoreConfig::default()
        },
    )
    .unwrap();
    let mut probes: Vec<Va> = (0..512).map(|p| small + p * 4096 + 8 * p).collect();
    probes.extend((0..16).map(|n| Va(0xffff_8880_0040_0000 + n * 0x2_0008)));
    probes.extend((0..16).map(|n| Va(0xffff_8881_0000_0000 + n * 0x400_0000 + 0x1ff_fff8)));
    for pass in 0..2 {
        for &va in &probes {
            let ctx = AddressContext::new(va, ROOT);
            let got = cached.translate_address(ctx);
            let walked = cached.translate(ctx);
            match (expected(&model, va), got) {
                (Some(pa), Ok(got)) => {
                    assert_eq!(got, pa, "{va} pass {pass}");
                    assert_eq!(walked.unwrap().pa, pa);
                }
                (None, Err(e)) => {
                    let (pf, truth) = (e.page_fault().unwrap(), walked.unwrap_err());
                    assert_eq!(Some(pf), truth.page_fault(), "{va} pass {pass}");
                    assert_eq!((pf.kind, pf.level), (FaultKind::NotPresent, 1));
                }
                (want, got) => panic!("{va} pass {pass}: want {want:?}, got {got:?}"),
            }
        }
    }
    // One walk per region: the small-page region, the 2 MiB page, and the 16 parts of
    // the 1 GiB page the probes touch (64 MiB apart); every other lookup hits.
    let s = cached.translation_cache_stats();
    assert_eq!(s.misses, 1 + 1 + 16, "{s:?}");
    assert_eq!(s.hits, 2 * probes.len() as u64 - s.misses);
}
