"""Segmentation losses for binary landslide logits, by name, combined as a weighted sum.

Every loss is called as ``loss(logits, target, valid) -> scalar`` with logits ``(B, 1, H, W)``,
target ``(B, 1, H, W)`` in [0, 1] (hard labels, or soft ones from Mixup and pseudo-labels) and
valid ``(B, 1, H, W)`` bool. Only valid pixels are gathered, so ignored pixels (nodata, label 255)
get exactly zero gradient whatever their logit or target holds, NaN included. Losses compute in
float32 so that they are safe under bf16 autocast.

A config names losses as ``{"bce": 1.0, "dice": 1.0}`` or
``{"focal": {"weight": 1.0, "alpha": 0.25, "gamma": 2.0}, "lovasz": 0.5}``; :func:`build_loss`
turns that into a :class:`WeightedSum`.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slidemap.errors import SlidemapError

_REGISTRY: dict[str, type[PixelLoss]] = {}


def register_loss(name: str) -> Callable[[type[PixelLoss]], type[PixelLoss]]:
    """Register a loss class under ``name``; names are unique."""

    def decorate(cls: type[PixelLoss]) -> type[PixelLoss]:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_losses() -> list[str]:
    return sorted(_REGISTRY)


class PixelLoss(nn.Module):
    """Base class: checks shapes, casts to float32, and handles a batch with no valid pixel.

    Subclasses implement :meth:`compute` on already-cast tensors with at least one valid pixel.
    """

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        if logits.shape != target.shape or logits.shape != valid.shape:
            raise SlidemapError(
                f"loss inputs disagree in shape: logits {tuple(logits.shape)}, "
                f"target {tuple(target.shape)}, valid {tuple(valid.shape)}"
            )
        logits = logits.float()
        valid = valid.bool()
        if not bool(valid.any()):
            # A zero that is still part of the graph, so backward() works on all-ignored batches;
            # summing an empty selection (not 0 * sum) keeps it zero even if ignored logits are NaN.
            return logits[valid].sum()
        return self.compute(logits, target.float(), valid)

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        raise NotImplementedError


@register_loss("bce")
class BCELoss(PixelLoss):
    """Binary cross-entropy with logits, mean over valid pixels; soft targets are fine."""

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits[valid], target[valid])


@register_loss("wbce")
class WeightedBCELoss(PixelLoss):
    """BCE with a ``pos_weight`` on the landslide term only, mean over valid pixels.

    ``-[w·t·log p + (1-t)·log(1-p)]`` averaged over the pixel count, as in PyTorch's
    ``pos_weight``: raising ``w`` raises the loss scale too. Without a fixed ``pos_weight`` it is
    n_neg / n_pos of the batch (soft targets count fractionally), clipped to
    [1, ``max_pos_weight``], because landslides are rare and a tile may hold few positives.
    Compare ``wce``, which weights both classes and normalises by the weights.
    """

    def __init__(self, pos_weight: float | None = None, max_pos_weight: float = 50.0) -> None:
        super().__init__()
        if (pos_weight is not None and not pos_weight > 0) or not max_pos_weight > 0:
            raise SlidemapError(f"wbce pos_weight and max_pos_weight must be > 0, got "
                                f"{pos_weight} and {max_pos_weight}")
        self.pos_weight = pos_weight
        self.max_pos_weight = max_pos_weight

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        x, t = logits[valid], target[valid]
        if self.pos_weight is None:
            n_pos = t.sum()
            n_neg = (1.0 - t).sum()
            w = (n_neg / n_pos.clamp(min=1e-6)).clamp(1.0, self.max_pos_weight)
        else:
            w = torch.tensor(float(self.pos_weight), device=x.device)
        return F.binary_cross_entropy_with_logits(x, t, pos_weight=w.detach())


@register_loss("wce")
class WeightedCELoss(PixelLoss):
    """Two-class weighted cross-entropy, the binary logit read as p = sigmoid(logit).

    ``sum(w1·t·(-log p) + w0·(1-t)·(-log(1-p))) / sum(w1·t + w0·(1-t))``: a weighted *mean*, as
    ``nn.CrossEntropyLoss(weight=[w0, w1])``, so only the ratio of the weights matters and the
    loss scale stays that of BCE (unlike ``wbce``). ``weights=[w_background, w_landslide]``;
    without them the weights are the inverse class frequencies of the batch, which makes the loss
    the plain average of the background-pixel mean and the landslide-pixel mean.
    """

    def __init__(self, weights: tuple[float, float] | list[float] | None = None) -> None:
        super().__init__()
        if weights is not None and len(weights) != 2:
            raise SlidemapError(f"wce weights must be [w_background, w_landslide], got {weights}")
        if weights is not None and (min(weights) < 0 or max(weights) <= 0):
            raise SlidemapError(f"wce weights must be ≥ 0 and not both 0, got {weights}")
        self.weights = None if weights is None else (float(weights[0]), float(weights[1]))

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        x, t = logits[valid], target[valid]
        w0: Tensor | float
        w1: Tensor | float
        if self.weights is None:
            w0 = 1.0 / (1.0 - t).sum().clamp(min=1e-6)
            w1 = 1.0 / t.sum().clamp(min=1e-6)
        else:
            w0, w1 = self.weights
        per_pixel_w = w1 * t + w0 * (1.0 - t)
        loss = w1 * t * -F.logsigmoid(x) + w0 * (1.0 - t) * -F.logsigmoid(-x)
        return loss.sum() / per_pixel_w.sum().clamp(min=1e-12)


@register_loss("focal")
class FocalLoss(PixelLoss):
    """Focal loss (Lin et al. 2017): BCE scaled by ``(1 - p_t)^gamma`` to down-weight easy pixels.

    ``alpha`` weights the landslide class and ``1 - alpha`` the background; mean over valid
    pixels. gamma=0, alpha=0.5 is half of BCE.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0 or gamma < 0:
            raise SlidemapError(f"focal alpha must be in [0, 1] and gamma ≥ 0, got {alpha} and "
                                f"{gamma}")
        self.alpha = alpha
        self.gamma = gamma

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        x, t = logits[valid], target[valid]
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        loss = ce
        if self.gamma != 0:
            p = torch.sigmoid(x)
            p_t = p * t + (1.0 - p) * (1.0 - t)
            # Floor keeps pow's gradient finite for gamma < 1 on perfectly confident pixels.
            loss = ce * (1.0 - p_t).clamp(min=1e-12) ** self.gamma
        alpha_t = self.alpha * t + (1.0 - self.alpha) * (1.0 - t)
        return (alpha_t * loss).mean()


