import pytest

from helpers.errors import ParameterError
from helpers.params import Param, validate

P = [Param("mss", "MSS", None, choices=(None, 536, 1400)),
     Param("clients", "clients", 3, minimum=1, maximum=20)]


def test_defaults_and_valid_values():
    assert validate(P, {}) == {"mss": None, "clients": 3}
    assert validate(P, {"mss": 536, "clients": 20}) == {"mss": 536, "clients": 20}
    assert validate(P, {"clients": 5.0})["clients"] == 5


@pytest.mark.parametrize("values,match", [
    ({"clients": 0}, "out of range"),
    ({"clients": 21}, "out of range"),
    ({"clients": "many"}, "not a number"),
    ({"clients": 2.5}, "whole number"),
    ({"clients": True}, "not a number"),
    ({"mss": 12}, "not one of the allowed"),
    ({"backlog": 3}, "unknown parameter"),
])
def test_bad_values_name_the_fix(values, match):
    with pytest.raises(ParameterError, match=match) as err:
        validate(P, values)
    assert "fix:" in str(err.value)


def test_replay_accepts_only_recorded_values():
    Q = [Param("rcvbuf", "rcvbuf", None, choices=(None, 4096), minimum=1024, maximum=1 << 20)]
    assert validate(Q, {"rcvbuf": 8192}) == {"rcvbuf": 8192}
    with pytest.raises(ParameterError, match="not recorded"):
        validate(Q, {"rcvbuf": 8192}, replay=True)
