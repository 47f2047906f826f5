"""capture.py without a git working copy."""

from __future__ import annotations

import pytest

from celery_agent.capture import capture
from celery_agent.errors import SourceError


def test_capture_of_a_missing_path_raises(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        capture(tmp_path / "missing")
