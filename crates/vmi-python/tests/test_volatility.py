"""Volatility 3's own Linux plugins on the live test guest through `vmi.volatility`
(`vol -p PLUGIN_DIR -f vmi+qemu://SOCKET`), against the same plugins on an ELF dump of
the same paused guest (Volatility's own stacking, with the ISF our dump driver exports),
and against the guest's truth."""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import vmi
from vmi.volatility import plugin_dir

from conftest import xtask

VOL = Path(sys.executable).parent / "vol"
PLUGINS = ["linux.pslist.PsList", "linux.lsof.Lsof", "linux.proc.Maps"]


@pytest.fixture(scope="module")
def vol_env(tmp_path_factory):
    """The environment of a `vol` run: the ISF cache in a fresh directory (so the export
    runs), Volatility from the venv."""
    if not VOL.exists():
        why = f"Volatility 3 is not installed at {VOL} (scripts/setup.sh)"
        if os.environ.get("VMI_REQUIRE_GUEST") == "1":
            pytest.fail(why)
        pytest.skip(why)
    env = dict(os.environ)
    env["VMI_VOLATILITY_CACHE"] = str(tmp_path_factory.mktemp("isf-cache"))
    # Volatility's own cache (`--cache-path`), private: every run drops from the shared
    # ~/.cache/volatility3 identifier cache the ISFs outside its own symbol path, so a
    # concurrent run with another `-s` would hide ours.
    env["TEST_VOL_CACHE"] = str(tmp_path_factory.mktemp("vol-cache"))
    return env


