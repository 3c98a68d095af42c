"""Experiment panels, driven through their plain callbacks (nbval cannot click)."""
from __future__ import annotations

import asyncio
import base64

import matplotlib

matplotlib.use("Agg")

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from helpers.errors import ParameterError, PrivilegeError
from helpers.params import Param
from helpers.notebook import to_output
from helpers.widgets import KERNEL_DEFAULT, Panel, make_control

PARAMS = [
    Param("backlog", "listen backlog", 4, choices=(1, 4, 16), minimum=0, maximum=128, doc="listen(backlog)"),
    Param("clients", "clients", 8, choices=(4, 8, 32), minimum=1, maximum=64),
    Param("rcvbuf", "SO_RCVBUF", None, choices=(None, 4096, 65536), minimum=1024, maximum=1 << 20, unit="bytes"),
    Param("pause", "reader pause", 0.5, choices=(0.5, 2.0), minimum=0.0, maximum=5.0, unit="s"),
    Param("nodelay", "TCP_NODELAY", False, choices=(False, True)),
    Param("pattern", "write pattern", "split", choices=("split", "combined", "writev")),
    Param("congestion", "congestion control", None, choices=(None, "cubic", "bbr")),
]


def experiment(**kw):
    experiment.calls.append(kw)
    return {"ran": kw}


experiment.calls = []


@pytest.fixture(autouse=True)
def _reset():
    experiment.calls.clear()
    yield
    plt.close("all")


def status(panel):
    return panel.status_text


# --------------------------------------------------------------------------- controls

def test_control_types_match_params():
    panel = Panel(experiment, PARAMS)
    c = panel.controls
    assert isinstance(c["backlog"].input, W.IntSlider) and c["backlog"].kind == "slider"
    assert (c["backlog"].input.min, c["backlog"].input.max, c["backlog"].input.value) == (0, 128, 4)
    assert c["backlog"].input.continuous_update is False
    # a byte size: a slider to sweep and a text box for the exact value
    assert isinstance(c["rcvbuf"].slider, W.IntSlider) and c["rcvbuf"].kind == "slider+default"
    assert isinstance(c["rcvbuf"].input, W.IntText) and c["backlog"].slider is None
    assert c["rcvbuf"].default_box.description == KERNEL_DEFAULT and c["rcvbuf"].default_box.value is True
    assert isinstance(c["pause"].input, W.FloatSlider)
    assert isinstance(c["nodelay"].input, W.Checkbox)
    assert isinstance(c["pattern"].input, W.Dropdown)
    assert isinstance(c["congestion"].input, W.Dropdown)
    assert [lab for lab, _ in c["congestion"].input.options] == [KERNEL_DEFAULT, "cubic", "bbr"]
    assert panel.values() == {
        "backlog": 4, "clients": 8, "rcvbuf": None, "pause": 0.5, "nodelay": False,
        "pattern": "split", "congestion": None,
    }


def test_controls_without_choices_or_bounds():
    c = make_control(Param("name", "name", "x"))
    assert isinstance(c.input, W.Text) and c.get() == "x"
    c = make_control(Param("n", "n", 3))
    assert isinstance(c.input, W.IntText) and c.get() == 3
    c = make_control(Param("flag", "flag", True))
    assert isinstance(c.input, W.Checkbox)
    c = make_control(Param("size", "size", 10, choices=(10, 20)))
    assert isinstance(c.input, W.Dropdown)
    assert [lab for lab, _ in c.input.options] == ["10", "20"]
    c.set(20)
    assert c.get() == 20


def test_kernel_default_checkbox_toggles_slider():
    c = make_control(PARAMS[2])
    assert c.get() is None and c.input.disabled
    c.default_box.value = False
    assert not c.input.disabled
    assert not c.slider.disabled
    c.input.value = 8192
    assert c.get() == 8192 and c.slider.value == 8192
    c.set(None)
    assert c.get() is None


# --------------------------------------------------------------------------- update

