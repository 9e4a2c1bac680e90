"""What the schema cannot check alone: that the loss and the network build with their options,
and that every input channel varies over the training data."""

from __future__ import annotations

import torch

from slidemap.data.normalization import BandStats
from slidemap.errors import SlidemapError, first_line
from slidemap.models import build_model, count_parameters
from slidemap.schema.config import RunConfig
from slidemap.train.losses import build_loss

MAX_PARAMETERS = 200_000_000  # the shipped networks have 0.5 to 4 million


def check_buildable(config: RunConfig, where: str = "config") -> None:
    """Build the loss, and the network on the meta device (shapes, no memory), so that a wrong
    option or a network too large for this machine fails in one line before any data loads
    (the schema knows their names, the builders their options)."""
    try:
        build_loss(config.loss)
        with torch.device("meta"):
            network = build_model(config.model.name, len(config.inputs.channels),
                                  config.model.width, **config.model.options)
    except SlidemapError as exc:
        raise SlidemapError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise SlidemapError(f"{where}: model {config.model.name} does not take options "
                            f"{config.model.options}: {exc}") from exc
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise SlidemapError(f"{where}: model {config.model.name} does not build with width "
                            f"{config.model.width} and options {config.model.options}: "
                            f"{first_line(exc)}") from exc
    parameters = count_parameters(network)
    if parameters > MAX_PARAMETERS:
        raise SlidemapError(f"{where}: model {config.model.name} with width {config.model.width} "
                            f"and options {config.model.options} has {parameters:,} parameters, "
                            f"more than {MAX_PARAMETERS:,}: lower model.width or its depth")


def check_channels_vary(stats: BandStats, channels: list[str]) -> None:
    """Refuse a channel with one value over every training pixel (slope and curvature of a flat
    DEM, an empty band): its spread is 0, so the network learns nothing from it and the model
    file, whose normalisation divides by that spread, could not be loaded by any command."""
    for name, mean, std in zip(channels, stats.mean, stats.std, strict=True):
        if not std > 0:
            raise SlidemapError(f"input channel {name} is {mean:g} over every training pixel "
                                "(a flat DEM, an empty band?): a model cannot learn from it; "
                                "leave it out of inputs, or train on ground where it varies")
