"""The place named by ``artifact_root``: its URL, its fsspec filesystem, and what goes wrong there.

``artifact_root`` is any fsspec URL. Credentials come from the environment or the config files of
the library behind the scheme (for ``s3://``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` or ``FSSPEC_S3_ENDPOINT_URL``, ``~/.aws/credentials``), never from a spec or a
record: a URL written with ``user:password@`` is refused and never shown. Errors the store raises
are turned into one line that names the setting and the fix (:func:`explain`): a bucket that does
not exist, no permission to write, a store that does not answer.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

logger = logging.getLogger(__name__)

SETTING = "artifact_root (CELERY_AGENT_ARTIFACT_ROOT)"
PROBE_DIR = ".probe"  #: where a worker writes and removes a small file to check the root
#: the package that gives fsspec each scheme's filesystem, for the install hint
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
            "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub", "sftp": "paramiko",
            "ssh": "paramiko", "webdav": "webdav4", "oci": "ocifs"}  # fmt: skip
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oci", "oss"})
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ClientConnectorError", "ServerTimeoutError", "ConnectionClosedError",
                "ProxyConnectionError")  # fmt: skip


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part (what logs and records may show)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.hostname or "").geturl()


def refuse_password(url: str) -> None:
    """Raise a ConfigError when ``url`` carries a password (it would end up in records)."""
    if urlsplit(url).password is not None:
        raise ConfigError(
            f"artifact_root {safe_url(url)!r} carries a password",
            "give credentials through the environment or the storage library's config file",
        )


def check_url(url: str) -> None:
    """Raise a ConfigError naming ``artifact_root`` and the fix when ``url`` carries a password,
    names a scheme fsspec does not know, or one whose package is not installed. No I/O."""
    refuse_password(url)
    import fsspec
    from fsspec.registry import known_implementations

    scheme = urlsplit(url).scheme or "file"
    if scheme not in fsspec.available_protocols() and scheme not in known_implementations:
        raise ConfigError(
            f"artifact_root {safe_url(url)!r}: fsspec knows no {scheme}:// filesystem",
            f"set {SETTING} to a file:// path or an s3://, gs://, ... URL",
        )
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = PACKAGES.get(scheme, f"the fsspec package for {scheme}://")
        raise ConfigError(
            f"artifact_root {safe_url(url)!r} needs {package}, which is not installed here",
            f"pip install {package} (or celery-agent[s3] for s3://), or set {SETTING} to another "
            "store",
        ) from None


def open_url(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the root path in it; a ConfigError naming the setting
    when the URL is wrong (see :func:`check_url`) or the filesystem cannot be made."""
    check_url(url)
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError, TypeError) as err:
        raise ConfigError(
            f"artifact_root {safe_url(url)!r} cannot be opened: {err}",
            f"check {SETTING} and the storage library's settings",
        ) from None
    return fs, str(root)


def kind(err: BaseException) -> str:
    """What kind of failure ``err`` is: ``config``, ``unreachable``, ``no-bucket``, ``denied``,
    ``not-a-folder`` (each one that another try, or another file, would meet again), else ``""``."""
    text = str(err)
    if isinstance(err, ConfigError):
        return "config"
    if _unreachable(err):
        return "unreachable"
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return "no-bucket"
    if isinstance(err, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return "denied"
    if isinstance(err, (NotADirectoryError, FileExistsError, IsADirectoryError)):
        return "not-a-folder"
    return ""


def explain(err: BaseException, url: str) -> str:
    """One line for a failure of the store at ``url``: what went wrong, naming the setting and
    the fix (a bucket that does not exist, no permission, a store that does not answer)."""
    where, text, name = safe_url(url), str(err) or type(err).__name__, type(err).__name__
    bucket = urlsplit(url).netloc
    return {
        "config": text,
        "unreachable": f"the store at {where} does not answer ({name}: {text}); check the "
        f"endpoint and the network, or set {SETTING} to a store this worker reaches",
        "no-bucket": f"bucket {bucket!r} does not exist ({text}); create it, or set {SETTING} "
        "to a bucket that exists",
        "denied": f"no permission to write to {where} ({text}); give this worker's credentials "
        f"write access there, or set {SETTING} to a place it can write",
        "not-a-folder": f"cannot write under {where} ({name}: {text}); set {SETTING} to a "
        "folder this worker can create and write",
    }.get(kind(err), f"{name}: {text}")


def makes_folders(fs: Any) -> bool:
    """Whether folders must be made before files are written on ``fs`` (not on an object store,
    where making one would create a bucket that should have been there)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return not any(p in OBJECT_STORES for p in protocols)


def probe(url: str) -> str | None:
    """Write a small file under ``{url}/.probe/`` and remove it: None when that works, else the
    reason (see :func:`explain`). For a worker to check its store as it starts."""
    try:
        fs, root = open_url(url)
        path = f"{root.rstrip('/')}/{PROBE_DIR}/{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        if makes_folders(fs):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as out:
            out.write(b"celery-agent checks that it can write here\n")
        fs.rm_file(path)
    except Exception as err:
        return explain(err, url)
    return None


def default_url(artifact_root: str | None, home: os.PathLike[str]) -> str:
    """The root in force: the ``artifact_root`` setting, else ``{home}/artifacts`` as a file URL."""
    from pathlib import Path

    return artifact_root or (Path(home) / "artifacts").resolve().as_uri()


def _unreachable(err: BaseException) -> bool:
    seen: BaseException | None = err
    for _ in range(5):  # the cause chain: s3fs wraps botocore, which wraps aiohttp
        if seen is None:
            return False
        if type(seen).__name__ in _UNREACHABLE or isinstance(seen, (TimeoutError, ConnectionError)):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                        errno.ENETUNREACH):  # fmt: skip
            return True
        seen = seen.__cause__ or seen.__context__
    return False
