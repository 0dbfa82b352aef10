"""The Python package against the live test guest and its ELF dump, compared with the
guest's truth. Only processes the guest keeps blocked by design (`truth["blocked"]`)
are compared field by field: their state cannot change after the truth was printed."""

import subprocess
import warnings

import pytest

import vmi


@pytest.fixture(scope="module", params=["live", "dump"])
def target(request, guest):
    spec = guest.spec if request.param == "live" else str(request.getfixturevalue("dump_path"))
    with warnings.catch_warnings():
        # Nothing may be skipped on the clean guest: a warning fails the test.
        warnings.simplefilter("error", vmi.IncompleteWarning)
        with vmi.open(spec) as t:
            yield t


def test_info_is_the_kernel_of_the_truth(target, guest):
    info = target.info
    assert info["os"] == "linux"
    assert info["kernel_release"] == guest.truth["release"]
    assert info["live"] == target.live
    assert info["kaslr_slide"].startswith("0x")
    assert repr(target).startswith("<vmi.Target '")


def test_processes_and_command_lines_equal_the_truth(target, guest):
    procs = {p.pid: p for p in target.os.processes()}
    tasks = {t["pid"]: t for t in guest.truth["tasks"]}
    assert procs[1].name == "init"
    for pid in guest.truth["blocked"]:
        p, t = procs[pid], tasks[pid]
        assert (p.name, p.ppid, p.uid, p.state) == (t["comm"], t["ppid"], t["uid"], t["state"])
        assert p.argv == guest.process_truth(pid)["argv"]
        assert p.cmdline == " ".join(p.argv)
        assert p.errors == []
        assert not p.kernel_thread
        assert repr(p).startswith(f"<vmi.Process pid={pid} ")
    # Kernel threads are listed too, and said to be.
    assert any(p.kernel_thread for p in procs.values())


@pytest.mark.parametrize("comm", ["vmi_sleeper", "vmi_mapper"])
def test_maps_equal_proc_maps(target, guest, comm):
    truth = next(p for p in guest.truth["processes"] if p["comm"] == comm)
    got = target.os.process(truth["pid"]).maps()
    expected = [
        (int(m["start"], 16), int(m["end"], 16), m["perms"], int(m["offset"], 16), m["path"])
        for m in truth["maps"]
    ]
    assert [(r.start, r.end, r.perms, r.offset, r.name) for r in got] == expected


def test_threads_files_and_environment(target, guest):
    for pid in guest.truth["blocked"]:
        truth = guest.process_truth(pid)
        p = target.os.process(pid)
        assert [t.tid for t in p.threads()] == [pid]
        fds = sorted((f.fd, f.path) for f in p.files())
        assert fds == sorted((f["fd"], f["target"]) for f in truth["fds"])
        env = [k if v is None else f"{k}={v}" for k, v in p.env()]
        assert env == truth["environ"]


def test_read_of_the_environment_marker(target, guest):
    truth = next(p for p in guest.truth["processes"] if p["comm"] == "vmi_sleeper")
    start, end = int(truth["env_start"], 16), int(truth["env_end"], 16)
    data = target.read(start, end - start, pid=truth["pid"])
    assert data == b"".join(e.encode() + b"\0" for e in truth["environ"])
    assert b"VMI-ENV-MARKER-5a17c0de" in data
    # The same bytes through the physical address the page translates to.
    t = target.translate(start, pid=truth["pid"])
    assert t["levels"] and t["user"]
    page_end = (start | 0xFFF) + 1
    n = min(end, page_end) - start
    assert target.read(t["pa"], n, phys=True) == data[:n]


def test_symbols_and_typed_objects(target, guest):
    for name, address in guest.truth["ksyms"].items():
        assert target.symbol(name) == int(address, 16), name
    init = target.object("task_struct", target.symbol("init_task"))
    assert init.comm.rstrip(b"\0") == b"swapper/0"
    assert init.pid == 0
    assert "comm" in init.fields()
    assert repr(init) == f"<vmi.Object struct task_struct at {init.address:#x}>"
    for pid in guest.truth["blocked"]:
        p = target.os.process(pid)
        task = target.object("task_struct", p.task)
        assert task.comm.rstrip(b"\0").decode() == p.name
        assert (task.pid, task.tgid) == (pid, pid)
        # A nested struct, a pointer followed to its own object, a dotted path.
        assert task["real_parent"] == task.real_parent
        parent = target.object("task_struct", task.real_parent)
        assert parent.pid == p.ppid
        assert task.deref("real_parent").address == parent.address
        assert task.deref("mm").address == task.mm
        assert isinstance(task.se, vmi.Object)
        assert task["se.vruntime"] == task.se.vruntime
    with pytest.raises(AttributeError):
        init.no_such_field
    with pytest.raises(vmi.ReadError, match="^mm is NULL$"):
        init.deref("mm")
    with pytest.raises(vmi.NotFoundError):
        target.object("no_such_struct", 0)


def test_errors_carry_the_command_message(target, vmi_command):
    spec = target.info["target"]  # noqa: F841 (the target is opened)
    with pytest.raises(vmi.NotFoundError) as e:
        target.os.process(999_999)
    assert str(e.value) == "cannot find process 999999: process not found: 999999"
    with pytest.raises(vmi.ReadError, match=r"^cannot read virtual 0x0 \(root 0x"):
        target.read(0, 8)
    with pytest.raises(vmi.TargetError) as e:
        vmi.open("/nonexistent/guest.elf")
    cli = subprocess.run(
        [str(vmi_command), "--target", "/nonexistent/guest.elf", "ps"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 3
    assert cli.stderr.strip() == f"error: {e.value}"
    # A libvirt domain that does not exist (or no libvirt here): a TargetError.
    with pytest.raises(vmi.TargetError) as e:
        vmi.open("libvirt:vmi-no-such-domain")
    assert "vmi-no-such-domain" in str(e.value)


def test_xen_targets_outside_dom0_are_target_errors():
    # scripts/setup.sh builds the package with the Xen driver (the nested Xen smoke test
    # runs it in dom0); here, on no Xen, opening libxen fails with the command's message.
    with pytest.raises(vmi.TargetError, match=r"^cannot open libxen \(run in dom0 as root\)"):
        vmi.open("xen:1")
    with pytest.raises(vmi.TargetError, match=r"^xen:guest: give the domain id"):
        vmi.open("xen:guest")


def test_paused_keeps_a_live_guest_paused(target, guest):
    if not target.live:
        # On a dump it does nothing.
        with target.paused():
            assert target.os.process(1).name == "init"
        return
    # One QMP client at a time: the target opened by the fixture is the one to pause.
    assert guest.running()
    with target.paused():
        assert not guest.running()
        assert len(target.os.processes()) > 0
        assert not guest.running()
    assert guest.running()
