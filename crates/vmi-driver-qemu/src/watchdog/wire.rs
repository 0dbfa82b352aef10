//! The guard's client of the gdb remote protocol: fixed buffers on the stack, plain
//! system calls, no allocation and no panics (it runs after `fork`, see the parent
//! module).

use std::os::fd::RawFd;

use super::guard::{sys_poll, sys_read, write_all};
use super::last_errno;

pub(super) const HEX: &[u8; 16] = b"0123456789abcdef";
/// Guest bytes per `M`/`m` packet (QEMU takes packets of up to 4 KiB).
pub(super) const MEM_CHUNK: usize = 1024;
/// Room for the largest packet body we send: an `M` of [`MEM_CHUNK`] bytes.
const BODY_ROOM: usize = 2 * MEM_CHUNK + 64;

/// A packet body under construction; pushes past the room are dropped and remembered.
pub(super) struct Body {
    buf: [u8; BODY_ROOM],
    len: usize,
    overflow: bool,
}

impl Body {
    pub(super) fn new() -> Body {
        Body {
            buf: [0; BODY_ROOM],
            len: 0,
            overflow: false,
        }
    }

    pub(super) fn push(&mut self, c: u8) -> &mut Self {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = c;
                self.len += 1;
            }
            None => self.overflow = true,
        }
        self
    }

    pub(super) fn text(&mut self, s: &[u8]) -> &mut Self {
        for &c in s {
            self.push(c);
        }
        self
    }

    /// `v` in hex, most significant digit first, without leading zeros.
    pub(super) fn number(&mut self, v: u64) -> &mut Self {
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 15) as usize;
            if d != 0 || started || i == 0 {
                started = true;
                self.push(HEX[d]);
            }
        }
        self
    }

    /// Bytes in hex, in order.
    pub(super) fn hex(&mut self, b: &[u8]) -> &mut Self {
        for &c in b {
            self.push(HEX[(c >> 4) as usize]);
            self.push(HEX[(c & 15) as usize]);
        }
        self
    }

    /// The low `size` bytes of `v`, little-endian, in hex (a register's target order).
    pub(super) fn le(&mut self, v: u64, size: usize) -> &mut Self {
        let b = v.to_le_bytes();
        self.hex(b.get(..size.min(8)).unwrap_or(&[]));
        for _ in 8..size {
            self.text(b"00");
        }
        self
    }

    /// The body, or `None` if it did not fit.
    pub(super) fn bytes(&self) -> Option<&[u8]> {
        if self.overflow {
            None
        } else {
            self.buf.get(..self.len)
        }
    }
}

/// A framed packet `$body#cs`.
pub(super) struct Packet {
    buf: [u8; BODY_ROOM + 4],
    len: usize,
}

impl Packet {
    pub(super) fn new(body: &[u8]) -> Packet {
        let mut p = Packet {
            buf: [0; BODY_ROOM + 4],
            len: 0,
        };
        p.push(b'$');
        let mut sum = 0u8;
        for &c in body {
            sum = sum.wrapping_add(c);
            p.push(c);
        }
        p.push(b'#');
        p.push(HEX[(sum >> 4) as usize]);
        p.push(HEX[(sum & 15) as usize]);
        p
    }

    fn push(&mut self, c: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = c;
            self.len += 1;
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// The value of one hex digit.
fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex pairs into `out`; the number of bytes, `None` on a bad digit or odd
/// length.
pub(super) fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<usize> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let mut n = 0;
    for pair in text.chunks_exact(2) {
        let v = (unhex(*pair.first()?)? << 4) | unhex(*pair.get(1)?)?;
        *out.get_mut(n)? = v;
        n += 1;
    }
    Some(n)
}

/// A register's value from a `p` reply (little-endian hex, at most 8 bytes used).
pub(super) fn decode_le(text: &[u8]) -> Option<u64> {
    let mut b = [0u8; 16];
    let n = decode_hex(text.get(..text.len().min(32))?, &mut b)?;
    if n == 0 {
        return None;
    }
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(b.iter().take(n)) {
        *d = *s;
    }
    Some(u64::from_le_bytes(v))
}

/// What a request got back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum GdbReply {
    Ok,
    Refused,
    Lost,
}

/// One gdbstub connection with its receive buffer.
pub(super) struct Wire {
    fd: RawFd,
    buf: [u8; 2048],
    have: usize,
    pos: usize,
}

impl Wire {
    pub(super) fn new(fd: RawFd) -> Wire {
        Wire {
            fd,
            buf: [0; 2048],
            have: 0,
            pos: 0,
        }
    }

    fn byte(&mut self, deadline: i64) -> Option<u8> {
        loop {
            if let Some(&c) = self.buf.get(self.pos).filter(|_| self.pos < self.have) {
                self.pos += 1;
                return Some(c);
            }
            if !sys_poll(self.fd, libc::POLLIN, deadline) {
                return None;
            }
            let n = sys_read(self.fd, &mut self.buf);
            if n <= 0 {
                if n < 0 && matches!(last_errno(), libc::EAGAIN | libc::EINTR) {
                    continue;
                }
                return None;
            }
            self.have = n as usize;
            self.pos = 0;
        }
    }

    /// Writes `body` as a packet, expecting no reply (`vCont`).
    pub(super) fn send(&mut self, body: &[u8], deadline: i64) -> bool {
        write_all(self.fd, Packet::new(body).bytes(), deadline)
    }

    /// The `^C` that stops a running VM (a stop reply follows).
    pub(super) fn interrupt(&mut self, deadline: i64) -> bool {
        write_all(self.fd, &[3], deadline)
    }

