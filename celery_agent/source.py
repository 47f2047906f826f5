"""Git sources: one clone per repository per machine, a worktree per run, the run's diff on top.

:class:`SourceCache` keeps a bare repository per remote under its root and adds a detached worktree
for each run, so a commit already fetched costs no network and a checkout costs one
``git worktree add``. :func:`capture` (from :mod:`celery_agent.capture`) records a working copy
(commit, branch, uncommitted changes) so that a checkout can rebuild it exactly on another machine.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from .capture import CapturedSource, capture
from .checkouts import Lease, TreePool, diff_digest
from .errors import DiffConflictError, SourceError, StageTimeout
from .gitcmd import (
    Git,
    GitResult,
    askpass_env,
    git_env,
    git_token,
    install_askpass,
    last_lines,
    redact,
)

__all__ = ["CapturedSource", "Checkout", "SourceCache", "capture", "redact"]

logger = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-fA-F]{4,64}")
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HEADS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
_REMOTE_HEAD = "refs/remotes/origin/HEAD"
_REV_PARSE = ("rev-parse", "--verify", "--quiet", "--end-of-options")
_AUTH_FAILURE = re.compile(
    r"authentication|could not read (username|password)|prompts disabled", re.I
)


@dataclass(frozen=True)
class Checkout:
    """A worktree holding a run's code."""

    path: Path  #: the worktree directory
    commit: str  #: full sha that was checked out
    repo_url: str  #: the repository, credentials redacted (local paths made absolute)
    diff_applied: bool  #: True when a non-empty diff was applied on top of the commit
    cache_dir: Path  #: the bare clone this worktree belongs to
    lease: Lease | None = field(default=None, compare=False)  #: set for a pooled worktree

    @property
    def reused(self) -> bool:
        """True when the worktree served an earlier run of the same commit and diff."""
        return self.lease is not None and self.lease.reused


@dataclass(frozen=True)
class _Repo:
    """A repository as git fetches it (URL as given, or an absolute path) and as logs show it."""

    url: str
    local: bool

    @classmethod
    def parse(cls, repo: str) -> _Repo:
        repo = repo.strip()
        if not repo or repo.startswith("-"):
            raise SourceError(f"repository {redact(repo)!r} is not a git URL or a path")
        if "://" in repo or re.match(r"^[^/]+:", repo):
            return cls(repo, local=False)
        path = os.path.abspath(os.path.expanduser(repo))
        if not os.path.exists(path):
            raise SourceError(
                f"repository {path} not found",
                "give a git URL, or the path of a git repository on this machine",
            )
        return cls(path, local=True)

    @property
    def display(self) -> str:
        return redact(self.url)

    @property
    def http(self) -> bool:
        return self.url.lower().startswith(("http://", "https://"))

    @property
    def cache_name(self) -> str:
        return _cache_name(self.display)


