"""Running git: a clean environment, a deadline, credentials kept out of every text.

:class:`Git` runs one git command at a time in its own process group, so a timeout kills git and
its helpers (ssh, credential helpers) together. :func:`git_env` builds the environment from a few
inherited variables; :func:`install_askpass` and :func:`askpass_env` let git answer http(s)
credential prompts with a token that never appears on a command line or in a URL;
:func:`redact` removes credentials from URLs in any text.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SourceError, StageTimeout

logger = logging.getLogger(__name__)

Args = Sequence["str | Path"]
Env = Mapping[str, str]
#: seconds between two looks at the stop check while a git command runs or a lock is waited for
STOP_EVERY = 0.1

#: variables a git command inherits from the given environment; everything else is left out
_INHERIT = (
    "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "XDG_CONFIG_HOME", "SSH_AUTH_SOCK", "GIT_SSH",
    "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY",
    "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip
_TOKEN_VARS = ("CELERY_AGENT_GIT_TOKEN", "GIT_TOKEN")
_USER_VAR = "CELERY_AGENT_GIT_USER"
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


def redact(url: str) -> str:
    """``url`` (or any text holding URLs) with ``user:password@`` removed, for logs and records.

    A bare user name is kept for ssh URLs (``ssh://git@host/...``) and removed for http(s), where
    it is usually a token.
    """

    def strip(match: re.Match[str]) -> str:
        http = match["scheme"].lower().startswith("http")
        return match["scheme"] if http or ":" in match["user"] else match[0]

    return _USERINFO.sub(strip, url)


def git_env(source: Mapping[str, str]) -> dict[str, str]:
    """The environment of a git command: a few inherited variables, never a prompt, C locale."""
    env = {name: source[name] for name in _INHERIT if name in source}
    env.update(GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never", LC_ALL="C")
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def git_token(source: Mapping[str, str]) -> str:
    """The token in ``CELERY_AGENT_GIT_TOKEN`` (else ``GIT_TOKEN``) of ``source``; "" without one."""
    return next((source[name] for name in _TOKEN_VARS if source.get(name)), "")


def askpass_env(source: Mapping[str, str]) -> dict[str, str]:
    """The variables that make the askpass script answer with ``source``'s token and user name
    (``CELERY_AGENT_GIT_USER``, default ``oauth2``); empty when ``source`` holds no token."""
    token = git_token(source)
    if not token:
        return {}
    return {_ASKPASS_TOKEN: token, _ASKPASS_USER: source.get(_USER_VAR) or "oauth2"}


def install_askpass(directory: Path) -> Path:
    """The askpass script in ``directory`` (for ``GIT_ASKPASS``), written once, atomically, 0700.

    The script holds no secret: it prints what :func:`askpass_env` put in its environment.
    """
    path = directory / "askpass.sh"
    if not (path.exists() and path.read_text() == _ASKPASS_SCRIPT):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".askpass-")
        with os.fdopen(fd, "w") as fh:
            fh.write(_ASKPASS_SCRIPT)
        os.chmod(tmp, 0o700)
        os.replace(tmp, path)
    return path


def last_lines(stderr: str, count: int = 3) -> str:
    """The last ``count`` non-blank lines of ``stderr`` joined by "; " (at most 500 characters)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(lines[-count:])[:500] or "no output"


@dataclass
class GitResult:
    """What a finished git command left: exit status, raw stdout, scrubbed stderr."""

    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        """stdout decoded (undecodable bytes replaced) and stripped."""
        return self.stdout.decode("utf-8", "replace").strip()


@dataclass
class Git:
    """Runs git commands with one environment, one deadline and the secrets to keep out of text.

    ``stop`` is called every :data:`STOP_EVERY` seconds while a command runs (and while a lock is
    waited for, see :meth:`wait_for`); when it raises (a cancel), the command's process group is
    killed and its exception goes on."""

    env: dict[str, str]
    timeout: float | None = None
    secrets: tuple[str, ...] = ()
    start: float = field(default_factory=time.monotonic)
    stop: Callable[[], None] | None = None

    def run(self, args: Args, cwd: Path | None = None, extra: Env | None = None) -> GitResult:
        """Run ``git *args``; a missing git raises SourceError, the deadline StageTimeout."""
        argv = ["git", *map(str, args)]
        logger.debug("git: %s", self.scrub(shlex.join(argv)))
        proc = self._spawn(argv, cwd, {**self.env, **(extra or {})})
        try:
            out, err = self._communicate(proc, argv[1:])
        except BaseException as exc:
            _kill_group(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise self.timed_out(argv[1:]) from None
            raise
        return GitResult(proc.returncode, out, self.scrub(err.decode("utf-8", "replace")))

    def ok(self, args: Args, cwd: Path | None = None, extra: Env | None = None) -> GitResult:
        """Like :meth:`run`, raising SourceError with git's own words when git fails."""
        result = self.run(args, cwd, extra)
        if result.returncode:
            raise SourceError(f"git {_verb(args)} failed: {last_lines(result.stderr)}")
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
            "the limit is the spec's timeouts['source'] or timeout, else the worker's "
            "source_timeout setting; check that this worker can reach the repository quickly",
        )
        err.stage = "source"
        return err

    def wait_for(self, attempt: Callable[[float], bool], args: Sequence[str]) -> None:
        """Call ``attempt(seconds)`` (e.g. a lock's acquire with that timeout) until it returns
        True, looking at the stop check between tries; past the deadline StageTimeout."""
        while True:
            left = self._remaining(args)
            if attempt(STOP_EVERY if left is None else min(left, STOP_EVERY)):
                return
            if self.stop is not None:
                self.stop()

    def _communicate(
        self, proc: subprocess.Popen[bytes], args: Sequence[str]
    ) -> tuple[bytes, bytes]:
        """The command's output once it exits; the stop check looked at while it runs."""
        if self.stop is None:
            return proc.communicate(timeout=self._remaining(args))
        while True:
            left = self._remaining(args)
            try:
                return proc.communicate(
                    timeout=STOP_EVERY if left is None else min(left, STOP_EVERY)
                )
            except subprocess.TimeoutExpired:
                if left is not None and left <= STOP_EVERY:
                    raise
                self.stop()

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
