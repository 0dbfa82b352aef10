"""Opening, closing and reopening a live target: one QMP client at a time, so `close()`
(or the end of a `with` block) must free the socket, and resume a guest it paused."""

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
