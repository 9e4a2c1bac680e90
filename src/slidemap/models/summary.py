"""A table of the registered architectures and their sizes, for ``slidemap models``."""

from __future__ import annotations

from slidemap.models.registry import build_model, count_parameters, list_models


def model_table(in_channels: int = 5) -> list[tuple[str, int]]:
    """(name, parameter count at the default width for ``in_channels`` inputs) per architecture."""
    return [(name, count_parameters(build_model(name, in_channels))) for name in list_models()]
