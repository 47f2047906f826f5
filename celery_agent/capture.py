"""Capturing a working copy as repository + commit + uncommitted changes.

:func:`capture` records what a checkout needs to rebuild a working copy exactly on another
machine: the remote, HEAD, the branch and every change git sees, untracked files included.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError
from .gitcmd import Git, git_env, redact

_DIFF_OPTIONS = (
    "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "diff", "--cached", "--binary",
    "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--src-prefix=a/",
    "--dst-prefix=b/", "HEAD",
)  # fmt: skip


@dataclass(frozen=True)
class CapturedSource:
    """A working copy recorded as repository + commit + uncommitted changes."""

    repo: str  #: upstream remote's URL (credentials redacted), else origin's, else the repo's path
    commit: str  #: HEAD sha
    branch: str | None  #: the current branch, None when HEAD is detached
    diff: str  #: changes against HEAD, untracked files as new files; binary-safe; "" when clean
    root: Path  #: the repository's top-level directory


def capture(path: Path) -> CapturedSource:
    """Record the working copy at ``path``: remote, HEAD, branch and every uncommitted change.

    The diff holds staged and unstaged changes to tracked files and the untracked files that are
    not ignored, as new files, binary-safe, so ``checkout(repo, commit=..., diff=...)`` rebuilds
    the working copy (ignored files aside).
    """
    path = Path(path).absolute()
    if not path.exists():
        raise SourceError(f"{path} does not exist", "run this inside a git working copy")
    git = Git(git_env(os.environ))
    cwd = path if path.is_dir() else path.parent
    top = git.run(["rev-parse", "--show-toplevel"], cwd)
    if top.returncode or not top.text:
        raise SourceError(
            f"{path} is not inside a git working copy", "run `git init`, or cd into one"
        )
    root = Path(top.text)
    head = git.run(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
    if head.returncode:
        raise SourceError(f"the repository at {root} has no commits", "commit your code once")
    branch_ref = git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], root)
    branch = branch_ref.text if branch_ref.returncode == 0 else None
    repo = redact(_remote_url(git, root, branch))  # a token in a remote URL stays on this machine
    return CapturedSource(repo, head.text, branch, _working_diff(git, root), root)


def _remote_url(git: Git, root: Path, branch: str | None) -> str:
    """The URL of the branch's upstream remote, else origin's, else the repository's path."""
    names = ["origin"]
    upstream = git.run(["config", "--get", f"branch.{branch}.remote"], root) if branch else None
    if upstream and upstream.returncode == 0 and upstream.text not in ("", "."):
        names.insert(0, upstream.text)
    for name in names:
        url = git.run(["remote", "get-url", "--end-of-options", name], root)
        if url.returncode == 0 and url.text:
            return _absolute_remote(url.text, root)
    return str(root)


def _absolute_remote(url: str, root: Path) -> str:
    if "://" in url or re.match(r"^[^/]+:", url) or os.path.isabs(url):
        return url
    return os.path.normpath(root / os.path.expanduser(url))


def _working_diff(git: Git, root: Path) -> str:
    """``git diff HEAD`` of the whole working copy, untracked files included, via a scratch index."""
    index = root / git.ok(["rev-parse", "--git-path", "index"], root).text
    with tempfile.TemporaryDirectory(prefix="celery-agent-capture-") as tmp:
        scratch = str(Path(tmp) / "index")
        if index.exists():
            shutil.copyfile(index, scratch)
        git.ok(["add", "--all"], root, {"GIT_INDEX_FILE": scratch})
        out = git.ok(_DIFF_OPTIONS, root, {"GIT_INDEX_FILE": scratch}).stdout
    return out.decode("utf-8", "surrogateescape")


def missing_entry(root: Path, entry: str, commit: str, diff: str) -> SourceError | None:
    """Why the script ``entry`` (a path from the repository root) would not be in a run made of
    ``commit`` + ``diff``; None when it would be (or when it is a module, '-m name')."""
    if entry.startswith("-m"):
        return None
    git = Git(git_env(os.environ))
    in_commit = git.run(["cat-file", "-e", f"{commit}:{entry}"], root).returncode == 0
    deleted = f"--- a/{entry}\n+++ /dev/null\n" in diff
    added = f"\n+++ b/{entry}\n" in f"\n{diff}"
    if (in_commit and not deleted) or added:
        return None
    where = f"{commit[:12]}" + (" plus your uncommitted changes" if diff else "")
    hint = "check the path (relative to the current directory), or commit the file"
    if (root / entry).is_file():
        ignored = git.run(["check-ignore", "-q", "--", entry], root).returncode == 0
        hint = "it is ignored by git, so it does not travel: un-ignore it" if ignored else hint
        if not diff and not ignored:
            hint = "it is not committed: commit it, or drop --no-diff/--commit to send your changes"
    return SourceError(f"entry {entry!r} is not in {where}", hint)
