"""What runs is what you have, where you are, with parameters that tell the truth: the command
line against a real worker, real git (a bare remote), real child processes (joblib's loky,
multiprocessing spawn and forkserver)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import git
from test_cli import cli

pytestmark = pytest.mark.integration

CHILDREN = """\
import argparse, multiprocessing
from joblib import Parallel, delayed

def child_lr(_):  # (a spawned child's sys.argv is its parent's: it parses no words)
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--process-name", default="child")
    return p.parse_known_args([])[0].lr

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    a = p.parse_args()
    seen = set(Parallel(n_jobs=2, backend="loky")(delayed(child_lr)(i) for i in range(4)))
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            seen |= set(pool.map(child_lr, [0]))
    print("main", a.lr, "children", sorted(seen))
"""


def run_id_of(done) -> str:
    return done.stderr.split("submitted run ")[1].split()[0]


def test_joblib_and_multiprocessing_children_leave_the_params_alone(worker, make_repo, store):
    repo = make_repo({"fit.py": CHILDREN})
    os.chdir(repo)
    done = cli("submit", "fit.py", "--queue", worker.queues, "--executor", "local",
               "-p", "lr=0.5", "-p", "process_name=main", "--wait")  # fmt: skip
    assert "main 0.5 children [1.0]" in done.stdout, done.stdout + done.stderr
    record = store.get(run_id_of(done))
    assert record["params"] == {"lr": 0.5}
    assert record["unused_params"] == ["process_name"]  # only the children have that option


def test_a_param_no_parser_reads_is_reported_and_strict_params_fails_the_run(
    worker, make_repo, store
):
    parsed = "import argparse\nargparse.ArgumentParser().parse_args()\nprint('all 100 trials')\n"
    repo = make_repo({"study.py": "import sys\nprint('trials', 100, sys.argv[1:])\n",
                      "parsed.py": parsed})  # fmt: skip
    os.chdir(repo)
    done = cli("submit", "study.py", "--queue", worker.queues, "--executor", "local",
               "-p", "n_trials=3", "--wait")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "unused parameters: n_trials=3" in done.stdout
    run_id = run_id_of(done)
    assert store.get(run_id)["unused_params"] == ["n_trials"]
    shown = cli("show", run_id)
    assert "unused params" in shown.stdout and "n_trials" in shown.stdout
    strict = cli("submit", "study.py", "--queue", worker.queues, "--executor", "local",
                 "-p", "n_trials=3", "--strict-params", "--wait")  # fmt: skip
    assert strict.returncode == 1, strict.stdout + strict.stderr
    record = store.get(run_id_of(strict))
    assert record["state"] == "failed" and record["exit_code"] == 0
    assert "did not use parameter n_trials" in record["error"]
    early = cli("submit", "parsed.py", "--queue", worker.queues, "--executor", "local",
                "-p", "n_trials=3", "--strict-params", "--wait")  # fmt: skip
    assert early.returncode == 2 and "all 100 trials" not in early.stdout  # refused at the parse
    assert "unrecognized arguments: --n_trials 3" in early.stdout


def test_submit_from_a_subfolder_runs_there(worker, make_repo, store):
    repo = make_repo({"sklearn/simple.py": "print(open('data.txt').read())\n",
                      "sklearn/data.txt": "from the subfolder", "data.txt": "from the root"})  # fmt: skip
    os.chdir(repo / "sklearn")
    done = cli("submit", "simple.py", "--queue", worker.queues, "--executor", "local", "--wait")
    assert "from the subfolder" in done.stdout, done.stdout + done.stderr
    spec = store.get(run_id_of(done))["spec"]
    assert (spec["entry"], spec["workdir"]) == ("sklearn/simple.py", "sklearn")
    assert "workdir" in cli("show", run_id_of(done)).stdout
    up = cli("submit", "simple.py", "--workdir", "..", "--queue", worker.queues,
             "--executor", "local", "--wait")  # fmt: skip
    assert "from the root" in up.stdout, up.stdout + up.stderr
    assert "workdir" not in store.get(run_id_of(up))["spec"]  # the root: the default


def test_unpushed_commits_run_and_require_pushed_refuses_them(worker, tmp_path, store):
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "clone", "-q", str(bare), str(work))
    (work / "old.py").write_text("print('pushed')\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "pushed")
    git(work, "push", "-q", "origin", "main")
    git(work, "mv", "old.py", "run.py")
    (work / "run.py").write_text("print('unpushed', open('blob.bin', 'rb').read()[:3])\n")
    (work / "blob.bin").write_bytes(bytes([0, 255, 7]) * 100)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "not pushed")
    os.chdir(work)
    done = cli("submit", "run.py", "--queue", worker.queues, "--executor", "local", "--wait")
    assert "unpushed b'\\x00\\xff\\x07'" in done.stdout, done.stdout + done.stderr
    assert "1 unpushed commit as a diff" in done.stderr
    refused = cli("submit", "run.py", "--queue", worker.queues, "--require-pushed")
    assert refused.returncode == 1 and "git push origin main" in refused.stderr
    assert refused.stdout == ""  # nothing was submitted


@pytest.fixture(autouse=True)
def _back_home(tmp_path: Path):
    here = Path.cwd()
    yield
    os.chdir(here)
