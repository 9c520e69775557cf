from dataclasses import dataclass

import pytest

from harness.errors import UserError
from harness.params import build, convert, describe, parse_kv, to_dict


@dataclass
class P:
    n: int = 3
    x: float | None = None
    flag: bool = False
    lengths: tuple[int, ...] = (512,)
    name: str = "a"


def test_convert_types():
    assert convert("4", int, "w") == 4
    assert convert("0.5", float | None, "w") == 0.5 and convert("none", float | None, "w") is None
    assert convert("yes", bool, "w") is True and convert("0", bool, "w") is False
    assert convert("1,2, 3", tuple[int, ...], "w") == (1, 2, 3)


@pytest.mark.parametrize(
    "key,value,msg",
    [
        ("n", "x", "expected int"),
        ("x", "nan", "expected float"),
        ("flag", "maybe", "true or false"),
        ("lengths", ",", "comma-separated"),
        ("nme", "1", "Did you mean: name"),
    ],
)
def test_bad_values(key, value, msg):
    with pytest.raises(UserError, match=msg):
        build(P, {key: value}, "thing")


def test_build_describe_to_dict():
    p = build(P, {"lengths": "1,2", "x": "2"}, "thing")
    assert to_dict(p) == {"n": 3, "x": 2.0, "flag": False, "lengths": [1, 2], "name": "a"}
    d = {e["name"]: e for e in describe(P)}
    assert d["lengths"]["default"] == [512] and d["x"]["type"] == "float | None"


def test_parse_kv():
    assert parse_kv(["a=1", "b = x=y"], "--f") == {"a": "1", "b": "x=y"}
    with pytest.raises(UserError):
        parse_kv(["novalue"], "--f")
