"""What the plugin directory registers with Volatility 3 (see :mod:`vmi.volatility`):
the ``vmi+KIND://`` URL handler, the physical-memory layer, its stacker and the symbol
finder that hands Volatility our exported ISF.

Written against Volatility 3.2.28 (``scripts/setup.sh``): its resource handlers
(``VolatilityHandler``), ``StackerLayerInterface.stack``, ``DataLayerInterface`` and
``LinuxSymbolFinder``.
"""

import atexit
import hashlib
import io
import logging
import os
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional

from volatility3.framework import constants, exceptions, interfaces
from volatility3.framework.automagic import linux as linux_automagic
from volatility3.framework.configuration import requirements
from volatility3.framework.layers import intel, resources

import vmi

from . import isf_cache_dir

vollog = logging.getLogger(__name__)

#: The location schemes, as ``vmi+KIND``: KIND is a target kind of :func:`vmi.open`.
SCHEMES = ("vmi+qemu", "vmi+file", "vmi+libvirt", "vmi+xen")

#: The largest single ``Target.read``.
MAX_READ = 16 << 20

PAGE_SIZE = 0x1000


def target_spec(location: str) -> Optional[str]:
    """The :func:`vmi.open` target named by a ``vmi+KIND://`` location, or ``None`` when
    the location is not ours: ``vmi+qemu:///run/qmp.sock`` is ``qemu:/run/qmp.sock``,
    ``vmi+file:///dumps/a.elf`` is ``/dumps/a.elf``. Raises ``ValueError`` for a
    ``vmi+`` location that names no target."""
    parsed = urllib.parse.urlparse(location)
    if not parsed.scheme.startswith("vmi+"):
        return None
    if parsed.scheme not in SCHEMES:
        raise ValueError(
            f"{location}: unknown target kind {parsed.scheme[4:]!r} "
            f"(give one of {', '.join(s + '://' for s in SCHEMES)})"
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError(f"{location}: percent-encode '?', '#' and ';' in the path")
    rest = urllib.parse.unquote(parsed.netloc + parsed.path)
    if not rest:
        raise ValueError(f"{location}: no target after {parsed.scheme}://")
    kind = parsed.scheme[4:]
    return rest if kind == "file" else f"{kind}:{rest}"


class Session:
    """One opened target, shared by every layer and file object of this process that
    names it, and paused until the process exits (the consistency rule of
    :mod:`vmi.volatility`)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.target = vmi.open(spec)
        self._paused = self.target.paused()
        self._paused.__enter__()
        self.info: Dict[str, Any] = self.target.info
        self.size = int(self.info["max_physical_address"], 16)
        self._kernel: Optional[Dict[str, Any]] = None

    def close(self) -> None:
        """Resumes the guest if this session paused it, and detaches."""
        try:
            self._paused.__exit__(None, None, None)
        finally:
            self.target.close()

    def read(self, address: int, size: int) -> bytes:
        """The readable prefix of ``size`` bytes of physical memory at ``address``
        (raises ``vmi.ReadError`` when the first byte is unreadable)."""
        return self.target.read(address, size, phys=True, partial=True)

    def linux_kernel(self) -> Optional[Dict[str, Any]]:
        """What the Linux page-table layer needs: ``dtb`` (the physical address of
        ``init_top_pgt``), ``slide`` (KASLR), ``banner`` and ``isf`` (the exported ISF's
        URL); ``None`` when the guest's OS is not a recognised Linux."""
        if self.info.get("os") != "linux":
            return None
        if self._kernel is None:
            paging = self.info.get("paging")
            if paging != "Level4":
                raise exceptions.LayerException(
                    self.spec,
                    f"{self.spec}: the guest uses {paging} paging; Volatility 3 has a "
                    "layer for 4-level paging only",
                )
            banner = self.info.get("banner")
            slide = self.info.get("kaslr_slide")
            if banner is None or slide is None:
                raise exceptions.LayerException(
                    self.spec, f"{self.spec}: the kernel's banner or KASLR slide is unknown"
                )
            self._kernel = {
                "dtb": self._kernel_page_tables(),
                "slide": int(slide, 16),
                "banner": banner,
                "isf": self._export_isf(banner).as_uri(),
            }
        return self._kernel

    def _kernel_page_tables(self) -> int:
        """The physical address of the kernel's top page table, as Volatility's Linux
        stacker takes it (``init_top_pgt``, ``init_level4_pgt`` before 4.13)."""
        for name in ("init_top_pgt", "init_level4_pgt"):
            try:
                va = self.target.symbol(name)
            except vmi.NotFoundError:
                continue
            return self.target.translate(va)["pa"]
        return int(self.info["kernel_root"], 16)

    def _export_isf(self, banner: str) -> Path:
        """The ISF of the running kernel in the cache, exported on first use (an atomic
        rename: concurrent runs each write a whole file)."""
        key = hashlib.sha256(
            "\0".join((vmi.__version__, banner, str(self.info.get("profile")))).encode()
        ).hexdigest()[:32]
        directory = isf_cache_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"linux-{key}.json"
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".export-", suffix=".json")
            os.close(fd)
            try:
                self.target.export_isf(tmp)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path


