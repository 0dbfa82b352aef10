//! `unsafe` for a shared mapping of the guest RAM file, the peer credentials of the QMP
//! socket and the effective uid (the guard process has its own, in `watchdog.rs`).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use memmap2::{MmapOptions, MmapRaw};

/// A `MAP_SHARED` mapping of (a prefix of) a guest RAM file.
///
/// Guest vCPUs (in another process) write this memory at any time, so the type never
/// hands out references into it: bytes are copied into or out of caller buffers.
#[derive(Debug)]
pub(crate) struct SharedMap {
    map: MmapRaw,
    len: usize,
    writable: bool,
}

impl SharedMap {
    /// Maps the first `len` bytes of `file` shared; read-write when `writable`.
    pub(crate) fn new(file: &File, len: usize, writable: bool) -> std::io::Result<Self> {
        let mut opts = MmapOptions::new();
        opts.len(len);
        let map = if writable {
            opts.map_raw(file)?
        } else {
            opts.map_raw_read_only(file)?
        };
        Ok(Self { map, len, writable })
    }

    /// Whether writes are possible.
    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`. `false` when out of bounds.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(buf.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY:
        // - source: `self.map` is a live mapping of `self.len` bytes (it is unmapped only
        //   when `self` drops, and `&self` keeps it alive for this call), and
        //   `offset + buf.len() <= self.len` was checked above, so the whole source range
        //   lies inside the mapping; the file was at least `self.len` bytes long when it
        //   was mapped and QEMU never shrinks a RAM backend while the VM exists.
        // - destination: `buf` is an exclusive Rust slice of exactly `buf.len()` bytes.
        // - no overlap: `buf` is Rust-owned memory, the source is the file mapping.
        // - the source is never a Rust object: no `&`/`&mut` into the mapping exists, so
        //   concurrent writes by guest vCPUs (another process) can at worst make the copy
        //   see a mix of old and new bytes, which is what a live-memory read means; `u8`
        //   has no invalid bit patterns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        true
    }

    /// Copies `data` into the mapping at `offset`. `false` when out of bounds or read-only.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> bool {
        if !self.writable {
            return false;
        }
        let Some(end) = offset.checked_add(data.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY:
        // - destination: inside the live, writable (`PROT_WRITE`, `self.writable`) mapping
        //   of `self.len` bytes, bounds checked above; writing guest RAM is the point of
        //   this call and no Rust reference into the mapping exists that could observe it.
        // - source: `data` is a valid Rust slice of `data.len()` bytes.
        // - no overlap: `data` is Rust memory, the destination is the file mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                data.len(),
            );
        }
        true
    }
}

/// Process and user id of the peer of a connected unix socket (`SO_PEERCRED`).
pub(crate) fn peer_cred(stream: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY:
    // - `stream.as_raw_fd()` is an open socket for the duration of the call (borrowed).
    // - `optval` points to a live, writable `ucred` and `optlen` holds its exact size, so
    //   the kernel writes at most `size_of::<ucred>()` bytes into it and updates `len`.
    // - both pointers are to distinct stack locals that outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: `geteuid` takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}

/// Most pieces per `process_vm_readv` call (the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

/// Reads `pieces` (an address in process `pid`, a buffer) with one `process_vm_readv`
/// call per [`MAX_IOV`] pieces. Returns how many pieces, from the first, were read
/// completely: the kernel stops at the first remote range it cannot read, and a
/// failed call (no rights, the process gone) reads none. The caller reads the rest one
/// by one to learn why.
pub(crate) fn process_vm_read(pid: u32, pieces: &mut [(u64, &mut [u8])]) -> usize {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return 0;
    };
    let mut done = 0;
    for batch in pieces.chunks_mut(MAX_IOV) {
        let mut local = Vec::with_capacity(batch.len());
        let mut remote = Vec::with_capacity(batch.len());
        for (addr, buf) in batch.iter_mut() {
            let Ok(base) = usize::try_from(*addr) else {
                return done;
            };
            local.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            });
            remote.push(libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: buf.len(),
            });
        }
        // SAFETY:
        // - `local` holds, for each piece, the pointer and length of an exclusive Rust
        //   slice (`&mut [u8]` borrowed from `batch` for this whole function); the kernel
        //   writes at most `iov_len` bytes through each, into memory nothing else reads or
        //   writes during the call; `u8` has no invalid bit patterns.
        // - `remote` holds addresses in *another* process; the kernel checks them against
        //   that process's mappings and reports a bad one as a short read or `EFAULT`,
        //   never touching our memory through them.
        // - both arrays live until the call returns, and their lengths (at most
        //   `MAX_IOV`) are passed as they are.
        let n = unsafe {
            libc::process_vm_readv(
                pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        let Ok(mut left) = usize::try_from(n) else {
            return done; // -1: nothing read
        };
        // Pieces complete in order: count those the returned byte count covers.
        for (_, buf) in batch.iter() {
            if left < buf.len() {
                return done;
            }
            left -= buf.len();
            done += 1;
        }
    }
    done
}

/// The real uid of process `pid` (`/proc/<pid>/status`).
pub(crate) fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Whether process `pid` is the QEMU that libvirt started for domain `name`: libvirt
/// names it with `-name guest=NAME,...` (commas in NAME doubled, QEMU's escaping).
pub(crate) fn is_libvirt_qemu(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = format!("guest={}", name.replace(',', ",,"));
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(a) = args.next() {
        if a == b"-name"
            && let Some(v) = args.next()
            && let Some(rest) = v.strip_prefix(want.as_bytes())
            && (rest.is_empty() || (rest[0] == b',' && rest.get(1) != Some(&b',')))
        {
            return true;
        }
    }
    false
}
