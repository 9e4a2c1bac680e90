"""Grad-CAM for segmentation (Vinogradova et al., 2020).

Classification Grad-CAM explains one class score; for a segmentation map the score is the sum of
the landslide logits over a region of interest (the predicted landslide pixels by default, or a
box the user draws). The gradient of that score with respect to a layer's activations, averaged
over space, weighs each channel; the ReLU of the weighted sum of channels, upsampled to the image,
shows where the evidence for that region lies.

An ensemble's probability is the mean of its members' probabilities, so its explanation is the mean
of its members' maps, each taken at the layer in that member and from the gradient of that
member's own score over the region: one member's map alone would leave out the others' evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.base import AnySizeModel
from slidemap.models.blocks import pad_to_multiple
from slidemap.models.ensemble import ProbabilityAverage

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), end-exclusive


@dataclass(frozen=True)
class GradCamResult:
    """What was explained and the explanation, all (H, W) like the input window."""

    heat: np.ndarray  # float32 in [0, 1]; all zero when no channel has positive evidence
    region: np.ndarray  # bool: the pixels whose logits were summed into the target score
    probability: np.ndarray  # float32 landslide probability of the same forward pass
    layer: str  # the module whose activations were weighed ("mean over N members' NAME")


@dataclass(frozen=True)
class _Network:
    """One network whose map enters the explanation, by names in the explained model's
    ``named_modules()``: the module whose output is its landslide logits ("" for the model
    itself) and the layer weighed in it."""

    output: str
    layer: str


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (batch norm on running statistics) and restore its mode after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def prepare_input(
    model: nn.Module, image: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, tuple[int, int]]:
    """A ``(1, C, H', W')`` batch padded as the model pads it, and the original ``(H, W)``.

    Padding here rather than inside the model lets maps computed on the padded grid be upsampled
    to that grid and cropped, so they line up with the input pixel for pixel.
    """
    batch = torch.as_tensor(image, dtype=torch.float32)
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise SlidemapError(f"expected one image (C, H, W), got shape {tuple(batch.shape)}")
    parameter = next(model.parameters(), None)
    if parameter is not None:
        batch = batch.to(parameter.device)
    return pad_to_multiple(batch, model.stride if isinstance(model, AnySizeModel) else 1)


def upsample_crop(
    maps: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly upsample ``(1, 1, h, w)`` maps to the padded grid, then crop to ``size``."""
    maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
    return maps[..., : size[0], : size[1]]


def default_target_layer(model: nn.Module) -> str:
    """The layer the model's contract names (:attr:`AnySizeModel.target_layer`): the decoder,
    whose output map the head classifies, or the layer an architecture names instead (FCN: its
    encoder's last stage; an ensemble: its members' layer, as they name it, weighed in each).
    Other modules name theirs by hand."""
    if not isinstance(model, AnySizeModel):
        raise SlidemapError(f"{type(model).__name__} is not a slidemap model, so it names no "
                            "Grad-CAM layer: pass one by name")
    return model.target_layer


def _networks(model: nn.Module, layer: str | None) -> tuple[list[_Network], str]:
    """The networks explained in ``model``, each with the layer weighed in it, and how the
    explanation names that layer. ``layer`` (default: the model's) names a module of a single
    network, or of every member of an ensemble, as the members name it: each member's map is
    taken there and the maps are averaged, as the ensemble averages the members' probabilities.
    """
    layer = layer if layer is not None else default_target_layer(model)
    if not isinstance(model, ProbabilityAverage):
        return [_Network("", layer)], layer
    members = model.member_models()
    for member in members:
        if layer not in dict(member.named_modules()):
            raise SlidemapError(
                f"not every member of the ensemble has a layer {layer!r}: name a layer as each "
                f"member names it (e.g. {members[0].target_layer!r}); Grad-CAM is taken in every "
                "member and averaged")
    networks = [_Network(f"members.{index}", ".".join(filter(None, [f"members.{index}", layer])))
                for index in range(len(members))]
    return networks, f"mean over {len(members)} members' {layer}"


def _target_region(
    logits: torch.Tensor, region: np.ndarray | torch.Tensor | None, threshold: float,
) -> torch.Tensor:
    """The boolean ``(H, W)`` region whose logits make the target score."""
    h, w = logits.shape
    if region is not None:
        mask = torch.as_tensor(region, device=logits.device).bool()
        if mask.shape != (h, w):
            raise SlidemapError(f"region has shape {tuple(mask.shape)}, the window is {(h, w)}")
        if not mask.any():
            raise SlidemapError("the given region is empty: mark at least one pixel")
        return mask
    mask = torch.sigmoid(logits) > threshold
    if not mask.any():
        raise SlidemapError(
            f"no pixel predicted as landslide in this window (threshold {threshold}): "
            "pass --box row0,col0,row1,col1 to explain a region of your choice"
        )
    return mask


