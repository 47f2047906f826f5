"""Which of a run's parameters the run took, and which it left unused.

A parameter counts as used when a parser of the run's main process knows it (the argparse hook
records those in ``<params out file>.usage``), when the main process read ``CELERY_AGENT_PARAMS``
(it may take any of them from there), or when it replaced an option already written in the spec's
args (the script takes that option on its command line). Anything else is unused: an option
appended to a command line nobody parses with argparse is reported, not silently dropped. With
``strict_params`` an unused parameter fails the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import AgentError
from .params import format_value, read_resolved, written_in
from .spec import ParamValue, TaskSpec

logger = logging.getLogger(__name__)


def usage_file(out_file: Path) -> Path:
    """Where the hook records what the main process took, next to the resolved parameters."""
    return Path(f"{out_file}.usage")


def find_unused(
    params: Mapping[str, ParamValue], args: Sequence[str], out_file: Path
) -> list[str] | None:
    """The parameters the run did not take, in the spec's order; None when that is unknown (no
    Python process of the run loaded the hook: a non-Python entry, ``python -I``)."""
    if not params:
        return []
    usage = _read(usage_file(out_file))
    if usage is None:
        return None
    if usage.get("environ"):
        return []
    read = set(usage.get("read") or [])
    return [name for name in params if name not in read and not written_in(args, name)]


def describe(unused: Sequence[str], params: Mapping[str, ParamValue]) -> str:
    """One log line naming the unused parameters, what happened to them and the fixes."""
    shown = ", ".join(f"{name}={format_value(params[name])}" for name in unused)
    return (
        f"unused parameters: {shown}: no argparse parser of the run's main process has an option "
        "for them, it did not read CELERY_AGENT_PARAMS, and the args did not name them (an "
        "option appended to the command line counts only when a parser reads it); add the "
        "option to the script's parser, read them from CELERY_AGENT_PARAMS, or drop them"
    )


def strict_error(unused: Sequence[str]) -> AgentError:
    """The error of a run with ``strict_params`` that left parameters unused."""
    names = ", ".join(unused)
    return AgentError(
        f"strict_params: the run did not use parameter{'s' if len(unused) > 1 else ''} {names}",
        "add an argparse option for each (parser.add_argument('--NAME')), read them from "
        "CELERY_AGENT_PARAMS, or drop them from the params",
    )


def record(
    spec: TaskSpec, out_file: Path, summary: dict[str, Any], note: Callable[[str], None]
) -> AgentError | None:
    """Put the resolved and the unused parameters in the run's ``summary``, say in the log (via
    ``note``) which were unused; the error to fail the run with under ``strict_params``."""
    summary["params"] = read_resolved(out_file) or {}
    unused = find_unused(spec.params, spec.args, out_file)
    if unused is None:
        note("parameters not checked: no Python process of the run loaded the parameter hook")
    elif unused:
        summary["unused_params"] = unused
        note(describe(unused, spec.params))
        return strict_error(unused) if spec.strict_params else None
    return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("parameter usage in %s is unreadable: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None
