"""A run that starts from a model file's weights: the network to start from (its encoder frozen
if asked), the encoder's own learning rate and the compatibility check, read by the training loop
before its first step."""

from __future__ import annotations

from slidemap.errors import SlidemapError
from slidemap.io.modelfile import ModelBundle, load_model
from slidemap.models import Network, build_network, resolved_options
from slidemap.schema.config import RunConfig


def initial_model(config: RunConfig) -> Network:
    """The network training starts from: the config's architecture, with ``config.init``'s
    weights and its encoder frozen if asked. An ensemble stays one: its members are fine-tuned
    together, on the loss of the average they are shipped as."""
    bundle = None
    if config.init is not None:
        bundle = load_model(config.init)
        check_compatible(bundle, config)
    elif config.train.freeze_encoder or config.train.frozen_epochs:
        raise SlidemapError("training.freeze_encoder and frozen_epochs freeze weights loaded with"
                            " init: MODEL: add init, or drop them")
    model = build_network(config.model.name, len(config.inputs.channels), config.model.width,
                          bundle.members if bundle is not None else 1, **config.model.options)
    if bundle is not None:
        model.load_state_dict(bundle.model.state_dict())
    if config.train.freeze_encoder:
        model.freeze_encoder()
    return model


def set_encoder_for_epoch(model: Network, config: RunConfig, epoch: int) -> None:
    """With ``frozen_epochs``, freeze the encoder up to that epoch and train it after (set at
    every epoch, so a resumed run is in the same state)."""
    frozen = config.train.frozen_epochs
    if not frozen:
        return
    if epoch <= frozen:
        model.freeze_encoder()
    else:
        model.unfreeze_encoder()


def parameter_groups(model: Network, lr: float, encoder_lr: float) -> list[dict]:
    """AdamW's parameter groups: one at ``lr``, or, with ``encoder_lr`` below 1, the encoder at
    ``lr * encoder_lr`` after the rest at ``lr`` (so the logged rate stays the decoder's)."""
    if encoder_lr == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    return [{"params": model.other_parameters(), "lr": lr},
            {"params": model.encoder_parameters(), "lr": lr * encoder_lr}]


def check_compatible(bundle: ModelBundle, config: RunConfig) -> None:
    """The model file must be the config's architecture reading the config's channels."""
    mine = (config.model.name, config.model.width, dict(config.model.options))
    theirs = (bundle.architecture, bundle.width, dict(bundle.options))
    if (mine[:2], resolved_options(mine[0], mine[2])) \
            != (theirs[:2], resolved_options(theirs[0], theirs[2])):
        raise SlidemapError(f"init model {bundle.path} is {theirs[0]} width {theirs[1]} options "
                            f"{theirs[2]} but the config builds {mine[0]} width {mine[1]} options "
                            f"{mine[2]}: set model: to match the model file")
    if bundle.inputs.channels != config.inputs.channels:
        raise SlidemapError(f"init model {bundle.path} reads channels {bundle.inputs.channels} "
                            f"but the config's inputs give {config.inputs.channels}: set inputs "
                            "to the model's channels")
