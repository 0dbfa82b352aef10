//! The guard gives a borrowed thread back (an injection cut short by the death of the
//! process that ran it). Async-signal-safe like the rest of the guard: fixed buffers,
//! plain system calls, no panics.
//!
//! The driver journals, before the injector changes anything, where the thread stops
//! between borrowed steps (the instruction after the `syscall`, the scratch stack
//! pointer, the process's page-table root), the user registers to put back as
//! ready-made gdb register numbers and values, the original bytes of the scratch area,
//! and the gdbstub's vCPU thread ids. Once the process is gone the guard, on its own
//! gdbstub connection (the VM is stopped while a new client connects):
//! 1. removes every journaled breakpoint and sets its own where the thread stops;
//! 2. looks at each vCPU: the thread may be stopped there already (the dead process
//!    held the event), or still at its safe point, untouched;
//! 3. otherwise lets the VM run and looks at each stop, until the journaled wait ends:
//!    the thread (same instruction, stack pointer and root) gets its registers and
//!    memory back, which are then read back and compared; a process forked by a step
//!    (same stack pointer, another root) is sent to `exit(127)`; any other thread
//!    stopped there is stepped over;
//! 4. removes its breakpoint. The caller then detaches as usual.

use super::guard::{Bp, now_ms, z_body};
use super::wire::{Body, GdbReply, MEM_CHUNK, Wire, decode_hex, decode_le};
use super::{Giveback, RegSlot, STEP_MS};

/// What the guard holds of a borrowed thread.
pub(super) struct Borrowed {
    pub(super) plan: Giveback,
    /// 0: none, 1: being journaled, 2: armed (complete).
    state: u8,
    mem_have: usize,
    threads_len: usize,
}

/// Memory the guard keeps, allocated before the fork.
pub(super) struct Room<'a> {
    pub(super) memory: &'a mut [u8],
    pub(super) threads: &'a mut [u8],
}

impl Borrowed {
    pub(super) fn new() -> Borrowed {
        Borrowed {
            plan: Giveback::default(),
            state: 0,
            mem_have: 0,
            threads_len: 0,
        }
    }

    pub(super) fn armed(&self) -> bool {
        self.state == 2
    }

    /// A new journal ([`Giveback`]); nothing is armed until its memory has come.
    pub(super) fn begin(&mut self, plan: Option<Giveback>, room: &Room<'_>) {
        self.state = 0;
        self.mem_have = 0;
        self.threads_len = 0;
        if let Some(p) = plan
            && usize::try_from(p.mem_len).is_ok_and(|n| n <= room.memory.len())
        {
            self.plan = p;
            self.state = 1;
        }
    }

    /// Thread ids, each followed by a comma.
    pub(super) fn threads(&mut self, ids: &[u8], room: &mut Room<'_>) {
        if self.state != 1 {
            return;
        }
        let end = self.threads_len.saturating_add(ids.len());
        match room.threads.get_mut(self.threads_len..end) {
            Some(dst) => {
                dst.copy_from_slice(ids);
                self.threads_len = end;
            }
            None => self.state = 0,
        }
    }

    /// The next bytes of the original memory, at `offset` (they come in order).
    pub(super) fn memory(&mut self, offset: usize, bytes: &[u8], room: &mut Room<'_>) {
        if self.state != 1 || offset != self.mem_have {
            self.state = 0;
            return;
        }
        let end = offset.saturating_add(bytes.len());
        let fits = end as u64 <= self.plan.mem_len;
        match room.memory.get_mut(offset..end).filter(|_| fits) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.mem_have = end;
            }
            None => self.state = 0,
        }
    }

    /// The journal is complete.
    pub(super) fn arm(&mut self) {
        if self.state == 1 && self.mem_have as u64 == self.plan.mem_len {
            self.state = 2;
        } else {
            self.state = 0;
        }
    }

    /// Given back by the driver itself.
    pub(super) fn release(&mut self) {
        self.state = 0;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seen {
    /// The borrowed thread, stopped where its steps return.
    Ours,
    /// The borrowed thread at its safe point, not yet changed (first look only).
    Untouched,
    /// A process forked by a step, back from `clone` (or from a failed `execve`).
    Child,
    /// Another thread stopped on our breakpoint: to be stepped over.
    AtBreakpoint,
    Elsewhere,
    Lost,
}

fn read_reg(wire: &mut Wire, reg: RegSlot, deadline: i64) -> Option<u64> {
    let mut body = Body::new();
    body.push(b'p').number(u64::from(reg.num));
    let mut out = [0u8; 64];
    let n = wire.exchange(body.bytes()?, &mut out, deadline)?;
    let v = decode_le(out.get(..n)?)?;
    Some(v & size_mask(reg.size))
}

fn size_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(size) * 8)) - 1
    }
}

