"""The runs pages' pure parts: table rows and filters, the run view, the diff stat, the Flower
command detection and the navigation links added to Flower's own template."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_agent.errors import SpecError
from celery_agent.flower import flower_command
from celery_agent.runindex import RunQuery, matches, row
from celery_agent.runview import diff_stat, run_view

DIFF = """diff --git a/train.py b/train.py
index 1..2 100644
--- a/train.py
+++ b/train.py
@@ -1,2 +1,3 @@
-lr = 1
+lr = 2
+epochs = 3
 print(lr)
diff --git a/data.bin b/data.bin
new file mode 100644
Binary files /dev/null and b/data.bin differ
"""


def test_a_row_has_the_duration_from_start_to_end_and_none_for_a_gone_record():
    raw = {"state": "succeeded", "name": "n", "running_at": "100.0", "succeeded_at": "130.5",
           "attempt": "2", "tags": '["a", "b"]', "gpus": "[0, 1]", "exit_code": "0"}  # fmt: skip
    got = row("r1", raw, now=999)
    assert got is not None
    assert (got["duration"], got["attempt"], got["tags"], got["gpus"]) == (
        30.5,
        2,
        ["a", "b"],
        [0, 1],
    )
    running = row("r2", {"state": "running", "running_at": "100"}, now=160)
    assert running is not None and running["duration"] == 60 and running["ended_at"] is None
    assert row("r3", {"state": None}, now=1) is None
    parked = row("r4", {"state": "queued", "waiting": "user a at quota (2/2 runs)"}, now=1)
    assert parked is not None and parked["waiting"] == "user a at quota (2/2 runs)"
    gone = row("r5", {"state": "running", "waiting": "user a at quota (2/2 runs)"}, now=1)
    assert gone is not None and gone["waiting"] == "", "a run that started waits for nothing"


def test_filters_match_exactly_except_name_by_part_and_tag_among_tags():
    r = {
        "state": "failed",
        "queue": "gpu0",
        "name": "ResNet-50 sweep",
        "tags": ["exp1"],
        "user": "ann",
    }
    assert matches(r, {"state": "failed", "queue": "gpu0", "name": "resnet", "tag": "exp1"})
    assert not matches(r, {"queue": "gpu"})
    assert not matches(r, {"tag": "exp"})
    assert not matches(r, {"user": "bob"})


def test_a_bad_query_says_what_is_wrong_and_what_to_give():
    with pytest.raises(SpecError, match="sort='colour'") as err:
        RunQuery.from_args({"sort": "colour"})
    assert "duration" in str(err.value.hint)
    with pytest.raises(SpecError, match="limit"):
        RunQuery.from_args({"limit": "0"})
    with pytest.raises(SpecError, match="not a number"):
        RunQuery.from_args({"limit": "many"})
    q = RunQuery.from_args({"state": " running ", "metrics": "loss, acc,", "sort": "-duration"})
    assert q.filters == {"state": "running"} and q.metrics == ("loss", "acc")


def test_the_diff_stat_counts_lines_per_file_and_marks_binary_files():
    stat = diff_stat(DIFF)
    assert stat["files"] == [{"path": "train.py", "added": 2, "removed": 1},
                             {"path": "data.bin", "added": 0, "removed": 0, "binary": True}]  # fmt: skip
    assert (stat["added"], stat["removed"], stat["bytes"]) == (2, 1, len(DIFF))


def test_the_run_view_keeps_the_masked_spec_and_redacts_urls():
    record = {
        "run_id": "r", "state": "failed", "running_at": 10.0, "failed_at": 25.0, "error": "boom",
        "params": {"lr": 0.1}, "freeze": ["numpy==2.0.0"],
        "spec": {"repo": "https://user:tok@git.example/x.git", "entry": "t.py", "diff": DIFF,
                 "env": {"API_KEY": "***"}, "secret_env": ["API_KEY"], "params": {"lr": 0.1}},
        "artifacts": {"status": "uploaded", "count": 1, "bytes": 3, "url": "s3://k:s@b/runs/r",
                      "files": [{"path": "m.pt", "size": 3, "sha256": "ab"}]},
    }  # fmt: skip
    view = run_view(record, now=100)
    assert view["repo"] == "https://git.example/x.git"
    assert view["spec"]["env"] == {"API_KEY": "***"} and "diff" not in view["spec"]
    assert view["duration"] == 15 and view["finished"] and view["error"] == "boom"
    assert view["packages"] == ["numpy==2.0.0"] and view["diff"]["added"] == 2
    assert view["artifacts"]["url"] == "s3://b/runs/r"
    assert view["artifacts"]["files"] == [{"path": "m.pt", "size": 3, "sha256": "ab"}]


@pytest.mark.parametrize(
    ("argv", "flower"),
    [
        (["celery", "-A", "celery_agent", "flower", "--port=5555"], True),
        (["celery", "--app=celery_agent", "-b", "redis://x", "flower"], True),
        (["celery-agent", "flower"], True),
        (["celery", "-A", "celery_agent", "worker", "-Q", "flower"], False),
        (["celery", "-A", "flower", "worker"], False),
        (["celery"], False),
    ],
)
def test_the_flower_command_is_told_from_a_worker_by_its_first_word(argv, flower):
    assert flower_command(argv) is flower


def test_flowers_navigation_bar_gets_the_links_under_its_url_prefix():
    flower_templates = pytest.importorskip("flower").__file__
    from tornado.template import Template

    from celery_agent.flowerui.navbar import with_links

    text = (Path(flower_templates).parent / "templates" / "navbar.html").read_text()
    changed = with_links(text)
    assert changed != text and with_links(changed) == changed  # (added once)

    class Options:
        url_prefix = "flower"

    class App:
        options = Options()

    class Handler:
        application = App()

    snippet = changed[changed.index('<li class="nav-item"><a class="nav-link" href="{{') :]
    snippet = snippet[: snippet.index("</ul>")]
    html = Template(snippet).generate(handler=Handler()).decode()
    assert 'href="/flower/celery-agent/runs">Runs<' in html
    assert 'href="/flower/celery-agent/hardware">Hardware<' in html
    assert 'href="/flower/celery-agent/searches">Searches<' in html
    assert with_links("<div>no list here</div>") == "<div>no list here</div>"


def test_the_run_page_says_whose_run_it_is_and_what_a_parked_run_waits_for():
    from celery_agent.runview import run_view

    record = {"run_id": "r", "state": "queued", "user": "a", "project": "cv",
              "waiting": "fair order: user b goes first"}  # fmt: skip
    view = run_view(record, now=1)
    assert (view["project"], view["waiting"]) == ("cv", "fair order: user b goes first")
    assert run_view(record | {"state": "running"}, now=1)["waiting"] is None
