"""Hyperparameter search over runs: each trial is a normal run with parameter overrides.

    from celery_agent.search import run_search
    result = run_search(spec, {"C": "loguniform:1e-3:1e2"}, "val_acc", "max", trials=8, parallel=4)
    print(result.best_params)

Spaces are parsed in :mod:`.space`, samplers live in :mod:`.samplers` (grid, random, Optuna), the
loop in :mod:`.controller`, results and plots in :mod:`.results` and :mod:`.plot`.
"""

from __future__ import annotations

from .controller import cancel_search, load_search, run_search
from .results import SearchResult, TrialResult
from .space import parse_dimension, parse_space

__all__ = [
    "SearchResult", "TrialResult", "cancel_search", "load_search", "parse_dimension",
    "parse_space", "run_search",
]  # fmt: skip
