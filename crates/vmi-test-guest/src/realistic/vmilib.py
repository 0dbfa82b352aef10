"""Helpers shared by the realistic guest's Python workload: ctypes for what Python lacks.

Every workload process sets itself up, calls ready(NAME), then blocks in one system call
for good (accept, epoll_wait, read, pause, a futex): nothing runs periodically.
"""

import ctypes
import os
import signal

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

PR_SET_NAME = 15
PR_SET_VMA = 0x53564D41
PR_SET_VMA_ANON_NAME = 0
MAP_FAILED = 2**64 - 1


def check(rc, what):
    """Raise OSError with errno when a libc call returned -1."""
    if rc is None or rc == -1 or rc == MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def set_thread_name(name):
    """prctl(PR_SET_NAME): the calling thread's comm (at most 15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode())
    check(libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


def name_anon(addr, length, name):
    """Name an anonymous mapping ([anon:NAME] in maps). False on kernels without
    CONFIG_ANON_VMA_NAME (before 5.17, or not configured): EINVAL."""
    buf = ctypes.create_string_buffer(name.encode())
    rc = libc.prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, length, ctypes.addressof(buf))
    if rc == 0:
        return True
    if ctypes.get_errno() == 22:
        return False
    check(rc, "prctl(PR_SET_VMA)")
    return False


def ready(name):
    """Tell the truth printer this process is set up (the file appears atomically)."""
    path = f"/run/vmi/ready/{name}"
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(path + ".tmp", path)


def block_forever():
    """pause() for good (no signal handler is installed, so it never returns)."""
    while True:
        signal.pause()
