"""Rows of the results table: a measurement, its baseline, the comparison, the target, pass/fail."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Unit = Literal["ms", "s", "/s", "x", "%", "B", "n"]
Compare = Literal["ratio", "diff", "none"]

HEADER = ("benchmark", "measured", "baseline", "vs baseline", "target", "result")


@dataclass(frozen=True)
class Row:
    """One line of the table. Times are in seconds; ``unit`` only says how to show them."""

    name: str
    measured: float
    baseline: float | None
    unit: Unit
    compare: Compare
    target: str
    ok: bool | None  #: None: reported, not judged

    def cells(self) -> tuple[str, ...]:
        """The row as table cells."""
        return (
            self.name,
            show(self.measured, self.unit),
            "-" if self.baseline is None else show(self.baseline, self.unit),
            self.comparison(),
            self.target,
            {True: "pass", False: "FAIL", None: "info"}[self.ok],
        )

    def comparison(self) -> str:
        """``1.23x`` or ``+12.3 ms``, as the row asks."""
        if self.baseline is None or self.compare == "none":
            return "-"
        if self.compare == "ratio":
            return f"{self.measured / self.baseline:.2f}x" if self.baseline else "-"
        sign = "+" if self.measured >= self.baseline else "-"
        return sign + show(abs(self.measured - self.baseline), self.unit)


def error_row(name: str, err: BaseException) -> Row:
    """A row for a benchmark that could not run (its error is printed separately)."""
    return Row(f"{name}: ERROR {type(err).__name__}", float("nan"), None, "s", "none", "-", False)


def show(value: float, unit: Unit) -> str:
    """A value for people: seconds as ms or s, rates per second, ratios, percent, bytes, counts."""
    if value != value:  # NaN: the benchmark failed
        return "-"
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "/s":
        return f"{value:.1f}/s"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "B":
        return _bytes(value)
    if unit == "n":
        return f"{value:,.0f}"
    return f"{value:.2f}x"


def _bytes(value: float) -> str:
    """A byte count as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def p90(values: Sequence[float]) -> float:
    """The 90th percentile of ``values`` (inclusive method; the largest value below 10 samples)."""
    if len(values) < 10:
        return max(values)
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def text_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table."""
    cells = [HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)
