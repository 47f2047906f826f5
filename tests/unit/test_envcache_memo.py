"""What a cache hit memoizes (requirements, interpreter, ready entries, touches) and what undoes it.

Memos keep a file's value only once its stamp has settled (``filestamps.SETTLE_NS``); tests that
need a memoized value set that margin to 0 and give the edited file a distinct mtime, since two
writes within one clock tick may share a stamp (the case the margin exists for).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from celery_agent import envcache, filestamps
from celery_agent.envcache import EnvCache
from celery_agent.errors import EnvBuildError
from celery_agent.executors import reqfiles
from celery_agent.executors.indexes import plain
from celery_agent.executors.interpreters import Interpreter, find_interpreter
from celery_agent.executors.venv import env_key, key_parts, read_requirements
from celery_agent.filestamps import FileMemo, Stamp
from celery_agent.spec import TaskSpec

PY = Interpreter(path="/opt/python3.11/bin/python3.11", version="3.11.7 (main) [GCC 12.2.0]")


def spec(**fields: object) -> TaskSpec:
    return TaskSpec.parse({"repo": ".", "entry": "train.py"} | fields)


def key(source: Path, **fields: object) -> str:
    s = spec(**fields)
    return env_key(PY, "uv", read_requirements(s, source), plain(s), source)


def rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite ``path`` without replacing it (same inode), then give it a distinct mtime."""
    with path.open("r+") as f:
        f.write(text)
        f.truncate()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