@register_loss("dice")
class DiceLoss(PixelLoss):
    """Soft Dice loss, ``1 - (2·Σpt + s) / (Σp + Σt + s)``, over all valid pixels of the batch.

    Pooling the batch (not per image) keeps tiles without landslides from each scoring a full
    loss of ~1; ``smooth`` keeps an all-background batch defined.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        if not smooth > 0:
            raise SlidemapError(f"dice smooth must be > 0 (it keeps an empty window finite), "
                                f"got {smooth}")
        self.smooth = smooth

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        p, t = torch.sigmoid(logits[valid]), target[valid]
        dice = (2.0 * (p * t).sum() + self.smooth) / (p.sum() + t.sum() + self.smooth)
        return 1.0 - dice


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in descending order.

    Entry i is J(first i+1 pixels predicted wrong) - J(first i), where J = 1 - |gt∩pred|/|gt∪pred|
    and a pixel counts as "predicted positive" once its error is among the largest.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_hinge_flat(logits: Tensor, labels: Tensor) -> Tensor:
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = _lovasz_grad(labels[order])
    return torch.dot(F.relu(errors_sorted), grad)


@register_loss("lovasz")
class LovaszHingeLoss(PixelLoss):
    """Lovász hinge (Berman et al. 2018): a convex surrogate that optimises IoU directly.

    Hinge errors ``1 - logit·sign`` are sorted and weighted by the gradient of the Lovász
    extension of the Jaccard loss. ``per_image`` averages over images that have a valid pixel
    (IoU is a per-image quantity in the paper's setting); otherwise the batch is one set. Soft
    targets are thresholded at 0.5, as the Jaccard index needs hard sets.
    """

    def __init__(self, per_image: bool = True) -> None:
        super().__init__()
        self.per_image = per_image

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        labels = (target > 0.5).float()
        if not self.per_image:
            return _lovasz_hinge_flat(logits[valid], labels[valid])
        losses = [
            _lovasz_hinge_flat(x[v], y[v])
            for x, y, v in zip(logits, labels, valid, strict=True)
            if bool(v.any())
        ]
        return torch.stack(losses).mean()


@register_loss("ohem")
class OHEMLoss(PixelLoss):
    """Online hard example mining: mean BCE over the hardest valid pixels of the batch.

    Keeps ``max(ceil(keep · n_valid), min_kept)`` pixels (at most all of them), so easy
    background, which dominates landslide tiles, stops diluting the gradient.
    """

    def __init__(self, keep: float = 0.25, min_kept: int = 256) -> None:
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise SlidemapError(f"ohem keep must be in (0, 1], got {keep}")
        if min_kept < 1:
            raise SlidemapError(f"ohem min_kept must be ≥ 1 pixel, got {min_kept}")
        self.keep = keep
        self.min_kept = min_kept

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        ce = F.binary_cross_entropy_with_logits(logits[valid], target[valid], reduction="none")
        k = min(ce.numel(), max(math.ceil(self.keep * ce.numel()), self.min_kept))
        return ce.topk(k).values.mean()


@register_loss("soft_ce")
class SoftCELoss(PixelLoss):
    """Soft cross-entropy for soft targets, as used by pseudo-label rounds.

    Equal to BCE on soft labels; ``smoothing`` ε moves targets to ``t·(1-ε) + ε/2`` so that
    confident pseudo-labels do not push logits to infinity.
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise SlidemapError(f"soft_ce smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def compute(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        t = target[valid] * (1.0 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits[valid], t)


class WeightedSum(nn.Module):
    """``Σ weight_i · loss_i``; keeps each term's last value (detached) in ``last_terms`` for logs.

    Values stay tensors so logging does not force a device sync every step; call ``float()``.
    """

    def __init__(self, terms: Mapping[str, PixelLoss], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        total: Tensor | None = None
        last: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = term(logits, target, valid)
            last[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        self.last_terms = last
        assert total is not None  # build_loss refuses an empty spec
        return total


def build_loss(spec: Mapping[str, float | Mapping[str, object]] | str) -> WeightedSum:
    """Build a :class:`WeightedSum` from a config mapping of name -> weight or name -> options.

    Options are the loss's keyword arguments plus ``weight`` (default 1.0); a bare name means
    that loss at weight 1.
    """
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not spec:
        raise SlidemapError(f"loss spec is empty: name at least one of {', '.join(list_losses())}")
    terms: dict[str, PixelLoss] = {}
    weights: dict[str, float] = {}
    for name, value in spec.items():
        if name not in _REGISTRY:
            raise SlidemapError(f"unknown loss {name!r}: choose from {', '.join(list_losses())}")
        options = dict(value) if isinstance(value, Mapping) else {"weight": value}
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) \
                or not math.isfinite(weight) or weight < 0:
            raise SlidemapError(f"loss {name!r} weight must be a number ≥ 0, got {weight!r} "
                                "(a negative weight maximises the loss)")
        cls = _REGISTRY[name]
        allowed = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                   if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            valid_opts = ", ".join(["weight", *allowed])
            raise SlidemapError(
                f"loss {name!r} has no option {', '.join(map(repr, unknown))}: valid options are "
                f"{valid_opts}"
            )
        hints = typing.get_type_hints(cls.__init__)
        for key, option in options.items():
            _check_option(name, key, option, hints[key])
        terms[name] = cls(**options)
        weights[name] = float(weight)
    if not any(weights.values()):
        raise SlidemapError(f"loss {dict(spec)} weighs every term 0: nothing would train; give "
                            "one a weight above 0")
    return WeightedSum(terms, weights)


def _check_option(loss: str, key: str, value: object, hint: object) -> None:
    """Refuse an option value of the wrong kind in one line (a string where a count belongs
    would otherwise fail deep inside the first training step)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,
                                                                    types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return
    if bool in allowed and isinstance(value, bool):
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if float in allowed and number and math.isfinite(float(value)):  # type: ignore[arg-type]
        return
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if any(typing.get_origin(a) in (tuple, list) for a in allowed) \
            and isinstance(value, list | tuple) \
            and all(isinstance(v, int | float) and not isinstance(v, bool)
                    and math.isfinite(v) for v in value):
        return
    kind = " or ".join(sorted({"a list of finite numbers" if typing.get_origin(a) in (tuple, list)
                               else {bool: "true/false", int: "a whole number",
                                     float: "a number"}.get(a, str(a)) for a in allowed
                               if a is not type(None)}))
    raise SlidemapError(f"loss {loss!r} option {key} must be {kind}, got {value!r}")
