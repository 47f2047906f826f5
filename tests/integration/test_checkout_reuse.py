"""Reused worktrees (checkouts.py through SourceCache) on real git repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from celery_agent import checkouts
from celery_agent.checkouts import TreePool, diff_digest, snapshot
from celery_agent.source import SourceCache

DIFF = """diff --git a/train.py b/train.py
--- a/train.py
+++ b/train.py
@@ -1 +1 @@
-print("one")
+print("two")
"""


def head(repo: Path) -> str:
    done = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def repo(make_repo) -> Path:
    return make_repo({"train.py": 'print("one")\n', "pkg/mod.py": "X = 1\n", "data/a.txt": "a\n"})


def no_git(tmp_path: Path) -> dict[str, str]:
    """An environment in which git cannot be found: a checkout that needs git fails."""
    (tmp_path / "empty-bin").mkdir(exist_ok=True)
    return {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path)}


def worktrees(checkout) -> list[str]:
    """The worktrees the checkout's clone knows (the bare clone itself aside)."""
    done = subprocess.run(["git", "-C", checkout.cache_dir, "worktree", "list", "--porcelain"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lines = done.stdout.splitlines()
    return [ln.removeprefix("worktree ") for ln in lines if ln.startswith("worktree ")][1:]


def trees(checkout) -> list[str]:
    """The worktrees in the pool's folder (its lock files and manifests aside)."""
    return sorted(p.name for p in checkout.path.parent.iterdir() if not p.suffix)


def test_a_second_run_of_the_same_commit_and_diff_reuses_the_worktree_without_git(repo, tmp_path):
    sha, root = head(repo), tmp_path / "cache"
    first = SourceCache(root).checkout(str(repo), commit=sha, diff=DIFF)
    assert not first.reused and (first.path / "train.py").read_text() == 'print("two")\n'
    SourceCache(root).remove(first)
    assert first.path.is_dir(), "kept for the next run"
    again = SourceCache(root, env=no_git(tmp_path)).checkout(str(repo), commit=sha, diff=DIFF)
    assert again.reused and again.path == first.path and again.commit == sha
    assert (again.path / "train.py").read_text() == 'print("two")\n'


def test_files_a_run_added_are_deleted_and_compiled_files_kept(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    co = cache.checkout(str(repo), commit=sha)
    (co.path / "out").mkdir()
    (co.path / "out" / "model.bin").write_bytes(b"x" * 100)
    (co.path / "data" / "new.txt").write_text("new")
    subprocess.run(["python3", "-c", "import pkg.mod"], cwd=co.path, check=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})  # fmt: skip
    assert list((co.path / "pkg" / "__pycache__").glob("mod.*.pyc"))
    (co.path / "pkg" / "__pycache__" / "x.cpython-311.pyc").symlink_to(co.path / "train.py")
    cache.remove(co)
    assert (co.path / "out").exists(), "given back as the run left it: checked at the next lease"
    again = cache.checkout(str(repo), commit=sha)
    assert again.reused
    assert not (again.path / "out").exists() and not (again.path / "data" / "new.txt").exists()
    assert list((again.path / "pkg" / "__pycache__").glob("mod.*.pyc")), "compiled files stay"
    assert not (again.path / "pkg" / "__pycache__" / "x.cpython-311.pyc").is_symlink()


@pytest.mark.parametrize(
    "change",
    [
        lambda p: (p / "train.py").write_text('print("changed")\n'),
        lambda p: (p / "train.py").write_text('print("three")\n'),  # same size, new content
        lambda p: (p / "pkg" / "mod.py").unlink(),
        lambda p: (p / "data" / "a.txt").chmod(0o600),
        lambda p: os.replace(p / "data" / "a.txt", p / "data" / "b.txt"),
        lambda p: (p / "pkg" / "mod.py").touch(),
    ],
    ids=["write", "same-size", "delete", "chmod", "rename", "touch"],
)
def test_a_worktree_whose_files_changed_is_never_lent_again(repo, tmp_path, change):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    co = cache.checkout(str(repo), commit=sha, diff=DIFF)
    change(co.path)
    cache.remove(co)
    assert co.path.is_dir(), "given back unchecked: its next lease checks it"
    again = cache.checkout(str(repo), commit=sha, diff=DIFF)
    assert not again.reused, "retired at the lease, then checked out afresh"
    assert (again.path / "train.py").read_text() == 'print("two")\n'
    assert (again.path / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert (again.path / "data" / "a.txt").stat().st_mode & 0o777 != 0o600
    assert not (again.path / "data" / "b.txt").exists()
    assert trees(again) == [again.path.name] and worktrees(again) == [str(again.path)]


def test_a_changed_worktree_is_removed_from_disk_at_its_next_lease(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    co = cache.checkout(str(repo), commit=sha)
    (co.path / "train.py").write_text('print("changed")\n')
    cache.remove(co)
    removed: list[Path] = []
    assert TreePool(co.path.parent, keep=8).lease(sha, diff_digest(""), removed.append) is None
    assert removed == [co.path] and not co.path.exists()
    assert list(co.path.parent.iterdir()) == [], "manifest and lock file gone too"


def test_a_branch_checkout_retires_a_changed_worktree_under_the_clone_lock(repo, tmp_path):
    cache = SourceCache(tmp_path / "cache")
    co = cache.checkout(str(repo), branch="main")
    (co.path / "train.py").write_text('print("changed")\n')
    cache.remove(co)
    again = cache.checkout(str(repo), branch="main")
    assert not again.reused and (again.path / "train.py").read_text() == 'print("one")\n'
    assert worktrees(again) == [str(again.path)]


def test_a_reused_run_walks_its_worktree_once_when_it_is_lent(repo, tmp_path, monkeypatch):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    cache.remove(cache.checkout(str(repo), commit=sha))
    walks: list[Path] = []
    monkeypatch.setattr(checkouts, "snapshot", lambda root: walks.append(root) or snapshot(root))
    for run in range(1, 4):
        co = cache.checkout(str(repo), commit=sha)
        assert co.reused and len(walks) == run, "one walk, at lease"
        assert not (co.path / "out.txt").exists(), "the last run's file deleted at the lease"
        (co.path / "out.txt").write_text(f"result {run}")
        cache.remove(co)
        assert len(walks) == run, "no walk at release"
        assert (co.path / "out.txt").exists()


def test_a_changed_worktree_never_lent_again_is_evicted_like_a_ready_one(make_repo, tmp_path):
    repo = make_repo({"a.py": "1\n"})
    first = head(repo)
    (repo / "a.py").write_text("2\n")
    subprocess.run(["git", "-C", repo, "commit", "-qam", "2"], check=True)
    cache = SourceCache(tmp_path / "cache", keep=1)
    co = cache.checkout(str(repo), commit=first)
    (co.path / "a.py").write_text("changed\n")
    cache.remove(co)
    other = cache.checkout(str(repo), commit=head(repo))
    assert not co.path.exists() and trees(other) == [other.path.name]
    assert worktrees(other) == [str(other.path)]


def test_giving_a_worktree_back_twice_is_harmless(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    co = cache.checkout(str(repo), commit=sha)
    cache.remove(co)
    cache.remove(co)
    assert cache.checkout(str(repo), commit=sha).reused


def test_a_late_write_after_release_is_caught_before_the_next_lease(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    co = cache.checkout(str(repo), commit=sha)
    cache.remove(co)
    (co.path / "train.py").write_text("import os; os.system('evil')\n")  # a leftover process
    again = cache.checkout(str(repo), commit=sha)
    assert not again.reused, "retired, and checked out afresh"
    assert (again.path / "train.py").read_text() == 'print("one")\n'


def test_a_moved_head_retires_the_worktree(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    co = cache.checkout(str(repo), commit=sha)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=co.path, env=env,
                   check=True)  # fmt: skip
    cache.remove(co)
    again = cache.checkout(str(repo), commit=sha)
    assert not again.reused and head(again.path) == sha


def test_runs_at_the_same_time_get_worktrees_of_their_own(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    first = cache.checkout(str(repo), commit=sha)
    second = cache.checkout(str(repo), commit=sha)
    assert first.path != second.path
    cache.remove(first)
    cache.remove(second)
    third, fourth = cache.checkout(str(repo), commit=sha), cache.checkout(str(repo), commit=sha)
    assert {third.path, fourth.path} == {first.path, second.path}
    assert third.reused and fourth.reused


def test_at_most_keep_worktrees_stay_least_recently_used_go_first(make_repo, tmp_path):
    repo = make_repo({"a.py": "1\n"})
    shas = []
    for i in range(3):
        (repo / "a.py").write_text(f"{i + 2}\n")
        subprocess.run(["git", "-C", repo, "commit", "-qam", str(i)], check=True)
        shas.append(head(repo))
    cache = SourceCache(tmp_path / "cache", keep=2)
    paths = []
    for sha in shas:
        co = cache.checkout(str(repo), commit=sha)
        paths.append(co.path)
        cache.remove(co)
    assert [p.exists() for p in paths] == [False, True, True]
    worktrees = subprocess.run(["git", "-C", next(paths[1].parent.parent.glob("*-repo")),
                                "worktree", "list"], capture_output=True, text=True).stdout  # fmt: skip
    assert str(paths[0]) not in worktrees and str(paths[2]) in worktrees


def test_a_branch_is_resolved_then_its_worktree_reused(repo, tmp_path):
    cache = SourceCache(tmp_path / "cache")
    co = cache.checkout(str(repo), branch="main")
    cache.remove(co)
    again = cache.checkout(str(repo), branch="main")
    assert again.reused and again.commit == head(repo)


def test_a_failed_diff_leaves_no_worktree_behind(repo, tmp_path):
    cache, sha = SourceCache(tmp_path / "cache"), head(repo)
    bad = DIFF.replace('-print("one")', '-print("not there")')
    with pytest.raises(Exception, match="does not apply"):
        cache.checkout(str(repo), commit=sha, diff=bad)
    trees = next((tmp_path / "cache").glob("*.trees"))
    assert [p.name for p in trees.iterdir()] == []


def test_keep_zero_or_a_destination_gives_a_plain_worktree(repo, tmp_path):
    sha = head(repo)
    cache = SourceCache(tmp_path / "cache", keep=0)
    co = cache.checkout(str(repo), commit=sha)
    cache.remove(co)
    assert not co.path.exists()
    dest = tmp_path / "run" / "src"
    co = SourceCache(tmp_path / "cache").checkout(str(repo), dest, commit=sha)
    assert co.path == dest and co.lease is None
    SourceCache(tmp_path / "cache").remove(co)
    assert not dest.exists()


def test_snapshot_sees_links_and_the_git_file(tmp_path):
    (tmp_path / ".git").write_text("gitdir: /x\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    (tmp_path / "link").symlink_to("d/f")
    assert sorted(snapshot(tmp_path)) == [".git", "d", "d/f", "link"]
