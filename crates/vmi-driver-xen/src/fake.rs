//! [`FakeXen`]: an in-memory Xen for tests and doc examples.
//!
//! Domains with sparse frame memory, PV contexts and `hvm_hw_cpu` records (real
//! layouts from [`crate::abi`]), a pause count, the monitor switches, page permissions
//! and altp2m views, and a byte-exact 4 KiB vm_event ring page that the test drives
//! from the "hypervisor" side ([`FakeXen::push_request`], [`FakeXen::take_responses`]).
//! Every call can be made to fail ([`FakeXen::fail`], [`FakeXen::fail_once`]), and
//! [`FakeXen::amd_tcg`] refuses what Xen refuses on AMD or under QEMU TCG.
//!
//! ```
//! use vmi_core::{VmiCore, VcpuId, Registers as _};
//! use vmi_driver_xen::{XenDriver, fake::FakeXen};
//! let xen = FakeXen::new();
//! let dom = xen.add_hvm_domain(256);
//! xen.write_memory(dom, 0x1000, b"hello");
//! let core = VmiCore::new(XenDriver::new(xen.clone(), dom)?)?;
//! let mut buf = [0u8; 5];
//! core.read_physical(vmi_core::Pa(0x1000), &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), vmi_core::VmiError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_END, HvmHwCpu, HvmSaveDescriptor, PvContext, VmEvent,
    XEN_PAGE_SIZE, XenMemAccess, dominf, sring,
};
use crate::interface::{
    DomId, DomainInfo, EEXIST, EINVAL, EOPNOTSUPP, ESRCH, MonitorOp, XenCallError, XenInterface,
    XenResult,
};
use crate::ring::{RingMemory, VM_EVENT_RING_SLOTS};

/// The fake's shared ring page.
#[derive(Clone)]
struct FakePage(Arc<Mutex<Box<[u8; XEN_PAGE_SIZE]>>>);

impl FakePage {
    fn new() -> Self {
        FakePage(Arc::new(Mutex::new(Box::new([0u8; XEN_PAGE_SIZE]))))
    }
    fn lock(&self) -> MutexGuard<'_, Box<[u8; XEN_PAGE_SIZE]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn u32_at(&self, off: usize) -> u32 {
        let p = self.lock();
        u32::from_ne_bytes([p[off], p[off + 1], p[off + 2], p[off + 3]])
    }
    fn set_u32(&self, off: usize, v: u32) {
        self.lock()[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
}

impl RingMemory for FakePage {
    fn load_u32(&self, offset: usize) -> u32 {
        self.u32_at(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) {
        self.set_u32(offset, value);
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        let p = self.lock();
        if let Some(src) = p.get(offset..offset + buf.len()) {
            buf.copy_from_slice(src);
        }
    }
    fn write(&self, offset: usize, data: &[u8]) {
        let mut p = self.lock();
        if let Some(dst) = p.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(data);
        }
    }
}

/// One fake domain.
#[derive(Default)]
struct Domain {
    hvm: bool,
    max_gpfn: u64,
    pages: u64,
    memory: HashMap<u64, Box<[u8; XEN_PAGE_SIZE]>>,
    pv: Vec<PvContext>,
    hvm_cpus: Vec<HvmHwCpu>,
    pause_count: u32,
    ring: Option<FakePage>,
    remote_port: u32,
    rsp_cons: u32,
    monitors: HashSet<MonitorOp>,
    access: BTreeMap<(u16, u64), XenMemAccess>,
    altp2m: bool,
    views: BTreeSet<u16>,
    current_view: u16,
    /// vCPUs a `#BP` was injected into, in order.
    injected: Vec<u32>,
}

#[derive(Default)]
struct State {
    domains: BTreeMap<DomId, Domain>,
    next_domid: DomId,
    fail: HashMap<&'static str, i32>,
    fail_once: HashMap<&'static str, i32>,
    calls: Vec<&'static str>,
    bound: BTreeMap<u32, DomId>,
    next_port: u32,
    pending: Vec<u32>,
    notifications: u64,
}

/// An in-memory Xen: cheap to clone, every clone sees the same state.
#[derive(Clone, Default)]
pub struct FakeXen {
    state: Arc<Mutex<State>>,
    wake: Arc<Condvar>,
}

impl std::fmt::Debug for FakeXen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeXen")
    }
}

