//! Hostile guests on the mock driver: a tiny synthetic kernel (VMCOREINFO, page tables,
//! a task list, a profile built by hand) whose task list is then corrupted — cycles,
//! garbage and non-canonical pointers, links that do not point back, unmapped objects,
//! random byte flips. Every case must end with typed errors in `skipped`, never a panic
//! or a hang, and keep every task that is still reachable.

use std::collections::BTreeSet;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vmi_core::{Pa, Va, VmiCore, VmiError};
use vmi_driver_mock::MockDriver;
use vmi_os_linux::{Limits, LinuxOs, VmcoreinfoOrigin};
use vmi_test_guest::bounded::{CASE_LIMIT, MemoryCap, memory_cap, within};

/// Every test of this binary together (mock kernels of 16 MiB each) stays under 384 MiB.
#[global_allocator]
static ALLOC: MemoryCap = memory_cap(384 << 20);

mod mock_kernel;
use mock_kernel::*;

fn pids(os: &LinuxOs, core: &VmiCore<MockDriver>) -> (BTreeSet<u32>, Vec<(Va, VmiError)>) {
    let list = os.process_list(core).expect("process list");
    (list.tasks.iter().map(|t| t.pid).collect(), list.skipped)
}

fn all(n: u32) -> BTreeSet<u32> {
    (1..=n).collect()
}

#[test]
fn intact_list() {
    let (core, os) = Mock::new(5).os(Limits::default());
    assert_eq!(os.kernel().release.as_deref(), Some("6.1.0-mock"));
    assert_eq!(os.kernel().kernel_root, Pa(ROOT));
    assert_eq!(
        os.kernel().banner.as_deref(),
        Some("Linux version 6.1.0-mock\n")
    );
    let (p, skipped) = pids(&os, &core);
    assert_eq!(p, all(5));
    assert!(skipped.is_empty(), "{skipped:?}");
}

#[test]
fn vmcoreinfo_found_by_scan() {
    let m = Mock::new(2);
    m.driver
        .write_physical(Pa(0x30_0123), vmcoreinfo().as_bytes());
    let core = VmiCore::new(m.driver).unwrap();
    let os = LinuxOs::builder()
        .no_cache()
        .profile(profile())
        .build(&core)
        .unwrap();
    assert_eq!(
        os.kernel().vmcoreinfo_origin,
        VmcoreinfoOrigin::Scanned(Pa(0x30_0123))
    );
}

#[test]
fn wrong_vmcoreinfo_is_rejected() {
    let m = Mock::new(2);
    let core = VmiCore::new(m.driver).unwrap();
    let bad = vmcoreinfo().replace("NUMBER(phys_base)=", "NUMBER(phys_base)=4096");
    let err = LinuxOs::builder()
        .no_cache()
        .vmcoreinfo(bad)
        .profile(profile())
        .build(&core)
        .unwrap_err();
    assert!(matches!(err, VmiError::NotFound { .. }), "{err}");
}

#[test]
fn consistent_cycle_is_detected() {
    let m = Mock::new(5);
    // task3 -> task1: a ring that never returns to the head. task1 does not point back
    // to task3, so the walk stops there and recovers the tail backwards.
    m.write_u64(task_va(3) + off("tasks"), task_va(1) + off("tasks"));
    let (core, os) = m.os(Limits::default());
    let (p, skipped) = pids(&os, &core);
    assert_eq!(p, all(5), "the tail is recovered backwards");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, Va(task_va(3) + off("tasks")));
    // A self-loop whose prev also points to itself cannot be entered consistently either.
    let m = Mock::new(5);
    m.write_u64(task_va(2) + off("tasks"), task_va(2) + off("tasks"));
    m.write_u64(task_va(2) + off("tasks") + 8, task_va(2) + off("tasks"));
    let (core, os) = m.os(Limits::default());
    let (p, skipped) = pids(&os, &core);
    assert_eq!(p, all(5));
    assert_eq!(skipped.len(), 2, "{skipped:?}");
}

#[test]
fn garbage_pointers() {
    for garbage in [
        0x4141_4141_4141_4141u64,
        0,
        0x7fff_0000_1000,
        INIT_TASK + 3,
        0xffff_ffff_ffff_f000,
    ] {
        let m = Mock::new(5);
        m.write_u64(task_va(2) + off("tasks"), garbage);
        let (core, os) = m.os(Limits::default());
        let (p, skipped) = pids(&os, &core);
        assert_eq!(p, all(5), "garbage {garbage:#x}");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].0, Va(task_va(2) + off("tasks")));
    }
}

