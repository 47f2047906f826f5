"""The worker's package-index configuration, carried into a container (``docker.index_config``).

Many workers reach their package index the way their company does: through a proxy whose CA is in
the host's trust store, with settings in the environment (``PIP_CERT``, ``SSL_CERT_FILE``, proxies)
and in pip's and uv's config files (``cert``, ``extra-index-url``, ``find-links``, ``constraint``).
A container sees none of it. :func:`worker_index` gathers it once per prepare:

- the worker's ``PIP_*`` and ``UV_*`` variables (not those that say where to install or cache),
  the proxy variables and ``SSL_CERT_FILE`` / ``SSL_CLIENT_CERT`` / ``REQUESTS_CA_BUNDLE``;
- pip's config files in pip's own order (global, user, ``PIP_CONFIG_FILE``), merged into one file
  the container's pip reads through ``PIP_CONFIG_FILE``; uv's ``uv.toml`` (``UV_CONFIG_FILE``, else
  the user's, else the system's) through ``UV_CONFIG_FILE``;
- every file or folder those settings name (CA bundles, client certificates, constraint files,
  find-links folders, ``file://`` indexes: a folder named ``simple`` brings its parent, where its
  pages link to), mounted read-only at the same path, so the values need no rewriting.

Nothing secret is shown: :attr:`IndexConfig.summary` names files and variables, never values, and
:func:`mask` removes credentials from index URLs in the install's output.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..gitcmd import redact
from .docker_options import ROOT, Mount

logger = logging.getLogger(__name__)

#: where the merged config files are mounted in the container
INDEX_DIR = f"{ROOT}/index"
_PROXIES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
_PASSED = frozenset(
    (
        *_PROXIES,
        *(p.upper() for p in _PROXIES),
        "SSL_CERT_FILE",
        "SSL_CLIENT_CERT",
        "REQUESTS_CA_BUNDLE",
    )
)
#: the worker's variables that say where or how to install, which the container decides itself
_KEPT_OUT = frozenset(
    (
        "PIP_CONFIG_FILE", "PIP_CACHE_DIR", "PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER",
        "PIP_SRC", "PIP_REQUIRE_VIRTUALENV", "PIP_PYTHON", "PIP_LOG", "PIP_LOG_FILE",
        "UV_CONFIG_FILE", "UV_CACHE_DIR", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT", "UV_SYSTEM_PYTHON",
        "UV_PYTHON_INSTALL_DIR", "UV_TOOL_DIR", "UV_TOOL_BIN_DIR", "UV_INSTALL_DIR",
        "UV_PYTHON_DOWNLOADS", "UV_NO_CONFIG", "UV_WORKING_DIRECTORY", "UV_PROJECT",
    )
)  # fmt: skip
#: settings (config keys, and variables by the same name) whose values name files or folders
_PATH_KEYS = frozenset(
    (
        "cert", "client-cert", "constraint", "build-constraint", "find-links", "index-url",
        "extra-index-url", "default-index", "index", "override", "url", "ssl-cert-file",
        "ssl-client-cert", "requests-ca-bundle",
    )
)  # fmt: skip
#: host folders never mounted over the image's own, even when a setting names them
_TOO_BROAD = frozenset(("/", "/etc", "/usr", "/bin", "/lib", "/var", "/tmp", "/root", "/home"))
_NAMED = re.compile(r"^[A-Za-z0-9_.\-]+=(?=\S)")  # uv's 'name=url' index entries


@dataclass(frozen=True)
class IndexConfig:
    """What the container gets of the worker's index configuration."""

    env: dict[str, str] = field(default_factory=dict)  #: variables, values as on the worker
    mounts: tuple[Mount, ...] = ()  #: read-only, the named files at their own paths
    files: dict[str, str] = field(default_factory=dict)  #: container file name -> its content
    sources: tuple[str, ...] = ()  #: config files read and variables carried: names only
    secrets: tuple[str, ...] = ()  #: credentials found in index URLs, scrubbed from output

    def __bool__(self) -> bool:
        return bool(self.env or self.files)

    @property
    def summary(self) -> str:
        """Which configuration this is, fit for logs and records: file and variable names."""
        if not self:
            return "none"
        mounted = ", ".join(m.source for m in self.mounts) or "nothing"
        return f"{', '.join(self.sources)}; mounted read-only: {mounted}"

    def written(self, folder: Path) -> list[Mount]:
        """The mounts of the merged config files, written under ``folder`` (by content, 0600)."""
        out = []
        for name, text in sorted(self.files.items()):
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            path = folder / f"{digest}-{name}"
            if not path.exists():
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                os.replace(tmp, path)
            out.append(Mount(str(path), f"{INDEX_DIR}/{name}"))
        return out

    def mask(self, text: str) -> str:
        """``text`` with credentials in URLs removed and any known secret replaced by ``***``."""
        text = redact(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def worker_index(environ: Mapping[str, str] | None = None, etc: str = "/etc") -> IndexConfig:
    """The worker's index configuration, read from ``environ`` (default: this process's) and the
    config files pip and uv would read (the system's under ``etc``)."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if _carried(k)}
    sources = sorted(env)
    files: dict[str, str] = {}
    values = [(k, v) for k, v in env.items()]
    pip_files = [p for p in pip_config_files(environ, etc) if os.path.isfile(p)]
    if pip_files:
        text, pip_values = _merged_pip(pip_files)
        files["pip.conf"] = text
        env["PIP_CONFIG_FILE"] = f"{INDEX_DIR}/pip.conf"
        values += pip_values
        sources = [*pip_files, *sources]
    uv_file = uv_config_file(environ, etc)
    if uv_file is not None:
        text = Path(uv_file).read_text()
        files["uv.toml"] = text
        env["UV_CONFIG_FILE"] = f"{INDEX_DIR}/uv.toml"
        values += list(_toml_values(tomllib.loads(text)))
        sources = [uv_file, *sources]
    named = [v for k, v in values if _names_paths(k)]
    return IndexConfig(
        env=env,
        mounts=tuple(Mount(p, p) for p in mount_paths(named)),
        files=files,
        sources=tuple(sources),
        secrets=tuple(sorted({s for _, v in values for s in _credentials(v)}, key=len)[::-1]),
    )


def _carried(name: str) -> bool:
    if name in _KEPT_OUT:
        return False
    return name in _PASSED or name.startswith(("PIP_", "UV_"))


def _names_paths(key: str) -> bool:
    """Whether a setting (a config key or a variable) holds file or folder names."""
    for prefix in ("PIP_", "UV_"):
        key = key.removeprefix(prefix)
    return key.lower().replace("_", "-") in _PATH_KEYS


# -- the config files pip and uv read -------------------------------------------------------------
def pip_config_files(environ: Mapping[str, str], etc: str = "/etc") -> list[str]:
    """pip's config files in the order pip reads them (a later one wins): global (each XDG config
    dir, then /etc), user (unless ``PIP_CONFIG_FILE`` names a file), then ``PIP_CONFIG_FILE``."""
    dirs = [d for d in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if d]
    out = [os.path.join(d, "pip", "pip.conf") for d in dirs] + [os.path.join(etc, "pip.conf")]
    chosen = environ.get("PIP_CONFIG_FILE")
    home = environ.get("HOME") or os.path.expanduser("~")
    if not (chosen and os.path.exists(chosen)):
        user_dir = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        out += [os.path.join(home, ".pip", "pip.conf"), os.path.join(user_dir, "pip", "pip.conf")]
    if chosen and chosen != os.devnull:
        out.append(chosen)
    return out


def uv_config_file(environ: Mapping[str, str], etc: str = "/etc") -> str | None:
    """The uv.toml the worker's uv would read first: ``UV_CONFIG_FILE``, the user's, the system's."""
    home = environ.get("HOME") or os.path.expanduser("~")
    user_dir = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    dirs = [d for d in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if d]
    candidates = [environ.get("UV_CONFIG_FILE", ""), os.path.join(user_dir, "uv", "uv.toml")]
    candidates += [os.path.join(d, "uv", "uv.toml") for d in dirs] + [
        os.path.join(etc, "uv", "uv.toml")
    ]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def _merged_pip(paths: Iterable[str]) -> tuple[str, list[tuple[str, str]]]:
    """pip's config files merged as pip merges them, as one file's text, and its (key, value)s."""
    parser = configparser.RawConfigParser()
    for path in paths:
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            logger.warning("pip config %s is not carried into containers: %s", path, exc)
    out = io.StringIO()
    parser.write(out)
    values = [(k, v) for s in parser.sections() for k, v in parser.items(s) if v]
    return out.getvalue(), values


