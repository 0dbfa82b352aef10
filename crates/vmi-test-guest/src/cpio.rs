//! A writer for the `newc` cpio format (what the Linux initramfs unpacker reads).
//!
//! Each entry is a 110-byte ASCII header (`070701` + 13 eight-digit hex fields: ino, mode,
//! uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize,
//! check), the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes.
//! Hard links share one inode number; as in GNU cpio, only the last entry of a link group
//! carries the data (the kernel opens later links without truncating). The archive ends
//! with a `TRAILER!!!` entry. Owners are root, mtimes 0: the output is reproducible.

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone)]
enum Body {
    Dir,
    File(Vec<u8>),
    Links(Vec<String>, Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    perm: u32,
    body: Body,
}

/// An in-memory newc archive under construction; entries are written in insertion order
/// (add parent directories before their contents).
#[derive(Debug, Clone, Default)]
pub struct CpioBuilder {
    entries: Vec<Entry>,
}

impl CpioBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a directory (`perm` like `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> &mut Self {
        self.push(path, perm, Body::Dir)
    }

    /// Add a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.push(path, perm, Body::File(data.into()))
    }

    /// Add one regular file under several names (hard links sharing one inode).
    pub fn hard_linked(
        &mut self,
        paths: &[&str],
        perm: u32,
        data: impl Into<Vec<u8>>,
    ) -> &mut Self {
        match paths {
            [] => self,
            [one] => self.file(one, perm, data),
            [first, ..] => {
                let names = paths.iter().map(|p| (*p).to_owned()).collect();
                self.push(first, perm, Body::Links(names, data.into()))
            }
        }
    }

    /// Add a symbolic link `path -> target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.push(path, 0o777, Body::Symlink(target.to_owned()))
    }

    /// Add a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.push(path, perm, Body::CharDev(major, minor))
    }

    fn push(&mut self, path: &str, perm: u32, body: Body) -> &mut Self {
        let path = path.trim_start_matches('/').to_owned();
        self.entries.push(Entry {
            path,
            perm: perm & 0o7777,
            body,
        });
        self
    }

    /// Serialise the archive (including the trailer).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ino = 0u32;
        for e in &self.entries {
            ino += 1;
            match &e.body {
                Body::Dir => header(&mut out, ino, S_IFDIR | e.perm, 2, &e.path, b"", (0, 0)),
                Body::File(d) => header(&mut out, ino, S_IFREG | e.perm, 1, &e.path, d, (0, 0)),
                Body::Symlink(t) => header(
                    &mut out,
                    ino,
                    S_IFLNK | e.perm,
                    1,
                    &e.path,
                    t.as_bytes(),
                    (0, 0),
                ),
                Body::CharDev(ma, mi) => {
                    header(&mut out, ino, S_IFCHR | e.perm, 1, &e.path, b"", (*ma, *mi))
                }
                Body::Links(names, d) => {
                    let nlink = u32::try_from(names.len()).unwrap_or(u32::MAX);
                    for (i, name) in names.iter().enumerate() {
                        let last = i + 1 == names.len();
                        let data: &[u8] = if last { d } else { b"" };
                        let name = name.trim_start_matches('/');
                        header(&mut out, ino, S_IFREG | e.perm, nlink, name, data, (0, 0));
                    }
                }
            }
        }
        header(&mut out, 0, 0, 1, "TRAILER!!!", b"", (0, 0));
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).unwrap_or(u32::MAX),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal newc reader for the tests: (name, ino, mode, nlink, rdev, data).
    type Parsed = (String, u32, u32, u32, (u32, u32), Vec<u8>);

    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let mut v = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (ino, mode, nlink, size, rma, rmi, nsz) =
                (f(0), f(1), f(4), f(6), f(9), f(10), f(11));
            let name = std::str::from_utf8(&b[110..110 + nsz as usize - 1])
                .unwrap()
                .to_owned();
            let mut off = (110 + nsz as usize).next_multiple_of(4);
            let data = b[off..off + size as usize].to_vec();
            off = (off + size as usize).next_multiple_of(4);
            b = &b[off..];
            assert_eq!((total - b.len()) % 4, 0);
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return v;
            }
            v.push((name, ino, mode, nlink, (rma, rmi), data));
        }
    }

    #[test]
    fn golden_single_file() {
        let mut c = CpioBuilder::new();
        c.file("/a", 0o644, b"hi".to_vec());
        let bytes = c.to_bytes();
        let expected_header = "070701\
            00000001000081a4000000000000000000000001\
            00000000000000020000000000000000\
            000000000000000000000002\
            00000000";
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        assert_eq!(&bytes[110..112], b"a\0");
        // name "a\0" padded to 112, data "hi" padded to 116, then the trailer
        assert_eq!(&bytes[112..116], b"hi\0\0");
        assert_eq!(&bytes[116..122], b"070701");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn hard_links_share_inode_and_data_on_last() {
        let mut c = CpioBuilder::new();
        c.dir("bin", 0o755)
            .hard_linked(
                &["bin/busybox", "bin/vmi_sleeper", "bin/vmi_child"],
                0o755,
                b"ELF!!".to_vec(),
            )
            .symlink("bin/sh", "busybox")
            .char_dev("dev/console", 0o600, 5, 1);
        let e = parse(&c.to_bytes());
        assert_eq!(e.len(), 6);
        assert_eq!(e[0].0, "bin");
        assert_eq!(e[0].2, 0o040755);
        let links = &e[1..4];
        assert!(
            links
                .iter()
                .all(|l| l.1 == links[0].1 && l.3 == 3 && l.2 == 0o100755)
        );
        assert_eq!(links[0].5, b"");
        assert_eq!(links[1].5, b"");
        assert_eq!(links[2].5, b"ELF!!");
        assert_eq!(
            (e[4].0.as_str(), e[4].2, e[4].5.as_slice()),
            ("bin/sh", 0o120777, b"busybox".as_slice())
        );
        assert_eq!((e[5].2, e[5].4), (0o020600, (5, 1)));
        assert_ne!(e[4].1, links[0].1);
    }
}
