"""Samplers propose the next trial's parameters and learn from finished trials.

The contract is small: :meth:`Sampler.ask` returns ``(number, params)`` or None when it has nothing
more to propose; :meth:`Sampler.tell` gives a trial's objective value (None: the trial failed).
Grid and random are built in; ``optuna`` wraps an Optuna study (its TPE sampler by default),
imported only when used.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from typing import Any, Literal, Protocol

from ..errors import ConfigError
from ..spec import ParamValue
from .space import Choice, Dimension, IntRange, LogUniform, Space

logger = logging.getLogger(__name__)

SAMPLERS = ("random", "grid", "optuna")
Direction = Literal["max", "min"]
Params = dict[str, ParamValue]


class Sampler(Protocol):
    """What the search controller needs from a sampler."""

    def ask(self) -> tuple[int, Params] | None:
        """The next trial's number and parameters, or None when there are no more."""

    def tell(self, number: int, value: float | None) -> None:
        """The objective value of a finished trial (None when it failed)."""


class RandomSampler:
    """Independent random draws from each dimension (reproducible with a seed)."""

    def __init__(self, space: Space, seed: int | None = None) -> None:
        self.space, self.rng, self.count = space, random.Random(seed), 0

    def ask(self) -> tuple[int, Params] | None:
        """A fresh random point; never runs out."""
        self.count += 1
        return self.count - 1, {name: dim.sample(self.rng) for name, dim in self.space.items()}

    def tell(self, number: int, value: float | None) -> None:
        """Random search learns nothing."""


class GridSampler:
    """Every combination of the dimensions' grid values, in order.

    Choices contribute all their values; a numeric dimension contributes ``k`` evenly spread values,
    ``k`` the largest (at least 2) that keeps the grid within ``trials`` points when it can.
    """

    def __init__(self, space: Space, trials: int) -> None:
        self.points = grid_points(space, trials)
        self._iter: Iterator[Params] = iter(self.points)
        self.count = 0

    def ask(self) -> tuple[int, Params] | None:
        """The next grid point, or None once the grid is done."""
        point = next(self._iter, None)
        if point is None:
            return None
        self.count += 1
        return self.count - 1, point

    def tell(self, number: int, value: float | None) -> None:
        """A grid learns nothing."""


def grid_points(space: Space, trials: int) -> list[Params]:
    """The grid over ``space`` with numeric dimensions sized for ``trials`` points."""
    k = _resolution(space, trials)
    points: list[Params] = [{}]
    for name, dim in space.items():
        points = [p | {name: v} for p in points for v in dim.grid(k)]
    return points


def _resolution(space: Space, trials: int) -> int:
    fixed = math.prod(len(d.values) for d in space.values() if isinstance(d, Choice))
    numeric = sum(not isinstance(d, Choice) for d in space.values())
    if not numeric:
        return 1
    return max(2, int((max(1, trials) / fixed) ** (1 / numeric) + 1e-9))


class OptunaSampler:
    """An Optuna study driven by ask/tell; storage in memory, or ``sqlite:///file.db`` to keep it."""

    def __init__(self, space: Space, direction: Direction, *, seed: int | None = None,
                 storage: str | None = None, study_name: str | None = None, algorithm: str = "tpe") -> None:  # fmt: skip
        optuna = import_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.distributions = {name: _distribution(optuna, dim) for name, dim in space.items()}
        self.study = optuna.create_study(
            direction="maximize" if direction == "max" else "minimize",
            sampler=_algorithm(optuna, algorithm, seed),
            storage=storage,
            study_name=study_name,
            load_if_exists=True,
        )
        self.trials: dict[int, Any] = {}
        self.count = 0

    def ask(self) -> tuple[int, Params] | None:
        """The study's next suggestion."""
        trial = self.study.ask(self.distributions)
        number, self.count = self.count, self.count + 1
        self.trials[number] = trial
        return number, dict(trial.params)

    def tell(self, number: int, value: float | None) -> None:
        """Finish the study's trial: completed with its value, or failed."""
        from optuna.trial import TrialState

        trial = self.trials.pop(number)
        if value is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, value)


def import_optuna() -> Any:
    """The optuna module, or a ConfigError that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "the optuna sampler needs Optuna", "pip install 'celery-agent[search]' (or optuna)"
        ) from None
    return optuna


def _distribution(optuna: Any, dim: Dimension) -> Any:
    d = optuna.distributions
    if isinstance(dim, Choice):
        return d.CategoricalDistribution(list(dim.values))
    if isinstance(dim, IntRange):
        return d.IntDistribution(dim.low, dim.high)
    return d.FloatDistribution(dim.low, dim.high, log=isinstance(dim, LogUniform))


def _algorithm(optuna: Any, name: str, seed: int | None) -> Any:
    known = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler",
             "qmc": "QMCSampler", "gp": "GPSampler"}  # fmt: skip
    if name not in known:
        raise ConfigError(f"unknown Optuna algorithm {name!r}", f"use one of {', '.join(known)}")
    return getattr(optuna.samplers, known[name])(seed=seed)


def make_sampler(name: str, space: Space, direction: Direction, trials: int, *,
                 seed: int | None = None, storage: str | None = None,
                 study_name: str | None = None) -> Sampler:  # fmt: skip
    """A sampler by name: ``random``, ``grid``, ``optuna`` or ``optuna:ALGORITHM`` (tpe, cmaes, ...)."""
    kind, _, algorithm = name.partition(":")
    if kind == "random":
        return RandomSampler(space, seed)
    if kind == "grid":
        return GridSampler(space, trials)
    if kind == "optuna":
        return OptunaSampler(space, direction, seed=seed, storage=storage,
                             study_name=study_name, algorithm=algorithm or "tpe")  # fmt: skip
    raise ConfigError(f"unknown sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")


__all__ = [
    "GridSampler",
    "OptunaSampler",
    "RandomSampler",
    "Sampler",
    "grid_points",
    "make_sampler",
]
