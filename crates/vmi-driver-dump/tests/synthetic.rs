//! Dumps built in the test from the documented layouts: every format, every kdump
//! compression, both kdump layouts, Windows dumps cross-checked with an independent
//! parser (`kdmp-parser`), and the ELF writer's round trip.

mod common;

use std::io::Cursor;

use common::*;
use kdmp_parser::Gxa as _;
use vmi_core::{
    Gfn, Pa, PageAbsence, VcpuId, VmiCore, VmiDriver, VmiError, VmiQueryRegisters, VmiRead,
};
use vmi_driver_dump::{
    DumpDriver, DumpFormat, DumpOptions, ElfCoreOptions, KdumpCompression, WindowsDumpKind,
    build_lime, write_elf_core,
};

fn open(bytes: Vec<u8>) -> DumpDriver {
    DumpDriver::from_bytes(bytes, DumpOptions::default()).expect("open")
}

fn absence(r: Result<(), VmiError>) -> Option<PageAbsence> {
    match r {
        Err(VmiError::PageUnavailable { reason, .. }) => Some(reason),
        Ok(()) => None,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// 64 frames: dumped, excluded and holes mixed.
fn frames() -> Vec<Frame> {
    (0..64u64)
        .map(|pfn| match pfn % 7 {
            3 => Frame::Excluded,
            5 if pfn > 30 => Frame::Hole,
            _ => Frame::Dumped(page_for(pfn)),
        })
        .collect()
}

fn cpu_notes(regs: &[vmi_arch_amd64::Registers]) -> Vec<u8> {
    // The ELF writer's notes, taken from a tiny core it writes.
    let lime = build_lime(&[(0, &page_for(0))]);
    let src = open(lime);
    let mut out = Vec::new();
    write_elf_core(
        &src,
        &ElfCoreOptions {
            registers: Some(regs),
            vmcoreinfo: None,
        },
        &mut out,
        |_| {},
    )
    .unwrap();
    // PT_NOTE is the first program header: offset at 64+8, size at 64+32.
    let off = u64::from_le_bytes(out[72..80].try_into().unwrap()) as usize;
    let size = u64::from_le_bytes(out[96..104].try_into().unwrap()) as usize;
    out[off..off + size].to_vec()
}

fn check_kdump(d: &DumpDriver, frames: &[Frame], comp: Comp) {
    let info = d.info().unwrap();
    assert_eq!(info.kind, "kdump");
    assert_eq!(info.max_gfn, Gfn(frames.len() as u64 - 1));
    let mut buf = vec![0u8; 4096];
    for (pfn, f) in frames.iter().enumerate() {
        let gfn = Gfn(pfn as u64);
        let r = d.read_page(gfn, 0, &mut buf);
        match f {
            Frame::Dumped(p) => {
                r.unwrap_or_else(|e| panic!("{comp:?} frame {pfn}: {e}"));
                assert_eq!(&buf, p, "{comp:?} frame {pfn}");
                let c = d.kdump_page_compression(gfn).unwrap().unwrap();
                let expect = match comp {
                    Comp::None => KdumpCompression::None,
                    Comp::Zlib => KdumpCompression::Zlib,
                    Comp::Lzo => KdumpCompression::Lzo,
                    Comp::Snappy => KdumpCompression::Snappy,
                    Comp::Zstd => KdumpCompression::Zstd,
                };
                assert_eq!(c, expect, "frame {pfn}");
                // A sub-page read from the (now cached) page.
                let mut w = [0u8; 8];
                d.read_page(gfn, 4000, &mut w).unwrap();
                assert_eq!(&w, &p[4000..4008]);
            }
            Frame::Excluded => assert_eq!(absence(r), Some(PageAbsence::Excluded), "{pfn}"),
            Frame::Hole => assert_eq!(absence(r), Some(PageAbsence::NotInDump), "{pfn}"),
        }
    }
    assert_eq!(
        absence(d.read_page(Gfn(frames.len() as u64), 0, &mut buf)),
        Some(PageAbsence::BeyondMemory)
    );
    // physical_ranges lists exactly the dumped frames.
    let mut listed = Vec::new();
    for r in d.physical_ranges().unwrap() {
        let mut a = r.start.0;
        while a < r.end.0 {
            listed.push(a / 4096);
            a += 4096;
        }
    }
    let dumped: Vec<u64> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f, Frame::Dumped(_)))
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(listed, dumped);
}