/// Names of the library calls, as [`FakeXen::fail`] takes them.
pub mod calls {
    /// Every call the fake implements.
    pub const ALL: &[&str] = &[
        "xc_domain_getinfolist",
        "xc_domain_maximum_gpfn",
        "xc_domain_pause",
        "xc_domain_unpause",
        "xenforeignmemory_map",
        "xc_vcpu_getcontext",
        "xc_vcpu_setcontext",
        "xc_domain_hvm_getcontext_partial",
        "xc_domain_hvm_getcontext",
        "xc_domain_hvm_setcontext",
        "xc_monitor_enable",
        "xc_monitor_disable",
        "xc_monitor_control",
        "xc_hvm_inject_trap",
        "xenevtchn_bind_interdomain",
        "xenevtchn_unbind",
        "xenevtchn_notify",
        "xenevtchn_pending",
        "xc_set_mem_access",
        "xc_altp2m_set_domain_state",
        "xc_altp2m_create_view",
        "xc_altp2m_destroy_view",
        "xc_altp2m_switch_to_view",
    ];
}

impl FakeXen {
    /// An empty fake (domain 0 only is implied: no domains are listed).
    pub fn new() -> Self {
        let f = Self::default();
        f.st().next_domid = 1;
        f.st().next_port = 10;
        f
    }

