#!/usr/bin/python3
"""vmi_adversary: an unprivileged process that plants decoys for a VMI tool in its own
memory, then sleeps. Everything here is what any local user can do: an anonymous
mapping (named "vmi-arena" with PR_SET_VMA_ANON_NAME on 5.17+) filled with
  * VMCOREINFO blocks: plausible (the running release, shifted offsets), malformed,
    non-ASCII, and a thousand copies;
  * "Linux version" banners of other kernels;
  * BTF headers with hostile type graphs (structs whose anonymous members are of their
    own type) and string sections without NULs;
  * kallsyms-looking token tables and indexes;
  * pages that look like page tables (present entries pointing at each other);
  * Windows structures: MZ/PE headers, KDBG blocks, a PML4 with a self-reference.
The host's tests check that discovery still finds the real kernel and that every
command prints the same as without this process's decoys.
"""
import ctypes
import mmap
import os
import random
import signal
import struct
import sys

PAGE = 4096
PAGES = 2048  # 8 MiB
rng = random.Random(0x14)
release = os.uname().release


def vmcoreinfo(shift):
    return (
        f"OSRELEASE={release}\nBUILD-ID={rng.getrandbits(160):040x}\nPAGESIZE=4096\n"
        f"SYMBOL(init_uts_ns)={0xffffffff82a15000 + shift:x}\n"
        f"SYMBOL(swapper_pg_dir)={0xffffffff82a10000 + shift:x}\n"
        f"SYMBOL(_stext)={0xffffffff81000000 + shift:x}\n"
        f"NUMBER(phys_base)={rng.getrandbits(30) << 12}\n"
        f"NUMBER(pgtable_l5_enabled)=0\n"
        f"SYMBOL(kallsyms_names)={0xffffffff82175590 + shift:x}\n"
        f"SYMBOL(kallsyms_num_syms)={0xffffffff82175588 + shift:x}\n"
        f"KERNELOFFSET={shift:x}\n"
    ).encode()


MALFORMED = [
    "OSRELEASE=6.1.0\nPAGESIZE=4096\nKERNELOFFSET=1000000\nBUILD-ID=\u20aca\n".encode(),
    b"OSRELEASE=6.1.0\nKERNELOFFSET=zz\nSYMBOL(swapper_pg_dir)=-1\n",
    b"OSRELEASE=\xff\xfe\nBUILD-ID=abc\nNUMBER(phys_base)=99999999999999999999999\n",
    b"OSRELEASE=6.1.0\nKERNELOFFSET=ffffffffffffffff\nNUMBER(pgtable_l5_enabled)=7\n",
]
BANNERS = [
    b"Linux version 5.4.0-42-generic (buildd@lgw01-amd64) (gcc version 9.3.0) #46-Ubuntu SMP\n",
    ("Linux version " + release + " (decoy@example) #1 SMP PREEMPT_DYNAMIC\n").encode(),
    "Linux version \u20ac\u20ac\u20ac\n".encode(),
]


def btf_page():
    p = bytearray(PAGE)
    struct.pack_into("<HBBIIIII", p, 0, 0xEB9F, 1, 0, 24, 0, 2048, 2048, 2000)
    at = 24
    for t in range(1, 40):
        struct.pack_into("<III", p, at, 0, (4 << 24) | 2, 8)
        for m in range(2):
            struct.pack_into("<III", p, at + 12 + m * 12, 0, t, 0)
        at += 36
    p[2072:] = b"A" * (PAGE - 2072)
    return bytes(p)


def kallsyms_page():
    p = bytearray(PAGE)
    at, index = 0, []
    for t in range(256):
        index.append(at)
        tok = chr(ord("a") + t % 26) * (1 + t % 3)
        p[at:at + len(tok)] = tok.encode()
        at += len(tok) + 1
    at = (at + 7) & ~7
    for i, x in enumerate(index):
        struct.pack_into("<H", p, at + i * 2, x)
    return bytes(p)


def pagetable_page(self_index=None):
    p = bytearray(PAGE)
    for i in range(512):
        struct.pack_into("<Q", p, i * 8, (rng.getrandbits(16) << 12) | 0x67)
    if self_index is not None:
        struct.pack_into("<Q", p, self_index * 8, (rng.getrandbits(16) << 12) | 0x63)
    return bytes(p)


def windows_page():
    p = bytearray(PAGE)
    p[0:2] = b"MZ"
    struct.pack_into("<I", p, 0x3C, 0x80)
    p[0x80:0x86] = b"PE\0\0\x64\x86"
    p[0x410:0x414] = b"KDBG"
    struct.pack_into("<IQ", p, 0x414, 0x368, 0xFFFFF80000000000)
    return bytes(p)


def page_of(blob, at=0):
    p = bytearray(PAGE)
    p[at:at + len(blob)] = blob[: PAGE - at]
    return bytes(p)


def main():
    arena = mmap.mmap(-1, PAGES * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    libc = ctypes.CDLL(None, use_errno=True)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(arena))
    # prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, name): 5.17+, ignored before.
    libc.prctl(0x53564D41, 0, ctypes.c_ulong(addr), ctypes.c_ulong(PAGES * PAGE), b"vmi-arena")
    pages = []
    pages += [page_of(vmcoreinfo(rng.getrandbits(18) << 21)) for _ in range(1000)]
    pages += [page_of(rng.choice(MALFORMED), rng.randrange(0, 2048)) for _ in range(200)]
    pages += [page_of(b"".join(rng.choice(BANNERS) for _ in range(30))) for _ in range(100)]
    pages += [btf_page() for _ in range(100)]
    pages += [kallsyms_page() for _ in range(100)]
    pages += [pagetable_page(0x1ED if i % 2 else None) for i in range(200)]
    pages += [windows_page() for _ in range(100)]
    while len(pages) < PAGES:
        pages.append(bytes(rng.getrandbits(8) for _ in range(64)) * 64)
    for i, p in enumerate(pages[:PAGES]):
        arena[i * PAGE:(i + 1) * PAGE] = p
    print(f"vmi_adversary {os.getpid()} planted {PAGES} pages", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
