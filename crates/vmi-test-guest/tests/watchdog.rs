//! The watchdog of a hung test: this test runs itself again as a child that boots a guest
//! with a short deadline and then hangs; the child must abort with every thread's
//! backtrace in its output, and leave no QEMU and no RAM file behind.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vmi_test_guest::guest::GuestEnv;
use vmi_test_guest::{GuestConfig, TestGuest};

const CHILD: &str = "VMI_WATCHDOG_TEST_CHILD";

fn hang_with_a_guest() -> ! {
    let cfg = GuestConfig::default().watchdog(Some(Duration::from_secs(2)));
    let guest = TestGuest::boot(cfg).expect("boot");
    println!("GUEST_DIR={}", guest.dir().display());
    loop {
        std::thread::park();
    }
}

#[test]
fn a_hung_test_prints_backtraces_and_leaves_no_guest() {
    if std::env::var_os(CHILD).is_some() {
        hang_with_a_guest();
    }
    // Skip (or fail under VMI_REQUIRE_GUEST=1) as every guest test does.
    let Some(probe) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    drop(probe);
    let t = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_hung_test_prints_backtraces_and_leaves_no_guest",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(300),
        "the watchdog took {:?}",
        t.elapsed()
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "child status {:?}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("[vmi-test-guest] watchdog"), "{stderr}");
    // gdb's backtrace names this file's hanging function.
    if which("gdb") {
        assert!(stderr.contains("hang_with_a_guest"), "{stderr}");
    }
    let dir: PathBuf = stdout
        .lines()
        .find_map(|l| l.strip_prefix("GUEST_DIR="))
        .unwrap_or_else(|| panic!("no guest dir in {stdout}"))
        .into();
    let env = GuestEnv::load(&dir).expect("guest.env of the child's guest");
    assert!(!env.qemu_running(), "QEMU {} still runs", env.qemu_pid);
    assert!(!env.mem_file.exists(), "{} left", env.mem_file.display());
    let _ = std::fs::remove_dir_all(&dir);
}

fn libc_sigabrt() -> i32 {
    6
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}
