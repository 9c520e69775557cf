import dataclasses
import re
from dataclasses import dataclass, field

import pytest

from harness import registry
from harness.errors import UserError
from harness.params import build, convert, describe, in_range, parse_kv, parse_range, ranges, to_dict


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


# -- declared ranges (issue 21, item 3) --------------------------------------------------------
@dataclass
class Ranged:
    ranges = {"budget": "(0, 1]", "sizes": "[1, inf)"}
    budget: float = 0.5
    factor: float = field(default=2.0, metadata={"range": "[1, inf)"})
    sizes: tuple[int, ...] = (1, 2)
    free: float = 0.0


@pytest.mark.parametrize(
    "key,value,ok",
    [
        ("budget", "1", True),
        ("budget", "0", False),
        ("budget", "1.0001", False),
        ("budget", "-0.5", False),
        ("factor", "1", True),
        ("factor", "0.99", False),
        ("sizes", "1,5", True),
        ("sizes", "1,0", False),
        ("free", "-1e300", True),
        ("free", "inf", False),  # non-finite numbers are refused with or without a range
        ("free", "-inf", False),
        ("free", "nan", False),
    ],
)
def test_declared_ranges_are_checked(key, value, ok):
    if ok:
        build(Ranged, {key: value}, "m")
    else:
        with pytest.raises(UserError, match=r"out of range|finite number"):
            build(Ranged, {key: value}, "m")


def test_every_method_parameter_declares_a_valid_range():
    """Every numeric parameter of every registered method declares an interval, the interval parses,
    names a field, and holds the default: a zero, negative or huge factor is refused at build."""
    registry.load()
    missing = []
    for name, cls in registry.METHODS.items():
        declared = ranges(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key, spec in declared.items():
            assert key in fields, (name, key)
            parse_range(spec)
            default = fields[key].default
            for v in default if isinstance(default, tuple) else (default,):
                assert v is None or v is dataclasses.MISSING or in_range(v, spec), (name, key, v, spec)
        numeric = [p["name"] for p in describe(cls) if re.search(r"\b(int|float)\b", p["type"])]
        missing += [f"{name}.{k}" for k in numeric if k not in declared]
    assert not missing, f"declare a range (class-level `ranges` or field metadata) for: {missing}"


@pytest.mark.parametrize("value", ["0", "-2", "inf", "nan", "0.5"])
def test_a_bad_scale_factor_exits_2_before_the_model_loads(value, tmp_path, monkeypatch, capsys):
    from harness import cli, models

    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["eval", "--task", "needle", "--method", "yarn", "--method-arg", f"factor={value}", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "factor" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
