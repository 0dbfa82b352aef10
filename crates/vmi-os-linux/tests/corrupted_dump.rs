//! Hostile guest on real data: a copy of the test guest's RAM (a raw dump) with
//! corrupted task-list pointers, credentials and maple-tree roots. Every corruption must
//! cost only the objects it touches, reported in `skipped` or as an error, never a panic
//! or a hang.

use std::collections::BTreeSet;

use vmi_core::{Va, VmiCore, VmiError};
use vmi_driver_dump::{DumpDriver, DumpFormat, DumpOptions};
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{GuestConfig, TestGuest};

struct Image {
    bytes: Vec<u8>,
    note: String,
}

impl Image {
    /// A LinuxOs over a patched copy: `patches` are (virtual address, value) writes made
    /// through the kernel page tables of the clean image.
    fn patched(&self, patches: &[(Va, u64)]) -> (VmiCore<DumpDriver>, LinuxOs) {
        let clean = self.open(self.bytes.clone());
        let mut bytes = self.bytes.clone();
        for &(va, value) in patches {
            let pa = clean
                .0
                .translate_address((va, clean.1.kernel().kernel_root).into())
                .expect("patched address is mapped");
            let at = pa.0 as usize;
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        self.open(bytes)
    }

    fn open(&self, bytes: Vec<u8>) -> (VmiCore<DumpDriver>, LinuxOs) {
        let options = DumpOptions {
            format: Some(DumpFormat::Raw),
            ..DumpOptions::default()
        };
        let core = VmiCore::new(DumpDriver::from_bytes(bytes, options).unwrap()).unwrap();
        let os = LinuxOs::builder()
            .no_cache()
            .vmcoreinfo(self.note.clone())
            .build(&core)
            .expect("kernel still found");
        (core, os)
    }
}

fn pids(core: &VmiCore<DumpDriver>, os: &LinuxOs) -> (BTreeSet<u32>, Vec<(Va, VmiError)>) {
    let list = os.process_list(core).expect("process list");
    (list.tasks.iter().map(|t| t.tgid).collect(), list.skipped)
}

#[test]
fn corrupted_copy_of_a_real_guest() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    guest.pause().expect("pause");
    let bytes = std::fs::read(guest.mem_file()).expect("RAM file");
    let note = guest
        .truth()
        .vmcoreinfo
        .clone()
        .expect("vmcoreinfo in truth");
    guest.resume().expect("resume");
    let image = Image { bytes, note };
    let (core, os) = image.open(image.bytes.clone());
    let (all, skipped) = pids(&core, &os);
    assert!(skipped.is_empty());
    let list = os.process_list(&core).unwrap();
    let by_comm = |c: &str| list.tasks.iter().find(|t| t.comm == c).unwrap().clone();
    let sleeper = by_comm("vmi_sleeper");
    let mapper = by_comm("vmi_mapper");
    let tasks_off = os.profile().offset_of("task_struct", "tasks").unwrap();
    let cred_off = os.profile().offset_of("task_struct", "real_cred").unwrap();

    // A garbage `next` in the middle of the list: every process is still found (the tail
    // backwards from the head), one broken link reported.
    for garbage in [
        0x4141_4141_4141_4141,
        0xffff_ffff_ffff_f000,
        sleeper.task.0 + 1,
    ] {
        let (core, os) = image.patched(&[(sleeper.task + tasks_off, garbage)]);
        let (p, skipped) = pids(&core, &os);
        assert_eq!(p, all, "garbage {garbage:#x}");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
    }

    // A `next` pointing back to an earlier task (init): stopped at the broken back link,
    // the tail recovered backwards, nothing lost.
    let init = list.tasks.iter().find(|t| t.pid == 1).unwrap().task;
    let (core, os) = image.patched(&[(sleeper.task + tasks_off, init.0 + tasks_off)]);
    let (p, skipped) = pids(&core, &os);
    assert_eq!(p, all);
    assert_eq!(skipped.len(), 1, "{skipped:?}");

