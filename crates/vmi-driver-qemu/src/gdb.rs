//! A GDB remote serial protocol client for QEMU's gdbstub: packets (`$…#cs`, acks,
//! escapes, run-length), stop replies, and the register map built from the target
//! description XML (`qXfer:features:read`).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::QemuError;

/// Where a gdbstub listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GdbAddress {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address (`host:port`).
    Tcp(String),
}

impl std::fmt::Display for GdbAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GdbAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            GdbAddress::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl GdbAddress {
    /// Parses a chardev `filename` of `query-chardev` (`disconnected:unix:/p,server=on`,
    /// `unix:/p,server=on`, `disconnected:tcp:0.0.0.0:1234,server=on`).
    pub(crate) fn from_chardev_filename(f: &str) -> Option<GdbAddress> {
        let f = f.strip_prefix("disconnected:").unwrap_or(f);
        let main = f.split(',').next()?;
        if let Some(p) = main.strip_prefix("unix:") {
            return Some(GdbAddress::Unix(PathBuf::from(p)));
        }
        if let Some(a) = main.strip_prefix("tcp:") {
            let a = a.split(" <->").next()?;
            let (host, port) = a.rsplit_once(':')?;
            let host = match host {
                "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
                h => h,
            };
            return Some(GdbAddress::Tcp(format!("{host}:{port}")));
        }
        None
    }
}

#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

/// Largest packet we accept (QEMU announces PacketSize=1000 hex = 4 KiB; `g` is ~1.3 KiB).
const MAX_PACKET: usize = 1 << 20;

/// A stop reply, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StopReply {
    /// The signal (5 = SIGTRAP: breakpoint, watchpoint or step; 2 = SIGINT: interrupt).
    pub signal: u8,
    /// The thread id as sent (`p01.02`), if any.
    pub thread: Option<String>,
    /// A watchpoint hit: kind (`watch`, `rwatch`, `awatch`) and address.
    pub watch: Option<(String, u64)>,
    /// `swbreak`/`hwbreak` hints.
    pub hint: Option<String>,
    /// The raw packet.
    pub raw: String,
}

/// Whether a packet is a stop reply (`T05…`, `S05`, `W00`, `X09`).
pub(crate) fn is_stop_reply(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 3
        && matches!(b[0], b'T' | b'S' | b'W' | b'X')
        && b[1].is_ascii_hexdigit()
        && b[2].is_ascii_hexdigit()
}

/// Parses a stop reply; `Err` for the exit packets `W`/`X`.
pub(crate) fn parse_stop_reply(p: &str) -> Result<StopReply, QemuError> {
    if !is_stop_reply(p) {
        return Err(QemuError::protocol("gdb stop reply", p.to_string()));
    }
    let signal = u8::from_str_radix(&p[1..3], 16)
        .map_err(|_| QemuError::protocol("gdb stop reply", p.to_string()))?;
    match p.as_bytes()[0] {
        b'W' | b'X' => return Err(QemuError::Disconnected { what: "gdbstub" }),
        _ => {}
    }
    let mut r = StopReply {
        signal,
        thread: None,
        watch: None,
        hint: None,
        raw: p.to_string(),
    };
    for pair in p[3..].split(';').take(64) {
        let Some((k, v)) = pair.split_once(':') else {
            if pair == "swbreak" || pair == "hwbreak" {
                r.hint = Some(pair.to_string());
            }
            continue;
        };
        match k {
            "thread" => r.thread = Some(v.to_string()),
            "watch" | "rwatch" | "awatch" => {
                if let Ok(a) = u64::from_str_radix(v, 16) {
                    r.watch = Some((k.to_string(), a));
                }
            }
            "swbreak" | "hwbreak" => r.hint = Some(k.to_string()),
            _ => {}
        }
    }
    Ok(r)
}

/// Whether `VMI_QEMU_TRACE` asks for a packet trace on stderr.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("VMI_QEMU_TRACE").is_some())
}

