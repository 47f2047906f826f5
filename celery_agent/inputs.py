"""A run's inputs: files or folders the spec names by URL (``inputs={"model": URL}``).

``run://RUN/PATH`` is a file another run kept in the artifact store (``run://RUN/DIR/`` a folder
of them, ``run://RUN/`` all of them): it is found through that run's record (its store and
manifest), RUN being an id, a unique id prefix or a unique name. Any other URL (``file:///...``,
``s3://bucket/key`` with s3fs, ``https://...``) is read with fsspec. Each input resolves to a
:class:`Source`: where its files are read from, and a key that changes whenever their content
does (the manifest's sha256 for ``run://``; the store's etag, checksum, or size and mtime
otherwise, and for a kept file whose sha256 is not computed yet: :mod:`.digests`), so a machine
downloads the same content once (:mod:`.inputcache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .artifact_store import safe_url
from .artifacts import ArtifactStore, of_run
from .errors import AgentError, ConfigError, SpecError, StateError

logger = logging.getLogger(__name__)

RUN_SCHEME = "run"
ENV_PREFIX = "CELERY_AGENT_INPUT_"  #: + the input's name in capitals: its local path
MAP_ENV = "CELERY_AGENT_INPUTS"  #: the path of a JSON file mapping each name to its local path
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: the states of a run that ended (state.TERMINAL, which this layer does not import)
_ENDED = frozenset({"succeeded", "failed", "aborted", "timed_out", "lost"})
#: info() fields that change with a file's content, the first one present wins
_CONTENT_FIELDS = ("sha256", "checksum", "ETag", "etag", "md5Hash", "md5", "crc32c", "version_id")
#: info() fields that change when a file is written again
_TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created")

#: finds a run's record by what a person typed (id, unique prefix, unique name)
RecordLookup = Callable[[str], Mapping[str, Any]]


def field(name: str) -> str:
    """The spec field an input's errors name: ``inputs.NAME``."""
    return f"inputs.{name}"


def env_name(name: str) -> str:
    """The run's variable holding the local path of input ``name``."""
    return ENV_PREFIX + name.upper()


def cache_folders(run_env: Mapping[str, str]) -> list[str]:
    """The input cache folders holding the inputs named in a run's variables (what a container
    run mounts, read-only, at the same paths, so the paths and the JSON map hold there too)."""
    return sorted(
        {os.path.dirname(v) for k, v in run_env.items() if k.startswith(ENV_PREFIX) and v}
    )


def check_names(names: list[str]) -> None:
    """Raise ValueError for a name that is no variable name, or two that differ only in case."""
    for name in names:
        if not NAME.match(name):
            raise ValueError(
                f"input name {name!r} is not valid: use letters, digits and '_', starting with a "
                f"letter or '_' (it becomes the variable {ENV_PREFIX}NAME)"
            )
    upper: dict[str, str] = {}
    for name in names:
        if name.upper() in upper:
            raise ValueError(
                f"inputs {upper[name.upper()]!r} and {name!r} would share the variable "
                f"{env_name(name)}: rename one"
            )
        upper[name.upper()] = name


def check_url(name: str, url: str) -> str:
    """``url`` stripped, or a ValueError that names ``inputs.NAME`` and the fix: no scheme, an
    unknown scheme, a password written in the URL, ``run://`` without a run."""
    url = url.strip()
    parts = urlsplit(url)
    if not parts.scheme or len(parts.scheme) == 1:  # (C:/... is a path, not a URL)
        raise ValueError(
            f"{field(name)} {url!r} is not a URL: write file:///absolute/path, "
            "run://RUN_ID/path (a file an earlier run kept), s3://bucket/key, ..."
        )
    if parts.password is not None:
        raise ValueError(
            f"{field(name)} {safe_url(url)!r} carries a password: give credentials through "
            "the worker's environment or the storage library's config file"
        )
    if parts.scheme == RUN_SCHEME:
        if not parts.netloc:
            raise ValueError(f"{field(name)} {url!r} names no run: write run://RUN_ID/path")
        return url
    if parts.scheme not in known_schemes():
        raise ValueError(
            f"{field(name)} {url!r}: unknown URL scheme {parts.scheme!r}: use run://, file:// "
            "or a scheme fsspec knows (s3, gs, az, http, https, ...)"
        )
    return url


def known_schemes() -> frozenset[str]:
    """The URL schemes fsspec can open once their package is installed."""
    from fsspec.registry import known_implementations, registry

    return frozenset(known_implementations) | frozenset(registry)