    /// A fake that refuses what Xen refuses on AMD SVM / QEMU TCG: `xc_set_mem_access`
    /// with `EINVAL`, altp2m and single-step monitoring with `EOPNOTSUPP`.
    pub fn amd_tcg() -> Self {
        let f = Self::new();
        f.fail("xc_set_mem_access", EINVAL);
        f.fail("xc_altp2m_set_domain_state", EOPNOTSUPP);
        f.fail("xc_monitor_singlestep", EOPNOTSUPP);
        f
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every later call named `call` fail with `errno`.
    pub fn fail(&self, call: &'static str, errno: i32) {
        self.st().fail.insert(call, errno);
    }

    /// Makes the next call named `call` fail with `errno`.
    pub fn fail_once(&self, call: &'static str, errno: i32) {
        self.st().fail_once.insert(call, errno);
    }

    /// Stops failing `call`.
    pub fn heal(&self, call: &'static str) {
        let mut s = self.st();
        s.fail.remove(call);
        s.fail_once.remove(call);
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.st().calls.clone()
    }

    fn enter(&self, call: &'static str) -> XenResult<MutexGuard<'_, State>> {
        let mut s = self.st();
        s.calls.push(call);
        if let Some(e) = s.fail_once.remove(call) {
            return Err(XenCallError::new(call, e));
        }
        if let Some(&e) = s.fail.get(call) {
            return Err(XenCallError::new(call, e));
        }
        Ok(s)
    }

    fn add_domain(&self, hvm: bool, pages: u64, vcpus: usize) -> DomId {
        let mut s = self.st();
        let id = s.next_domid;
        s.next_domid += 1;
        s.domains.insert(
            id,
            Domain {
                hvm,
                max_gpfn: pages.saturating_sub(1),
                pages,
                pv: if hvm {
                    vec![]
                } else {
                    vec![PvContext::default(); vcpus]
                },
                hvm_cpus: if hvm {
                    vec![HvmHwCpu::default(); vcpus]
                } else {
                    vec![]
                },
                ..Domain::default()
            },
        );
        id
    }

    /// Adds an HVM/PVH domain with `pages` frames and one vCPU.
    pub fn add_hvm_domain(&self, pages: u64) -> DomId {
        self.add_domain(true, pages, 1)
    }

    /// Adds a PV domain with one vCPU (its frames are machine frames).
    pub fn add_pv_domain(&self, pages: u64) -> DomId {
        self.add_domain(false, pages, 1)
    }

    /// Adds an HVM domain with `vcpus` vCPUs.
    pub fn add_hvm_domain_with_vcpus(&self, pages: u64, vcpus: usize) -> DomId {
        self.add_domain(true, pages, vcpus)
    }

    fn with_dom<T>(&self, d: DomId, f: impl FnOnce(&mut Domain) -> T) -> Option<T> {
        self.st().domains.get_mut(&d).map(f)
    }

    /// Writes guest memory at a frame address (`frame * 4096 + offset`), page by page.
    pub fn write_memory(&self, d: DomId, addr: u64, data: &[u8]) {
        self.with_dom(d, |dom| {
            let mut done = 0;
            while done < data.len() {
                let a = addr + done as u64;
                let off = (a % XEN_PAGE_SIZE as u64) as usize;
                let n = (XEN_PAGE_SIZE - off).min(data.len() - done);
                let page = dom
                    .memory
                    .entry(a / XEN_PAGE_SIZE as u64)
                    .or_insert_with(|| Box::new([0u8; XEN_PAGE_SIZE]));
                page[off..off + n].copy_from_slice(&data[done..done + n]);
                done += n;
            }
        });
    }

    /// Reads guest memory (zeros where nothing was written).
    pub fn read_memory(&self, d: DomId, addr: u64, len: usize) -> Vec<u8> {
        self.with_dom(d, |dom| {
            let mut out = vec![0u8; len];
            let mut done = 0;
            while done < len {
                let a = addr + done as u64;
                let off = (a % XEN_PAGE_SIZE as u64) as usize;
                let n = (XEN_PAGE_SIZE - off).min(len - done);
                if let Some(p) = dom.memory.get(&(a / XEN_PAGE_SIZE as u64)) {
                    out[done..done + n].copy_from_slice(&p[off..off + n]);
                }
                done += n;
            }
            out
        })
        .unwrap_or_default()
    }

    /// Sets vCPU `v`'s `hvm_hw_cpu`.
    pub fn set_hvm_cpu(&self, d: DomId, v: usize, cpu: HvmHwCpu) {
        self.with_dom(d, |dom| {
            if let Some(c) = dom.hvm_cpus.get_mut(v) {
                *c = cpu;
            }
        });
    }

    /// vCPU `v`'s `hvm_hw_cpu`.
    pub fn hvm_cpu(&self, d: DomId, v: usize) -> Option<HvmHwCpu> {
        self.with_dom(d, |dom| dom.hvm_cpus.get(v).copied())
            .flatten()
    }

    /// Sets vCPU `v`'s PV context.
    pub fn set_pv_context(&self, d: DomId, v: usize, ctx: PvContext) {
        self.with_dom(d, |dom| {
            if let Some(c) = dom.pv.get_mut(v) {
                *c = ctx;
            }
        });
    }

    /// vCPU `v`'s PV context.
    pub fn pv_context(&self, d: DomId, v: usize) -> Option<PvContext> {
        self.with_dom(d, |dom| dom.pv.get(v).copied()).flatten()
    }

    /// The domain's pause count (ours plus anyone else's).
    pub fn pause_count(&self, d: DomId) -> u32 {
        self.with_dom(d, |dom| dom.pause_count).unwrap_or(0)
    }

    /// The vCPUs a `#BP` was injected into (`xc_hvm_inject_trap`), in order.
    pub fn injected_breakpoints(&self, d: DomId) -> Vec<u32> {
        self.st()
            .domains
            .get(&d)
            .map(|d| d.injected.clone())
            .unwrap_or_default()
    }

    /// Whether the monitor ring is enabled (mapped).
    pub fn ring_enabled(&self, d: DomId) -> bool {
        self.with_dom(d, |dom| dom.ring.is_some()).unwrap_or(false)
    }

    /// The monitors switched on.
    pub fn monitors(&self, d: DomId) -> HashSet<MonitorOp> {
        self.with_dom(d, |dom| dom.monitors.clone())
            .unwrap_or_default()
    }

    /// Frames whose access differs from the default, per view.
    pub fn restricted_frames(&self, d: DomId) -> BTreeMap<(u16, u64), XenMemAccess> {
        self.with_dom(d, |dom| dom.access.clone())
            .unwrap_or_default()
    }

    /// altp2m on, views alive, current view.
    pub fn altp2m_state(&self, d: DomId) -> (bool, BTreeSet<u16>, u16) {
        self.with_dom(d, |dom| (dom.altp2m, dom.views.clone(), dom.current_view))
            .unwrap_or_default()
    }

    /// Event-channel ports still bound.
    pub fn bound_ports(&self) -> usize {
        self.st().bound.len()
    }

    /// Notifications the driver sent us.
    pub fn notifications(&self) -> u64 {
        self.st().notifications
    }

    /// A copy of the ring page, byte for byte.
    pub fn ring_bytes(&self, d: DomId) -> Option<[u8; XEN_PAGE_SIZE]> {
        let page = self.with_dom(d, |dom| dom.ring.clone()).flatten()?;
        let b = page.lock();
        Some(**b)
    }

    /// Puts a raw 400-byte request on the ring as Xen does (at `req_prod`, then bumps
    /// it) and signals the event channel. Fails when the ring is full or not enabled.
    pub fn push_raw_request(&self, d: DomId, bytes: &[u8; 400]) -> Result<(), &'static str> {
        let (page, port) = self
            .with_dom(d, |dom| dom.ring.clone().map(|p| (p, dom.remote_port)))
            .flatten()
            .ok_or("ring not enabled")?;
        let req_prod = page.u32_at(sring::REQ_PROD);
        let rsp_prod = page.u32_at(sring::RSP_PROD);
        if req_prod.wrapping_sub(rsp_prod) >= VM_EVENT_RING_SLOTS {
            return Err("ring full");
        }
        let slot = (req_prod & (VM_EVENT_RING_SLOTS - 1)) as usize;
        page.write(sring::HEADER + slot * 400, bytes);
        page.set_u32(sring::REQ_PROD, req_prod.wrapping_add(1));
        let mut s = self.st();
        if let Some((&local, _)) = s.bound.iter().find(|(_, dom)| **dom == d) {
            let _ = port;
            s.pending.push(local);
        }
        drop(s);
        self.wake.notify_all();
        Ok(())
    }

    /// Puts a request on the ring.
    pub fn push_request(&self, d: DomId, req: &VmEvent) -> Result<(), &'static str> {
        let mut b = [0u8; 400];
        b.copy_from_slice(req.as_bytes());
        self.push_raw_request(d, &b)
    }

