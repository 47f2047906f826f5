"""What a search produced: its trials, ranked by the objective, and the best one."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..spec import ParamValue

#: trial states: waiting for its run, or how its run ended as a trial
PENDING, DONE, FAILED, CANCELLED = "pending", "done", "failed", "cancelled"


@dataclass
class TrialResult:
    """One trial: its parameters, its run, and the objective's last value (None unless done)."""

    number: int
    params: dict[str, ParamValue]
    run_id: str = ""
    state: str = PENDING
    value: float | None = None
    run_state: str = ""
    error: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialResult:
        """A trial from :meth:`to_json`'s output."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class SearchResult:
    """A search: its settings, its trials and the best one."""

    search_id: str
    objective: str
    direction: str
    sampler: str
    space: dict[str, str]
    trials: list[TrialResult] = field(default_factory=list)
    state: str = "running"
    out_dir: str = ""

    @property
    def ranked(self) -> list[TrialResult]:
        """Trials with a value, best first, then the others by number."""
        sign = -1.0 if self.direction == "max" else 1.0
        done = [t for t in self.trials if t.value is not None and math.isfinite(t.value)]
        done.sort(key=lambda t: (sign * (t.value or 0.0), t.number))
        rest = sorted((t for t in self.trials if t not in done), key=lambda t: t.number)
        return done + rest

    @property
    def best(self) -> TrialResult | None:
        """The trial with the best objective value, None when no trial finished with one."""
        first = self.ranked[:1]
        return first[0] if first and first[0].value is not None else None

    @property
    def best_params(self) -> dict[str, ParamValue] | None:
        """The best trial's parameters."""
        return None if self.best is None else self.best.params

    def counts(self) -> dict[str, int]:
        """How many trials are in each state."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, trials ranked, with the best trial's number and params."""
        data = asdict(self) | {"trials": [t.to_json() for t in self.ranked]}
        best = self.best
        return data | {"best": None if best is None else best.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        """A result from :meth:`to_json`'s output."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["trials"] = [TrialResult.from_json(t) for t in data.get("trials", [])]
        return cls(**fields)

    def save(self, folder: Path) -> Path:
        """Write ``results.json`` into ``folder``; returns its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "results.json"
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return path


def table_rows(result: SearchResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ranked trials table (rank, trial, value, params..., state, run)."""
    names = list(result.space)
    header = ["rank", "trial", result.objective, *names, "state", "run"]
    rows = []
    for rank, t in enumerate(result.ranked, 1):
        value = "" if t.value is None else f"{t.value:.6g}"
        cells = [_cell(t.params.get(n)) for n in names]
        state = t.state if not t.error else f"{t.state}: {t.error}"
        rows.append([str(rank) if t.value is not None else "", str(t.number), value, *cells, state, t.run_id])  # fmt: skip
    return header, rows


def _cell(value: ParamValue) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