def test_update_runs_validated_values_and_shows_result():
    panel = Panel(experiment, PARAMS, render=lambda r: [f"**backlog** {r['ran']['backlog']}"], title="Accept queue")
    out = panel.update(backlog=7)
    assert out == panel.result == {"ran": {**panel.values()}}
    assert experiment.calls[-1]["backlog"] == 7
    assert panel.controls["backlog"].get() == 7  # the controls show what ran
    assert status(panel).startswith("✓ ran in ") and status(panel).endswith(" s")
    assert panel.shown == ["**backlog** 7"]
    assert panel.output.outputs[0]["data"]["text/markdown"] == "**backlog** 7"
    assert panel.elapsed is not None and panel.busy is False


def test_update_fills_other_values_from_controls():
    panel = Panel(experiment, PARAMS)
    panel.controls["clients"].set(32)
    panel.update(backlog=1)
    assert experiment.calls[-1]["clients"] == 32 and experiment.calls[-1]["backlog"] == 1


def test_out_of_range_raises_and_keeps_previous_result():
    panel = Panel(experiment, PARAMS, render=lambda r: ["first"])
    first = panel.update(backlog=4)
    with pytest.raises(ParameterError, match="out of range"):
        panel.update(backlog=1000)
    assert "backlog=1000 is out of range" in status(panel)
    assert "fix:" in status(panel)
    assert _RED_IN(panel.status.value)
    assert panel.result is first and panel.shown == ["first"]
    assert len(experiment.calls) == 1
    with pytest.raises(ParameterError, match="unknown parameter"):
        panel.update(bogus=1)


def _RED_IN(html_value):
    return "#b00020" in html_value


def test_replay_restricts_controls_and_values():
    panel = Panel(experiment, PARAMS, replay=True)
    c = panel.controls
    for name in ("backlog", "clients", "rcvbuf", "pause"):
        assert isinstance(c[name].input, W.Dropdown), name
    assert [lab for lab, _ in c["rcvbuf"].input.options] == [KERNEL_DEFAULT, "4096 bytes", "65536 bytes"]
    assert [lab for lab, _ in c["backlog"].input.options] == ["1", "4", "16"]
    assert isinstance(c["nodelay"].input, W.Checkbox)
    panel.update(backlog=16, rcvbuf=4096)
    assert experiment.calls[-1]["backlog"] == 16 and experiment.calls[-1]["rcvbuf"] == 4096
    assert "replayed" in status(panel)
    with pytest.raises(ParameterError, match="not recorded"):
        panel.update(backlog=5)  # in range live, but not in the corpus
    assert "not recorded" in status(panel)


def test_replay_may_be_a_callable_checked_at_each_update():
    state = {"replay": False}
    panel = Panel(experiment, PARAMS, replay=lambda: state["replay"])
    assert isinstance(panel.controls["backlog"].input, W.IntSlider)
    panel.update(backlog=5)
    state["replay"] = True
    with pytest.raises(ParameterError):
        panel.update(backlog=5)


def test_course_error_is_shown_not_raised():
    def needs_root(**kw):
        raise PrivilegeError("live capture needs CAP_NET_RAW.", "run in replay mode.")

    panel = Panel(needs_root, PARAMS)
    assert panel.update() is None
    assert "live capture needs CAP_NET_RAW" in status(panel) and "run in replay mode" in status(panel)
    assert isinstance(panel.error, PrivilegeError)
    assert not panel.busy and not panel.button.disabled
    panel.button.click()  # through the real click handler: nothing escapes
    panel._on_click(panel.button)


def test_other_exceptions_are_shown_and_reraised():
    def buggy(**kw):
        return {}["missing"]

    panel = Panel(buggy, PARAMS)
    with pytest.raises(KeyError):
        panel.update()
    assert "KeyError" in status(panel)
    assert "Traceback" in panel.error_box.value and "buggy" in panel.error_box.value
    assert not panel.busy and not panel.button.disabled


def test_keyboard_interrupt_leaves_panel_usable():
    calls = []

    def slow(**kw):
        calls.append(kw)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return len(calls)

    panel = Panel(slow, PARAMS, render=lambda r: [f"run {r}"])
    assert panel.update() == 1
    with pytest.raises(KeyboardInterrupt):
        panel.update()
    assert "interrupted" in status(panel)
    assert not panel.busy and not panel.button.disabled
    assert panel.result == 1 and panel.shown == ["run 1"]
    assert panel.update() == 3


