"""A predictor: one model or an ensemble whose probabilities are averaged, with optional TTA.

Each member normalises the raw channels with its own statistics, so members trained on different
data can be combined as long as they read the same inputs. Test-time augmentation averages the
eight flips/rotations of the square, undone before averaging. Multi-scale prediction averages
the window predicted as it is and shrunk (e.g. to half its side: twice the ground per pixel),
which sees slides at the size the model learnt them and at a coarser one; each scale's
probabilities are brought back to the window's pixels before averaging.
"""

from __future__ import annotations

import copy
import functools
import operator
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from slidemap.data.channels import InputSpec
from slidemap.data.normalization import BandStats, normalise
from slidemap.data.scaling import demote
from slidemap.data.windows import flipped
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.backends import Backend, make_backend
from slidemap.infer.runtime import resolve_precision
from slidemap.io.modelfile import ModelBundle, common_setting
from slidemap.io.sidecar import check_scales, check_threshold


@functools.cache
def _scale_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="slidemap-scales")


def spare_core_pool() -> ThreadPoolExecutor | None:
    """A thread for the model at its other scales when the model's own threads leave a core
    idle (``OMP_NUM_THREADS=1`` on a machine of several cores), else None: with every core
    already in the model's thread pool, a second model call would only fight it for them.
    The network runs the same operations in either thread, so the figures do not change."""
    return _scale_pool() if torch.get_num_threads() < (os.cpu_count() or 1) else None


def mean_threshold(bundles: list[ModelBundle]) -> float:
    """The members' mean decision threshold, with a warning when they differ: each was fitted
    to its own member's probabilities, not to their average, so the user should know which
    one draws the mask (and that --threshold chooses another), as the map was made silently at
    a value no model file holds."""
    values = [b.threshold for b in bundles]
    mean = float(np.mean(values))
    if len(set(values)) > 1:
        listed = ", ".join(f"{v:g}" for v in values)
        warnings.warn(f"ensemble members have different thresholds ({listed}, in --model "
                      f"order): the mask is drawn at their mean, {mean:g}; pass --threshold "
                      "to choose one", SlidemapWarning, stacklevel=3)
    return mean


