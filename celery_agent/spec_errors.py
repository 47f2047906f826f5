"""Pydantic's validation errors as one :class:`~celery_agent.errors.SpecError`: every problem
with the field it belongs to, in words a person can act on."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from .errors import SpecError


def spec_error(exc: ValidationError, model: type[BaseModel]) -> SpecError:
    """The :class:`SpecError` for ``exc`` raised while ``model`` was validated: its message names
    each problem's field, its ``field`` lists them."""
    fields = dict.fromkeys(".".join(str(x) for x in e["loc"]) or "spec" for e in exc.errors())
    return SpecError(
        format_validation_error(exc, model),
        f"fix the field named, or see `celery-agent submit --help` and the {model.__name__} fields",
        ",".join(fields),
    )


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One part per problem, naming the field: 'invalid task spec: entry: ...; params: ...'."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _model_at(model, [str(x) for x in err["loc"][:-1]]).model_fields
            msg = f"unknown field; known fields: {', '.join(known)}"
        parts.append(f"{loc}: {msg}")
    return "invalid task spec: " + "; ".join(parts)


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The model a field path leads to (``['docker']`` -> DockerOptions), else ``model``."""
    for name in path:
        field = model.model_fields.get(name)
        kinds = () if field is None else getattr(field.annotation, "__args__", (field.annotation,))
        found = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if not found:
            return model
        model = found[0]
    return model
