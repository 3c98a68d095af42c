"""Exercise checkers: a clear ✓ or ✗ with the reason, never an exception.

Each checker prints one line -- ``✓ ...`` when right, ``✗ ...`` with a hint when
wrong, ``… not answered yet: ...`` while the answer is still ``...`` or ``None`` (no
hint then: a hint shown before the first attempt would give answers away) --
and returns a bool, so a learner always knows where they stand and the notebook keeps
running. In a Jupyter kernel the same line is also offered as coloured HTML (the
plain text stays in the notebook file, so nbval compares it).

    answer = ...        # the learner replaces ... with a number
    check_value(answer, 5, name="accept-queue length", hint="count the ESTAB sockets in ss")

End the line with ``;`` if you do not want the returned True/False echoed.
"""
from __future__ import annotations

import html
import math
import numbers
from typing import Any, Callable, Iterable

__all__ = ["check", "check_value", "not_answered", "todo", "Exercise"]

OK_MARK = "✓"
BAD_MARK = "✗"
TODO_MARK = "…"
_COLORS = {OK_MARK: "#1b7f3b", BAD_MARK: "#b00020", TODO_MARK: "#8a6d00"}


class _Line:
    """One checker line: plain text for terminals and files, HTML for notebooks."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        color = _COLORS.get(self.text[:1], "#222222")
        return f"<div style='color:{color}; font-weight:600'>{html.escape(self.text)}</div>"


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _emit(text: str) -> None:
    if _in_kernel():
        from IPython.display import display

        display(_Line(text))
    else:
        print(text)


def not_answered(value: Any) -> bool:
    """True for the placeholders a learner has not replaced yet: ``...`` and ``None``."""
    return value is None or value is Ellipsis


def todo(what: str) -> bool:
    """Print "… not answered yet: *what*" and return False (for custom checkers)."""
    _emit(f"{TODO_MARK} not answered yet: {what}")
    return False


def check(condition: Any, ok: str, hint: str) -> bool:
    """Print ``✓ ok`` if *condition* is true, else ``✗ hint``; return the verdict.

    A *condition* that is still ``...`` or ``None`` prints "… not answered yet". An
    exception raised while evaluating *condition* cannot be caught here: pass a
    callable (``check(lambda: answer > 3, ...)``) to have it reported as ✗ instead.
    """
    if callable(condition):
        try:
            condition = condition()
        except Exception as e:  # the learner's expression failed: say so, keep going
            _emit(f"{BAD_MARK} {hint} (your code raised {type(e).__name__}: {e})")
            return False
    if not_answered(condition):   # no hint yet: it only helps after a first attempt
        return todo("replace the ... with your answer, then run this cell again.")
    try:
        verdict = bool(condition)
    except Exception as e:  # e.g. an ambiguous numpy array
        _emit(f"{BAD_MARK} {hint} (the check could not be evaluated: {type(e).__name__}: {e})")
        return False
    _emit(f"{OK_MARK} {ok}" if verdict else f"{BAD_MARK} {hint}")
    return verdict


# ----------------------------------------------------------------------------- comparison

def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool) and not _is_bool(x)


def _is_bool(x: Any) -> bool:
    if isinstance(x, bool):
        return True
    try:
        import numpy as np

        return isinstance(x, np.bool_)
    except ImportError:  # pragma: no cover
        return False


def _as_number(x: Any) -> float | None:
    if _is_number(x):
        return x
    if isinstance(x, str):
        try:
            return float(x.strip().replace("_", "").replace(",", ""))
        except ValueError:
            return None
    return None


def _norm_str(s: str) -> str:
    return " ".join(str(s).split()).casefold()


def _norm_item(x: Any) -> Any:
    if isinstance(x, str):
        return _norm_str(x)
    if _is_number(x) and float(x).is_integer():
        return int(x)
    return x


def _close(a: float, b: float, tol: float | None, rel: float | None) -> bool:
    if tol is None and rel is None:
        if isinstance(a, numbers.Integral) and isinstance(b, numbers.Integral):
            return a == b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return math.isclose(a, b, rel_tol=rel or 0.0, abs_tol=tol or 0.0)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, (set, frozenset)):
        return "{" + ", ".join(sorted(map(repr, x))) + "}"
    return repr(x)


def _compare(answer: Any, expected: Any, tol, rel) -> tuple[bool, str]:
    """(right?, reason when wrong) -- reasons never reveal the expected value."""
    if _is_bool(expected):
        if not _is_bool(answer):
            return False, f"answer True or False (you gave {_fmt(answer)})"
        return bool(answer) == bool(expected), "that is the opposite"
    if _is_number(expected):
        a = _as_number(answer)
        if a is None:
            return False, f"a number is expected, you gave {_fmt(answer)}"
        if _close(a, expected, tol, rel):
            return True, ""
        if isinstance(a, float) and math.isnan(a):
            return False, "your answer is NaN"
        return False, f"{_fmt(answer)} is too {'high' if a > expected else 'low'}"
    if isinstance(expected, str):
        if not isinstance(answer, str):
            return False, f"a text answer is expected, you gave {_fmt(answer)}"
        return _norm_str(answer) == _norm_str(expected), f"{answer!r} is not it"
    if isinstance(expected, (set, frozenset)):
        if isinstance(answer, (str, bytes)) or not isinstance(answer, Iterable):
            return False, f"a collection of items is expected, you gave {_fmt(answer)}"
        got = {_norm_item(x) for x in answer}
        want = {_norm_item(x) for x in expected}
        if got == want:
            return True, ""
        extra = got - want
        missing = len(want - got)
        parts = []
        if missing:
            parts.append(f"{missing} item{'s' if missing != 1 else ''} missing")
        if extra:
            parts.append("not expected: " + ", ".join(sorted(map(repr, extra))))
        return False, "; ".join(parts)
    if isinstance(expected, (list, tuple)):
        if isinstance(answer, (str, bytes)) or not isinstance(answer, Iterable) or isinstance(answer, (set, frozenset)):
            return False, f"an ordered list is expected, you gave {_fmt(answer)}"
        answer = list(answer)
        if len(answer) != len(expected):
            return False, f"{len(answer)} item{'s' if len(answer) != 1 else ''} given, {len(expected)} expected"
        for i, (a, e) in enumerate(zip(answer, expected)):
            good, why = _compare(a, e, tol, rel)
            if not good:
                return False, f"item {i + 1}: {why}"
        return True, ""
    try:
        return bool(answer == expected), f"{_fmt(answer)} is not it"
    except Exception as e:
        return False, f"cannot compare {_fmt(answer)} ({type(e).__name__})"


def check_value(
    answer: Any,
    expected: Any,
    *,
    name: str,
    tol: float | None = None,
    rel: float | None = None,
    hint: str = "",
    reveal: bool = False,
) -> bool:
    """Compare a learner's *answer* with *expected*; print ✓/✗/not answered; return bool.

    numbers   within ``tol`` (absolute) and/or ``rel`` (relative); exact for integers
              when neither is given; numeric strings ("44", "1,000") are accepted
    strings   case-insensitive, whitespace-normalised
    sets      order-free (strings case-insensitive); the ✗ line counts what is missing
              and names the items that should not be there
    lists     order matters, element by element with the same rules
    booleans  True/False only

    The ✗ line says how the answer is off (too high/low, which item) but not the
    expected value, unless ``reveal=True``. Never raises for a wrong answer.
    """
    if not_answered(answer):   # no hint yet: it only helps after a first attempt
        return todo(f"set `{name}` to your answer (it is still {'...' if answer is Ellipsis else 'None'})")
    try:
        good, why = _compare(answer, expected, tol, rel)
    except Exception as e:  # a checker must never stop the notebook
        good, why = False, f"could not compare ({type(e).__name__}: {e})"
    if good:
        if isinstance(answer, (list, tuple, set, frozenset, dict)):
            _emit(f"{OK_MARK} {name}: right")
        else:
            _emit(f"{OK_MARK} {name}: {_fmt(answer)} is right")
        return True
    msg = f"{BAD_MARK} {name}: {why}."
    if reveal:
        band = f" ± {_fmt(tol)}" if tol else (f" ± {rel:.0%}" if rel else "")
        msg += f" Expected {_fmt(expected)}{band}."
    if hint:
        msg += f" Hint: {hint}"
    _emit(msg)
    return False


class Exercise:
    """A named exercise with one checker, so a notebook cell stays one line.

        ex = Exercise("accept-queue length", expected=5, hint="count the ESTAB sockets")
        ex.check(answer)
    """

    def __init__(self, name: str, expected: Any = None, *, tol: float | None = None, rel: float | None = None,
                 hint: str = "", test: Callable[[Any], bool] | None = None, ok: str = ""):
        self.name, self.expected, self.tol, self.rel, self.hint = name, expected, tol, rel, hint
        self.test, self.ok = test, ok

    def check(self, answer: Any) -> bool:
        if not_answered(answer):
            return check_value(answer, self.expected, name=self.name, hint=self.hint)
        if self.test is not None:
            try:
                verdict = self.test(answer)
            except Exception as e:
                _emit(f"{BAD_MARK} {self.name}: your answer could not be checked "
                      f"({type(e).__name__}: {e}). Hint: {self.hint}")
                return False
            return check(verdict, self.ok or f"{self.name}: right", f"{self.name}: not yet. {self.hint}".strip())
        return check_value(answer, self.expected, name=self.name, tol=self.tol, rel=self.rel, hint=self.hint)
