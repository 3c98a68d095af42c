"""Experiment panels: controls for an experiment's parameters, a Run button, the result.

A :class:`Panel` wraps one experiment -- a plain function taking keyword parameters --
and the list of :class:`~helpers.params.Param` that describe those parameters::

    panel = Panel(run_nagle, NAGLE_PARAMS, render=show_nagle, title="Nagle vs delayed ACK")
    panel                       # displays the controls, the Run button, the result area
    panel.update(nodelay=True)  # what the button does; tests and nbval call it directly

The callbacks are plain methods: :meth:`Panel.update` validates the values with
:func:`helpers.params.validate`, runs the experiment, times it, renders the result and
returns it. Widgets never fire under nbval, so a notebook that calls ``update`` once
has committed output and a test.

Error handling, so that a learner never loses the panel:

- an invalid value (out of range, not recorded for replay) shows the message in red,
  keeps the previous result, and raises :class:`~helpers.errors.ParameterError` to a
  direct caller (the button swallows it: the message is already on screen);
- any other :class:`~helpers.errors.CourseError` raised by the experiment is shown
  (problem and fix) and ``update`` returns ``None``;
- any other exception is shown with a short traceback and re-raised;
- a KeyboardInterrupt (the kernel's stop button) is reported as "interrupted", the
  panel is reset so Run works again, and the interrupt is re-raised to a direct caller.

When the course is replaying recorded captures (``replay=True``, or a callable that
returns True), controls offer only the recorded values (``Param.choices``), as
dropdowns, and validation runs with ``replay=True``.
"""
from __future__ import annotations

import asyncio
import html
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import ipywidgets as W

from . import progress as _progress
from .errors import CourseError, ParameterError
from .notebook import to_output  # noqa: F401  (re-exported: panels and tests use it)
from .params import Param, validate

__all__ = ["Panel", "make_control", "to_output"]

KERNEL_DEFAULT = "kernel default"
_RED = "#b00020"
_GREEN = "#1b7f3b"
_GREY = "#555555"


# ----------------------------------------------------------------------------- controls

