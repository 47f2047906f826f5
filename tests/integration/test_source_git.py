"""SourceCache and capture against real git repositories made in tmp_path."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from celery_agent.errors import DiffConflictError, SourceError
from celery_agent.source import Checkout, SourceCache, capture

pytestmark = pytest.mark.integration

BINARY = bytes(range(256)) * 4
IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str, strip: bool = True) -> str:
    """Run git in cwd as a test author; return its stdout (stripped unless told not to)."""
    env = {**os.environ, **IDENTITY}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip() if strip else done.stdout


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (outside .git) by relative path."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".git" not in path.relative_to(root).parts:
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "train.py").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    (repo / "weights.bin").write_bytes(BINARY)
    (repo / "old.txt").write_text("to be deleted\n")
    (repo / ".gitignore").write_text("*.log\n")
    commit_all(repo, "first")
    return repo


@pytest.fixture
def cache(tmp_path: Path) -> SourceCache:
    return SourceCache(tmp_path / "cache")


def fetches(caplog: pytest.LogCaptureFixture) -> int:
    return sum(" fetch " in r.getMessage() for r in caplog.records)


def test_checkout_from_local_path_gives_the_default_branch_tree(cache, origin, tmp_path):
    done = cache.checkout(str(origin), tmp_path / "run1")
    assert done.commit == git(origin, "rev-parse", "HEAD")
    assert tree(done.path) == tree(origin)
    assert done.repo_url == str(origin) and not done.diff_applied
    assert git(done.path, "rev-parse", "HEAD") == done.commit
    assert done.cache_dir.parent == tmp_path / "cache"


def test_relative_path_is_resolved_against_cwd(cache, origin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = cache.checkout("origin", tmp_path / "run1")
    assert done.repo_url == str(origin)


def test_present_commit_is_checked_out_without_fetching(cache, origin, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="celery_agent.gitcmd")
    sha = cache.checkout(str(origin), tmp_path / "run1").commit
    assert fetches(caplog) == 1
    origin.rename(tmp_path / "moved")  # the origin is unreachable from now on
    (tmp_path / "origin").mkdir()
    second = cache.checkout(str(origin), tmp_path / "run2", commit=sha[:8])
    assert second.commit == sha and (second.path / "train.py").exists()
    assert fetches(caplog) == 1


def test_new_commit_in_origin_is_fetched(cache, origin, tmp_path):
    cache.checkout(str(origin), tmp_path / "run1")
    (origin / "train.py").write_text("changed\n")
    sha = commit_all(origin, "second")
    done = cache.checkout(str(origin), tmp_path / "run2", commit=sha)
    assert done.commit == sha
    assert (done.path / "train.py").read_text() == "changed\n"


def test_branch_checkout_gives_the_branch_tip_and_follows_it(cache, origin, tmp_path):
    git(origin, "checkout", "--quiet", "-b", "exp")
    (origin / "exp.py").write_text("print('exp')\n")
    first = commit_all(origin, "exp")
    git(origin, "checkout", "--quiet", "main")
    assert cache.checkout(str(origin), tmp_path / "run1", branch="exp").commit == first
    git(origin, "checkout", "--quiet", "exp")
    (origin / "exp.py").write_text("print('moved')\n")
    moved = commit_all(origin, "exp 2")
    done = cache.checkout(str(origin), tmp_path / "run2", branch="exp")
    assert done.commit == moved and (done.path / "exp.py").read_text() == "print('moved')\n"


def test_diff_with_modified_new_deleted_and_binary_files_applies(cache, origin, tmp_path):
    (origin / "train.py").write_text("lr = 0.1\n")
    (origin / "new.py").write_text("print('new')\n")
    (origin / "new.bin").write_bytes(BINARY[::-1])
    (origin / "weights.bin").write_bytes(BINARY[:100])
    (origin / "old.txt").unlink()
    git(origin, "add", "--all")
    diff = git(origin, "diff", "--cached", "--binary", "HEAD", strip=False)
    done = cache.checkout(str(origin), tmp_path / "run1", commit="HEAD~0", diff=diff)
    assert done.diff_applied
    assert tree(done.path) == tree(origin)


def test_diff_that_needs_a_three_way_merge_applies(cache, origin, tmp_path):
    base = git(origin, "rev-parse", "HEAD")
    (origin / "train.py").write_text((origin / "train.py").read_text().replace("line 3\n", "lr\n"))
    diff = git(origin, "diff", "--binary", strip=False)
    git(origin, "checkout", "--", "train.py")
    (origin / "train.py").write_text((origin / "train.py").read_text().replace("line 6", "six"))
    target = commit_all(origin, "context moved")
    cache.checkout(str(origin), tmp_path / "run0", commit=base)  # the base blob is in the cache
    done = cache.checkout(str(origin), tmp_path / "run1", commit=target, diff=diff)
    text = (done.path / "train.py").read_text()
    assert "lr\n" in text and "six\n" in text


def test_conflicting_diff_names_the_file_and_leaves_no_worktree(cache, origin, tmp_path):
    (origin / "train.py").write_text("line 1\nline 2\nmine\n")
    diff = git(origin, "diff", "--binary", strip=False)
    git(origin, "checkout", "--", "train.py")
    (origin / "train.py").write_text("line 1\nline 2\ntheirs\n")
    target = commit_all(origin, "conflict")
    dest = tmp_path / "run1"
    with pytest.raises(DiffConflictError) as info:
        cache.checkout(str(origin), dest, commit=target, diff=diff)
    assert f"diff does not apply to {target[:12]}" in info.value.message
    assert "train.py" in info.value.message and info.value.hint
    assert not dest.exists()
    worktrees = git(next((tmp_path / "cache").glob("*-origin")), "worktree", "list")
    assert str(dest) not in worktrees


def test_unknown_commit_raises_naming_commit_and_repo(cache, origin, tmp_path):
    with pytest.raises(SourceError) as info:
        cache.checkout(str(origin), tmp_path / "run1", commit="0123456789abcdef" * 2 + "01234567")
    assert "commit 0123456789abcdef" in info.value.message and str(origin) in info.value.message
    assert info.value.hint == "push it, or check the sha"
    assert not (tmp_path / "run1").exists()


def test_unknown_branch_raises_naming_branch(cache, origin, tmp_path):
    with pytest.raises(SourceError, match="branch nope not found in"):
        cache.checkout(str(origin), tmp_path / "run1", branch="nope")


def test_missing_repository_raises_naming_it(cache, tmp_path):
    with pytest.raises(SourceError) as info:
        cache.checkout(str(tmp_path / "absent"), tmp_path / "run1")
    assert str(tmp_path / "absent") in info.value.message and info.value.hint


def test_directory_that_is_not_a_repository_raises_and_leaves_no_cache(cache, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="cannot fetch repository .*plain") as info:
        cache.checkout(str(tmp_path / "plain"), tmp_path / "run1")
    assert info.value.hint
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_credentials_never_reach_logs_or_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:  # a port nothing listens on: the fetch fails at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CELERY_AGENT_GIT_TOKEN": "tok-SECRET-1"}
    url = f"https://user:pw-SECRET-2@127.0.0.1:{port}/org/repo.git"
    with pytest.raises(SourceError) as info:
        SourceCache(tmp_path / "cache", env=env).checkout(url, tmp_path / "run1", timeout=20)
    text = caplog.text + str(info.value) + repr(info.value.args)
    assert "SECRET" not in text
    assert f"https://127.0.0.1:{port}/org/repo.git" in str(info.value)


def test_remove_is_idempotent(cache, origin, tmp_path):
    done = cache.checkout(str(origin), tmp_path / "run1")
    cache.remove(done)
    cache.remove(done)
    assert not done.path.exists()
    assert str(done.path) not in git(done.cache_dir, "worktree", "list")
    gone = Checkout(tmp_path / "never", done.commit, done.repo_url, False, tmp_path / "nocache")
    cache.remove(gone)
    again = cache.checkout(str(origin), tmp_path / "run1")  # the same path can be used again
    assert again.commit == done.commit


def test_concurrent_checkouts_of_one_repo_both_succeed(cache, origin, tmp_path):
    results: dict[int, Checkout | BaseException] = {}

    def work(i: int) -> None:
        try:
            results[i] = cache.checkout(str(origin), tmp_path / f"run{i}")
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Checkout) for r in results.values()), results
    assert len({r.commit for r in results.values()}) == 1  # type: ignore[union-attr]


def test_capture_round_trip_rebuilds_the_working_copy(cache, origin, tmp_path):
    (origin / "train.py").write_text("lr = 0.5\n")
    (origin / "staged.py").write_text("x = 1\n")
    git(origin, "add", "staged.py")
    (origin / "untracked.py").write_text("y = 2\n")
    (origin / "blob.bin").write_bytes(BINARY)
    (origin / "old.txt").unlink()
    (origin / "run.log").write_text("ignored\n")
    captured = capture(origin / "train.py")
    assert captured.repo == str(origin) and captured.root == origin
    assert captured.branch == "main" and "run.log" not in captured.diff
    done = cache.checkout(
        captured.repo, tmp_path / "run1", commit=captured.commit, diff=captured.diff
    )
    expected = {k: v for k, v in tree(origin).items() if k != "run.log"}
    assert tree(done.path) == expected
    assert git(origin, "diff", "--cached", "--name-only") == "staged.py"  # the index is untouched


def test_capture_of_a_clean_clone_names_its_upstream_remote(origin, tmp_path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(origin), str(clone))
    git(clone, "remote", "rename", "origin", "upstream")
    captured = capture(clone)
    assert captured.repo == str(origin) and captured.diff == ""
    git(clone, "checkout", "--quiet", "--detach")
    assert capture(clone).branch is None


def test_capture_outside_a_repository_raises(tmp_path):
    with pytest.raises(SourceError, match="not inside a git working copy"):
        capture(tmp_path)


def test_checkout_into_a_non_empty_directory_raises(cache, origin, tmp_path):
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine\n")
    with pytest.raises(SourceError, match="exists and is not empty"):
        cache.checkout(str(origin), dest)
    assert (dest / "keep.txt").read_text() == "mine\n"


def test_missing_cache_after_removal_is_rebuilt(cache, origin, tmp_path):
    done = cache.checkout(str(origin), tmp_path / "run1")
    cache.remove(done)
    shutil.rmtree(done.cache_dir)
    assert cache.checkout(str(origin), tmp_path / "run2", commit=done.commit).commit == done.commit


def test_stripped_binary_diff_still_applies_every_file(cache, origin, tmp_path):
    (origin / "weights.bin").write_bytes(BINARY[:100])
    (origin / "train.py").write_text("lr = 0.2\n")
    diff = git(origin, "diff", "--binary", strip=False).strip()
    done = cache.checkout(str(origin), tmp_path / "run1", diff=diff)
    assert (done.path / "weights.bin").read_bytes() == BINARY[:100]
    assert (done.path / "train.py").read_text() == "lr = 0.2\n"


def test_capture_keeps_credentials_of_a_remote_url_out_of_the_record(origin):
    git(origin, "remote", "add", "origin", "https://bot:s3cret@example.com/org/repo.git")
    assert capture(origin).repo == "https://example.com/org/repo.git"