    /// Takes the responses the driver pushed since the last call.
    pub fn take_responses(&self, d: DomId) -> Vec<VmEvent> {
        let Some((page, mut cons)) = self
            .with_dom(d, |dom| dom.ring.clone().map(|p| (p, dom.rsp_cons)))
            .flatten()
        else {
            return vec![];
        };
        let prod = page.u32_at(sring::RSP_PROD);
        let mut out = Vec::new();
        while cons != prod && out.len() < VM_EVENT_RING_SLOTS as usize {
            let slot = (cons & (VM_EVENT_RING_SLOTS - 1)) as usize;
            let mut b = [0u8; 400];
            page.read(sring::HEADER + slot * 400, &mut b);
            out.push(VmEvent::read_from_bytes(&b).unwrap_or_default());
            cons = cons.wrapping_add(1);
        }
        self.with_dom(d, |dom| dom.rsp_cons = cons);
        out
    }

    fn dom_err(call: &'static str) -> XenCallError {
        XenCallError::new(call, ESRCH)
    }
}

fn info_of(id: DomId, d: &Domain) -> DomainInfo {
    let mut flags = if d.hvm {
        dominf::HVM_GUEST | dominf::HAP
    } else {
        0
    };
    flags |= if d.pause_count > 0 {
        dominf::PAUSED
    } else {
        dominf::RUNNING
    };
    let vcpus = if d.hvm { d.hvm_cpus.len() } else { d.pv.len() } as u32;
    DomainInfo {
        domid: id,
        flags,
        tot_pages: d.pages,
        max_pages: d.pages,
        max_vcpu_id: vcpus.checked_sub(1),
        nr_online_vcpus: vcpus,
    }
}

