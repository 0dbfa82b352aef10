"""Volatility 3 on a running VM: its own plugins read guest memory through ``vmi``.

::

    vol -p "$(python -m vmi.volatility --plugin-dir)" -f vmi+qemu:///path/qmp.sock linux.pslist

The plugin directory (:func:`plugin_dir`) holds one module that Volatility imports at
start-up; it brings in :mod:`vmi.volatility.layer`:

* a URL handler for ``vmi+KIND://...`` locations (``-f``): ``vmi+qemu:///path/qmp.sock``
  is the target ``qemu:/path/qmp.sock`` of :func:`vmi.open` (``vmi+file:///path/dump``
  a dump through our dump driver). Percent-encode ``%``, ``?`` and ``#`` in the path.
* ``VmiLayer``: a Volatility data layer of the guest's physical memory, read with
  ``Target.read(address, size, phys=True)``.
* ``VmiStacker``: stacks ``VmiLayer`` first, before Volatility's file-format stackers
  (nothing scans the guest's memory for a format or a banner), and for a Linux guest
  the kernel's page tables on top of it (``LinuxIntel32e``: the page-table root of
  ``init_top_pgt`` and the KASLR slide, as our Linux layer found them).
* ``VmiSymbolFinder``: hands Volatility the ISF of the running kernel, exported from our
  profile (``Target.export_isf``) into a cache directory (:func:`isf_cache_dir`), keyed
  by kernel banner, profile and package version. No ``-s``, no symbol download.

**Consistency rule.** The guest is paused from the moment Volatility opens the location
until the ``vol`` process exits, so every plugin sees one consistent snapshot (a running
guest changes its lists while they are walked). A guest found paused stays paused; one
found running is resumed at exit (``atexit``; after a ``SIGKILL`` the QEMU driver's guard
process resumes it). Meanwhile the guest's clock and timers stand still.

Run the ``vol`` of the Python environment ``vmi`` is installed in (``target/venv/bin/vol``
after ``scripts/setup.sh``): Volatility skips a plugin module it cannot import, and then
knows no ``vmi+`` scheme.

Limits: Volatility 3.2.28 has no 5-level paging layer (a guest with LA57 is refused with
a message); ``--parallelism processes`` would open the VM once per worker (QEMU takes one
QMP client per socket), so keep the default.
"""

import os
from pathlib import Path

__all__ = ["isf_cache_dir", "plugin_dir"]


def plugin_dir() -> Path:
    """The Volatility 3 plugin directory of this package (give it to ``vol -p``)."""
    return Path(__file__).resolve().parent / "plugins"


def isf_cache_dir() -> Path:
    """Where exported ISFs are kept: ``$VMI_VOLATILITY_CACHE``, else
    ``$XDG_CACHE_HOME/vmi/volatility`` (``~/.cache/vmi/volatility``)."""
    explicit = os.environ.get("VMI_VOLATILITY_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmi" / "volatility"