/// One gdbstub connection (packet level).
#[derive(Debug)]
pub(crate) struct GdbConn {
    stream: Stream,
    rbuf: Vec<u8>,
    timeout: Duration,
    broken: bool,
    /// Stop replies that arrived while waiting for something else.
    pub stops: VecDeque<String>,
    last_sent: Vec<u8>,
}

impl GdbConn {
    /// Connects (the stub stops the VM when it accepts us).
    pub(crate) fn connect(addr: &GdbAddress, timeout: Duration) -> Result<GdbConn, QemuError> {
        let stream = match addr {
            GdbAddress::Unix(p) => Stream::Unix(crate::qmp::connect_unix(p)?),
            GdbAddress::Tcp(a) => Stream::Tcp(TcpStream::connect(a).map_err(|e| {
                if e.kind() == ErrorKind::ConnectionRefused {
                    QemuError::GdbUnavailable(format!("nothing listens on tcp:{a}"))
                } else {
                    QemuError::io(format!("connecting to gdbstub tcp:{a}"), e)
                }
            })?),
        };
        if let Stream::Tcp(t) = &stream {
            let _ = t.set_nodelay(true);
        }
        Ok(GdbConn {
            stream,
            rbuf: Vec::new(),
            timeout,
            broken: false,
            stops: VecDeque::new(),
            last_sent: Vec::new(),
        })
    }