def _toml_values(data: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every (key, string value) of a parsed TOML document, lists and tables walked."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _toml_values(v, str(k))
    elif isinstance(data, list):
        for item in data:
            yield from _toml_values(item, key)
    elif isinstance(data, str):
        yield key, data


# -- what the settings name -----------------------------------------------------------------------
def mount_paths(values: Iterable[str]) -> list[str]:
    """The host files and folders named in ``values`` (paths and ``file://`` URLs, whitespace
    separated) that exist, outermost only; a folder named ``simple`` gives its parent."""
    found: set[str] = set()
    for value in values:
        for token in value.split():
            path = _local_path(_NAMED.sub("", token))
            if path is None or not os.path.exists(path):
                continue
            path = os.path.normpath(path)
            if os.path.isdir(path) and os.path.basename(path) == "simple":
                path = os.path.dirname(path)
            if path in _TOO_BROAD or path.startswith(("/proc/", "/sys/", "/dev/")):
                logger.info("index setting names %s: not mounted into containers", path)
                continue
            found.add(path)
    out: list[str] = []
    for path in sorted(found, key=len):
        if not any(path.startswith(kept.rstrip("/") + "/") for kept in out):
            out.append(path)
    return sorted(out)


def _local_path(token: str) -> str | None:
    if token.startswith("file:"):
        return unquote(urlsplit(token).path) or None
    return token if token.startswith("/") else None


def _credentials(value: str) -> Iterator[str]:
    """The user info (``user:password``) of each URL in ``value``, and its password alone."""
    for token in value.split():
        if "://" not in token:
            continue
        netloc = urlsplit(_NAMED.sub("", token)).netloc
        if "@" in netloc:
            info = netloc.rsplit("@", 1)[0]
            yield info
            if ":" in info and info.split(":", 1)[1]:
                yield info.split(":", 1)[1]
