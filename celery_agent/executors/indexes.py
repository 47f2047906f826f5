"""Where packages come from: the spec's indexes, the worker's mirror, and the right torch build.

A spec names ``index_url``, ``extra_index_urls``, ``find_links`` and ``no_index``; what it leaves
unset comes from the worker's settings (a company mirror). Wheel folders never turn the index off:
only ``no_index`` does.

Credentials stay on the worker: an index URL may hold ``${NAME}``, filled from the worker's
environment when the installer starts. What is stored, hashed into the cache key and logged is the
URL as written, with any ``user:password@`` masked.

When the requirements name torch (or torchvision, torchaudio) and nobody chose an index, the
worker adds the PyTorch wheel index that fits its hardware: the CPU builds without a GPU, else the
newest CUDA build its driver supports (``torch_index_template`` with ``{variant}``: ``cpu``,
``cu121``, ...).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError
from ..settings import DEFAULT_CUDA_VARIANTS, DEFAULT_TORCH_TEMPLATE, Settings

logger = logging.getLogger(__name__)

#: the distributions whose wheels differ by accelerator (CPU, CUDA version)
TORCH_NAMES = frozenset({"torch", "torchvision", "torchaudio"})

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)")
_VARIANT = re.compile(r"^cu(\d+)(\d)$")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s'\"@]+)@")
MASK = "***"


@dataclass(frozen=True)
class IndexDefaults:
    """A worker's package sources: its mirror, and how it picks the torch index."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    torch_index_template: str = DEFAULT_TORCH_TEMPLATE  #: "" turns the torch pick off
    cuda_variants: tuple[str, ...] = DEFAULT_CUDA_VARIANTS

    @classmethod
    def of(cls, settings: Settings) -> IndexDefaults:
        """The defaults a worker's settings give."""
        return cls(
            settings.index_url,
            tuple(settings.extra_index_urls),
            settings.torch_index_template,
            tuple(settings.torch_cuda_variants),
        )


@dataclass(frozen=True)
class IndexOptions:
    """The package sources of one install, as written (``${NAME}`` not yet filled in)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    #: the torch build picked for this worker ("cpu", "cu121"), None when none was picked
    torch_variant: str | None = None
    torch_index: str | None = None

    def args(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Installer options (pip and uv spell them alike), with ``${NAME}`` filled in."""
        args = ["--index-url", expand(self.index_url, environ)] if self.index_url else []
        for url in self.extras:
            args += ["--extra-index-url", expand(url, environ)]
        for link in self.find_links:
            args += ["--find-links", expand(link, environ)]
        return args + (["--no-index"] if self.no_index else [])

    @property
    def extras(self) -> tuple[str, ...]:
        """The extra indexes, the picked torch index first."""
        return ((self.torch_index,) if self.torch_index else ()) + self.extra_index_urls

    def key_parts(self) -> dict[str, Any]:
        """What goes into an environment's cache key (masked: no credential is ever hashed)."""
        return {
            "index_url": mask(self.index_url),
            "extra_index_urls": [mask(url) for url in self.extras],
            "no_index": self.no_index,
        }

    def record(self) -> dict[str, Any]:
        """What the run's record says about the indexes (only what differs from plain PyPI)."""
        out: dict[str, Any] = {}
        if self.torch_variant:
            out["torch_index"] = {"variant": self.torch_variant, "url": mask(self.torch_index)}
        return out

    def describe(self) -> str:
        """One line for the run's log, credentials masked."""
        parts = [f"index {mask(self.index_url) or 'default'}"]
        parts += [f"extra index {mask(url)}" for url in self.extras]
        parts += [f"find-links {mask(link)}" for link in self.find_links]
        return ", ".join(parts + (["no index"] if self.no_index else []))


@dataclass(frozen=True)
class Hardware:
    """What the torch pick needs to know about a worker: its GPUs and its driver's CUDA version."""

    gpus: int = 0
    cuda: tuple[int, int] | None = None  #: (major, minor) the driver supports
    notes: list[str] = field(default_factory=list, compare=False)


def resolve(
    spec: Any,
    defaults: IndexDefaults,
    requirement_lines: Iterable[str],
    hardware: Hardware | None = None,
) -> IndexOptions:
    """The sources of a spec's install on this worker (``hardware`` is read only when needed)."""
    chosen = bool(spec.index_url or spec.extra_index_urls or spec.no_index)
    options = IndexOptions(
        index_url=spec.index_url or defaults.index_url,
        extra_index_urls=tuple(spec.extra_index_urls or defaults.extra_index_urls),
        find_links=tuple(spec.find_links),
        no_index=spec.no_index,
    )
    if chosen or not defaults.torch_index_template or not wants_torch(requirement_lines):
        return options
    hw = hardware if hardware is not None else local_hardware()
    variant = torch_variant(hw, defaults.cuda_variants)
    url = defaults.torch_index_template.format(variant=variant)
    return IndexOptions(
        options.index_url, options.extra_index_urls, options.find_links, False, variant, url
    )


