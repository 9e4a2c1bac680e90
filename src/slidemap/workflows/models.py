"""``slidemap models``: every registered architecture and its size."""

from __future__ import annotations

from dataclasses import dataclass

from slidemap.errors import UsageError
from slidemap.io.sidecar import MAX_BANDS
from slidemap.models.summary import model_table
from slidemap.schema.run import ModelSettings


@dataclass(frozen=True)
class Architecture:
    name: str
    parameters: int  # at ``width``, for the channels asked
    width: int  # a config's default model.width, at which every document quotes sizes


def architectures(in_channels: int = 5) -> list[Architecture]:
    """Each registered architecture with its parameter count for ``in_channels`` inputs (as
    many as a model file may read) at the width a config trains by default."""
    if not 0 < in_channels <= MAX_BANDS:
        raise UsageError(f"in_channels {in_channels} is not valid: give 1 to {MAX_BANDS}")
    width = ModelSettings().width
    return [Architecture(name, count, width)
            for name, count in model_table(in_channels, width)]
