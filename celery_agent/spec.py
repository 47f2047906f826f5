"""TaskSpec: everything needed to run one experiment, validated with messages a person can act on."""

from __future__ import annotations

import functools
import posixpath
import re
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from . import inputs as input_refs
from .errors import SpecError
from .gitcmd import redact
from .spec_errors import spec_error
from .spec_options import CondaOptions, DockerOptions, _inside_repo, _Validated
from .users import check_name

#: a parameter value: what JSON and the command line can both carry
ParamValue = str | int | float | bool | None

#: executors a spec may name; the registry in executors/ says which are installed on a worker
EXECUTORS = ("venv", "local", "docker", "conda")

#: what a parameter name may look like
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@\-]+$")
#: what a secret value is replaced by wherever a spec is shown or stored
MASK = "***"


class TaskSpec(_Validated):
    """One experiment: code (repo, commit, diff), what to run, parameters, environment, resources.

    Unknown fields are rejected (a typo must not be silently ignored). Constructed directly or
    with :meth:`parse`, a bad field raises :class:`~celery_agent.errors.SpecError` naming it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="a label for people; defaults to the entry")
    tags: list[str] = Field(default_factory=list, description="tags to find the run by")
    repo: str = Field(..., description="git URL or local path of the repository")
    branch: str | None = Field(None, description="branch to check out when no commit is given")
    commit: str | None = Field(None, description="commit (or any git revision) to check out")
    diff: str = Field("", description="uncommitted changes as `git diff` text, new files included")
    entry: str = Field(..., description="a script path inside the repo, or '-m module'")
    args: list[str] = Field(default_factory=list, description="arguments after the entry")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="parameter overrides")
    strict_params: bool = Field(False, description="fail the run if a parameter goes unused")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    secret_env: list[str] = Field(
        default_factory=list, description="names in env whose values are secret (shown as ***)"
    )
    requirements: list[str] | None = Field(
        None, description="pip requirements; None: requirements_file, else the repo's own"
    )
    requirements_file: str | None = Field(None, description="a requirements file in the repo")
    extras: list[str] = Field(default_factory=list, description="the project's extras to install")
    groups: list[str] = Field(default_factory=list, description="dependency groups to install too")
    index_url: str | None = Field(
        None, description="package index to install from; ${NAME} is filled in on the worker"
    )
    extra_index_urls: list[str] = Field(
        default_factory=list, description="more indexes searched besides index_url"
    )
    find_links: list[str] = Field(default_factory=list, description="local wheel folders / pages")
    no_index: bool = Field(False, description="install only from find_links, no index at all")
    python: str | None = Field(None, description="interpreter version ('3.11') or path")
    executor: str = Field("venv", description="venv (default), local, docker or conda")
    queue: str = Field("default", description="Celery queue the run is sent to")
    user: str | None = Field(
        None,
        description="who the run belongs to; set at submit (CELERY_AGENT_USER, else the account)",
    )
    project: str | None = Field(None, description="the project the run counts for (optional)")
    priority: int = Field(
        0, ge=-1, le=1, description="-1 low, 0 normal, 1 high (up to the max_priority setting)"
    )
    gpus: int | str | None = Field(None, description="GPUs wanted: a count, or ids like '0,1'")
    timeout: float | None = Field(None, description="seconds the whole run may take")
    grace: float | None = Field(None, description="seconds between TERM and KILL on cancel")
    timeouts: dict[Literal["source", "inputs", "env", "run"], float] = Field(
        default_factory=dict, description="seconds each stage may take: source, inputs, env, run"
    )
    max_attempts: int = Field(
        2, ge=1, le=100, description="starts allowed when a worker is lost (2 = one retry)"
    )
    workdir: str | None = Field(None, description="working directory, a path from the repo root")
    output_exclude: list[str] = Field(
        default_factory=list, description="globs of output files not kept (e.g. '*.tmp', 'cache')"
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="files the run reads, name -> URL (run://RUN_ID/path, file:///..., s3://...)",
    )
    checkpoint_dir: str = Field(
        "checkpoints", description="folder under the output folder synced to the store as it runs"
    )
    checkpoint_sync: float | None = Field(
        None, description="seconds between checkpoint syncs (0: when it stops only; None: worker's)"
    )
    resume_from: str | None = Field(
        None, description="a run whose checkpoints this run starts from"
    )
    docker: DockerOptions | None = Field(None, description="options of the docker executor")
    conda: CondaOptions | None = Field(None, description="options of the conda executor")

    # -- validators: each message names the problem and the fix --------------------------------
    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("repo is empty: give a git URL or a local path to a repository")
        return v.strip()

    @field_validator("entry")
    @classmethod
    def _entry(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("entry is empty: give a script path in the repo or '-m module'")
        if v.startswith("-m"):
            module = v[2:].strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module):
                raise ValueError(
                    f"entry {v!r}: '-m' needs a dotted module name, like '-m pkg.train'"
                )
            return f"-m {module}"
        _inside_repo(v, "entry")
        return v

    @field_validator("workdir", "requirements_file")
    @classmethod
    def _repo_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _inside_repo(v, info.field_name or "path")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, ParamValue]) -> dict[str, ParamValue]:
        for name in v:
            if not PARAM_NAME.match(name):
                raise ValueError(
                    f"parameter name {name!r} is not valid: use letters, digits, '_', '-' or '.', "
                    "starting with a letter or '_' (like lr or optim.lr)"
                )
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not valid (like MY_VAR)")
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: list[str], info: ValidationInfo) -> list[str]:
        env = info.data.get("env")
        if env is None:  # env itself was invalid: that error says enough
            return v
        missing = [name for name in v if name not in env]
        if missing:
            raise ValueError(
                f"{', '.join(repr(n) for n in missing)} not in env: secret_env names variables "
                "of env, so give each a value there (env={'NAME': value}) or drop it from secret_env"
            )
        return list(dict.fromkeys(v))

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = []
        for line in v:
            line = line.strip()
            if not line:
                continue
            problem = _requirement_problem(line)
            if problem:
                raise ValueError(
                    f"requirement {line!r} is not valid: {problem} (write it as pip would, "
                    "like 'numpy>=1.26' or 'pyyaml==6.0.1')"
                )
            out.append(line)
        return out

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: dict[str, str]) -> dict[str, str]:
        input_refs.check_names(list(v))
        return {name: input_refs.check_url(name, url) for name, url in v.items()}

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        if v not in EXECUTORS:
            raise ValueError(f"executor {v!r} is unknown: choose one of {', '.join(EXECUTORS)}")
        return v

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        if not _QUEUE_NAME.match(v):
            raise ValueError(f"queue name {v!r} is not valid: use letters, digits, '_-.:@'")
        return v

    @field_validator("user", "project")
    @classmethod
    def _owner(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_name(v, info.field_name or "name")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 0:
            raise ValueError("gpus must be a count >= 0 or ids like '0,1'")
        if isinstance(v, str) and not re.fullmatch(r"(all|\d+(-\d+)?(,\d+(-\d+)?)*)", v):
            raise ValueError(
                f"gpus {v!r} is not valid: use a count (2), ids ('0,1'), '0-3' or 'all'"
            )
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"{v} is not a timeout: give seconds > 0, or leave it unset for none")
        return v

    @field_validator("grace")
    @classmethod
    def _grace(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"{v} is not a grace period: give seconds >= 0 (0 = KILL at once)")
        return v

    @field_validator("timeouts")
    @classmethod
    def _stage_timeouts(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(stage for stage, seconds in v.items() if seconds <= 0)
        if bad:
            raise ValueError(
                f"stage timeouts must be > 0 seconds; not so for {', '.join(bad)} "
                "(leave a stage out for its default deadline)"
            )
        return v

    @field_validator("checkpoint_dir")
    @classmethod
    def _checkpoint_dir(cls, v: str) -> str:
        norm = posixpath.normpath(v.strip().replace("\\", "/"))
        if not v.strip() or norm.startswith(("/", "..")) or norm == ".":
            raise ValueError(
                f"checkpoint_dir {v!r} is not a folder under the output folder: give a relative "
                "path such as 'checkpoints'"
            )
        return norm

    @field_validator("checkpoint_sync")
    @classmethod
    def _checkpoint_sync(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"checkpoint_sync {v} is not valid: give seconds >= 0 (0: at the end)")
        return v

    @field_validator("resume_from")
    @classmethod
    def _resume_from(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", v.strip()):
            raise ValueError(f"resume_from {v!r} is not a run id: give the id of an earlier run")
        return v.strip() if v is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.no_index and (self.index_url or self.extra_index_urls):
            raise ValueError(
                "no_index turns every index off, yet index_url or extra_index_urls names one: "
                "drop no_index, or the index URLs"
            )
        if self.no_index and not self.find_links:
            raise ValueError("no_index needs find_links (wheel folders) to install from")
        if self.diff and not self.diff.endswith("\n"):
            object.__setattr__(self, "diff", self.diff + "\n")
        if self.requirements is not None and self.requirements_file:
            raise ValueError("give requirements or requirements_file, not both")
        if self.executor == "docker" and self.docker is None:
            raise ValueError(
                "executor 'docker' needs docker options: docker={'image': 'python:3.11-slim'}"
            )
        if self.executor == "conda" and self.conda is None:
            raise ValueError(
                "executor 'conda' needs conda options: conda={'file': 'environment.yml'}"
            )
        return self

    # -- helpers --------------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: TaskSpec | dict[str, Any]) -> TaskSpec:
        """Return a TaskSpec from a spec or a dict, raising :class:`SpecError` with readable text."""
        if isinstance(data, TaskSpec):
            return data
        if not isinstance(data, dict):
            raise SpecError(f"a task spec must be a TaskSpec or a dict, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise spec_error(exc, cls) from None

    @property
    def module(self) -> str | None:
        """The module name when the entry is '-m module', else None."""
        return self.entry[3:] if self.entry.startswith("-m ") else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with only the fields that differ from their defaults, plus repo/entry.

        Secret env values are masked and credentials dropped from the repo URL (see
        :meth:`masked`): this is the form that is stored and shown. The Celery message is made by
        ``model_dump`` instead and carries the real values.
        """
        spec = self.masked()
        return spec.model_dump(mode="json", exclude_defaults=True) | {
            "repo": spec.repo,
            "entry": spec.entry,
        }

    def masked(self) -> TaskSpec:
        """This spec fit to store and show: each value named in ``secret_env`` replaced by
        ``***``, and ``user:password@`` removed from the repo URL."""
        env = {k: MASK if k in self.secret_env else v for k, v in self.env.items()}
        repo = redact(self.repo)
        indexes = _masked_indexes(self)
        if env == self.env and repo == self.repo and not indexes:
            return self
        return self.model_copy(update={"env": env, "repo": repo} | indexes)

    @staticmethod
    def masks_nothing(data: Any) -> bool:
        """Whether a spec's fields as sent hold nothing :meth:`masked` would hide (told without
        validating them: no ``secret_env``, no credentials in ``repo``)."""
        if not isinstance(data, dict) or data.get("secret_env"):
            return False
        urls = [data.get("index_url") or "", *(data.get("extra_index_urls") or ())]
        if any("@" in str(url) for url in urls + list(data.get("find_links") or ())):
            return False
        repo = data.get("repo")
        return isinstance(repo, str) and redact(repo) == repo

    @property
    def masked_names(self) -> list[str]:
        """The names in ``secret_env`` whose value is the mask (a spec read back from a record)."""
        return [name for name in self.secret_env if self.env.get(name) == MASK]

    def with_changes(self, **changes: Any) -> TaskSpec:
        """A validated copy with some fields changed."""
        return TaskSpec.parse(self.model_dump(mode="json") | changes)


def _masked_indexes(spec: TaskSpec) -> dict[str, Any]:
    """The index fields whose URLs hold a written password, masked (``${NAME}`` is kept)."""
    urls = [spec.index_url or "", *spec.extra_index_urls, *spec.find_links]
    if not any("@" in url for url in urls):  # (the common case: nothing to mask, no import)
        return {}
    from .executors.indexes import mask  # lazy: executors import this module

    out: dict[str, Any] = {}
    if spec.index_url and mask(spec.index_url) != spec.index_url:
        out["index_url"] = mask(spec.index_url)
    for name in ("extra_index_urls", "find_links"):
        urls = getattr(spec, name)
        masked = [mask(url) for url in urls]
        if masked != urls:
            out[name] = masked
    return out


@functools.lru_cache(maxsize=4096)
def _requirement_problem(line: str) -> str:
    """Why ``line`` is not a valid requirement ("" when it is); remembered, as every worker
    validates the same few requirement lines again with every message."""
    try:
        Requirement(line)
    except InvalidRequirement as exc:
        return str(exc)
    return ""
