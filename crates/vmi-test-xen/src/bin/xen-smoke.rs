//! The nested-Xen smoke test's dom0 side: runs the driver against one domU and prints
//! one marker line per check, `XEN_SMOKE <guest> <CHECK> <OK|FAIL|INFO> <detail>`, on
//! stdout (the serial console). Started by the dom0 `/init` that
//! `cargo xtask xen smoke` builds:
//!
//! ```text
//! xen-smoke <domid> <pv|pvh> <linux_banner VA, hex> <CR3 events wanted>
//! ```

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    EventMonitor, Gfn, Pa, PageAbsence, Registers as _, Va, VcpuId, VmState, VmiCore,
    VmiCoreConfig, VmiDriver, VmiError, VmiEventControl, VmiEventResponse, VmiInfo,
    VmiQueryRegisters, VmiRead, VmiVmControl,
};
use vmi_driver_xen::{
    GuestKind, MonitorOp, ViewId, XenDriver, XenInterface, abi::XenMemAccess, ffi::LibXen,
    list_domains,
};
use vmi_os_linux::LinuxOs;

struct Report {
    guest: String,
    failed: usize,
}

impl Report {
    fn line(&mut self, check: &str, ok: Option<bool>, detail: impl std::fmt::Display) {
        let status = match ok {
            Some(true) => "OK",
            Some(false) => {
                self.failed += 1;
                "FAIL"
            }
            None => "INFO",
        };
        println!("XEN_SMOKE {} {check} {status} {detail}", self.guest);
    }
    fn result<T>(
        &mut self,
        check: &str,
        r: Result<T, VmiError>,
        detail: impl FnOnce(&T) -> String,
    ) -> Option<T> {
        match r {
            Ok(v) => {
                let d = detail(&v);
                self.line(check, Some(true), d);
                Some(v)
            }
            Err(e) => {
                // With its causes (a library call's errno).
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                self.line(check, Some(false), text);
                None
            }
        }
    }
}

fn open() -> Result<LibXen, VmiError> {
    LibXen::open().map_err(|e| VmiError::driver("xen", e.to_string()))
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(domid), Some(kind), Some(banner), Some(events)) = (
        args.get(1).and_then(|s| s.parse::<u32>().ok()),
        args.get(2).cloned(),
        args.get(3)
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()),
        args.get(4).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: xen-smoke <domid> <pv|pvh> <linux_banner hex> <events>");
        std::process::exit(2);
    };
    let mut rep = Report {
        guest: kind.clone(),
        failed: 0,
    };
    run(&mut rep, domid, &kind, banner, events);
    rep.line(
        "END",
        Some(rep.failed == 0),
        format!("{} failed", rep.failed),
    );
}