@contextmanager
def _capture_activation(model: nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Make ``layer``'s output a leaf tensor so that its gradient can be asked for directly.

    The hook swaps the output for a clone of a detached leaf: the gradient then stops there (no
    parameter ``.grad`` is touched), and in-place ops after the layer (ReLU(inplace=True)) modify
    the clone, not the activations we keep. If the layer runs several times, the last call counts.
    """
    modules = dict(model.named_modules())
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise SlidemapError(f"layer {layer!r} does not output a (B, C, h, w) feature map")
        leaf = output.detach().requires_grad_(True)
        captured[:] = [leaf]
        return leaf.clone()

    handle = modules[layer].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _check_layers(model: nn.Module, networks: list[_Network], batch: torch.Tensor) -> None:
    """A one-line error naming the layers to choose from if a network's layer is not in
    ``model``: only those that output a (B, C, h, w) feature map in a pass over ``batch``, since
    containers (``encoder``, which returns a list of maps; ``encoder.stages``, never called)
    were offered and then refused."""
    modules = dict(model.named_modules())
    missing = [network.layer for network in networks if network.layer not in modules]
    if not missing:
        return
    maps: set[str] = set()

    def hook(name: str) -> Callable[[nn.Module, tuple, object], None]:
        def record(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                maps.add(name)
        return record

    shallow = [name for name in modules if name and name.count(".") <= 2]
    handles = [modules[name].register_forward_hook(hook(name)) for name in shallow]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    usable = [name for name in shallow if name in maps]
    raise SlidemapError(f"model has no layer {missing[0]!r}: choose one that outputs a feature "
                        f"map: {', '.join(usable)} (or a module inside one of them)")


@contextmanager
def _capture_output(model: nn.Module, name: str) -> Iterator[list[torch.Tensor]]:
    """Keep the output of module ``name`` (an ensemble member's logits) as the forward pass
    computes it, so that the gradient of that member's own score can be asked for."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured[:] = [output]

    handle = dict(model.named_modules())[name].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _network_cam(logits: torch.Tensor, mask: torch.Tensor, captured: list[torch.Tensor],
                 layer: str, padded: tuple[int, int]) -> torch.Tensor:
    """One network's Grad-CAM before normalisation, ``(H, W)`` like ``logits``: the gradient of
    its logits summed over ``mask`` weighs the channels of ``layer``'s activations ``captured``.
    The graph is kept so that the next network's gradient can be taken from the same pass."""
    score = logits[mask].sum()
    activation = captured[0]
    gradient = None
    if score.requires_grad:
        (gradient,) = torch.autograd.grad(score, activation, allow_unused=True,
                                          retain_graph=True)
    if gradient is None:
        raise SlidemapError(f"layer {layer!r} does not feed the landslide logits")
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    return upsample_crop(cam, padded, (logits.shape[0], logits.shape[1]))[0, 0]


def grad_cam(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    *,
    layer: str | None = None,
    region: np.ndarray | torch.Tensor | None = None,
    threshold: float = 0.5,
) -> GradCamResult:
    """Grad-CAM of the landslide logits summed over a region of one ``(C, H, W)`` image.

    The region is ``region`` (boolean ``(H, W)``: a box the user draws, less its pixels without
    data), else the pixels predicted as landslide (``sigmoid(logits) > threshold``).
    ``layer`` is a name from ``model.named_modules()``; by default ``default_target_layer``.
    Of an ensemble, ``layer`` names a module of each member and the map is the mean of theirs.
    """
    batch, size = prepare_input(model, image)
    networks, label = _networks(model, layer)
    padded = (batch.shape[-2], batch.shape[-1])
    with eval_mode(model), ExitStack() as stack, torch.enable_grad():
        _check_layers(model, networks, batch)
        activations = [stack.enter_context(_capture_activation(model, network.layer))
                       for network in networks]
        outputs = {network.output: stack.enter_context(_capture_output(model, network.output))
                   for network in networks if network.output}
        logits = model(batch)[0, 0, : size[0], : size[1]]
        for network, captured in zip(networks, activations, strict=True):
            if not captured:
                raise SlidemapError(f"layer {network.layer!r} did not run in the forward pass")
        mask = _target_region(logits.detach(), region, threshold)
        scored = {"": logits, **{name: output[0][0, 0, : size[0], : size[1]]
                                 for name, output in outputs.items()}}
        cams = [_network_cam(scored[network.output], mask, captured, network.layer, padded)
                for network, captured in zip(networks, activations, strict=True)]
    heat = torch.stack(cams).mean(dim=0)
    peak = heat.max()
    if peak > 0:
        heat = heat / peak
    return GradCamResult(
        heat=heat.cpu().numpy().astype(np.float32),
        region=mask.cpu().numpy(),
        probability=torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float32),
        layer=label,
    )