#[test]
fn link_that_does_not_point_back() {
    let m = Mock::new(5);
    // task2.next skips task3 (task4.prev still says task3).
    m.write_u64(task_va(2) + off("tasks"), task_va(4) + off("tasks"));
    let (core, os) = m.os(Limits::default());
    let (p, skipped) = pids(&os, &core);
    assert_eq!(p, all(5));
    assert!(
        matches!(skipped[0].1, VmiError::Malformed { .. }),
        "{skipped:?}"
    );
}

#[test]
fn both_links_of_a_task_broken() {
    let m = Mock::new(5);
    m.write_u64(task_va(3) + off("tasks"), 0xdead_beef);
    m.write_u64(task_va(3) + off("tasks") + 8, 0xdead_beef);
    let (core, os) = m.os(Limits::default());
    let (p, skipped) = pids(&os, &core);
    // task3 is still reached forwards from task2; its broken links cost nothing else.
    assert_eq!(p, all(5));
    assert_eq!(skipped.len(), 2, "{skipped:?}");
}

#[test]
fn unmapped_objects_are_skipped() {
    let m = Mock::new(5);
    // An mm and a cred outside every mapping.
    m.write_u64(task_va(4) + off("mm"), 0xffff_ffff_9000_0000);
    m.write_u64(task_va(2) + off("real_cred"), 0xffff_ffff_9000_1000);
    let (core, os) = m.os(Limits::default());
    let (p, skipped) = pids(&os, &core);
    // The task whose mm is unreadable exists: it stays listed, with the problem; the one
    // whose credentials are unreadable cannot be described and is skipped.
    assert_eq!(p, [1, 3, 4, 5].into_iter().collect());
    let bad: BTreeSet<Va> = skipped.iter().map(|s| s.0).collect();
    assert_eq!(bad, [Va(task_va(2))].into_iter().collect());
    assert!(
        skipped.iter().all(|(_, e)| e.is_memory_unavailable()),
        "{skipped:?}"
    );
    let t4 = os.find_process(&core, 4).expect("task 4 listed");
    assert!(!t4.problems.is_empty());
    assert!(os.vmas(&core, &t4).is_err());
}

#[test]
fn list_into_unmapped_memory() {
    let m = Mock::new(5);
    m.write_u64(task_va(2) + off("tasks"), 0xffff_ffff_9000_0100);
    let (core, os) = m.os(Limits::default());
    let (p, skipped) = pids(&os, &core);
    assert_eq!(p, all(5));
    assert!(skipped[0].1.is_memory_unavailable());
}

#[test]
fn walk_limit() {
    let (core, os) = Mock::new(50).os(Limits {
        max_list: 10,
        ..Limits::default()
    });
    let (p, skipped) = pids(&os, &core);
    assert_eq!(p.len(), 10);
    assert!(matches!(
        skipped[0].1,
        VmiError::WalkLimit {
            reason: "limit",
            ..
        }
    ));
}

#[test]
fn vma_list_cycle_and_garbage() {
    let m = Mock::new(3);
    let mm = 0xffff_ffff_82b0_0000u64;
    let vma = |i: u64| 0xffff_ffff_82b1_0000u64 + i * 0x100;
    m.write_u64(task_va(1) + off("mm"), mm);
    m.write_u64(mm + 0x48, 0xffff_8880_0010_0000);
    for i in 0..4 {
        m.write_u64(vma(i), 0x1000 * (i + 1));
        m.write_u64(vma(i) + 8, 0x1000 * (i + 2));
        m.write_u64(vma(i) + 16, vma((i + 1) % 4)); // a cycle
        m.write_u64(vma(i) + 0x40, mm);
    }
    m.write_u64(vma(2) + 0x40, mm + 8); // belongs to another mm
    m.write_u64(mm + 0x120, vma(0));
    m.write_u64(mm + 0x100, 0x40_0000);
    m.write_u64(mm + 0x108, 0x40_0010);
    let (core, os) = m.os(Limits::default());
    let list = os.process_list(&core).unwrap();
    assert!(list.skipped.is_empty(), "{:?}", list.skipped);
    let task = list.tasks.iter().find(|t| t.pid == 1).unwrap();
    assert_eq!(task.user_root, Some(Pa(0x10_0000)));
    let vmas = os.vmas(&core, task).unwrap();
    let starts: Vec<u64> = vmas.vmas.iter().map(|v| v.start.0).collect();
    assert_eq!(starts, [0x1000, 0x2000, 0x4000]);
    assert_eq!(vmas.skipped.len(), 2, "{:?}", vmas.skipped);
    assert!(vmas.skipped.iter().any(|(_, e)| matches!(
        e,
        VmiError::WalkLimit {
            reason: "cycle",
            ..
        }
    )));
    // The user memory behind the root is not mapped: a typed error.
    assert!(os.cmdline(&core, task).is_err());
}

