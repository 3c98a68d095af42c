"""Progress of a long experiment, reported to whoever listens.

Some phenomena take seconds by nature (a SYN retried after 1, 2 and 3 s cannot be shown
faster). An experiment reports how far it is with :func:`report` or waits with
:func:`sleep`; a :class:`helpers.widgets.Panel` listens and moves its progress bar.
With nobody listening, reporting costs nothing::

    with progress.listening(lambda fraction, text: print(f"{fraction:.0%} {text}")):
        result = accept_queue(backlog=2)
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Callable, Iterator

Listener = Callable[[float, str], None]
_current: ContextVar[Listener | None] = ContextVar("tcpcourse_progress", default=None)


def report(fraction: float, text: str = "") -> None:
    """Tell the listener (if any) that *fraction* (0..1) of the run is done."""
    callback = _current.get()
    if callback is not None:
        callback(min(1.0, max(0.0, float(fraction))), text)


@contextlib.contextmanager
def listening(callback: Listener) -> Iterator[None]:
    """Route :func:`report` calls made in this context to *callback*."""
    token = _current.set(callback)
    try:
        yield
    finally:
        _current.reset(token)


def sleep(seconds: float, start: float, end: float, text: str = "", *, step: float = 0.1,
          until: Callable[[], bool] | None = None) -> None:
    """Wait *seconds* (bounded), reporting progress from *start* to *end* as time passes.

    *until*: optional predicate checked every *step*; the wait ends early when it is true.
    """
    t0 = time.monotonic()
    deadline = t0 + max(0.0, seconds)
    while True:
        now = time.monotonic()
        if now >= deadline or (until is not None and until()):
            break
        report(start + (end - start) * (now - t0) / max(seconds, 1e-9), text)
        time.sleep(min(step, deadline - now))
    report(end, text)
