"""Exercise checkers: ✓ / ✗ / not answered, printed, never raised."""
from __future__ import annotations

import numpy as np
import pytest

from helpers.checks import Exercise, check, check_value, not_answered


def out(capsys):
    return capsys.readouterr().out.strip()


def test_check_ok_and_hint(capsys):
    assert check(3 > 2, "the queue holds backlog+1", "count again") is True
    assert out(capsys) == "✓ the queue holds backlog+1"
    assert check(False, "fine", "look at the Recv-Q column") is False
    assert out(capsys) == "✗ look at the Recv-Q column"


@pytest.mark.parametrize("placeholder", [..., None])
def test_check_not_answered(capsys, placeholder):
    assert check(placeholder, "ok", "compare the two ISNs") is False
    text = out(capsys)
    assert text.startswith("… not answered yet:") and "compare the two ISNs" not in text, \
        "the hint comes only after a first attempt"


def test_check_callable_that_raises_is_a_cross(capsys):
    assert check(lambda: 1 / 0, "ok", "divide the bytes by the time") is False
    text = out(capsys)
    assert text.startswith("✗ divide the bytes by the time") and "ZeroDivisionError" in text
    assert check(lambda: True, "yes", "no") is True
    assert out(capsys) == "✓ yes"


def test_check_ambiguous_array_does_not_raise(capsys):
    assert check(np.array([True, False]), "ok", "use .all()") is False
    assert out(capsys).startswith("✗ use .all()")


@pytest.mark.parametrize("placeholder", [..., None])
def test_check_value_not_answered(capsys, placeholder):
    assert check_value(placeholder, 5, name="queue length", hint="count ESTAB sockets") is False
    text = out(capsys)
    assert text.startswith("… not answered yet: set `queue length` to your answer")
    assert "count ESTAB sockets" not in text, "the hint comes only after a first attempt"


def test_numbers_with_tolerance(capsys):
    assert check_value(44.3, 44, name="median (ms)", tol=2) is True
    assert out(capsys) == "✓ median (ms): 44.3 is right"
    assert check_value(60, 44, name="median (ms)", tol=2, hint="the delayed-ACK timer is 40 ms") is False
    text = out(capsys)
    assert text == "✗ median (ms): 60 is too high. Hint: the delayed-ACK timer is 40 ms"
    assert "44" not in text.split("Hint")[0]  # the expected value is not revealed
    assert check_value(30, 44, name="m", rel=0.1) is False
    assert "too low" in out(capsys)
    assert check_value(43, 44, name="m", rel=0.1) is True
    out(capsys)


def test_integers_exact_and_numeric_strings(capsys):
    assert check_value(5, 5, name="n") is True
    assert check_value(np.int64(5), 5, name="n") is True
    assert check_value(5.0, 5, name="n") is True
    assert check_value("5", 5, name="n") is True
    assert check_value(6, 5, name="n") is False
    assert check_value("five", 5, name="n") is False
    lines = out(capsys).splitlines()
    assert lines[-1] == "✗ n: a number is expected, you gave 'five'."
    assert check_value(0.1 + 0.2, 0.3, name="x") is True
    out(capsys)


def test_reveal(capsys):
    check_value(3, 5, name="n", tol=1, reveal=True)
    assert out(capsys) == "✗ n: 3 is too low. Expected 5 ± 1."


def test_strings_case_insensitive(capsys):
    assert check_value("  Time_Wait ", "time_wait", name="state") is True
    assert check_value("CLOSE  WAIT", "close wait", name="state") is True
    assert check_value("FIN_WAIT_2", "TIME_WAIT", name="state", hint="who closed first?") is False
    assert out(capsys).splitlines()[-1] == "✗ state: 'FIN_WAIT_2' is not it. Hint: who closed first?"
    assert check_value(5, "five", name="s") is False
    out(capsys)


def test_sets_and_lists(capsys):
    assert check_value(["ack", "SYN"], {"syn", "ACK"}, name="flags") is True
    assert out(capsys) == "✓ flags: right"
    assert check_value({"SYN", "FIN"}, {"SYN", "ACK", "PSH"}, name="flags") is False
    assert out(capsys) == "✗ flags: 2 items missing; not expected: 'fin'."
    assert check_value(["S", "SA", "A"], ["s", "sa", "a"], name="order") is True
    assert check_value(["SA", "S", "A"], ["S", "SA", "A"], name="order") is False
    assert out(capsys).splitlines()[-1] == "✗ order: item 1: 'SA' is not it."
    assert check_value([1, 2], [1, 2, 3], name="order") is False
    assert "2 items given, 3 expected" in out(capsys)
    assert check_value([0.21, 0.65], [0.2, 0.6], name="probes", tol=0.06) is True
    assert check_value("SYN", {"SYN"}, name="flags") is False
    assert "collection" in out(capsys).splitlines()[-1]


def test_booleans(capsys):
    assert check_value(True, True, name="sticks") is True
    assert check_value(False, True, name="sticks") is False
    assert check_value(1, True, name="sticks") is False
    assert "True or False" in out(capsys).splitlines()[-1]


def test_never_raises_on_odd_answers(capsys):
    class Weird:
        def __eq__(self, other):
            raise RuntimeError("no")

    assert check_value(Weird(), object(), name="x") is False
    assert check_value(float("nan"), 1.0, name="x", tol=0.1) is False
    assert check_value({"a": 1}, {"a": 1}, name="d") is True
    assert len(out(capsys).splitlines()) == 3


def test_not_answered_helper():
    assert not_answered(...) and not_answered(None) and not not_answered(0) and not not_answered("")


def test_exercise(capsys):
    ex = Exercise("accept-queue length", expected=5, hint="count ESTAB")
    assert ex.check(...) is False
    assert ex.check(5) is True
    ex2 = Exercise("ISNs differ", test=lambda a: a[0] != a[1], hint="connect twice", ok="ISNs are random")
    assert ex2.check((1, 1)) is False
    assert ex2.check((1, 2)) is True
    assert ex2.check(3) is False
    lines = out(capsys).splitlines()
    assert lines[0].startswith("…") and lines[1].startswith("✓") and lines[2].startswith("✗")
    assert lines[3] == "✓ ISNs are random" and "could not be checked" in lines[4]
