"""gitcmd.py without real repositories: redaction, environment, secrets."""

from __future__ import annotations

import pytest

from celery_agent.gitcmd import Git, git_env, redact

TOKEN = "ghp_unit-test-TOKEN"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:secret@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_token@github.com/org/repo", "https://github.com/org/repo"),
        ("ssh://git@host/org/repo.git", "ssh://git@host/org/repo.git"),
        ("ssh://git:pw@host/org/repo.git", "ssh://host/org/repo.git"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("/srv/repos/project", "/srv/repos/project"),
        (
            "fatal: unable to access 'https://u:p@h/x/': 403",
            "fatal: unable to access 'https://h/x/': 403",
        ),
    ],
)
def test_redact_strips_credentials_from_urls(url, expected):
    assert redact(url) == expected


def test_git_env_inherits_only_what_git_needs_and_never_prompts():
    env = git_env({"PATH": "/bin", "HOME": "/home/u", "AWS_SECRET_ACCESS_KEY": "x", "LANG": "de"})
    assert env["PATH"] == "/bin" and env["HOME"] == "/home/u"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "LANG" not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["LC_ALL"] == "C"
    assert "BatchMode=yes" in env["GIT_SSH_COMMAND"]
    assert git_env({"GIT_SSH_COMMAND": "ssh -i key"})["GIT_SSH_COMMAND"] == "ssh -i key"


def test_scrub_hides_token_and_url_credentials():
    git = Git({}, secrets=(TOKEN,))
    text = git.scrub(f"token {TOKEN} at https://x:{TOKEN}@h/r")
    assert TOKEN not in text and text == "token *** at https://h/r"


class Stop(Exception):
    pass


def stop_after(seconds: float):
    import time

    end = time.monotonic() + seconds

    def stop() -> None:
        if time.monotonic() >= end:
            raise Stop()

    return stop


def test_a_stop_ends_a_stalled_git_command_and_kills_its_group(tmp_path):
    import os
    import time

    import psutil

    pidfile = tmp_path / "pid"
    git = Git(git_env(os.environ), stop=stop_after(0.3))
    stall = f"!echo $$ > {pidfile}; exec sleep 60"
    t0 = time.monotonic()
    with pytest.raises(Stop):
        git.run(["-c", f"alias.stall={stall}", "stall"], tmp_path)
    assert time.monotonic() - t0 < 1.5
    pid = int(pidfile.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_deadline_still_ends_a_command_that_a_stop_check_watches(tmp_path):
    import os

    from celery_agent.errors import StageTimeout

    git = Git(git_env(os.environ), timeout=0.4, stop=lambda: None)
    with pytest.raises(StageTimeout, match="source stage timed out after 0.4 s .*source_timeout"):
        git.run(["-c", "alias.stall=!exec sleep 60", "stall"], tmp_path)


def test_wait_for_looks_at_the_stop_check_between_tries_and_honours_the_deadline():
    from celery_agent.errors import StageTimeout

    tries: list[float] = []
    with pytest.raises(Stop):
        Git({}, stop=stop_after(0.25)).wait_for(lambda s: tries.append(s) or False, ["lock"])
    assert len(tries) >= 2 and all(0 < s <= 0.1 for s in tries)
    with pytest.raises(StageTimeout, match="during git lock"):
        Git({}, timeout=0.2).wait_for(lambda s: False, ["lock"])
