"""Typed parameters: dataclass fields parsed from `k=v` strings, with clear errors.

A numeric parameter may declare its valid range, checked before any model loads: either in the
field's metadata, `field(default=4.0, metadata={"range": "[1, inf)"})`, or in a class-level
`ranges = {"factor": "[1, inf)", "budget": "(0, 1]"}` (merged along the class's bases). A range is
an interval in the usual notation: `[` `]` include the bound, `(` `)` exclude it, `inf` is
unbounded; it applies to each element of a tuple. Non-finite floats (nan, inf) are always refused.

A parameter added after records were committed may declare `metadata={"omit_at_default": True}`:
`to_dict` (the params hashed into run ids and written to records) leaves it out while it holds its
default, so every earlier run id stays what it was; set to another value, it is there and keys
the cell (as the non-default loading options are, harness.loading)."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from harness.errors import UserError, nearest

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: str, tp, where: str) -> Any:
    """Convert a command-line string to the annotated type `tp` (or raise UserError)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null", "") and len(args) < len(typing.get_args(tp)):
            return None
        for a in args:
            try:
                return convert(value, a, where)
            except UserError:
                pass
        optional = " or none" if len(args) < len(typing.get_args(tp)) else ""
        raise UserError(f"{where}: expected {' or '.join(map(_type_name, args))}{optional}, got {value!r}")
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (str,)
        items = [convert(v.strip(), inner, where) for v in value.split(",") if v.strip()]
        if not items:
            raise UserError(f"{where}: expected a comma-separated list of {_type_name(inner)}, got {value!r}")
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        try:
            out = tp(value)
        except ValueError:
            raise UserError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is float and not math.isfinite(out):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        return value
    raise UserError(f"{where}: unsupported parameter type {_type_name(tp)}")


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build(cls, overrides: dict[str, str], what: str):
    """Instantiate dataclass `cls` from string overrides; unknown names and bad values are UserErrors."""
    types_ = field_types(cls)
    kwargs = {}
    for key, raw in overrides.items():
        if key not in types_:
            known = ", ".join(types_) or "none"
            raise UserError(f"{what} has no parameter {key!r}.{nearest(key, types_)} Parameters: {known}")
        kwargs[key] = convert(raw, types_[key], f"{what} parameter {key!r} ({_type_name(types_[key])})")
    declared = ranges(cls)
    for key, value in kwargs.items():
        if key in declared:
            check_range(value, declared[key], f"{what} parameter {key!r}")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as e:
        raise UserError(f"{what}: {e}") from None
    return obj


_INTERVAL = re.compile(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])\s*")


def ranges(cls) -> dict[str, str]:
    """{field name: interval} declared by `cls`: class-level `ranges` along its bases (the most
    derived wins), then field metadata "range"."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get("ranges") or {})
    out.update({f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata})
    return out


def parse_range(spec: str) -> tuple[float, float, bool, bool]:
    """(low, high, low included, high included) of an interval such as "(0, 1]" or "[1, inf)"."""
    m = _INTERVAL.fullmatch(spec)
    if not m:
        raise ValueError(f"range {spec!r} is not an interval like (0, 1] or [1, inf)")
    return float(m[2]), float(m[3]), m[1] == "[", m[4] == "]"


def in_range(value, spec: str) -> bool:
    lo, hi, lo_in, hi_in = parse_range(spec)
    return (value > lo or (lo_in and value == lo)) and (value < hi or (hi_in and value == hi))


def check_range(value, spec: str, where: str) -> None:
    """UserError when a number (or any number of a tuple/list) lies outside the interval `spec`."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not in_range(v, spec):
            raise UserError(f"{where}: {v!r} is out of range, expected a value in {spec}")


def to_dict(obj) -> dict[str, Any]:
    """JSON-ready resolved parameters (tuples become lists); an `omit_at_default` field at its
    default is left out (see the module docstring)."""

    def clean(v):
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return {
        f.name: clean(getattr(obj, f.name))
        for f in dataclasses.fields(obj)
        if f.init and f.repr and not (f.metadata.get("omit_at_default") and getattr(obj, f.name) == f.default)
    }


def describe(cls) -> list[dict[str, Any]]:
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or not f.repr:
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        out.append(
            {
                "name": f.name,
                "type": _type_name(field_types(cls)[f.name]),
                "default": list(default) if isinstance(default, tuple) else default,
                "help": f.metadata.get("help", ""),
            }
        )
    return out


SEED_MAX = 2**63 - 1  # torch, numpy and Python all take a seed in [0, 2**63 - 1]


def check_seed(seed, where: str = "--seed") -> int:
    """The seed itself when it is an integer in [0, SEED_MAX], else UserError (a negative seed
    breaks numpy's generators, one of 2**64 or more torch's)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"{where} must be an integer in [0, 2**63 - 1], got {seed!r}")
    return seed


def parse_kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{flag} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise UserError(f"{flag} expects key=value, got {item!r}")
        out[k.strip()] = v.strip()
    return out