fn write_reg(wire: &mut Wire, reg: RegSlot, value: u64, deadline: i64) -> GdbReply {
    let mut body = Body::new();
    body.push(b'P')
        .number(u64::from(reg.num))
        .push(b'=')
        .le(value, usize::from(reg.size));
    match body.bytes() {
        Some(b) => wire.request(b, deadline),
        None => GdbReply::Refused,
    }
}

fn select(wire: &mut Wire, thread: &[u8], deadline: i64) -> GdbReply {
    let mut body = Body::new();
    body.text(b"Hg").text(thread);
    match body.bytes() {
        Some(b) => wire.request(b, deadline),
        None => GdbReply::Refused,
    }
}

fn look(wire: &mut Wire, thread: &[u8], p: &Giveback, first: bool, deadline: i64) -> Seen {
    match select(wire, thread, deadline) {
        GdbReply::Ok => {}
        GdbReply::Refused => return Seen::Elsewhere,
        GdbReply::Lost => return Seen::Lost,
    }
    let Some(ip) = read_reg(wire, p.ip, deadline) else {
        return Seen::Lost;
    };
    if ip != p.stop_ip && ip != p.saved_ip {
        return Seen::Elsewhere;
    }
    let (Some(sp), Some(root)) = (
        read_reg(wire, p.sp, deadline),
        read_reg(wire, p.root_reg, deadline),
    ) else {
        return Seen::Lost;
    };
    let same_space = root & p.root_mask == p.root;
    if ip == p.stop_ip && sp == p.stop_sp {
        return if same_space { Seen::Ours } else { Seen::Child };
    }
    if first && ip == p.saved_ip && sp == p.saved_sp && same_space {
        return Seen::Untouched;
    }
    if ip == p.stop_ip {
        Seen::AtBreakpoint
    } else {
        Seen::Elsewhere
    }
}

/// Writes the registers and memory back on the selected vCPU, then reads both back:
/// `(written, read back equal)`.
fn restore(wire: &mut Wire, p: &Giveback, memory: &[u8], deadline: i64) -> (bool, bool) {
    for (reg, value) in p.regs.iter().take(p.nregs) {
        if write_reg(wire, *reg, *value, deadline) != GdbReply::Ok {
            return (false, false);
        }
    }
    let mut at = 0usize;
    for chunk in memory.chunks(MEM_CHUNK) {
        let mut body = Body::new();
        body.push(b'M')
            .number(p.mem_va.wrapping_add(at as u64))
            .push(b',')
            .number(chunk.len() as u64)
            .push(b':')
            .hex(chunk);
        let ok = body
            .bytes()
            .is_some_and(|b| wire.request(b, deadline) == GdbReply::Ok);
        if !ok {
            return (false, false);
        }
        at = at.wrapping_add(chunk.len());
    }
    // Read back.
    let mut equal = true;
    for (reg, value) in p.regs.iter().take(p.nregs) {
        equal &= read_reg(wire, *reg, deadline) == Some(value & size_mask(reg.size));
    }
    let mut at = 0usize;
    for chunk in memory.chunks(MEM_CHUNK) {
        let mut body = Body::new();
        body.push(b'm')
            .number(p.mem_va.wrapping_add(at as u64))
            .push(b',')
            .number(chunk.len() as u64);
        let mut text = [0u8; 2 * MEM_CHUNK];
        let mut bytes = [0u8; MEM_CHUNK];
        let same = body
            .bytes()
            .and_then(|b| wire.exchange(b, &mut text, deadline))
            .and_then(|n| decode_hex(text.get(..n)?, &mut bytes))
            .is_some_and(|n| bytes.get(..n) == Some(chunk));
        equal &= same;
        at = at.wrapping_add(chunk.len());
    }
    (true, equal)
}