def vol(env, *args, timeout=900):
    """Runs `vol -q -r json ARGS` (with the private cache): its rows and how long it
    took (s)."""
    start = time.monotonic()
    out = subprocess.run(
        [str(VOL), "-q", "-r", "json", "--cache-path", env["TEST_VOL_CACHE"], *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    elapsed = time.monotonic() - start
    assert out.returncode == 0, f"vol {' '.join(args)} failed:\n{out.stderr}"
    return json.loads(out.stdout), elapsed


def live(guest, env, plugin):
    return vol(env, "-p", str(plugin_dir()), "-f", f"vmi+qemu://{guest.dir / 'qmp.sock'}", plugin)


class Qmp:
    """A minimal QMP client of the guest's aux monitor (fast enough to poll)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command):
        self.file.write(json.dumps({"execute": command}).encode() + b"\n")
        self.file.flush()
        while True:
            answer = json.loads(self.file.readline())
            if "event" not in answer:
                if "error" in answer:
                    raise RuntimeError(f"{command}: {answer['error']}")
                return answer["return"]

    def close(self):
        self.file.close()
        self.sock.close()


def test_plugin_dir_is_printed_and_holds_the_layer():
    out = subprocess.run(
        [sys.executable, "-m", "vmi.volatility", "--plugin-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    directory = Path(out.stdout.strip())
    assert directory == plugin_dir()
    assert (directory / "vmi_live.py").is_file()


def test_locations_name_targets():
    from vmi.volatility.layer import target_spec

    assert target_spec("vmi+qemu:///run/vm/qmp.sock") == "qemu:/run/vm/qmp.sock"
    assert target_spec("vmi+qemu:///run/a%20b%3F.sock") == "qemu:/run/a b?.sock"
    assert target_spec("vmi+file:///dumps/guest.elf") == "/dumps/guest.elf"
    assert target_spec("vmi+libvirt://guest1") == "libvirt:guest1"
    assert target_spec("file:///dumps/guest.elf") is None
    for bad in ["vmi+nope:///x", "vmi+qemu://", "vmi+qemu:///a?b"]:
        with pytest.raises(ValueError):
            target_spec(bad)


def test_the_layer_reads_physical_memory_and_refuses_the_rest(dump_path):
    from volatility3.framework import contexts, exceptions
    from vmi.volatility.layer import VmiLayer

    ctx = contexts.Context()
    ctx.config["vmi.location"] = f"vmi+file://{dump_path}"
    layer = VmiLayer(ctx, "vmi", "vmi")
    with vmi.open(str(dump_path)) as t:
        size = int(t.info["max_physical_address"], 16)
        assert layer.maximum_address == size - 1
        assert layer.read(0x1000, 64) == t.read(0x1000, 64, phys=True)
        # More than one Target.read (at most 16 MiB) can return.
        big = layer.read(0x100000, (16 << 20) + 0x1000)
        assert big[-0x2000:] == t.read(0x100000 + (16 << 20) - 0x1000, 0x2000, phys=True)
    assert layer.is_valid(size - 8, 8) and not layer.is_valid(size - 8, 9)
    with pytest.raises(exceptions.InvalidAddressException) as e:
        layer.read(size - 8, 16)
    assert e.value.invalid_address == size
    with pytest.raises(exceptions.LayerException):
        layer.write(0x1000, b"x")


def lime_range(start, data):
    """One range of a LiME image: its header (magic, version 1, first and last
    address, reserved) and its bytes."""
    return struct.pack("<IIQQQ", 0x4C694D45, 1, start, start + len(data) - 1, 0) + data


def test_a_hole_raises_at_its_first_byte_and_reads_as_zero_only_with_pad(tmp_path):
    from volatility3.framework import contexts, exceptions
    from volatility3.framework.layers import physical
    from vmi.volatility.layer import VmiLayer, VmiStacker

    low = bytes(range(256)) * 32  # pages 0 and 1; page 2 is a hole; page 3: 0xab
    image = tmp_path / "hole.lime"
    image.write_bytes(lime_range(0, low) + lime_range(0x3000, b"\xab" * 0x1000))
    ctx = contexts.Context()
    ctx.config["hole.location"] = f"vmi+file://{image}"
    layer = VmiLayer(ctx, "hole", "hole")
    assert layer.maximum_address == 0x3FFF
    assert layer.read(0x1FFE, 2) == low[-2:]
    for start, first_bad in [(0x1FFE, 0x2000), (0x2800, 0x2800)]:
        with pytest.raises(exceptions.InvalidAddressException) as e:
            layer.read(start, 4)
        assert e.value.invalid_address == first_bad
    assert layer.read(0x1FFE, 0x1004, pad=True) == low[-2:] + bytes(0x1000) + b"\xab\xab"

    # Through Volatility's own base layer (our URL handler) and our stacker: no OS is
    # recognised in this image, so the stacker gives the physical layer alone.
    ctx.config["base.location"] = f"vmi+file://{image}"
    base = physical.FileLayer(ctx, "base", "base")
    ctx.add_layer(base)
    assert base.maximum_address == 0x3FFF
    assert base.read(0x1000, 16) == low[0x1000:0x1010]
    stacked = VmiStacker.stack(ctx, "base")
    assert isinstance(stacked, VmiLayer)


def test_a_wrong_socket_is_reported(vol_env, tmp_path):
    missing = tmp_path / "no-such.sock"
    out = subprocess.run(
        [
            str(VOL),
            "-q",
            "--cache-path",
            vol_env["TEST_VOL_CACHE"],
            "-p",
            str(plugin_dir()),
            "-f",
            f"vmi+qemu://{missing}",
            "linux.pslist",
        ],
        capture_output=True,
        text=True,
        env=vol_env,
        timeout=300,
    )
    assert out.returncode != 0
    assert f"vmi: cannot attach to QEMU at {missing}" in out.stderr


def test_live_plugins_equal_them_on_a_dump_of_the_same_paused_guest(guest, vol_env, tmp_path):
    guest.qmp("stop")
    try:
        results, timings = {}, {}
        for plugin in PLUGINS:
            results[plugin], timings[f"live {plugin}"] = live(guest, vol_env, plugin)
            # A guest found paused is left paused.
            assert not guest.running()
        dump = tmp_path / "paused.elf"
        xtask("guest", "dump", "--dir", str(guest.dir), "--format", "elf", str(dump), timeout=600)
        isf = tmp_path / "isf"
        isf.mkdir()
        with vmi.open(str(dump)) as t:
            t.export_isf(isf / "linux-vmi.json")
            ours = {p.pid: p for p in t.os.processes()}
        for plugin in PLUGINS:
            rows, timings[f"dump {plugin}"] = vol(vol_env, "-s", str(isf), "-f", str(dump), plugin)
            assert rows == results[plugin], f"{plugin}: live and dump differ"
        # The same dump through our layer and dump driver (`vmi+file://`).
        rows, timings["vmi+file linux.pslist.PsList"] = vol(
            vol_env, "-p", str(plugin_dir()), "-f", f"vmi+file://{dump}", "linux.pslist.PsList"
        )
        assert rows == results["linux.pslist.PsList"]
        dump.unlink()
    finally:
        guest.qmp("cont")
    print("\n" + "\n".join(f"{k}: {v:.2f} s" for k, v in timings.items()))

    # pslist agrees with our own process list of the same paused state...
    pslist = results["linux.pslist.PsList"]
    # (Volatility prints `comm`, 15 bytes; our name is /proc's: a kernel thread's full
    # name, a workqueue worker's id and work item.)
    assert {(r["PID"], r["PPID"]) for r in pslist} == {(p.pid, p.ppid) for p in ours.values()}
    for r in pslist:
        p = ours[r["PID"]]
        assert p.name == r["COMM"] or (p.kernel_thread and p.name.startswith(r["COMM"])), (
            p.name,
            r["COMM"],
        )
    # ...and with the guest's truth.
    rows = {r["PID"]: r for r in pslist}
    for p in guest.truth["processes"]:
        assert rows[p["pid"]]["COMM"] == p["comm"]
    tasks = {t["pid"]: t for t in guest.truth["tasks"]}
    for pid in guest.truth["blocked"]:
        r, t = rows[pid], tasks[pid]
        assert (r["PPID"], r["COMM"], r["UID"]) == (t["ppid"], t["comm"], t["uid"])
    # lsof and proc.Maps see the blocked processes' descriptors and mappings.
    for pid in guest.truth["blocked"]:
        truth = guest.process_truth(pid)
        fds = sorted((r["FD"], r["Path"]) for r in results["linux.lsof.Lsof"] if r["PID"] == pid)
        assert fds == sorted((f["fd"], f["target"]) for f in truth["fds"])
        maps = [
            (r["Start"], r["End"])
            for r in results["linux.proc.Maps"]
            if r["PID"] == pid
        ]
        assert maps == [(int(m["start"], 16), int(m["end"], 16)) for m in truth["maps"]]


def test_a_running_guest_is_paused_for_the_run_and_resumed(guest, vol_env):
    assert guest.running()
    qmp = Qmp(guest.dir / "qmp-aux.sock")
    seen, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            seen.add(qmp.execute("query-status")["status"])
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        rows, elapsed = live(guest, vol_env, "linux.pslist.PsList")
    finally:
        done.set()
        poller.join()
        qmp.close()
    print(f"\nlive linux.pslist on the running guest: {elapsed:.2f} s")
    assert "paused" in seen
    assert guest.running()
    pids = {r["PID"] for r in rows}
    assert {p["pid"] for p in guest.truth["processes"]} <= pids
