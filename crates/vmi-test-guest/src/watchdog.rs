//! A watchdog for tests that hang while a guest is up.
//!
//! A test that never returns holds its guest forever and, in CI, the whole run past its
//! time limit with nothing to show where it stood. While a [`TestGuest`](crate::guest::TestGuest)
//! lives, its watchdog waits; past the deadline it prints the backtrace of every thread of
//! the test process (by `gdb`, when installed), stops the guest (QEMU quit, RAM file
//! removed) and aborts the process, so the test fails with the place it hung in its output.
//!
//! The deadline is [`GuestConfig::watchdog`](crate::guest::GuestConfig::watchdog): by
//! default `$VMI_TEST_WATCHDOG_SECS` seconds (0 turns it off), else 20 minutes, far past
//! the slowest honest test (about 6 minutes on a loaded 2-core machine).

use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::guest::GuestEnv;

/// The default deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20 * 60);

/// The deadline from `$VMI_TEST_WATCHDOG_SECS` (`None`: 0, no watchdog), else the default.
pub fn deadline_from_env() -> Option<Duration> {
    match std::env::var("VMI_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(DEFAULT_DEADLINE),
    }
}

/// Cancelled when dropped (with its guest).
#[derive(Debug)]
pub(crate) struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching the guest of `env` for `deadline`.
    pub(crate) fn start(env: GuestEnv, deadline: Duration) -> Watchdog {
        let (cancel, wait) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vmi-test-guest-watchdog".into())
            .spawn(move || match wait.recv_timeout(deadline) {
                // Cancelled (the sender dropped) or told to stop: the test moved on.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
                Err(RecvTimeoutError::Timeout) => fire(&env, deadline),
            })
            .ok();
        Watchdog {
            cancel: Some(cancel),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fire(env: &GuestEnv, deadline: Duration) -> ! {
    let pid = std::process::id();
    let mut report = format!(
        "[vmi-test-guest] watchdog: the test still runs {}s after booting the guest in {}; \
         backtraces of every thread (pid {pid}):\n",
        deadline.as_secs(),
        env.dir.display()
    );
    // gdb stops the process while it prints: bounded by `timeout` in case it cannot attach.
    match Command::new("timeout")
        .args(["120", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            report.push_str(&String::from_utf8_lossy(&out.stdout));
            report.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        Err(e) => report.push_str(&format!("(no backtrace: running gdb failed: {e})\n")),
    }
    // One write, so parallel tests' output does not interleave with it.
    {
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(report.as_bytes());
    }
    if let Err(e) = env.stop() {
        eprintln!("[vmi-test-guest] watchdog: stopping the guest: {e}");
    }
    std::process::abort()
}