_sessions: Dict[str, Session] = {}
_sessions_lock = threading.Lock()


def session(spec: str) -> Session:
    """The session of target ``spec``, opened (and paused) on first use."""
    with _sessions_lock:
        s = _sessions.get(spec)
        if s is None:
            try:
                s = Session(spec)
            except Exception as e:
                # Volatility reports a failed stacking only at -vvv: say why here.
                vollog.warning(f"vmi: {e}")
                raise
            if not _sessions:
                atexit.register(close_all)
            _sessions[spec] = s
        return s


def close_all() -> None:
    """Resumes and detaches every session (at exit)."""
    with _sessions_lock:
        while _sessions:
            _, s = _sessions.popitem()
            try:
                s.close()
            except Exception as e:
                vollog.warning(f"vmi: cannot resume or detach {s.spec}: {e}")


class PhysicalFile(io.RawIOBase):
    """The guest's physical memory as a read-only file (what the URL handler returns:
    Volatility's base ``FileLayer`` opens every ``-f`` location before stacking)."""

    def __init__(self, s: Session) -> None:
        super().__init__()
        self._session = s
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._session.size}
        if whence not in base:
            raise ValueError(f"invalid whence {whence}")
        pos = base[whence] + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._session.size - self._pos, MAX_READ)
        if n <= 0:
            return 0
        try:
            data = self._session.read(self._pos, n)
        except vmi.ReadError as e:
            raise OSError(str(e)) from e
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class VmiHandler(resources.VolatilityHandler):
    """Opens ``vmi+KIND://`` locations (never copied into Volatility's cache)."""

    @classmethod
    def non_cached_schemes(cls) -> List[str]:
        return list(SCHEMES)

    @staticmethod
    def default_open(req: Any) -> Optional[PhysicalFile]:
        spec = target_spec(req.full_url)
        if spec is None:
            return None
        return PhysicalFile(session(spec))