class Counting:
    """Wraps a memo's compute function and counts its calls."""

    def __init__(self, memo: FileMemo[Any], monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.inner = memo.compute
        monkeypatch.setattr(memo, "compute", self)

    def __call__(self, path: str, stamp: Stamp) -> Any:
        self.calls += 1
        return self.inner(path, stamp)


@pytest.fixture
def settle_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memoize files at once instead of after SETTLE_NS."""
    monkeypatch.setattr(filestamps, "SETTLE_NS", 0)


# -- FileMemo -------------------------------------------------------------------------------------
def test_file_memo_reuses_a_value_until_the_file_changes(tmp_path: Path, settle_now: None) -> None:
    path = tmp_path / "f.txt"
    path.write_text("one")
    calls: list[str] = []
    memo = FileMemo(lambda p, _stamp: calls.append(p) or Path(p).read_text())
    assert [memo.get(str(path)), memo.get(str(path))] == ["one", "one"] and len(calls) == 1
    rewrite_in_place(path, "two")
    assert memo.get(str(path)) == "two" and len(calls) == 2
    path.unlink()
    assert memo.get(str(path)) is None


def test_file_memo_recomputes_a_file_that_has_not_settled(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("one")
    calls: list[str] = []
    memo = FileMemo(lambda p, _stamp: calls.append(p))
    memo.get(str(path))
    memo.get(str(path))
    assert len(calls) == 2, "a file changed within SETTLE_NS may change again with the same stamp"


# -- requirements ---------------------------------------------------------------------------------
def test_env_key_is_the_hash_of_key_parts(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "six-1.0-py3-none-any.whl").write_bytes(b"zip")
    fields = {"requirements": ["six"], "find_links": ["wheels"], "index_url": "https://m.example"}
    s = spec(**fields)
    parts = key_parts(PY, "uv", read_requirements(s, tmp_path), plain(s), tmp_path)
    assert key(tmp_path, **fields) == EnvCache.key(parts)


def test_a_different_requirements_list_gets_its_own_key(tmp_path: Path) -> None:
    first = key(tmp_path, requirements=["six"])
    assert key(tmp_path, requirements=["six", "attrs"]) != first
    assert key(tmp_path, requirements=["Six"]) == first
    assert read_requirements(spec(requirements=["attrs", "Six"]), tmp_path).lines == (
        "attrs",
        "six",
    )


def test_requirements_txt_edited_in_place_with_the_same_size_changes_the_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("six==1.16.0\n")
    before = key(tmp_path)
    with path.open("r+") as f:  # right after the first write: the same clock tick, most likely
        f.write("six==1.15.0\n")
    assert key(tmp_path) != before


def test_memoized_requirements_txt_is_read_again_when_its_stamp_changes(
    tmp_path: Path, settle_now: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("six==1.16.0\n")
    parses = Counting(reqfiles._FILES, monkeypatch)
    before = key(tmp_path)
    assert key(tmp_path) == before and parses.calls == 1
    rewrite_in_place(path, "six==1.15.0\n")
    assert key(tmp_path) != before and parses.calls == 2
    path.unlink()
    assert not read_requirements(spec(), tmp_path)


def test_a_checkout_of_another_commit_at_the_same_path_is_read_again(
    tmp_path: Path, settle_now: None
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "requirements.txt").write_text("six\n")
    before = key(source)
    shutil.rmtree(source)
    source.mkdir()
    (source / "requirements.txt").write_text("six\nattrs\n")
    assert key(source) != before


# -- env cache entries ----------------------------------------------------------------------------
class Builder:
    """Writes an env and returns how many builds it has done."""

    def __init__(self) -> None:
        self.builds = 0

    def __call__(self, env: Path) -> dict[str, Any]:
        self.builds += 1
        env.mkdir(parents=True)
        return {"build": self.builds}


def test_a_memoized_hit_does_not_parse_meta_json_again(
    tmp_path: Path, settle_now: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, build = EnvCache(tmp_path), Builder()
    cache.get_or_build("k1", build)
    reads = Counting(envcache._READY, monkeypatch)
    hits = [cache.get_or_build("k1", build) for _ in range(3)]
    assert [(h.hit, h.meta) for h in hits] == [(True, {"build": 1})] * 3
    assert reads.calls == 1
    hits[0].meta["build"] = 99
    assert cache.get_or_build("k1", build).meta == {"build": 1}, "callers get their own copy"


def test_a_removed_entry_is_rebuilt_though_its_hit_was_memoized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, build = EnvCache(tmp_path), Builder()
    cache.get_or_build("k1", build)
    with monkeypatch.context() as m:
        m.setattr(filestamps, "SETTLE_NS", 0)
        assert cache.get_or_build("k1", build).hit
    shutil.rmtree(tmp_path / "k1")
    assert cache.lookup("k1") is None
    again = cache.get_or_build("k1", build)
    assert (again.hit, again.meta, build.builds) == (False, {"build": 2}, 2)
    assert cache.get_or_build("k1", build).meta == {"build": 2}


def test_an_entry_without_its_ready_marker_is_rebuilt_though_memoized(
    tmp_path: Path, settle_now: None
) -> None:
    cache, build = EnvCache(tmp_path), Builder()
    cache.get_or_build("k1", build)
    assert cache.get_or_build("k1", build).hit
    (tmp_path / "k1" / "ready").unlink()
    assert not cache.get_or_build("k1", build).hit and build.builds == 2


def _age_last_used(cache: EnvCache, key: str) -> float:
    stamp = time.time() - 1000
    os.utime(cache.root / key / "last_used", (stamp, stamp))
    return stamp


def test_hits_touch_last_used_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, last_used = EnvCache(tmp_path), tmp_path / "k1" / "last_used"
    cache.get_or_build("k1", Builder())
    _age_last_used(cache, "k1")
    cache.get_or_build("k1", Builder())
    assert time.time() - last_used.stat().st_mtime < 60, "the first hit touches"
    old = _age_last_used(cache, "k1")
    cache.get_or_build("k1", Builder())
    assert last_used.stat().st_mtime == old, "a hit within TOUCH_INTERVAL does not"
    monkeypatch.setattr(filestamps, "TOUCH_INTERVAL", 0.0)
    cache.get_or_build("k1", Builder())
    assert time.time() - last_used.stat().st_mtime < 60


# -- interpreters ---------------------------------------------------------------------------------
def fake_python(path: Path, version: str, runs: Path) -> Path:
    """A script that answers the probe like an interpreter and counts its runs."""
    path.write_text(f'#!/bin/sh\necho run >> "{runs}"\necho "$0"\necho "{version} (fake)"\n')
    path.chmod(0o755)
    return path


def test_interpreter_is_probed_again_when_its_file_changes(
    tmp_path: Path, settle_now: None
) -> None:
    runs = tmp_path / "runs"
    python = fake_python(tmp_path / "python", "3.99.1", runs)
    assert find_interpreter(str(python)).version == "3.99.1 (fake)"
    assert find_interpreter(str(python)).version == "3.99.1 (fake)"
    assert len(runs.read_text().splitlines()) == 1
    text = python.read_text()
    python.write_text(text.replace("3.99.1", "3.99.2"))  # an upgrade in place, same size
    os.utime(python, ns=(0, python.stat().st_mtime_ns + 1_000_000_000))
    assert find_interpreter(str(python)).version == "3.99.2 (fake)"
    assert len(runs.read_text().splitlines()) == 2


def test_interpreter_by_version_follows_a_changed_path(
    tmp_path: Path, settle_now: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    for folder, version in (("a", "3.99.1"), ("b", "3.99.2")):
        (tmp_path / folder).mkdir()
        fake_python(tmp_path / folder / "python3.99", version, runs)
    monkeypatch.setenv("PATH", f"{tmp_path / 'a'}:{os.environ['PATH']}")
    assert find_interpreter("3.99").short_version == "3.99.1"
    monkeypatch.setenv("PATH", f"{tmp_path / 'b'}:{os.environ['PATH']}")
    assert find_interpreter("3.99").short_version == "3.99.2"


def test_a_removed_interpreter_is_not_served_from_the_memo(
    tmp_path: Path, settle_now: None
) -> None:
    python = fake_python(tmp_path / "python", "3.99.1", tmp_path / "runs")
    assert find_interpreter(str(python)).short_version == "3.99.1"
    python.unlink()
    with pytest.raises(EnvBuildError, match="does not run"):
        find_interpreter(str(python))
