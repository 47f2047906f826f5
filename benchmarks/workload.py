"""What the benchmarks run: a git repository of ~50 files with the user scripts, a diff on top of
its commit, and a local wheel the run's environment installs (no index needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery_agent import TaskSpec
from celery_agent.testing import git, init_repo, write_wheel

__all__ = ["SCRIPTS", "Workload", "git", "write_wheel"]

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
    # artifacts: argv[1] files of argv[2] bytes each in the run's output folder
    "outputs.py": (
        "import os, sys\n"
        'out = os.environ["CELERY_AGENT_OUTPUT_DIR"]\n'
        "for i in range(int(sys.argv[1])):\n"
        '    with open(os.path.join(out, f"part-{i}.bin"), "wb") as fh:\n'
        "        fh.write(os.urandom(int(sys.argv[2])))\n"
    ),
    # checkpoint sync: a stamp every 50 ms; every 20th, a checkpoint of argv[2] MiB, written to a
    # temporary name and renamed (two names in turn)
    "checkpointer.py": (
        "import os, sys, time\n"
        'folder = os.environ["CELERY_AGENT_CHECKPOINT_DIR"]\n'
        "os.makedirs(folder, exist_ok=True)\n"
        "blob = os.urandom(int(sys.argv[2]) * 2**20)\n"
        "for i in range(int(sys.argv[1])):\n"
        '    print(f"tick {time.time():.6f}")\n'
        "    if i % 20 == 19:\n"
        '        tmp = os.path.join(folder, "ckpt.bin.tmp")\n'
        '        with open(tmp, "wb") as fh:\n'
        "            fh.write(blob)\n"
        '        os.replace(tmp, os.path.join(folder, f"ckpt-{i // 20 % 2}.bin"))\n'
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
    files = dict(SCRIPTS)
    for i in range(FILLER_FILES):
        body = "".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(20))
        files[f"pkg/mod_{i:02d}.py"] = body
    files["config.yaml"] = "lr: 0.1\nepochs: 3\nbatch: 64\n"
    return init_repo(repo, files, "benchmark workload")


def _make_diff(repo: Path) -> str:
    """An edit and a new file, as `git diff HEAD` shows them (the working copy keeps them)."""
    (repo / "config.yaml").write_text("lr: 0.05\nepochs: 3\nbatch: 64\n")
    (repo / "notes.txt").write_text("tried a smaller learning rate\n")
    git(repo, "add", "-N", "notes.txt")
    return git(repo, "diff", "HEAD") + "\n"
