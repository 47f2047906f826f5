"""Redis key names are spelled in keys.py only: no other module passes a Redis command a key made
of its own string literals (the Redis clients are ``r`` / ``client`` / ``pipe`` attributes or
names here)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from celery_agent.keys import Keys

PACKAGE = Path(__file__).resolve().parents[2] / "celery_agent"
CLIENTS = {"r", "client", "pipe"}


def _client(node: ast.expr) -> bool:
    """Whether ``node`` names a Redis client or pipeline (``store.r``, ``pipe``, ``self.r``)."""
    if isinstance(node, ast.Attribute):
        return node.attr in CLIENTS
    return isinstance(node, ast.Name) and node.id in CLIENTS


def spelled_keys(source: str) -> list[int]:
    """Lines where a Redis command gets a key made of a string literal or an f-string, or where
    keys are joined by hand (``Keys._join``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "_join":
            found.append(node.lineno)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not _client(node.func.value) or not node.args:
            continue
        first = node.args[0]
        literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
        if literal or isinstance(first, ast.JoinedStr):
            found.append(node.lineno)
    return found


def test_no_module_but_keys_spells_a_redis_key():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "keys.py"
        for line in spelled_keys(path.read_text())
    ]
    assert not found, f"key names spelled outside keys.py (add a method to keys.Keys): {found}"


def test_the_check_sees_a_spelled_key_and_passes_a_keys_method():
    source = (
        "store.r.get(f'{prefix}:run:{run_id}')\npipe.hset('ca:runs', 'a', 1)\n"
        "store.r.get(store.keys.run(run_id))\nself.r.ping()\n"
        "pipe.unlink(k.run(i), k._join('run', i, 'x'))\n"
    )
    assert spelled_keys(source) == [1, 2, 5]


def test_every_key_is_under_the_prefix():
    keys = Keys("p")
    methods = [getattr(keys, n) for n in dir(keys) if not n.startswith("_") and n != "prefix"]
    made = [m(*["x"] * len(inspect.signature(m).parameters)) for m in methods]
    assert len(made) > 20 and all(k.startswith("p:") for k in made), made
