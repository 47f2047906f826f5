"""The spec's option models: how the docker and conda executors run a spec, and the validation
base every spec model shares (a bad field raises SpecError naming it)."""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .spec_errors import spec_error


class _Validated(BaseModel):
    """A model whose bad fields raise SpecError naming them, however it is built."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise spec_error(exc, type(self)) from None

    # Like pydantic's own: validating a dict (``parse``, a nested field) does not call this
    # wrapper, so its errors stay pydantic's there, each with its field's path.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class DockerOptions(_Validated):
    """How the docker executor runs a spec (see executors/docker.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(..., description="image to run, e.g. 'python:3.11-slim'")
    install: bool = Field(True, description="install the spec's requirements in the container")
    python: str = Field("python3", description="interpreter inside the image")
    env: dict[str, str] = Field(default_factory=dict, description="extra container variables")
    volumes: list[str] = Field(
        default_factory=list, description="'host:container[:rw|ro]' (ro default)"
    )
    shm_size: str | None = Field(None, description="e.g. '8g'")
    network: str | None = Field(
        None,
        description="network mode, e.g. 'host' or 'none'; unset: the bridged namespace the "
        "worker's runs share; 'bridge': one of the run's own",
    )
    user: str | None = Field(None, description="user[:group] inside the container")
    workdir: str | None = Field(None, description="working directory inside the container")
    entrypoint: list[str] | None = Field(None, description="override the image's entrypoint")
    pull: Literal["never", "if-missing", "always"] = Field("if-missing", description="pull policy")
    index_config: Literal["install", "run", "none"] = Field(
        "install",
        description="the worker's pip/uv index settings (variables, config files, CA bundles) "
        "in the container: for the install step, for the run too, or not at all",
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell commands run as root on the image once, e.g. 'apt-get install -y "
        "libgl1'; the result is kept as a derived image reused by later runs",
    )

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        from .executors.docker_options import parse_volume  # lazy: executors import this module

        for item in v:
            parse_volume(item)
        return v


class CondaOptions(_Validated):
    """What the conda executor installs (see executors/conda.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = Field(None, description="environment.yml in the repo")
    lock: str | None = Field(None, description="conda-lock.yml or pixi.lock in the repo")
    specs: list[str] = Field(
        default_factory=list, description="inline match specs, e.g. 'numpy>=1.26'"
    )
    channels: list[str] = Field(default_factory=list, description="channels for inline specs")
    pip: list[str] = Field(default_factory=list, description="pip requirements installed after")
    tool: Literal["auto", "rattler", "micromamba", "mamba", "conda"] = Field(
        "rattler", description="installer; 'auto' uses micromamba/mamba/conda when on PATH"
    )

    @model_validator(mode="after")
    def _one_source(self) -> CondaOptions:
        given = [name for name in ("file", "lock") if getattr(self, name)] + (
            ["specs"] if self.specs else []
        )
        if len(given) != 1:
            raise ValueError(
                "conda needs exactly one of file (environment.yml), lock (a lock file) or specs "
                f"(inline list); got {', '.join(given) or 'none'}"
            )
        for path in (self.file, self.lock):
            if path:
                _inside_repo(path, "conda file")
        return self


def _inside_repo(path: str, what: str) -> None:
    norm = posixpath.normpath(path.replace("\\", "/"))
    if path.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ValueError(
            f"{what} {path!r} points outside the repository: give a path relative to the repo root"
        )