/// Sends a forked child of a step to `exit(127)`.
fn end_child(wire: &mut Wire, p: &Giveback, deadline: i64) -> bool {
    write_reg(wire, p.ret_reg, p.exit_nr, deadline) == GdbReply::Ok
        && write_reg(wire, p.arg0_reg, 127, deadline) == GdbReply::Ok
        && write_reg(wire, p.ip, p.syscall_ip, deadline) == GdbReply::Ok
}

fn breakpoint(wire: &mut Wire, insert: bool, ztype: u8, addr: u64, deadline: i64) -> GdbReply {
    let bp = Bp {
        ztype,
        addr,
        len: 1,
    };
    let mut z = [0u8; 48];
    let n = z_body(&bp, &mut z);
    if insert && let Some(c) = z.first_mut() {
        *c = b'Z';
    }
    wire.request(z.get(..n).unwrap_or(&[]), deadline)
}

/// Single-steps `thread` off our breakpoint (removed for the step: under KVM it is an
/// `int3` in memory).
fn step_over(wire: &mut Wire, thread: &[u8], ztype: u8, addr: u64, deadline: i64) -> bool {
    if breakpoint(wire, false, ztype, addr, deadline) == GdbReply::Lost {
        return false;
    }
    let mut body = Body::new();
    body.text(b"vCont;s:").text(thread);
    let mut t = [0u8; 32];
    let stepped = body.bytes().is_some_and(|b| wire.send(b, deadline))
        && wire.wait_stop(&mut t, deadline).is_some();
    stepped && breakpoint(wire, true, ztype, addr, deadline) == GdbReply::Ok
}

/// Gives the thread back (see the module docs); a note for the guard's report.
pub(super) fn give_back(
    wire: &mut Wire,
    bps: &[Bp],
    b: &Borrowed,
    room: &Room<'_>,
) -> &'static [u8] {
    let p = &b.plan;
    let memory = room.memory.get(..b.mem_have).unwrap_or(&[]);
    let step = || now_ms().wrapping_add(STEP_MS);
    // QEMU answers `p`/`P` only to a client that read the target description.
    let mut scratch = [0u8; 8];
    let _ = wire.exchange(b"qXfer:features:read:target.xml:0,1", &mut scratch, step());
    // Every journaled breakpoint goes (the driver may have removed some already: QEMU
    // refuses those), then ours is set afresh, of the kind the driver used: a hardware
    // one unless the journal says otherwise, as the return address is a user address
    // (under KVM a software one would be written into whatever process the vCPU runs).
    let mut ztype = 1;
    for bp in bps {
        if bp.ztype <= 1 && bp.addr == p.stop_ip {
            ztype = bp.ztype;
        }
        let mut z = [0u8; 48];
        let n = z_body(bp, &mut z);
        if wire.request(z.get(..n).unwrap_or(&[]), step()) == GdbReply::Lost {
            return LOST;
        }
    }
    if breakpoint(wire, true, ztype, p.stop_ip, step()) != GdbReply::Ok {
        return b"; no breakpoint for the borrowed thread: it was not given back";
    }
    let outcome = wait_and_restore(wire, p, memory, room, b.threads_len, ztype);
    let _ = breakpoint(wire, false, ztype, p.stop_ip, step());
    outcome
}

const LOST: &[u8] = b"; gdbstub lost: the borrowed thread was not given back";
const NOT_BACK: &[u8] = b"; the borrowed thread did not come back in time: it is left borrowed";

/// Acts on what a vCPU's thread is: `Some(note)` when the give-back is over.
fn act(
    wire: &mut Wire,
    id: &[u8],
    seen: Seen,
    p: &Giveback,
    memory: &[u8],
    ztype: u8,
) -> Option<&'static [u8]> {
    let step = || now_ms().wrapping_add(STEP_MS);
    match seen {
        Seen::Ours | Seen::Untouched => Some(match restore(wire, p, memory, step()) {
            (true, true) => b"; borrowed thread given back (registers and memory read back equal)",
            (true, false) => b"; borrowed thread given back, but the read-back differs",
            (false, _) => b"; the gdbstub refused the borrowed thread's registers or memory",
        }),
        Seen::Child => (!end_child(wire, p, step())).then_some(LOST),
        Seen::AtBreakpoint => (!step_over(wire, id, ztype, p.stop_ip, step())).then_some(LOST),
        Seen::Elsewhere => None,
        Seen::Lost => Some(LOST),
    }
}

