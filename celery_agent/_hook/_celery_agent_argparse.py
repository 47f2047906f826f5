"""The argparse side of celery-agent's parameter hook (see ``sitecustomize.py`` next to it).

Imported by the hook only when the program imports argparse, so its cost (json, argparse, ``re``)
is paid by the programs that parse arguments. This file must run on Python 3.8+ with the standard
library only.
"""

from __future__ import annotations

import os
import sys

_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")
_BOOL_ACTIONS = ("_StoreTrueAction", "_StoreFalseAction", "BooleanOptionalAction")


def _warn(what: str, exc: BaseException) -> None:
    """Report a failure inside the hook on one line of stderr; never raise."""
    import contextlib

    with contextlib.suppress(Exception):  # stderr may be closed: nothing more can be done
        sys.stderr.write(f"celery-agent: {what}: {type(exc).__name__}: {exc}\n")


def _format(value: object) -> str:
    """A value as a command-line word, as the agent's argv rewrite writes it."""
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _option_names(name: str) -> list[str]:
    return [f"--{v}" for v in (name, name.replace("_", "-"), name.replace("-", "_"))]


def _appended_tokens(name: str, value: object) -> list[str]:
    """The words the argv rewrite appended for ``name`` (it appends exactly these)."""
    if isinstance(value, bool):
        return [f"--{name}"] if value else []
    text = _format(value)
    return [f"--{name}={text}"] if text.startswith("-") else [f"--{name}", text]


def _settable(action: object) -> bool:
    import argparse

    skipped = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return getattr(action, "dest", None) != argparse.SUPPRESS and not isinstance(action, skipped)


def _find_action(parser: object, name: str) -> object | None:
    """The parser's action a parameter names: by option string, else by dest."""
    by_option = getattr(parser, "_option_string_actions", {})
    for option in _option_names(name):
        action = by_option.get(option)
        if action is not None and _settable(action):
            return action
    dest = name.replace("-", "_")
    for action in getattr(parser, "_actions", []):
        if action.dest == dest and _settable(action):
            return action
    return None


def _takes_list(action: object) -> bool:
    import argparse

    nargs = getattr(action, "nargs", None)
    return isinstance(action, argparse._AppendAction) or nargs not in (None, "?")


def _words(value: object) -> list[str]:
    """A list option's words: a JSON list's items, else the one value."""
    import json

    if isinstance(value, str):
        try:
            items = json.loads(value)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [_format(item) for item in items]
    return [_format(value)]


def _to_bool(action: object, value: object) -> bool:
    import argparse

    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise argparse.ArgumentError(action, f"invalid boolean value: {value!r}")  # type: ignore[arg-type]


def _one(parser: object, action: object, text: str) -> object:
    """Convert one word as argparse converts a command-line word (type, then choices)."""
    result = parser._get_value(action, text)  # type: ignore[attr-defined]
    parser._check_value(action, result)  # type: ignore[attr-defined]
    return result


def _convert(parser: object, action: object, value: object) -> object:
    """The namespace value for an override, as the option would have produced it."""
    import argparse

    if value is None:
        return None
    if type(action).__name__ in _BOOL_ACTIONS:
        return _to_bool(action, value)
    if isinstance(action, argparse._CountAction):
        return int(_format(value))
    if getattr(action, "nargs", None) == 0:
        return action.const if _to_bool(action, value) else action.default  # type: ignore[attr-defined]
    if _takes_list(action):
        return [_one(parser, action, word) for word in _words(value)]
    return _one(parser, action, _format(value))


def _action_tokens(action: object, value: object) -> list[str]:
    """Words that give ``action`` this value on a command line."""
    options = list(getattr(action, "option_strings", []))
    option = next((o for o in options if o.startswith("--")), options[0])
    words = _words(value) if _takes_list(action) else [_format(value)]
    if len(words) == 1 and words[0].startswith("-") and option.startswith("--"):
        return [f"{option}={words[0]}"]
    return [option] + words


def _subparsers(parser: object) -> list:
    import argparse

    actions = getattr(parser, "_actions", [])
    return [a for a in actions if isinstance(a, argparse._SubParsersAction)]


def _subcommand_knows(parser: object, option: str) -> bool:
    """Whether a subcommand's parser (at any depth) has ``option``."""
    for action in _subparsers(parser):
        for sub in action.choices.values():
            if option in getattr(sub, "_option_string_actions", {}) or _subcommand_knows(
                sub, option
            ):
                return True
    return False


def _find_run(words: list[str], run: list[str]) -> int:
    """Index of the last occurrence of ``run`` in ``words`` before a ``--``, or -1."""
    end = words.index("--") if "--" in words else len(words)
    for start in range(end - len(run), -1, -1):
        if words[start : start + len(run)] == run:
            return start
    return -1


