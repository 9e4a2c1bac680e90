"""Pydantic's validation errors as the one line a user reads: the key, what to fix, the value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from slidemap.errors import SlidemapError

Model = TypeVar("Model", bound=BaseModel)
TYPE_TAGS = {"bool", "int", "float", "str", "none", "dict", "list", "tuple", "path"}
SHOWN = 80  # characters of a refused value in the message


def validated(model: type[Model], raw: Any, where: str) -> Model:
    """``raw`` as ``model``, or a one-line :class:`SlidemapError` naming the first bad key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SlidemapError(one_line(exc, where, model)) from exc
    except (TypeError, RecursionError) as exc:  # e.g. unhashable YAML keys
        raise SlidemapError(f"{where} has a value of the wrong shape ({exc}): compare it with "
                            "configs/README.md") from exc


def one_line(exc: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    """The most specific of ``exc``'s errors (the deepest key: inside a union, the member that
    got furthest), as ``where: key must ..., got value``."""
    errors = exc.errors(include_url=False)
    error = max(errors, key=lambda e: len(_key_path(e["loc"])))
    key = _key(error["loc"])
    others = {_key(e["loc"]) for e in errors} - {key}
    others = {k for k in others if not key.startswith(k)}  # a union's other members
    more = f" ({len(others)} more key(s) to fix)" if others else ""
    if error["type"] == "extra_forbidden":
        known = _keys_at(model, _key_path(error["loc"])[:-1])
        valid = f": valid keys there are {', '.join(known)}" if known else ""
        return f"{where}: unknown key {key}{valid}{more}"
    if error["type"] == "missing":
        return f"{where}: {key} is required: add it (see configs/README.md){more}"
    message = "must be a path (text)" if error["type"] == "path_type" else \
        str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("Input should be", "must be", 1)
    message = message.replace("Input should have", "must have", 1)
    message = message[:1].lower() + message[1:]
    if not key:  # a check across sections: its message names the keys, its input is everything
        return f"{where}: {message}{more}"
    shown = _shown(error.get("input"))
    subject = f"{key} " if message.startswith("must") else f"{key}: "
    return f"{where}: {subject}{message}, got {shown}{more}"


def _keys_at(model: type[BaseModel] | None, path: list[int | str]) -> list[str]:
    """The keys the section at ``path`` of ``model`` takes (none where a union or a free
    mapping makes that unclear)."""
    for part in path:
        if model is None:
            return []
        if isinstance(part, int):
            continue  # a list's items: the same model
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The one model an annotation names, through Optional, Annotated and tuples."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = {m for arg in get_args(annotation) if (m := _model_of(arg)) is not None}
    return models.pop() if len(models) == 1 else None


def _key_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """``loc`` without the names pydantic gives the members of a union (``bool``,
    ``ColourJitter``, ``function-after[...]``): only the keys and list positions a user wrote."""
    return [part for part in loc if isinstance(part, int) or not (
        part in TYPE_TAGS or "[" in part or part[:1].isupper() or part.startswith("function"))]


def _key(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in _key_path(loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    if isinstance(value, Mapping) and len(repr(value)) > SHOWN:
        return f"a mapping of {sorted(map(str, value))}"
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."
