"""Helpers of the hostile-input suite (`tests/test_hostile_*.py`): a time bound on each probe,
the assertion that an error is one clean line, and the tally of a randomized campaign.

`within(seconds)` turns a hang (a blocking open of a FIFO, an endless template loop, a read
of a device) into a test failure: SIGALRM interrupts the probe, even inside a blocking system
call, and raises `Hung`. A soak run (`JAXINTERP_SOAK=1`) draws more random probes (`SOAK`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from typing import Any, Callable

SOAK = bool(os.environ.get("JAXINTERP_SOAK"))


class Hung(BaseException):
    """A probe ran past its time bound. A BaseException, so that no `except Exception` of the code
    under test can turn a hang into an ordinary error."""


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


@dataclasses.dataclass
class Tally:
    """Outcomes of one class of randomized probes: each probe ends as a clean refusal, an accepted
    input whose result passed its check, or a failure (a hang, a raw exception, a refused valid
    input, an accepted invalid one, or a wrong result), described for replay."""

    kind: str
    seed: int
    probes: int = 0
    refused: int = 0
    accepted: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    def probe(self, label: str, call: Callable[[], Any], *, valid: bool | None,
              check: Callable[[Any], None] = lambda result: None, seconds: float = 60) -> None:
        """Runs `call()` within `seconds`. `valid`: True, the input must be accepted; False, it must
        be refused with a one-line JaxinterpError; None, either. An accepted result goes to `check`."""
        from jaxinterp.errors import JaxinterpError

        self.probes += 1
        try:
            with within(seconds):
                result = call()
        except Hung as e:
            return self.failures.append(f"{label}: hang ({e})")
        except JaxinterpError as e:
            message = str(e)
            if valid:
                return self.failures.append(f"{label}: valid input refused: {message[:300]}")
            if not (message and "\n" not in message and message.isprintable()):
                return self.failures.append(f"{label}: refusal is not one printable line: {message[:300]!r}")
            self.refused += 1
            return None
        except Exception as e:  # noqa: BLE001 -- any other exception is what the campaign looks for
            return self.failures.append(f"{label}: raw {type(e).__name__}: {str(e)[:300]!r}")
        if valid is False:
            return self.failures.append(f"{label}: invalid input accepted")
        try:
            check(result)
        except AssertionError as e:
            return self.failures.append(f"{label}: wrong result: {str(e)[:300]}")
        except Exception as e:  # noqa: BLE001 -- a check that cannot run is a failure too, not a crash of the campaign
            return self.failures.append(f"{label}: its check raised {type(e).__name__}: {str(e)[:300]!r}")
        self.accepted += 1
        return None

    def counts(self) -> dict[str, Any]:
        return {"probes": self.probes, "refused": self.refused, "accepted": self.accepted,
                "failures": len(self.failures), "seed": self.seed}
