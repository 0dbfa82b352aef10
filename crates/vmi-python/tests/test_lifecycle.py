"""Opening, closing and reopening a live target: one QMP client at a time, so `close()`
(or the end of a `with` block) must free the socket, and resume a guest it paused."""

import os
import signal
import threading
import time

import pytest

import vmi


def test_close_frees_the_qmp_socket_and_resumes_the_guest(guest):
    with vmi.open(guest.spec) as t:
        with pytest.raises(vmi.TargetError, match="another client holds this QMP socket"):
            vmi.open(guest.spec)
        t.paused().__enter__()  # a block left without its end (an exception, a notebook)
        assert not guest.running()
    assert t.closed and repr(t).endswith("(live, closed)>")
    assert guest.running()
    with pytest.raises(vmi.VmiError, match=r"^the target qemu:.* is closed$"):
        t.os.processes()
    t.close()  # twice: nothing
    with vmi.open(guest.spec) as again:
        assert again.os.process(1).name == "init"


def test_trace_collects_hits_and_leaves_the_guest_running(guest, dump_path):
    with vmi.open(guest.spec) as t:
        do_nanosleep = t.symbol("do_nanosleep")
        # The guest's shell loop calls sleep(1) again and again.
        hits = t.trace("do_nanosleep", count=3, timeout=120)
        assert [h["hit"] for h in hits] == [1, 2, 3]
        for h in hits:
            assert h["rip"] == do_nanosleep
            assert isinstance(h["pid"], int) and h["pid"] > 0
            assert h["comm"] and not h["comm"].startswith("<")
            assert len(h["args"]) == 6
        assert guest.running()
        # Bounded by time: far fewer hits than asked for, then the breakpoint is gone.
        start = time.monotonic()
        hits = t.trace(hex(do_nanosleep), count=1_000_000, timeout=1.0)
        assert time.monotonic() - start < 30
        assert len(hits) < 1_000_000
        assert guest.running()
        with pytest.raises(vmi.NotFoundError, match="unknown kernel symbol"):
            t.trace("no_such_function", count=1, timeout=1)
    with vmi.open(str(dump_path)) as d, pytest.raises(vmi.NotSupportedError):
        d.trace("do_nanosleep", count=1, timeout=1)


def test_trace_stops_on_ctrl_c_and_removes_its_breakpoint(guest):
    with vmi.open(guest.spec) as t:
        fired = []

        def interrupt():
            fired.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        timer = threading.Timer(1.0, interrupt)
        # Python raises KeyboardInterrupt at SIGINT only if SIGINT was not ignored when it
        # started, and a shell ignores it for commands it starts in the background (CI
        # may): the handler is set here, as an interactive session has it.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        start = time.monotonic()
        timer.start()
        try:
            hits = t.trace("do_nanosleep", count=1_000_000, timeout=60)
        except KeyboardInterrupt:
            hits = None
        finally:
            timer.join()
            signal.signal(signal.SIGINT, previous)
        assert hits is None, (
            f"trace returned {len(hits)} hits after {time.monotonic() - start:.1f} s; "
            f"the SIGINT was sent {[round(f - start, 2) for f in fired]} s after the start"
        )
        assert guest.running()
        assert len(t.trace("do_nanosleep", count=1, timeout=120)) == 1
