"""What the benchmarks run: a git repository of ~50 files with the user scripts, a diff on top of
its commit, and a local wheel the run's environment installs (no index needed)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_agent import TaskSpec

#: the user scripts, by entry name
SCRIPTS = {
    # dispatch: one line, then keep going as a training script would
    "first.py": 'import time\nprint("first line")\ntime.sleep(0.2)\n',
    # throughput: the least a run can do
    "trivial.py": 'print("done")\n',
    # log volume: argv[1] lines as fast as Python prints them
    "spam.py": (
        "import sys\n"
        "for i in range(int(sys.argv[1])):\n"
        '    print(f"step {i} loss {1.0 / (i + 1):.6f}")\n'
    ),
    # log latency: a wall-clock stamp every 50 ms (plain print: the agent makes stdout unbuffered)
    "ticker.py": (
        "import sys, time\n"
        "for _ in range(int(sys.argv[1])):\n"
        '    print(f"tick {time.time():.6f}")\n'
        "    time.sleep(0.05)\n"
    ),
    # cancel: a child of its own, then sleep
    "sleeper.py": (
        "import os, subprocess, sys, time\n"
        'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\n'
        'print(f"started {os.getpid()} {child.pid}")\n'
        "time.sleep(600)\n"
    ),
}
FILLER_FILES = 45
WHEEL = ("cabench", "1.0")

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
}  # fmt: skip


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; return its stdout."""
    env = dict(os.environ, **_GIT_ENV)
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@dataclass(frozen=True)
class Workload:
    """The repository, its commit, a diff on top, and the wheel folder."""

    repo: Path
    commit: str
    diff: str
    wheels: Path

    @classmethod
    def create(cls, root: Path) -> Workload:
        """Write the repository (committed), the diff and the wheel under ``root``."""
        repo, wheels = root / "repo", root / "wheels"
        write_wheel(wheels, *WHEEL, "VERSION = '1.0'\n")
        commit = _commit_repo(repo)
        return cls(repo, commit, _make_diff(repo), wheels)

    def spec(self, entry: str, queue: str, *args: str, **fields: Any) -> TaskSpec:
        """A venv run of ``entry`` at the commit with the diff, needing the local wheel."""
        return TaskSpec.parse(
            {
                "repo": str(self.repo),
                "commit": self.commit,
                "diff": self.diff,
                "entry": entry,
                "args": list(args),
                "requirements": [WHEEL[0]],
                "find_links": [str(self.wheels)],
                "no_index": True,
                "queue": queue,
            }
            | fields
        )


def _commit_repo(repo: Path) -> str:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for name, text in SCRIPTS.items():
        (repo / name).write_text(text)
    (repo / "pkg").mkdir()
    for i in range(FILLER_FILES):
        body = "".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(20))
        (repo / "pkg" / f"mod_{i:02d}.py").write_text(body)
    (repo / "config.yaml").write_text("lr: 0.1\nepochs: 3\nbatch: 64\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "benchmark workload")
    return git(repo, "rev-parse", "HEAD")


def _make_diff(repo: Path) -> str:
    """An edit and a new file, as `git diff HEAD` shows them (the working copy keeps them)."""
    (repo / "config.yaml").write_text("lr: 0.05\nepochs: 3\nbatch: 64\n")
    (repo / "notes.txt").write_text("tried a smaller learning rate\n")
    git(repo, "add", "-N", "notes.txt")
    return git(repo, "diff", "HEAD") + "\n"


def write_wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """Write a pure-Python wheel ``name-version`` holding module ``name`` with ``code``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = folder / f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            data = text.encode()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arc},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path