    // A garbage credential pointer: that process is skipped, with its address.
    let (core, os) = image.patched(&[(mapper.task + cred_off, 0x1234)]);
    let (p, skipped) = pids(&core, &os);
    assert_eq!(p.len(), all.len() - 1);
    assert!(!p.contains(&mapper.tgid));
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, mapper.task);

    // A garbage maple-tree root: the VMA walk of that process fails or skips, typed.
    let mm = mapper.mm.unwrap();
    let mt = os.profile().offset_of("mm_struct", "mm_mt").unwrap()
        + os.profile().offset_of("maple_tree", "ma_root").unwrap();
    for root in [0x4141_4141_4141_4142u64, mm.0 + 2, 0xffff_ffff_ffff_ff02] {
        let (core, os) = image.patched(&[(mm + mt, root)]);
        let t = os.find_process(&core, mapper.tgid).unwrap();
        match os.vmas(&core, &t) {
            // Never a silently empty answer: what was lost is reported.
            Ok(v) => assert!(!v.skipped.is_empty(), "root {root:#x}: {v:?}"),
            Err(e) => eprintln!("root {root:#x}: {e}"),
        }
        assert_eq!(pids(&core, &os).0, all);
    }

    hostile_init_task_list_pointing_at_itself_is_not_an_empty_system(&image, &os);
    let pid_off = os.profile().offset_of("task_struct", "pid").unwrap();
    hostile_pid_above_pid_max_is_not_a_process(&image, sleeper.task + pid_off, &all);
    let mm_off = os.profile().offset_of("task_struct", "mm").unwrap();
    hostile_corrupted_mm_keeps_the_process_and_fails_its_maps(&image, &mapper, mm_off, &all);
}

/// `init_task.tasks.next` (and `.prev`) pointing at itself: `ps` must not print an empty
/// system (issue 14).
fn hostile_init_task_list_pointing_at_itself_is_not_an_empty_system(image: &Image, os: &LinuxOs) {
    let head = os.symbol_address("init_task").unwrap()
        + os.profile().offset_of("task_struct", "tasks").unwrap();
    for patches in [
        vec![(head, head.0)],
        vec![(head, head.0), (head + 8, head.0)],
    ] {
        let (core, os) = image.patched(&patches);
        match os.process_list(&core) {
            Ok(l) => assert!(
                !l.skipped.is_empty() && !l.tasks.is_empty(),
                "a damaged list looked complete: {} tasks, {:?}",
                l.tasks.len(),
                l.skipped
            ),
            Err(e) => assert!(e.to_string().contains("task list is empty"), "{e}"),
        }
    }
}

/// A task whose pid reads 4294967295 is not printed as a process (issue 14).
/// `pid_at`: the `pid` field of a process (its `tgid` follows: both become 2^32 - 1).
fn hostile_pid_above_pid_max_is_not_a_process(image: &Image, pid_at: Va, all: &BTreeSet<u32>) {
    let (core, os) = image.patched(&[(pid_at, u64::MAX)]);
    let (p, skipped) = pids(&core, &os);
    assert!(!p.contains(&u32::MAX));
    assert_eq!(p.len(), all.len() - 1);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
}

/// A garbage `mm` pointer: the process is still listed (with the problem), and `maps`
/// says why it cannot answer instead of "process not found" (issue 14).
fn hostile_corrupted_mm_keeps_the_process_and_fails_its_maps(
    image: &Image,
    mapper: &vmi_os_linux::LinuxTask,
    mm_off: u64,
    all: &BTreeSet<u32>,
) {
    for garbage in [0x4141_4141_4141_4141u64, 0xffff_8000_0000_0001] {
        let (core, os) = image.patched(&[(mapper.task + mm_off, garbage)]);
        assert_eq!(&pids(&core, &os).0, all, "mm {garbage:#x}");
        let t = os.find_process(&core, mapper.tgid).expect("still found");
        assert!(!t.problems.is_empty());
        assert!(!t.is_kernel_thread());
        let e = os.vmas(&core, &t).unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
        assert!(os.cmdline(&core, &t).is_err());
    }
}
