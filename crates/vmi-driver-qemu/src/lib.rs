//! Live VMI of an **unpatched, running QEMU** (TCG or KVM), attached by nothing but its
//! QMP socket path: guest memory, vCPU registers, pause/resume, and events
//! (breakpoints, watchpoints, single-step) through QEMU's own gdbstub.
//!
//! ```no_run
//! use vmi_core::{VmiCore, VmiVmControl, VcpuId, Registers as _};
//! use vmi_driver_qemu::QemuDriver;
//! # fn main() -> Result<(), vmi_core::VmiError> {
//! let core = VmiCore::new(QemuDriver::attach("/run/vm/qmp.sock")?)?;
//! let regs = core.registers(VcpuId(0))?;
//! println!("vCPU 0 at {}", regs.instruction_pointer());
//! # Ok(()) }
//! ```
//! (`no_run`: needs a running QEMU; the crate's integration tests boot one.)
//!
//! # How it reaches the guest
//!
//! | what | how | notes |
//! |---|---|---|
//! | RAM layout | `query-memdev`, `qom-get …/mem-path`, HMP `info mtree -f` | guest-physical → backend offset, incl. the q35 split (RAM ≥ 2.75 GiB: 2 GiB below the PCI hole, the rest at 4 GiB = backend offset 2 GiB) |
//! | memory, fastest | `mmap` (`MAP_SHARED`) of a `memory-backend-file,share=on` | memory speed; [`vmi_core::VmiInfo::cache_pages`] is `false` |
//! | memory, fallback | HMP `gpa2hva` per RAM block + `/proc/<pid>/mem` (pid from `SO_PEERCRED` of the QMP socket) | needs ptrace rights on QEMU |
//! | memory, last resort | HMP `xp /Ngx` | slow, read-only, warned once on stderr |
//! | registers | gdbstub `g`/`p` with the register map built from the target description XML, plus HMP `info registers` for segment descriptors, GDTR/IDTR, DR0–7 | without a gdbstub: `info registers` only (no KERNEL_GS_BASE/CR8) |
//! | control | QMP `stop`/`cont`/`query-status`, or the gdbstub when it holds the VM | |
//! | events | gdbstub `Z0`/`Z1` (breakpoints), `Z2`/`Z3`/`Z4` (write/read/access watchpoints), `vCont;s` (single-step), stop replies `T05thread:…;watch:…` | events name their vCPU (QEMU exposes vCPUs as threads) |
//!
//! The gdbstub: the driver uses QEMU's existing one (found with `query-chardev`, label
//! `gdb`), or the one given in [`AttachOptions::gdb`]; when QEMU has none it starts one on
//! a private unix socket (HMP `gdbserver unix:…,server=on,wait=off`) and stops it on
//! drop. It connects lazily, at the first register read or event request: accepting a
//! client stops the VM, and the driver resumes it when it was running.
//!
//! # libvirt domains
//!
//! [`QemuDriver::attach_libvirt`] attaches to a domain run by libvirtd, whose QMP socket
//! libvirt owns, through libvirt itself and without changing the domain's definition:
//!
//! | what | how |
//! |---|---|
//! | monitor | every QMP and HMP command through `virDomainQemuMonitorCommand` (libvirt logs the domain as "tainted: custom-monitor"); `libvirt.so.0` is loaded at run time, nothing is needed at build time |
//! | pause, resume | libvirt's `virDomainSuspend`/`virDomainResume`, so that `virsh domstate` stays right |
//! | memory | as above: `mmap` of the domain's RAM file when libvirt gave it a shared file backing (`<memoryBacking><source type='file'/><access mode='shared'/>`), else the QEMU process's memory (the default anonymous RAM); QEMU's pid from a vCPU thread, checked by its `-name guest=NAME` argument (the domain must run on this host) |
//! | gdbstub | started with HMP `gdbserver` on a socket in a private directory made inside the domain's own libvirt directory (`/var/lib/libvirt/qemu/domain-ID-NAME`, where a confined QEMU may create files), handed to QEMU's user; removed on detach |
//! | guard | as below, but libvirt's QMP socket is the daemon's and libvirt cannot be called after a `fork`: after a `SIGKILL` it detaches the gdbstub (`D`: breakpoints removed), removes the directory, and resumes a VM found running with `virsh resume NAME` (QEMU pauses the VM when a gdb client goes away); the next attach stops the gdbstub left listening on the removed socket and starts its own |
//!
//! Requests through libvirt have libvirt's own timeouts, not
//! [`AttachOptions::command_timeout`].
//!
//! # Trust boundaries
//!
//! * **Read-only unless asked.** QEMU's RAM file and `/proc/<pid>/mem` are opened
//!   read-only (the mapping is `PROT_READ`); writing guest memory or vCPU registers
//!   (also from an event response) fails with [`QemuError::ReadOnly`] unless the
//!   driver was attached with [`AttachOptions::writable`]`(true)`, which opens them
//!   read-write (and refuses the read-only HMP `xp` path).
//! * **The private gdbstub socket** lives in a directory `vmi-qemu-<16 random hex
//!   digits>` made with `mkdir` (never reusing an existing name or following a planted
//!   symlink), mode 0700, owner and mode checked with `lstat`, under
//!   `$XDG_RUNTIME_DIR` when it is a private directory of ours, else the temporary
//!   directory; the driver checks that the socket QEMU created there is a socket owned
//!   by QEMU's user (`SO_PEERCRED` of the QMP socket). No other local user can bind the
//!   path first and serve a fake stub. When QEMU runs as another user, only root can
//!   share such a directory with it (it hands the directory to QEMU's user); others get
//!   an error asking for QEMU's own `-gdb` socket ([`AttachOptions::gdb_socket`]). The
//!   directory is removed on drop (or by the guard, below).
//! * QMP and the gdbstub are trusted as much as QEMU itself: whoever can connect to the
//!   QMP socket controls the VM anyway.
//!
//! # Leaving the guest as found
//!
//! On drop — also while a panic unwinds, or after an error — the driver removes its
//! breakpoints and watchpoints (`z`), detaches from the gdbstub (`D`, which makes QEMU
//! resume the VM) when the VM was running at attach time, stops a gdbstub it started,
//! and finally restores the run state it found (`cont`/`stop`).
//!
//! **Ctrl-C**: a signal handler cannot talk to QEMU safely. Install a handler that only
//! sets a flag (e.g. with the `ctrlc` crate) and run the event loop with
//! [`vmi_core::VmiSession::handle_until`]; it returns within 100 ms of the flag being
//! set, and dropping the driver then cleans up (see `examples/breakpoint.rs`).
//!
//! **`SIGKILL`, the OOM killer, a crash** (any death without unwinding): QEMU does *not*
//! clean up after a client that vanishes (measured on QEMU 7.2): the gdbstub keeps the
//! dead client's breakpoints and watchpoints, and the VM stops at the next hit (state
//! `debug`) and waits forever; a VM stopped with QMP `stop` stays `paused`; QMP `cont`
//! alone does not help (the next hit stops it again). So at the first action that
//! changes the VM (pause, resume, gdbstub connection) the driver starts a **guard
//! process** ([`AttachOptions::guard`], on by default): a fork of this process that
//! never `exec`s, runs only async-signal-safe system calls, keeps no descriptor of ours
//! but one end of a socket pair, leaves our session (Ctrl-C and a kill of our process
//! group do not reach it), and is told of each breakpoint and watchpoint. When our end
//! of the pair closes without a clean detach, however we died, it connects to the
//! gdbstub (free again) and sends `D` (QEMU removes every gdb breakpoint and watchpoint
//! and resumes) for a VM that ran at attach, or `z` for each of ours for a VM found
//! stopped; then over the QMP socket (free again) it stops a gdbstub the driver started
//! and restores the run state found at attach; then it removes the private socket
//! directory, says so on stderr and exits. On the test guest the VM runs again 4-14 ms
//! after `SIGKILL` of a process holding it at a breakpoint (`tests/guard.rs`, which also
//! covers `abort` and `SIGTERM` to the process group), and 8-205 ms after `kill -9` of a
//! `vmi trace` stopped at a hit, on a 2-core host under load 8. On a
//! clean drop the driver undoes everything itself and dismisses the guard; if its own
//! clean-up fails, the guard tries again.
//!
//! Limits of the guard: `SIGKILL` of the guard itself (or of the whole cgroup at once,
//! e.g. the OOM killer's `memory.oom.group`) leaves the old behaviour; a process that
//! `fork`s without `exec` while the driver lives keeps our end open in the copy (the
//! guard acts when the last copy dies); the guard's resident size is that of this
//! process when it started (copy-on-write pages), so attach early. Without the guard,
//! or after it failed: the next [`QemuDriver::attach`] finds the VM in `debug` with a
//! free gdbstub and detaches it (QEMU removes all gdb breakpoints and resumes), or call
//! [`QemuDriver::recover`] explicitly. Under TCG, guest RAM was never modified; under
//! KVM, QEMU's `z`/`D` remove the `0xCC` bytes it wrote.
//!
//! # TCG vs KVM
//!
//! The driver asks `query-kvm` and adapts ([`QemuDriver::is_kvm`]):
//!
//! | | TCG | KVM |
//! |---|---|---|
//! | software breakpoint (`Z0`) | checked at translation time: guest RAM is **not** modified, the guest cannot see it | QEMU writes `0xCC` into guest RAM, through the page tables of its current vCPU: visible to the guest while inserted. The driver makes a vCPU that maps the address current, records the byte it replaces, and puts that byte back into every read (see below) |
//! | software breakpoint at a user address | sent as a hardware breakpoint (`Z1`): the same thing under TCG | sent as a hardware breakpoint: a `Z0` would be written into whichever process the vCPU runs, and removed through whichever it runs then |
//! | hardware breakpoint (`Z1`) | emulated, no limit on their number | the 4 debug registers (DR0–3), shared with watchpoints: the fifth is refused |
//! | watchpoints | emulated, any number, reported after the access | debug registers (max 4, lengths 1/2/4/8, aligned) |
//! | continuing from a breakpoint | a no-op first instruction (the kernel's `__fentry__` `nop`, `endbr64`) is stepped over by moving `rip`; anything else is single-stepped (QEMU would stop again) | the driver removes the breakpoint, single-steps, inserts it again |
//! | cost of an event | QEMU's gdbstub flushes **all** translated code at every breakpoint and single-step stop (not at watchpoint stops): the guest then re-translates what it runs, tens of ms per event on a busy guest (`cargo bench -p vmi-utils --bench tracing`) | no flush: a VM exit and the gdbstub round trip |
//! | single-step | interrupts and timers masked during the step (QEMU's default `sstep` flags) | same |
//!
//! Under KVM, reads through this driver (virtual and physical, single and batched)
//! show the byte an `int3` replaced, as long as RAM still holds the `int3` (a guest that
//! rewrote the byte wins). A write through the driver over an `int3` keeps it in RAM
//! (QEMU checks it when removing the breakpoint) and lands when the breakpoint goes.
//! The guest itself sees the `int3` (as with any software breakpoint under KVM); use
//! hardware breakpoints where it must not. This path is tested under TCG with
//! [`AttachOptions::kvm_breakpoints`], the test writing QEMU's `int3` itself: this
//! project's machines cannot run KVM.
//!
//! Under TCG a guest-virtual breakpoint is a property of the vCPU, not of guest memory,
//! so the guest cannot detect it. Breakpoints and watchpoints at *guest-physical*
//! addresses are [`vmi_core::VmiError::NotSupported`]: QEMU's gdbstub matches virtual
//! addresses only.
//!
//! # Limits
//!
//! * Event registers carry what the gdbstub exposes (general-purpose registers, RIP,
//!   RFLAGS, segment selectors, FS/GS/KERNEL_GS base, CR0/2/3/4/8, EFER); segment
//!   descriptors, GDTR/IDTR and DR0–7 are read through HMP only when
//!   [`AttachOptions::full_event_registers`] is set (slower). The syscall MSRs
//!   (STAR/LSTAR/…) are not exposed by QEMU and stay 0.
//! * QMP and the gdbstub serve one client per socket: give the driver its own QMP
//!   socket. Pausing the VM through another QMP client while the driver waits for events
//!   is respected (the event loop waits until the VM runs again).
//! * Every request has a timeout ([`AttachOptions::command_timeout`], default 1 s): a
//!   QEMU that exits or hangs gives an error, never a hang.

mod driver;
mod error;
mod gdb;
mod libvirt;
mod memory;
mod monitor;
mod mtree;
mod qmp;
mod regs;
mod rundir;
mod shadow;
mod sys;
mod watchdog;

pub use driver::{AttachOptions, GdbMode, QemuDriver};
pub use error::QemuError;
pub use gdb::GdbAddress;
pub use memory::AccessPath;
