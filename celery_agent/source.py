"""Git sources: one clone per repository per machine, a worktree per run, the run's diff on top.

:class:`SourceCache` keeps a bare repository per remote under its root and adds a detached worktree
for each run, so a commit already fetched costs no network and a checkout costs one
``git worktree add``. :func:`capture` records a working copy (commit, branch, uncommitted changes)
so that a checkout can rebuild it exactly on another machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from .errors import DiffConflictError, SourceError, StageTimeout

logger = logging.getLogger(__name__)

Args = Sequence["str | Path"]
Env = Mapping[str, str]

#: variables a git command inherits from the given environment; everything else is left out
_INHERIT = (
    "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_CONFIG_HOME", "SSH_AUTH_SOCK", "GIT_SSH",
    "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY",
    "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip
_TOKEN_VARS = ("CELERY_AGENT_GIT_TOKEN", "GIT_TOKEN")
_ASKPASS_TOKEN = "CELERY_AGENT_ASKPASS_TOKEN"
_ASKPASS_USER = "CELERY_AGENT_ASKPASS_USER"
_ASKPASS_SCRIPT = f"""#!/bin/sh
# Answers git's credential prompts from the environment of the one git command that runs it.
case "$1" in
  [Uu]sername*) printf '%s\\n' "${{{_ASKPASS_USER}:-oauth2}}" ;;
  *) printf '%s\\n' "${{{_ASKPASS_TOKEN}:-}}" ;;
