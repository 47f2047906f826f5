"""Importing the package is cheap, and ``celery_agent.app`` is always the Celery app: however the
app module gets loaded first, ``celery -A celery_agent`` and ``from celery_agent import app`` find
the app, not the module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; what it left in ``result`` (a dict), as JSON."""
    probe = f"import json, sys\nresult = {{}}\n{code}\nprint(json.dumps(result))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_package_or_the_spec_loads_neither_celery_nor_the_bootsteps():
    got = loaded_after(
        "import celery_agent\nfrom celery_agent import TaskSpec\n"
        "result['celery'] = 'celery' in sys.modules\n"
        "result['worker'] = 'celery_agent.worker' in sys.modules\n"
        "result['app'] = 'celery_agent.app' in sys.modules"
    )
    assert got == {"celery": False, "worker": False, "app": False}


@pytest.mark.parametrize(
    "first",
    [
        "import celery_agent",  # the attribute reached first (celery -A, from celery_agent import app)
        "import celery_agent.tasks",  # the app module loaded by another module first
        "from celery_agent.app import get_store",
        "from celery_agent import submit_task",
    ],
)
def test_the_package_attribute_app_is_the_celery_app(first):
    got = loaded_after(
        f"{first}\nimport celery_agent\nfrom celery import Celery\n"
        "from celery.app.utils import find_app\n"
        "from celery_agent import app\n"
        "result['attribute'] = isinstance(celery_agent.app, Celery)\n"
        "result['imported'] = app is celery_agent.app\n"
        "result['found'] = find_app('celery_agent') is celery_agent.app\n"
        "result['worker'] = 'celery_agent.worker' in sys.modules\n"
        "result['step'] = sorted(map(str, app.steps['worker']))"
    )
    assert got == {"attribute": True, "imported": True, "found": True, "worker": False,
                   "step": ["celery_agent.worker:AgentStep"]}  # fmt: skip
