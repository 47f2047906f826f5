"""Reproduce a past run: its spec at the exact commit it ran, its package versions, with edits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .spec import ParamValue, TaskSpec

#: executors whose environment comes from ``requirements``, so a freeze pins it (a conda env is
#: pinned by its lock file instead)
PINNABLE = ("venv", "docker")


def respec(
    record: Mapping[str, Any],
    params: Mapping[str, ParamValue] | None = None,
    *,
    queue: str | None = None,
    pin: bool = True,
) -> TaskSpec:
    """A new spec from a run record.

    The commit is the one the run resolved (a branch may have moved since); with ``pin`` the
    requirements are the exact versions the run's environment resolved to (its freeze).
    """
    spec = record.get("spec")
    if not isinstance(spec, dict):
        raise SpecError(f"run {record.get('run_id')} has no readable spec to rerun")
    changes: dict[str, Any] = {"params": {**spec.get("params", {}), **(params or {})}}
    if record.get("commit"):
        changes |= {"commit": record["commit"], "branch": None}
    if queue:
        changes["queue"] = queue
    freeze = [line for line in record.get("freeze") or [] if line and not line.startswith("-e")]
    if pin and freeze and spec.get("executor", "venv") in PINNABLE:
        changes["requirements"] = freeze
    return TaskSpec.parse(spec | changes)
