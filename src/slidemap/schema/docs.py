"""The key table of configs/README.md, generated from the schema's descriptions so that the docs
cannot drift from what the loader accepts (a test compares them).

``python -m slidemap.schema.docs configs/README.md`` rewrites the table in place.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from slidemap.schema.run import L4SSet, LabelledScene, PatchFolderItem, RunConfig, Split

README_BEGIN = ("<!-- key table: generated from slidemap/schema by `python -m "
                "slidemap.schema.docs configs/README.md`; do not edit by hand -->")
README_END = "<!-- end of the key table -->"
# what a data item can be: a data scene's mask is required (selftrain.target says it may lack one)
ITEM_MODELS = (LabelledScene, PatchFolderItem, L4SSet)


def key_table() -> str:
    """Markdown rows ``| key | default | meaning |`` for every key of a run config."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{key}` | {default} | {_cell(meaning)} |"
              for key, default, meaning in _rows(RunConfig, "")]
    return "\n".join(lines) + "\n"


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str]]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section(field.annotation)
        if section is not None:  # a section: its keys carry the meaning
            yield from _rows(section, f"{key}.")
            continue
        yield key, _default(field), _meaning(field)
        if key == "data.val":  # after data.train and data.val: what their items hold
            yield from _item_rows()


def _item_rows() -> Iterator[tuple[str, str, str]]:
    seen: set[str] = set()
    for model in ITEM_MODELS:
        for name, field in model.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            yield f"data.*[].{name}", _default(field), _meaning(field)
            if name == "split":
                for part, spec in Split.model_fields.items():
                    yield f"data.*[].split.{part}", _default(spec), _meaning(spec)


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a section (``X`` or ``X | None``), or None for a value."""
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    """A value as it would be written in a config (flow style)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _meaning(field: FieldInfo) -> str:
    choices = _literal(field.annotation)
    text = field.description or ""
    return f"{text} (one of {', '.join(choices)})" if choices else text


def _literal(annotation: Any) -> list[str]:
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    for arg in get_args(annotation):
        found = _literal(arg)
        if found:
            return found
    return []


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rewrite(readme: Path) -> None:
    """Replace the key table between the markers of ``readme``."""
    text = readme.read_text()
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    readme.write_text(f"{head}{README_BEGIN}\n{key_table()}{README_END}{tail}")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1]))
