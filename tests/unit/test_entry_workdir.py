"""The entry is a path from the repository root; the workdir is where the run starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_agent.errors import SourceError
from celery_agent.source import Checkout
from celery_agent.spec import TaskSpec
from celery_agent.stages import entry_head


def checkout(tmp_path: Path) -> Checkout:
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "simple.py").write_text("print(1)\n")
    return Checkout(tmp_path, "a" * 40, "repo", False, tmp_path / "cache")


def test_the_entry_is_found_from_the_repository_root(tmp_path: Path) -> None:
    spec = TaskSpec(repo="r", entry="sklearn/simple.py", workdir="sklearn")
    assert entry_head(spec, checkout(tmp_path)) == [str(tmp_path / "sklearn" / "simple.py")]


def test_an_entry_given_from_the_workdir_is_refused_naming_the_right_path(tmp_path: Path):
    spec = TaskSpec(repo="r", entry="simple.py", workdir="sklearn")
    with pytest.raises(SourceError, match="not from the workdir: give 'sklearn/simple.py'"):
        entry_head(spec, checkout(tmp_path))


def test_a_missing_entry_without_a_workdir_says_to_check_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="relative to the repository root"):
        entry_head(TaskSpec(repo="r", entry="simple.py"), checkout(tmp_path))
