"""What the schema cannot check alone: that the loss and the network build with their options,
that the network's normalisation can train on the steps the run takes, and that every input
channel varies over the training data."""

from __future__ import annotations

import torch
from torch import nn

from slidemap.data.normalization import BandStats
from slidemap.errors import SlidemapError, first_line
from slidemap.models import build_model, count_parameters
from slidemap.schema.config import RunConfig
from slidemap.schema.values import MAX_TRAIN_TILE
from slidemap.train.losses import build_loss

MAX_PARAMETERS = 200_000_000  # the shipped networks have 0.5 to 4 million


def check_buildable(config: RunConfig, where: str = "config", world: int = 1) -> None:
    """Build the loss, and the network on the meta device (shapes, no memory), so that a wrong
    option, a network too large for this machine or training steps its normalisation cannot
    train on (with ``world`` data-parallel processes) fail in one line before any data loads
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
    _check_batch_statistics(network, config, where, world)


def check_one_network(config: RunConfig, where: str, command: str) -> None:
    """Refuse ``training.members`` above 1 where ``command`` trains one network per run (a
    study's runs, crossval's folds), before any data loads or run folder is written: only
    ``slidemap train`` trains an ensemble, and the training loop's refusal, met at the first
    run, named fine-tuning and self-training."""
    if config.train.members > 1:
        raise SlidemapError(f"{where}: training.members {config.train.members} trains an "
                            f"ensemble, which only slidemap train does; {command} trains one "
                            "network per run: set members: 1")


def smallest_batch(windows: int, batch_size: int, world: int = 1) -> int:
    """The fewest windows one process trains on in a step: a full batch, or the remainder that
    ends each epoch, split among ``world`` processes (one smaller than the world goes whole to
    each, as ``ddp.shard_batch`` does)."""
    sizes = [min(windows, batch_size)] + ([windows % batch_size] if windows > batch_size
                                          and windows % batch_size else [])
    return min(size if size < world else size // world for size in sizes)


def _check_batch_statistics(network: nn.Module, config: RunConfig, where: str,
                            world: int) -> None:
    """Refuse a run whose smallest training step reaches a normalisation layer with a single
    value per channel (batch norm on one window at 1×1 px; instance norm at 1×1 px): torch
    stops training there with a traceback, at the end of the first epoch when only the
    remainder batch is that small. Traced on the meta device, so it costs no memory."""
    settings = config.train
    channels = len(config.inputs.channels)
    smallest = smallest_batch(settings.windows_per_epoch, settings.batch_size, world)
    if _trains_on(network, channels, smallest, settings.tile):
        return
    tile = settings.tile * 2
    while tile < MAX_TRAIN_TILE and not _trains_on(network, channels, smallest, tile):
        tile *= 2
    step, fix = f"a training step of {smallest} window{'s' if smallest > 1 else ''}", ""
    if smallest == 1 and _trains_on(network, channels, 2, settings.tile):
        cause, fix = _one_window_cause(config, world)
        step += f" ({cause})"
    raise SlidemapError(
        f"{where}: model {config.model.name} reduces a {settings.tile} px window to 1×1 px, "
        f"where its normalisation has a single value per channel in {step} and cannot train: "
        f"raise training.tile to {min(tile, MAX_TRAIN_TILE)} or more{fix}")


def _one_window_cause(config: RunConfig, world: int) -> tuple[str, str]:
    """Which setting makes a training step of one window, and how to change it."""
    settings = config.train
    if settings.batch_size == 1:
        return "training.batch_size 1", ", or raise training.batch_size"
    if settings.windows_per_epoch == 1:
        return "training.windows_per_epoch 1", ", or raise training.windows_per_epoch"
    if world > 1:
        return (f"training.batch_size {settings.batch_size} split among {world} processes",
                ", or raise training.batch_size")
    return (f"the last batch of each epoch: {settings.windows_per_epoch} windows in batches of "
            f"{settings.batch_size}",
            ", or make training.windows_per_epoch a multiple of training.batch_size")


def _trains_on(network: nn.Module, channels: int, windows: int, tile: int) -> bool:
    """Whether a training step of ``windows`` windows of ``tile`` px and ``channels`` passes
    ``network`` (on the meta device) without a normalisation layer meeting a single value per
    channel."""
    network.train()
    try:
        network(torch.empty(windows, channels, tile, tile, device="meta"))
    except ValueError:  # torch: "Expected more than 1 value per channel when training"
        return False
    return True


def check_channels_vary(stats: BandStats, channels: list[str]) -> None:
    """Refuse a channel with one value over every training pixel (slope and curvature of a flat
    DEM, an empty band): its spread is 0, so the network learns nothing from it and the model
    file, whose normalisation divides by that spread, could not be loaded by any command."""
    for name, mean, std in zip(channels, stats.mean, stats.std, strict=True):
        if not std > 0:
            raise SlidemapError(f"input channel {name} is {mean:g} over every training pixel "
                                "(a flat DEM, an empty band?): a model cannot learn from it; "
                                "leave it out of inputs, or train on ground where it varies")
