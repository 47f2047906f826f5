"""Package indexes through a real worker and real uv installs, from local indexes laid out like the
real ones (PEP 503 folders served from file://): the worker's mirror, ``${NAME}`` credentials from
its environment, and the torch build that fits its hardware."""

from __future__ import annotations

import base64
import functools
import html
import http.server
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_wheel

from celery_agent.executors import ExecutorSettings, get_executor
from celery_agent.executors import indexes as indexes_mod
from celery_agent.executors.indexes import Hardware, IndexDefaults
from celery_agent.spec import TaskSpec
from celery_agent.tasks import submit_task

pytestmark = pytest.mark.integration

TORCH_SCRIPT = "import torch, cademo; print('torch', torch.__version__, 'cademo', cademo.VERSION)\n"


def simple_index(root: Path, wheels: dict[str, list[tuple[str, str]]]) -> Path:
    """A PEP 503 index: root/<project>/index.html linking its wheels (written beside it)."""
    for project, versions in wheels.items():
        folder = root / project
        links = []
        for version, code in versions:
            wheel = write_wheel(folder, project, version, code)
            links.append(f'<a href="{html.escape(wheel.name)}">{html.escape(wheel.name)}</a>')
        (folder / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>\n")
    projects = "".join(f'<a href="{p}/">{p}</a>' for p in wheels)
    (root / "index.html").write_text(f"<html><body>{projects}</body></html>\n")
    return root


@pytest.fixture
def torch_indexes(tmp_path: Path) -> Path:
    """Like download.pytorch.org/whl: one index per build, torch with a local version label."""
    root = tmp_path / "whl"
    for variant in ("cpu", "cu121", "cu124"):
        version = f"2.0.0+{variant}"
        simple_index(root / variant, {"torch": [(version, f"__version__ = '{version}'\n")]})
    return root


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A company mirror with cademo (and no torch: torch must come from the torch index)."""
    return simple_index(tmp_path / "mirror", {"cademo": [("1.0", "VERSION = 'mirror'\n")]})


def test_a_worker_without_gpus_installs_the_cpu_torch_from_its_mirror_setup(
    make_worker, make_repo, torch_indexes: Path, mirror: Path, store
) -> None:
    queue = f"idx-{uuid.uuid4().hex[:6]}"
    make_worker(
        queue,
        concurrency=1,
        CELERY_AGENT_INSTALLER="uv",
        CELERY_AGENT_INDEX_URL=mirror.as_uri(),
        CELERY_AGENT_TORCH_INDEX_TEMPLATE=torch_indexes.as_uri() + "/{variant}",
        CA_TEST_MIRROR=str(mirror),
        CUDA_VISIBLE_DEVICES="",
    )
    repo = make_repo(
        {"train.py": TORCH_SCRIPT, "plain.py": "import cademo\nprint(cademo.VERSION)\n"}
    )
    spec = TaskSpec.parse(
        {
            "repo": str(repo),
            "entry": "train.py",
            "queue": queue,
            "requirements": ["torch", "cademo"],
        }
    )
    out = submit_task.delay(spec).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert "torch 2.0.0+cpu cademo mirror" in out["log_tail"]
    record = store.get(out["run_id"])
    assert record["torch_index"] == {"variant": "cpu", "url": torch_indexes.as_uri() + "/cpu"}
    log = "\n".join(store.read_log(out["run_id"])[1])
    assert f"torch from the cpu wheel index {torch_indexes.as_uri()}/cpu" in log

    # the spec names its own index with a ${NAME} the worker fills in: the record keeps the name
    own = TaskSpec.parse(
        {"repo": str(repo), "entry": "plain.py", "queue": queue, "requirements": ["cademo"]}
        | {"index_url": "file://${CA_TEST_MIRROR}"}
    )
    out = submit_task.delay(own).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert out["log_tail"][-1] == "mirror"
    assert store.get(out["run_id"])["spec"]["index_url"] == "file://${CA_TEST_MIRROR}"


class _AuthIndex(http.server.SimpleHTTPRequestHandler):
    """Serves a folder only to requests that carry user ``bot`` with password ``s3cret``."""

    expected = "Basic " + base64.b64encode(b"bot:s3cret").decode()

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def auth_mirror(mirror: Path) -> Iterator[str]:
    """The mirror over HTTP behind basic auth: its URL without credentials."""
    handler = functools.partial(_AuthIndex, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_password_from_the_workers_environment_reaches_the_index_and_nothing_else(
    make_worker, make_repo, auth_mirror: str, store
) -> None:
    queue = f"auth-{uuid.uuid4().hex[:6]}"
    make_worker(queue, concurrency=1, CELERY_AGENT_INSTALLER="uv", CA_MIRROR_TOKEN="s3cret")
    repo = make_repo({"plain.py": "import cademo\nprint(cademo.VERSION)\n"})
    fields = {"repo": str(repo), "entry": "plain.py", "queue": queue, "requirements": ["cademo"]}
    url = f"http://bot:${{CA_MIRROR_TOKEN}}@{auth_mirror}/"
    out = submit_task.delay(TaskSpec.parse(fields | {"index_url": url})).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert out["log_tail"][-1] == "mirror"
    record = store.get(out["run_id"])
    assert record["spec"]["index_url"] == url, "the record keeps the placeholder"
    log = "\n".join(store.read_log(out["run_id"])[1])
    assert "s3cret" not in log and "s3cret" not in json.dumps(record)
    assert f"--index-url http://bot:***@{auth_mirror}/" in log

    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"http://{auth_mirror}/cademo/", timeout=10)  # (it does ask)


def test_a_gpu_worker_gets_the_cuda_build_its_driver_supports(
    tmp_path: Path, torch_indexes: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(indexes_mod, "local_hardware", lambda: Hardware(gpus=1, cuda=(12, 2)))
    template = torch_indexes.as_uri() + "/{variant}"
    settings = ExecutorSettings(
        cache_root=tmp_path / "envs",
        installer="uv",
        indexes=IndexDefaults(mirror.as_uri(), (), template, ("cu118", "cu121", "cu124")),
    )
    source = tmp_path / "src"
    source.mkdir()
    spec = TaskSpec.parse({"repo": ".", "entry": "train.py", "requirements": ["torch"]})
    lines: list[str] = []
    prepared = get_executor("venv", settings).prepare(spec, source, lines.append)
    assert "torch==2.0.0+cu121" in prepared.freeze
    assert prepared.facts["torch_index"]["variant"] == "cu121"
    assert any("--extra-index-url " + torch_indexes.as_uri() + "/cu121" in line for line in lines)
