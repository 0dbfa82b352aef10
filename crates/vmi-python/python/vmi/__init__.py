"""Virtual machine introspection from Python: a running QEMU, a Xen domain or a memory dump.

>>> import vmi
>>> t = vmi.open("qemu:/path/qmp.sock")          # or vmi.open("guest.elf")
>>> t.info["kernel_release"]
>>> [p.name for p in t.os.processes()]
>>> t.object("task_struct", t.symbol("init_task")).comm

The same target specs, results and error messages as the ``vmi`` command: both call
the same Rust functions. Errors are ``vmi.VmiError`` subclasses; objects a listing could
not read are reported as ``vmi.IncompleteWarning`` (turn them into errors with
``warnings.simplefilter("error", vmi.IncompleteWarning)``).
"""

from ._vmi import (
    File,
    IncompleteWarning,
    Module,
    NotFoundError,
    NotSupportedError,
    Object,
    Os,
    Paused,
    Process,
    ReadError,
    Region,
    Target,
    TargetError,
    Thread,
    Trace,
    VmiError,
    __version__,
    open,
)

__all__ = [
    "File",
    "IncompleteWarning",
    "Module",
    "NotFoundError",
    "NotSupportedError",
    "Object",
    "Os",
    "Paused",
    "Process",
    "ReadError",
    "Region",
    "Target",
    "TargetError",
    "Thread",
    "Trace",
    "VmiError",
    "__version__",
    "open",
]
