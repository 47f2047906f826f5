"""capture() of a clone whose HEAD is ahead of its remote (a real bare repository): the diff
starts at the last pushed commit and rebuilds the working copy, renames and binaries included."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_source_git import BINARY, commit_all, git, tree

from celery_agent.errors import SourceError
from celery_agent.source import SourceCache, capture

pytestmark = pytest.mark.integration


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of a bare remote, its one commit pushed."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(bare), str(work))
    (work / "train.py").write_text("print('pushed')\n")
    (work / "weights.bin").write_bytes(BINARY)
    (work / "old_name.py").write_text("".join(f"value_{i} = {i}\n" for i in range(40)))
    commit_all(work, "pushed")
    git(work, "push", "--quiet", "origin", "main")
    return work


def _ahead_by_two(work: Path) -> None:
    """Two commits the remote lacks (a rename, a changed and a new binary), then edits on top."""
    git(work, "mv", "old_name.py", "new_name.py")
    (work / "weights.bin").write_bytes(BINARY[::-1])
    commit_all(work, "rename, new weights")
    (work / "extra.bin").write_bytes(bytes(range(7, 250)) * 3)
    (work / "train.py").write_text("print('committed, not pushed')\n")
    commit_all(work, "more")
    (work / "train.py").write_text("print('on disk')\n")
    (work / "scratch.txt").write_text("untracked\n")


def test_unpushed_commits_travel_as_a_diff_on_the_last_pushed_commit(clone, tmp_path):
    pushed = git(clone, "rev-parse", "HEAD")
    _ahead_by_two(clone)
    captured = capture(clone)
    assert captured.commit == pushed and captured.head == git(clone, "rev-parse", "HEAD")
    assert (captured.unpushed, captured.remote) == (2, "origin")
    assert "2 unpushed commits" in captured.describe_unpushed()
    assert "GIT binary patch" in captured.diff
    done = SourceCache(tmp_path / "cache").checkout(
        captured.repo, tmp_path / "run", commit=captured.commit, diff=captured.diff
    )
    assert tree(done.path) == tree(clone)
    assert "old_name.py" not in tree(done.path)


def test_no_diff_sends_the_unpushed_commits_without_the_edits(clone, tmp_path):
    _ahead_by_two(clone)
    captured = capture(clone, changes=False)
    done = SourceCache(tmp_path / "cache").checkout(
        captured.repo, tmp_path / "run", commit=captured.commit, diff=captured.diff
    )
    assert (done.path / "train.py").read_text() == "print('committed, not pushed')\n"
    assert not (done.path / "scratch.txt").exists()
    assert (done.path / "new_name.py").exists() and not (done.path / "old_name.py").exists()


def test_require_pushed_refuses_an_unpushed_head_and_says_how_to_push(clone):
    _ahead_by_two(clone)
    with pytest.raises(SourceError, match="not on any branch of origin") as err:
        capture(clone, require_pushed=True)
    assert "git push origin main" in str(err.value)
    git(clone, "push", "--quiet", "origin", "main")
    assert capture(clone, require_pushed=True).unpushed == 0


def test_a_pushed_head_on_another_remote_branch_is_sent_as_is(clone):
    git(clone, "checkout", "--quiet", "-b", "feature")
    (clone / "f.py").write_text("x = 1\n")
    head = commit_all(clone, "feature")
    git(clone, "push", "--quiet", "origin", "feature")
    git(clone, "checkout", "--quiet", "--detach")
    captured = capture(clone)
    assert (captured.commit, captured.unpushed, captured.diff) == (head, 0, "")


def test_history_the_remote_does_not_share_is_an_error(clone, tmp_path):
    git(clone, "checkout", "--quiet", "--orphan", "fresh")
    commit_all(clone, "unrelated")
    with pytest.raises(SourceError, match="none of HEAD's commits is on origin"):
        capture(clone)


def test_a_named_unpushed_revision_travels_the_same_way(clone, tmp_path):
    _ahead_by_two(clone)
    captured = capture(clone, revision="HEAD~1")  # the first unpushed commit, no edits
    assert captured.unpushed == 1 and captured.head == git(clone, "rev-parse", "HEAD~1")
    done = SourceCache(tmp_path / "cache").checkout(
        captured.repo, tmp_path / "run", commit=captured.commit, diff=captured.diff
    )
    assert (done.path / "train.py").read_text() == "print('pushed')\n"
    assert (done.path / "weights.bin").read_bytes() == BINARY[::-1]
    assert "extra.bin" not in tree(done.path) and "new_name.py" in tree(done.path)
    unknown = capture(clone, revision="f" * 40)  # not here: perhaps on the remote
    assert (unknown.commit, unknown.diff, unknown.unpushed) == ("f" * 40, "", 0)
