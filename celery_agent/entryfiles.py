"""The files of an environment cache entry: JSON written atomically, trees removed out of sight,
sizes that count a hard-linked file once."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically: a temporary sibling renamed over the target."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def read_json_or_empty(path: Path) -> dict[str, Any]:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def remove_tree(path: Path) -> None:
    """Remove a directory: renamed aside first, so no reader sees a half-removed entry."""
    if not path.exists():
        return
    trash = path.with_name(f"{path.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def tree_sizes(path: Path) -> tuple[int, int]:
    """Bytes of the files under ``path``, each inode counted once (symlinks counted, not
    followed), and how many of them are in files with other links (shared with the installer's
    cache or other environments: removing this tree does not free them)."""
    total = shared = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                shared += st.st_size
            total += st.st_size
    return total, shared