impl XenInterface for FakeXen {
    fn list_domains(&self, max: u32) -> XenResult<Vec<DomainInfo>> {
        let s = self.enter("xc_domain_getinfolist")?;
        Ok(s.domains
            .iter()
            .take(max as usize)
            .map(|(id, d)| info_of(*id, d))
            .collect())
    }

    fn domain_info(&self, domid: DomId) -> XenResult<DomainInfo> {
        const C: &str = "xc_domain_getinfolist";
        let s = self.enter(C)?;
        s.domains
            .get(&domid)
            .map(|d| info_of(domid, d))
            .ok_or(Self::dom_err(C))
    }

    fn maximum_gpfn(&self, domid: DomId) -> XenResult<u64> {
        const C: &str = "xc_domain_maximum_gpfn";
        let s = self.enter(C)?;
        s.domains
            .get(&domid)
            .map(|d| d.max_gpfn)
            .ok_or(Self::dom_err(C))
    }

    fn pause(&self, domid: DomId) -> XenResult<()> {
        const C: &str = "xc_domain_pause";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        d.pause_count += 1;
        Ok(())
    }

    fn unpause(&self, domid: DomId) -> XenResult<()> {
        const C: &str = "xc_domain_unpause";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        d.pause_count = d.pause_count.saturating_sub(1);
        Ok(())
    }

    fn read_frame(&self, domid: DomId, frame: u64, offset: usize, buf: &mut [u8]) -> XenResult<()> {
        const C: &str = "xenforeignmemory_map";
        let s = self.enter(C)?;
        let d = s.domains.get(&domid).ok_or(Self::dom_err(C))?;
        if frame >= d.pages {
            return Err(XenCallError::new(C, EINVAL));
        }
        match d.memory.get(&frame) {
            Some(p) => buf.copy_from_slice(
                p.get(offset..offset + buf.len())
                    .ok_or(XenCallError::new(C, EINVAL))?,
            ),
            None => buf.fill(0),
        }
        Ok(())
    }

    fn write_frame(&self, domid: DomId, frame: u64, offset: usize, data: &[u8]) -> XenResult<()> {
        const C: &str = "xenforeignmemory_map";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if frame >= d.pages {
            return Err(XenCallError::new(C, EINVAL));
        }
        let p = d
            .memory
            .entry(frame)
            .or_insert_with(|| Box::new([0u8; XEN_PAGE_SIZE]));
        p.get_mut(offset..offset + data.len())
            .ok_or(XenCallError::new(C, EINVAL))?
            .copy_from_slice(data);
        Ok(())
    }

    fn pv_get_context(&self, domid: DomId, vcpu: u32) -> XenResult<Vec<u8>> {
        const C: &str = "xc_vcpu_getcontext";
        let s = self.enter(C)?;
        let d = s.domains.get(&domid).ok_or(Self::dom_err(C))?;
        let c =
            d.pv.get(vcpu as usize)
                .ok_or(XenCallError::new(C, EINVAL))?;
        Ok(c.as_bytes().to_vec())
    }

    fn pv_set_context(&self, domid: DomId, vcpu: u32, ctx: &[u8]) -> XenResult<()> {
        const C: &str = "xc_vcpu_setcontext";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        let c =
            d.pv.get_mut(vcpu as usize)
                .ok_or(XenCallError::new(C, EINVAL))?;
        *c = PvContext::read_from_bytes(ctx).map_err(|_| XenCallError::new(C, EINVAL))?;
        Ok(())
    }

