"""The runs pages inside Flower, in a real headless Chromium: a real Flower (started the plain
Celery way), a real worker, real runs. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import base64
import json
import textwrap
import time
import urllib.error
import urllib.request
import uuid

import pytest
from flower_support import ARTIFACTS, get, wait_state

from celery_agent import RunHandle, TaskSpec, submit

pytestmark = pytest.mark.integration

#: prints, waits for its trigger file, prints the mark with the time, then naps until cancelled
WAITER = textwrap.dedent(
    """\
    import os, time
    print("started", flush=True)
    trigger = os.environ["TRIGGER"]
    while not os.path.exists(trigger):
        time.sleep(0.01)
    print("MARK", os.environ["MARK"], flush=True)
    time.sleep(120)
    """
)


def _status(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, bytes(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, bytes(err.read())


def test_flower_started_the_plain_way_links_its_workers_page_to_the_runs_table(
    plain_flower, browser, worker, make_repo
):
    repo = make_repo({"hello.py": "print('hello from the table')\n"})
    done = submit(TaskSpec(repo=str(repo), entry="hello.py", executor="local",
                           queue=worker.queues, name=f"table-{uuid.uuid4().hex[:6]}"))  # fmt: skip
    assert done.wait(90)["state"] == "succeeded"
    browser.open(plain_flower + "/workers")  # (Flower started as `celery -A celery_agent flower`)
    href = browser.wait("[...document.querySelectorAll('nav a')].filter(a => a.textContent.trim() "
                        "=== 'Runs').map(a => a.getAttribute('href'))[0]")  # fmt: skip
    assert href == "/celery-agent/runs"
    browser.click("nav a[href='/celery-agent/runs']")
    browser.wait(f"!!document.querySelector('tr[data-run=\"{done.id}\"]')", 15)
    row = browser.text(f"tr[data-run='{done.id}']")
    assert "succeeded" in row and done.info()["name"] in row
    browser.screenshot(ARTIFACTS / "flower-runs.png")


def test_a_running_runs_page_shows_a_printed_line_within_a_second_and_cancel_stops_it(
    plain_flower, browser, make_worker, make_repo, tmp_path
):
    w = make_worker(f"live-{uuid.uuid4().hex[:6]}", concurrency=1)
    trigger, mark = tmp_path / "go", uuid.uuid4().hex
    run = submit(TaskSpec(repo=str(make_repo({"wait.py": WAITER})), entry="wait.py",
                          executor="local", queue=w.queues, name="live-log",
                          env={"TRIGGER": str(trigger), "MARK": mark}, grace=2))  # fmt: skip
    try:
        wait_state(run, "running")
        browser.open(f"{plain_flower}/celery-agent/runs/{run.id}")
        browser.wait("document.getElementById('log').dataset.live === 'on' && "
                     "document.getElementById('log').textContent.includes('started')", 30)  # fmt: skip
        t0 = time.monotonic()
        trigger.touch()
        browser.wait(f"document.getElementById('log').textContent.includes('MARK {mark}')", 5, 0.01)
        latency = time.monotonic() - t0
        print(f"line printed -> shown on the page: {latency * 1000:.0f} ms")
        assert latency < 1.0, f"the line took {latency:.2f} s to show"
        browser.screenshot(ARTIFACTS / "flower-run.png")
        browser.click("#cancel")
        browser.click("#cancel")  # (the second click confirms)
        out = run.wait(60)
    finally:
        if run.state not in ("aborted", "succeeded", "failed"):
            run.cancel()
            run.wait(60)
    assert out["state"] == "aborted"
    browser.wait("document.getElementById('log').dataset.live === 'ended'", 15)
    browser.wait("document.getElementById('state').textContent === 'aborted'", 15)


def test_basic_auth_guards_the_pages_and_endpoints_and_url_prefix_places_them(make_flower, store):
    url = make_flower("--basic-auth=alice:s3cret", "--url_prefix=flower", plain=True, api=False)
    assert url.endswith("/flower")
    creds = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
    paths = ["/celery-agent/runs", "/celery-agent/api/runs", "/celery-agent/runs/x",
             "/celery-agent/api/runs/x", "/celery-agent/api/runs/x/log",
             "/celery-agent/api/runs/x/log/stream", "/celery-agent/hardware"]  # fmt: skip
    for path in paths:
        assert _status(url + path)[0] == 401, path
    assert _status(url + "/celery-agent/api/runs/x/cancel", "POST", body=b"{}")[0] == 401
    code, body = _status(url + "/celery-agent/api/runs?limit=5", headers=creds)
    assert code == 200 and "runs" in json.loads(body)
    code, body = _status(url + "/celery-agent/runs", headers=creds)
    assert code == 200 and b'href="/flower/celery-agent/static/ui.css"' in body
    root = url.removesuffix("/flower")
    assert _status(root + "/celery-agent/runs", headers=creds)[0] == 404  # only under the prefix
    code, body = _status(url + "/workers", headers=creds)
    assert code == 200 and b"/flower/celery-agent/runs" in body  # Flower's bar links there


def test_an_unknown_run_id_gets_a_404_page_that_says_so(plain_flower, browser):
    code, body = _status(plain_flower + "/celery-agent/api/runs/no-such-run")
    assert code == 404 and "no-such-run" in json.loads(body)["error"]
    browser.open(plain_flower + "/celery-agent/runs/no-such-run")
    assert "404" in browser.text("h1")
    assert "no-such-run" in browser.text("#what")


def test_rerun_needs_the_xsrf_token_and_artifacts_download_through_flower(
    plain_flower, browser, worker, make_repo
):
    script = textwrap.dedent(
        """\
        import argparse, os, pathlib
        p = argparse.ArgumentParser()
        p.add_argument('--lr', type=float, default=1.0)
        lr = p.parse_args().lr
        print('lr is', lr)
        out = pathlib.Path(os.environ['CELERY_AGENT_OUTPUT_DIR'])
        (out / 'plots').mkdir()
        (out / 'plots' / 'model.txt').write_text(f'weights for lr {lr}')
        """
    )
    first = submit(TaskSpec(repo=str(make_repo({"p.py": script})), entry="p.py",
                            executor="local", queue=worker.queues, params={"lr": 0.5}))  # fmt: skip
    assert first.wait(90)["state"] == "succeeded"
    view = json.loads(get(f"{plain_flower}/celery-agent/api/runs/{first.id}"))
    assert [f["path"] for f in view["artifacts"]["files"]] == ["plots/model.txt"]
    kept = get(f"{plain_flower}/celery-agent/api/runs/{first.id}/artifacts/plots/model.txt")
    assert kept == b"weights for lr 0.5"
    code, body = _status(f"{plain_flower}/celery-agent/api/runs/{first.id}/artifacts/other.txt")
    assert code == 404 and "other.txt" in json.loads(body)["error"]
    api = f"{plain_flower}/celery-agent/api/runs/{first.id}"
    body = json.dumps({"params": {"lr": 0.25}}).encode()
    code, _ = _status(api + "/rerun", "POST", {"Content-Type": "application/json"}, body)
    assert code == 403  # no token
    token = uuid.uuid4().hex  # any token, as long as cookie and header agree
    headers = {"Content-Type": "application/json", "X-XSRFToken": token,
               "Cookie": f"_xsrf={token}"}  # fmt: skip
    code, _ = _status(
        api + "/rerun", "POST", dict(headers, **{"X-XSRFToken": uuid.uuid4().hex}), body
    )
    assert code == 403  # a token that is not the cookie's
    code, answer = _status(api + "/rerun", "POST", headers, body)
    assert code == 200, answer
    again = RunHandle(json.loads(answer)["run_id"], first.store)
    out = again.wait(90)
    assert out["state"] == "succeeded" and again.info()["spec"]["params"] == {"lr": 0.25}
    assert "lr is 0.25" in "\n".join(again.logs())
    assert get(f"{plain_flower}/celery-agent/api/runs/{again.id}/artifacts/plots/model.txt") == (
        b"weights for lr 0.25"
    )
    code, answer = _status(api + "/rerun", "POST", headers, b"{not json")
    assert code == 400 and "not JSON" in json.loads(answer)["error"]
    browser.open(f"{plain_flower}/celery-agent/runs/{first.id}")  # the page's own token
    browser.wait("document.getElementById('rerun-params').value.includes('0.5')", 15)
    browser.click("#rerun-open")
    browser.eval("document.getElementById('rerun-params').value = '{\"lr\": 0.125}'")
    browser.click("#rerun-go")
    third = browser.wait("(document.querySelector('#rerun-result a') || {}).textContent", 15)
    assert RunHandle(third, first.store).wait(90)["state"] == "succeeded"
    assert "lr is 0.125" in "\n".join(RunHandle(third, first.store).logs())


def test_a_200k_line_log_opens_at_its_tail_and_gives_earlier_lines_on_demand(
    plain_flower, browser, store
):
    run_id = f"biglog-{uuid.uuid4().hex[:8]}"
    store.create_run(run_id, {"entry": "big.py", "repo": "/nowhere"}, "q")
    pipe = store.r.pipeline(transaction=False)
    for start in range(0, 200_000, 500):
        store.append_log(run_id, [f"line {i}" for i in range(start, start + 500)], pipe=pipe)
    pipe.execute()
    store.transition(run_id, "succeeded", exit_code=0)
    t0 = time.monotonic()
    browser.open(f"{plain_flower}/celery-agent/runs/{run_id}")
    browser.wait("document.getElementById('log').dataset.live === 'ended'", 20)
    opened = time.monotonic() - t0
    text = browser.text("#log")
    assert text.startswith("line 198000\n") and text.endswith("line 199999\n")  # the tail only
    browser.click("#earlier")
    browser.wait("document.getElementById('log').textContent.startsWith('line 196000\\n')", 10)
    assert browser.text("#log").count("\n") == 4000
    print(f"200k-line log page: tail shown in {opened:.2f} s")
    assert opened < 10
    full = get(f"{plain_flower}/celery-agent/api/runs/{run_id}/log?format=text", timeout=30)
    assert full.count(b"\n") == 200_000 and full.startswith(b"line 0\n")


def test_the_runs_endpoint_filters_sorts_and_pages_from_redis(plain_flower, store, browser):
    tag = uuid.uuid4().hex[:8]
    ids = []
    for i in range(7):
        run_id = f"tbl-{tag}-{i}"
        spec = {"entry": "t.py", "repo": "/r", "name": f"tbl-{tag}-{i}", "tags": [tag, f"n{i % 2}"]}
        store.create_run(
            run_id, spec, f"q-{tag}", user="carol" if i % 2 else "dave", tags=[tag, f"n{i % 2}"]
        )
        ids.append(run_id)
        time.sleep(0.002)  # (distinct submit times)
    store.transition(ids[3], "running", worker="w1")
    api = f"{plain_flower}/celery-agent/api/runs"
    data = json.loads(get(f"{api}?tag={tag}&limit=3"))
    assert [r["run_id"] for r in data["runs"]] == ids[::-1][:3] and data["next"]
    more = json.loads(get(f"{api}?tag={tag}&limit=3&cursor={data['next']}"))
    assert [r["run_id"] for r in more["runs"]] == ids[::-1][3:6]
    last = json.loads(get(f"{api}?tag={tag}&limit=3&cursor={more['next']}"))
    assert [r["run_id"] for r in last["runs"]] == [ids[0]] and last["next"] is None
    carol = json.loads(get(f"{api}?tag={tag}&user=carol"))["runs"]
    assert sorted(r["run_id"] for r in carol) == sorted(ids[1::2])
    running = json.loads(get(f"{api}?queue=q-{tag}&state=running"))["runs"]
    assert [r["run_id"] for r in running] == [ids[3]] and running[0]["worker"] == "w1"
    oldest = json.loads(get(f"{api}?tag={tag}&sort=submitted&limit=2"))["runs"]
    assert [r["run_id"] for r in oldest] == ids[:2]
    by_name = json.loads(get(f"{api}?tag={tag}&sort=-name&limit=2"))["runs"]
    assert [r["run_id"] for r in by_name] == [ids[6], ids[5]]
    code, body = _status(f"{api}?sort=colour")
    assert code == 400 and "colour" in json.loads(body)["error"]
    losses = [3.0, 1.0, 2.0, 0.0, 6.0, 5.0, 4.0]  # the last loss each run reported
    for run_id, loss in zip(ids, losses, strict=True):
        for step, value in enumerate((9.0, loss)):
            store.r.xadd(
                store.keys.metrics(run_id), {"n": "loss", "v": repr(value), "s": str(step)}
            )
    rows = json.loads(get(f"{api}?tag={tag}&metrics=loss,acc"))["runs"]
    assert [r["metrics"] for r in rows] == [{"loss": x, "acc": None} for x in losses[::-1]]
    browser.open(f"{plain_flower}/celery-agent/runs?tag={tag}&metrics=loss")
    browser.wait(f"document.querySelectorAll('tr[data-run^=\"tbl-{tag}\"]').length === 7", 15)
    browser.click("#runs thead th:last-child")  # the loss column: this page, highest first
    order = browser.eval(
        "[...document.querySelectorAll('#runs tbody tr')].map(tr => tr.dataset.run)"
    )
    assert order == [ids[i] for i in (4, 5, 6, 0, 2, 1, 3)]
    browser.screenshot(ARTIFACTS / "flower-runs-metrics.png")
