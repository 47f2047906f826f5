"""celery-agent's argparse hook, loaded at interpreter start from the first entry on PYTHONPATH.

It reads the run's parameter overrides from the environment and, when the program imports
argparse, patches ``argparse.ArgumentParser.parse_known_args`` (``parse_args`` goes through it);
at interpreter start it imports nothing, so a program that never uses argparse pays ~nothing (with
parameters, one small file write):

- ``CELERY_AGENT_PARAMS``: a JSON object of overrides. After the top-level parser has parsed, each
  parameter naming an action (by its dest, or by a long option ``--name`` with ``-``/``_``
  swapped) is set on the namespace, converted as argparse would convert a command-line word
  (``type``, ``choices``; flags take a bool or true/false/1/0/yes/no; list options a JSON list or
  one value). A value the option rejects is reported by argparse, as a bad command-line value is.
- ``CELERY_AGENT_APPENDED``: a JSON list of the parameters appended to argv. The parser is not
  shown an appended option it does not know, so it cannot fail with "unrecognized arguments";
  ``sys.argv`` itself is left as it is. Arguments the user wrote are always passed on. With
  ``CELERY_AGENT_STRICT_PARAMS=1`` an appended option the parser does not know is shown to it,
  so ``parse_args`` refuses it at once, as it would by hand.
- ``CELERY_AGENT_PARAMS_OUT``: after the first top-level parse, the resolved namespace is written
  there as JSON (values JSON can not carry are written as ``str()``).

Only the top-level parse is overridden: a subparser parses its own words untouched. Without
parameters nothing changes but the recording.

The hook acts in the run's main process only: a Python that finds ``CELERY_AGENT_HOOK_PID`` empty
claims the run by writing its pid there, which its children inherit, so a child Python
(joblib/loky workers, multiprocessing spawn and forkserver children, a subprocess) neither gets
the overrides nor records its own parse; a fork of the main process is told apart by its pid.
(Pythons a shell entry runs one after another are each a main process.) With parameters, the
main process writes ``<CELERY_AGENT_PARAMS_OUT>.usage`` (JSON): ``read``, the parameters its
parsers know, and ``environ``, whether it read ``CELERY_AGENT_PARAMS`` by name; the agent
reports the others as unused. Any failure inside the hook is reported on one
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


_OWNER = "CELERY_AGENT_HOOK_PID"
_USAGE = None
_QUIET = False


def _patch(argparse: object) -> None:
    from _celery_agent_argparse import patch

    global _QUIET
    _QUIET = True  # the hook's own read of the parameters is not the program's
    try:
        patch(argparse, _USAGE)
    finally:
        _QUIET = False


def _install() -> None:
    """Patch argparse when there is anything to override or record, the moment it is imported.

    Nothing is imported at interpreter start (json and argparse pull in ``re``, ~10 ms): a script
    that never imports argparse pays only for this function (and, with parameters, one small
    file write)."""
    global _USAGE
    params = os.environ.get("CELERY_AGENT_PARAMS", "").strip()
    out_file = os.environ.get("CELERY_AGENT_PARAMS_OUT", "")
    if not params and not out_file or not _claim():
        return
    if params and params != "{}" and out_file:
        _USAGE = _Usage(out_file + ".usage")
        if _USAGE.save():
            _watch_environ(_USAGE)
        else:  # reported once; the agent then says the parameters were not checked
            _USAGE = None
    if "argparse" in sys.modules:
        _patch(sys.modules["argparse"])
    else:
        sys.meta_path.insert(0, _ArgparseWatch())  # type: ignore[arg-type]


def _claim() -> bool:
    """Whether this interpreter is the run's main process (the first one to start)."""
    owner = os.environ.get(_OWNER, "")
    if owner and owner != str(os.getpid()):
        return False  # a child of the main process: it inherited the claim
    os.environ[_OWNER] = str(os.getpid())
    return True


class _Usage:
    """What the main process took of the parameters, saved on each change (atomically). A main
    process that follows another (a shell entry running one Python after another) adds to what
    the earlier ones took."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.read = []  # type: list
        self.environ = False
        if os.path.exists(path):
            self._load()

    def _load(self) -> None:
        import json

        try:
            with open(self.path, encoding="utf-8") as handle:
                earlier = json.load(handle)
            self.read = [str(name) for name in earlier.get("read") or []]
            self.environ = bool(earlier.get("environ"))
        except Exception as exc:
            _warn("could not read which parameters were used", exc)

    def took(self, names: object) -> None:
        """Parsers of the main process know these parameters."""
        new = [n for n in names if n not in self.read]  # type: ignore[attr-defined]
        if new and os.getpid() == self.pid:
            self.read.extend(new)
            self.save()

    def save(self) -> bool:
        try:
            names = "[]"
            if self.read:
                import json

                names = json.dumps(self.read)
            environ = "true" if self.environ else "false"
            text = f'{{"pid": {self.pid}, "read": {names}, "environ": {environ}}}'
            tmp = f"{self.path}.{self.pid}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.path)
            return True
        except Exception as exc:
            _warn("could not record which parameters were used", exc)
            return False


def _watch_environ(usage: _Usage) -> None:
    """Note the main process reading ``CELERY_AGENT_PARAMS`` from ``os.environ`` by its name
    (``os.environ[...]``, ``.get``, ``os.getenv``, ``in``); a copy of the whole environment (for a
    child process: ``dict(os.environ)``, ``{**os.environ}``) is no read of it."""
    base = type(os.environ)

    class _Environ(base):  # type: ignore[misc, valid-type]
        def __getitem__(self, key: str) -> str:
            if key == "CELERY_AGENT_PARAMS" and not (usage.environ or _QUIET):
                _note_read(usage, sys._getframe(1))
            return base.__getitem__(self, key)

    os.environ.__class__ = _Environ


def _note_read(usage: _Usage, caller: object) -> None:
    try:
        if os.getpid() == usage.pid and _subscripting(caller):
            usage.environ = True
            usage.save()
    except Exception as exc:
        _warn("could not record which parameters were used", exc)


def _subscripting(frame: object) -> bool:
    """Whether ``frame`` is at a subscript (``mapping[key]``), not at a call or a ``**`` merge
    that copies a whole mapping."""
    import opcode

    code = frame.f_code.co_code  # type: ignore[attr-defined]
    at = frame.f_lasti  # type: ignore[attr-defined]
    name = opcode.opname[code[at]]
    if name == "BINARY_OP":  # Python 3.14: a subscript is a binary operation
        ops = getattr(opcode, "_nb_ops", ())
        return code[at + 1] < len(ops) and ops[code[at + 1]][0] == "NB_SUBSCR"
    return name == "BINARY_SUBSCR"


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
