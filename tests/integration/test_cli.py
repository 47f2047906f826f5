"""The celery-agent command against a real worker: submit from a checkout, follow, inspect, rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, write_wheel

from celery_agent.cli import main

pytestmark = pytest.mark.integration

SCRIPT = """\
import argparse, cademo
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
print("committed version" if False else "working copy", a.lr, a.epochs, cademo.VERSION)
"""


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("celery-agent")
    return subprocess.run(
        [str(exe), *argv], capture_output=True, text=True, timeout=300, env=os.environ
    )


def test_submit_from_checkout_runs_what_is_on_disk_and_exits_with_its_code(
    worker, make_repo, tmp_path, store
):
    wheels = tmp_path / "wh"
    write_wheel(wheels, "cademo", "1.0", "VERSION = '1.0'\n")
    repo = make_repo({"train.py": "print('committed version')\n", "sub/keep.txt": "x"})
    (repo / "train.py").write_text(SCRIPT)
    (repo / "sub" / "new.py").write_text("raise SystemExit(7)\n")
    os.chdir(repo / "sub")
    done = cli("submit", "../train.py", "--queue", worker.queues, "-p", "lr=0.5", "--req", "cademo",
               "--find-links", str(wheels), "--no-index", "--wait", "--", "--epochs", "3")  # fmt: skip
    assert "working copy 0.5 3 1.0" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0
    run_id = done.stderr.split("submitted run ")[1].split()[0]
    assert store.get(run_id)["spec"]["diff"], "the uncommitted changes travelled with the run"
    assert store.get(run_id)["spec"]["workdir"] == "sub"  # where it was submitted from
    assert "unused_params" not in store.get(run_id)  # the venv run's parser read lr
    failing = cli("submit", "new.py", "--queue", worker.queues, "--executor", "local", "--wait")
    assert failing.returncode == 7, failing.stderr
    os.chdir(tmp_path)


@pytest.fixture()
def finished_run(worker, make_repo, tmp_path, store):
    wheels = tmp_path / "wh"
    write_wheel(wheels, "cademo", "1.0", "VERSION = '1.0'\n")
    repo = make_repo({"train.py": SCRIPT})
    code = main(["submit", "train.py", "--repo", str(repo), "--queue", worker.queues, "--req", "cademo",
                 "-p", "lr=0.25", "--name", "first"])  # fmt: skip
    assert code == 0
    run_id = store.list_runs(1)[0]["run_id"]
    from celery_agent import get_run

    get_run(run_id).wait(timeout=180)
    return run_id, wheels


def test_show_ls_and_logs_print_the_run(finished_run, capsys):
    run_id, _ = finished_run
    capsys.readouterr()
    assert main(["show", run_id, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["state"] == "failed" or record["state"] == "succeeded"
    assert main(["show", run_id[:10]]) == 0
    shown = capsys.readouterr().out
    assert "state" in shown and run_id in shown
    assert main(["ls", "-n", "5"]) == 0
    assert run_id[:8] in capsys.readouterr().out
    assert main(["logs", run_id]) == 0
    assert "[celery-agent] run" in capsys.readouterr().out


def test_rerun_keeps_pinned_versions_and_applies_new_params(finished_run, worker, store):
    run_id, wheels = finished_run
    first = store.get(run_id)
    assert first["state"] == "failed", "no find-links: the index has no cademo"
    # give the spec the wheelhouse: rerun with edits through the library, then the CLI
    from celery_agent import get_run, submit
    from celery_agent.rerun import respec

    base = submit(
        respec(first, {"lr": 0.75}).with_changes(
            find_links=[str(wheels)], no_index=True, requirements=["cademo"]
        )
    )
    assert base.wait(timeout=180)["state"] == "succeeded"
    write_wheel(wheels, "cademo", "2.0", "VERSION = '2.0'\n")
    assert main(["rerun", base.id, "-p", "epochs=9", "--wait"]) == 0
    again = store.list_runs(1)[0]
    assert again["run_id"] != base.id and again["params"] == {"lr": 0.75, "epochs": 9}
    assert "cademo==1.0" in again["freeze"], "rerun pins the versions the first run resolved"
    assert main(["rerun", base.id, "--no-pin", "--wait"]) == 0
    assert "cademo==2.0" in store.list_runs(1)[0]["freeze"]
    assert get_run(base.id).info()["commit"] == again["commit"]


def test_cancel_command_and_unknown_run_error(worker, capsys, redis_url):
    assert main(["cancel", "no-such-run-id"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'no-such-run-id'" in err and "celery-agent ls" in err
    assert main(["show", "no-such-run-id"]) == 1
    assert "celery-agent ls" in capsys.readouterr().err


def test_bad_param_is_a_usage_error(worker, make_repo):
    repo = make_repo({"train.py": "print(1)\n"})
    assert main(["submit", "train.py", "--repo", str(repo), "-p", "lr"]) == 1
    git(repo, "status")


SECRET_SCRIPT = """\
import hashlib, os
print("sha", hashlib.sha256(os.environ["API_KEY"].encode()).hexdigest())
"""


def test_secret_env_from_the_environment_is_masked_and_rerun_asks_for_it_again(
    worker, make_repo, store, capsys, monkeypatch
):
    import hashlib

    repo = make_repo({"s.py": SECRET_SCRIPT})
    base = ["--repo", str(repo), "--queue", worker.queues, "--executor", "local"]
    monkeypatch.delenv("CA_TEST_API_KEY", raising=False)
    assert main(["submit", "s.py", *base, "--secret-env", "CA_TEST_API_KEY"]) == 2
    assert "export CA_TEST_API_KEY" in capsys.readouterr().err
    secret = f"k-{os.getpid()}-secret"
    monkeypatch.setenv("API_KEY", secret)
    assert main(["submit", "s.py", *base, "--secret-env", "API_KEY", "--wait"]) == 0
    run_id = store.list_runs(1)[0]["run_id"]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert f"sha {digest}" in capsys.readouterr().out
    assert main(["show", run_id, "--json"]) == 0
    shown = capsys.readouterr().out
    assert secret not in shown and '"API_KEY": "***"' in shown
    monkeypatch.delenv("API_KEY")
    assert main(["rerun", run_id]) == 1
    assert "--env API_KEY=value" in capsys.readouterr().err
    assert main(["rerun", run_id, "--env", "API_KEY=other", "--wait"]) == 0
    other = hashlib.sha256(b"other").hexdigest()
    assert f"sha {other}" in capsys.readouterr().out
    assert store.list_runs(1)[0]["spec"]["env"] == {"API_KEY": "***"}


def test_submit_names_a_requirements_file_from_the_submit_folder_or_the_repo_root(
    worker, make_repo, tmp_path, store
):
    wheels = tmp_path / "wh"
    write_wheel(wheels, "cademo", "1.0", "VERSION = 'one'\n")
    write_wheel(wheels, "cademo", "2.0", "VERSION = 'two'\n")
    repo = make_repo({
        "envs/new.txt": "cademo==2.0\n",
        "ex/sk/requirements.txt": "cademo==1.0\n",
        "ex/sk/train.py": "import cademo\nprint('dep', cademo.VERSION)\n",
    })  # fmt: skip
    os.chdir(repo / "ex" / "sk")
    try:
        common = ["--queue", worker.queues, "--find-links", str(wheels), "--wait"]
        done = cli("submit", "train.py", "-r", "requirements.txt", *common)
        assert done.returncode == 0 and "dep one" in done.stdout, done.stdout + done.stderr
        run_id = done.stderr.split("submitted run ")[1].split()[0]
        assert store.get(run_id)["spec"]["requirements_file"] == "ex/sk/requirements.txt"
        shown = cli("show", run_id)
        assert "env_source" in shown.stdout and "ex/sk/requirements.txt (sha256" in shown.stdout
        done = cli("submit", "train.py", "--requirements-file", "envs/new.txt", *common)
        assert done.returncode == 0 and "dep two" in done.stdout, done.stdout + done.stderr
        missing = cli("submit", "train.py", "-r", "nope.txt", "--queue", worker.queues)
        assert (
            missing.returncode != 0
            and "nope.txt is not a file in this repository" in missing.stderr
        )
        both = cli("submit", "train.py", "-r", "requirements.txt", "--req", "six")
        assert both.returncode != 0 and "not both" in both.stderr
    finally:
        os.chdir(tmp_path)