    /// Reads the next packet, acknowledges it and copies its body into `out`
    /// (truncated); its full length. A `-` (the stub's parser held a half packet of the
    /// dead client) sends `resend` again, a few times.
    fn packet(&mut self, out: &mut [u8], resend: Option<&Packet>, deadline: i64) -> Option<usize> {
        let mut resent = 0;
        loop {
            match self.byte(deadline)? {
                b'$' => break,
                b'-' if resent < 8 => {
                    if let Some(p) = resend {
                        resent += 1;
                        if !write_all(self.fd, p.bytes(), deadline) {
                            return None;
                        }
                    }
                }
                _ => {}
            }
        }
        let mut len = 0usize;
        loop {
            let c = self.byte(deadline)?;
            if c == b'#' {
                break;
            }
            if let Some(slot) = out.get_mut(len) {
                *slot = c;
            }
            len = len.saturating_add(1);
        }
        self.byte(deadline)?;
        self.byte(deadline)?;
        if !write_all(self.fd, b"+", deadline) {
            return None;
        }
        Some(len)
    }

    /// Sends `body` and returns the length of the reply copied into `out`, skipping stop
    /// replies (not ours); `None` when the connection is lost or the target exits.
    pub(super) fn exchange(&mut self, body: &[u8], out: &mut [u8], deadline: i64) -> Option<usize> {
        let pkt = Packet::new(body);
        if !write_all(self.fd, pkt.bytes(), deadline) {
            return None;
        }
        loop {
            let mut head = [0u8; 1];
            let mut buf = [0u8; 2 * MEM_CHUNK + 16];
            let n = self.packet(&mut buf, Some(&pkt), deadline)?;
            if let Some(&c) = buf.first().filter(|_| n > 0) {
                head[0] = c;
            }
            match head[0] {
                b'T' | b'S' if n >= 3 && is_hex_pair(buf.get(1..3)) => continue,
                b'W' | b'X' if n >= 3 && is_hex_pair(buf.get(1..3)) => return None,
                _ => {}
            }
            for (d, s) in out.iter_mut().zip(buf.iter().take(n)) {
                *d = *s;
            }
            return Some(n.min(out.len()));
        }
    }

    /// A request answered by `OK` or not.
    pub(super) fn request(&mut self, body: &[u8], deadline: i64) -> GdbReply {
        let mut out = [0u8; 8];
        match self.exchange(body, &mut out, deadline) {
            None => GdbReply::Lost,
            Some(2) if out.get(..2) == Some(b"OK") => GdbReply::Ok,
            Some(_) => GdbReply::Refused,
        }
    }

    /// Waits for a stop reply; the stopped thread's id goes into `thread` (its length,
    /// 0 when the reply names none). `None` on timeout, a lost connection or an exit.
    pub(super) fn wait_stop(&mut self, thread: &mut [u8; 32], deadline: i64) -> Option<usize> {
        loop {
            let mut buf = [0u8; 512];
            let n = self.packet(&mut buf, None, deadline)?;
            let body = buf.get(..n.min(buf.len()))?;
            match body.first() {
                Some(b'T' | b'S') if n >= 3 => return Some(stop_thread(body, thread)),
                Some(b'W' | b'X') => return None,
                _ => continue,
            }
        }
    }
}

fn is_hex_pair(b: Option<&[u8]>) -> bool {
    b.is_some_and(|b| b.iter().all(|&c| unhex(c).is_some()))
}

/// The `thread:ID;` of a `T` stop reply, copied into `out`; its length (0 if absent or
/// too long).
pub(super) fn stop_thread(body: &[u8], out: &mut [u8; 32]) -> usize {
    let key = b"thread:";
    let Some(at) = body.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    let id = body.get(at + key.len()..).unwrap_or(&[]);
    let end = id.iter().position(|&c| c == b';').unwrap_or(id.len());
    let id = id.get(..end).unwrap_or(&[]);
    if id.is_empty() || id.len() > out.len() {
        return 0;
    }
    for (d, s) in out.iter_mut().zip(id) {
        *d = *s;
    }
    id.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_hex() {
        let mut b = Body::new();
        b.text(b"P").number(0x10).push(b'=').le(0x1122_3344, 4);
        assert_eq!(b.bytes().unwrap(), b"P10=44332211");
        let mut b = Body::new();
        b.le(1, 10);
        assert_eq!(b.bytes().unwrap(), b"01000000000000000000");
        let mut b = Body::new();
        b.hex(&[0u8; BODY_ROOM]);
        assert!(b.bytes().is_none(), "overflow is reported, not truncated");
        assert_eq!(decode_le(b"efbeadde00000000"), Some(0xdead_beef));
        assert_eq!(decode_le(b"E14x"), None);
        assert_eq!(decode_le(b""), None);
        assert_eq!(decode_le(b"0"), None);
        let mut out = [0u8; 2];
        assert_eq!(decode_hex(b"0a0b0c", &mut out), None, "does not fit");
        assert_eq!(Packet::new(b"D;1").bytes(), b"$D;1#b0");
        assert_eq!(Packet::new(b"OK").bytes(), b"$OK#9a");
    }

    #[test]
    fn stop_reply_threads() {
        let mut t = [0u8; 32];
        let n = stop_thread(b"T05thread:p01.02;swbreak:;", &mut t);
        assert_eq!(&t[..n], b"p01.02");
        assert_eq!(stop_thread(b"S05", &mut t), 0);
        assert_eq!(stop_thread(b"T05thread:;", &mut t), 0);
        let long = [b'1'; 40];
        let mut body = b"T05thread:".to_vec();
        body.extend_from_slice(&long);
        assert_eq!(stop_thread(&body, &mut t), 0);
    }
}
