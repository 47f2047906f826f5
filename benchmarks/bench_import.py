"""Import cost: what ``import celery_agent`` costs a library caller, in a fresh interpreter.

Measured: the time of ``import celery_agent`` (and of ``from celery_agent import submit``, the
submit path) inside a new ``python`` process, interpreter start left out. Baseline, the same run:
importing what ``import celery_agent`` loaded before it became lazy: the package, the Celery app
and the worker's bootstep module. Samples alternate (measured, baseline) so a loaded machine weighs
on both alike. Also shown: whether the worker's bootstep module and Celery were loaded.

    python -m benchmarks.bench_import    # this one alone, without a cluster
"""

from __future__ import annotations

import json
import subprocess
import sys

from .context import Context
from .report import Row, median, text_table

#: code timed in a fresh interpreter; prints the seconds and whether heavy modules were loaded
_PROBE = """\
import json, sys, time
t = time.perf_counter()
{code}
took = time.perf_counter() - t
print(json.dumps([took, "celery_agent.worker" in sys.modules, "celery" in sys.modules]))
"""
PACKAGE = "import celery_agent"
SUBMIT = "from celery_agent import submit"
#: what ``import celery_agent`` loaded before: the app (Celery) and the worker's bootsteps
BEFORE = "import celery_agent, celery_agent.app, celery_agent.worker"


def probe(code: str) -> tuple[float, bool, bool]:
    """(seconds, worker bootsteps loaded, Celery loaded) of ``code`` in a new interpreter."""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(code=code)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    took, worker, celery = json.loads(out.strip().splitlines()[-1])
    return float(took), bool(worker), bool(celery)


def measure(n: int) -> list[Row]:
    """The rows for ``n`` alternating samples of each."""
    package, submit, before = [], [], []
    loaded = {PACKAGE: (False, False), SUBMIT: (False, False)}
    for _ in range(n):
        for code, samples in ((PACKAGE, package), (BEFORE, before), (SUBMIT, submit)):
            took, worker, celery = probe(code)
            samples.append(took)
            if code in loaded:
                loaded[code] = (worker, celery)
    base = median(before)
    return [
        Row("import celery_agent", median(package), base, "ms", "ratio", "no bootsteps",
            not loaded[PACKAGE][0]),
        Row("  part: worker bootsteps / Celery loaded", float(sum(loaded[PACKAGE])), None, "n",
            "none", "0 of 2", None),
        Row("from celery_agent import submit", median(submit), base, "ms", "ratio", "no bootsteps",
            not loaded[SUBMIT][0]),
    ]  # fmt: skip


def run(ctx: Context) -> list[Row]:
    """Measure the import cost (the cluster is not used)."""
    return measure(ctx.n(15, 2))


if __name__ == "__main__":
    print(text_table(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 15)))