esac
"""
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s'\"]+)@")
_HEX = re.compile(r"[0-9a-fA-F]{4,64}")
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HEADS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
_REMOTE_HEAD = "refs/remotes/origin/HEAD"
_REV_PARSE = ("rev-parse", "--verify", "--quiet", "--end-of-options")
_AUTH_FAILURE = re.compile(
    r"authentication|could not read (username|password)|prompts disabled", re.I
)
_DIFF_OPTIONS = (
    "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "diff", "--cached", "--binary",
    "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--src-prefix=a/",
    "--dst-prefix=b/", "HEAD",
)  # fmt: skip


def redact(url: str) -> str:
    """``url`` (or any text holding URLs) with ``user:password@`` removed, for logs and records.

    A bare user name is kept for ssh URLs (``ssh://git@host/...``) and removed for http(s), where
    it is usually a token.
    """

    def strip(match: re.Match[str]) -> str:
        http = match["scheme"].lower().startswith("http")
        return match["scheme"] if http or ":" in match["user"] else match[0]

    return _USERINFO.sub(strip, url)


@dataclass(frozen=True)
class Checkout:
    """A worktree holding a run's code."""

    path: Path  #: the worktree directory
    commit: str  #: full sha that was checked out
    repo_url: str  #: the repository, credentials redacted (local paths made absolute)
    diff_applied: bool  #: True when a non-empty diff was applied on top of the commit
    cache_dir: Path  #: the bare clone this worktree belongs to


@dataclass(frozen=True)
class CapturedSource:
    """A working copy recorded as repository + commit + uncommitted changes."""

    repo: str  #: the upstream remote's URL, else origin's, else the repository's absolute path
    commit: str  #: HEAD sha
    branch: str | None  #: the current branch, None when HEAD is detached
    diff: str  #: changes against HEAD, untracked files as new files; binary-safe; "" when clean
    root: Path  #: the repository's top-level directory


@dataclass
class _Result:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace").strip()


@dataclass
class _Git:
    """Runs git commands with one environment, one deadline and the secrets to keep out of text."""

    env: dict[str, str]
    timeout: float | None = None
    secrets: tuple[str, ...] = ()
    start: float = field(default_factory=time.monotonic)

    def run(self, args: Args, cwd: Path | None = None, extra: Env | None = None) -> _Result:
        """Run ``git *args``; a missing git raises SourceError, the deadline StageTimeout."""
        argv = ["git", *map(str, args)]
        logger.debug("git: %s", self.scrub(shlex.join(argv)))
        proc = self._spawn(argv, cwd, {**self.env, **(extra or {})})
        try:
            out, err = proc.communicate(timeout=self._remaining(argv[1:]))
        except BaseException as exc:
            _kill_group(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise self.timed_out(argv[1:]) from None
            raise
        return _Result(proc.returncode, out, self.scrub(err.decode("utf-8", "replace")))

    def ok(self, args: Args, cwd: Path | None = None, extra: Env | None = None) -> _Result:
        """Like :meth:`run`, raising SourceError with git's own words when git fails."""
        result = self.run(args, cwd, extra)
        if result.returncode:
            raise SourceError(f"git {_verb(args)} failed: {_last_lines(result.stderr)}")
        return result

    def scrub(self, text: str) -> str:
        """``text`` without URL credentials or any of the secrets."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None without one)."""
        return None if self.timeout is None else self.timeout - (time.monotonic() - self.start)

    def timed_out(self, args: Sequence[str]) -> StageTimeout:
        """The error for running out of time while running ``args`` (or waiting for the lock)."""
        err = StageTimeout(
            f"source stage timed out after {self.timeout:g} s (during git {_verb(args)})",
            "raise the run's timeout, or check that this worker can reach the repository quickly",
        )
        err.stage = "source"
        return err

    def _remaining(self, args: Sequence[str]) -> float | None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise self.timed_out(args)
        return left

    def _spawn(
        self, argv: list[str], cwd: Path | None, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        pipe = subprocess.PIPE
        try:
            return subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe,
                start_new_session=True,
            )  # fmt: skip
        except FileNotFoundError as exc:
            if exc.filename != argv[0]:
                raise SourceError(f"directory {cwd} does not exist") from None
            raise SourceError(
                "git is not installed on this machine (not found on PATH)",
                "install git, or put its directory on the worker's PATH",
            ) from None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a git command and its helpers (they share its process group), then reap it."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _verb(args: Sequence[str | Path]) -> str:
    words, i = [str(a) for a in args], 0
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in ("-C", "-c") else 1
    return words[i] if i < len(words) else "?"


def _last_lines(stderr: str, count: int = 3) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines[-count:])[:500] or "no output"


def git_env(source: Mapping[str, str]) -> dict[str, str]:
    """The environment of a git command: a few inherited variables, never a prompt, C locale."""
    env = {name: source[name] for name in _INHERIT if name in source}
    env.update(GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never", LC_ALL="C")
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


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
        normal = self.display.rstrip("/").removesuffix(".git")
        digest = hashlib.sha256(normal.encode()).hexdigest()[:16]
        base = re.sub(r"[^A-Za-z0-9._-]", "_", re.split(r"[/:]", normal)[-1]) or "repo"
        return f"{digest}-{base}"


class SourceCache:
    """One clone per repo per machine under `root`, worktrees per run.

    Safe for several threads and processes at once: clone, fetch and worktree changes of one
    repository happen under a file lock next to its clone. ``env`` is where credentials and PATH
    are read from (``os.environ`` at call time when None): ``CELERY_AGENT_GIT_TOKEN`` (or
    ``GIT_TOKEN``) answers http(s) password prompts, ``CELERY_AGENT_GIT_USER`` (default
    ``oauth2``) the user name prompts.
    """

    def __init__(self, root: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self._env = env

    def checkout(
        self,
        repo: str,
        dest: Path,
        *,
        commit: str | None = None,
        branch: str | None = None,
        diff: str = "",
        timeout: float | None = None,
    ) -> Checkout:
        """Check out ``commit`` (any revision), else ``branch``, else the remote's HEAD into
        ``dest`` as a detached worktree, then apply ``diff``; on any failure ``dest`` is removed."""
        source, dest = _Repo.parse(repo), Path(dest).absolute()
        _check_dest(dest)
        git, cache = self._git(source, timeout), self.root / source.cache_name
        with self._locked(cache, git):
            clone = _Clone(cache, source, git, self._auth(source), _wants_head(commit, branch))
            clone.ensure()
            sha = clone.resolve(commit, branch)
            git.ok(["-C", cache, "worktree", "add", "--force", "--detach", "--quiet", dest, sha])
        done = Checkout(dest, sha, source.display, bool(diff.strip()), cache)
        try:
            if done.diff_applied:
                self._apply(done, diff, git)
        except BaseException:
            self.remove(done)
            raise
        return done

    def remove(self, checkout: Checkout) -> None:
        """Remove a checkout's worktree and forget it; a directory already gone is fine."""
        try:
            self._unregister(checkout)
        except (SourceError, StageTimeout) as exc:
            logger.warning("could not unregister worktree %s: %s", checkout.path, exc)
        shutil.rmtree(checkout.path, ignore_errors=True)

    def _unregister(self, checkout: Checkout) -> None:
        cache, git = checkout.cache_dir, _Git(git_env(self._source_env()), timeout=120.0)
        if not cache.is_dir():
            return
        with self._locked(cache, git):
            if checkout.path.exists():
                git.run(["-C", cache, "worktree", "remove", "--force", "--force", checkout.path])
            git.run(["-C", cache, "worktree", "prune"])

    # -- steps ---------------------------------------------------------------------------------
    def _apply(self, checkout: Checkout, diff: str, git: _Git) -> None:
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

    def _git(self, source: _Repo, timeout: float | None) -> _Git:
        self.root.mkdir(parents=True, exist_ok=True)
        env = git_env(self._source_env())
        env["GIT_ASKPASS"] = str(self._askpass())
        token = self._token()
        return _Git(env, timeout, (token,) if token else ())

    def _token(self) -> str:
        return next((self._source_env()[n] for n in _TOKEN_VARS if self._source_env().get(n)), "")

    def _auth(self, source: _Repo) -> dict[str, str]:
        """The variables only a network git command of an http(s) repository gets."""
        token = self._token()
        if not (token and source.http):
            return {}
        user = self._source_env().get("CELERY_AGENT_GIT_USER") or "oauth2"
        return {_ASKPASS_TOKEN: token, _ASKPASS_USER: user}

    def _askpass(self) -> Path:
        """The askpass script under root, written once (atomically) with mode 0700."""
        path = self.root / "askpass.sh"
        if not (path.exists() and path.read_text() == _ASKPASS_SCRIPT):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".askpass-")
            with os.fdopen(fd, "w") as fh:
                fh.write(_ASKPASS_SCRIPT)
            os.chmod(tmp, 0o700)
            os.replace(tmp, path)
        return path

    @contextmanager
    def _locked(self, cache: Path, git: _Git) -> Iterator[None]:
        lock = filelock.FileLock(str(cache.with_name(cache.name + ".lock")))
        left = git.remaining()
        try:
            lock.acquire(timeout=-1 if left is None else max(left, 0.0))
        except filelock.Timeout:
            raise git.timed_out(["lock"]) from None
        try:
            yield
        finally:
            lock.release()


@dataclass
class _Clone:
    """One repository's bare clone in the cache, kept current by fetching only when needed."""

    path: Path
    source: _Repo
    git: _Git
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
    return SourceError(f"cannot fetch repository {source.display}: {_last_lines(stderr)}", hint)


def _patch_bytes(diff: str) -> bytes:
    """The diff as git apply reads it; a binary patch needs its closing blank line, which a
    stripped diff lost (git then skips that file and still exits 0)."""
    data = diff.encode("utf-8", "surrogateescape")
    if b"GIT binary patch" in data and not data.endswith(b"\n\n"):
        data = data.rstrip(b"\n") + b"\n\n"
    return data


def _applied(result: _Result) -> bool:
    return result.returncode == 0 and "error:" not in result.stderr


def _apply_problems(plain: _Result, merged: _Result) -> str:
    lines = [ln.strip() for ln in (plain.stderr + merged.stderr).splitlines()]
    wanted = [ln for ln in lines if ln.startswith("error:") or "with conflicts" in ln]
    unique = list(dict.fromkeys(wanted))[:10]
    return "; ".join(unique) if unique else _last_lines(plain.stderr + merged.stderr)


def capture(path: Path) -> CapturedSource:
    """Record the working copy at ``path``: remote, HEAD, branch and every uncommitted change.

    The diff holds staged and unstaged changes to tracked files and the untracked files that are
    not ignored, as new files, binary-safe, so ``checkout(repo, commit=..., diff=...)`` rebuilds
    the working copy (ignored files aside).
    """
    path = Path(path).absolute()
    if not path.exists():
        raise SourceError(f"{path} does not exist", "run this inside a git working copy")
    git = _Git(git_env(os.environ))
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
    return CapturedSource(
        _remote_url(git, root, branch), head.text, branch, _working_diff(git, root), root
    )


def _remote_url(git: _Git, root: Path, branch: str | None) -> str:
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


def _working_diff(git: _Git, root: Path) -> str:
    """``git diff HEAD`` of the whole working copy, untracked files included, via a scratch index."""
    index = root / git.ok(["rev-parse", "--git-path", "index"], root).text
    with tempfile.TemporaryDirectory(prefix="celery-agent-capture-") as tmp:
        scratch = str(Path(tmp) / "index")
        if index.exists():
            shutil.copyfile(index, scratch)
        git.ok(["add", "--all"], root, {"GIT_INDEX_FILE": scratch})
        out = git.ok(_DIFF_OPTIONS, root, {"GIT_INDEX_FILE": scratch}).stdout
    return out.decode("utf-8", "surrogateescape")
