"""Plots of a search: a PNG (matplotlib, Agg) and a terminal plot (plotext, else a sparkline).

The PNG has one panel with the objective per trial (and the best so far), then one panel per
parameter with the objective against that parameter (log scale for loguniform ones).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .results import SearchResult, TrialResult

logger = logging.getLogger(__name__)

_BARS = "▁▂▃▄▅▆▇█"


def scored(result: SearchResult) -> list[TrialResult]:
    """The trials that have an objective value, by trial number."""
    return sorted((t for t in result.trials if t.value is not None), key=lambda t: t.number)


def best_so_far(values: list[float], direction: str) -> list[float]:
    """The running best of ``values`` (max or min)."""
    out: list[float] = []
    pick = max if direction == "max" else min
    for v in values:
        out.append(v if not out else pick(out[-1], v))
    return out


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plots need matplotlib", "pip install 'celery-agent[search]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(result: SearchResult, path: Path) -> Path | None:
    """Draw the search into ``path``; None (and nothing written) when no trial has a value."""
    trials = scored(result)
    if not trials:
        return None
    plt = _pyplot()
    names = list(result.space)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(4.2 * (1 + len(names)), 3.6), squeeze=False)  # fmt: skip
    _trial_panel(axes[0][0], result, trials)
    for ax, name in zip(axes[0][1:], names, strict=True):
        _param_panel(ax, result, trials, name)
    fig.suptitle(f"search {result.search_id}: {result.objective} ({result.direction})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _trial_panel(ax: Any, result: SearchResult, trials: list[TrialResult]) -> None:
    xs, ys = [t.number for t in trials], [float(t.value or 0.0) for t in trials]
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, best_so_far(ys, result.direction), where="post", label="best so far")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("trial")
    ax.set_ylabel(result.objective)
    ax.legend(loc="best", fontsize="small")


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _param_panel(ax: Any, result: SearchResult, trials: list[TrialResult], name: str) -> None:
    xs = [t.params.get(name) for t in trials]
    ys = [float(t.value or 0.0) for t in trials]
    if any(isinstance(x, str | bool) or x is None for x in xs):
        labels = sorted({str(x) for x in xs})
        ax.set_xticks(range(len(labels)), labels)
        xs = [labels.index(str(x)) for x in xs]
    ax.plot(xs, ys, "o")
    if result.space.get(name, "").startswith("loguniform"):
        ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel(result.objective)


def sparkline(values: list[float]) -> str:
    """Values as a line of block characters, low to high."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(_BARS[round((v - lo) / span * (len(_BARS) - 1))] for v in values)


def terminal_plot(result: SearchResult, width: int = 70, height: int = 15) -> str:
    """The objective per trial for a terminal: a plotext chart when installed, else a sparkline."""
    trials = scored(result)
    if not trials:
        return "(no trial reported the objective)"
    ys = [float(t.value or 0.0) for t in trials]
    try:
        import plotext as plx
    except ImportError:
        return f"{result.objective} by trial: {sparkline(ys)}  ({min(ys):.4g} .. {max(ys):.4g})"
    xs = [t.number for t in trials]
    draw = _plotext_figure if hasattr(plx, "figure") else _plotext_classic
    return draw(plx, xs, ys, best_so_far(ys, result.direction), (width, height))


def _plotext_figure(plx: Any, xs: list[int], ys: list[float], best: list[float], size: tuple[int, int]) -> str:  # fmt: skip
    """plotext 6: signals drawn on its master figure."""
    fig = plx.figure
    fig.clear()
    fig.plot_size(*size)
    fig.draw(fig.signal(xs, ys, marker="dot"))
    fig.draw(fig.signal(xs, best))
    fig.label("trial", axis="x")
    return str(plx.uncolorize(str(fig.build())))


def _plotext_classic(plx: Any, xs: list[int], ys: list[float], best: list[float], size: tuple[int, int]) -> str:  # fmt: skip
    """plotext 5: the module-level pyplot-like calls."""
    plx.clear_figure()
    plx.plot_size(*size)
    plx.scatter(xs, ys)
    plx.plot(xs, best)
    plx.xlabel("trial")
    return str(plx.build())