/// A maple tree of three levels as the kernel builds one for `n` VMAs: leaves
/// (`maple_leaf_64`) alternating a VMA and the gap after it (8 VMAs per full leaf, the
/// last leaf's data ended by its metadata), internal `maple_arange_64` nodes whose child
/// slots are encoded nodes without the root bit, an `maple_arange_64` root with it.
/// Returns the VMA addresses and the root entry.
fn write_maple_tree(m: &Mock, mm: u64, n: u64) -> (Vec<u64>, u64) {
    let vma = |i: u64| 0xffff_ffff_82b1_0000u64 + i * 0x100;
    let mut node_at = 0xffff_ffff_82b8_0000u64;
    let mut alloc = || {
        node_at += 0x100;
        node_at
    };
    let mut leaves = Vec::new(); // (node, max)
    let vmas: Vec<u64> = (0..n).map(vma).collect();
    for (i, &v) in vmas.iter().enumerate() {
        let start = 0x10_0000 + i as u64 * 0x2000;
        m.write_u64(v, start);
        m.write_u64(v + 8, start + 0x1000);
        m.write_u64(v + 0x40, mm);
        m.write_u64(v + 0x50, 0x73);
    }
    for (l, chunk) in vmas.chunks(8).enumerate() {
        let leaf = alloc();
        let last_leaf = (l + 1) * 8 >= vmas.len();
        let mut slot = 0u64;
        for (j, &v) in chunk.iter().enumerate() {
            let i = (l * 8 + j) as u64;
            let start = 0x10_0000 + i * 0x2000;
            m.write_u64(leaf + 128 + slot * 8, v);
            m.write_u64(leaf + 8 + slot * 8, start + 0xfff);
            slot += 1;
            // The gap up to the next VMA (or the end of the address space).
            m.write_u64(leaf + 128 + slot * 8, 0);
            if slot < 15 {
                let gap_end = if last_leaf && j + 1 == chunk.len() {
                    u64::MAX
                } else {
                    start + 0x1fff
                };
                m.write_u64(leaf + 8 + slot * 8, gap_end);
            }
            slot += 1;
        }
        let max = if last_leaf {
            u64::MAX
        } else {
            0x10_0000 + (l as u64 * 8 + 8) * 0x2000 - 1
        };
        if slot < 16 {
            m.write(leaf + 248, &[(slot - 1) as u8]); // meta.end
        }
        leaves.push((leaf, max));
    }
    let mut parents = Vec::new();
    for group in leaves.chunks(10) {
        let p = alloc();
        for (k, &(leaf, max)) in group.iter().enumerate() {
            // maple_leaf_64 = 1, ENODE_NULL set on every other child.
            let enc = leaf | (1 << 3) | if k % 2 == 0 { 4 } else { 0 };
            m.write_u64(p + 80 + k as u64 * 8, enc);
            if k < 9 {
                m.write_u64(p + 8 + k as u64 * 8, max);
            }
        }
        m.write(p + 240, &[(group.len() - 1) as u8]);
        parents.push((p, group.last().unwrap().1));
    }
    let root = alloc();
    for (k, &(p, max)) in parents.iter().enumerate() {
        m.write_u64(root + 80 + k as u64 * 8, p | (3 << 3));
        if k < 9 {
            m.write_u64(root + 8 + k as u64 * 8, max);
        }
    }
    m.write(root + 240, &[(parents.len() - 1) as u8]);
    let root_entry = root | (3 << 3) | 2;
    m.write_u64(mm + MM_MT + 8, root_entry);
    (vmas, root_entry)
}