    /// The per-request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the per-request timeout.
    pub(crate) fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), QemuError> {
        if self.broken {
            return Err(QemuError::Disconnected { what: "gdbstub" });
        }
        self.stream.write_all(bytes).map_err(|e| {
            self.broken = true;
            match e.kind() {
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                    QemuError::Disconnected { what: "gdbstub" }
                }
                _ => QemuError::io("writing to the gdbstub", e),
            }
        })
    }

    /// Sends one packet (no wait).
    pub(crate) fn send(&mut self, payload: &str) -> Result<(), QemuError> {
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.push(b'$');
        let mut sum: u8 = 0;
        for &b in payload.as_bytes() {
            if matches!(b, b'$' | b'#' | b'}' | b'*') {
                out.push(b'}');
                out.push(b ^ 0x20);
                sum = sum.wrapping_add(b'}').wrapping_add(b ^ 0x20);
            } else {
                out.push(b);
                sum = sum.wrapping_add(b);
            }
        }
        out.extend_from_slice(format!("#{sum:02x}").as_bytes());
        if trace() {
            eprintln!("gdb -> {payload}");
        }
        self.last_sent.clone_from(&out);
        self.write(&out)
    }

    /// Sends the interrupt byte (0x03): a running VM stops and the stub sends `T02`.
    pub(crate) fn interrupt(&mut self) -> Result<(), QemuError> {
        if trace() {
            eprintln!("gdb -> ^C");
        }
        self.write(&[0x03])
    }

    /// Receives one packet, waiting until `deadline`; `None` on timeout.
    pub(crate) fn recv(&mut self, deadline: Instant) -> Result<Option<String>, QemuError> {
        loop {
            if let Some(p) = self.take_packet()? {
                return Ok(Some(p));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if self.broken {
                return Err(QemuError::Disconnected { what: "gdbstub" });
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| QemuError::io("setting gdbstub read timeout", e))?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.broken = true;
                    return Err(QemuError::Disconnected { what: "gdbstub" });
                }
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(match e.kind() {
                        ErrorKind::ConnectionReset => QemuError::Disconnected { what: "gdbstub" },
                        _ => QemuError::io("reading from the gdbstub", e),
                    });
                }
            }
        }
    }

    /// Extracts one complete packet from the buffer (acking it), handling `+`/`-`.
    fn take_packet(&mut self) -> Result<Option<String>, QemuError> {
        loop {
            let Some(&first) = self.rbuf.first() else {
                return Ok(None);
            };
            match first {
                b'$' => break,
                b'-' => {
                    self.rbuf.remove(0);
                    let again = self.last_sent.clone();
                    if !again.is_empty() {
                        self.write(&again)?;
                    }
                }
                _ => {
                    // '+' acks and noise between packets.
                    let skip = self
                        .rbuf
                        .iter()
                        .position(|&b| b == b'$' || b == b'-')
                        .unwrap_or(self.rbuf.len());
                    self.rbuf.drain(..skip);
                }
            }
        }
        let Some(hash) = self.rbuf.iter().position(|&b| b == b'#') else {
            if self.rbuf.len() > MAX_PACKET {
                self.broken = true;
                return Err(QemuError::protocol("gdb packet", "too long"));
            }
            return Ok(None);
        };
        if self.rbuf.len() < hash + 3 {
            return Ok(None);
        }
        let raw: Vec<u8> = self.rbuf.drain(..hash + 3).collect();
        let body = &raw[1..hash];
        let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        let cs = std::str::from_utf8(&raw[hash + 1..])
            .ok()
            .and_then(|s| u8::from_str_radix(s, 16).ok());
        if cs != Some(sum) {
            self.write(b"-")?;
            return Ok(None);
        }
        self.write(b"+")?;
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'}' if i + 1 < body.len() => {
                    out.push(body[i + 1] ^ 0x20);
                    i += 2;
                }
                b'*' if i + 1 < body.len() && !out.is_empty() => {
                    let n = usize::from(body[i + 1].saturating_sub(29));
                    let last = out[out.len() - 1];
                    if out.len() + n > MAX_PACKET {
                        return Err(QemuError::protocol("gdb packet", "run-length too long"));
                    }
                    out.extend(std::iter::repeat_n(last, n));
                    i += 2;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        let p = String::from_utf8_lossy(&out).into_owned();
        if trace() {
            eprintln!("gdb <- {}", p.chars().take(120).collect::<String>());
        }
        Ok(Some(p))
    }

    /// Sends `payload` and returns the reply; stop replies that arrive first are queued
    /// in `stops`.
    pub(crate) fn request(&mut self, payload: &str) -> Result<String, QemuError> {
        self.send(payload)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.recv(deadline)? {
                Some(p) if is_stop_reply(&p) => self.stops.push_back(p),
                Some(p) => return Ok(p),
                None => {
                    return Err(QemuError::Timeout {
                        what: "gdbstub",
                        request: payload.chars().take(64).collect(),
                        millis: self.timeout.as_millis(),
                    });
                }
            }
        }
    }

    /// Like [`GdbConn::request`] but requires `OK`.
    pub(crate) fn request_ok(&mut self, payload: &str) -> Result<(), QemuError> {
        let r = self.request(payload)?;
        if r == "OK" {
            Ok(())
        } else {
            Err(QemuError::GdbRefused {
                request: payload.chars().take(64).collect(),
                reply: r,
            })
        }
    }

    /// Waits for a stop reply until `deadline` (queued ones first).
    pub(crate) fn wait_stop(&mut self, deadline: Instant) -> Result<Option<String>, QemuError> {
        if let Some(s) = self.stops.pop_front() {
            return Ok(Some(s));
        }
        loop {
            match self.recv(deadline)? {
                Some(p) if is_stop_reply(&p) => return Ok(Some(p)),
                Some(_) => continue, // stray output, e.g. 'O' packets
                None => return Ok(None),
            }
        }
    }

    /// Reads a whole `qXfer:features:read` annex.
    pub(crate) fn read_feature(&mut self, annex: &str) -> Result<String, QemuError> {
        let mut out = String::new();
        for _ in 0..1024 {
            let req = format!("qXfer:features:read:{annex}:{:x},ffb", out.len());
            let r = self.request(&req)?;
            match r.as_bytes().first() {
                Some(b'm') => out.push_str(&r[1..]),
                Some(b'l') => {
                    out.push_str(&r[1..]);
                    return Ok(out);
                }
                _ => {
                    return Err(QemuError::GdbRefused {
                        request: req,
                        reply: r,
                    });
                }
            }
        }
        Err(QemuError::protocol("target description", "too large"))
    }
}

/// One register of the target description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RegDesc {
    pub name: String,
    pub regnum: u32,
    /// Byte offset in the `g` packet payload (decoded bytes).
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// Registers of a target description, in `g` order.
#[derive(Clone, Debug, Default)]
pub(crate) struct RegMap {
    pub regs: Vec<RegDesc>,
}