    fn hvm_get_cpu(&self, domid: DomId, vcpu: u32) -> XenResult<Vec<u8>> {
        const C: &str = "xc_domain_hvm_getcontext_partial";
        let s = self.enter(C)?;
        let d = s.domains.get(&domid).ok_or(Self::dom_err(C))?;
        let c = d
            .hvm_cpus
            .get(vcpu as usize)
            .ok_or(XenCallError::new(C, ESRCH))?;
        Ok(c.as_bytes().to_vec())
    }

    fn hvm_get_context(&self, domid: DomId) -> XenResult<Vec<u8>> {
        const C: &str = "xc_domain_hvm_getcontext";
        let s = self.enter(C)?;
        let d = s.domains.get(&domid).ok_or(Self::dom_err(C))?;
        if !d.hvm {
            return Err(XenCallError::new(C, EINVAL));
        }
        // a header-like record first, then the CPUs, then END
        let mut blob = Vec::new();
        let push = |blob: &mut Vec<u8>, typecode: u16, instance: u16, body: &[u8]| {
            let desc = HvmSaveDescriptor {
                typecode,
                instance,
                length: body.len() as u32,
            };
            blob.extend_from_slice(desc.as_bytes());
            blob.extend_from_slice(body);
        };
        push(&mut blob, 1, 0, &[0u8; 24]);
        for (i, c) in d.hvm_cpus.iter().enumerate() {
            push(&mut blob, HVM_SAVE_CODE_CPU, i as u16, c.as_bytes());
        }
        push(&mut blob, HVM_SAVE_CODE_END, 0, &[]);
        Ok(blob)
    }

    fn hvm_set_context(&self, domid: DomId, blob: &[u8]) -> XenResult<()> {
        const C: &str = "xc_domain_hvm_setcontext";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        for v in 0..d.hvm_cpus.len() {
            let r = crate::driver::find_hvm_cpu_record(blob, v as u32)
                .map_err(|_| XenCallError::new(C, EINVAL))?;
            d.hvm_cpus[v] =
                HvmHwCpu::read_from_bytes(&blob[r]).map_err(|_| XenCallError::new(C, EINVAL))?;
        }
        Ok(())
    }

    fn monitor_enable(&self, domid: DomId) -> XenResult<(Box<dyn RingMemory>, u32)> {
        const C: &str = "xc_monitor_enable";
        let mut s = self.enter(C)?;
        let port = s.next_port;
        s.next_port += 1;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if !d.hvm {
            return Err(XenCallError::new(C, EOPNOTSUPP));
        }
        if d.ring.is_some() {
            return Err(XenCallError::new(C, 16)); // EBUSY
        }
        let page = FakePage::new();
        // Xen hands over a page it cleared; the consumer initialises it.
        d.ring = Some(page.clone());
        d.remote_port = port;
        d.rsp_cons = 0;
        Ok((Box::new(page), port))
    }

    fn monitor_disable(&self, domid: DomId) -> XenResult<()> {
        const C: &str = "xc_monitor_disable";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        d.ring = None;
        d.monitors.clear();
        Ok(())
    }

