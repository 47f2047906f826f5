"""One file copied from a store to this machine: in chunks, checked, never seen half-written.

A local (or mounted) store's file is copied by the kernel and hashed from the page cache; a
remote store's is read in chunks, hashed as it arrives, with a cancel seen between chunks. The
bytes go to a hidden sibling of the target (``.NAME.part-XXXX``) that is renamed over it only
once the whole file arrived and matched its sha256 and size, so a reader of the target sees the
old file or the new one, and a copy cut short (a cancel, a killed process) leaves no target.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 4 * 2**20  #: bytes read and written at a time


class Mismatch(ValueError):
    """The copy's bytes are not what the manifest (sha256) or the store (size) said."""


def copy_checked(
    fs: Any,
    remote: str,
    target: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    check: Callable[[], None] = lambda: None,
    progress: Callable[[int], None] = lambda _: None,
) -> int:
    """Copy ``remote`` (a path in the fsspec filesystem ``fs``) to ``target``; returns its size.

    ``check`` runs before each chunk (it raises to stop the copy), ``progress`` is told each
    chunk's length. Raises :class:`Mismatch` when ``sha256`` or ``size`` is given and differs,
    OSError (or the store's own error) when it cannot be read."""
    part = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        copy = _kernel_copy if _is_local(fs) else _chunked_copy
        hexdigest, got = copy(fs, remote, part, check, progress)
        if sha256 and hexdigest != sha256:
            raise Mismatch(f"{remote} does not match its manifest's sha256")
        if size is not None and got != size:
            raise Mismatch(f"got {got} bytes of {remote}, expected {size}")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return got


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol


def _kernel_copy(
    fs: Any, remote: str, part: Path, check: Callable[[], None], progress: Callable[[int], None]
) -> tuple[str, int]:
    """A file of a local (or mounted) store: copied by the kernel, then hashed from the page
    cache (a cancel is seen before and after it)."""
    check()
    shutil.copyfile(remote, part)
    check()
    with part.open("rb") as src:
        hexdigest = hashlib.file_digest(src, "sha256").hexdigest()
    size = part.stat().st_size
    progress(size)
    return hexdigest, size


def _chunked_copy(
    fs: Any, remote: str, part: Path, check: Callable[[], None], progress: Callable[[int], None]
) -> tuple[str, int]:
    """A file of a remote store: read in chunks, hashed as it arrives, a cancel seen between."""
    digest, got = hashlib.sha256(), 0
    with fs.open(remote, "rb") as src, part.open("wb") as dst:
        while True:
            check()
            chunk = src.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            dst.write(chunk)
            got += len(chunk)
            progress(len(chunk))
    return digest.hexdigest(), got