class SourceCache:
    """One clone per repo per machine under `root`, worktrees per run.

    Safe for several threads and processes at once: clone, fetch and worktree changes of one
    repository happen under a file lock next to its clone. ``env`` is where credentials and PATH
    are read from (``os.environ`` at call time when None): ``CELERY_AGENT_GIT_TOKEN`` (or
    ``GIT_TOKEN``) answers http(s) password prompts, ``CELERY_AGENT_GIT_USER`` (default
    ``oauth2``) the user name prompts. A checkout without a destination comes from the clone's
    pool of reusable worktrees (:mod:`celery_agent.checkouts`), which keeps up to ``keep`` of them.
    """

    def __init__(self, root: Path, *, env: Mapping[str, str] | None = None, keep: int = 8) -> None:
        self.root = Path(root).expanduser().absolute()
        self._env = env
        self.keep = keep

    def checkout(
        self,
        repo: str,
        dest: Path | None = None,
        *,
        commit: str | None = None,
        branch: str | None = None,
        diff: str = "",
        timeout: float | None = None,
        stop: Callable[[], None] | None = None,
    ) -> Checkout:
        """Check out ``commit`` (any revision), else ``branch``, else the remote's HEAD into
        ``dest`` as a detached worktree, then apply ``diff``; on any failure ``dest`` is removed.
        ``stop`` is called every tenth of a second while git runs or the clone's lock is waited
        for, and ends the checkout with what it raises (a cancel).

        Without ``dest`` the worktree is lent from the pool: a pristine one of the same commit and
        diff when there is one (a full sha then costs no git process), else a new one; give it
        back with :meth:`remove`."""
        source = _Repo.parse(repo)
        if dest is not None:
            dest = Path(dest).absolute()
            _check_dest(dest)
        cache = self.root / source.cache_name
        pool = TreePool(cache.with_name(cache.name + ".trees"), self.keep)
        digest, has_diff = diff_digest(diff), bool(diff.strip())
        if dest is None and commit and _FULL_SHA.fullmatch(commit):
            lease = pool.lease(commit, digest, self._remover(cache, None))
            if lease is not None:
                return Checkout(lease.path, commit, source.display, has_diff, cache, lease)
        git = self._git(source, timeout, stop)
        lease = None
        with self._locked(cache, git):
            clone = _Clone(cache, source, git, self._auth(source), _wants_head(commit, branch))
            clone.ensure()
            sha = clone.resolve(commit, branch)
            if dest is None:
                lease = pool.lease(sha, digest, self._remover(cache, git))
                if lease is not None:
                    return Checkout(lease.path, sha, source.display, has_diff, cache, lease)
                lease = pool.reserve(sha, digest, self._remover(cache, git))
                dest = lease.path
            try:
                git.ok(
                    ["-C", cache, "worktree", "add", "--force", "--detach", "--quiet", dest, sha]
                )
            except BaseException:
                if lease is not None:
                    pool.drop(lease, self._remover(cache, git))
                raise
        done = Checkout(dest, sha, source.display, has_diff, cache, lease)
        try:
            if done.diff_applied:
                self._apply(done, diff, git)
            if lease is not None:
                pool.seal(lease)
        except BaseException:
            self.remove(done)
            raise
        return done

    def remove(self, checkout: Checkout) -> None:
        """Give back a pooled worktree, else remove the worktree and forget it; a directory
        already gone is fine. A pooled worktree is not looked at here (one that never became
        ready aside, which is removed): its next lease deletes what the run added, or retires
        it when its checkout changed - a check that walks the tree there anyway, to catch late
        writers, so a run costs one walk."""
        if checkout.lease is not None:
            pool = TreePool(checkout.lease.path.parent, self.keep)
            pool.release(checkout.lease, self._remover(checkout.cache_dir, None))
            return
        try:
            self._unregister(checkout.cache_dir, checkout.path, None)
        except (SourceError, StageTimeout) as exc:
            logger.warning("could not unregister worktree %s: %s", checkout.path, exc)
        shutil.rmtree(checkout.path, ignore_errors=True)

    def _remover(self, cache: Path, git: Git | None) -> Callable[[Path], None]:
        """Unregisters a worktree; with ``git`` the caller holds the clone's lock already."""
        return lambda path: self._unregister(cache, path, git)

    def _unregister(self, cache: Path, path: Path, locked: Git | None) -> None:
        git = Git(git_env(self._source_env()), timeout=120.0)
        if not cache.is_dir():
            return
        with nullcontext() if locked is not None else self._locked(cache, git):
            if path.exists():
                git.run(["-C", cache, "worktree", "remove", "--force", "--force", path])
            git.run(["-C", cache, "worktree", "prune"])

    # -- steps ---------------------------------------------------------------------------------
    def _apply(self, checkout: Checkout, diff: str, git: Git) -> None:
        """Apply ``diff`` in the worktree; fall back to a 3-way merge; else DiffConflictError."""
        with tempfile.NamedTemporaryFile("wb", suffix=".diff", dir=self.root) as patch:
            patch.write(_patch_bytes(diff))
            patch.flush()
            plain = git.run(["apply", "--whitespace=nowarn", patch.name], checkout.path)
            if _applied(plain):
                return
            merged = git.run(["apply", "--3way", "--whitespace=nowarn", patch.name], checkout.path)
        if not _applied(merged):
            raise DiffConflictError(
                f"diff does not apply to {checkout.commit[:12]}: {_apply_problems(plain, merged)}",
                "rebase the change onto that commit, or capture it again from a working copy there",
            )
        logger.info("diff applied to %s with a 3-way merge", checkout.commit[:12])

    # -- plumbing ------------------------------------------------------------------------------
    def _source_env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def _git(
        self, source: _Repo, timeout: float | None, stop: Callable[[], None] | None = None
    ) -> Git:
        self.root.mkdir(parents=True, exist_ok=True)
        env = git_env(self._source_env())
        env["GIT_ASKPASS"] = str(install_askpass(self.root))
        token = git_token(self._source_env())
        return Git(env, timeout, (token,) if token else (), stop=stop)

    def _auth(self, source: _Repo) -> dict[str, str]:
        """The variables only a network git command of an http(s) repository gets."""
        return askpass_env(self._source_env()) if source.http else {}

    @contextmanager
    def _locked(self, cache: Path, git: Git) -> Iterator[None]:
        lock = filelock.FileLock(str(cache.with_name(cache.name + ".lock")))

        def attempt(seconds: float) -> bool:
            try:
                lock.acquire(timeout=seconds)
            except filelock.Timeout:
                return False
            return True

        git.wait_for(attempt, ["lock"])  # (the deadline and the stop check watched meanwhile)
        try:
            yield
        finally:
            lock.release()


