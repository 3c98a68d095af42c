"""One experiment function, four users: the notebook, the widget panel, the tests and the
corpus recorder all call the same :class:`Experiment`.

An experiment is a plain function decorated with :func:`experiment`::

    @experiment("handshake", chapter="01_02", needs={"live_capture"},
                params=[Param("mss", "TCP_MAXSEG", None, choices=(None, 536, 1400))],
                invariant=handshake_invariant)
    def handshake(run: LiveRun, mss=None) -> dict:
        with servers.request_response() as srv, run.capture([srv.port]):
            ...
        return {"port": srv.port, ...}      # JSON-able measurements

Calling ``handshake(mss=536)`` validates the parameters, decides the mode and returns a
:class:`Result`:

- live: the function runs now; its capture (if any) and measurements are the result;
- replay: when ``TCPCOURSE_MODE=replay``, or in ``auto`` mode when a capability in
  ``needs`` is missing, the recorded corpus entry for the same experiment and parameters
  is loaded instead, and ``result.reason`` says why. The result is marked so the notebook
  shows a banner. Never a silent fallback: ``TCPCOURSE_MODE=live`` with a missing
  capability raises :class:`~helpers.errors.PrivilegeError`.
"""
from __future__ import annotations

import functools
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import caps as _caps
from .. import corpus as _corpus
from ..errors import CorpusError, PrivilegeError
from ..params import Param, validate

REGISTRY: dict[str, "Experiment"] = {}


@dataclass
class Result:
    """What an experiment returns, live or replayed."""

    experiment: str
    params: dict[str, Any]
    mode: str                       # "live" or "replay"
    data: dict[str, Any]            # JSON-able measurements
    pcap: Path | None = None
    reason: str = ""                # why replayed (empty when live)
    source: dict[str, Any] | None = None  # manifest entry when replayed
    seconds: float = 0.0
    machine: dict[str, Any] | None = None  # rules.Machine snapshot taken before the run
    _segments: Any = field(default=None, repr=False)

    @property
    def live(self) -> bool:
        return self.mode == "live"

    def __getitem__(self, key):
        return self.data[key]

    def machine_snapshot(self):
        """The :class:`helpers.rules.Machine` this result was produced on: the experiment's
        own namespace snapshot when it took one (``data["machine"]``), else the host's taken
        just before a live run, else (replay) the corpus entry's."""
        from ..rules import Machine
        if isinstance(self.data, dict) and self.data.get("machine"):
            return Machine.from_dict(self.data["machine"])
        if self.machine:
            return Machine.from_dict(self.machine)
        if self.source:
            return Machine.from_manifest(self.source)
        from ..rules import machine
        return machine()

    def reference(self) -> str | None:
        """The corpus file recorded on the reference kernel for this experiment and these
        parameters, to compare with when a rule check fails (None if none is recorded)."""
        if self.source:
            f = self.source.get("pcap") or self.source.get("data") or {}
            return f"pcaps/{f.get('path')}" if f.get("path") else None
        try:
            e = _corpus.find(self.experiment, self.params)
        except Exception:
            return None
        f = e.get("pcap") or e.get("data") or {}
        return f"pcaps/{f.get('path')}" if f.get("path") else None

    def segments(self):
        """The capture as a DataFrame of TCP segments (cached)."""
        if self.pcap is None:
            raise CorpusError(f"experiment {self.experiment!r} made no capture.",
                              "only experiments that capture have segments().")
        if self._segments is None:
            from ..dissect import segments
            self._segments = segments(self.pcap)
        return self._segments

    def banner_text(self) -> str:
        if self.mode == "live":
            what = f"captured live just now ({self.pcap.name})" if self.pcap else "measured live just now"
            return f"LIVE: {self.experiment} {self._ptext()}: {what}."
        src = self.source or {}
        if src.get("pcap"):
            what, path = "packets and measurements come", src["pcap"].get("path", "?")
        else:
            what, path = "measurements come", src.get("data", {}).get("path", "?")
        run_live = "a live run" if src.get("pcap") is None else "a live capture"
        return (f"REPLAY: {self.experiment} {self._ptext()}: {what} from "
                f"the corpus file {path} recorded "
                f"{src.get('date', '?')[:10]} on Linux {src.get('kernel', '?')}, because {self.reason}. "
                + (f"Unset TCPCOURSE_MODE for {run_live}." if "TCPCOURSE_MODE" in self.reason
                   else f"Run as root for {run_live}."))

    def _ptext(self) -> str:
        if not self.params:
            return ""
        return "(" + ", ".join(f"{k}={'default' if v is None else v}" for k, v in self.params.items()) + ")"

    def _repr_html_(self) -> str:
        colour = "#e8f5e9" if self.live else "#fff3e0"
        edge = "#2e7d32" if self.live else "#ef6c00"
        return (f'<div style="background:{colour};border-left:6px solid {edge};padding:6px 10px;'
                f'font-family:sans-serif">{html.escape(self.banner_text())}</div>')

    def __repr__(self) -> str:
        return self.banner_text()


