//! `cargo xtask hostile campaign`: the hostile-input campaign of issue 14.
//!
//! From one clean ELF dump of the test guest it makes
//! * **mutated dumps**: ELF header and program headers, the notes (VMCOREINFO values,
//!   note sizes), kernel structures (`task_struct`, `vm_area_struct`, `struct module`,
//!   the printk ring) and page-table entries (kernel and user), each mutation applied to
//!   the file, run, then undone;
//! * **hostile-guest variants**: decoys written only into the pages of an unprivileged
//!   process's own anonymous memory (the arena of the test guest's `vmi_adversary`, or
//!   any `[anon:vmi-arena]` VMA): VMCOREINFO blocks (plausible with other offsets,
//!   malformed, non-ASCII, thousands of copies), `Linux version` banners, BTF headers
//!   with hostile type graphs, kallsyms-like tables, page tables that look like a
//!   kernel's, Windows structures (`MZ`/`PE`, `KDBG`, self-referencing PML4s). An
//!   unprivileged user can write exactly these bytes, so for these variants every
//!   command must print what it printed on the clean dump.
//!
//! Each variant runs `info`, `ps`, `modules`, `maps PID`, `files PID` and `dmesg` of the
//! given `vmi` binary (`--json --no-cache`) under GNU `time` with a timeout, and counts
//! panics (exit 101 or "internal error"), time-outs, runs over the memory limit, and
//! outcomes (exit 0, 1, 3, 4). The report is `OUT/report.json` plus a summary on stdout.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// What the campaign runs.
pub struct Campaign {
    /// The clean ELF dump (copied into `out`, never modified).
    pub dump: PathBuf,
    /// The `vmi` binary to test.
    pub vmi: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Number of mutated dumps.
    pub mutations: usize,
    /// Number of hostile-guest (decoy) variants.
    pub variants: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// Wall-clock limit per command.
    pub timeout: Duration,
    /// Peak memory limit per command, in KiB.
    pub max_rss_kib: u64,
}

/// A small deterministic generator (xorshift64*), so that a seed reproduces a campaign.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// One `PT_LOAD`: file offset, physical address, size in the file.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    paddr: u64,
    filesz: u64,
}

/// What the campaign knows of the clean dump's layout.
struct Layout {
    phoff: u64,
    phnum: u64,
    notes: Vec<(u64, u64)>,
    loads: Vec<Load>,
}

fn u16_at(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}
fn u32_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[o..o + 4].try_into().unwrap()))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn parse_layout(head: &[u8]) -> Result<Layout> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 {
        bail!("not a 64-bit ELF dump");
    }
    let phoff = u64_at(head, 32);
    let phnum = u16_at(head, 56);
    let mut notes = Vec::new();
    let mut loads = Vec::new();
    for i in 0..phnum {
        let o = usize::try_from(phoff + i * 56)?;
        if o + 56 > head.len() {
            bail!("program headers beyond the first {} bytes", head.len());
        }
        let ty = u32_at(head, o);
        let offset = u64_at(head, o + 8);
        let paddr = u64_at(head, o + 24);
        let filesz = u64_at(head, o + 32);
        match ty {
            4 => notes.push((offset, filesz)),
            1 => loads.push(Load {
                offset,
                paddr,
                filesz,
            }),
            _ => {}
        }
    }
    Ok(Layout {
        phoff,
        phnum,
        notes,
        loads,
    })
}

impl Layout {
    /// The file offset of a physical address.
    fn file_offset(&self, pa: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| pa >= l.paddr && pa - l.paddr < l.filesz)
            .map(|l| l.offset + (pa - l.paddr))
    }
}

