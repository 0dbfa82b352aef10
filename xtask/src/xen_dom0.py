"""The Python package `vmi` on a Xen domain, run by dom0's /init of the nested Xen smoke
test (`cargo xtask xen smoke`) as `python3 -S -B xen_dom0.py GUEST DOMID`.

Prints `XEN_SMOKE <guest> PY_<CHECK> OK|FAIL <detail>` lines, which the xtask counts, and
`XEN_PYTASK <guest> <pid> <ppid> <name>` lines, which it compares with the guest's own
process list. Every check runs even when an earlier one failed.
"""

import sys
import time
import traceback

GUEST, DOMID = sys.argv[1], int(sys.argv[2])


def report(check, ok, detail):
    # One line each: the serial console interleaves output of other processes.
    detail = " ".join(str(detail).split())[:300]
    print(f"XEN_SMOKE {GUEST} {check} {'OK' if ok else 'FAIL'} {detail}", flush=True)


def check(name):
    """Runs the decorated function as check `name`: (ok, detail), or FAIL on an exception."""

    def wrap(f):
        try:
            ok, detail = f()
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            ok, detail = False, f"{type(e).__name__}: {e} " + traceback.format_exc(limit=2)
        report(name, ok, detail)
        return f

    return wrap


try:
    import vmi

    t = vmi.open(f"xen:{DOMID}")
    report("PY_OPEN", t.live and "linux" in repr(t), repr(t))
except Exception as e:  # noqa: BLE001
    report("PY_OPEN", False, f"{type(e).__name__}: {e}")
    sys.exit(0)


@check("PY_INFO")
def _():
    info = t.info
    release = info.get("kernel_release", "")
    # The xtask checks that the guest's /proc/version names this release.
    print(f"XEN_PYINFO {GUEST} {release}", flush=True)
    return info.get("os") == "linux" and bool(release), {
        k: info.get(k) for k in ("target", "os", "kernel_release", "vcpus")
    }


@check("PY_READ")
def _():
    va = t.symbol("linux_banner")
    head = t.read(va, 14)
    pa = t.translate(va)["pa"]
    phys = t.read(pa, 14, phys=True)
    ok = head == b"Linux version " and phys == head
    return ok, f"linux_banner {va:#x} -> pa {pa:#x}: {head!r} / {phys!r}"


@check("PY_OBJECT")
def _():
    comm = t.object("task_struct", t.symbol("init_task")).comm.rstrip(b"\0")
    return comm == b"swapper/0", f"init_task.comm = {comm!r}"


@check("PY_PROCESSES")
def _():
    procs = t.os.processes()
    for p in procs:
        print(f"XEN_PYTASK {GUEST} {p.pid} {p.ppid} {p.name}", flush=True)
    init = [p for p in procs if p.pid == 1]
    regions = init[0].maps() if init else []
    busybox = [r for r in regions if (r.path or "").endswith("/busybox")]
    threads = init[0].threads() if init else []
    ok = bool(init) and bool(busybox) and len(threads) == 1
    return ok, (
        f"{len(procs)} processes; pid 1 {init[0]!r} has {len(regions)} regions "
        f"({len(busybox)} of /bin/busybox), {len(threads)} thread(s)"
        if init
        else f"{len(procs)} processes, no pid 1"
    )


@check("PY_PAUSED")
def _():
    jiffies = t.symbol("jiffies_64")

    def now():
        return int.from_bytes(t.read(jiffies, 8), "little")

    with t.paused():
        a = now()
        time.sleep(0.5)
        b = now()
    # Resumed: the guest's clock moves again (its busy loop wakes every 50 ms).
    c, deadline = now(), time.monotonic() + 10
    while c == b and time.monotonic() < deadline:
        time.sleep(0.2)
        c = now()
    return a == b and c > b, f"jiffies_64 paused {a} -> {b}, resumed -> {c}"


@check("PY_ERRORS")
def _():
    try:
        vmi.open("xen:32000")
    except vmi.TargetError as e:
        missing = str(e)
    else:
        return False, "xen:32000 opened"
    try:
        t.read(0x10, 8, phys=False)
    except vmi.ReadError as e:
        unmapped = str(e)
    else:
        return False, "a read of va 0x10 succeeded"
    ok = "32000" in missing and "0x10" in unmapped
    return ok, f"{missing!r}; {unmapped!r}"


t.close()
report("PY_CLOSE", t.closed, repr(t))
