"""A registry of architectures by name, in the manner of segmentation_models.pytorch.

Every architecture is a builder ``(in_channels, width, **options) -> SegmentationModel``: an
encoder → decoder → head (:mod:`slidemap.models.base`) that takes ``(B, C, H, W)`` of any H, W
and returns landslide logits ``(B, 1, H, W)``. Models with attention keep the last forward's maps
in ``model.attention_maps`` (name -> ``(B, 1|C, h, w)``).
"""

from __future__ import annotations

import inspect
import json
import numbers
from collections.abc import Callable, Mapping

from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import SegmentationModel

Builder = Callable[..., SegmentationModel]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``name``; names are unique."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, in_channels: int, width: int = 32,
                **options: object) -> SegmentationModel:
    """Build architecture ``name`` for ``in_channels`` inputs at base ``width``."""
    if name not in _REGISTRY:
        known = ", ".join(list_models())
        raise SlidemapError(f"unknown model {name!r}: choose one of {known}")
    _check_whole_options(name, options)
    return _REGISTRY[name](in_channels=in_channels, width=width, **options)


def _check_whole_options(name: str, options: Mapping[str, object]) -> None:
    """Refuse a value that is not a whole number for an option the builder types ``int``: YAML's
    ``true`` is Python's 1 (``depth: true`` built a U-Net of one down-sampling), and ``3.0``
    failed as an option the model 'does not take'."""
    parameters = inspect.signature(_REGISTRY[name], eval_str=True).parameters
    for key, value in options.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.annotation not in (int, int | None):
            continue
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not whole and not (value is None and parameter.annotation == int | None):
            example = parameter.default if isinstance(parameter.default, int) else 1
            raise SlidemapError(f"{name} option {key} must be a whole number, e.g. {example}, "
                                f"got {value!r}")


def resolved_options(name: str, options: Mapping[str, object]) -> dict[str, object]:
    """``options`` with the builder's defaults filled in and tuples as lists, so that two option
    sets that build the same network compare equal (``{}`` and ``{depth: 4}`` where 4 is the
    default, a YAML list and a tuple default)."""
    builder = _REGISTRY.get(name)
    parameters = inspect.signature(builder).parameters if builder is not None else {}
    defaults = {key: p.default for key, p in parameters.items()
                if key not in ("in_channels", "width") and p.default is not p.empty}
    return json.loads(json.dumps({**defaults, **options}, default=str))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