def test_button_handler_calls_update(monkeypatch):
    panel = Panel(experiment, PARAMS)
    seen = []
    monkeypatch.setattr(panel, "update", lambda **kw: seen.append(kw))
    handler = panel.button._click_handlers.callbacks[0]
    handler(panel.button)
    assert seen == [panel.values()]


def test_button_handler_swallows_parameter_errors_already_shown():
    panel = Panel(experiment, [Param("n", "n", 5, minimum=0)])
    assert isinstance(panel.controls["n"].input, W.IntText)  # one bound only: a text box
    panel.controls["n"].input.value = -5
    panel.button._click_handlers.callbacks[0](panel.button)
    assert "out of range" in status(panel)


def test_running_status_and_disabled_button_during_run():
    seen = {}

    def probe(**kw):
        seen["status"] = panel.status_text
        seen["disabled"] = panel.button.disabled
        seen["busy"] = panel.busy
        return 1

    panel = Panel(probe, PARAMS)
    panel.update()
    assert seen == {"status": "running…", "disabled": True, "busy": True}


def test_figures_are_shown_as_png_and_closed():
    def plot(**kw):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, kw["backlog"]])
        return fig

    panel = Panel(plot, PARAMS, render=lambda fig: [fig, pd.DataFrame({"a": [1]}), "done"])
    before = len(plt.get_fignums())
    panel.update()
    assert len(plt.get_fignums()) == before  # closed after display
    first, table, text = panel.output.outputs
    assert base64.b64decode(first["data"]["image/png"])[:4] == b"\x89PNG"
    assert "<table" in table["data"]["text/html"]
    assert text["data"]["text/markdown"] == "done"


def test_default_render_shows_the_result():
    panel = Panel(lambda **kw: "plain result", PARAMS)
    panel.update()
    assert panel.shown == ["plain result"]
    panel = Panel(lambda **kw: None, PARAMS)
    panel.update()
    assert panel.output.outputs == ()


def test_auto_runs_on_change_without_an_event_loop():
    panel = Panel(experiment, PARAMS, auto=True)
    panel.controls["backlog"].input.value = 9
    assert experiment.calls[-1]["backlog"] == 9
    n = len(experiment.calls)
    panel.update(backlog=3)  # syncing the controls must not trigger another run
    assert len(experiment.calls) == n + 1
    manual = Panel(experiment, PARAMS)
    manual.controls["backlog"].input.value = 10
    assert len(experiment.calls) == n + 1


def test_auto_is_debounced_inside_a_running_loop():
    panel = Panel(experiment, PARAMS, auto=True, debounce=0.05)

    async def drag():
        for v in (10, 11, 12, 13):
            panel.controls["backlog"].input.value = v
        await asyncio.sleep(0.2)

    asyncio.run(drag())
    assert [c["backlog"] for c in experiment.calls] == [13]


def test_display_and_widget():
    panel = Panel(experiment, PARAMS, title="Accept queue")
    assert isinstance(panel.widget, W.VBox)
    assert "Accept queue" in panel.widget.children[0].value
    assert "backlog" in repr(panel)
    assert to_output("x")["data"]["text/plain"] == "x"


def test_display_bundle_is_short_and_stable():
    panel = Panel(experiment, PARAMS, title="Accept queue")
    panel.update()
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == (
        "[experiment panel “Accept queue”: backlog, clients, rcvbuf, pause, nodelay, pattern, congestion; "
        "interactive in Jupyter]"
    )


def test_panel_shows_progress_of_a_long_run():
    """An experiment that reports progress moves the panel's bar and names what it waits for;
    the bar is hidden again when the run ends."""
    from helpers import progress
    from helpers.params import Param
    from helpers.widgets import Panel

    def slow(n=2):
        progress.report(0.25, "waiting for a retry")
        progress.sleep(0.05, 0.25, 1.0, "almost there", step=0.01)
        return n

    slow.seconds = 3
    panel = Panel(slow, [Param("n", "n", 2, minimum=1, maximum=4)])
    assert panel.update(n=3) == 3
    fractions = [f for f, _ in panel.progress_seen]
    assert fractions[0] == 0.25 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert any("waiting for a retry" in t for _, t in panel.progress_seen)
    assert panel.progress.layout.display == "none"
    progress.report(0.5, "nobody listens")   # outside a panel: a no-op, no error


