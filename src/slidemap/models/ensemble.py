"""Several trained networks as one model whose probability is the mean of theirs.

Averaging the probabilities of independently trained networks is what the Landslide4Sense
winners shipped, and on the Jinsha cross-region runs two fusion networks together beat the mean
of the two alone in all six pairs (benchmarks/experiments.md). Wrapped as one module the
ensemble is one model file, and everything that runs a model (sliding windows, multi-scale, ONNX
export) runs it unchanged; Grad-CAM explains each member and averages their maps, as the ensemble
averages their probabilities. It returns the logit of the mean probability, so a sigmoid gives back
exactly that mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import AnySizeModel, SegmentationModel
from slidemap.models.registry import build_model

EPS = 1e-6  # keeps the logit finite where every member is certain


class ProbabilityAverage(AnySizeModel):
    def __init__(self, members: Sequence[SegmentationModel]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.stride = max(member.stride for member in members)

    def member_models(self) -> list[SegmentationModel]:
        """The members, typed (``nn.ModuleList`` yields plain modules)."""
        return cast(list[SegmentationModel], list(self.members))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = []
        for index, member in enumerate(self.member_models()):
            probabilities.append(torch.sigmoid(member(x).float()))
            for name, value in member.attention_maps.items():
                self.attention_maps[f"member{index}.{name}"] = value
        mean = torch.stack(probabilities).mean(dim=0).clamp(EPS, 1 - EPS)
        return torch.log(mean) - torch.log1p(-mean)

    @property
    def target_layer(self) -> str:
        """The layer the members name, as they name it (not a name of the ensemble's): Grad-CAM
        weighs it in every member and averages the members' maps."""
        layers = sorted({member.target_layer for member in self.member_models()})
        if len(layers) > 1:
            raise SlidemapError(f"the ensemble's members name different Grad-CAM layers "
                                f"({', '.join(layers)}): pass one that every member has (--layer)")
        return layers[0]

    # Fine-tuning an ensemble fits its members together, on the loss of the average they ship as.
    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for member in self.member_models() for p in member.encoder_parameters()]

    def other_parameters(self) -> list[nn.Parameter]:
        return [p for member in self.member_models() for p in member.other_parameters()]

    def freeze_encoder(self) -> None:
        for member in self.member_models():
            member.freeze_encoder()

    def unfreeze_encoder(self) -> None:
        for member in self.member_models():
            member.unfreeze_encoder()


Network = SegmentationModel | ProbabilityAverage  # what a model file holds


def count_members(model: nn.Module) -> int:
    """How many networks ``model`` averages (1 for a single network), for its model file."""
    return len(model.members) if isinstance(model, ProbabilityAverage) else 1


def build_network(name: str, in_channels: int, width: int, members: int = 1,
                  **options: object) -> Network:
    """Architecture ``name`` as ``build_model`` makes it, or ``members`` of it averaged."""
    if members == 1:
        return build_model(name, in_channels, width, **options)
    return ProbabilityAverage([build_model(name, in_channels, width, **options)
                               for _ in range(members)])