impl RegMap {
    /// The register named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&RegDesc> {
        self.regs.iter().find(|r| r.name == name)
    }

    /// Adds the `<reg>` elements of one XML document (after includes are resolved by the
    /// caller); returns the `href`s of its includes.
    pub(crate) fn add_xml(&mut self, xml: &str) -> Result<Vec<String>, QemuError> {
        // QEMU's target.xml uses the `xi:` prefix without declaring it.
        let xml = xml.replace("xi:include", "include");
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..roxmltree::ParsingOptions::default()
        };
        let doc = roxmltree::Document::parse_with_options(&xml, opts)
            .map_err(|e| QemuError::protocol("target description XML", e.to_string()))?;
        let mut includes = Vec::new();
        let mut next = self.regs.last().map(|r| r.regnum + 1).unwrap_or(0);
        for n in doc.descendants().take(100_000) {
            match n.tag_name().name() {
                "include" => {
                    if let Some(h) = n.attribute("href") {
                        includes.push(h.to_string());
                    }
                }
                "reg" => {
                    let name = n.attribute("name").unwrap_or("").to_string();
                    let bits: usize = n
                        .attribute("bitsize")
                        .and_then(|b| b.parse().ok())
                        .filter(|&b| b > 0 && b <= 4096)
                        .ok_or_else(|| {
                            QemuError::protocol("target description XML", format!("reg {name}"))
                        })?;
                    if let Some(r) = n.attribute("regnum").and_then(|r| r.parse().ok()) {
                        next = r;
                    }
                    self.regs.push(RegDesc {
                        name,
                        regnum: next,
                        offset: 0,
                        size: bits.div_ceil(8),
                    });
                    next = next.saturating_add(1);
                }
                _ => {}
            }
        }
        Ok(includes)
    }

    /// Sorts by register number and computes `g` offsets.
    pub(crate) fn finish(&mut self) {
        self.regs.sort_by_key(|r| r.regnum);
        let mut off = 0;
        for r in &mut self.regs {
            r.offset = off;
            off += r.size;
        }
    }

    /// Loads the description from a connected stub (`target.xml` and its includes).
    pub(crate) fn load(conn: &mut GdbConn) -> Result<RegMap, QemuError> {
        let mut map = RegMap::default();
        let mut todo = vec!["target.xml".to_string()];
        let mut seen = Vec::new();
        while let Some(annex) = todo.pop() {
            if seen.contains(&annex) || seen.len() > 32 {
                continue;
            }
            let xml = conn.read_feature(&annex)?;
            seen.push(annex);
            let inc = map.add_xml(&xml)?;
            todo.extend(inc.into_iter().rev());
        }
        map.finish();
        if map.get("rip").is_none() || map.get("cr3").is_none() {
            return Err(QemuError::protocol(
                "target description",
                "no rip/cr3 register (not an x86-64 target?)",
            ));
        }
        Ok(map)
    }

    /// Reads register `name` from decoded `g` bytes (little-endian, ≤ 8 bytes used).
    pub(crate) fn value(&self, g: &[u8], name: &str) -> Option<u64> {
        let r = self.get(name)?;
        let b = g.get(r.offset..r.offset + r.size)?;
        Some(le_u64(b))
    }
}

/// Little-endian value of up to 8 bytes (more are ignored).
pub(crate) fn le_u64(b: &[u8]) -> u64 {
    b.iter()
        .take(8)
        .enumerate()
        .fold(0u64, |a, (i, &x)| a | (u64::from(x) << (8 * i)))
}

/// Decodes hex text; `xx` (unavailable register) becomes 0.
pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|c| {
            if c == b"xx" {
                Some(0)
            } else {
                let h = (c[0] as char).to_digit(16)?;
                let l = (c[1] as char).to_digit(16)?;
                Some((h * 16 + l) as u8)
            }
        })
        .collect()
}