def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 and None apart from everything."""
    if a is None or b is None:
        return a is b
    if _is_bool(a) != _is_bool(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _index_of(choices: Sequence[Any], value: Any) -> int | None:
    for i, c in enumerate(choices):
        if _same(c, value):
            return i
    return None


def _choice_label(p: Param, v: Any) -> str:
    if v is None:
        return KERNEL_DEFAULT
    if _is_bool(v):
        return "on" if v else "off"
    return f"{v} {p.unit}".strip()


def _nice_step(lo: float, hi: float) -> float:
    span = (hi - lo) / 100 or 1.0
    mag = 10 ** int(f"{span:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if m * mag >= span:
            return m * mag
    return span


class Control:
    """One parameter's widget, with ``get()``/``set()`` and the widgets to observe."""

    kind: str  # "dropdown", "checkbox", "slider", "slider+default", "text"

    def __init__(self, param: Param, *, replay: bool = False):
        self.param = p = param
        choices = tuple(p.choices)
        bounded = p.minimum is not None and p.maximum is not None
        allows_none = None in choices or p.default is None
        style = {"description_width": "initial"}
        tip = p.doc or None
        self.kind = ""
        if choices and all(_is_bool(c) for c in choices) and len(choices) == 2:
            self.kind = "checkbox"
            self.input = W.Checkbox(value=bool(p.default), description=p.label, tooltip=tip,
                                    indent=False, style=style)
            self.watch = [self.input]
            self.widget = self.input
        elif choices and (replay or not (bounded or p.minimum is not None or p.maximum is not None)):
            self.kind = "dropdown"
            self._choices = choices
            idx = _index_of(choices, p.default)
            self.input = W.Dropdown(
                options=[(_choice_label(p, c), i) for i, c in enumerate(choices)],
                value=0 if idx is None else idx, description=p.label, tooltip=tip, style=style,
            )
            self.watch = [self.input]
            self.widget = self.input
        elif bounded:
            numeric = [c for c in choices if c is not None and not _is_bool(c)]
            as_int = _is_int(p.default) or (
                p.default is None and all(_is_int(c) for c in numeric)
                and float(p.minimum).is_integer() and float(p.maximum).is_integer()
            )
            start = p.default if p.default is not None else (numeric[0] if numeric else p.minimum)
            start = min(max(start, p.minimum), p.maximum)
            self.slider = None
            self.note = None
            if as_int and _wants_exact(p):
                # A byte size or a wide range: a slider to sweep, a text box for the exact
                # value (1460, 65536). The box is not clamped, so a value out of range
                # reaches validation and gets its clear error, here as you type and on Run.
                self.slider = W.IntSlider(value=int(start), min=int(p.minimum), max=int(p.maximum), step=1,
                                          description=p.label, tooltip=tip, continuous_update=False,
                                          readout=False, style=style, layout=W.Layout(width="24em"))
                self.input = W.IntText(value=int(start), tooltip=tip, continuous_update=False,
                                       layout=W.Layout(width="9em"))
                self.note = W.HTML()
                self.slider.observe(self._slider_moved, "value")
                self.input.observe(self._text_typed, "value")
            elif as_int:
                self.input = W.IntSlider(value=int(start), min=int(p.minimum), max=int(p.maximum), step=1,
                                         description=p.label, tooltip=tip, continuous_update=False, style=style,
                                         layout=W.Layout(width="32em"))
            else:
                self.input = W.FloatSlider(value=float(start), min=float(p.minimum), max=float(p.maximum),
                                           step=_nice_step(float(p.minimum), float(p.maximum)),
                                           description=p.label, tooltip=tip, continuous_update=False,
                                           style=style, layout=W.Layout(width="32em"))
            parts: list[W.Widget] = [self.input] if self.slider is None else [self.slider, self.input]
            if p.unit:
                parts.append(W.Label(p.unit))
            self.default_box = None
            if allows_none:
                self.kind = "slider+default"
                self.default_box = W.Checkbox(value=p.default is None, description=KERNEL_DEFAULT, indent=False,
                                              layout=W.Layout(width="auto"))
                self._disable(self.default_box.value)
                self.default_box.observe(lambda ch: self._disable(bool(ch["new"])), "value")
                parts.append(self.default_box)
            else:
                self.kind = "slider"
            if self.note is not None:
                parts.append(self.note)
            self.watch = [w for w in (self.input, self.default_box) if w is not None]
            self.widget = W.HBox(parts, layout=W.Layout(align_items="center")) if len(parts) > 1 else self.input
        else:
            self.kind = "text"
            d = p.default
            if _is_bool(d):
                self.kind = "checkbox"
                self.input = W.Checkbox(value=d, description=p.label, tooltip=tip, indent=False, style=style)
            elif _is_int(d):
                self.input = W.IntText(value=d, description=p.label, tooltip=tip, continuous_update=False,
                                       style=style)
            elif isinstance(d, float):
                self.input = W.FloatText(value=d, description=p.label, tooltip=tip, continuous_update=False,
                                         style=style)
            else:
                self.input = W.Text(value="" if d is None else str(d), description=p.label, tooltip=tip,
                                    continuous_update=False, style=style)
            self.watch = [self.input]
            self.widget = self.input

    # -- slider + exact text box
    def _disable(self, off: bool) -> None:
        for w in (self.input, self.slider):
            if w is not None:
                w.disabled = off

    def _slider_moved(self, change: dict) -> None:
        if self.input.value != change["new"]:
            self.input.value = change["new"]

    def _text_typed(self, change: dict) -> None:
        """Move the slider to a typed value in range; say at once what is wrong otherwise."""
        value = change["new"]
        try:
            self.param.check(value)
        except ParameterError as e:
            self.note.value = f"<span style='color:{_RED}'>{html.escape(str(e))}</span>"
            return
        self.note.value = ""
        if self.slider is not None and self.slider.min <= value <= self.slider.max and self.slider.value != value:
            self.slider.value = value

    @property
    def note_text(self) -> str:
        """The message beside an exact-value box ("" when the value is allowed)."""
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.note.value)) if self.note is not None else ""

    def get(self) -> Any:
        if self.kind == "dropdown":
            return self._choices[self.input.value]
        if self.kind == "slider+default" and self.default_box.value:
            return None
        if isinstance(self.input, W.Text) and self.input.value == "" and self.param.default is None:
            return None
        return self.input.value

    def set(self, value: Any) -> None:
        if self.kind == "dropdown":
            idx = _index_of(self._choices, value)
            if idx is not None:
                self.input.value = idx
        elif self.kind == "slider+default":
            self.default_box.value = value is None
            if value is not None:
                self.input.value = value
        elif isinstance(self.input, W.Text):
            self.input.value = "" if value is None else str(value)
        elif value is not None:
            self.input.value = value

    def observe(self, callback: Callable) -> None:
        for w in self.watch:
            w.observe(callback, "value")


