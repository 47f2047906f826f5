"""celery-agent's argparse hook, loaded at interpreter start from the first entry on PYTHONPATH.

It reads the run's parameter overrides from the environment and, when the program imports
argparse, patches ``argparse.ArgumentParser.parse_known_args`` (``parse_args`` goes through it);
at interpreter start it imports nothing, so a program that never uses argparse pays ~nothing:

- ``CELERY_AGENT_PARAMS``: a JSON object of overrides. After the top-level parser has parsed, each
  parameter naming an action (by its dest, or by a long option ``--name`` with ``-``/``_``
  swapped) is set on the namespace, converted as argparse would convert a command-line word
  (``type``, ``choices``; flags take a bool or true/false/1/0/yes/no; list options a JSON list or
  one value). A value the option rejects is reported by argparse, as a bad command-line value is.
- ``CELERY_AGENT_APPENDED``: a JSON list of the parameters appended to argv. The parser is not
  shown an appended option it does not know, so it cannot fail with "unrecognized arguments";
  ``sys.argv`` itself is left as it is. Arguments the user wrote are always passed on.
- ``CELERY_AGENT_PARAMS_OUT``: after the first top-level parse, the resolved namespace is written
  there as JSON (values JSON can not carry are written as ``str()``).

Only the top-level parse is overridden: a subparser parses its own words untouched. Without
parameters nothing changes but the recording. Any failure inside the hook is reported on one
line starting "celery-agent:" and the program runs on. Afterwards the ``sitecustomize`` this file
shadows, if any, is run. This file must run on Python 3.8+ with the standard library only.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(what: str, exc: BaseException) -> None:
    """Report a failure inside the hook on one line of stderr; never raise."""
    try:  # noqa: SIM105 - contextlib would cost an import at every interpreter start
        sys.stderr.write(f"celery-agent: {what}: {type(exc).__name__}: {exc}\n")
    except Exception:  # stderr may be closed: nothing more can be done
        pass


def _patch(argparse: object) -> None:
    from _celery_agent_argparse import patch

    patch(argparse)


def _install() -> None:
    """Patch argparse when there is anything to override or record, the moment it is imported.

    Nothing is imported at interpreter start (json and argparse pull in ``re``, ~10 ms): a script
    that never imports argparse pays only for this function."""
    if not os.environ.get("CELERY_AGENT_PARAMS", "").strip() and not os.environ.get(
        "CELERY_AGENT_PARAMS_OUT"
    ):
        return
    if "argparse" in sys.modules:
        _patch(sys.modules["argparse"])
    else:
        sys.meta_path.insert(0, _ArgparseWatch())  # type: ignore[arg-type]


class _ArgparseWatch:
    """A meta path entry that finds nothing itself: when argparse is first imported, it lets the
    other finders load it, then patches it (and leaves ``sys.meta_path``)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "argparse":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # type: ignore[arg-type]
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)  # type: ignore[assignment]
        return spec


class _PatchingLoader:
    """Loads a module with the loader it wraps, then patches it."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def create_module(self, spec: object) -> object:
        return self.loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        self.loader.exec_module(module)  # type: ignore[attr-defined]
        try:
            _patch(module)
        except Exception as exc:
            _warn("parameter overrides are off", exc)


def _chain() -> None:
    """Run the sitecustomize this one shadows: the next one on sys.path, if any."""
    here = _HERE
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = _path_finder().find_spec("sitecustomize", path)  # type: ignore[attr-defined]
    if spec is None or spec.loader is None:
        return
    import importlib.util

    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def _path_finder() -> object:
    """importlib's PathFinder; the interpreter has loaded its module already (importing
    ``importlib.machinery`` would cost ~0.7 ms at every start)."""
    loaded = sys.modules.get("_frozen_importlib_external")
    if loaded is not None and hasattr(loaded, "PathFinder"):
        return loaded.PathFinder
    import importlib.machinery

    return importlib.machinery.PathFinder


def _main() -> None:
    try:
        _install()
    except Exception as exc:
        _warn("parameter overrides are off", exc)
    try:
        _chain()
    except Exception as exc:
        _warn("the next sitecustomize failed", exc)


_main()