/// Regression (issue 13): the walk skipped every child of an internal node as "not a
/// node" (child slots carry no root bit), so any tree of more than one leaf gave no VMAs.
#[test]
fn maple_tree_of_three_levels_lists_every_vma_in_order() {
    let m = Mock::new(2);
    let mm = 0xffff_ffff_82b0_0000u64;
    m.write_u64(task_va(1) + off("mm"), mm);
    m.write_u64(mm + 0x48, 0xffff_8880_0010_0000);
    let (vmas, root) = write_maple_tree(&m, mm, 300);
    let (core, os) = m.os_with(Limits::default(), profile_with(true));
    let task = os.find_process(&core, 1).unwrap();
    let got = os.vmas(&core, &task).unwrap();
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
    let found: Vec<u64> = got.vmas.iter().map(|v| v.vma.0).collect();
    assert_eq!(found, vmas);
    assert_eq!(got.vmas[299].start.0, 0x10_0000 + 299 * 0x2000);
    assert!(got.vmas.iter().all(|v| v.name.is_none()));

    // A child slot pointing back at the root: reported as a cycle, the rest still listed.
    let m = Mock::new(2);
    m.write_u64(task_va(1) + off("mm"), mm);
    m.write_u64(mm + 0x48, 0xffff_8880_0010_0000);
    let (vmas, root2) = write_maple_tree(&m, mm, 300);
    assert_eq!(root, root2);
    let root_node = root & !0xff;
    // The root's second child (80 VMAs below it) now points at the root itself.
    m.write_u64(root_node + 80 + 8, root_node | (3 << 3));
    let (core, os) = m.os_with(Limits::default(), profile_with(true));
    let task = os.find_process(&core, 1).unwrap();
    let got = within("maple cycle", CASE_LIMIT, move || {
        os.vmas(&core, &task).unwrap()
    });
    assert!(
        got.skipped.iter().any(|(_, e)| matches!(
            e,
            VmiError::WalkLimit {
                reason: "cycle",
                ..
            }
        )),
        "{:?}",
        got.skipped
    );
    assert_eq!(got.vmas.len(), vmas.len() - 80);
}

/// VMA names as `/proc/PID/maps` prints them for anonymous VMAs: `[heap]` (overlapping
/// `start_brk..brk`), `[stack]` (holding `start_stack`), `[anon:NAME]` (a
/// `PR_SET_VMA_ANON_NAME` name: no Debian kernel of the test matrix enables it, so the mock
/// is its test), and unnamed otherwise; a name pointer into unmapped memory is reported.
#[test]
fn anonymous_vmas_are_named_as_proc_maps_names_them() {
    let m = Mock::new(2);
    let mm = 0xffff_ffff_82b0_0000u64;
    m.write_u64(task_va(1) + off("mm"), mm);
    m.write_u64(mm + 0x48, 0xffff_8880_0010_0000);
    let (vmas, _) = write_maple_tree(&m, mm, 20);
    let start = |i: u64| 0x10_0000 + i * 0x2000;
    m.write_u64(mm + 0x160, start(3)); // start_brk
    m.write_u64(mm + 0x168, start(3) + 0x800); // brk
    m.write_u64(mm + 0x170, start(7) + 0x10); // start_stack
    let name = 0xffff_ffff_82bf_0000u64;
    m.write(name, b"\x01\0\0\0vmi-named\0");
    m.write_u64(vmas[11] + VMA_ANON_NAME, name);
    m.write_u64(vmas[12] + VMA_ANON_NAME, 0xffff_ffff_9000_0000); // unmapped
    let (core, os) = m.os_with(Limits::default(), profile_with(true));
    let task = os.find_process(&core, 1).unwrap();
    let got = os.vmas(&core, &task).unwrap();
    let names: Vec<(usize, &str)> = got
        .vmas
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, v.name.as_deref()?)))
        .collect();
    assert_eq!(
        names,
        [(3, "[heap]"), (7, "[stack]"), (11, "[anon:vmi-named]")]
    );
    assert_eq!(
        got.vmas.len(),
        19,
        "the VMA whose name cannot be read is reported"
    );
    assert_eq!(got.skipped.len(), 1, "{:?}", got.skipped);
    assert_eq!(got.skipped[0].0, Va(vmas[12]));
    assert!(got.vmas[3].maps_line().ends_with(" [heap]"));
}