#[test]
fn kdump_every_compression_standard_and_flattened() {
    let frames = frames();
    let regs = [sample_registers(1), sample_registers(2)];
    let notes = cpu_notes(&regs);
    let vmci = "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n";
    for comp in Comp::ALL {
        let logical = build_kdump(&frames, comp, &notes, vmci);
        for (layout, bytes) in [
            ("standard", logical.clone()),
            ("flattened", flatten(&logical, comp as u64)),
        ] {
            let d = open(bytes);
            assert_eq!(d.format(), DumpFormat::Kdump);
            let h = d.kdump_header().unwrap();
            assert_eq!(h.flattened, layout == "flattened");
            assert_eq!(h.release, "6.1.0-test");
            assert_eq!(h.machine, "x86_64");
            assert_eq!(h.dump_level, 31);
            assert_eq!(d.vmcoreinfo(), Some(vmci), "{comp:?} {layout}");
            assert_eq!(d.register_sets(), 2);
            assert!(d.has_control_registers());
            assert_eq!(d.registers(VcpuId(1)).unwrap(), regs[1]);
            assert!(matches!(
                d.registers(VcpuId(2)),
                Err(VmiError::NotFound { .. })
            ));
            check_kdump(&d, &frames, comp);
        }
    }
}

#[test]
fn kdump_cache_disabled_reads_the_same() {
    let frames = frames();
    let bytes = build_kdump(&frames, Comp::Zlib, &[], "");
    let d = DumpDriver::from_bytes(
        bytes,
        DumpOptions {
            page_cache: 0,
            ..DumpOptions::default()
        },
    )
    .unwrap();
    check_kdump(&d, &frames, Comp::Zlib);
    assert_eq!(d.vmcoreinfo(), None);
    assert_eq!(d.register_sets(), 0);
}

#[test]
fn lime_ranges_and_holes() {
    let a: Vec<u8> = (0..3).flat_map(page_for).collect();
    let b = page_for(100);
    let d = open(build_lime(&[(0x1000, &a), (0x100000, &b)]));
    assert_eq!(d.format(), DumpFormat::Lime);
    assert_eq!(
        d.physical_ranges().unwrap(),
        vec![Pa(0x1000)..Pa(0x4000), Pa(0x100000)..Pa(0x101000)]
    );
    let mut buf = vec![0u8; 4096];
    d.read_page(Gfn(2), 0, &mut buf).unwrap();
    assert_eq!(buf, page_for(1));
    d.read_page(Gfn(0x100), 0, &mut buf).unwrap();
    assert_eq!(buf, b);
    assert_eq!(
        absence(d.read_page(Gfn(0), 0, &mut buf)),
        Some(PageAbsence::NotInDump)
    );
    assert_eq!(
        absence(d.read_page(Gfn(0x50), 0, &mut buf)),
        Some(PageAbsence::NotInDump)
    );
    assert_eq!(
        absence(d.read_page(Gfn(0x101), 0, &mut buf)),
        Some(PageAbsence::BeyondMemory)
    );
    let info = d.info().unwrap();
    assert_eq!(
        (info.kind, info.max_gfn, info.vcpus, info.live),
        ("lime", Gfn(0x100), 0, false)
    );
    assert!(matches!(
        d.registers(VcpuId(0)),
        Err(VmiError::NotSupported { .. })
    ));
}

