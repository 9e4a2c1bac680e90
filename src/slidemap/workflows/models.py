"""``slidemap models``: every registered architecture and its size."""

from __future__ import annotations

from dataclasses import dataclass

from slidemap.models.summary import model_table


@dataclass(frozen=True)
class Architecture:
    name: str
    parameters: int  # at the default width, for the channels asked


def architectures(in_channels: int = 5) -> list[Architecture]:
    """Each registered architecture with its parameter count for ``in_channels`` inputs."""
    return [Architecture(name, count) for name, count in model_table(in_channels)]