/// Writes a printk ring of `2^count_bits` descriptors and `2^size_bits` text bytes holding
/// the records `texts` with ids `tail..`, and points `prb` at it.
fn write_printk(m: &Mock, count_bits: u32, size_bits: u32, tail: u64, texts: &[&str]) {
    m.write_u64(PRB, RB);
    m.write_u32(RB, count_bits);
    m.write_u64(RB + 8, DESCS);
    m.write_u64(RB + 16, INFOS);
    m.write_u64(RB + 24, tail + texts.len() as u64 - 1);
    m.write_u64(RB + 32, tail);
    m.write_u32(RB + 0x40, size_bits);
    m.write_u64(RB + 0x48, LOG_DATA);
    let mask = (1u64 << count_bits) - 1;
    let mut lpos = 0u64;
    for (i, text) in texts.iter().enumerate() {
        let id = tail + i as u64;
        let index = id & mask;
        let d = DESCS + index * 24;
        m.write_u64(d, (2 << 62) | id);
        m.write_u64(d + 8, lpos);
        let next = lpos + (8 + text.len() as u64).next_multiple_of(8);
        m.write_u64(d + 16, next);
        m.write_u64(LOG_DATA + lpos, id);
        m.write(LOG_DATA + lpos + 8, text.as_bytes());
        let info = INFOS + index * 0x58;
        m.write_u64(info, 100 + i as u64);
        m.write_u64(info + 8, 1_000_000 * i as u64);
        m.write(info + 16, &(text.len() as u16).to_le_bytes());
        lpos = next;
    }
}

#[test]
fn dmesg_reads_records_across_the_ring_end() {
    let m = Mock::new(1);
    // 16 descriptors, ids 14..=17: indexes 14, 15, 0, 1.
    write_printk(&m, 4, 12, 14, &["one", "two", "three", "four"]);
    let (core, os) = m.os(Limits::default());
    let log = os.dmesg(&core).unwrap();
    let texts: Vec<&str> = log.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three", "four"]);
    assert_eq!(log[3].seq, 103);
}

/// Issue 14: `dmesg` allocated `count × desc_size` and `count × info_size` (2^24
/// descriptors: 400 MB and 1.4 GB) before reading a byte. The binary's memory cap (384 MiB)
/// aborts it if that comes back.
#[test]
fn hostile_dmesg_huge_descriptor_ring_is_not_allocated_up_front() {
    within("dmesg with 2^24 descriptors", CASE_LIMIT, || {
        // 2^24 descriptors for 4 KiB of text: not a kernel's ring, refused.
        let m = Mock::new(1);
        write_printk(&m, 24, 12, 0, &["a"]);
        let (core, os) = m.os(Limits::default());
        let e = os.dmesg(&core).unwrap_err();
        assert!(matches!(e, VmiError::Malformed { .. }), "{e}");
        // 2^20 descriptors for 1 MiB of text (legal sizes), two live records: only their
        // descriptors are read, and the rest of the arrays is not even mapped.
        let m = Mock::new(1);
        write_printk(&m, 20, 20, 5, &["x", "y"]);
        let (core, os) = m.os(Limits::default());
        let texts: Vec<String> = os
            .dmesg(&core)
            .unwrap()
            .into_iter()
            .map(|r| r.text)
            .collect();
        assert_eq!(texts, ["x", "y"]);
    });
}

/// Issue 14: `head_id = ~0` with `tail_id = 0` made `dmesg` print `[]` (every slot failed
/// the id check): a head more records past the tail than the ring holds is an error.
#[test]
fn hostile_dmesg_head_beyond_the_ring_is_an_error() {
    let m = Mock::new(1);
    write_printk(&m, 4, 12, 0, &["a"]);
    m.write_u64(RB + 24, u64::MAX);
    let (core, os) = m.os(Limits::default());
    let e = os.dmesg(&core).unwrap_err();
    assert!(e.to_string().contains("head id"), "{e}");
}