def test_progress_sleep_is_bounded_and_can_end_early():
    import time
    from helpers import progress
    seen = []
    t0 = time.monotonic()
    with progress.listening(lambda f, t: seen.append(f)):
        progress.sleep(5, 0, 1, until=lambda: time.monotonic() - t0 > 0.05, step=0.01)
    assert time.monotonic() - t0 < 1 and seen[-1] == 1.0


def test_panel_asks_the_experiment_whether_it_replays(monkeypatch):
    """Without replay=, a panel over a privileged experiment offers only recorded values when
    that experiment would replay, and any value when it runs live."""
    from helpers.experiments.handshake import handshake, kernel_answers
    from helpers.widgets import Panel

    monkeypatch.setenv("TCPCOURSE_MODE", "replay")
    assert Panel(handshake, handshake.params).replaying
    assert not Panel(kernel_answers, kernel_answers.params).replaying   # needs nothing: always live
    assert not Panel(lambda **kw: kw, []).replaying                     # a plain function


def test_panel_show_displays_strings_as_markdown_and_figures_as_images(monkeypatch):
    import matplotlib.pyplot as plt
    from helpers.widgets import Panel
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))

    def run():
        return 1

    def render(_):
        fig, ax = plt.subplots()
        return ["**bold** note", fig]

    panel = Panel(run, [], render=render)
    panel.update()
    panel.show()
    assert [sorted(d) for d, _ in shown] == [["text/markdown", "text/plain"], ["image/png", "text/plain"]]
    assert all(raw for _, raw in shown)


# --------------------------------------------------------------------------- exact byte sizes

BODY = Param("body", "body size", 100, choices=(100, 1000, 2000), minimum=1, maximum=65536, unit="bytes")


def test_byte_control_accepts_an_exact_value_without_dragging():
    c = make_control(BODY)
    assert isinstance(c.input, W.IntText) and isinstance(c.slider, W.IntSlider)
    assert (c.slider.min, c.slider.max) == (1, 65536)
    assert c.slider.readout is False        # the box shows the number, once
    c.input.value = 1460                    # typed, as a learner would an Ethernet MSS
    assert c.get() == 1460 and c.slider.value == 1460 and c.note_text == ""
    c.slider.value = 3000                   # dragging still works, and fills the box
    assert c.input.value == 3000 and c.get() == 3000
    panel = Panel(experiment, [BODY])
    panel.controls["body"].input.value = 1460
    panel._on_click()                       # what the Run button does
    assert experiment.calls[-1] == {"body": 1460}
    assert status(panel).startswith("✓")


def test_byte_control_out_of_range_gives_the_clear_error():
    c = make_control(BODY)
    c.input.value = 70000                   # the box is not clamped: the range check speaks
    assert c.get() == 70000 and c.slider.value == 100
    assert "body=70000 is out of range" in c.note_text and "1 to 65536" in c.note_text
    c.input.value = 1460
    assert c.note_text == ""
    panel = Panel(experiment, [BODY])
    panel.controls["body"].input.value = 0
    panel._on_click()
    assert experiment.calls == []
    assert status(panel).startswith("✗ body=0 is out of range") and "1 to 65536 or one of" in status(panel)
    with pytest.raises(ParameterError, match="out of range"):
        panel.update(body=65537)


def test_narrow_integer_ranges_keep_a_plain_slider():
    c = make_control(Param("backlog", "backlog", 4, minimum=0, maximum=16))
    assert isinstance(c.input, W.IntSlider) and c.slider is None and c.note is None
    c = make_control(Param("messages", "messages", 200, minimum=1, maximum=5000))
    assert isinstance(c.input, W.IntText) and c.slider is not None   # a wide range: exact box too
