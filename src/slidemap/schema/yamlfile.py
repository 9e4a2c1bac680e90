"""YAML files read with limits: a config is a page of text, never a bomb, a recursion or binary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from slidemap.errors import SlidemapError

YAML_MAX_BYTES = 2**20  # a run config is a page of YAML; a study a few
YAML_MAX_ALIASES = 100  # each alias may repeat a whole subtree: more are a bomb, not a config
YAML_MAX_DEPTH = 50
YAML_MAX_NODES = 100_000  # values once every alias is expanded: a study grid has hundreds
MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses what makes a small file expand into gigabytes or recurse
    without end: more than ``YAML_MAX_ALIASES`` aliases, nesting deeper than
    ``YAML_MAX_DEPTH``, more than ``YAML_MAX_NODES`` values once aliases are expanded (nine
    aliases of nine aliases of ... are few, and expand into billions) or an alias inside its
    own anchor. Aliases share their node until construction, so the check costs no memory."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > YAML_MAX_NODES:
            raise yaml.YAMLError(f"more than {YAML_MAX_NODES:,} values once its aliases "
                                 "(*name) are expanded")
        return node

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        _refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > YAML_MAX_ALIASES:
                raise yaml.YAMLError(f"more than {YAML_MAX_ALIASES} aliases (*name)")
        self.depth += 1
        try:
            if self.depth > YAML_MAX_DEPTH:
                raise yaml.YAMLError(f"nesting deeper than {YAML_MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that sets one key twice: YAML forbids it, and PyYAML kept the later silently."""


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    """Raise :class:`_DuplicateKey` for a plain key set twice in ``node``; merged keys
    (``<<: *base``) may be overridden, as YAML's merge allows."""
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(None, None, f"sets {key!r} twice (lines {seen[key]} and {line}): "
                                            "keep one", key_node.start_mark)
        seen[key] = line


def _expanded_size(node: yaml.Node, sizes: dict[int, float]) -> float:
    """How many values ``node`` holds once every alias is expanded (infinite for an alias inside
    its own anchor); ``sizes`` memoises shared nodes."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = math.inf  # until done: a node met again inside itself is a cycle
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes)
                       for k, v in node.value)
    else:
        size = 1
    sizes[key] = size
    return size


def read_yaml(path: Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from ``path``, with one-line errors for a missing file, bad syntax, text
    that is not UTF-8, and files that are too large, too deep or full of aliases."""
    if not path.exists():
        raise SlidemapError(f"{what} {path} does not exist: check the path")
    if path.is_dir():
        raise SlidemapError(f"{what} {path} is a folder: pass a YAML file")
    try:
        size = path.stat().st_size
        if size > YAML_MAX_BYTES:
            raise SlidemapError(f"{what} {path} is {size:,} bytes, more than the "
                                f"{YAML_MAX_BYTES:,} a config may have: pass the YAML file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SlidemapError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as "
                            "UTF-8") from exc
    except OSError as exc:
        raise SlidemapError(f"{what} {path} cannot be read ({exc.strerror}): check the "
                            "path") from exc
    loader = None
    try:
        loader = _BoundedLoader(text)
        raw = loader.get_single_data()
    except _DuplicateKey as exc:
        raise SlidemapError(f"{what} {path} {exc.problem}") from exc
    except yaml.YAMLError as exc:
        if type(exc) is yaml.YAMLError:  # a limit of _BoundedLoader
            raise SlidemapError(f"{what} {path} is refused: {exc}; write it out plainly") \
                from exc
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SlidemapError(f"{what} {path} is not valid YAML{where}: fix its syntax") from exc
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise SlidemapError(f"{what} {path} is not valid YAML ({type(exc).__name__}): fix its "
                            "syntax") from exc
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(raw, dict):
        raise SlidemapError(f"{what} {path} must be a YAML mapping (key: value lines)")
    return raw


def parse_value(text: str, what: str, error: type[SlidemapError] = SlidemapError) -> Any:
    """One YAML value given on the command line (``--set key=VALUE``), read with the same limits
    as a file; one that is not YAML raises ``error``."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise error(f"{what}: {text!r} is not a YAML value: quote it or fix its "
                            "syntax") from exc
    finally:
        loader.dispose()