class Predictor:
    """Averages the landslide probabilities of its members, scales and TTA variants.

    ``scales`` None: the members' own (their sidecars' ``predict.scales``), which must then be
    the same for all; their window sizes and overlaps are ``defaults`` for the engines that cut
    scenes and patches into windows (``PredictOptions.resolve``). ``threshold`` None: the mean
    of the members' decision thresholds.
    """

    def __init__(self, bundles: list[ModelBundle], tta: bool = False,
                 precision: str = "auto", backend: str = "torch", compile: bool = False,
                 scales: tuple[float, ...] | None = None, threshold: float | None = None
                 ) -> None:
        if not bundles:
            raise SlidemapError("no model given: pass at least one --model")
        first = bundles[0].inputs
        for bundle in bundles[1:]:  # inputs.scale resizes patches only: patch_spec checks it
            if bundle.inputs.model_copy(update={"scale": first.scale}) != first:
                raise SlidemapError(
                    f"ensemble members read different inputs ({first} vs {bundle.inputs}): "
                    "combine only models trained on the same bands and resolution"
                )
        self.spec: InputSpec = first
        self.patch_scales = [b.inputs.scale for b in bundles]
        self.members = [(make_backend(b, backend, precision, compile), BandStats(b.mean, b.std))
                        for b in bundles]
        self.threshold = mean_threshold(bundles) if threshold is None \
            else check_threshold(threshold)
        self.defaults = [b.predict for b in bundles]
        self.scales = common_setting(self.defaults, "scales", "--scales") if scales is None \
            else check_scales(scales)
        self.tta = tta
        self.precision = "fp32" if backend == "onnx" else resolve_precision(precision)
        self.paths = [b.path for b in bundles]
        self.flips = (False, False)

    def patch_spec(self, scale: float | None = None) -> InputSpec:
        """The inputs for patches resized by ``scale`` (``--scale``), or by the members' own
        ``inputs.scale``, which must then be one: members trained at other scales read the
        same channels, and one resized patch serves them all."""
        if scale is not None:
            return self.spec.model_copy(update={"scale": float(scale)})
        if len(set(self.patch_scales)) > 1:
            listed = ", ".join(f"{s:g}" for s in self.patch_scales)
            raise SlidemapError(f"ensemble members resize patches by different inputs.scale "
                                f"({listed}, in --model order): pass --scale to choose one "
                                "for all")
        return self.spec

    @property
    def stats(self) -> list[BandStats]:
        """Each member's normalisation statistics."""
        return [member_stats for _, member_stats in self.members]

    def with_stats(self, stats: BandStats) -> Predictor:
        """A copy whose members all normalise with ``stats``: separated normalisation, where the
        statistics come from the target data instead of each member's training data."""
        if stats.bands != len(self.spec.channels):
            raise SlidemapError(f"statistics of {stats.bands} bands do not fit the model's "
                                f"{len(self.spec.channels)} channels {self.spec.channels}")
        other = copy.copy(self)
        other.members = [(member, stats) for member, _ in self.members]
        return other

    def facing(self, flips: tuple[bool, bool]) -> Predictor:
        """A copy that reverses the windows' rows and/or columns before the networks and their
        probabilities after (``Scene.flips``): the networks learnt imagery north up, west
        left (shadows, slope aspect), and a south-up grid's windows are stored upside down."""
        other = copy.copy(self)
        other.flips = flips
        return other

    def __call__(self, raw: list[np.ndarray], valid: list[np.ndarray]) -> list[np.ndarray]:
        """Probabilities (h, w) for raw stacked channels (C, h, w) and their validity masks."""
        raw = [flipped(x, self.flips) for x in raw]
        valid = [flipped(v, self.flips) for v in valid]
        total = [np.zeros(x.shape[1:], dtype=np.float32) for x in raw]
        for model, stats in self.members:
            inputs = [normalise(x, stats, valid=v) for x, v in zip(raw, valid, strict=True)]
            for acc, prob in zip(total, self._predict(model, inputs), strict=True):
                acc += prob
        return [np.ascontiguousarray(flipped(acc / len(self.members), self.flips))
                for acc in total]

    def _predict(self, model: Backend, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if len({x.shape for x in inputs}) > 1:  # scene-edge windows of odd sizes: one by one
            return [self._predict(model, [x])[0] for x in inputs]
        batch = np.stack(inputs)
        pool = spare_core_pool() if len(self.scales) > 1 else None
        if pool is None:
            results = [self._at_scale(model, batch, scale) for scale in self.scales]
        else:  # the other scales on the core the model's threads leave idle
            others = [pool.submit(self._at_scale, model, batch, scale)
                      for scale in self.scales[1:]]
            results = [self._at_scale(model, batch, self.scales[0]),
                       *(future.result() for future in others)]
        total = functools.reduce(operator.add, results)  # in the scales' order, either way
        return list(total / len(self.scales))

    def _at_scale(self, model: Backend, batch: np.ndarray, scale: float) -> np.ndarray:
        """Probabilities (B, h, w) of the batch resampled by ``scale`` (area mean when
        shrinking), brought back to (h, w)."""
        if scale == 1.0:
            return self._augmented(model, batch)
        h, w = batch.shape[-2:]
        resampled = demote(batch, (max(1, round(h * scale)), max(1, round(w * scale))))
        return demote(self._augmented(model, resampled), (h, w))

    def _augmented(self, model: Backend, batch: np.ndarray) -> np.ndarray:
        """The model's probabilities (B, h, w), averaged over the eight TTA variants if asked."""
        if not self.tta:
            return model(batch)
        total = np.zeros((batch.shape[0], *batch.shape[2:]), dtype=np.float32)
        for k in range(4):
            for flip in (False, True):
                moved = np.rot90(batch, k, axes=(2, 3))
                moved = moved[..., ::-1] if flip else moved
                prob = model(np.ascontiguousarray(moved))
                prob = prob[..., ::-1] if flip else prob
                total += np.rot90(prob, -k, axes=(1, 2))
        return total / 8