class LiveRun:
    """Handed to the experiment function on a live run: where to put the capture."""

    def __init__(self, experiment: "Experiment", params: dict[str, Any], outdir: Path | None):
        self.experiment = experiment
        self.params = params
        self.outdir = Path(outdir) if outdir else Path(_caps.scratch_dir())
        self.pcap: Path | None = None

    def capture(self, ports: Iterable[int], **kw):
        """A :class:`helpers.capture.Capture` writing this run's pcap."""
        from ..capture import Capture
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.pcap = self.outdir / f"{self.experiment.name}-{os.getpid()}-{time.time_ns()}.pcap"
        return Capture(ports, path=self.pcap, **kw)


class Experiment:
    def __init__(self, func: Callable, name: str, chapter: str, params: list[Param],
                 needs: set[str], invariant: Callable[[Result], None] | None,
                 claim: str, grid: list[dict] | None, seconds: float | None = None):
        self.func = func
        self.seconds = seconds   # typical live duration, shown by panels; None = about instant
        self.name = name
        self.chapter = chapter
        self.params = list(params)
        self.needs = set(needs)
        self.invariant = invariant
        self.claim = claim
        self._grid = grid
        functools.update_wrapper(self, func)

    # -- the grid the corpus records ------------------------------------------
    def grid(self) -> list[dict[str, Any]]:
        """Every parameter combination the corpus holds (explicit grid, else the product
        of all choices)."""
        if self._grid is not None:
            return [validate(self.params, g) for g in self._grid]
        import itertools
        names = [p.name for p in self.params]
        choices = [tuple(p.choices) or (p.default,) for p in self.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*choices)]

    @property
    def records(self) -> bool:
        """Does this experiment have corpus entries? (Only those that need privileges.)"""
        return bool(self.needs)

    def replay_reason(self, mode: str) -> str | None:
        """None when this run can be live; else why it replays."""
        if mode == "replay":
            return "TCPCOURSE_MODE=replay was set"
        missing = _caps.capabilities().missing(self.needs)
        if not missing:
            return None
        why = "; ".join(f"{c.name}: {c.detail}" for c in missing)
        if mode == "live":
            raise PrivilegeError(
                f"{self.name} needs {', '.join(c.name for c in missing)}, which this process lacks ({why}).",
                "run as root, or unset TCPCOURSE_MODE (auto) to replay the recorded corpus.")
        return why

    def __call__(self, _outdir: str | os.PathLike | None = None, **values) -> Result:
        mode = _caps.mode()
        # bad parameters get their own error first, whoever asks (before any privilege check)
        params = validate(self.params, values)
        # an experiment that needs nothing privileged always runs live, whatever the mode
        reason = self.replay_reason(mode) if self.needs else None
        if reason is not None:    # replay also needs the values the corpus recorded
            return self.replay(validate(self.params, values, replay=True), reason)
        run = LiveRun(self, params, _outdir)
        from ..rules import machine
        snapshot = machine().as_dict()   # before the run: the state the kernel starts from
        t0 = time.perf_counter()
        data = self.func(run, **params)
        seconds = time.perf_counter() - t0
        data = json.loads(json.dumps(data, default=_jsonable))  # same shape live and replayed
        return Result(self.name, params, "live", data, pcap=run.pcap, seconds=seconds, machine=snapshot)

    def replay(self, params: dict[str, Any], reason: str) -> Result:
        """The recorded Result for *params* (validated against the recorded values)."""
        rec = _corpus.load(self.name, params)
        return Result(self.name, dict(params), "replay", rec.data, pcap=rec.pcap,
                      reason=reason, source=rec.entry, machine=rec.entry.get("machine"))

    def check(self, result: Result) -> None:
        """Assert this experiment's invariant on *result* (AssertionError names the claim)."""
        if self.invariant is not None:
            self.invariant(result)

    def __repr__(self) -> str:
        return f"<experiment {self.name} (chapter {self.chapter})>"


def _jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def experiment(name: str, *, chapter: str, params: list[Param] = (), needs: Iterable[str] = (),
               invariant: Callable[[Result], None] | None = None, claim: str = "",
               grid: list[dict] | None = None, seconds: float | None = None):
    """Register a function as a course experiment (see the module docstring).

    *seconds*: how long a live run typically takes when the phenomenon needs time (SYN
    retries, timers); panels show it, and the function should report progress through
    :mod:`helpers.progress`.
    """
    def deco(func):
        exp = Experiment(func, name, chapter, list(params), set(needs), invariant,
                         claim or (func.__doc__ or "").strip().splitlines()[0], grid, seconds)
        if name in REGISTRY and REGISTRY[name].func.__module__ != func.__module__:
            raise ValueError(f"two experiments are named {name!r}")
        REGISTRY[name] = exp
        return exp
    return deco


def all_experiments() -> dict[str, Experiment]:
    """Import every experiment module and return the registry."""
    import importlib
    import pkgutil
    from .. import experiments as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    return dict(REGISTRY)
