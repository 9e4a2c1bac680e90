"""The contract every architecture follows: an encoder, a decoder and a head, in that order.

In the manner of segmentation_models.pytorch's base model, :class:`SegmentationModel` owns the
forward pass (pad to the network's stride, encoder → decoder → head, up-sample the logits to the
input, crop back) and everything that needs to know which part is which: freezing the encoder
for fine-tuning, the encoder's parameter group for a lower learning rate, the layer Grad-CAM
explains. Architectures are thin subclasses that build the three parts, so none of this is found
by probing a module's attributes.

* ``encoder`` (:class:`Encoder`): ``(B, C, H, W)`` → the features of every level, finest first.
  Everything that sees only one level's input lives here: attention applied between encoder
  stages (U-Net++) and the latent fusion of two streams (the fusion network) included.
* ``decoder`` (:class:`Decoder`): those features → one ``(B, D, h, w)`` map.
* ``head``: that map → landslide logits ``(B, 1, h, w)``, up-sampled by the base to ``(H, W)``
  where ``h, w`` are smaller.

Attention maps a part applies are kept in its ``attention_maps`` (name → ``(B, 1|C, h, w)``,
detached, for display); the model gathers them after each forward in ``model.attention_maps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.blocks import pad_to_multiple

Maps = dict[str, torch.Tensor]


class AnySizeModel(nn.Module):
    """A model that takes any H, W: pads the input to its ``stride`` and crops the logits back.

    The base of :class:`SegmentationModel` and of the probability-averaging ensemble, so code that
    runs a model (windows, ONNX export, Grad-CAM) can rely on ``stride``, ``forward_padded``,
    ``attention_maps`` and ``target_layer``.
    """

    stride: int = 16

    def __init__(self) -> None:
        super().__init__()
        self.attention_maps: Maps = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(x, self.stride)
        self.attention_maps = {}
        logits = self.forward_padded(padded)
        return logits[..., :h, :w]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of an input whose H and W are multiples of ``stride``."""
        raise NotImplementedError

    @property
    def target_layer(self) -> str:
        """The name (in ``named_modules()``) of the layer Grad-CAM explains by default; of an
        ensemble, the name in each member."""
        raise SlidemapError(f"{type(self).__name__} names no Grad-CAM layer: pass one by name "
                            "(--layer)")


class Encoder(nn.Module):
    """Input → the features of every level, finest first (``channels[i]`` wide)."""

    channels: list[int]

    def __init__(self) -> None:
        super().__init__()
        self.attention_maps: Maps = {}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


class Decoder(nn.Module):
    """The encoder's features → one feature map for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_maps: Maps = {}

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class SegmentationModel(AnySizeModel):
    """encoder → decoder → head; logits ``(B, 1, H, W)`` for an input ``(B, C, H, W)``."""

    def __init__(self, encoder: Encoder, decoder: Decoder, head: nn.Module, stride: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.stride = stride
        self.encoder_frozen = False

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        self.encoder.attention_maps, self.decoder.attention_maps = {}, {}
        logits = self.head(self.decoder(self.encoder(x)))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                   align_corners=False)
        self.attention_maps = {**self.encoder.attention_maps, **self.decoder.attention_maps}
        return logits

    @property
    def target_layer(self) -> str:
        """The decoder, whose output is the map the head classifies (Grad-CAM for segmentation
        weighs the last feature map before the logits)."""
        return "decoder"

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        """The decoder's and the head's parameters: what fine-tuning with a frozen encoder fits."""
        inside = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in inside]

    def freeze_encoder(self) -> None:
        """Stop training the encoder: no gradients, and its batch-norm statistics kept (a few new
        tiles would only disturb them), also after ``model.train()``."""
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder_frozen = True
        self.encoder.eval()

    def unfreeze_encoder(self) -> None:
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(True)
        self.encoder_frozen = False
        self.encoder.train(self.training)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self
