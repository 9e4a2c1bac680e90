"""A table of the registered architectures and their sizes, for ``slidemap models``."""

from __future__ import annotations

import torch

from slidemap.models.registry import build_model, count_parameters, list_models


def model_table(in_channels: int = 5, width: int = 16) -> list[tuple[str, int]]:
    """(name, parameter count at ``width`` for ``in_channels`` inputs) per architecture; built on
    the meta device, so counting allocates no weights."""
    with torch.device("meta"):
        return [(name, count_parameters(build_model(name, in_channels, width)))
                for name in list_models()]