@dataclass(frozen=True)
class RunRef:
    """A ``run://RUN/PATH`` URL taken apart: ``path`` "" is the whole run, ``folder`` when it
    ends with '/'."""

    run: str
    path: str
    folder: bool

    @classmethod
    def parse(cls, url: str) -> RunRef | None:
        """The reference ``url`` makes, or None when it is no ``run://`` URL."""
        parts = urlsplit(url)
        if parts.scheme != RUN_SCHEME:
            return None
        path = parts.path.strip("/")
        return cls(parts.netloc, path, not path or parts.path.endswith("/"))

    def url(self, run: str | None = None) -> str:
        """The URL again, with ``run`` (a full id) in place of what was written."""
        return f"{RUN_SCHEME}://{run or self.run}/{self.path}{'/' if self.folder and self.path else ''}"


@dataclass(frozen=True)
class Entry:
    """One file of an input: its full path in the filesystem, its path in the input's local
    folder ("" for a single-file input), its size and (``run://``, once computed) its sha256."""

    remote: str
    rel: str
    size: int | None
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """An input resolved: the filesystem its files are read from, the files, and its key."""

    name: str
    url: str  #: as given (without credentials)
    fs: Any  #: the fsspec filesystem
    entries: tuple[Entry, ...]
    folder: bool
    local_name: str  #: the file's or folder's name on this machine
    key: str  #: changes whenever the content does (sha256 hex of what identifies it)

    @property
    def size(self) -> int:
        """Bytes in all its files (those with a known size)."""
        return sum(e.size or 0 for e in self.entries)


def resolve(name: str, url: str, lookup: RecordLookup, root: str | None = None) -> Source:
    """The :class:`Source` of input ``name``; a SpecError naming ``inputs.NAME`` and the fix when
    it cannot be (unknown run, no such file, an unreachable store). ``root``: the artifact root
    as this machine reaches it, default the one the run recorded."""
    ref = RunRef.parse(url)
    if ref is not None:
        return _from_run(name, url, ref, lookup, root)
    return _from_url(name, url)


def _from_run(name: str, url: str, ref: RunRef, lookup: RecordLookup, root: str | None) -> Source:
    try:
        record, store, chosen = kept_files(name, url, ref, lookup, root)
    except AgentError:
        raise
    except Exception as err:  # the manifest of a big run, in a store it cannot reach
        raise SpecError(
            f"{field(name)} {url!r}: the run's manifest cannot be read: {type(err).__name__}: {err}",
            "check the worker's access to the artifact store (credentials, network, mounts)",
            field(name),
        ) from None
    fs, base = _open(name, store.run_url(str(record["run_id"])))
    prefix = f"{ref.path}/" if ref.folder and ref.path else ""
    entries = tuple(
        Entry(f"{base}/{f['path']}", str(f["path"])[len(prefix) :] if ref.folder else "",
              int(f["size"]), f.get("sha256") or None)
        for f in chosen
    )  # fmt: skip
    local = ref.path.rsplit("/", 1)[-1] or str(record["run_id"])
    ident = [[e.rel, e.sha256 or _stored(name, url, fs, e.remote)] for e in entries]
    return Source(name, url, fs, entries, ref.folder, local, _key(ident, local, ref.folder))


def _stored(name: str, url: str, fs: Any, remote: str) -> list[Any]:
    """What identifies a kept file whose sha256 is not (yet) known: where it is, and what the
    store says of its content (:func:`_stamp`: an ETag, else size and mtime)."""
    try:
        fs.invalidate_cache(remote)
        return [remote, _stamp(fs.info(remote))]
    except FileNotFoundError:
        raise SpecError(
            f"{field(name)} {url!r}: {remote} is no longer in the artifact store",
            "it was deleted (retention?): rerun the run that made it",
            field(name),
        ) from None
    except Exception as err:
        raise SpecError(
            f"{field(name)} {url!r}: the store does not answer for {remote}: "
            f"{type(err).__name__}: {err}",
            "check the worker's access to the artifact store (credentials, network, mounts)",
            field(name),
        ) from None


def kept_files(
    name: str, url: str, ref: RunRef, lookup: RecordLookup, root: str | None = None
) -> tuple[Mapping[str, Any], ArtifactStore, list[dict[str, Any]]]:
    """The record, store and manifest entries of the files ``ref`` names; a SpecError naming
    ``inputs.NAME`` when the run is unknown, kept nothing, or kept no such file or folder."""
    record = run_record(name, ref, lookup)
    try:
        store, files = of_run(dict(record), root)
    except ConfigError as err:
        raise SpecError(
            f"{field(name)} {url!r}: {err.message}", err.hint or "", field(name)
        ) from None
    chosen = pick(files, ref.path, ref.folder)
    if not chosen:
        what = f"folder {ref.path!r}" if ref.folder and ref.path else f"file {ref.path!r}"
        raise SpecError(
            f"{field(name)} {url!r}: run {record['run_id']} kept no {what}"
            + (" (it kept no files)" if not files else ""),
            f"see what it kept with `celery-agent artifacts {record['run_id']}`",
            field(name),
        )
    return record, store, chosen


