"""What the schema cannot check alone: that the loss and the network build with their options."""

from __future__ import annotations

from slidemap.errors import SlidemapError
from slidemap.models import build_model
from slidemap.schema.config import RunConfig
from slidemap.train.losses import build_loss


def check_buildable(config: RunConfig, where: str = "config") -> None:
    """Build the loss and the network once, so that a wrong option fails in one line before any
    data loads (the schema knows their names, the builders their options)."""
    try:
        build_loss(config.loss)
        build_model(config.model.name, len(config.inputs.channels), config.model.width,
                    **config.model.options)
    except SlidemapError as exc:
        raise SlidemapError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise SlidemapError(f"{where}: model {config.model.name} does not take options "
                            f"{config.model.options}: {exc}") from exc
