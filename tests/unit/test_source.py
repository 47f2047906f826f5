"""source.py without real repositories: URLs, credentials, timeouts, locks."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import filelock
import pytest
from proc_support import gone

from celery_agent.errors import SourceError, StageTimeout
from celery_agent.source import SourceCache, _Repo
from celery_agent.testing import wait_for

TOKEN = "ghp_unit-test-TOKEN"


def fake_git(tmp_path: Path, body: str) -> dict[str, str]:
    """An environment whose PATH finds a `git` shell script with ``body`` first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "git"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}


def test_cache_name_ignores_credentials_and_git_suffix():
    plain = _Repo.parse("https://github.com/org/repo").cache_name
    assert _Repo.parse("https://u:p@github.com/org/repo.git").cache_name == plain
    assert _Repo.parse("https://github.com/org/repo/").cache_name == plain
    assert plain.endswith("-repo") and len(plain.split("-")[0]) == 16
    assert _Repo.parse("https://github.com/other/repo").cache_name != plain


def test_local_repo_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    repo = _Repo.parse("proj")
    assert repo.local and repo.url == str(tmp_path / "proj")
    assert _Repo.parse("git@host:org/x.git").local is False


def test_missing_local_repo_raises_naming_the_path(tmp_path):
    with pytest.raises(SourceError) as info:
        _Repo.parse(str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in info.value.message and info.value.hint


def test_repo_that_looks_like_an_option_is_refused():
    with pytest.raises(SourceError, match="not a git URL"):
        _Repo.parse("--upload-pack=touch /tmp/x")


def test_askpass_script_answers_user_and_password_prompts(tmp_path):
    env = {"CELERY_AGENT_GIT_TOKEN": TOKEN, "CELERY_AGENT_GIT_USER": "bot", "PATH": "/usr/bin:/bin"}
    cache = SourceCache(tmp_path / "cache", env=env)
    git = cache._git(_Repo.parse("https://example.com/r.git"), None)
    script = git.env["GIT_ASKPASS"]
    assert stat.S_IMODE(os.stat(script).st_mode) == 0o700
    assert TOKEN not in Path(script).read_text()
    auth = cache._auth(_Repo.parse("https://example.com/r.git"))

    def ask(prompt: str, extra: dict[str, str]) -> str:
        run = subprocess.run(
            [script, prompt], env=extra, capture_output=True, text=True, check=True
        )
        return run.stdout

    assert ask("Password for 'https://bot@example.com': ", auth) == TOKEN + "\n"
    assert ask("Username for 'https://example.com': ", auth) == "bot\n"
    assert ask("Username for 'https://example.com': ", {}) == "oauth2\n"
    assert ask("Password for 'https://example.com': ", {}) == "\n"


def test_token_goes_only_to_http_repositories(tmp_path):
    cache = SourceCache(tmp_path, env={"GIT_TOKEN": TOKEN})
    assert (
        cache._auth(_Repo.parse("https://example.com/r.git"))["CELERY_AGENT_ASKPASS_TOKEN"] == TOKEN
    )
    assert cache._auth(_Repo.parse("git@example.com:r.git")) == {}
    assert cache._auth(_Repo.parse(str(tmp_path))) == {}
    assert TOKEN not in cache._git(_Repo.parse("https://example.com/r"), None).env.values()


def test_missing_git_raises_source_error_with_hint(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    cache = SourceCache(tmp_path / "cache", env={"PATH": str(empty)})
    with pytest.raises(SourceError) as info:
        cache.checkout(str(tmp_path), tmp_path / "run")
    assert "git is not installed" in info.value.message and "PATH" in (info.value.hint or "")


def test_failing_git_command_is_named_with_its_output(tmp_path):
    env = fake_git(tmp_path, "echo 'fatal: disk on fire' >&2; exit 128")
    with pytest.raises(SourceError, match="git init failed: fatal: disk on fire"):
        SourceCache(tmp_path / "cache", env=env).checkout(str(tmp_path), tmp_path / "run")


def test_hanging_git_times_out_as_source_stage_and_is_killed(tmp_path):
    pid_file = tmp_path / "helper.pid"
    env = fake_git(tmp_path, f"sleep 30 & echo $! > {pid_file}; wait")
    started = time.monotonic()
    with pytest.raises(StageTimeout) as info:
        SourceCache(tmp_path / "cache", env=env).checkout(
            str(tmp_path), tmp_path / "run", timeout=0.5
        )
    assert time.monotonic() - started < 5
    assert info.value.message.startswith("source stage timed out after 0.5 s")
    assert info.value.stage == "source" and info.value.hint
    helper = int(pid_file.read_text())
    wait_for("git's helper process to end with the timeout", lambda: gone(helper), 3, every=0.02)


def test_waiting_for_a_busy_repository_lock_times_out(tmp_path):
    cache = SourceCache(tmp_path / "cache", env=fake_git(tmp_path, "exit 0"))
    (tmp_path / "cache").mkdir()
    name = _Repo.parse(str(tmp_path)).cache_name
    with filelock.FileLock(str(tmp_path / "cache" / f"{name}.lock")), pytest.raises(StageTimeout):
        cache.checkout(str(tmp_path), tmp_path / "run", timeout=0.3)


def test_non_empty_destination_is_refused_before_any_git(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep")
    cache = SourceCache(tmp_path / "cache", env={"PATH": str(tmp_path / "nothing")})
    with pytest.raises(SourceError, match="exists and is not empty"):
        cache.checkout(str(tmp_path), tmp_path / "run")
