"""Grad-CAM for segmentation (Vinogradova et al., 2020).

Classification Grad-CAM explains one class score; for a segmentation map the score is the sum of
the landslide logits over a region of interest (the predicted landslide pixels by default, or a
box the user draws). The gradient of that score with respect to a layer's activations, averaged
over space, weighs each channel; the ReLU of the weighted sum of channels, upsampled to the image,
shows where the evidence for that region lies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models.blocks import pad_to_multiple

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class GradCamResult:
    """What was explained and the explanation, all (H, W) like the input window."""

    heat: np.ndarray  # float32 in [0, 1]; all zero when no channel has positive evidence
    region: np.ndarray  # bool: the pixels whose logits were summed into the target score
    probability: np.ndarray  # float32 landslide probability of the same forward pass
    layer: str  # the module whose activations were weighed


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
    stride = getattr(model, "stride", 1)
    return pad_to_multiple(batch, stride if isinstance(stride, int) and stride > 0 else 1)


def upsample_crop(
    maps: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly upsample ``(1, 1, h, w)`` maps to the padded grid, then crop to ``size``."""
    maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
    return maps[..., : size[0], : size[1]]


def default_target_layer(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """The module whose output feeds ``model.head`` (the last decoder stage), found by a probe.

    A forward pass is the only architecture-independent way to see which module produced the
    head's input. When the head's input is made by a function rather than a module, or the model
    has no ``head``, fall back to the last module to finish (so the outermost of nested ones) with
    a multi-channel spatial output before the head ran. Pass ``example`` for models whose first
    convolution does not see every input channel (e.g. fusion branches).
    """
    guessed = example is None
    if example is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            raise SlidemapError("model has no Conv2d layer: pass the target layer by name")
        stride = getattr(model, "stride", 32)
        side = 2 * stride if isinstance(stride, int) and stride > 0 else 64
        example = torch.zeros(1, first.in_channels, side, side)
    batch, _ = prepare_input(model, example)
    head = getattr(model, "head", None)
    head_modules = set(head.modules()) if isinstance(head, nn.Module) else set()
    outputs: list[tuple[str, torch.Tensor]] = []
    head_inputs: list[object] = []  # the head's first argument, once it has run

    def record(name: str) -> Callable[[nn.Module, tuple, object], None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and not head_inputs:
                outputs.append((name, output))

        return hook

    def record_head_input(module: nn.Module, args: tuple) -> None:
        if not head_inputs:
            head_inputs.append(args[0] if args else None)

    handles = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if name and module not in head_modules
    ]
    if isinstance(head, nn.Module):
        handles.append(head.register_forward_pre_hook(record_head_input))
    try:
        with eval_mode(model), torch.no_grad():
            model(batch)
    except RuntimeError as error:
        if not guessed:
            raise
        raise SlidemapError(
            f"probing the model with {batch.shape[1]} input channels failed: pass an example"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    feeding = [name for name, output in outputs if head_inputs and output is head_inputs[0]]
    if feeding:
        return min(feeding, key=lambda name: name.count("."))
    maps = [name for name, output in outputs
            if output.shape[1] > 1 and output.shape[-2:].numel() > 1]
    if not maps:
        raise SlidemapError("no module output a multi-channel feature map: pass a layer name")
    return maps[-1]


def _target_region(
    logits: torch.Tensor, region: np.ndarray | torch.Tensor | None, box: Box | None,
    threshold: float,
) -> torch.Tensor:
    """The boolean ``(H, W)`` region whose logits make the target score."""
    h, w = logits.shape
    if region is not None and box is not None:
        raise SlidemapError("give either a region or a box, not both")
    if box is not None:
        row0, col0, row1, col1 = box
        if not (0 <= row0 < row1 <= h and 0 <= col0 < col1 <= w):
            raise SlidemapError(
                f"box {box} is empty or outside the {h}×{w} window: use (row0, col0, row1, col1)"
                " with row0 < row1 <= height and col0 < col1 <= width"
            )
        mask = torch.zeros(h, w, dtype=torch.bool, device=logits.device)
        mask[row0:row1, col0:col1] = True
        return mask
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
    if layer not in modules:
        raise SlidemapError(f"model has no layer {layer!r}: choose a name from named_modules()")
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


def grad_cam(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    *,
    layer: str | None = None,
    region: np.ndarray | torch.Tensor | None = None,
    box: Box | None = None,
    threshold: float = 0.5,
) -> GradCamResult:
    """Grad-CAM of the landslide logits summed over a region of one ``(C, H, W)`` image.

    The region is ``region`` (boolean ``(H, W)``), else ``box`` = ``(row0, col0, row1, col1)``
    end-exclusive, else the pixels predicted as landslide (``sigmoid(logits) > threshold``).
    ``layer`` is a name from ``model.named_modules()``; by default ``default_target_layer``.
    """
    batch, size = prepare_input(model, image)
    layer = layer if layer is not None else default_target_layer(model, batch)
    with eval_mode(model), _capture_activation(model, layer) as captured, torch.enable_grad():
        logits = model(batch)[0, 0, : size[0], : size[1]]
        if not captured:
            raise SlidemapError(f"layer {layer!r} did not run in the forward pass")
        mask = _target_region(logits.detach(), region, box, threshold)
        score = logits[mask].sum()
        activation = captured[0]
        gradient = None
        if score.requires_grad:
            (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
        if gradient is None:
            raise SlidemapError(f"layer {layer!r} does not feed the landslide logits")
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    heat = upsample_crop(cam, (batch.shape[-2], batch.shape[-1]), size)[0, 0]
    peak = heat.max()
    if peak > 0:
        heat = heat / peak
    return GradCamResult(
        heat=heat.cpu().numpy().astype(np.float32),
        region=mask.cpu().numpy(),
        probability=torch.sigmoid(logits.detach()).cpu().numpy().astype(np.float32),
        layer=layer,
    )
