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
        trace = t.trace("do_nanosleep", count=3, timeout=120)
        assert trace.armed and repr(trace).startswith("<vmi.Trace do_nanosleep on qemu:")
        hits = list(trace)
        assert not trace.armed and "3 hits taken, ended" in repr(trace)
        assert [h["hit"] for h in hits] == [1, 2, 3]
        for h in hits:
            assert h["rip"] == do_nanosleep
            assert isinstance(h["pid"], int) and h["pid"] > 0
            assert h["comm"] and not h["comm"].startswith("<")
            assert len(h["args"]) == 6
        assert guest.running()
        # Bounded by time: far fewer hits than asked for, then the breakpoint is gone.
        start = time.monotonic()
        hits = list(t.trace(hex(do_nanosleep), count=1_000_000, timeout=1.0))
        assert time.monotonic() - start < 30
        assert len(hits) < 1_000_000
        assert guest.running()
        with pytest.raises(vmi.NotFoundError, match="unknown kernel symbol"):
            t.trace("no_such_function", count=1, timeout=1)
        with pytest.raises(vmi.VmiError, match="count must be at least 1"):
            t.trace("do_nanosleep", count=0)
    with vmi.open(str(dump_path)) as d, pytest.raises(vmi.NotSupportedError):
        d.trace("do_nanosleep", count=1, timeout=1)


def no_breakpoint_left(guest):
    """vmi_loop sleeps every second: a breakpoint still on do_nanosleep would have
    stopped the VM (QMP status `debug`) within 2.5 s."""
    time.sleep(2.5)
    assert guest.running()


def test_trace_streams_hits_and_every_way_out_removes_the_breakpoint(guest):
    with vmi.open(guest.spec) as t:
        do_nanosleep = t.symbol("do_nanosleep")
        # No count: hits as they come, taken one by one; the guest waits at a hit not
        # yet taken and runs on after.
        trace = t.trace("do_nanosleep", count=None, timeout=120)
        first = next(trace)
        assert first["hit"] == 1 and first["rip"] == do_nanosleep
        time.sleep(1.5)  # meanwhile the next call stopped the guest at the breakpoint
        second = next(trace)
        assert second["hit"] == 2 and second["rip"] == do_nanosleep
        assert trace.armed
        # Freed while armed: the breakpoint is removed.
        del trace
        no_breakpoint_left(guest)
        # A `for` loop left with `break`: the iterator is freed at once.
        for hit in t.trace("do_nanosleep", count=None, timeout=120):
            assert hit["hit"] == 1
            break
        no_breakpoint_left(guest)

        # close() ends it; next() then stops at once.
        trace = t.trace("do_nanosleep", count=None, timeout=120)
        next(trace)
        trace.close()
        assert not trace.armed
        with pytest.raises(StopIteration):
            next(trace)
        trace.close()  # twice: nothing
        no_breakpoint_left(guest)

        # A `with` block, left by an exception of the caller.
        with pytest.raises(RuntimeError, match="the caller's"):
            with t.trace("do_nanosleep", count=None) as trace:
                next(trace)
                raise RuntimeError("the caller's")
        assert not trace.armed
        no_breakpoint_left(guest)

        # close() from another thread while next() waits (a breakpoint on a function the
        # guest never calls while idle): next() ends within a slice; meanwhile `armed`
        # and `repr` answer at once.
        trace = t.trace("__x64_sys_reboot", count=None)
        ended = []

        def take():
            try:
                next(trace)
            except StopIteration:
                ended.append(time.monotonic())

        taker = threading.Thread(target=take)
        taker.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert trace.armed and "0 hits taken, armed" in repr(trace)
        assert time.monotonic() - start < 1
        trace.close()
        taker.join(10)
        assert ended and ended[0] - start < 10
        assert not trace.armed
        no_breakpoint_left(guest)

        # Closing the target first: the breakpoint went with the driver; the trace ends.
    t2 = vmi.open(guest.spec)
    trace = t2.trace("do_nanosleep", count=None, timeout=120)
    next(trace)
    t2.close()
    with pytest.raises(vmi.VmiError, match="is closed"):
        next(trace)
    del trace
    no_breakpoint_left(guest)


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
            hits = list(t.trace("do_nanosleep", count=1_000_000, timeout=60))
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
        assert len(list(t.trace("do_nanosleep", count=1, timeout=120))) == 1