fn run(rep: &mut Report, domid: u32, kind: &str, banner: u64, events: usize) {
    let Some(xen) = rep.result("OPEN", open(), |_| {
        "libxenctrl, foreignmemory, evtchn".into()
    }) else {
        return;
    };
    let listed = list_domains(&xen);
    rep.result(
        "LIST",
        listed.and_then(|l| {
            if l.iter().any(|d| d.domid == domid) {
                Ok(l)
            } else {
                Err(VmiError::NotFound {
                    kind: "domain in list",
                    name: domid.to_string(),
                })
            }
        }),
        |l| {
            l.iter()
                .map(|d| format!("dom{}:flags={:#x}:pages={}", d.domid, d.flags, d.tot_pages))
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    let Some(drv) = rep.result("ATTACH", XenDriver::new(xen, domid), |d| {
        format!(
            "{:?} vcpus={} max_gfn={:#x}",
            d.guest_kind(),
            d.info().map(|i| i.vcpus).unwrap_or(0),
            d.info().map(|i| i.max_gfn.0).unwrap_or(0)
        )
    }) else {
        return;
    };
    let want_pv = kind == "pv";
    rep.line(
        "KIND",
        Some((drv.guest_kind() == GuestKind::Pv) == want_pv),
        format!("{:?}", drv.guest_kind()),
    );
    let tot_pages = drv.domain_info().map(|i| i.tot_pages).unwrap_or(0);
    let Some(core) = rep.result(
        "CORE",
        VmiCore::with_config(
            drv,
            VmiCoreConfig {
                page_cache: Some(0),
                ..VmiCoreConfig::default()
            },
        ),
        |_| "page cache off".into(),
    ) else {
        return;
    };
    rep.result(
        "PAUSE",
        core.pause().and_then(|_| core.vm_state()).and_then(|s| {
            if s == VmState::Paused {
                Ok(s)
            } else {
                Err(VmiError::driver("xen", format!("state {s:?} after pause")))
            }
        }),
        |s| format!("{s:?}"),
    );
    let regs = rep.result("REGS", core.registers(VcpuId(0)), |r| {
        format!(
            "rip={:#x} rsp={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip, r.rsp, r.cr0, r.cr3.0, r.cr4, r.efer
        )
    });
    if let Some(regs) = &regs {
        let ctx = regs.address_context(Va(banner));
        let text = core.read_vec(ctx, 64);
        rep.result(
            "BANNER",
            text.and_then(|b| {
                if b.starts_with(b"Linux version ") {
                    Ok(b)
                } else {
                    Err(VmiError::driver(
                        "xen",
                        format!("not a banner: {:?}", String::from_utf8_lossy(&b)),
                    ))
                }
            }),
            |b| {
                let s = String::from_utf8_lossy(b);
                s.split('\0').next().unwrap_or("").trim_end().to_owned()
            },
        );
        let tr = core.translate_address(ctx);
        rep.result("TRANSLATE", tr, |pa| {
            format!("{:#x} -> {:#x}", banner, pa.0)
        });
        let rip = regs.instruction_pointer();
        rep.result(
            "RIP_BYTES",
            core.read_vec(regs.address_context(rip), 16),
            |b| format!("{:#x}: {}", rip.0, hex(b)),
        );
        // write and restore one byte of the banner ('L' -> 'X' -> 'L')
        let wr = (|| -> Result<String, VmiError> {
            let orig = core.read_u8(ctx)?;
            core.write_u8(ctx, b'X')?;
            let pa = core.translate_address(ctx)?;
            let mut seen = [0u8];
            core.driver()
                .read_page(Gfn(pa.0 >> 12), (pa.0 & 0xfff) as usize, &mut seen)?;
            core.write_u8(ctx, orig)?;
            let mut back = [0u8];
            core.driver()
                .read_page(Gfn(pa.0 >> 12), (pa.0 & 0xfff) as usize, &mut back)?;
            if seen[0] == b'X' && back[0] == orig {
                Ok(format!(
                    "{:?} -> 'X' -> {:?}",
                    orig as char, back[0] as char
                ))
            } else {
                Err(VmiError::driver(
                    "xen",
                    format!("saw {:#x} then {:#x}", seen[0], back[0]),
                ))
            }
        })();
        rep.result("WRITE_RESTORE", wr, |s| s.clone());
    }
    if want_pv && let Some(regs) = &regs {
        pv_diag(rep, core.driver(), regs);
    }
    let os = if want_pv {
        None
    } else {
        linux_processes(rep, domid, tot_pages)
    };
    rep.result("RESUME", core.resume().and_then(|_| core.vm_state()), |s| {
        format!("{s:?}")
    });

    if !want_pv {
        perf(rep, domid, tot_pages);
        perf_batched(rep, domid, tot_pages.min(0x10000));
        probes(rep, &core);
        cr3_events(rep, &core, events);
    }
    let drv_kind = core.driver().guest_kind();
    drop(core);
    // after drop: unpaused, monitoring off (a new driver can enable it again)
    let after = (|| -> Result<String, VmiError> {
        let d = XenDriver::new(open()?, domid)?;
        let st = d.state()?;
        if st != VmState::Running {
            return Err(VmiError::driver("xen", format!("state {st:?} after drop")));
        }
        if !want_pv {
            d.monitor_enable(EventMonitor::ControlRegisterWrite(3))?;
        }
        d.close()?;
        Ok(format!("{st:?}, monitor free ({drv_kind:?})"))
    })();
    rep.result("CLEANUP", after, |s| s.clone());
    // Last: where the hypervisor delivers no software-breakpoint event, the domU takes
    // the #BP itself and dies.
    if !want_pv {
        let core = open()
            .and_then(|x| XenDriver::new(x, domid))
            .and_then(VmiCore::new);
        match (&os, core) {
            (Some(os), Ok(core)) => process_events(rep, &core, os, 12),
            (None, _) => rep.line("PROCESS_EVENTS", Some(false), "no Linux OS layer"),
            (_, Err(e)) => rep.line("PROCESS_EVENTS", Some(false), e),
        }
    }
}

fn perf(rep: &mut Report, domid: u32, tot_pages: u64) {
    let frames = tot_pages.clamp(1, 0xffff);
    let mut rng = SmallRng::seed_from_u64(17);
    let set: Vec<u64> = (0..256).map(|_| rng.gen_range(0..frames)).collect();
    let order: Vec<u64> = (0..4000)
        .map(|_| set[rng.gen_range(0..set.len())])
        .collect();
    for (label, cache) in [("nocache", 0usize), ("cache", 4096)] {
        let r = (|| -> Result<(f64, usize), VmiError> {
            let core = VmiCore::with_config(
                XenDriver::new(open()?, domid)?,
                VmiCoreConfig {
                    page_cache: Some(cache),
                    ..VmiCoreConfig::default()
                },
            )?;
            let mut buf = vec![0u8; 4096];
            let mut failed = 0;
            let t = Instant::now();
            for g in &order {
                if core.read_physical(vmi_core::Pa(g << 12), &mut buf).is_err() {
                    failed += 1;
                }
            }
            Ok((order.len() as f64 / t.elapsed().as_secs_f64(), failed))
        })();
        rep.result(
            &format!("PERF_READS_{}", label.to_uppercase()),
            r,
            |(rate, failed)| {
                format!("{rate:.0} random 4KiB reads/s over 256 frames ({failed} unreadable)")
            },
        );
    }
}

/// Whole 256-frame chunks at random places in the first `frames` frames, each with one
/// batched foreign mapping (`XenDriver::read_frames`).
fn perf_batched(rep: &mut Report, domid: u32, frames: u64) {
    let mut rng = SmallRng::seed_from_u64(23);
    let r = (|| -> Result<(f64, usize), VmiError> {
        let d = XenDriver::new(open()?, domid)?;
        let mut buf = vec![0u8; CHUNK_FRAMES as usize * 4096];
        let mut pages = 0usize;
        let mut unreadable = 0usize;
        let t = Instant::now();
        for _ in 0..32 {
            let base = rng.gen_range(0..(frames / CHUNK_FRAMES).max(1)) * CHUNK_FRAMES;
            let ok = d.read_frames(Gfn(base), &mut buf)?;
            pages += ok.len();
            unreadable += ok.iter().filter(|o| !**o).count();
        }
        Ok((pages as f64 / t.elapsed().as_secs_f64(), unreadable))
    })();
    rep.result("PERF_READS_BATCHED", r, |(rate, bad)| {
        format!(
            "{rate:.0} 4KiB pages/s in 32 random chunks of {CHUNK_FRAMES} frames, one mapping each ({bad} unreadable)"
        )
    });
}

fn probes<X: vmi_driver_xen::XenInterface>(rep: &mut Report, core: &VmiCore<XenDriver<X>>) {
    let d = core.driver();
    for (name, r) in [
        (
            "PROBE_MEM_ACCESS",
            d.set_mem_access(ViewId(0), Gfn(0x100), XenMemAccess::RX),
        ),
        (
            "PROBE_ALTP2M",
            d.altp2m_create_view(XenMemAccess::RWX).map(|_| ()),
        ),
        ("PROBE_SINGLESTEP", d.monitor(MonitorOp::Singlestep, true)),
    ] {
        match r {
            Err(e @ VmiError::NotSupported { .. }) => {
                rep.line(name, Some(true), format!("refused: {e}"))
            }
            Ok(()) => rep.line(name, None, "supported by this hypervisor"),
            Err(e) => rep.line(name, Some(false), format!("unexpected error: {e}")),
        }
    }
}

fn cr3_events<X: vmi_driver_xen::XenInterface>(
    rep: &mut Report,
    core: &VmiCore<XenDriver<X>>,
    want: usize,
) {
    let d = core.driver();
    if let Err(e) = d.monitor_enable(EventMonitor::ControlRegisterWrite(3)) {
        rep.line("CR3_EVENTS", Some(false), format!("enable: {e}"));
        return;
    }
    let mut n = 0usize;
    let mut last = (0u64, 0u64);
    let t = Instant::now();
    while n < want && t.elapsed() < Duration::from_secs(90) {
        let r = d.wait_for_events(Duration::from_secs(1), &mut |e| {
            if let vmi_arch_amd64::EventReason::ControlRegister { index: 3, old, new } = e.reason {
                last = (old, new);
            }
            VmiEventResponse::default()
        });
        match r {
            Ok(k) => n += k,
            Err(e) => {
                rep.line("CR3_EVENTS", Some(false), format!("after {n}: {e}"));
                return;
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let stats = d.event_stats();
    let _ = d.monitor_disable(EventMonitor::ControlRegisterWrite(3));
    rep.line(
        "CR3_EVENTS",
        Some(n >= want),
        format!(
            "{n} events in {secs:.2} s = {:.0}/s, last cr3 {:#x} -> {:#x}, stats {stats:?}",
            n as f64 / secs,
            last.0,
            last.1
        ),
    );
}

/// Whether the PV guest's page-table root frame maps; if not, what Xen says, single and
/// batched, for it and its neighbours (the errno behind a "not RAM").
fn pv_diag<X: XenInterface>(rep: &mut Report, d: &XenDriver<X>, regs: &Registers) {
    let mfn = regs.cr3.0 >> 12;
    let mut page = vec![0u8; 4096];
    let single = match d.interface().read_frame(d.domid(), mfn, 0, &mut page) {
        Ok(()) => return rep.line("PV_ROOT_MAP", None, format!("cr3 mfn {mfn:#x} maps")),
        Err(e) => e.to_string(),
    };
    let batched = match d.read_frames(Gfn(mfn), &mut page) {
        Ok(ok) => format!("{ok:?}"),
        Err(e) => e.to_string(),
    };
    // the frames around it: which of them Xen lets dom0 map
    let mut errs = std::collections::BTreeMap::<String, usize>::new();
    for f in mfn.saturating_sub(16)..mfn.saturating_add(17) {
        let e = match d.interface().read_frame(d.domid(), f, 0, &mut page) {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("errno {}", e.errno),
        };
        *errs.entry(e).or_default() += 1;
    }
    rep.line(
        "PV_ROOT_MAP",
        None,
        format!("cr3 mfn {mfn:#x}: single {single}; batched {batched}; mfn-16..=mfn+16: {errs:?}"),
    );
}

/// Frames mapped per batched foreign mapping by [`Batched`].
const CHUNK_FRAMES: u64 = 256;
/// Chunks [`Batched`] keeps (16 MiB).
const CHUNKS_KEPT: usize = 16;

/// First frame, bytes, and which frames could be read.
type Chunk = (u64, Vec<u8>, Vec<bool>);

/// A paused guest read through batched foreign mappings: a missing page maps the
/// [`CHUNK_FRAMES`]-aligned chunk around it in one call (one mapping per frame costs
/// milliseconds under nested TCG; a scan of the guest's RAM for VMCOREINFO would take
/// minutes). Only valid while the guest stays paused. Physical ranges: the first
/// `ram_frames` frames (a PVH guest's RAM below the MMIO hole; the driver itself reports
/// everything up to the highest GFN, which includes the special pages near 4 GiB).
struct Batched<X: XenInterface> {
    drv: XenDriver<X>,
    ram_frames: u64,
    chunks: Mutex<VecDeque<Chunk>>,
    maps: AtomicUsize,
}

impl<X: XenInterface> VmiDriver for Batched<X> {
    type Architecture = Amd64;
    fn info(&self) -> Result<VmiInfo, VmiError> {
        self.drv.info()
    }
}

impl<X: XenInterface> VmiRead for Batched<X> {
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        if offset.checked_add(buf.len()).is_none_or(|e| e > 4096) {
            return Err(VmiError::InvalidArgument(
                "read crosses the page end".into(),
            ));
        }
        let base = gfn.0 & !(CHUNK_FRAMES - 1);
        let i = (gfn.0 - base) as usize;
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if !chunks.iter().any(|c| c.0 == base) {
            let mut data = vec![0u8; CHUNK_FRAMES as usize * 4096];
            let ok = self.drv.read_frames(Gfn(base), &mut data)?;
            self.maps.fetch_add(1, Ordering::Relaxed);
            if chunks.len() >= CHUNKS_KEPT {
                chunks.pop_front();
            }
            chunks.push_back((base, data, ok));
        }
        let c = chunks
            .iter()
            .find(|c| c.0 == base)
            .ok_or_else(|| VmiError::driver("xen", "chunk vanished"))?;
        if !c.2.get(i).copied().unwrap_or(false) {
            return Err(VmiError::PageUnavailable {
                gfn,
                reason: PageAbsence::NotRam,
            });
        }
        let from = i * 4096 + offset;
        buf.copy_from_slice(&c.1[from..from + buf.len()]);
        Ok(())
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        Ok(vec![Pa(0)..Pa(self.ram_frames << 12)])
    }
}

impl<X: XenInterface> VmiQueryRegisters for Batched<X> {
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.drv.registers(vcpu)
    }
}

/// Zero-file Linux OS layer over the paused PVH guest: finds VMCOREINFO by scanning its
/// RAM, reads kallsyms and BTF from memory, lists the processes. One `XEN_TASK` line per
/// process, compared by the xtask with what the guest printed itself.
fn linux_processes(rep: &mut Report, domid: u32, tot_pages: u64) -> Option<LinuxOs> {
    let r = (|| -> Result<LinuxOs, VmiError> {
        let drv = XenDriver::new(open()?, domid)?;
        drv.pause()?;
        let max = drv.info()?.max_gfn.0;
        // RAM is below the MMIO hole for this guest size; round up to a whole chunk.
        let ram_frames = tot_pages.min(max + 1).div_ceil(CHUNK_FRAMES) * CHUNK_FRAMES;
        let b = Batched {
            drv,
            ram_frames,
            chunks: Mutex::new(VecDeque::new()),
            maps: AtomicUsize::new(0),
        };
        let core = VmiCore::with_config(
            b,
            VmiCoreConfig {
                page_cache: Some(8192),
                ..VmiCoreConfig::default()
            },
        )?;
        let t = Instant::now();
        let os = LinuxOs::builder()
            .no_cache()
            .registers_from(&core)?
            .build(&core)?;
        let built = t.elapsed().as_secs_f64();
        let maps_build = core.driver().maps.load(Ordering::Relaxed);
        rep.line(
            "LINUX_OS",
            Some(true),
            format!(
                "{} kaslr={:#x} from memory (VMCOREINFO scan, kallsyms, BTF) in {built:.1} s, {maps_build} batched maps of {CHUNK_FRAMES} frames",
                os.kernel().release.as_deref().unwrap_or("?"),
                os.kernel().kaslr_offset
            ),
        );
        let t = Instant::now();
        let list = os.process_list(&core)?;
        let first = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let again = os.process_list(&core)?;
        let warm = t.elapsed().as_secs_f64() * 1e3;
        for p in &list.tasks {
            println!("XEN_TASK pvh {} {} {}", p.pid, p.ppid, p.comm);
        }
        rep.line(
            "PROCESS_LIST",
            Some(!list.tasks.is_empty() && list.tasks.len() == again.tasks.len()),
            format!(
                "{} processes ({} skipped) in {first:.0} ms, again from the page cache in {warm:.0} ms",
                list.tasks.len(),
                list.skipped.len()
            ),
        );
        core.driver().drv.resume()?;
        Ok(os)
    })();
    match r {
        Ok(os) => Some(os),
        Err(e) => {
            rep.line("LINUX_OS", Some(false), e);
            None
        }
    }
}

/// The argument vectors the domU's busy loop execs (`ls /`, `cat /proc/uptime`,
/// `sleep 0.05`).
const LOOP_ARGV: [&[&str]; 3] = [&["ls", "/"], &["cat", "/proc/uptime"], &["sleep", "0.05"]];

/// The process tracker of `vmi-utils` on real Xen breakpoints: `int3`s planted in the
/// kernel's fork, exec and exit functions through the breakpoint manager (physical
/// addresses), hidden from reads while planted, stepped over at each hit, gone after.
fn process_events(rep: &mut Report, core: &VmiCore<XenDriver<LibXen>>, os: &LinuxOs, want: usize) {
    use std::sync::atomic::AtomicBool;
    use vmi_utils::tracker::{ProcessEventKind, ProcessTracker};
    let r = (|| -> Result<Result<String, String>, VmiError> {
        let domid = core.driver().domid();
        let va = os
            .symbol_address("finalize_exec")
            .ok_or(VmiError::NotFound {
                kind: "kernel function",
                name: "finalize_exec".into(),
            })?;
        let pa = core.translate_address(vmi_core::AddressContext {
            va,
            root: os.kernel().kernel_root,
        })?;
        let raw = |core: &VmiCore<XenDriver<LibXen>>| -> Result<u8, VmiError> {
            let mut b = [0u8];
            core.driver()
                .interface()
                .read_frame(domid, pa.0 >> 12, (pa.0 & 0xfff) as usize, &mut b)
                .map_err(|e| VmiError::driver("xen", e.to_string()))?;
            Ok(b[0])
        };
        let before = raw(core)?;
        // One bare driver breakpoint first: what Xen reports for it.
        let bp = vmi_core::EventMonitor::Breakpoint {
            address: vmi_core::BreakpointAddress::Physical(pa),
            kind: vmi_core::BreakpointKind::Software,
        };
        core.monitor_enable(bp)?;
        let mut first = None;
        let t0 = Instant::now();
        while first.is_none() && t0.elapsed() < Duration::from_secs(30) {
            core.driver()
                .wait_for_events(Duration::from_millis(500), &mut |e| {
                    first.get_or_insert_with(|| {
                        format!("{:?} rip {:#x}", e.reason, e.registers.rip)
                    });
                    VmiEventResponse::default()
                })?;
            // A domain the int3 reached (and killed) sends no event: stop waiting.
            if first.is_none()
                && !matches!(
                    core.driver().state(),
                    Ok(VmState::Running | VmState::Paused)
                )
            {
                break;
            }
        }
        core.monitor_disable(bp)?;
        if first.is_none() {
            return Ok(Err(format!(
                "no software-breakpoint event within {:.0} s of planting an int3 on the hot finalize_exec, domain {:?} after: this nested hypervisor does not deliver them (under QEMU's TCG the domU's int3 reaches the domU, which dies of it)",
                t0.elapsed().as_secs_f64(),
                core.driver().state()
            )));
        }
        let tracker = ProcessTracker::new(core, os)?;
        let (planted, seen) = (raw(core)?, core.read_u8(pa)?);
        if planted != 0xcc || seen != before {
            return Err(VmiError::driver(
                "xen",
                format!("at finalize_exec: frame {planted:#x}, read {seen:#x}, before {before:#x}"),
            ));
        }
        let stop = AtomicBool::new(false);
        let (mut execs, mut forks, mut exits, mut strange) = (0usize, 0usize, 0usize, Vec::new());
        let t = Instant::now();
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(90) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                stop.store(true, Ordering::SeqCst);
            });
            let r = tracker.run_until(&stop, |e| match e.kind {
                ProcessEventKind::Exec => {
                    let argv = e.argv.clone().unwrap_or_default();
                    if LOOP_ARGV.iter().any(|a| a.iter().eq(argv.iter())) {
                        execs += 1;
                    } else {
                        strange.push(format!("{argv:?} {:?}", e.problems));
                    }
                    if execs >= want {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                ProcessEventKind::Fork => forks += 1,
                ProcessEventKind::Exit => exits += 1,
            });
            stop.store(true, Ordering::SeqCst);
            r
        });
        let secs = t.elapsed().as_secs_f64();
        let stats = tracker.stats();
        let driver_stats = core.driver().event_stats();
        drop(tracker);
        if let Err(e) = result {
            let state = core.driver().state();
            return Err(VmiError::driver(
                "xen",
                format!("{e}; manager {stats:?}; driver {driver_stats:?}; domain {state:?}"),
            ));
        }
        let after = raw(core)?;
        if execs < want || !strange.is_empty() || forks == 0 || exits == 0 || after != before {
            let state = core.driver().state();
            return Err(VmiError::driver(
                "xen",
                format!(
                    "{execs} loop execs of {want}, {forks} forks, {exits} exits in {secs:.1} s; unexpected execs {strange:?}; finalize_exec byte {after:#x} after, {before:#x} before; manager {stats:?}; driver {driver_stats:?}; domain {state:?}"
                ),
            ));
        }
        Ok(Ok(format!(
            "{execs} execs of the loop (exact argv), {forks} forks, {exits} exits in {secs:.1} s = {:.0} events/s; {} hits, {} stepped over a no-op, {} reinjected; int3 hidden from reads while planted, original byte back after",
            (execs + forks + exits) as f64 / secs,
            stats.hits,
            driver_stats.stepped_over_nops,
            driver_stats.reinjected
        )))
    })();
    match r {
        Ok(Ok(done)) => rep.line("PROCESS_EVENTS", Some(true), done),
        Ok(Err(refused)) => rep.line("PROCESS_EVENTS", None, refused),
        Err(e) => {
            rep.result::<()>("PROCESS_EVENTS", Err(e), |_| String::new());
        }
    }
}