#[test]
fn raw_is_the_default_and_can_be_forced() {
    let mut bytes: Vec<u8> = (0..4).flat_map(page_for).collect();
    let d = open(bytes.clone());
    assert_eq!(d.format(), DumpFormat::Raw);
    assert_eq!(d.physical_ranges().unwrap(), vec![Pa(0)..Pa(0x4000)]);
    assert!(matches!(
        d.registers(VcpuId(0)),
        Err(VmiError::NotSupported { .. })
    ));
    // A raw image that happens to start with an ELF magic is read as raw when forced.
    bytes[..4].copy_from_slice(b"\x7fELF");
    assert!(DumpDriver::from_bytes(bytes.clone(), DumpOptions::default()).is_err());
    let d = DumpDriver::from_bytes(
        bytes.clone(),
        DumpOptions {
            format: Some(DumpFormat::Raw),
            ..DumpOptions::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    d.read_page(Gfn(0), 0, &mut buf).unwrap();
    assert_eq!(buf, bytes[..4096]);
    assert!(matches!(
        d.read_page(Gfn(0), 4095, &mut [0u8; 2]),
        Err(VmiError::InvalidArgument(_))
    ));
    assert_eq!(
        absence(d.read_page(Gfn(4), 0, &mut buf)),
        Some(PageAbsence::BeyondMemory)
    );
    assert_eq!(
        absence(d.read_page(Gfn(u64::MAX), 0, &mut buf)),
        Some(PageAbsence::BeyondMemory)
    );
}

#[test]
fn elf_writer_round_trip_splits_around_holes() {
    // Source: a kdump with excluded frames and holes: unreadable pages must become holes.
    let frames = frames();
    let src = open(build_kdump(&frames, Comp::Lzo, &[], ""));
    let regs = vec![
        sample_registers(1),
        sample_registers(2),
        sample_registers(3),
    ];
    let vmci = "OSRELEASE=6.1.0-test\n";
    let mut out = Cursor::new(Vec::new());
    let mut reports = 0;
    let summary = write_elf_core(
        &src,
        &ElfCoreOptions {
            registers: Some(&regs),
            vmcoreinfo: Some(vmci),
        },
        &mut out,
        |_| reports += 1,
    )
    .unwrap();
    assert!(reports >= 1);
    let dumped = frames
        .iter()
        .filter(|f| matches!(f, Frame::Dumped(_)))
        .count() as u64;
    assert_eq!(summary.bytes_written, dumped * 4096);
    let elf = open(out.into_inner());
    assert_eq!(elf.format(), DumpFormat::Elf);
    assert_eq!(elf.vmcoreinfo(), Some(vmci));
    assert_eq!(elf.info().unwrap().vcpus, 3);
    for (i, r) in regs.iter().enumerate() {
        assert_eq!(&elf.registers(VcpuId(i as u16)).unwrap(), r);
    }
    assert_eq!(
        elf.physical_ranges().unwrap(),
        src.physical_ranges().unwrap()
    );
    assert_eq!(summary.segments, elf.physical_ranges().unwrap().len());
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    for pfn in 0..frames.len() as u64 {
        let ra = src.read_page(Gfn(pfn), 0, &mut a);
        let rb = elf.read_page(Gfn(pfn), 0, &mut b);
        assert_eq!(ra.is_ok(), rb.is_ok(), "frame {pfn}");
        if ra.is_ok() {
            assert_eq!(a, b, "frame {pfn}");
        }
    }
}

#[test]
fn elf_writer_uses_pn_xnum_beyond_65534_segments() {
    // Every other page of a 131080-page LiME image: 65540 runs.
    let pages = 65_540u64;
    let page = vec![0x5au8; 4096];
    let ranges: Vec<(u64, &[u8])> = (0..pages).map(|i| (i * 2 * 4096, &page[..])).collect();
    let src = open(build_lime(&ranges));
    let mut out = Vec::new();
    let s = write_elf_core(&src, &ElfCoreOptions::default(), &mut out, |_| {}).unwrap();
    assert_eq!(s.segments as u64, pages);
    assert_eq!(u16::from_le_bytes([out[56], out[57]]), 0xffff);
    let elf = open(out);
    assert_eq!(elf.physical_ranges().unwrap().len() as u64, pages);
    let mut b = [0u8; 16];
    elf.read_page(Gfn(2 * (pages - 1)), 100, &mut b).unwrap();
    assert_eq!(b, [0x5a; 16]);
    assert!(elf.read_page(Gfn(1), 0, &mut b).is_err());
}

#[test]
fn elf_p_filesz_shorter_than_p_memsz_is_a_hole() {
    let src = open((0..4).flat_map(page_for).collect());
    let mut out = Vec::new();
    write_elf_core(&src, &ElfCoreOptions::default(), &mut out, |_| {}).unwrap();
    // Shrink p_filesz of the PT_LOAD (second phdr) to 2 pages, keep p_memsz at 4.
    let ph = 64 + 56;
    out[ph + 32..ph + 40].copy_from_slice(&(2 * 4096u64).to_le_bytes());
    let elf = open(out);
    let mut buf = vec![0u8; 4096];
    elf.read_page(Gfn(1), 0, &mut buf).unwrap();
    assert_eq!(buf, page_for(1));
    assert!(elf.read_page(Gfn(2), 0, &mut buf).is_err());
    assert_eq!(elf.physical_ranges().unwrap(), vec![Pa(0)..Pa(0x2000)]);
}

#[test]
fn core_reads_cross_pages_and_ranges() {
    let a: Vec<u8> = (0..2).flat_map(page_for).collect();
    let b: Vec<u8> = (2..3).flat_map(page_for).collect();
    let d = open(build_lime(&[(0, &a), (0x2000, &b)])); // adjacent LiME ranges
    let core = VmiCore::new(d).unwrap();
    let mut buf = [0u8; 16];
    core.read_physical(Pa(0x1ff8), &mut buf).unwrap();
    assert_eq!(&buf[..8], &page_for(1)[4088..]);
    assert_eq!(&buf[8..], &page_for(2)[..8]);
}

fn windows_pfns() -> Vec<u64> {
    // Runs with gaps. Frame 1 is the DTB; its content is not a valid PML4, so kdmp-parser's
    // walk of the module list stops with a translation error, which it tolerates.
    let mut v: Vec<u64> = (1..20).collect();
    v.extend(40..45);
    v.extend([100, 102, 104]);
    v.extend(200..230);
    v
}

#[test]
fn windows_dumps_agree_with_kdmp_parser() {
    let fields = WinFields::default();
    let pfns = windows_pfns();
    for (kind, expect) in [
        (WinKind::Full, WindowsDumpKind::Full),
        (WinKind::KernelBitmap, WindowsDumpKind::KernelBitmap),
        (WinKind::FullBitmap, WindowsDumpKind::FullBitmap),
        (WinKind::KernelRdmp, WindowsDumpKind::KernelMemory),
    ] {
        let bytes = build_windows(kind, &pfns, &fields);
        let theirs = kdmp_parser::KernelDumpParser::with_reader(Cursor::new(bytes.clone()))
            .unwrap_or_else(|e| panic!("kdmp-parser on {kind:?}: {e}"));
        let ours = open(bytes);
        assert_eq!(ours.format(), DumpFormat::WindowsCrashDump);
        let h = ours.windows_header().unwrap();
        let t = theirs.headers();
        assert_eq!(h.kind, expect);
        assert_eq!(h.directory_table_base, t.directory_table_base);
        assert_eq!(h.ps_active_process_head, t.ps_active_process_head);
        assert_eq!(h.ps_loaded_module_list, t.ps_loaded_module_list);
        assert_eq!(h.kd_debugger_data_block, t.kd_debugger_data_block);
        assert_eq!(h.pfn_database, t.pfn_database);
        assert_eq!(h.machine_image_type, t.machine_image_type);
        assert_eq!(h.number_processors, t.number_processors);
        assert_eq!(h.bug_check_code, t.bug_check_code);
        assert_eq!(h.bug_check_parameters, t.bug_check_code_parameters);
        assert_eq!(h.dump_type, t.dump_type);
        assert_eq!(h.major_version, t.major_version);
        assert_eq!(h.minor_version, t.minor_version);
        // Registers: theirs from the context record, CR3 from the header.
        let c = theirs.context_record();
        let r = ours.registers(VcpuId(0)).unwrap();
        assert_eq!(
            (r.rip, r.rsp, r.rax, r.r15, r.rflags),
            (c.rip, c.rsp, c.rax, c.r15, u64::from(c.eflags))
        );
        assert_eq!((r.cs.selector, r.ss.selector), (c.seg_cs, c.seg_ss));
        assert_eq!(r.cr3.0, t.directory_table_base);
        assert!(!ours.has_control_registers());
        assert!(matches!(
            ours.registers(VcpuId(1)),
            Err(VmiError::NotFound { .. })
        ));
        assert_eq!(ours.info().unwrap().vcpus, 2);
        assert_eq!(ours.vmcoreinfo(), None);
        // Every page: the same set, the same bytes.
        let their_pages: Vec<u64> = theirs.physmem().map(|(gpa, _)| gpa.u64() / 4096).collect();
        let mut our_pages = Vec::new();
        for r in ours.physical_ranges().unwrap() {
            our_pages.extend((r.start.0 / 4096)..(r.end.0 / 4096));
        }
        assert_eq!(our_pages, their_pages, "{kind:?}");
        assert_eq!(our_pages, pfns);
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        for pfn in 0..300u64 {
            let rt = theirs.phys_read_exact(kdmp_parser::Gpa::new(pfn * 4096), &mut a);
            let ro = ours.read_page(Gfn(pfn), 0, &mut b);
            assert_eq!(rt.is_ok(), ro.is_ok(), "{kind:?} frame {pfn}");
            if ro.is_ok() {
                assert_eq!(a, b, "{kind:?} frame {pfn}");
                assert_eq!(b, page_for(pfn));
            }
        }
    }
}

/// `VmiCore::read_batch` over a LiME dump with a hole: physical requests inside the
/// largest range take the direct copy (`direct_memory`), the others (in the small range,
/// across the hole, beyond memory) the general path; every result and every byte is what
/// a single `read` gives.
#[test]
fn batched_reads_direct_and_general_agree_with_single_reads() {
    use vmi_core::{AccessContext, Pa, VmiCore};
    let big: Vec<u8> = (0..0x4000u32).map(|i| (i * 7 + 3) as u8).collect();
    let small = [0x5au8; 0x1000];
    let d = open(build_lime(&[(0x1000, &small), (0x10000, &big)]));
    let (base, bytes) = d
        .direct_memory()
        .expect("mapped dumps lend their largest range");
    assert_eq!((base, bytes.len()), (Pa(0x10000), 0x4000));
    let core = VmiCore::new(d).unwrap();
    let cases: Vec<(u64, usize)> = vec![
        (0x10000, 8),
        (0x13ff8, 8),
        (0x11ffc, 8),     // across a page, inside the range: one copy
        (0x13ffc, 8),     // runs off the end of memory: partial
        (0x1ff8, 16),     // the small range, then the hole: partial
        (0x3000, 4),      // the hole
        (0x1000, 0x1000), // the small range
        (0x10010, 0),
    ];
    let mut bufs: Vec<Vec<u8>> = cases.iter().map(|&(_, n)| vec![0xee; n]).collect();
    let mut batch: Vec<(AccessContext, &mut [u8])> = cases
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(pa, _), b)| (AccessContext::direct(Pa(pa)), &mut b[..]))
        .collect();
    let results = core.read_batch(&mut batch);
    for (i, (&(pa, n), result)) in cases.iter().zip(&results).enumerate() {
        let mut want = vec![0xee; n];
        let single = core.read(Pa(pa), &mut want);
        assert_eq!(
            single.as_ref().map_err(ToString::to_string),
            result.as_ref().map_err(ToString::to_string),
            "case {i}"
        );
        match single {
            Ok(()) => assert_eq!(bufs[i], want, "case {i}"),
            Err(VmiError::PartialAccess { completed, .. }) => {
                assert_eq!(bufs[i][..completed], want[..completed], "case {i}")
            }
            Err(_) => {}
        }
    }
    assert!(results[0].is_ok() && results[2].is_ok() && results[6].is_ok());
    assert!(matches!(
        results[3],
        Err(VmiError::PartialAccess { completed: 4, .. })
    ));
}