/// A BTF blob for the synthetic kernel's structs (every field an int of its size, or a
/// byte array), with task_struct's `pid` and `tgid` offsets as given.
fn btf_blob(pid_at: u64, tgid_at: u64) -> Vec<u8> {
    let mut types: Vec<u8> = Vec::new();
    let mut strings: Vec<u8> = vec![0];
    let name = |strings: &mut Vec<u8>, n: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(n.as_bytes());
        strings.push(0);
        off
    };
    let put = |types: &mut Vec<u8>, words: &[u32]| {
        for w in words {
            types.extend_from_slice(&w.to_le_bytes());
        }
    };
    // Ids 1..=4: u8, u16, u32, u64.
    for size in [1u32, 2, 4, 8] {
        let n = name(&mut strings, &format!("u{}", size * 8));
        put(&mut types, &[n, 1 << 24, size, size * 8]);
    }
    let mut next = 5u32;
    let task: Vec<(&'static str, u64, u64)> = TASK_FIELDS
        .iter()
        .map(|&(f, o, sz)| match f {
            "pid" => (f, pid_at, sz),
            "tgid" => (f, tgid_at, sz),
            _ => (f, o, sz),
        })
        .collect();
    type Owned = Vec<(&'static str, u64, u64)>;
    let structs: Vec<(&str, u64, Owned)> = [
        ("task_struct", 0x800, task),
        ("cred", 0x40, CRED_FIELDS.to_vec()),
        ("mm_struct", 0x200, MM_FIELDS.to_vec()),
        ("vm_area_struct", 0x100, VMA_FIELDS.to_vec()),
    ]
    .into_iter()
    .chain(PRINTK_STRUCTS.iter().map(|&(n, sz, f)| (n, sz, f.to_vec())))
    .collect();
    for (sname, size, fields) in structs {
        // Byte arrays for the fields that are not ints, then the struct.
        let mut member_types = Vec::new();
        for &(_, _, fsize) in &fields {
            match fsize {
                1 => member_types.push(1),
                2 => member_types.push(2),
                4 => member_types.push(3),
                8 => member_types.push(4),
                _ => {
                    put(&mut types, &[0, 3 << 24, 0, 1, 3, fsize as u32]);
                    member_types.push(next);
                    next += 1;
                }
            }
        }
        let n = name(&mut strings, sname);
        put(
            &mut types,
            &[n, (4 << 24) | fields.len() as u32, size as u32],
        );
        for (&(fname, off, _), ty) in fields.iter().zip(member_types) {
            let m = name(&mut strings, fname);
            put(&mut types, &[m, ty, (off * 8) as u32]);
        }
        next += 1;
    }
    let mut out = Vec::new();
    out.extend_from_slice(&0xEB9Fu16.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    for w in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(&strings);
    out
}

/// Where the synthetic kernel keeps its BTF.
const BTF_VA: u64 = 0xffff_ffff_82b4_0000;

/// Builds `LinuxOs` from guest memory alone (System.map for the symbols, BTF from memory)
/// with the profile cache in `cache`, on a kernel claiming build id `aa…` whose BTF puts
/// `task_struct.pid` at `pid_at`.
fn build_from_memory(
    dir: &std::path::Path,
    cache: &std::path::Path,
    pid_at: u64,
) -> (VmiCore<MockDriver>, LinuxOs) {
    let m = Mock::new(3);
    let btf = btf_blob(pid_at, off("tgid"));
    m.write(BTF_VA, &btf);
    let map = dir.join("System.map");
    std::fs::write(
        &map,
        format!(
            "{INIT_TASK:016x} D init_task\n{BANNER:016x} D linux_banner\n{PRB:016x} D prb\n\
             {BTF_VA:016x} R __start_BTF\n{:016x} R __stop_BTF\n",
            BTF_VA + btf.len() as u64
        ),
    )
    .unwrap();
    let core = VmiCore::new(m.driver).unwrap();
    let os = LinuxOs::builder()
        .cache_dir(cache)
        .vmcoreinfo(format!("{}BUILD-ID={}\n", vmcoreinfo(), "aa".repeat(20)))
        .system_map(&map)
        .build(&core)
        .expect("kernel from memory");
    (core, os)
}

/// Issue 14: the profile cache stored a profile built from guest memory under the
/// guest-claimed build id, and a reload checked only the banner: a hostile guest that
/// forges its BTF (here `task_struct.pid` read from `tgid`'s neighbour) planted offsets
/// that every clean guest claiming that build id then loaded. Entries are now keyed by the
/// SHA-256 of the BTF bytes read, so the clean guest never sees the forged entry.
#[test]
fn hostile_guest_cannot_poison_the_profile_cache() {
    let dir = std::env::temp_dir().join(format!("vmi-hostile-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");
    // The hostile guest: same build id and banner, pid at comm's first bytes.
    let (core, os) = build_from_memory(&dir, &cache, off("comm"));
    let built =
        |o: &vmi_os_linux::ProfileOrigin| matches!(o, vmi_os_linux::ProfileOrigin::Files(_));
    assert!(
        built(&os.kernel().profile_origin),
        "{:?}",
        os.kernel().profile_origin
    );
    let (forged, _) = pids(&os, &core);
    assert_ne!(forged, all(3), "the forged layout reads other pids");
    // The clean guest builds its own profile (its BTF hashes differently) and is right.
    let (core, os) = build_from_memory(&dir, &cache, off("pid"));
    assert!(
        built(&os.kernel().profile_origin),
        "{:?}",
        os.kernel().profile_origin
    );
    assert_eq!(pids(&os, &core).0, all(3));
    // A second clean run loads its own entry.
    let (core, os) = build_from_memory(&dir, &cache, off("pid"));
    assert!(matches!(
        os.kernel().profile_origin,
        vmi_os_linux::ProfileOrigin::Cache(_)
    ));
    assert_eq!(pids(&os, &core).0, all(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seeded_random_corruption_never_panics() {
    let mut rng = SmallRng::seed_from_u64(0x0005_eed7);
    for round in 0..300 {
        let m = Mock::new(8);
        for _ in 0..rng.gen_range(1..6) {
            let t = task_va(rng.gen_range(0..=8));
            let at = t + rng.gen_range(0..0x200u64);
            let v: u64 = match rng.gen_range(0..4) {
                0 => rng.r#gen(),
                1 => task_va(rng.gen_range(0..=8)) + rng.gen_range(0..0x200u64),
                2 => 0,
                _ => u64::from(rng.r#gen::<u8>()),
            };
            m.write_u64(at & !7, v);
        }
        // The printk ring too, sometimes with a corrupted header word.
        if round % 3 == 0 {
            write_printk(&m, 4, 12, round, &["a", "bb", "ccc"]);
            m.write_u64(RB + 8 * rng.gen_range(0..10u64), rng.r#gen());
        }
        within("corrupted mock kernel", CASE_LIMIT, move || {
            let core = VmiCore::new(m.driver).unwrap();
            let Ok(os) = LinuxOs::builder()
                .no_cache()
                .vmcoreinfo(vmcoreinfo())
                .profile(profile())
                .build(&core)
            else {
                return;
            };
            let list = os.process_list(&core).unwrap();
            assert!(list.tasks.len() <= 8 + 1, "round {round}");
            let _ = os.all_threads(&core);
            for t in &list.tasks {
                let _ = os.cmdline(&core, t);
                let _ = os.vmas(&core, t);
            }
            let _ = os.dmesg(&core);
        });
    }
}

#[test]
fn syscall_arguments_follow_the_abi() {
    use vmi_core::VmiOs;
    let (core, os) = Mock::new(1).os(Limits::default());
    let regs = vmi_arch_amd64::Registers {
        rdi: 1,
        rsi: 2,
        rdx: 3,
        r10: 4,
        r8: 5,
        r9: 6,
        rcx: 99,
        ..Default::default()
    };
    assert_eq!(
        os.syscall_arguments(&core, &regs, 6).unwrap(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(os.syscall_arguments(&core, &regs, 2).unwrap(), [1, 2]);
    assert!(os.syscall_arguments(&core, &regs, 7).is_err());
}

/// The count in `notes`' scan summary after `what` (e.g. "blocks").
fn scan_count(os: &LinuxOs, what: &str) -> u64 {
    let summary = os
        .kernel()
        .notes
        .iter()
        .find(|n| n.starts_with("vmcoreinfo scan:"))
        .unwrap_or_else(|| panic!("no scan summary in {:?}", os.kernel().notes));
    summary
        .trim_start_matches("vmcoreinfo scan:")
        .split(',')
        .find_map(|part| {
            let part = part.trim();
            part.ends_with(what)
                .then(|| part.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {what} in {summary}"))
}

/// Issue 14: 64 VMCOREINFO blocks that parse but fail validation made the scan give up
/// before the real one. About 20,000 of them, all distinct and all before the real block, are
/// each rejected by one page-table walk, and the real block is still found.
#[test]
fn vmcoreinfo_decoys_that_parse_but_fail_validation_do_not_hide_the_kernel() {
    let m = Mock::new(2);
    let mut decoys = 0u64;
    for page in 0x10_0000u64 / 4096..0x30_0000 / 4096 {
        let mut text = Vec::new();
        loop {
            // Distinct claims: other phys_base values, some with the real swapper_pg_dir.
            let block = format!(
                "OSRELEASE=6.1.0-decoy\nKERNELOFFSET=0\nSYMBOL(swapper_pg_dir)={SWAPPER:x}\n\
                 NUMBER(phys_base)={}\n\0",
                (decoys + 1) * 4096
            );
            if text.len() + block.len() > 4096 {
                break;
            }
            text.extend_from_slice(block.as_bytes());
            decoys += 1;
        }
        m.driver.write_physical(Pa(page * 4096), &text);
    }
    assert!(decoys >= 19_000, "{decoys}");
    m.driver
        .write_physical(Pa(0x30_0123), vmcoreinfo().as_bytes());
    let core = VmiCore::new(m.driver).unwrap();
    let os = LinuxOs::builder()
        .no_cache()
        .profile(profile())
        .build(&core)
        .expect("the real VMCOREINFO behind the decoys");
    assert_eq!(
        os.kernel().vmcoreinfo_origin,
        VmcoreinfoOrigin::Scanned(Pa(0x30_0123))
    );
    assert_eq!(os.kernel().kernel_root, Pa(ROOT));
    assert_eq!(scan_count(&os, "rejected"), decoys);
    // The notes keep a few reasons, not one per decoy.
    assert!(
        os.kernel().notes.len() < 16,
        "{:?}",
        os.kernel().notes.len()
    );
}

/// Issue 14: hits of `OSRELEASE=` that do not parse each cost a 4 KiB read and were not
/// counted. Pages full of `OSRELEASE=` without a NUL, and blocks repeating one rejected
/// claim, cost one parse per page and no read beyond the scan's own.
#[test]
fn vmcoreinfo_hits_that_do_not_parse_are_counted_and_cost_one_parse_per_page() {
    let m = Mock::new(2);
    let spam: Vec<u8> = b"OSRELEASE=".iter().copied().cycle().take(4096).collect();
    let pages = 0x10_0000u64 / 4096..0x20_0000 / 4096;
    for page in pages.clone() {
        m.driver.write_physical(Pa(page * 4096), &spam);
    }
    // One rejected claim, repeated 1,000 times.
    let bad = format!(
        "OSRELEASE=6.1.0-mock\nSYMBOL(swapper_pg_dir)={SWAPPER:x}\nNUMBER(phys_base)=0\n\
         KERNELOFFSET=0\n"
    );
    for i in 0..1000u64 {
        let mut block = bad.clone().into_bytes();
        block.push(0);
        m.driver.write_physical(Pa(0x20_0000 + i * 256), &block);
    }
    m.driver
        .write_physical(Pa(0x30_0000), vmcoreinfo().as_bytes());
    let core = VmiCore::new(m.driver).unwrap();
    let os = LinuxOs::builder()
        .no_cache()
        .profile(profile())
        .build(&core)
        .expect("the real VMCOREINFO behind the spam");
    assert_eq!(
        os.kernel().vmcoreinfo_origin,
        VmcoreinfoOrigin::Scanned(Pa(0x30_0000))
    );
    let spam_pages = pages.end - pages.start;
    assert_eq!(scan_count(&os, "not parsable"), spam_pages);
    assert_eq!(scan_count(&os, "rejected"), 1);
    assert_eq!(scan_count(&os, "repeated claims"), 999);
}

/// Issue 18: through the OS-agnostic `VmiOs`, what a broken list hides is reported
/// (`process_list().skipped`), never dropped silently, and the objects carry the Linux
/// facts the CLI prints (uid, state, start time) and a command line of one type.
#[test]
fn vmi_os_listing_reports_what_a_broken_link_costs() {
    use vmi_core::{CommandLine, VmiOs};
    let m = Mock::new(5);
    m.write_u64(task_va(2) + off("tasks"), task_va(4) + off("tasks"));
    let (core, os) = m.os(Limits::default());
    let list = VmiOs::process_list(&os, &core).unwrap();
    let inherent = os.process_list(&core).unwrap();
    assert_eq!(list.items.len(), inherent.tasks.len());
    assert_eq!(list.skipped.len(), inherent.skipped.len());
    assert!(!list.skipped.is_empty());
    for (p, t) in list.items.iter().zip(&inherent.tasks) {
        assert_eq!(p.pid, u64::from(t.tgid));
        assert_eq!(p.uid, Some(t.uid));
        assert_eq!(p.state, Some(t.state.letter()));
        assert_eq!(p.start_time_ns, Some(t.start_time_ns));
        // A mock task has no address space: an empty command line, as /proc shows it.
        if t.mm.is_none() {
            assert_eq!(
                os.process_cmdline(&core, p).unwrap(),
                CommandLine::Argv(vec![])
            );
        }
    }
    // An unknown symbol is a typed error, not an address.
    assert!(matches!(
        os.kernel_symbol(&core, "no_such_symbol"),
        Err(VmiError::NotFound { .. })
    ));
}
