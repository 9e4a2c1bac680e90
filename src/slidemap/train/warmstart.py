"""A run that starts from a model file's weights: the compatibility check, the frozen encoder
and the encoder's own learning rate, read by the training loop before its first step."""

from __future__ import annotations

import types

from torch import nn

from slidemap.errors import SlidemapError
from slidemap.io.modelfile import ModelBundle, load_model
from slidemap.train.config import RunConfig


def start_from(model: nn.Module, config: RunConfig) -> None:
    """Load ``config.init``'s weights into ``model`` and freeze its encoder if asked."""
    if config.init is not None:
        bundle = load_model(config.init)
        check_compatible(bundle, config)
        model.load_state_dict(bundle.model.state_dict())
    if config.train.freeze_encoder:
        if config.init is None:
            raise SlidemapError("training.freeze_encoder freezes weights loaded with init: MODEL: "
                                "add init, or drop freeze_encoder")
        freeze_encoder(model, config.model.name)


def parameter_groups(model: nn.Module, name: str, lr: float, encoder_lr: float) -> list[dict]:
    """AdamW's parameter groups: one at ``lr``, or, with ``encoder_lr`` below 1, the encoder at
    ``lr * encoder_lr`` after the rest at ``lr`` (so the logged rate stays the decoder's)."""
    if encoder_lr == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise SlidemapError(f"architecture {name} has no encoder for training.encoder_lr: "
                            "drop it (1 = one learning rate for all)")
    inside = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in inside]
    return [{"params": rest, "lr": lr},
            {"params": list(encoder.parameters()), "lr": lr * encoder_lr}]


def check_compatible(bundle: ModelBundle, config: RunConfig) -> None:
    """The model file must be the config's architecture reading the config's channels."""
    if bundle.members > 1:
        raise SlidemapError(f"init model {bundle.path} is an ensemble of {bundle.members} "
                            "networks: start from one of them (the run folder's "
                            "member-K/model.safetensors)")
    mine = (config.model.name, config.model.width, dict(config.model.options))
    theirs = (bundle.architecture, bundle.width, dict(bundle.options))
    if mine != theirs:
        raise SlidemapError(f"init model {bundle.path} is {theirs[0]} width {theirs[1]} options "
                            f"{theirs[2]} but the config builds {mine[0]} width {mine[1]} options "
                            f"{mine[2]}: set model: to match the model file")
    if bundle.inputs.channels != config.inputs.channels:
        raise SlidemapError(f"init model {bundle.path} reads channels {bundle.inputs.channels} "
                            f"but the config's inputs give {config.inputs.channels}: set inputs "
                            "to the model's channels")


def freeze_encoder(model: nn.Module, name: str) -> None:
    """Stop training ``model.encoder``: no gradients, and batch-norm statistics kept as they are.

    The encoder's ``train`` is replaced by one that always sets eval mode, so ``model.train()``
    leaves its batch norms on their stored statistics, which a few new tiles would only disturb.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise SlidemapError(f"architecture {name} has no encoder to freeze: fine-tune it without "
                            "--freeze-encoder (training.freeze_encoder: false)")
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    encoder.train = types.MethodType(  # type: ignore[method-assign]  # on purpose, see above
        lambda self, mode=True: nn.Module.train(self, False), encoder)
    encoder.eval()