/// Physical addresses of kernel objects in the clean dump, found with our own library.
struct Objects {
    /// `(label, file offset, virtual address, size to mutate within)`.
    structs: Vec<(&'static str, u64, u64, u64)>,
    /// File offsets of page-table entries (kernel root and one user root, two levels).
    ptes: Vec<u64>,
    /// File offsets of the arena pages (the adversary's own anonymous memory).
    arena: Vec<u64>,
    /// The pids whose maps and files each variant lists.
    pids: Vec<u32>,
}

fn find_objects(dump: &Path, layout: &Layout) -> Result<Objects> {
    use vmi_core::{Va, VmiCore};
    use vmi_driver_dump::DumpDriver;
    use vmi_os_linux::LinuxOs;

    let driver = DumpDriver::open(dump).context("opening the clean dump")?;
    let note = driver.vmcoreinfo().map(str::to_owned);
    let core = VmiCore::new(driver)?;
    let mut b = LinuxOs::builder().no_cache();
    if let Some(n) = &note {
        b = b.vmcoreinfo(n.as_bytes());
    }
    let os = b.build(&core).context("the clean dump's kernel")?;
    let root = os.kernel().kernel_root;
    let to_file = |va: Va, root: vmi_core::Pa| -> Option<u64> {
        let pa = core.translate_address((va, root).into()).ok()?;
        layout.file_offset(pa.0)
    };
    let mut structs = Vec::new();
    let list = os.process_list(&core)?;
    let task_size = os.profile().size_of("task_struct").unwrap_or(0x1000);
    let mut user: Vec<_> = list
        .tasks
        .iter()
        .filter(|t| !t.is_kernel_thread())
        .collect();
    user.sort_by_key(|t| t.pid);
    for t in &list.tasks {
        if let Some(f) = to_file(t.task, root) {
            structs.push(("task_struct", f, t.task.0, task_size.min(0x2000)));
        }
    }
    let mut pids = Vec::new();
    let mut arena = Vec::new();
    let mut ptes = Vec::new();
    for t in &user {
        let Ok(vmas) = os.vmas(&core, t) else {
            continue;
        };
        let named_arena = vmas
            .vmas
            .iter()
            .any(|v| v.name.as_deref() == Some("[anon:vmi-arena]"));
        if t.comm == "vmi_mapper" || t.comm == "vmi_adversary" || named_arena {
            pids.push(t.pid);
        }
        for v in vmas.vmas.iter().take(64) {
            if let Some(f) = to_file(v.vma, root) {
                structs.push(("vm_area_struct", f, v.vma.0, 0xb8));
            }
        }
        let is_arena_owner = t.comm == "vmi_adversary" || named_arena;
        if is_arena_owner && let Some(uroot) = t.user_root {
            for v in vmas.vmas.iter().filter(|v| {
                v.file.is_none()
                    && (v.name.as_deref() == Some("[anon:vmi-arena]")
                        || (!named_arena && v.name.is_none()))
            }) {
                let mut va = v.start.0;
                while va < v.end.0 {
                    if let Some(f) = to_file(Va(va), uroot) {
                        arena.push(f);
                    }
                    va += 4096;
                }
            }
        }
        if ptes.len() < 512
            && let Some(uroot) = t.user_root
            && let Some(f) = layout.file_offset(uroot.0)
        {
            ptes.extend((0..256).map(|i| f + i * 8));
        }
    }
    if pids.is_empty() {
        pids.extend(user.iter().take(2).map(|t| t.pid));
    }
    if let Ok(m) = os.module_list(&core) {
        for m in &m.modules {
            if let Some(f) = to_file(m.module, root) {
                structs.push(("module", f, m.module.0, 0x400));
            }
        }
    }
    if let Some(prb) = os.symbol_address("prb")
        && let Ok(p) = core.read_u64((prb, root))
        && let Some(f) = to_file(Va(p), root)
    {
        structs.push(("printk_ringbuffer", f, p, 0x80));
    }
    if let Some(f) = layout.file_offset(root.0) {
        ptes.extend((0..512).map(|i| f + i * 8));
        // One level down: the first present entries of the kernel half.
        let mut file = File::open(dump)?;
        for i in 256..512u64 {
            let mut e = [0u8; 8];
            file.seek(SeekFrom::Start(f + i * 8))?;
            file.read_exact(&mut e)?;
            let e = u64::from_le_bytes(e);
            if e & 1 == 1
                && let Some(next) = layout.file_offset(e & 0x000f_ffff_ffff_f000)
            {
                ptes.extend((0..512).map(|j| next + j * 8));
                if ptes.len() > 4096 {
                    break;
                }
            }
        }
    }
    Ok(Objects {
        structs,
        ptes,
        arena,
        pids,
    })
}

/// One patch: bytes written at a file offset (the old bytes are kept to undo it).
struct Patch {
    offset: u64,
    bytes: Vec<u8>,
}

/// A mutated dump: what was done, and the patches.
struct Mutation {
    kind: &'static str,
    what: String,
    patches: Vec<Patch>,
}

fn word(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn mutate(rng: &mut Rng, layout: &Layout, objects: &Objects, file_len: u64, i: usize) -> Mutation {
    let values = |rng: &mut Rng, self_va: u64| -> u64 {
        match rng.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => self_va,
            3 => self_va.wrapping_add(1),
            4 => 0xffff_ffff_ffff_f000,
            5 => 0x4141_4141_4141_4141,
            6 => rng.next(),
            _ => self_va ^ (1 << rng.below(48)),
        }
    };
    match i % 4 {
        0 => {
            // ELF header or program headers.
            let (offset, bytes, what) = match rng.below(6) {
                0 => (56, vec![0xff, 0xff], "e_phnum = 65535".to_owned()),
                1 => {
                    let ph = rng.below(layout.phnum.max(1));
                    (
                        layout.phoff + ph * 56 + 32,
                        word(u64::MAX - rng.below(4096)),
                        format!("p_filesz of phdr {ph} huge"),
                    )
                }
                2 => {
                    let ph = rng.below(layout.phnum.max(1));
                    (
                        layout.phoff + ph * 56 + 8,
                        word(file_len + rng.below(1 << 40)),
                        format!("p_offset of phdr {ph} past the file"),
                    )
                }
                3 => {
                    let ph = rng.below(layout.phnum.max(1));
                    (
                        layout.phoff + ph * 56 + 24,
                        word(rng.next()),
                        format!("p_paddr of phdr {ph} random"),
                    )
                }
                4 => (
                    32,
                    word(rng.below(file_len * 2)),
                    "e_phoff random".to_owned(),
                ),
                _ => {
                    let o = rng.below(64 + layout.phnum * 56);
                    let o = if o < 64 { o } else { layout.phoff + o - 64 };
                    (
                        o,
                        vec![rng.next() as u8],
                        format!("byte {o:#x} of the headers"),
                    )
                }
            };
            Mutation {
                kind: "header",
                what,
                patches: vec![Patch { offset, bytes }],
            }
        }
        1 if !layout.notes.is_empty() => {
            let &(off, size) = rng.pick(&layout.notes);
            let (offset, bytes, what) = match rng.below(4) {
                0 => (
                    off + rng.below(size.max(1)),
                    vec![rng.next() as u8],
                    "a byte of the notes".to_owned(),
                ),
                1 => (
                    off,
                    word(rng.next()),
                    "namesz/descsz of the first note".to_owned(),
                ),
                2 => {
                    let at = off + rng.below(size.max(8)) / 4 * 4;
                    (
                        at,
                        (rng.next() as u32).to_le_bytes().to_vec(),
                        format!("a note size word at {at:#x}"),
                    )
                }
                _ => {
                    let garbage: &[&[u8]] = &[
                        b"\xe2\x82\xac",
                        b"zz",
                        b"-1",
                        b"ffffffffffffffff0",
                        b"\n\n",
                        b"\0",
                    ];
                    let g = rng.pick(garbage);
                    (
                        off + rng.below(size.max(1)),
                        g.to_vec(),
                        format!("{:?} in the notes", String::from_utf8_lossy(g)),
                    )
                }
            };
            Mutation {
                kind: "note",
                what,
                patches: vec![Patch { offset, bytes }],
            }
        }
        2 if !objects.structs.is_empty() => {
            let &(label, f, va, size) = rng.pick(&objects.structs);
            let field = rng.below(size / 8) * 8;
            let v = values(rng, va);
            Mutation {
                kind: "kernel-struct",
                what: format!("{label} at {va:#x} + {field:#x} = {v:#x}"),
                patches: vec![Patch {
                    offset: f + field,
                    bytes: word(v),
                }],
            }
        }
        _ if !objects.ptes.is_empty() => {
            let &f = rng.pick(&objects.ptes);
            let v = match rng.below(5) {
                0 => 0,
                1 => rng.next() | 1,
                2 => (f & !0xfff) | 0x63, // points back at its own table
                3 => 0x80 | 0x63 | (rng.next() & 0x000f_ffff_ffe0_0000), // a large page
                _ => (rng.next() & 0x000f_ffff_ffff_f000) | 0x67,
            };
            Mutation {
                kind: "page-table",
                what: format!("entry at file {f:#x} = {v:#x}"),
                patches: vec![Patch {
                    offset: f,
                    bytes: word(v),
                }],
            }
        }
        _ => Mutation {
            kind: "header",
            what: "byte 5 (data encoding)".into(),
            patches: vec![Patch {
                offset: 5,
                bytes: vec![2],
            }],
        },
    }
}

/// Decoy pages an unprivileged process can write into its own memory.
fn decoy(rng: &mut Rng, kind: u64, real_vmcoreinfo: &str) -> (String, Vec<u8>) {
    let mut page = vec![0u8; 4096];
    let put = |page: &mut Vec<u8>, at: usize, b: &[u8]| {
        let end = (at + b.len()).min(page.len());
        page[at..end].copy_from_slice(&b[..end - at]);
    };
    match kind % 8 {
        0 => {
            // A plausible VMCOREINFO with other offsets (and maybe another release).
            let mut text = String::new();
            for line in real_vmcoreinfo.lines() {
                if let Some((k, v)) = line.split_once('=') {
                    let v = if k.starts_with("SYMBOL(") || k == "KERNELOFFSET" {
                        format!(
                            "{:x}",
                            u64::from_str_radix(v, 16).unwrap_or(0) ^ (rng.below(1 << 20) << 12)
                        )
                    } else if k == "OSRELEASE" && rng.below(2) == 0 {
                        "5.4.0-42-generic".into()
                    } else {
                        v.to_owned()
                    };
                    text.push_str(&format!("{k}={v}\n"));
                }
            }
            put(&mut page, 0, text.as_bytes());
            ("vmcoreinfo-plausible".into(), page)
        }
        1 => {
            let bad: &[&str] = &[
                "OSRELEASE=6.1.0\nPAGESIZE=4096\nKERNELOFFSET=1000000\nBUILD-ID=\u{20ac}a\n",
                "OSRELEASE=6.1.0\nKERNELOFFSET=zz\nSYMBOL(swapper_pg_dir)=-1\n",
                "OSRELEASE=\u{ff}\u{fe}\nBUILD-ID=abc\nNUMBER(phys_base)=99999999999999999999999\n",
                "OSRELEASE=6.1.0\nKERNELOFFSET=ffffffffffffffff\nNUMBER(pgtable_l5_enabled)=7\n",
            ];
            put(
                &mut page,
                rng.below(2048) as usize,
                rng.pick(bad).as_bytes(),
            );
            ("vmcoreinfo-malformed".into(), page)
        }
        2 => {
            let banners: &[&str] = &[
                "Linux version 5.4.0-42-generic (buildd@lgw01-amd64) (gcc version 9.3.0) #46-Ubuntu SMP Fri Jul 10 00:24:02 UTC 2020\n",
                "Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.0 (decoy)\n",
                "Linux version \u{20ac}\u{20ac}\u{20ac}\n",
            ];
            let mut at = 0;
            while at + 200 < 4096 {
                put(&mut page, at, rng.pick(banners).as_bytes());
                at += 256;
            }
            ("banners".into(), page)
        }
        3 => {
            // A BTF header whose type section is a graph of structs with anonymous
            // members of their own type, and strings without NULs.
            put(&mut page, 0, &[0x9f, 0xeb, 1, 0]);
            put(&mut page, 4, &24u32.to_le_bytes()); // hdr_len
            put(&mut page, 8, &0u32.to_le_bytes()); // type_off
            put(&mut page, 12, &2048u32.to_le_bytes()); // type_len
            put(&mut page, 16, &2048u32.to_le_bytes()); // str_off
            put(&mut page, 20, &2000u32.to_le_bytes()); // str_len
            let mut at = 24;
            for t in 1..40u32 {
                // struct, vlen 2, both members anonymous of type t (itself).
                put(&mut page, at, &0u32.to_le_bytes());
                put(&mut page, at + 4, &((4u32 << 24) | 2).to_le_bytes());
                put(&mut page, at + 8, &8u32.to_le_bytes());
                for m in 0..2usize {
                    put(&mut page, at + 12 + m * 12, &0u32.to_le_bytes());
                    put(&mut page, at + 16 + m * 12, &t.to_le_bytes());
                    put(&mut page, at + 20 + m * 12, &0u32.to_le_bytes());
                }
                at += 36;
            }
            for b in page.iter_mut().skip(2072) {
                *b = b'A';
            }
            ("btf-hostile".into(), page)
        }
        4 => {
            // A kallsyms-like token table (256 NUL-terminated tokens) and index.
            let mut at = 0usize;
            let mut index = Vec::new();
            for t in 0..256u32 {
                index.push(at as u16);
                let tok =
                    format!("{}", char::from(b'a' + (t % 26) as u8)).repeat(1 + (t as usize % 3));
                put(&mut page, at, tok.as_bytes());
                at += tok.len() + 1;
            }
            let at = (at + 7) & !7;
            for (i, x) in index.iter().enumerate() {
                put(&mut page, at + i * 2, &x.to_le_bytes());
            }
            ("kallsyms-like".into(), page)
        }
        5 => {
            // A page of page-table entries: present, pointing at each other and at
            // themselves, with the self-reference slot a Windows PML4 uses.
            for i in 0..512usize {
                let e = (rng.below(1 << 16) << 12) | 0x67;
                put(&mut page, i * 8, &e.to_le_bytes());
            }
            ("page-table-like".into(), page)
        }
        6 => {
            // Windows: MZ/PE headers and a KDBG block.
            put(&mut page, 0, b"MZ");
            put(&mut page, 0x3c, &0x80u32.to_le_bytes());
            put(&mut page, 0x80, b"PE\0\0\x64\x86");
            put(&mut page, 0x400, &[0u8; 16]);
            put(&mut page, 0x410, b"KDBG");
            put(&mut page, 0x414, &0x368u32.to_le_bytes());
            put(&mut page, 0x418, &0xffff_f800_0000_0000u64.to_le_bytes());
            ("windows-like".into(), page)
        }
        _ => {
            // Random bytes.
            for b in page.iter_mut() {
                *b = rng.next() as u8;
            }
            ("random".into(), page)
        }
    }
}

/// The outcome of one command run.
#[derive(Clone, Debug)]
struct Run {
    code: Option<i32>,
    seconds: f64,
    rss_kib: u64,
    timed_out: bool,
    panicked: bool,
    stdout: String,
    stderr_head: String,
}

fn run_vmi(c: &Campaign, dump: &Path, args: &[String]) -> Result<Run> {
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("VMI-TIME %M %e")
        .arg(&c.vmi)
        .arg("--target")
        .arg(dump)
        .arg("--json")
        .arg("--no-cache")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running vmi under /usr/bin/time (apt-get install time)")?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > c.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    let mut rss_kib = 0;
    let mut code = status.code();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("VMI-TIME ") {
            rss_kib = rest
                .split(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        // GNU time reports the child's exit status itself when it was non-zero.
        if let Some(rest) = line.strip_prefix("Command exited with non-zero status ") {
            code = rest.trim().parse().ok();
        }
    }
    let panicked = code == Some(101) || stderr.contains("internal error in vmi");
    Ok(Run {
        code,
        seconds: started.elapsed().as_secs_f64(),
        rss_kib,
        timed_out,
        panicked,
        stdout,
        stderr_head: stderr
            .lines()
            .filter(|l| !l.starts_with("VMI-TIME"))
            .take(3)
            .collect::<Vec<_>>()
            .join(" | "),
    })
}

fn commands(pids: &[u32]) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = vec![
        vec!["info".into()],
        vec!["ps".into()],
        vec!["modules".into()],
        vec!["dmesg".into()],
    ];
    for p in pids {
        v.push(vec!["maps".into(), p.to_string()]);
        v.push(vec!["files".into(), p.to_string()]);
    }
    v
}

fn apply(file: &mut File, patches: &[Patch]) -> Result<Vec<Patch>> {
    let len = file.metadata()?.len();
    let mut undo = Vec::new();
    for p in patches {
        if p.offset >= len {
            continue;
        }
        let n = (p.bytes.len() as u64).min(len - p.offset) as usize;
        let mut old = vec![0u8; n];
        file.seek(SeekFrom::Start(p.offset))?;
        file.read_exact(&mut old)?;
        file.seek(SeekFrom::Start(p.offset))?;
        file.write_all(&p.bytes[..n])?;
        undo.push(Patch {
            offset: p.offset,
            bytes: old,
        });
    }
    undo.reverse();
    Ok(undo)
}

/// Statistics of a set of runs.
#[derive(Default)]
struct Stats {
    runs: usize,
    panics: usize,
    timeouts: usize,
    over_memory: usize,
    by_code: BTreeMap<String, usize>,
    max_seconds: f64,
    max_rss_kib: u64,
    mismatches: usize,
    failures: Vec<Value>,
}

impl Stats {
    fn add(&mut self, c: &Campaign, label: &str, args: &[String], r: &Run) {
        self.runs += 1;
        *self
            .by_code
            .entry(r.code.map_or("signal".into(), |c| c.to_string()))
            .or_default() += 1;
        self.max_seconds = self.max_seconds.max(r.seconds);
        self.max_rss_kib = self.max_rss_kib.max(r.rss_kib);
        let bad = if r.panicked {
            self.panics += 1;
            Some("panic")
        } else if r.timed_out {
            self.timeouts += 1;
            Some("timeout")
        } else if r.rss_kib > c.max_rss_kib {
            self.over_memory += 1;
            Some("memory")
        } else {
            None
        };
        if let Some(why) = bad {
            self.failures.push(
                json!({"variant": label, "command": args.join(" "), "why": why,
                "seconds": r.seconds, "rss_kib": r.rss_kib, "stderr": r.stderr_head}),
            );
        }
    }
    fn json(&self) -> Value {
        json!({"runs": self.runs, "panics": self.panics, "timeouts": self.timeouts,
               "over_memory": self.over_memory, "exit_codes": self.by_code,
               "max_seconds": self.max_seconds, "max_rss_kib": self.max_rss_kib,
               "decoy_mismatches": self.mismatches, "failures": self.failures})
    }
}

/// Runs the campaign; `Ok(true)` when no run panicked, hung, blew the memory limit or
/// (for decoy variants) printed something other than the clean dump's output.
pub fn run(c: &Campaign) -> Result<bool> {
    fs::create_dir_all(&c.out)?;
    let work = c.out.join("work.elf");
    fs::copy(&c.dump, &work).context("copying the dump")?;
    let mut perm = fs::metadata(&work)?.permissions();
    #[allow(clippy::permissions_set_readonly_false)] // the work copy is ours to patch
    perm.set_readonly(false);
    fs::set_permissions(&work, perm)?;
    let mut head = vec![0u8; 1 << 16];
    let n = File::open(&work)?.read(&mut head)?;
    head.truncate(n);
    let layout = parse_layout(&head)?;
    let objects = find_objects(&work, &layout)?;
    let note = {
        let d = vmi_driver_dump::DumpDriver::open(&work)?;
        d.vmcoreinfo().map(str::to_owned).unwrap_or_default()
    };
    eprintln!(
        "[hostile] {} kernel objects, {} page-table entries, {} arena pages, pids {:?}",
        objects.structs.len(),
        objects.ptes.len(),
        objects.arena.len(),
        objects.pids
    );
    let cmds = commands(&objects.pids);
    // The clean baseline.
    let mut baseline = Vec::new();
    for a in &cmds {
        let r = run_vmi(c, &work, a)?;
        if r.code != Some(0) {
            bail!("the clean dump fails `{}`: {}", a.join(" "), r.stderr_head);
        }
        baseline.push(r.stdout);
    }
    let mut rng = Rng(c.seed | 1);
    let mut file = OpenOptions::new().read(true).write(true).open(&work)?;
    let len = file.metadata()?.len();
    let started = Instant::now();
    let mut decoys = Stats::default();
    if c.variants > 0 && objects.arena.is_empty() {
        bail!(
            "no arena pages (no vmi_adversary process or [anon:vmi-arena] VMA in the dump): cannot run decoy variants"
        );
    }
    let mut decoy_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for v in 0..c.variants {
        // Each variant fills the arena with one or several decoy kinds (and, every
        // eighth variant, thousands of copies of a plausible VMCOREINFO).
        let mut patches = Vec::new();
        let kinds = 1 + rng.below(3);
        let mut names = Vec::new();
        for (j, &page) in objects.arena.iter().enumerate() {
            let kind = if v % 8 == 7 {
                0
            } else {
                (v as u64 + j as u64 % kinds) % 8
            };
            let (name, bytes) = decoy(&mut rng, kind, &note);
            if !names.contains(&name) {
                names.push(name);
            }
            patches.push(Patch {
                offset: page,
                bytes,
            });
        }
        for n in &names {
            *decoy_kinds.entry(n.clone()).or_default() += 1;
        }
        let undo = apply(&mut file, &patches)?;
        file.sync_data()?;
        let label = format!("decoy variant {v}: {}", names.join("+"));
        for (a, want) in cmds.iter().zip(&baseline) {
            let r = run_vmi(c, &work, a)?;
            decoys.add(c, &label, a, &r);
            if !r.panicked && !r.timed_out && &r.stdout != want {
                decoys.mismatches += 1;
                decoys.failures.push(json!({"variant": label, "command": a.join(" "), "why": "output differs from the clean dump",
                    "code": r.code, "stderr": r.stderr_head}));
            }
        }
        apply(&mut file, &undo)?;
    }
    let mut by_kind: BTreeMap<&'static str, Stats> = BTreeMap::new();
    for i in 0..c.mutations {
        let m = mutate(&mut rng, &layout, &objects, len, i);
        let undo = apply(&mut file, &m.patches)?;
        file.sync_data()?;
        let label = format!("mutation {i}: {} {}", m.kind, m.what);
        let stats = by_kind.entry(m.kind).or_default();
        for a in &cmds {
            let r = run_vmi(c, &work, a)?;
            stats.add(c, &label, a, &r);
        }
        apply(&mut file, &undo)?;
        if i % 50 == 49 {
            eprintln!("[hostile] {} mutations in {:?}", i + 1, started.elapsed());
            // A partial report, so that a long campaign can be read while it runs.
            let kinds: serde_json::Map<String, Value> = by_kind
                .iter()
                .map(|(k, s)| ((*k).to_owned(), s.json()))
                .collect();
            let partial = json!({"mutations_done": i + 1, "elapsed_seconds": started.elapsed().as_secs_f64(),
                                 "mutated": kinds});
            fs::write(
                c.out.join("partial.json"),
                serde_json::to_string_pretty(&partial)?,
            )?;
        }
    }
    drop(file);
    let _ = fs::remove_file(&work);
    let mut ok = decoys.panics + decoys.timeouts + decoys.over_memory + decoys.mismatches == 0;
    let mut kinds = serde_json::Map::new();
    for (k, s) in &by_kind {
        ok &= s.panics + s.timeouts + s.over_memory == 0;
        kinds.insert((*k).to_owned(), s.json());
    }
    let report = json!({
        "dump": c.dump.display().to_string(),
        "dump_bytes": len,
        "seed": c.seed,
        "mutations": c.mutations,
        "variants": c.variants,
        "commands_per_variant": cmds.len(),
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "mutated": kinds,
        "decoys": decoys.json(),
        "decoy_kinds": decoy_kinds,
        "pass": ok,
    });
    fs::write(
        c.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ok)
}
