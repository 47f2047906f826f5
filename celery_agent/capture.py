"""Capturing a working copy as repository + commit + uncommitted changes.

:func:`capture` records what a checkout needs to rebuild a working copy exactly on another
machine: the remote, a commit the remote has, the branch and every change git sees on top of that
commit, untracked files included. When HEAD is on no branch of the remote (commits not pushed yet),
the commit is the last one the remote has and the diff carries the unpushed commits too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError, SpecError
from .gitcmd import Git, git_env, redact

_DIFF_OPTIONS = (
    "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "diff", "--cached", "--binary",
    "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--src-prefix=a/",
    "--dst-prefix=b/",
)  # fmt: skip


@dataclass(frozen=True)
class CapturedSource:
    """A working copy recorded as repository + commit + uncommitted changes."""

    repo: str  #: upstream remote's URL (credentials redacted), else origin's, else the repo's path
    commit: str  #: HEAD sha, or the last pushed commit when HEAD is not on the remote
    branch: str | None  #: the current branch, None when HEAD is detached
    diff: str  #: changes since ``commit``, untracked files as new files; binary-safe; "" if none
    root: Path  #: the repository's top-level directory
    head: str = ""  #: HEAD sha (equal to ``commit`` unless HEAD is not pushed)
    unpushed: int = 0  #: commits after ``commit`` up to HEAD that the remote lacks (in the diff)
    remote: str = ""  #: the remote's name, "" when the repository is used by its path

    def describe_unpushed(self) -> str:
        """One line saying what was sent instead of an unpushed HEAD ("" when HEAD is pushed)."""
        if not self.unpushed:
            return ""
        commits = f"{self.unpushed} unpushed commit{'s' if self.unpushed > 1 else ''}"
        return (
            f"commit {self.head[:12]} is not on {self.remote}: sending {commits} as a diff on top of "
            f"{self.commit[:12]}, the last commit {self.remote} has (--require-pushed refuses this)"
        )


def capture(
    path: Path, *, changes: bool = True, require_pushed: bool = False, revision: str | None = None
) -> CapturedSource:
    """Record the working copy at ``path``: remote, a pushed commit, branch and every change.

    The diff holds staged and unstaged changes to tracked files and the untracked files that are
    not ignored, as new files, binary-safe, so ``checkout(repo, commit=..., diff=...)`` rebuilds
    the working copy (ignored files aside). When HEAD is on no branch of the remote, ``commit`` is
    the last commit the remote has and the diff starts there, so the worker can check it out;
    ``require_pushed`` makes that a :class:`SourceError` instead. With ``changes=False`` the diff
    holds the unpushed commits only, not the uncommitted changes. A ``revision`` is captured in
    place of HEAD, without the uncommitted changes; one unknown here is sent as it is (the remote
    may have it).
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
    head = git.run(["rev-parse", "--verify", "--quiet", f"{revision or 'HEAD'}^{{commit}}"], root)
    if head.returncode and revision is None:
        raise SourceError(f"the repository at {root} has no commits", "commit your code once")
    branch_ref = git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], root)
    branch = branch_ref.text if branch_ref.returncode == 0 else None
    remote, url = _remote(git, root, branch)
    repo = redact(url)  # a token in a remote URL stays on this machine
    if head.returncode:  # a revision unknown here: the remote may have it
        return CapturedSource(repo, str(revision), branch, "", root, str(revision), 0, remote)
    base, unpushed = _pushed_base(git, root, remote, head.text) if remote else (head.text, 0)
    if unpushed and require_pushed:
        raise SourceError(
            f"{revision or 'HEAD'} ({head.text[:12]}) is not on any branch of {remote} "
            f"({unpushed} unpushed commits)",
            f"push it (git push {remote} {branch or 'HEAD:<branch>'}), or submit without "
            "--require-pushed to send the unpushed commits as a diff",
        )
    if changes and revision is None:
        diff = _working_diff(git, root, base)
    else:
        diff = _commits_diff(git, root, base, head.text) if unpushed else ""
    return CapturedSource(repo, base, branch, diff, root, head.text, unpushed, remote)


def _remote(git: Git, root: Path, branch: str | None) -> tuple[str, str]:
    """(name, URL) of the branch's upstream remote, else origin; ("", the repository's path)."""
    names = ["origin"]
    upstream = git.run(["config", "--get", f"branch.{branch}.remote"], root) if branch else None
    if upstream and upstream.returncode == 0 and upstream.text not in ("", "."):
        names.insert(0, upstream.text)
    for name in names:
        url = git.run(["remote", "get-url", "--end-of-options", name], root)
        if url.returncode == 0 and url.text:
            return name, _absolute_remote(url.text, root)
    return "", str(root)


def _pushed_base(git: Git, root: Path, remote: str, head: str) -> tuple[str, int]:
    """(the newest commit of HEAD's history on ``remote``'s branches, commits after it).

    What the remote has is what its remote-tracking branches say (as of the last fetch or push);
    a remote without any is taken to have HEAD (nothing here says otherwise).
    """
    refs = git.ok(["for-each-ref", "--format=%(objectname)", f"refs/remotes/{remote}/"], root)
    tips = sorted(set(refs.text.split()))
    count = git.ok(["rev-list", "--count", head, "--not", *tips], root).text if tips else "0"
    if int(count or 0) == 0:
        return head, 0
    base = git.run(["merge-base", head, *tips], root)
    if base.returncode or not base.text:
        raise SourceError(
            f"none of HEAD's commits is on {remote}: the worker could not check out any of them",
            f"push the branch first (git push -u {remote} HEAD), then submit again",
        )
    return base.text.split()[0], int(count)


def _absolute_remote(url: str, root: Path) -> str:
    if "://" in url or re.match(r"^[^/]+:", url) or os.path.isabs(url):
        return url
    return os.path.normpath(root / os.path.expanduser(url))


def _working_diff(git: Git, root: Path, base: str) -> str:
    """``git diff base`` of the whole working copy, untracked files included, via a scratch index."""
    index = root / git.ok(["rev-parse", "--git-path", "index"], root).text
    with tempfile.TemporaryDirectory(prefix="celery-agent-capture-") as tmp:
        scratch = str(Path(tmp) / "index")
        if index.exists():
            shutil.copyfile(index, scratch)
        git.ok(["add", "--all"], root, {"GIT_INDEX_FILE": scratch})
        out = git.ok([*_DIFF_OPTIONS, base], root, {"GIT_INDEX_FILE": scratch}).stdout
    return out.decode("utf-8", "surrogateescape")


def _commits_diff(git: Git, root: Path, base: str, head: str) -> str:
    """``git diff base head``: the committed changes only, binary-safe."""
    options = [o for o in _DIFF_OPTIONS if o != "--cached"]
    out = git.ok([*options, base, head], root).stdout
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


def requirements_path(path: str, root: Path) -> str:
    """A requirements file named from the current folder, else from the repository root, as a
    path from the root; SpecError when it is in neither or lies outside the repository."""
    for base in (Path.cwd(), root):
        found = (base / path).resolve()
        if found.is_file():
            try:
                return found.relative_to(root.resolve()).as_posix()
            except ValueError:
                break
    raise SpecError(
        f"requirements file {path} is not a file in this repository (looked in {Path.cwd()} "
        f"and {root})",
        "give a path from the current folder or the repository root",
    )
