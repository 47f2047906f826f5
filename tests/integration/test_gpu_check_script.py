"""scripts/gpu-check is run by a test: on a machine without an NVIDIA GPU it must SKIP and exit 0."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_gpu_check_skips_cleanly_without_a_gpu():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu-check")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no NVIDIA GPU found" in done.stdout and "SKIP" in done.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU")
def test_gpu_check_passes_on_a_gpu_machine():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu-check")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "gpu-check: PASS" in done.stdout, done.stdout[-4000:]
