"""Who submitted a run: its user and project, as the submitting side names them.

A run's user is ``CELERY_AGENT_USER`` when set, else the account that submits it
(:func:`getpass.getuser`); its project is the spec's ``project``, else ``CELERY_AGENT_PROJECT``,
else none. Both are stamped on the spec at submit (so a re-queue, which sends the recorded spec
again, keeps them) and on the run record as ``user`` and ``project``. They say whose run it is for
fair order and quotas; they are not authentication (message signing says who may send at all).
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .errors import SpecError

if TYPE_CHECKING:
    from .spec import TaskSpec

USER_ENV = "CELERY_AGENT_USER"
PROJECT_ENV = "CELERY_AGENT_PROJECT"
#: what a user or project name may look like: it goes into Redis key names and tables
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@\-]{0,63}$")


def check_name(value: str, what: str) -> str:
    """``value`` stripped, or a ValueError naming the problem and the fix."""
    value = value.strip()
    if not NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use up to 64 letters, digits and '_.@-', "
            "starting with a letter, digit or '_' (like alice or vision-team)"
        )
    return value


def current_user(environ: Mapping[str, str] | None = None) -> str:
    """The user runs submitted from here belong to: ``CELERY_AGENT_USER``, else this account."""
    environ = os.environ if environ is None else environ
    given = environ.get(USER_ENV, "").strip()
    if given:
        try:
            return check_name(given, USER_ENV)
        except ValueError as exc:
            raise SpecError(str(exc), f"set {USER_ENV} to a plain name") from None
    try:
        account = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        account = f"uid{os.getuid()}"
    return account if NAME.match(account) else _plain(account)


def current_project(environ: Mapping[str, str] | None = None) -> str | None:
    """The project named by ``CELERY_AGENT_PROJECT`` (None when unset)."""
    environ = os.environ if environ is None else environ
    given = environ.get(PROJECT_ENV, "").strip()
    if not given:
        return None
    try:
        return check_name(given, PROJECT_ENV)
    except ValueError as exc:
        raise SpecError(str(exc), f"set {PROJECT_ENV} to a plain name, or unset it") from None


def stamp(spec: TaskSpec, environ: Mapping[str, str] | None = None) -> TaskSpec:
    """``spec`` with its ``user`` and ``project`` filled in from ``environ`` where it names none."""
    changes: dict[str, str] = {}
    if spec.user is None:
        changes["user"] = current_user(environ)
    if spec.project is None:
        project = current_project(environ)
        if project is not None:
            changes["project"] = project
    return spec.model_copy(update=changes) if changes else spec


def check_priority(priority: int, max_priority: int) -> None:
    """Raise SpecError when a run asks a higher ``priority`` than the setting allows."""
    if priority > max_priority:
        raise SpecError(
            f"priority {priority} is above the highest a run may ask for here "
            f"(max_priority = {max_priority})",
            "submit at --priority 0, or have the operator raise the max_priority setting "
            "(CELERY_AGENT_MAX_PRIORITY) on the submitting machines and the workers",
            field="priority",
        )


def _plain(account: str) -> str:
    """An account name made fit for :data:`NAME` (spaces and other characters become '_')."""
    text = re.sub(r"[^A-Za-z0-9_.@\-]", "_", account)[:64]
    return text if NAME.match(text) else "_" + text[:63]
