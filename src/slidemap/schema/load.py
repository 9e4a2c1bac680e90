"""Reading a run config: YAML file, ``--set`` overrides, then the schema, in that order.

Overrides are applied to the YAML mapping before validation, so an override is checked exactly
as the same key in the file would be, and an unknown key is refused the same way.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slidemap.errors import SlidemapError, UsageError
from slidemap.schema.errors import validated
from slidemap.schema.run import RunConfig
from slidemap.schema.yamlfile import parse_value, read_yaml

SET_OPTION = "--set"  # where overrides come from unless a caller names its file


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Parse a run config, with ``key.path=value`` overrides; relative data paths are taken from
    the current directory."""
    path, overrides = Path(path), list(overrides)
    where = f"config {path}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    return parse_config(apply_overrides(read_yaml(path), overrides), path, where)


def parse_config(raw: Mapping[str, Any], path: Path | None = None,
                 where: str | None = None) -> RunConfig:
    """``raw`` (a YAML mapping) as a checked :class:`RunConfig`; errors name ``where`` (by
    default ``path``)."""
    where = where or (f"config {path}" if path else "config")
    if not isinstance(raw, Mapping):
        raise SlidemapError(f"{where} must be a YAML mapping (key: value lines)")
    if "data" not in raw:
        raise SlidemapError(f"{where} has no 'data:' section: add it (see configs/)")
    named = {"name": path.stem if path else "run", **raw}
    if named["name"] is not None and not isinstance(named["name"], str):
        named["name"] = str(named["name"])  # a run named 2024 is the string "2024"
    config = validated(RunConfig, named, where)
    config._source = path
    return config


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str | tuple[str, Any]],
                    source: str = SET_OPTION) -> dict[str, Any]:
    """A copy of ``raw`` with every override set: ``"training.lr=4e-3"`` (the value is YAML) or
    ``("training.lr", 0.004)``; intermediate mappings are created as needed. Errors begin with
    ``source``: where the overrides were written (``--set``, or a study's variant). A key set
    twice is refused, as in a YAML file: the later one was kept without a word; so is a key
    set after one below it (``training.epochs=3``, then ``training={lr: 1}``), whose value
    replaced the mapping that held it."""
    out = copy.deepcopy(dict(raw))
    seen: dict[str, Any] = {}
    for override in overrides:
        key, value = parse_override(override, source) if isinstance(override, str) \
            else override
        error = UsageError if source == SET_OPTION else SlidemapError
        if key in seen:
            raise error(f"{_prefix(source)}{key} is set twice ({seen[key]!r} and {value!r}): "
                        "keep one")
        below = [k for k in seen if k.startswith(f"{key}.")]
        if below:
            raise error(f"{_prefix(source)}{key} is set after {below[0]}, which it replaces: "
                        f"set {key} first, or put {below[0].removeprefix(key + '.')} in it")
        seen[key] = value
        set_key(out, key, value, source)
    return out


def parse_override(text: str, source: str = SET_OPTION) -> tuple[str, Any]:
    """``key.path=value`` as (key path, YAML value). One of the wrong form given as ``--set``
    is the command line written wrong (:class:`UsageError`), in a file bad input."""
    error = UsageError if source == SET_OPTION else SlidemapError
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise error(f"{_prefix(source)}{text!r} must be key.path=value, e.g. "
                    f"{_prefix(source)}training.lr=4e-3")
    if "[" in key:
        listed = key[:key.index("[")]
        raise error(f"{_prefix(source)}{key}: list items cannot be indexed; set the whole "
                    f"list, e.g. {_prefix(source)}'{listed}=[...]' in YAML, or edit the "
                    "config file")
    return key, parse_value(value, f"{_prefix(source)}{key}", error)


def _prefix(source: str) -> str:
    """``--set training.lr`` on the command line, ``study X: grid variant fast: training.lr``
    in a file."""
    return f"{source} " if source == SET_OPTION else f"{source}: "


def set_key(raw: dict[str, Any], key: str, value: Any, source: str = SET_OPTION) -> None:
    """Set dotted ``key`` in the nested mapping ``raw``."""
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            above = ".".join(parts[:depth + 1])
            raise SlidemapError(f"{_prefix(source)}{key}: {above} is not a mapping in the config "
                                f"(it is {child!r}): set {above} itself")
        node = child
    node[parts[-1]] = value


def with_seed(config: RunConfig, seed: int | None) -> RunConfig:
    """``config`` with another ``training.seed`` (the same recipe, another draw); as it is for
    None."""
    if seed is None:
        return config
    return config.changed(training={**dict(config.training), "seed": seed})


def json_schema() -> str:
    """The JSON Schema of a run config, as editors read it (``configs/slidemap.schema.json``)."""
    schema = RunConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