def plain(spec: Any) -> IndexOptions:
    """A spec's own sources: no worker defaults, no torch pick."""
    return IndexOptions(
        spec.index_url, tuple(spec.extra_index_urls), tuple(spec.find_links), spec.no_index
    )


def wants_torch(lines: Iterable[str]) -> bool:
    """Whether requirement lines name torch, torchvision or torchaudio."""
    for line in lines:
        found = _NAME.match(line)
        if found and found[1].lower().replace("_", "-") in TORCH_NAMES:
            return True
    return False


def torch_variant(hw: Hardware, variants: Iterable[str] = DEFAULT_CUDA_VARIANTS) -> str:
    """``cpu`` without GPUs, else the newest CUDA build of ``variants`` the driver supports."""
    if hw.gpus <= 0 or hw.cuda is None:
        return "cpu"
    fitting = [(v, cuda) for v in variants if (cuda := _cuda_of(v)) and cuda <= hw.cuda]
    if not fitting:
        logger.warning("no CUDA build of torch fits driver CUDA %s.%s: using cpu", *hw.cuda)
        return "cpu"
    return max(fitting, key=lambda pair: pair[1])[0]


def _cuda_of(variant: str) -> tuple[int, int] | None:
    """``cu121`` -> (12, 1); None for a name that is no CUDA build."""
    found = _VARIANT.match(variant)
    return (int(found[1]), int(found[2])) if found else None


@functools.cache
def local_hardware() -> Hardware:
    """This machine's GPUs as the worker may use them, and its driver's CUDA version (NVML);
    read once per process."""
    from ..monitoring import gpu

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = len(gpu.devices())
    if visible is not None:  # a worker bound to no GPU (or to some) sees only those
        count = min(count, len([d for d in visible.split(",") if d.strip() not in ("", "-1")]))
    return Hardware(gpus=count, cuda=gpu.cuda_driver_version() if count else None)


def expand(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with each ``${NAME}`` replaced by the worker's variable; a missing one is an error."""
    source = os.environ if environ is None else environ

    def fill(match: re.Match[str]) -> str:
        name = match[1]
        if name not in source:
            raise EnvBuildError(
                f"index URL {mask(text)!r} needs ${{{name}}}, which the worker's environment "
                "does not have",
                f"set {name} in the worker's environment (it never leaves that machine)",
            )
        return source[name]

    return _VAR.sub(fill, text)


def mask(url: str | None) -> str | None:
    """``url`` with a written password (or token) shown as ``***``; ``${NAME}`` placeholders are
    kept, as they hold no secret (the worker fills them in)."""
    return None if url is None else _USERINFO.sub(_masked_userinfo, url)


def _masked_userinfo(match: re.Match[str]) -> str:
    user, sep, password = match["userinfo"].partition(":")
    if not sep:  # a bare token, as in https://TOKEN@host
        return match[0] if _VAR.fullmatch(user) else f"{match['scheme']}{MASK}@"
    if _VAR.fullmatch(password):
        return match[0]
    return f"{match['scheme']}{user}:{MASK}@"


def mask_text(text: str) -> str:
    """Every URL in ``text`` masked as :func:`mask` does (for installer command lines and output)."""
    return _USERINFO.sub(_masked_userinfo, text) if "@" in text else text


#: (find-links entry, hash of its folder's listing or None when it is not a local folder)
LinkListing = tuple[str, str | None]


def link_listings(links: Iterable[str], source_dir: Path) -> tuple[LinkListing, ...]:
    """Each find-links entry, with a hash of a local folder's listing so new wheels change the key
    (a wheel added or rebuilt there changes what an install gets).

    A relative folder is read from ``source_dir``, where the installer runs.
    """
    return tuple((link, _listing_hash(_link_folder(link, source_dir))) for link in links)


def _link_folder(link: str, source_dir: Path) -> str:
    """The local folder a find-links entry would name (a relative one lies under ``source_dir``)."""
    return os.path.join(source_dir, os.path.expanduser(link.removeprefix("file://")))


def _listing_hash(folder: str) -> str | None:
    """sha256 of the folder's sorted (name, size, mtime ns) entries; None when it is no folder.

    Listed on every call, not memoized: a wheel rebuilt in place changes no stamp of the folder.
    """
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None
    listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def link_entry(link: str, listing: str | None) -> dict[str, Any]:
    return {"link": link} if listing is None else {"link": link, "listing": listing}