/// Hex of `size` little-endian bytes of `v`.
pub(crate) fn encode_le(v: u64, size: usize) -> String {
    let mut s = String::with_capacity(size * 2);
    for i in 0..size {
        let byte = if i < 8 { (v >> (8 * i)) as u8 } else { 0 };
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target><architecture>i386:x86-64</architecture><xi:include href="i386-64bit.xml"/></target>"#;
    const CORE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.i386.core">
  <flags id="x64_eflags" size="4"><field name="ID" start="21" end="21"/></flags>
  <reg name="rax" bitsize="64" type="int64" regnum="0"/>
  <reg name="rbx" bitsize="64" type="int64"/>
  <reg name="eflags" bitsize="32" type="x64_eflags"/>
  <reg name="cs" bitsize="32" type="int32"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="cr3" bitsize="64" type="x64_cr3"/>
  <reg name="st0" bitsize="80" type="i387_ext"/>
  <reg name="fctrl" bitsize="32" type="int" group="float"/>
</feature>"#;

    #[test]
    fn regmap_from_xml() {
        let mut m = RegMap::default();
        assert_eq!(m.add_xml(TARGET).unwrap(), vec!["i386-64bit.xml"]);
        assert!(m.add_xml(CORE).unwrap().is_empty());
        m.finish();
        let cs = m.get("cs").unwrap();
        assert_eq!((cs.regnum, cs.offset, cs.size), (3, 20, 4));
        let fctrl = m.get("fctrl").unwrap();
        assert_eq!((fctrl.regnum, fctrl.offset), (7, 24 + 8 + 8 + 10));
        let g = decode_hex("0100000000000000ffffffffffffffff46020000").unwrap();
        assert_eq!(m.value(&g, "rax"), Some(1));
        assert_eq!(m.value(&g, "eflags"), Some(0x246));
        assert_eq!(m.value(&g, "cs"), None);
    }

    #[test]
    fn stop_replies() {
        let r = parse_stop_reply("T05thread:p01.02;watch:ffffffff946079c0;").unwrap();
        assert_eq!(r.signal, 5);
        assert_eq!(r.thread.as_deref(), Some("p01.02"));
        assert_eq!(r.watch, Some(("watch".into(), 0xffffffff946079c0)));
        assert!(is_stop_reply("T02thread:01;"));
        assert!(!is_stop_reply("OK"));
        assert!(!is_stop_reply("E22"));
        assert!(matches!(
            parse_stop_reply("W00"),
            Err(QemuError::Disconnected { .. })
        ));
        assert_eq!(encode_le(0x1234, 4), "34120000");
        assert_eq!(decode_hex("xx01"), Some(vec![0, 1]));
    }

    #[test]
    fn chardev_filenames() {
        assert_eq!(
            GdbAddress::from_chardev_filename("disconnected:unix:/tmp/g.sock,server=on"),
            Some(GdbAddress::Unix("/tmp/g.sock".into()))
        );
        assert_eq!(
            GdbAddress::from_chardev_filename("disconnected:tcp:0.0.0.0:1234,server=on"),
            Some(GdbAddress::Tcp("127.0.0.1:1234".into()))
        );
        assert_eq!(GdbAddress::from_chardev_filename("file"), None);
    }

    /// Seeded, bounded fuzz of the XML and stop-reply parsers: no panic.
    #[test]
    fn fuzz_mutations_do_not_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6764_6273);
        for _ in 0..2000 {
            let mut b = CORE.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..b.len());
                b[i] = {
                    let a = b"<>/=\"0123456789 abcdefghijklmnopqrstuvwxyz";
                    a[rng.gen_range(0..a.len())]
                };
            }
            let mut m = RegMap::default();
            let _ = m.add_xml(&String::from_utf8_lossy(&b));
            m.finish();
            let mut s = b"T05thread:p01.02;watch:ffff;hwbreak:;".to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..s.len());
                s[i] = rng.r#gen::<u8>() & 0x7f;
            }
            let _ = parse_stop_reply(&String::from_utf8_lossy(&s));
            let _ = decode_hex(&String::from_utf8_lossy(&s));
        }
    }
}
