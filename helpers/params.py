"""Experiment parameters: what a widget shows, what the recorder sweeps, what is allowed.

A :class:`Param` describes one knob of an experiment. The same description drives the
widget control (slider or dropdown), the corpus grid (``choices``), and validation:
:func:`validate` turns any out-of-range or ill-typed value into a
:class:`~helpers.errors.ParameterError` that names the allowed values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import ParameterError


@dataclass(frozen=True)
class Param:
    """One experiment parameter.

    name     keyword argument of the experiment function
    label    short text for the widget
    default  value used when the caller gives none
    choices  the discrete values a widget offers and the corpus records (replay can
             only serve these); ``None`` as a choice means "kernel default"
    minimum, maximum   optional inclusive numeric bounds for live runs
    unit     shown after the value ("bytes", "s")
    doc      one sentence: what the knob changes
    """

    name: str
    label: str
    default: Any
    choices: Sequence[Any] = field(default_factory=tuple)
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""
    doc: str = ""

    def describe_allowed(self) -> str:
        parts = []
        if self.minimum is not None or self.maximum is not None:
            parts.append(f"a number from {self.minimum} to {self.maximum}")
        if self.choices:
            shown = ", ".join("default" if c is None else repr(c) for c in self.choices)
            parts.append(f"one of {shown}")
        return " or ".join(parts) if parts else "any value"

    def check(self, value: Any) -> Any:
        """Return *value* if allowed, else raise ParameterError naming the fix."""
        if value is None and (None in tuple(self.choices) or self.default is None):
            return None
        if self.choices and value in tuple(self.choices):
            return value
        if self.minimum is not None or self.maximum is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(
                    f"{self.name}={value!r} is not a number.",
                    f"give {self.name} {self.describe_allowed()}.",
                )
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ParameterError(
                    f"{self.name}={value!r} is out of range.",
                    f"give {self.name} {self.describe_allowed()}"
                    + (f" ({self.unit})" if self.unit else "")
                    + ".",
                )
            if isinstance(self.default, int) and not isinstance(value, int):
                if float(value).is_integer():
                    return int(value)
                raise ParameterError(
                    f"{self.name}={value!r} must be a whole number.",
                    f"give {self.name} {self.describe_allowed()}.",
                )
            return value
        raise ParameterError(
            f"{self.name}={value!r} is not one of the allowed values.",
            f"give {self.name} {self.describe_allowed()}.",
        )


def validate(params: Sequence[Param], values: dict[str, Any], *, replay: bool = False) -> dict[str, Any]:
    """Check *values* against *params*; fill defaults; reject unknown names.

    With ``replay=True`` only the recorded ``choices`` are accepted, because the corpus
    holds no capture for any other value.
    """
    by_name = {p.name: p for p in params}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)}.",
            f"this experiment takes: {', '.join(by_name) or 'no parameters'}.",
        )
    out = {}
    for p in params:
        v = p.check(values.get(p.name, p.default))
        if replay and p.choices and v not in tuple(p.choices):
            raise ParameterError(
                f"{p.name}={v!r} was not recorded in the corpus, and this run is replaying "
                f"recorded captures.",
                f"pick one of the recorded values: {', '.join(map(repr, p.choices))}; or run "
                f"live (root, or CAP_NET_RAW) to try any value.",
            )
        out[p.name] = v
    return out
