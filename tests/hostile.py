"""Helpers of the hostile-input suite (`tests/test_hostile_*.py`): a time bound on each probe,
and the assertion that an error is one clean line.

`within(seconds)` turns a hang (a blocking open of a FIFO, an endless template loop, a read
of a device) into a test failure: SIGALRM interrupts the probe, even inside a blocking system
call, and raises `Hung`. A soak run (`JAXINTERP_SOAK=1`) draws more random probes (`SOAK`).
"""

from __future__ import annotations

import contextlib
import os
import signal

SOAK = bool(os.environ.get("JAXINTERP_SOAK"))


class Hung(AssertionError):
    """A probe ran past its time bound."""


@contextlib.contextmanager
def within(seconds: float):
    """Fails the enclosed block with `Hung` if it runs longer than `seconds` (main thread only)."""
    def expire(signum, frame):
        raise Hung(f"probe still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_clean_line(message: str) -> None:
    """Asserts that an error message is one line of printable text (no control characters)."""
    assert message and "\n" not in message, f"expected one line, found {message!r}"
    assert message.isprintable(), f"control characters reach the terminal: {message!r}"


def refused(call, *needles: str) -> str:
    """The one clean line of the CheckpointError that `call()` raises within 30 s, checked to
    hold every needle."""
    import pytest

    import jaxinterp as ji

    with within(30), pytest.raises(ji.CheckpointError) as raised:
        call()
    message = str(raised.value)
    one_clean_line(message)
    for needle in needles:
        assert needle in message, message
    return message
