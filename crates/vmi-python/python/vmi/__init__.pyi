"""Type stubs of the ``vmi`` package (the extension module ``vmi._vmi``)."""

import os as _os
from typing import Any, Iterator, Optional, Union

__version__: str

class VmiError(Exception):
    """Every error of the vmi package (the message is the one the vmi command prints)."""

class TargetError(VmiError):
    """The target cannot be opened, or its OS was not recognised."""

class NotSupportedError(VmiError):
    """The target, driver or OS layer does not support the operation."""

class NotFoundError(VmiError):
    """A process, symbol, type or field does not exist."""

class ReadError(VmiError):
    """Guest memory cannot be read: a page fault, a page absent from the dump."""

class IncompleteWarning(UserWarning):
    """Some objects of a listing could not be read (the listing holds every other one)."""

_Path = Union[str, "_os.PathLike[str]"]

def open(
    target: str,
    *,
    kernel: Optional[_Path] = None,
    system_map: Optional[_Path] = None,
    profile: Optional[_Path] = None,
    symbol_path: Optional[str] = None,
    no_cache: bool = False,
) -> Target:
    """Opens ``qemu:/path/qmp.sock``, ``libvirt:NAME`` (``libvirt+URI:NAME``), a dump
    file or ``xen:DOMID`` and recognises its OS.

    ``xen:DOMID`` (a Xen domain, from dom0 as root) needs a package built with the
    ``xen`` feature (``maturin build --features xen``, with libxen-dev and libclang);
    other builds raise ``NotSupportedError``.
    """

class Target:
    """A running QEMU or a memory dump."""

    @property
    def info(self) -> dict[str, Any]:
        """What ``vmi info --json`` shows (addresses as ``"0x…"`` strings)."""
    @property
    def os(self) -> Os:
        """The target's OS; raises ``TargetError`` when none was recognised."""
    @property
    def live(self) -> bool:
        """Whether the target is a running VM (not a dump)."""
    def read(
        self,
        address: int,
        size: int,
        pid: Optional[int] = None,
        phys: bool = False,
        partial: bool = False,
    ) -> bytes:
        """Reads ``size`` bytes (at most 16 MiB) at a kernel, process (``pid``) or
        physical (``phys=True``) address; ``partial=True`` returns the readable prefix."""
    def translate(self, va: int, pid: Optional[int] = None) -> dict[str, Any]:
        """The page-table walk of ``va``: ``pa``, ``page_size``, rights, ``levels``."""
    def symbol(self, name: str) -> int:
        """The run-time address of a kernel symbol."""
    def export_isf(self, path: Union[str, _os.PathLike[str]]) -> None:
        """Writes the profile as a Volatility 3 ISF (JSON), as ``vmi profile export``."""
    def object(self, type_name: str, address: int, pid: Optional[int] = None) -> Object:
        """The kernel object of struct/union ``type_name`` at ``address``."""
    def paused(self) -> Paused:
        """``with t.paused():`` keeps a live target paused in the block."""
    def trace(
        self,
        location: str,
        count: Optional[int] = 10,
        timeout: Optional[float] = None,
        software: bool = False,
    ) -> Trace:
        """Hits of a breakpoint on a kernel function of a live Linux target, as they come
        (dicts: ``hit``, ``pid``, ``comm``, ``rip``, ``args``...): until ``count`` hits
        (``None``: no limit), ``timeout`` s, Ctrl-C, ``close()`` or the iterator freed."""
    def close(self) -> None:
        """Detaches (frees a live QEMU's QMP socket); later calls raise ``VmiError``."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def __enter__(self) -> Target: ...
    def __exit__(self, *args: object) -> bool: ...

class Trace(Iterator[dict[str, Any]]):
    """The hits of ``Target.trace()``; its breakpoint stays armed until the iterator ends,
    is closed (``close()``, ``with``) or freed. A hit not yet taken holds the guest."""

    def __iter__(self) -> Trace: ...
    def __next__(self) -> dict[str, Any]: ...
    def close(self) -> None:
        """Removes the breakpoint; the iterator ends."""
    @property
    def armed(self) -> bool:
        """Whether the breakpoint is still in place."""
    def __enter__(self) -> Trace: ...
    def __exit__(self, *args: object) -> bool: ...

class Paused:
    """The context manager of ``Target.paused()``."""

    def __enter__(self) -> Paused: ...
    def __exit__(self, *args: object) -> bool: ...

class Os:
    """The OS of a target."""

    @property
    def name(self) -> str:
        """``"linux"`` or ``"windows"``."""
    def processes(self) -> list[Process]:
        """Every process, kernel threads included, as ``vmi ps --json``."""
    def process(self, pid: int) -> Process:
        """The process ``pid``; raises ``NotFoundError``."""
    def modules(self) -> list[Module]:
        """Loaded kernel modules or drivers."""
    def dmesg(self) -> list[str]:
        """The kernel log, one string per line."""

class Process:
    """A process (Linux thread-group leader, Windows EPROCESS)."""

    pid: int
    ppid: int
    name: str
    uid: Optional[int]
    gid: Optional[int]
    state: Optional[str]
    kernel_thread: bool
    task: int
    translation_root: Optional[int]
    start_time_ns: Optional[int]
    ns_pid: Optional[int]
    pid_ns: Optional[int]
    hostname: Optional[str]
    cmdline: str
    argv: list[str]
    errors: list[str]
    attributes: dict[str, Any]
    def maps(self) -> list[Region]:
        """Memory regions (VMAs, VADs), as ``vmi maps PID``."""
    def threads(self) -> list[Thread]:
        """Threads, as ``vmi threads PID``."""
    def files(self) -> list[File]:
        """Open files or handles, as ``vmi files PID``."""
    def env(self) -> list[tuple[str, Optional[str]]]:
        """Environment ``(name, value)`` pairs in the process's order."""

class Thread:
    """A thread."""

    tid: int
    pid: int
    name: Optional[str]
    state: Optional[str]
    task: int
    attributes: dict[str, Any]

class Region:
    """A memory region (Linux VMA, Windows VAD)."""

    start: int
    end: int
    perms: str
    offset: int
    flags: int
    path: Optional[str]
    name: Optional[str]
    object: int
    attributes: dict[str, Any]

class File:
    """An open file (Linux) or handle (Windows)."""

    fd: int
    path: Optional[str]
    error: Optional[str]
    file: int
    attributes: dict[str, Any]

class Module:
    """A loaded kernel module or driver."""

    name: str
    base: int
    size: int
    path: Optional[str]
    state: Optional[str]
    attributes: dict[str, Any]

class Object:
    """A kernel object read by the profile's layout: fields as attributes (``int``,
    ``bool``, ``float``, ``bytes`` for char arrays, lists, nested ``Object``s)."""

    address: int
    type_name: str
    size: Optional[int]
    def fields(self) -> list[str]:
        """The names of its fields."""
    def offset_of(self, path: str) -> int:
        """The byte offset of a (dotted) field."""
    def deref(self, name: str) -> Object:
        """The struct or union pointer field ``name`` points to (``ReadError`` if NULL)."""
    def __getitem__(self, path: str) -> Any:
        """The field at a dotted path: ``task["se.vruntime"]``."""
    def __getattr__(self, name: str) -> Any: ...