@dataclass
class _Clone:
    """One repository's bare clone in the cache, kept current by fetching only when needed."""

    path: Path
    source: _Repo
    git: Git
    auth: dict[str, str]
    head: bool  #: whether the remote's HEAD is wanted (no commit or branch given, or HEAD~n)
    fetched: bool = False

    def ensure(self) -> None:
        """Create the bare clone when missing, fetching everything once (atomic: temp + rename)."""
        if (self.path / "HEAD").exists():
            return
        logger.info("cloning %s into %s", self.source.display, self.path)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.git.ok(["init", "--bare", "--quiet", tmp])
            self.git.ok(["-C", tmp, "config", "remote.origin.url", self.source.display])
            self.git.ok(["-C", tmp, "symbolic-ref", "HEAD", _REMOTE_HEAD])
            self._fetch_into(tmp)
            os.replace(tmp, self.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def resolve(self, commit: str | None, branch: str | None) -> str:
        """The full sha to check out: a known commit costs no fetch, a branch always fetches."""
        if commit:
            return self._commit(commit)
        self.fetch()
        sha = self.rev(f"refs/heads/{branch}" if branch else _REMOTE_HEAD)
        if sha is None and branch:
            raise SourceError(
                f"branch {branch} not found in {self.source.display}",
                "push it, or check the branch name",
            )
        if sha is None:
            raise SourceError(f"{self.source.display} has no default branch", "give a branch")
        return sha

    def _commit(self, commit: str) -> str:
        sha = self.rev(commit) if self.fetched or _HEX.fullmatch(commit) else None
        if sha is None and not self.fetched:
            self.fetch()
            sha = self.rev(commit)
        if sha is None and _FULL_SHA.fullmatch(commit) and self.fetch(commit, check=False):
            sha = self.rev(commit)  # a commit no branch or tag holds, where the server allows it
        if sha is None:
            raise SourceError(
                f"commit {commit} not found in {self.source.display}", "push it, or check the sha"
            )
        return sha

    def rev(self, revision: str) -> str | None:
        """The full sha ``revision`` names in the clone, None when it names no commit."""
        result = self.git.run(["-C", self.path, *_REV_PARSE, f"{revision}^{{commit}}"])
        return result.text if result.returncode == 0 else None

    def fetch(self, *extra: str, check: bool = True) -> bool:
        """Fetch branches, tags (and ``extra`` refspecs), once per checkout unless ``extra``."""
        return (self.fetched and not extra) or self._fetch_into(self.path, *extra, check=check)

    def _fetch_into(self, path: Path, *extra: str, check: bool = True) -> bool:
        logger.info("fetching %s", self.source.display)
        specs = [*_HEADS, *([f"+HEAD:{_REMOTE_HEAD}"] if self.head else []), *extra]
        argv = ["-C", str(path), "-c", "gc.autoDetach=false", "fetch", "--prune", "--quiet"]
        result = self.git.run([*argv, self.source.url, *specs], extra=self.auth)
        if result.returncode and check:
            raise _fetch_error(self.source, result.stderr)
        self.fetched = self.fetched or result.returncode == 0
        return result.returncode == 0


def _wants_head(commit: str | None, branch: str | None) -> bool:
    return commit.startswith("HEAD") if commit else not branch


@functools.lru_cache(maxsize=256)
def _cache_name(display: str) -> str:
    """The clone's folder name for a repository (worked out once per process: every checkout
    of it, a reused worktree's too, needs it)."""
    normal = display.rstrip("/").removesuffix(".git")
    digest = hashlib.sha256(normal.encode()).hexdigest()[:16]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", re.split(r"[/:]", normal)[-1]) or "repo"
    return f"{digest}-{base}"


def _check_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SourceError(
            f"checkout destination {dest} exists and is not empty",
            "remove it, or check out into a new directory",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)


def _fetch_error(source: _Repo, stderr: str) -> SourceError:
    if source.local:
        hint = "check that the path is a git repository this worker can read"
    elif _AUTH_FAILURE.search(stderr):
        hint = "set CELERY_AGENT_GIT_TOKEN (and CELERY_AGENT_GIT_USER) for the worker, or check the URL"
    else:
        hint = "check the URL, and that this worker can reach it"
    return SourceError(f"cannot fetch repository {source.display}: {last_lines(stderr)}", hint)


def _patch_bytes(diff: str) -> bytes:
    """The diff as git apply reads it; a binary patch needs its closing blank line, which a
    stripped diff lost (git then skips that file and still exits 0)."""
    data = diff.encode("utf-8", "surrogateescape")
    if b"GIT binary patch" in data and not data.endswith(b"\n\n"):
        data = data.rstrip(b"\n") + b"\n\n"
    return data


def _applied(result: GitResult) -> bool:
    return result.returncode == 0 and "error:" not in result.stderr


def _apply_problems(plain: GitResult, merged: GitResult) -> str:
    lines = [ln.strip() for ln in (plain.stderr + merged.stderr).splitlines()]
    wanted = [ln for ln in lines if ln.startswith("error:") or "with conflicts" in ln]
    unique = list(dict.fromkeys(wanted))[:10]
    return "; ".join(unique) if unique else last_lines(plain.stderr + merged.stderr)