def checked(given: Mapping[str, str], lookup: RecordLookup) -> dict[str, str]:
    """A spec's inputs checked where the submitter can: each ``run://`` run found and the path
    in its manifest (a SpecError naming ``inputs.NAME`` otherwise), and its RUN written as the
    full id, so the worker reads the run meant even if a name becomes ambiguous later."""
    out = dict(given)
    for name, url in given.items():
        ref = RunRef.parse(url)
        if ref is None:
            continue
        try:
            record = run_record(name, ref, lookup)
            if not uploading(record):  # (still uploading: its worker waits for it)
                kept_files(name, url, ref, _given(record))
        except SpecError:
            raise
        except Exception as err:  # a manifest in a store this machine cannot reach
            logger.info("%s not checked at submit: %s", field(name), err)
            continue
        out[name] = ref.url(str(record["run_id"]))
    return out


def run_record(name: str, ref: RunRef, lookup: RecordLookup) -> Mapping[str, Any]:
    """The record of the run ``ref`` names; a SpecError naming ``inputs.NAME`` when there is none
    or it has not ended yet (its outputs are uploaded when it ends)."""
    try:
        record = lookup(ref.run)
    except StateError as err:  # (an unknown run; a cancel or the stage's limit goes through)
        raise SpecError(
            f"{field(name)}: run {ref.run!r}: {err.message}", err.hint or "", field(name)
        ) from None
    if not record.get("artifacts") and record.get("state") in _ENDED:
        raise SpecError(
            f"{field(name)}: run {record.get('run_id')} kept no outputs: it ended "
            f"{record.get('state')} before it began",
            f"name a run that kept files (celery-agent artifacts RUN), or rerun {record.get('run_id')}",
            field(name),
        )
    if not record.get("artifacts"):
        raise SpecError(
            f"{field(name)}: run {record.get('run_id')} has kept no outputs yet "
            f"(state {record.get('state')}); they are uploaded when it ends",
            f"submit this run once it ended (celery-agent wait {record.get('run_id')})",
            field(name),
        )
    return record


def _given(record: Mapping[str, Any]) -> RecordLookup:
    """A lookup that finds ``record`` whatever it is asked for."""
    return lambda _ref: record


def uploading(record: Mapping[str, Any]) -> bool:
    """Whether the run's outputs are still being uploaded, in the background of its worker."""
    return (record.get("artifacts") or {}).get("status") == "uploading"


def pick(files: list[dict[str, Any]], path: str, folder: bool) -> list[dict[str, Any]]:
    """The manifest entries ``path`` names: the file itself, or every file under the folder."""
    if not folder:
        return [f for f in files if f["path"] == path]
    return [f for f in files if not path or str(f["path"]).startswith(f"{path}/")]


def _from_url(name: str, url: str) -> Source:
    fs, path = _open(name, url)
    fs.invalidate_cache()  # (a listing an earlier run cached in this process may be stale)
    try:
        info = fs.info(path)
        folder = info.get("type") == "directory"
        found = fs.find(path, detail=True) if folder else {path: info}
    except FileNotFoundError:
        raise SpecError(
            f"{field(name)} {safe_url(url)!r} does not exist",
            "check the URL (and that the worker can see that path or bucket)",
            field(name),
        ) from None
    except Exception as err:  # a store it cannot reach, no permission, no credentials
        raise SpecError(
            f"{field(name)} {safe_url(url)!r} cannot be read: {type(err).__name__}: {err}",
            "check the URL, and the worker's credentials and network for that store",
            field(name),
        ) from None
    base = path.rstrip("/")
    entries = tuple(
        Entry(p, p[len(base) + 1 :] if folder else "", _size(i))
        for p, i in sorted(found.items())
        if i.get("type", "file") != "directory"
    )
    local = base.rsplit("/", 1)[-1] or name
    ident = [url, *([e.rel, _stamp(found[e.remote])] for e in entries)]
    return Source(name, safe_url(url), fs, entries, folder, local, _key(ident, local, folder))


def _stamp(info: Mapping[str, Any]) -> list[Any]:
    """What tells this version of a file from another: a content hash or etag when the store
    gives one, else its size and modification time."""
    for name in _CONTENT_FIELDS:
        if info.get(name):
            return [name, str(info[name])]
    when = next((str(info[n]) for n in _TIME_FIELDS if info.get(n)), "")
    return ["size+mtime", info.get("size"), when]


def _size(info: Mapping[str, Any]) -> int | None:
    size = info.get("size")
    return int(size) if isinstance(size, int | float) else None


def _key(ident: Any, local: str, folder: bool) -> str:
    text = json.dumps([ident, local, folder], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _open(name: str, url: str) -> tuple[Any, str]:
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as err:
        raise SpecError(
            f"{field(name)} {safe_url(url)!r} cannot be opened: {err}",
            "install the fsspec package for its scheme on the worker (s3fs, gcsfs, ...)",
            field(name),
        ) from None
    return fs, str(path)