class _Hook:
    """The patched parse: filter appended options, parse, set the parameters, record."""

    def __init__(
        self, params: dict, appended: list, out_file: str, original: object, usage: object
    ) -> None:
        import threading

        self.params = params
        self.appended = appended
        self.out_file = out_file
        self.original = original
        self.usage = usage  # sitecustomize's record of the parameters taken, or None
        self.strict = os.environ.get("CELERY_AGENT_STRICT_PARAMS") == "1"
        self.pid = os.getpid()
        self.recorded = False
        self.local = threading.local()

    def parse_known_args(self, parser: object, args: object, namespace: object) -> object:
        """Run the hook around a top-level parse; a nested (subparser) parse runs as is, and so
        does any parse in a forked child."""
        if os.getpid() != self.pid:
            return self.original(parser, args, namespace)  # type: ignore[operator]
        if getattr(self.local, "depth", 0):
            self._took(parser)
            return self.original(parser, args, namespace)  # type: ignore[operator]
        self.local.depth = 1
        try:
            return self._top_level(parser, args, namespace)
        finally:
            self.local.depth = 0

    def _top_level(self, parser: object, args: object, namespace: object) -> object:
        if self.params:
            args = self._guarded_input(parser, args)
        result = self.original(parser, args, namespace)  # type: ignore[operator]
        if self.params:
            self._took(parser)
            self._guarded_apply(parser, result[0])
        if not self.recorded and self.out_file:
            self.recorded = True
            self._record(result[0])
        return result

    def _guarded_input(self, parser: object, args: object) -> object:
        try:
            words = list(sys.argv[1:] if args is None else args)  # type: ignore[call-overload]
            for name in self.appended:
                words = self._hide_appended(parser, words, name)
            return words
        except Exception as exc:
            _warn("could not filter the appended parameters", exc)
            return args

    def _hide_appended(self, parser: object, words: list[str], name: str) -> list[str]:
        """Replace an appended option with what the parser understands (maybe nothing).

        An option only a subcommand knows is left in place for the subcommand's parser. With
        subcommands, the top-level parser's options must come first, so they move to the front.
        """
        run = _appended_tokens(name, self.params[name])
        start = _find_run(words, run) if run else -1
        if start < 0 or _subcommand_knows(parser, run[0].partition("=")[0]):
            return words
        action = _find_action(parser, name)
        if action is None and self.strict:  # strict: argparse refuses it, as by hand
            return words
        known = action is not None and getattr(action, "option_strings", None)
        takes_words = known and getattr(action, "nargs", None) != 0
        fixed = _action_tokens(action, self.params[name]) if takes_words else []
        rest = words[:start] + words[start + len(run) :]
        if _subparsers(parser):
            return fixed + rest
        return rest[:start] + fixed + rest[start:]

    def _took(self, parser: object) -> None:
        """Note the parameters this parser knows (they are applied, or parsed from argv)."""
        if self.usage is None:
            return
        try:
            names = [name for name in self.params if _find_action(parser, name) is not None]
            self.usage.took(names)  # type: ignore[attr-defined]
        except Exception as exc:
            _warn("could not record which parameters were used", exc)

    def _guarded_apply(self, parser: object, namespace: object) -> None:
        import argparse

        try:
            for name, value in self.params.items():
                action = _find_action(parser, name)
                if action is not None:
                    setattr(namespace, action.dest, _convert(parser, action, value))  # type: ignore[attr-defined]
        except argparse.ArgumentError as err:
            if getattr(parser, "exit_on_error", True):
                parser.error(str(err))  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            _warn("could not apply the parameters", exc)

    def _record(self, namespace: object) -> None:
        """Write the resolved namespace as JSON, atomically (temporary file, then rename)."""
        import json

        try:
            text = json.dumps(vars(namespace), default=str)
            tmp = f"{self.out_file}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.out_file)
        except Exception as exc:
            _warn("could not record the resolved parameters", exc)


def _read_env() -> tuple[dict, list, str]:
    import json

    raw = os.environ.get("CELERY_AGENT_PARAMS", "").strip()
    params = json.loads(raw) if raw else {}
    if not isinstance(params, dict):
        raise ValueError("CELERY_AGENT_PARAMS is not a JSON object")
    appended = json.loads(os.environ.get("CELERY_AGENT_APPENDED", "").strip() or "[]")
    out_file = os.environ.get("CELERY_AGENT_PARAMS_OUT", "")
    return params, [name for name in appended if name in params], out_file


def patch(argparse: object, usage: object = None) -> None:
    """Wrap ``ArgumentParser.parse_known_args`` with the hook; ``usage`` (sitecustomize's) is told
    which parameters the parsers know."""
    params, appended, out_file = _read_env()
    if not params and not out_file:
        return
    import functools

    parser_class = argparse.ArgumentParser  # type: ignore[attr-defined]
    original = parser_class.parse_known_args
    hook = _Hook(params, appended, out_file, original, usage)

    @functools.wraps(original)
    def parse_known_args(self: object, args: object = None, namespace: object = None) -> object:
        return hook.parse_known_args(self, args, namespace)

    parser_class.parse_known_args = parse_known_args
