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
