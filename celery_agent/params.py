"""Parameter overrides: argv rewrite, argparse hook, environment.

A run's parameters reach the user's script three ways, with no change to the script:

1. **argv rewrite** (:func:`rewrite_argv`): ``--name value`` / ``--name=value`` already in the args
   get the override's value; parameters not present are appended as ``--name value``. A parameter
   ``batch_size`` also matches ``--batch-size`` (and the other way round). Bools follow flag
   semantics: True keeps or appends ``--flag``, False removes it. A None parameter leaves argv as is.
2. **argparse hook**: ``_hook/sitecustomize.py``, put first on the run's ``PYTHONPATH``, sets each
   parameter on the namespace the top-level parser returns (converted with the option's ``type``),
   hides appended options the parser does not know from the parser (they stay in ``sys.argv``),
   and records the resolved namespace as JSON in ``CELERY_AGENT_PARAMS_OUT``.
3. **environment**: ``CELERY_AGENT_PARAMS`` holds the overrides as a JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import SpecError
from .spec import PARAM_NAME, ParamValue, TaskSpec

logger = logging.getLogger(__name__)

#: absolute path of the directory holding the argparse hook (a plain directory, not a package)
HOOK_DIR: Path = Path(__file__).resolve().parent / "_hook"

#: words a flag's value may be written as; the hook accepts the same (plus "1" and "0")
_BOOL_WORDS = frozenset({"true", "false", "yes", "no"})
_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def format_value(value: ParamValue) -> str:
    """A parameter value as a command-line word: a str as is, anything else as JSON (0.5, true)."""
    return value if isinstance(value, str) else json.dumps(value)


def rewrite_argv(
    args: Sequence[str], params: Mapping[str, ParamValue]
) -> tuple[list[str], list[str]]:
    """Apply ``params`` to ``args``; return ``(new_args, appended_names)``.

    Only the first occurrence of an overridden option is kept (later ones are removed), words
    after ``--`` are never touched, and appended options go before a ``--``.
    """
    _check_distinct(params)
    head, tail = _split_at_dashdash(list(args))
    appended: list[str] = []
    extra: list[str] = []
    for name, value in params.items():
        if value is None:
            continue
        head, found = _override(head, name, value)
        if not found and _appended_tokens(name, value):
            extra += _appended_tokens(name, value)
            appended.append(name)
    return head + extra + tail, appended


def hook_env(
    params: Mapping[str, ParamValue],
    out_file: Path,
    appended: Sequence[str],
    base_pythonpath: str | None = None,
    strict: bool = False,
) -> dict[str, str]:
    """The variables to add to the run's environment so the argparse hook applies ``params``;
    ``strict``: appended options a parser does not know are left for it to refuse."""
    pythonpath = str(HOOK_DIR) + (os.pathsep + base_pythonpath if base_pythonpath else "")
    return {
        "PYTHONPATH": pythonpath,
        "CELERY_AGENT_PARAMS": json.dumps(dict(params)),
        "CELERY_AGENT_PARAMS_OUT": str(out_file),
        "CELERY_AGENT_APPENDED": json.dumps(list(appended)),
        "CELERY_AGENT_HOOK_PID": "",  # the run's first interpreter claims it (its children not)
        "CELERY_AGENT_STRICT_PARAMS": "1" if strict else "",
    }


def read_resolved(out_file: Path) -> dict[str, Any] | None:
    """The namespace the script's parser resolved, or None (never parsed, or unreadable)."""
    try:
        data = json.loads(Path(out_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("resolved parameters in %s are unreadable: %s", out_file, exc)
        return None
    return data if isinstance(data, dict) else None


def resolve(
    spec_args: Sequence[str],
    params: Mapping[str, ParamValue],
    out_file: Path,
    base_pythonpath: str | None = None,
    strict: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Rewrite the args and build the hook's environment; a stale ``out_file`` is removed."""
    Path(out_file).unlink(missing_ok=True)
    Path(f"{out_file}.usage").unlink(missing_ok=True)
    args, appended = rewrite_argv(spec_args, params)
    return args, hook_env(params, out_file, appended, base_pythonpath, strict)


def for_spec(spec: TaskSpec, out_file: Path) -> tuple[list[str], dict[str, str]]:
    """:func:`resolve` for a run of ``spec``: its args, params, PYTHONPATH and strictness."""
    pythonpath = spec.env.get("PYTHONPATH")
    return resolve(spec.args, spec.params, out_file, pythonpath, spec.strict_params)


def written_in(args: Sequence[str], name: str) -> bool:
    """Whether ``args`` (before a ``--``) already name the option of parameter ``name``."""
    head, _ = _split_at_dashdash(list(args))
    options = _option_names(name)
    return any(word.partition("=")[0] in options for word in head)


# -- argv rewriting ---------------------------------------------------------------------------


def _check_distinct(params: Mapping[str, ParamValue]) -> None:
    seen: dict[str, str] = {}
    for name in params:
        key = name.replace("-", "_")
        if key in seen:
            raise SpecError(
                f"parameters {seen[key]!r} and {name!r} name the same option",
                "keep only one of them",
            )
        seen[key] = name


def _split_at_dashdash(args: list[str]) -> tuple[list[str], list[str]]:
    if "--" in args:
        cut = args.index("--")
        return args[:cut], args[cut:]
    return args, []


def _option_names(name: str) -> set[str]:
    return {f"--{v}" for v in (name, name.replace("_", "-"), name.replace("-", "_"))}


def _override(tokens: list[str], name: str, value: ParamValue) -> tuple[list[str], bool]:
    """Replace the first occurrence of the option named ``name``, drop later ones."""
    options = _option_names(name)
    out: list[str] = []
    found = False
    i = 0
    while i < len(tokens):
        key, eq, _ = tokens[i].partition("=")
        if key not in options:
            out.append(tokens[i])
            i += 1
            continue
        has_value = bool(eq) or _next_is_value(tokens, i, value)
        if not found:
            out += _replacement(key, value, has_value, bool(eq))
        found = True
        i += 1 if eq or not has_value else 2
    return out, found


def _next_is_value(tokens: list[str], i: int, value: ParamValue) -> bool:
    """Whether the word after ``tokens[i]`` is that option's value (not another option)."""
    if i + 1 >= len(tokens):
        return False
    word = tokens[i + 1]
    if isinstance(value, bool):  # a flag may be followed by a positional: only a bool word counts
        return word.lower() in _BOOL_WORDS | {"1", "0"}
    return word != "--" and (not word.startswith("-") or bool(_NUMBER.match(word)))


def _is_boolish(value: ParamValue) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOL_WORDS)


def _truthy(value: ParamValue) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "yes"))


def _replacement(option: str, value: ParamValue, has_value: bool, eq_form: bool) -> list[str]:
    if not has_value and _is_boolish(value):
        return [option] if _truthy(value) else []
    return _option_with_value(option, format_value(value), eq_form)


def _option_with_value(option: str, text: str, eq_form: bool = False) -> list[str]:
    # a value starting with '-' would read as an option: keep it attached
    return [f"{option}={text}"] if eq_form or text.startswith("-") else [option, text]


def _appended_tokens(name: str, value: ParamValue) -> list[str]:
    """What is appended for a parameter absent from argv (the hook recomputes the same)."""
    if isinstance(value, bool):
        return [f"--{name}"] if value else []
    return _option_with_value(f"--{name}", format_value(value))


def parse_param(text: str) -> tuple[str, ParamValue]:
    """Parse a command-line override 'name=value'; the value is read as JSON when it is JSON."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SpecError(f"parameter {text!r} is malformed", "write it as name=value, like lr=0.01")
    if not PARAM_NAME.match(name):
        raise SpecError(
            f"parameter name {name!r} is not valid", "use letters, digits, '_', '-' or '.'"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        return name, raw
    if isinstance(value, (list, dict)):
        return name, raw
    return name, value
