"""A search space: named dimensions, written ``uniform:a:b``, ``loguniform:a:b``, ``int:a:b`` or
``choice:x,y,z`` (choices are read as JSON when they are JSON, else kept as strings).

Each dimension can draw a random value and list ``k`` evenly spread values for a grid.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import SpecError
from ..spec import ParamValue

KINDS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        """A random value."""
        return rng.uniform(self.low, self.high)

    def grid(self, k: int) -> list[ParamValue]:
        """``k`` evenly spaced values from low to high."""
        return [self.low + (self.high - self.low) * i / max(1, k - 1) for i in range(k)]


@dataclass(frozen=True)
class LogUniform:
    """A positive float whose logarithm is uniform on [log low, log high]."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        """A random value."""
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def grid(self, k: int) -> list[ParamValue]:
        """``k`` values evenly spaced on a log scale."""
        lo, hi = math.log(self.low), math.log(self.high)
        return [math.exp(lo + (hi - lo) * i / max(1, k - 1)) for i in range(k)]


@dataclass(frozen=True)
class IntRange:
    """An integer from low to high, both included."""

    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        """A random value."""
        return rng.randint(self.low, self.high)

    def grid(self, k: int) -> list[ParamValue]:
        """At most ``k`` distinct integers spread from low to high."""
        span = self.high - self.low
        return list(dict.fromkeys(self.low + round(span * i / max(1, k - 1)) for i in range(k)))


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of values."""

    values: tuple[ParamValue, ...]

    def sample(self, rng: random.Random) -> ParamValue:
        """A random value."""
        return rng.choice(self.values)

    def grid(self, k: int) -> list[ParamValue]:
        """Every value (``k`` does not apply)."""
        return list(self.values)


Dimension: TypeAlias = Uniform | LogUniform | IntRange | Choice

#: a search space: parameter name -> dimension, in the order given
Space: TypeAlias = dict[str, Dimension]

#: what :func:`parse_space` accepts: ``["lr=loguniform:1e-4:1", ...]`` or name -> text or dimension
SpaceLike: TypeAlias = Sequence[str] | Mapping[str, str | Dimension]


def parse_dimension(text: str) -> Dimension:
    """A dimension from its text, e.g. ``loguniform:1e-4:1e-1`` or ``choice:2,4,8``."""
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS:
        raise SpecError(
            f"search dimension {text!r} has an unknown kind {kind!r}",
            "write uniform:a:b, loguniform:a:b, int:a:b or choice:x,y,z",
        )
    if kind == "choice":
        return _choice(text, rest)
    low, high = _bounds(text, rest, int if kind == "int" else float)
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"search dimension {text!r}: loguniform needs bounds > 0")
    if kind == "int":
        return IntRange(low, high)
    return LogUniform(low, high) if kind == "loguniform" else Uniform(low, high)


def _bounds(text: str, rest: str, cast: type) -> tuple[Any, Any]:
    parts = rest.split(":")
    try:
        low, high = (cast(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or not low < high:
        raise SpecError(
            f"search dimension {text!r} needs two bounds, low < high",
            f"like {text.partition(':')[0]}:1:10",
        )
    return low, high


def _choice(text: str, rest: str) -> Choice:
    values = tuple(_scalar(v.strip()) for v in rest.split(",") if v.strip())
    if not values:
        raise SpecError(f"search dimension {text!r} lists no choices", "like choice:2,4,8")
    return Choice(values)


def _scalar(raw: str) -> ParamValue:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return raw if isinstance(value, list | dict) else value


def parse_space(items: SpaceLike) -> Space:
    """A space from ``["lr=loguniform:1e-4:1e-1", ...]`` or ``{"lr": "loguniform:..."}``."""
    pairs = items.items() if isinstance(items, Mapping) else (_split(i) for i in items)
    space: Space = {}
    for name, dim in pairs:
        space[name] = dim if not isinstance(dim, str) else parse_dimension(dim)
    if not space:
        raise SpecError("the search space is empty", "give at least one --param name=kind:...")
    return space


def _split(item: str) -> tuple[str, str]:
    name, sep, dim = item.partition("=")
    if not sep or not name.strip():
        raise SpecError(f"search parameter {item!r} is malformed", "write it as lr=loguniform:1e-4:1e-1")  # fmt: skip
    return name.strip(), dim


def describe(space: Space) -> dict[str, str]:
    """The space as text, one entry per parameter (the syntax it is parsed from)."""
    out = {}
    for name, dim in space.items():
        if isinstance(dim, Choice):
            out[name] = "choice:" + ",".join(json.dumps(v) if not isinstance(v, str) else v for v in dim.values)  # fmt: skip
        else:
            kind = {Uniform: "uniform", LogUniform: "loguniform", IntRange: "int"}[type(dim)]
            out[name] = f"{kind}:{dim.low}:{dim.high}"
    return out