def _wants_exact(p: Param) -> bool:
    """Integer parameters a slider cannot set exactly: byte sizes, and ranges wider than
    a slider's few hundred pixels (one pixel would be more than one value)."""
    return p.unit.lower() in ("bytes", "byte", "b") or (p.maximum - p.minimum) > 500


def make_control(param: Param, *, replay: bool = False) -> Control:
    """The control for one :class:`Param` (what :class:`Panel` builds for each)."""
    return Control(param, replay=replay)


# ----------------------------------------------------------------------------- output

def _experiment_replays(run: Any) -> bool:
    """True when *run* is a course experiment that would replay the corpus right now."""
    needs = getattr(run, "needs", None)
    reason = getattr(run, "replay_reason", None)
    if not needs or not callable(reason):
        return False
    from . import caps
    try:
        return reason(caps.mode()) is not None
    except CourseError:     # forced live without the capability: the run will say so
        return False


def _default_render(result: Any) -> list:
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


def _short_traceback(exc: BaseException, frames: int = 3) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-frames)
    return "".join(lines).rstrip()


# ----------------------------------------------------------------------------- panel

class Panel:
    """An experiment panel: one control per :class:`Param`, a Run button, the result.

    run      the experiment: a plain function called as ``run(**values)``
    params   its parameters; each becomes a control (Dropdown for choices, with None
             shown as "kernel default"; IntSlider/FloatSlider for minimum..maximum,
             with a text box for the exact value where the unit is bytes or the
             range is wide; Checkbox for True/False)
    render   ``render(result) -> list`` of Figures, DataFrames, strings (Markdown) or
             anything displayable; default: the result itself
    title    shown above the controls
    auto     run when a control changes (sliders fire on release), debounced by
             *debounce* seconds inside a running kernel
    replay   True, or a callable returning True, when the course replays recorded
             captures: controls then offer only ``Param.choices``. Default (None): ask
             the experiment (``run.replay_reason``) whether it would replay now
    """

    def __init__(
        self,
        run: Callable[..., Any],
        params: Sequence[Param],
        render: Callable[[Any], Iterable[Any]] | None = None,
        *,
        title: str = "",
        auto: bool = False,
        replay: bool | Callable[[], bool] | None = None,
        debounce: float = 0.4,
    ):
        if not callable(run):
            raise TypeError("Panel(run, ...): run must be the experiment function")
        self.run = run
        self.params = list(params)
        self.render = render
        self.title = title
        self.auto = auto
        self.debounce = debounce
        self._replay = replay
        self.result: Any = None
        self.ran_with: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.last_traceback = ""
        self.elapsed: float | None = None
        self.shown: list = []
        self.busy = False
        self._syncing = False
        self._timer = None

        replaying = self.replaying
        self.controls: dict[str, Control] = {p.name: Control(p, replay=replaying) for p in self.params}
        self.button = W.Button(description="Run", button_style="primary", icon="play",
                               tooltip="run the experiment with these values")
        self.button.on_click(self._on_click)
        self.status = W.HTML()
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                        layout=W.Layout(display="none", width="14em"))
        self.progress_seen: list[tuple[float, str]] = []
        self.error_box = W.HTML()
        self.output = W.Output()
        parts: list[W.Widget] = []
        if title:
            parts.append(W.HTML(f"<h4 style='margin:0.2em 0'>{html.escape(title)}</h4>"))
        if replaying:
            parts.append(W.HTML(
                f"<span style='color:{_GREY}'>Replaying recorded captures: only the recorded values "
                f"are offered.</span>"
            ))
        parts.extend(c.widget for c in self.controls.values())
        parts.append(W.HBox([self.button, self.progress, self.status], layout=W.Layout(align_items="center")))
        parts.extend([self.error_box, self.output])
        self.widget = W.VBox(parts)
        for c in self.controls.values():
            c.observe(self._on_change)
        self._set_status(
            "changes run automatically" if auto else "press Run to start the experiment", _GREY
        )

    # -- state
    @property
    def replaying(self) -> bool:
        r = self._replay
        if r is None:   # an experiment knows whether it would replay now
            return _experiment_replays(self.run)
        return bool(r()) if callable(r) else bool(r)

    def values(self) -> dict[str, Any]:
        """The controls' current values, by parameter name."""
        return {name: c.get() for name, c in self.controls.items()}

    @property
    def status_text(self) -> str:
        """The status line as plain text."""
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value.replace("<br>", "\n")))

    def _set_status(self, text: str, color: str = _GREY) -> None:
        body = html.escape(text).replace("\n", "<br>")
        self.status.value = f"<span style='color:{color}; white-space:pre-wrap'>{body}</span>"

    def _show_error(self, text: str) -> None:
        self.error_box.value = (
            f"<pre style='color:{_RED}; font-size:85%; margin:0.3em 0; white-space:pre-wrap'>"
            f"{html.escape(text)}</pre>" if text else ""
        )

    def _sync_controls(self, values: dict[str, Any]) -> None:
        self._syncing = True
        try:
            for name, v in values.items():
                try:
                    self.controls[name].set(v)
                except Exception:  # a value a control cannot show is still valid to run
                    pass
        finally:
            self._syncing = False

    def _show(self, items: list) -> None:
        self.shown = list(items)
        self.output.outputs = tuple(to_output(x) for x in items)

    # -- the callback
    def update(self, **values: Any) -> Any:
        """Validate *values* (missing ones from the controls), run, show and return the result."""
        merged = {**self.values(), **values}
        replay = self.replaying
        try:
            checked = validate(self.params, merged, replay=replay)
        except ParameterError as e:
            self.error = e
            self._set_status(f"✗ {e}", _RED)
            raise
        self._sync_controls(checked)
        self.busy = True
        self.button.disabled = True
        hint = getattr(self.run, "seconds", None)
        self._set_status("running…" + (f" (about {hint:g} s live)" if hint and not replay else ""), _GREY)
        self._show_error("")
        self.progress_seen = []
        self.progress.value = 0.0
        t0 = time.perf_counter()
        try:
            with _progress.listening(self._on_progress):
                result = self.run(**checked)
            items = list((self.render or _default_render)(result))
            self._show(items)
        except ParameterError as e:
            self.error = e
            self._set_status(f"✗ {e}", _RED)
            raise
        except CourseError as e:
            self.error = e
            self._set_status(f"✗ {e}", _RED)
            return None
        except KeyboardInterrupt as e:
            self.error = e
            self._set_status("interrupted: the previous result is kept; press Run to try again", _RED)
            raise
        except Exception as e:
            self.error = e
            self.last_traceback = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            self._set_status(f"✗ the experiment failed: {type(e).__name__}: {e}", _RED)
            self._show_error(_short_traceback(e))
            raise
        finally:
            self.busy = False
            self.button.disabled = False
            self.progress.layout.display = "none"
            self.elapsed = time.perf_counter() - t0
        self.result = result
        self.ran_with = checked
        self.error = None
        note = " (replayed from the recorded corpus)" if replay else ""
        self._set_status(f"✓ ran in {self.elapsed:.2f} s{note}", _GREEN)
        return result

    def show(self) -> None:
        """Display what the panel shows (after :meth:`update`) as ordinary cell output, so a
        saved notebook carries it: figures as images, strings as Markdown."""
        from .notebook import show

        show(self.shown)

    def _on_progress(self, fraction: float, text: str) -> None:
        """A long experiment reports progress: move the bar, say what it waits for."""
        self.progress_seen.append((fraction, text))
        self.progress.layout.display = ""
        self.progress.value = fraction
        self._set_status(f"running… {fraction:.0%}" + (f": {text}" if text else ""), _GREY)

    def _on_click(self, _button: Any = None) -> None:
        """What the Run button (and an auto update) calls: update() with the controls' values.

        A CourseError (including an invalid value) or an interrupt is already shown in the
        panel, so it stops here; anything else is a bug and propagates after being shown.
        """
        try:
            self.update(**self.values())
        except (CourseError, KeyboardInterrupt):
            pass

    def _on_change(self, _change: Any = None) -> None:
        if self._syncing or not self.auto:
            return
        self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.debounce <= 0:
            self._on_click()
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self.busy:
            self._schedule()
            return
        try:
            self._on_click()
        except Exception:
            pass  # shown in the panel already; nowhere useful to raise inside the event loop

    # -- display
    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The widget view, with a short, stable plain-text form.

        A widget's own text/plain repr embeds every output (base64 PNGs) and the timing
        in the status line, which would make nbval fail and notebooks unreadable on
        GitHub; this text names the panel and its parameters only.
        """
        data = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        if isinstance(data, tuple):
            data = data[0]
        data = dict(data)
        data["text/plain"] = self.summary()
        return data

    def summary(self) -> str:
        names = ", ".join(p.name for p in self.params) or "no parameters"
        what = f"“{self.title}”" if self.title else getattr(self.run, "__name__", "experiment")
        return f"[experiment panel {what}: {names}; interactive in Jupyter]"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)

    def __repr__(self) -> str:
        name = getattr(self.run, "__name__", "run")
        return f"Panel({name}, params=[{', '.join(p.name for p in self.params)}])"
