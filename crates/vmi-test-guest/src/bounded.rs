//! Time and memory bounds for tests that feed hostile input to a parser or walker: a hang or
//! an allocation blow-up must fail the test, not stall or kill CI.
//!
//! * [`within`] runs one case on its own thread and fails the test if it is still running
//!   after the limit (the stuck thread is left behind; the test binary exits at the end).
//! * [`MemoryCap`] is a counting global allocator that refuses allocations beyond a limit, so a
//!   blow-up aborts the test binary with "memory allocation of N bytes failed" instead of
//!   driving the machine into swap or the OOM killer. A test binary opts in with:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: vmi_test_guest::bounded::MemoryCap = vmi_test_guest::bounded::memory_cap(1 << 30);
//! # fn main() {}
//! ```

use std::sync::mpsc;
use std::time::Duration;

/// A global allocator that counts live bytes and refuses to go over a limit.
pub type MemoryCap = cap::Cap<std::alloc::System>;

/// A [`MemoryCap`] over the system allocator, limited to `bytes` live bytes for the whole test
/// binary (all tests of the binary run in it at once: size the limit for that).
pub const fn memory_cap(bytes: usize) -> MemoryCap {
    cap::Cap::new(std::alloc::System, bytes)
}

/// Default per-case time limit of hostile-input tests: generous for debug builds on a
/// loaded machine, far below what a hang or a quadratic blow-up costs.
pub const CASE_LIMIT: Duration = Duration::from_secs(10);

/// Runs `f` on its own thread and returns its result; panics (failing the test) if it takes
/// longer than `limit`, or with `f`'s own panic message if it panicked. `name` labels the case.
pub fn within<T, F>(name: &str, limit: Duration, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("bounded:{name}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a test thread");
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: still running after {limit:?} (hang or blow-up on hostile input)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => panic!("{name}: the case ended without a result"),
        },
    }
}
