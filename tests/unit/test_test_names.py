"""The test files' names: tests/ folders are not packages, so pytest imports every test module by
its file name alone, and two files with one name in tests/unit and tests/integration stop the
whole collection ("import file mismatch"). This fails first, naming the pair."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_name() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each pair (e.g. a _rules suffix in unit/): {clashes}"
