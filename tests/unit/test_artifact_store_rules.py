"""The artifact root's URL checked before any upload, its errors explained (naming the setting
and the fix), and the write check a worker makes, on real local folders."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from celery_agent.artifact_store import check_url, default_url, explain, open_url, probe
from celery_agent.errors import ConfigError


def test_an_unknown_scheme_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        check_url("nosuchscheme://bucket/x")
    text = str(info.value)
    assert "nosuchscheme://" in text and "CELERY_AGENT_ARTIFACT_ROOT" in text


def test_a_scheme_whose_package_is_missing_names_the_package(monkeypatch) -> None:
    import fsspec

    def missing(protocol: str):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(ConfigError) as info:
        check_url("s3://bucket/prefix")
    assert "s3fs" in str(info.value) and "pip install s3fs" in str(info.value)


def test_a_password_is_refused_and_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        check_url("s3://AKIA:hunter2@bucket/x")
    assert "hunter2" not in str(info.value) and "s3://bucket/x" in str(info.value)


def test_file_urls_and_the_default_root_open(tmp_path: Path) -> None:
    check_url(tmp_path.as_uri())
    fs, root = open_url(tmp_path.as_uri())
    assert Path(root) == tmp_path and fs.exists(root)
    assert default_url(None, tmp_path) == (tmp_path / "artifacts").as_uri()
    assert default_url("s3://b/p", tmp_path) == "s3://b/p"


def test_errors_are_explained_with_the_setting_and_the_fix() -> None:
    url = "s3://missing-bucket/runs"
    no_bucket = explain(FileNotFoundError("The specified bucket does not exist"), url)
    assert "bucket 'missing-bucket' does not exist" in no_bucket and "create it" in no_bucket
    denied = explain(PermissionError("Access Denied"), url)
    assert "no permission to write to s3://missing-bucket/runs" in denied
    refused = explain(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), url)
    assert "does not answer" in refused and "endpoint" in refused
    wrapped = OSError("upload failed")
    wrapped.__cause__ = type("EndpointConnectionError", (Exception,), {})("no route")
    assert "does not answer" in explain(wrapped, url)
    for text in (no_bucket, denied, refused):
        assert "artifact_root (CELERY_AGENT_ARTIFACT_ROOT)" in text
    assert explain(ValueError("odd"), url) == "ValueError: odd"


def test_probe_writes_and_removes_a_file(tmp_path: Path) -> None:
    assert probe((tmp_path / "store").as_uri()) is None
    assert list((tmp_path / "store" / ".probe").iterdir()) == [], "the probe file is removed"
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store's folder should be")
    reason = probe((blocker / "store").as_uri())
    assert reason is not None and "a-file" in reason and "artifact_root" in reason
    assert "fsspec knows no" in (probe("nosuchscheme://x") or "")
