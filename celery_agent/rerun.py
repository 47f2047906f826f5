"""Reproduce a past run: its spec at the exact commit it ran, its package versions, with edits.

A run record holds secret env values masked, so a rerun takes each again from the caller: an
explicit ``env`` value first, else the caller's environment.

A rerun is a new run of whoever asks for it: its ``user`` is left for the submit to fill in (the
same as the original's when its owner reruns it; someone else's rerun counts against that person's
quota and fair share, as they asked for the GPUs now); it keeps the original's ``project`` unless
another is given, and the record names the original in ``rerun_of``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .spec import MASK, ParamValue, TaskSpec

#: executors whose environment comes from ``requirements``, so a freeze pins it (a conda env is
#: pinned by its lock file instead)
PINNABLE = ("venv", "docker")


def respec(
    record: Mapping[str, Any],
    params: Mapping[str, ParamValue] | None = None,
    *,
    queue: str | None = None,
    project: str | None = None,
    pin: bool = True,
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    resume: bool = False,
    inputs: Mapping[str, str] | None = None,
) -> TaskSpec:
    """A new spec from a run record.

    The commit is the one the run resolved (a branch may have moved since); with ``pin`` the
    requirements are the exact versions the run's environment resolved to (its freeze). ``env``
    sets variables; a masked secret value not given there is read from ``environ`` (the process
    environment at call time by default), and one found in neither raises :class:`SpecError`.
    With ``resume`` the new run starts from the run's checkpoints (``resume_from``); a run that
    kept none raises :class:`SpecError`. ``inputs`` set or replace inputs by name.
    """
    spec = record.get("spec")
    if not isinstance(spec, dict):
        raise SpecError(f"run {record.get('run_id')} has no readable spec to rerun")
    changes: dict[str, Any] = {"params": {**spec.get("params", {}), **(params or {})}}
    changes["user"] = None  # whoever reruns it (see the module's docstring)
    if inputs:  # (set or replace some: the others are the run's own)
        changes["inputs"] = {**spec.get("inputs", {}), **inputs}
    if project:
        changes["project"] = project
    environ = os.environ if environ is None else environ
    changes["env"] = _secrets_again(str(record.get("run_id")), spec, env or {}, environ)
    if record.get("commit"):
        changes |= {"commit": record["commit"], "branch": None}
    if queue:
        changes["queue"] = queue
    if resume:
        changes["resume_from"] = kept_checkpoints(record)
    freeze = [line for line in record.get("freeze") or [] if line and not line.startswith("-e")]
    if pin and freeze and spec.get("executor", "venv") in PINNABLE:
        changes |= {"requirements": freeze, "requirements_file": None}
    return TaskSpec.parse(spec | changes)


def _secrets_again(
    run_id: str, spec: Mapping[str, Any], given: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The spec's env with ``given`` applied and each masked secret value taken from ``environ``."""
    env = {**(spec.get("env") or {}), **given}
    masked = [n for n in spec.get("secret_env") or [] if env.get(n) == MASK]
    missing = [n for n in masked if n not in environ]
    if missing:
        names = ", ".join(missing)
        raise SpecError(
            f"run {run_id} had secret env {names}, whose values are not kept with the run",
            f"give each value again: --env {missing[0]}=value, or export {missing[0]} first",
        )
    return env | {n: environ[n] for n in masked}


def kept_checkpoints(record: Mapping[str, Any]) -> str:
    """The id of the run ``record`` describes when it kept checkpoints (synced while it ran, or
    uploaded at its end under its ``checkpoint_dir``), else a :class:`SpecError` saying why."""
    run_id = str(record.get("run_id"))
    folder = str((record.get("spec") or {}).get("checkpoint_dir") or "checkpoints")
    synced = int((record.get("checkpoints") or {}).get("files") or 0)
    kept = record.get("artifacts") or {}
    uploaded = [f for f in kept.get("files") or [] if str(f.get("path")).startswith(folder + "/")]
    if synced or uploaded or int(kept.get("count") or 0) > len(kept.get("files") or []):
        return run_id
    raise SpecError(
        f"run {run_id} kept no checkpoints (no file under its output folder's {folder}/ reached "
        "the artifact store)",
        f"a run keeps checkpoints it writes under $CELERY_AGENT_OUTPUT_DIR/{folder}; "
        "rerun without --resume to start from the beginning",
    )