    fn monitor_control(&self, domid: DomId, op: MonitorOp, enable: bool) -> XenResult<()> {
        let name = match op {
            MonitorOp::Singlestep => "xc_monitor_singlestep",
            _ => "xc_monitor_control",
        };
        let mut s = self.enter(name)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(name))?;
        if d.ring.is_none() && enable {
            return Err(XenCallError::new(name, EINVAL));
        }
        // As Xen: switching a monitor to the state it has is EEXIST.
        let changed = if enable {
            d.monitors.insert(op)
        } else {
            d.monitors.remove(&op)
        };
        if changed {
            Ok(())
        } else {
            Err(XenCallError::new(name, EEXIST))
        }
    }

    fn inject_breakpoint(&self, domid: DomId, vcpu: u32) -> XenResult<()> {
        const C: &str = "xc_hvm_inject_trap";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if !d.hvm || vcpu as usize >= d.hvm_cpus.len() {
            return Err(XenCallError::new(C, EINVAL));
        }
        d.injected.push(vcpu);
        Ok(())
    }

    fn evtchn_bind(&self, domid: DomId, remote_port: u32) -> XenResult<u32> {
        const C: &str = "xenevtchn_bind_interdomain";
        let mut s = self.enter(C)?;
        let ok = s
            .domains
            .get(&domid)
            .is_some_and(|d| d.ring.is_some() && d.remote_port == remote_port);
        if !ok {
            return Err(XenCallError::new(C, EINVAL));
        }
        let local = s.next_port;
        s.next_port += 1;
        s.bound.insert(local, domid);
        Ok(local)
    }

    fn evtchn_unbind(&self, local_port: u32) -> XenResult<()> {
        const C: &str = "xenevtchn_unbind";
        let mut s = self.enter(C)?;
        s.bound
            .remove(&local_port)
            .map(|_| ())
            .ok_or(XenCallError::new(C, EINVAL))
    }

    fn evtchn_notify(&self, local_port: u32) -> XenResult<()> {
        const C: &str = "xenevtchn_notify";
        let mut s = self.enter(C)?;
        if !s.bound.contains_key(&local_port) {
            return Err(XenCallError::new(C, EINVAL));
        }
        s.notifications += 1;
        Ok(())
    }

    fn evtchn_wait(&self, timeout: Duration) -> XenResult<Option<u32>> {
        const C: &str = "xenevtchn_pending";
        let s = self.enter(C)?;
        let (mut s, _) = self
            .wake
            .wait_timeout_while(s, timeout, |s| s.pending.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        Ok(if s.pending.is_empty() {
            None
        } else {
            Some(s.pending.remove(0))
        })
    }

    fn set_mem_access(
        &self,
        domid: DomId,
        view: u16,
        access: XenMemAccess,
        first_gfn: u64,
        nr: u32,
    ) -> XenResult<()> {
        const C: &str = "xc_set_mem_access";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if view != 0 && !d.views.contains(&view) {
            return Err(XenCallError::new(C, EINVAL));
        }
        for g in first_gfn..first_gfn.saturating_add(u64::from(nr)) {
            if access == XenMemAccess::RWX || access == XenMemAccess::Default {
                d.access.remove(&(view, g));
            } else {
                d.access.insert((view, g), access);
            }
        }
        Ok(())
    }

    fn altp2m_set_domain_state(&self, domid: DomId, enabled: bool) -> XenResult<()> {
        const C: &str = "xc_altp2m_set_domain_state";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        d.altp2m = enabled;
        Ok(())
    }

    fn altp2m_create_view(&self, domid: DomId, _default: XenMemAccess) -> XenResult<u16> {
        const C: &str = "xc_altp2m_create_view";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if !d.altp2m {
            return Err(XenCallError::new(C, EINVAL));
        }
        let v = (1..10u16)
            .find(|v| !d.views.contains(v))
            .ok_or(XenCallError::new(C, EINVAL))?;
        d.views.insert(v);
        Ok(v)
    }

    fn altp2m_destroy_view(&self, domid: DomId, view: u16) -> XenResult<()> {
        const C: &str = "xc_altp2m_destroy_view";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if d.current_view == view || !d.views.remove(&view) {
            return Err(XenCallError::new(C, EINVAL));
        }
        d.access.retain(|(v, _), _| *v != view);
        Ok(())
    }

    fn altp2m_switch_to_view(&self, domid: DomId, view: u16) -> XenResult<()> {
        const C: &str = "xc_altp2m_switch_to_view";
        let mut s = self.enter(C)?;
        let d = s.domains.get_mut(&domid).ok_or(Self::dom_err(C))?;
        if view != 0 && !d.views.contains(&view) {
            return Err(XenCallError::new(C, EINVAL));
        }
        d.current_view = view;
        Ok(())
    }
}