fn wait_and_restore(
    wire: &mut Wire,
    p: &Giveback,
    memory: &[u8],
    room: &Room<'_>,
    threads_len: usize,
    ztype: u8,
) -> &'static [u8] {
    let step = || now_ms().wrapping_add(STEP_MS);
    // Where each vCPU is now (the thread may be at its safe point, untouched).
    let ids = room.threads.get(..threads_len).unwrap_or(&[]);
    for id in ids.split(|&c| c == b',').filter(|t| !t.is_empty()) {
        let seen = look(wire, id, p, true, step());
        if let Some(note) = act(wire, id, seen, p, memory, ztype) {
            return note;
        }
    }
    let wait_ms = i64::try_from(p.wait_ms)
        .unwrap_or(i64::MAX)
        .clamp(STEP_MS, 600_000);
    let deadline = now_ms().wrapping_add(wait_ms);
    loop {
        if deadline.wrapping_sub(now_ms()) <= 0 {
            return NOT_BACK;
        }
        if !wire.send(b"vCont;c", step()) {
            return LOST;
        }
        let mut t = [0u8; 32];
        let Some(n) = wire.wait_stop(&mut t, deadline) else {
            // The wait is over (or the stub is gone): stop the VM for the detach.
            if wire.interrupt(step()) {
                let _ = wire.wait_stop(&mut t, step());
            }
            return NOT_BACK;
        };
        let id = t.get(..n).unwrap_or(&[]);
        if id.is_empty() {
            continue;
        }
        let seen = look(wire, id, p, false, step());
        if let Some(note) = act(wire, id, seen, p, memory, ztype) {
            return note;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The give-back against a scripted gdbstub: three vCPUs, one of another process
    //! parked on our breakpoint (stepped over), one of a child forked by a step (sent to
    //! `exit(127)`), the borrowed thread returning at the first continue.

    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    const RIP: u16 = 16;
    const RSP: u16 = 7;
    const RAX: u16 = 0;
    const RDI: u16 = 5;
    const EFLAGS: u16 = 17;
    const CR3: u16 = 60;

    struct Stub {
        regs: [BTreeMap<u16, u64>; 3],
        memory: BTreeMap<u64, u8>,
        bps: BTreeSet<(u8, u64)>,
        g: usize,
        log: Vec<String>,
    }

    fn cs(body: &[u8]) -> String {
        let sum = body.iter().fold(0u8, |a, &c| a.wrapping_add(c));
        format!("${}#{sum:02x}", String::from_utf8_lossy(body))
    }

    fn vcpu(id: &str) -> usize {
        usize::from(id.as_bytes()[id.len() - 1] - b'1')
    }

    impl Stub {
        fn answer(&mut self, p: &str, plan: &Giveback) -> Option<String> {
            self.log.push(p.to_owned());
            let hex = |v: u64, n: usize| {
                v.to_le_bytes()[..n]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            };
            Some(if p.starts_with("qXfer") {
                "l".into()
            } else if let Some(t) = p.strip_prefix("Hg") {
                self.g = vcpu(t);
                "OK".into()
            } else if let Some(n) = p.strip_prefix('p') {
                let n = u16::from_str_radix(n, 16).unwrap();
                let size = if n == EFLAGS { 4 } else { 8 };
                hex(self.regs[self.g].get(&n).copied().unwrap_or(0), size)
            } else if let Some(rest) = p.strip_prefix('P') {
                let (n, v) = rest.split_once('=').unwrap();
                let mut b = [0u8; 8];
                decode_hex(v.as_bytes(), &mut b).unwrap();
                let n = u16::from_str_radix(n, 16).unwrap();
                self.regs[self.g].insert(n, u64::from_le_bytes(b));
                "OK".into()
            } else if let Some(rest) = p.strip_prefix('M') {
                let (a, data) = rest.split_once(':').unwrap();
                let addr = u64::from_str_radix(a.split(',').next().unwrap(), 16).unwrap();
                let mut b = vec![0u8; data.len() / 2];
                decode_hex(data.as_bytes(), &mut b).unwrap();
                for (i, v) in b.into_iter().enumerate() {
                    self.memory.insert(addr + i as u64, v);
                }
                "OK".into()
            } else if let Some(rest) = p.strip_prefix('m') {
                let (a, n) = rest.split_once(',').unwrap();
                let addr = u64::from_str_radix(a, 16).unwrap();
                let n = u64::from_str_radix(n, 16).unwrap();
                (addr..addr + n)
                    .map(|x| format!("{:02x}", self.memory.get(&x).copied().unwrap_or(0)))
                    .collect()
            } else if let Some(rest) = p.strip_prefix(['Z', 'z']) {
                let mut f = rest.split(',');
                let t: u8 = f.next().unwrap().parse().unwrap();
                let a = u64::from_str_radix(f.next().unwrap(), 16).unwrap();
                if p.starts_with('Z') {
                    self.bps.insert((t, a));
                } else if !self.bps.remove(&(t, a)) {
                    return Some("E22".into());
                }
                "OK".into()
            } else if let Some(t) = p.strip_prefix("vCont;s:") {
                let v = vcpu(t);
                *self.regs[v].get_mut(&RIP).unwrap() += 3;
                format!("T05thread:{t};")
            } else if p == "vCont;c" {
                // The borrowed thread comes back from its step, on vCPU 1.
                assert!(
                    self.bps.contains(&(1, plan.stop_ip)),
                    "continued without our bp"
                );
                assert_ne!(self.regs[1][&RIP], plan.stop_ip, "vCPU 2 not stepped over");
                let r = &mut self.regs[0];
                r.insert(RIP, plan.stop_ip);
                r.insert(RSP, plan.stop_sp);
                r.insert(CR3, plan.root | 0x1000 | 0x5);
                "T05thread:p1.1;".into()
            } else {
                return None;
            })
        }
    }

    fn serve(mut s: UnixStream, mut stub: Stub, plan: Giveback) -> Stub {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // One packet: skip acks, read to '#', two checksum digits.
            while let Some(i) = buf.iter().position(|&c| c == b'$') {
                let Some(end) = buf[i..].iter().position(|&c| c == b'#') else {
                    break;
                };
                if buf.len() < i + end + 3 {
                    break;
                }
                let body = String::from_utf8(buf[i + 1..i + end].to_vec()).unwrap();
                buf.drain(..i + end + 3);
                s.write_all(b"+").unwrap();
                match stub.answer(&body, &plan) {
                    Some(r) => s.write_all(cs(r.as_bytes()).as_bytes()).unwrap(),
                    None => s.write_all(cs(b"").as_bytes()).unwrap(),
                }
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return stub,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[test]
    fn gives_the_thread_back_after_stepping_a_foreign_thread_over_and_ending_a_child() {
        let root = 0x1234_5000u64;
        let mask = !(0xfffu64 | 0x1000 | 1 << 63);
        let saved: Vec<(RegSlot, u64)> = (0..16u16)
            .map(|n| (RegSlot { num: n, size: 8 }, 0x1000 + u64::from(n)))
            .chain([
                (RegSlot { num: RIP, size: 8 }, 0x40_1000),
                (
                    RegSlot {
                        num: EFLAGS,
                        size: 4,
                    },
                    0x246,
                ),
            ])
            .collect();
        let mut plan = Giveback {
            stop_ip: 0x7fff_0000_0a02,
            stop_sp: 0x7ffd_0000_1f00,
            saved_ip: 0x40_1000,
            saved_sp: 0x1007,
            root: root & mask,
            root_mask: mask,
            syscall_ip: 0x7fff_0000_0a00,
            exit_nr: 60,
            wait_ms: 5000,
            mem_va: 0x7ffd_0000_2000,
            mem_len: 3000,
            ip: RegSlot { num: RIP, size: 8 },
            sp: RegSlot { num: RSP, size: 8 },
            root_reg: RegSlot { num: CR3, size: 8 },
            ret_reg: RegSlot { num: RAX, size: 8 },
            arg0_reg: RegSlot { num: RDI, size: 8 },
            ..Giveback::default()
        };
        for (d, s) in plan.regs.iter_mut().zip(&saved) {
            *d = *s;
        }
        plan.nregs = saved.len();
        // The record survives the socket.
        assert_eq!(Giveback::decode(&plan.encode()), Some(plan));
        assert_eq!(Giveback::decode(&plan.encode()[..10]), None);

        let original: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let (mut mem, mut thr) = (vec![0u8; 65536], vec![0u8; 256]);
        let mut room = Room {
            memory: &mut mem,
            threads: &mut thr,
        };
        let mut b = Borrowed::new();
        b.begin(Some(plan), &room);
        b.threads(b"p1.1,p1.2,", &mut room);
        b.memory(0, &original[..1000], &mut room);
        b.arm();
        assert!(!b.armed(), "incomplete memory does not arm");
        b.begin(Some(plan), &room);
        b.threads(b"p1.1,p1.2,p1.3,", &mut room);
        b.memory(0, &original[..1000], &mut room);
        b.memory(1000, &original[1000..], &mut room);
        b.arm();
        assert!(b.armed());

        // vCPU 1 runs the borrowed thread's step elsewhere (in the kernel); vCPU 2 is
        // another process parked on our breakpoint.
        let mut regs0 = BTreeMap::new();
        regs0.insert(RIP, 0xffff_ffff_8100_0000);
        regs0.insert(RSP, 0xffff_c900_0000_0000);
        regs0.insert(CR3, root);
        let mut regs1 = BTreeMap::new();
        regs1.insert(RIP, plan.stop_ip);
        regs1.insert(RSP, 0x7ffe_1111_0000);
        regs1.insert(CR3, 0x9999_9000);
        // vCPU 3: the child of a `clone` step, back from it (same stack, its own root).
        let mut regs2 = BTreeMap::new();
        regs2.insert(RIP, plan.stop_ip);
        regs2.insert(RSP, plan.stop_sp);
        regs2.insert(CR3, 0x7777_7000);
        let stub = Stub {
            regs: [regs0, regs1, regs2],
            memory: (0..3000u64).map(|i| (plan.mem_va + i, 0xcc)).collect(),
            // The driver plants user-space breakpoints as hardware ones (`Z1`).
            bps: [(1u8, plan.stop_ip), (1, 0x40_1000)].into_iter().collect(),
            g: 0,
            log: Vec::new(),
        };
        let path = std::env::temp_dir().join(format!("vmi-giveback-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s, stub, plan)
        });
        let client = UnixStream::connect(&path).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut wire = Wire::new(client.as_raw_fd());
        let bps = [
            Bp {
                ztype: 1,
                addr: plan.stop_ip,
                len: 1,
            },
            Bp {
                ztype: 1,
                addr: 0x40_1000,
                len: 1,
            },
        ];
        let note = give_back(&mut wire, &bps, &b, &room);
        drop(client);
        let stub = server.join().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            std::str::from_utf8(note).unwrap(),
            "; borrowed thread given back (registers and memory read back equal)",
            "{:?}",
            stub.log
        );
        for (slot, v) in &saved {
            assert_eq!(stub.regs[0][&slot.num], *v, "register {}", slot.num);
        }
        let back: Vec<u8> = (0..3000u64)
            .map(|i| stub.memory[&(plan.mem_va + i)])
            .collect();
        assert_eq!(back, original);
        assert!(stub.bps.is_empty(), "breakpoints left: {:?}", stub.bps);
        assert!(
            stub.log.iter().any(|p| p == "vCont;s:p1.2"),
            "{:?}",
            stub.log
        );
        let child = &stub.regs[2];
        assert_eq!(
            (child[&RAX], child[&RDI], child[&RIP]),
            (60, 127, plan.syscall_ip)
        );
        assert_eq!(
            stub.regs[1][&RSP], 0x7ffe_1111_0000,
            "the foreign thread is untouched"
        );
    }
}
