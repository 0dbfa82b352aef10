//! The Linux walkers over a mutable mock kernel (the hostile tests' synthetic kernel: a
//! task list, credentials, mm/VMA and printk layouts in one 2 MiB kernel mapping of the
//! mock driver). The fuzz input is a list of 8-byte writes (offset, value) into that
//! mapping; then processes, threads, VMAs, command lines and the kernel log are read.
#![no_main]

#[path = "../../crates/vmi-os-linux/tests/mock_kernel/mod.rs"]
mod mock_kernel;

use libfuzzer_sys::fuzz_target;
use mock_kernel::{Mock, REGION_VA, off, profile, task_va};
use vmi_os_linux::Limits;

/// Processes after `init_task`.
const TASKS: u64 = 6;

fuzz_target!(|data: &[u8]| {
    let m = Mock::new(TASKS);
    // Each task leads its own thread group.
    for i in 0..=TASKS {
        let t = task_va(i);
        m.write_u64(t + off("group_leader"), t);
        m.write_u64(t + off("thread_group"), t + off("thread_group"));
        m.write_u64(t + off("thread_group") + 8, t + off("thread_group"));
    }
    // The input: (offset within the first 512 KiB of the mapping, value) pairs.
    for w in data.chunks_exact(12) {
        let at = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])) % (512 << 10);
        m.write(REGION_VA + (at & !7), &w[4..12]);
    }
    let limits = Limits {
        max_list: 1024,
        ..Limits::default()
    };
    let Ok((core, os)) = m.try_os(limits, profile()) else {
        return;
    };
    if let Ok(list) = os.process_list(&core) {
        let _ = os.all_threads(&core);
        for t in list.tasks.iter().take(8) {
            let _ = os.cmdline(&core, t);
            let _ = os.vmas(&core, t);
        }
    }
    let _ = os.dmesg(&core);
});