class VmiLayer(interfaces.layers.DataLayerInterface):
    """The guest's physical memory, read through ``vmi`` (config: ``location``, a
    ``vmi+KIND://`` URL). Read-only; an unreadable byte raises
    ``InvalidAddressException`` at its address (or reads as zero with ``pad=True``)."""

    def __init__(
        self,
        context: interfaces.context.ContextInterface,
        config_path: str,
        name: str,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(context=context, config_path=config_path, name=name, metadata=metadata)
        spec = target_spec(self.config["location"])
        if spec is None:
            raise exceptions.LayerException(
                name, f"not a vmi+ location: {self.config['location']}"
            )
        self._spec = spec
        self._session_: Optional[Session] = None
        _ = self._session

    @property
    def _session(self) -> Session:
        # Looked up, not pickled: the session belongs to this process.
        if self._session_ is None:
            self._session_ = session(self._spec)
        return self._session_

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_session_"] = None
        return state

    @property
    def maximum_address(self) -> int:
        return self._session.size - 1

    @property
    def minimum_address(self) -> int:
        return 0

    def is_valid(self, offset: int, length: int = 1) -> bool:
        if length <= 0:
            raise ValueError("Length must be positive")
        return 0 <= offset and offset + length - 1 <= self.maximum_address

    def read(self, offset: int, length: int, pad: bool = False) -> bytes:
        if length == 0:
            return b""
        if not self.is_valid(offset, length):
            inside = 0 <= offset <= self.maximum_address
            bad = self.maximum_address + 1 if inside else offset
            raise exceptions.InvalidAddressException(
                self.name, bad, "outside of the guest's physical memory"
            )
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            want = min(end - pos, MAX_READ)
            try:
                data = self._session.read(pos, want)
            except vmi.ReadError as e:
                if not pad:
                    raise exceptions.InvalidAddressException(self.name, pos, str(e)) from e
                data = b""
            out += data
            pos += len(data)
            if len(data) < want:
                if not pad:
                    # The reason, from a read of the first byte that failed.
                    try:
                        self._session.target.read(pos, 1, phys=True)
                        why = f"cannot read {pos:#x}"
                    except vmi.ReadError as e:
                        why = str(e)
                    raise exceptions.InvalidAddressException(self.name, pos, why)
                skip = min(end, (pos // PAGE_SIZE + 1) * PAGE_SIZE) - pos
                out += bytes(skip)
                pos += skip
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        raise exceptions.LayerException(self.name, "guest memory is read-only through vmi")

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return [requirements.StringRequirement(name="location", optional=False)]


class VmiStacker(interfaces.automagic.StackerLayerInterface):
    """Stacks a ``vmi+`` location first (before the file-format stackers, which would
    read or scan it): ``VmiLayer``, and for a recognised Linux guest the kernel's page
    tables on top of it, from what our Linux layer found (no banner or DTB scan)."""

    stack_order = 5
    exclusion_list: List[str] = []

    @classmethod
    def stack(
        cls,
        context: interfaces.context.ContextInterface,
        layer_name: str,
        progress_callback: constants.ProgressCallback = None,
    ) -> Optional[interfaces.layers.DataLayerInterface]:
        base = context.layers[layer_name]
        if isinstance(base, (VmiLayer, intel.Intel)):
            return None
        location = base.config.get("location", None)
        if not isinstance(location, str) or target_spec(location) is None:
            return None
        join = interfaces.configuration.path_join
        name = context.layers.free_layer_name("VmiLayer")
        config_path = join("VmiStacker", name)
        context.config[join(config_path, "location")] = location
        physical = VmiLayer(context, config_path, name)
        try:
            kernel = physical._session.linux_kernel()
        except Exception as e:
            vollog.warning(f"vmi: {e}")
            raise
        if kernel is None:
            # Not a Linux we recognised: Volatility's own stackers take it from here.
            return physical
        context.layers.add_layer(physical)
        _isf_by_banner[bytes(kernel["banner"], "raw_unicode_escape")] = kernel["isf"]
        name = context.layers.free_layer_name("IntelLayer")
        config_path = join("VmiStacker", name)
        context.config[join(config_path, "memory_layer")] = physical.name
        context.config[join(config_path, "page_map_offset")] = kernel["dtb"]
        context.config[join(config_path, "kernel_virtual_offset")] = kernel["slide"]
        banner_key = linux_automagic.LinuxSymbolFinder.banner_config_key
        context.config[join(config_path, banner_key)] = kernel["banner"]
        return intel.LinuxIntel32e(
            context, config_path=config_path, name=name, metadata={"os": "Linux"}
        )


#: The exported ISF (file URL) of each kernel banner a ``VmiStacker`` stacked.
_isf_by_banner: Dict[bytes, str] = {}


class VmiSymbolFinder(linux_automagic.LinuxSymbolFinder):
    """Volatility's Linux symbol finder, run just before it, with the banners of the
    kernels ``VmiStacker`` stacked mapped to their exported ISFs (instead of Volatility's
    symbol cache): the kernel's symbol table requirement is met without ``-s``."""

    priority = linux_automagic.LinuxSymbolFinder.priority - 1

    @property
    def banners(self) -> Dict[bytes, str]:
        return dict(_isf_by_banner)
