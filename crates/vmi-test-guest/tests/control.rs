//! The guest's command channel and its workloads, on the busybox guest.

use std::time::Duration;

use vmi_test_guest::{GuestConfig, TestGuest};

#[test]
fn commands_run_in_the_guest_and_workloads_print_their_truth() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().control(true)) else {
        return;
    };
    let t = Duration::from_secs(60);
    let out = guest.run("uname -r", t).unwrap();
    assert_eq!(out.rc, 0);
    assert_eq!(out.output.trim(), guest.truth().release);
    assert_eq!(guest.run("echo a; echo b >&2; exit 3", t).unwrap().rc, 3);
    assert!(guest.run("echo a\necho b", t).is_err(), "two lines");

    let out = guest.run("vmi_execs 9", t).unwrap();
    assert_eq!(out.rc, 0, "{}", out.output);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("pid "), "{lines:?}");
    let execs: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("exec "))
        .copied()
        .collect();
    assert_eq!(execs.len(), 9, "{lines:?}");
    assert_eq!(
        execs[0],
        "exec 1 /bin/busybox|/bin/busybox|cat|/tmp/vmi-w/f1"
    );
    assert_eq!(
        execs[1],
        "exec 2 /tmp/vmi-w/script|/tmp/vmi-w/script|arg 2|"
    );
    assert_eq!(execs[2], "exec 3 /bin/busybox|/bin/busybox|true|vmi-exec-3");
    assert_eq!(lines.iter().filter(|l| l.starts_with("open ")).count(), 3);

    let out = guest.run("vmi_opens 100", t).unwrap();
    assert_eq!(out.rc, 0);
    assert!(out.output.starts_with("pid "), "{}", out.output);
}
