"""Fixtures: the real Linux test guest, booted by the project's harness
(`cargo xtask guest up`), and an ELF dump of it; both compared with the guest's own
truth (`DIR/truth.json`, what the guest printed from /proc)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def xtask(*args, **kwargs):
    return subprocess.run(
        ["cargo", "xtask", *args], cwd=REPO, check=True, text=True, capture_output=True, **kwargs
    )


class Guest:
    def __init__(self, directory: Path):
        self.dir = directory
        self.truth = json.loads((directory / "truth.json").read_text())
        self.spec = f"qemu:{directory / 'qmp.sock'}"

    def process_truth(self, pid):
        return next(p for p in self.truth["processes"] if p["pid"] == pid)

    def qmp(self, command):
        """The answer of a QMP command on the guest's second (aux) monitor socket."""
        out = xtask("guest", "qmp", "--dir", str(self.dir), json.dumps({"execute": command}))
        return json.loads(out.stdout)

    def running(self):
        return self.qmp("query-status")["running"]


@pytest.fixture(scope="session")
def guest(tmp_path_factory):
    """The live test guest; always shut down (no /dev/shm/vmi-guest-* left behind)."""
    directory = tmp_path_factory.mktemp("guest")
    try:
        try:
            xtask("guest", "up", "--dir", str(directory), timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            why = f"the test guest did not boot: {getattr(e, 'stderr', '') or e}"
            if os.environ.get("VMI_REQUIRE_GUEST") == "1":
                pytest.fail(why)
            pytest.skip(why)
        yield Guest(directory)
    finally:
        subprocess.run(
            ["cargo", "xtask", "guest", "down", "--dir", str(directory)],
            cwd=REPO,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def dump_path(guest, tmp_path_factory):
    """An ELF dump of the test guest (QEMU's dump-guest-memory), deleted afterwards."""
    out = tmp_path_factory.mktemp("dump") / "guest.elf"
    xtask("guest", "dump", "--dir", str(guest.dir), "--format", "elf", str(out), timeout=600)
    yield out
    out.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def vmi_command():
    """The `vmi` command of this workspace (to compare error messages): the one the test
    suite built, else built now."""
    binary = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "vmi"
    if not binary.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "vmi-cli"], cwd=REPO, check=True)
    return binary
