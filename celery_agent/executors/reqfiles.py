"""Requirements files: read with their ``-r``/``-c`` includes, hashed as one content.

An include resolves relative to the file that names it (as pip and uv read it), so
``examples/sklearn/requirements.txt`` holding ``-r ../common.txt`` names ``examples/common.txt``.
A file is read once per content: memoized by its stat stamp.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import SpecError
from ..filestamps import FileMemo, Stamp, file_stamp

#: an include line: -r/-c/--requirement/--constraint, with the path after a space, '=' or nothing
_INCLUDE = re.compile(r"^(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+|(?=[^\s-]))(\S+)")
#: a line naming a local folder to install: '-e .', '--editable=./pkg', '.', './libs/x', '/abs'
_LOCAL = re.compile(r"^(?:(?:-e|--editable)(?:\s*=\s*|\s+))?(\.{1,2}(?:/\S*)?|/\S+)$")


@dataclass(frozen=True)
class RequirementsFile:
    """One requirements file as installed: its plain lines, or the file with its includes."""

    path: Path  #: absolute
    sha256: str  #: of the file and every file it includes, in reading order
    lines: tuple[str, ...] = ()  #: normalized requirements when every line is plain
    includes: tuple[Path, ...] = ()  #: files named by -r/-c lines, recursively
    stamps: tuple[Stamp | None, ...] = ()  #: the includes' stamps when they were read
    empty: bool = False  #: no requirement, option or include in it
    local: tuple[Path, ...] = ()  #: folders its own lines install ('-e .', './pkg')

    def __bool__(self) -> bool:
        return not self.empty


def read(path: Path) -> RequirementsFile:
    """The requirements file at ``path`` with its includes; SpecError when one is missing."""
    found = _FILES.get(str(path))
    if found is not None and _includes_changed(found):
        stamp = file_stamp(str(path))
        found = None if stamp is None else _parse(str(path), stamp)
    if found is None:
        raise SpecError(
            f"requirements file {path} is not there",
            "give a path relative to the submit folder or the repository root",
        )
    return found


def _includes_changed(found: RequirementsFile) -> bool:
    return any(file_stamp(str(p)) != s for p, s in zip(found.includes, found.stamps, strict=True))


def _parse(path: str, stamp: Stamp) -> RequirementsFile:
    if not stat.S_ISREG(stamp[0]):
        raise SpecError(f"requirements file {path} is not a file", "name a requirements file")
    text = Path(path).read_text()
    includes = _includes(Path(path), text, seen={os.path.realpath(path)})
    digest = hashlib.sha256(text.encode())
    for inc in includes:
        digest.update(b"\0" + inc.read_bytes())
    lines = [line for line in (strip_comment(x) for x in text.splitlines()) if line]
    try:
        plain = normalize(lines) if not includes else ()
    except InvalidRequirement:
        plain = ()
    stamps = tuple(file_stamp(str(inc)) for inc in includes)
    local = tuple(_local_folder(Path(path), line) for line in lines if _LOCAL.match(line))
    resolved = Path(path).resolve()
    found = RequirementsFile(
        resolved, digest.hexdigest(), plain, tuple(includes), stamps, not lines
    )
    return dataclasses.replace(found, local=tuple(p for p in local if p is not None))


def _local_folder(path: Path, line: str) -> Path | None:
    match = _LOCAL.match(line)
    folder = (path.parent / match.group(1)).resolve() if match else None
    return folder if folder is not None and folder.is_dir() else None


def rewritten(found: RequirementsFile, drop: tuple[Path, ...], add: tuple[str, ...]) -> str:
    """The file's text without the lines installing the folders in ``drop``, its include paths
    made absolute (the copy lives elsewhere), and ``add`` at the end."""
    out = []
    for raw in found.path.read_text().splitlines():
        line = strip_comment(raw)
        if _LOCAL.match(line) and _local_folder(found.path, line) in drop:
            continue
        include = _INCLUDE.match(line)
        if include is not None and "://" not in include.group(1):
            target = (found.path.parent / os.path.expanduser(include.group(1))).resolve()
            line = line[: include.start(1)] + str(target) + line[include.end(1) :]
        out.append(line)
    return "\n".join([*out, *add]) + "\n"


#: requirements files by path, parsed again whenever the file's or one of its includes' stamps
#: changes (see :func:`read`)
_FILES: FileMemo[RequirementsFile] = FileMemo(_parse)


def _includes(path: Path, text: str, seen: set[str]) -> list[Path]:
    """Files named by -r/-c lines of ``text`` (relative to ``path``'s folder), recursively."""
    found: list[Path] = []
    for number, raw in enumerate(text.splitlines(), 1):
        match = _INCLUDE.match(strip_comment(raw))
        if match is None or "://" in match.group(1):
            continue
        target = (path.parent / os.path.expanduser(match.group(1))).resolve()
        if not target.is_file():
            raise SpecError(
                f"{path} line {number} includes {match.group(1)}, which is not there ({target})",
                "an -r or -c path is read relative to the file that names it; fix the path",
            )
        if str(target) in seen:
            continue
        seen.add(str(target))
        found += [target, *_includes(target, target.read_text(), seen)]
    return found


def strip_comment(line: str) -> str:
    """The line without its comment and surrounding blanks ('' for a comment line)."""
    line = line.strip()
    if line.startswith("#"):
        return ""
    return line.split(" #", 1)[0].strip()


def normalize(lines: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Requirements with canonical names, sorted and deduplicated (order and case do not matter).

    Raises InvalidRequirement for a line that is not a plain requirement (an option, a path).
    """
    out = set()
    for line in lines:
        req = Requirement(line)
        req.name = canonicalize_name(req.name)
        req.extras = {canonicalize_name(extra) for extra in req.extras}
        out.add(str(req))
    return tuple(sorted(out))
