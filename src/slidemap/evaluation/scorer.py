"""The one scorer: a predictor's probabilities on the native grid, in one confusion matrix.

Training validation, ``finetune`` before/after, ``study``, ``crossval`` and the patch-set scores
all call :func:`score`, so a model scored on the same data reports the same figures in
``history.csv``, ``finetune.json``, ``results.csv`` and the cross-validation tables. Each item is
predicted as ``slidemap predict`` runs the model (its window size, overlap and scales), brought
back to its own grid (a patch's native pixels, a scene's working grid) and counted there against
its own labels; pixels that are nodata in the inputs or 255 in the labels are left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import nn

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import SceneArrays
from slidemap.data.normalization import BandStats
from slidemap.data.sources import PatchArrays
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.patches import native_prob
from slidemap.io.modelfile import ModelBundle, PredictDefaults
from slidemap.models import count_members


def score(predictor: Predictor, arrays: Iterable[SceneArrays], options: PredictOptions,
          confusion: BinaryConfusion | None = None) -> BinaryConfusion:
    """Add every labelled pixel of ``arrays`` to ``confusion`` (a new one at the predictor's
    threshold if None) and return it."""
    confusion = BinaryConfusion(predictor.threshold) if confusion is None else confusion
    for item in arrays:
        labels = native_labels(item)
        if labels is None:
            continue
        prob, _ = native_prob(predictor, item, options)
        confusion.update(prob, labels)
    return confusion


def score_regions(predictor: Predictor, item: SceneArrays, regions: list[np.ndarray],
                  options: PredictOptions) -> list[BinaryConfusion]:
    """:func:`score` of each region (a bool mask on the item's grid) of one item, from one
    prediction of the whole item: cross-validation blocks of a scene."""
    labels = native_labels(item)
    if labels is None:
        raise ValueError(f"{item.name} has no labels to score")
    prob, _ = native_prob(predictor, item, options)
    confusions = []
    for region in regions:
        confusion = BinaryConfusion(predictor.threshold)
        confusion.update(prob, labels, region)
        confusions.append(confusion)
    return confusions


def native_labels(item: SceneArrays) -> np.ndarray | None:
    """The labels on the item's own grid (255 ignore), None for an unlabelled patch."""
    return item.labels if isinstance(item, PatchArrays) else item.target


def bundle_of(model: nn.Module, architecture: str, width: int, options: dict,
              inputs: InputSpec,
              stats: BandStats, threshold: float, predict: PredictDefaults) -> ModelBundle:
    """An in-memory model as the bundle its model file will hold, so that a network being
    trained is scored exactly as the file will be."""
    return ModelBundle(model=model, architecture=architecture, width=width,
                       options=dict(options), inputs=inputs, mean=list(stats.mean),
                       std=list(stats.std), threshold=threshold, predict=predict,
                       members=count_members(model))


def score_bundle(bundle: ModelBundle, arrays: Iterable[SceneArrays], precision: str,
                 batch_size: int = 8, threshold: float | None = None) -> BinaryConfusion:
    """:func:`score` of one model as its file says it runs (window, overlap, scales)."""
    predictor = Predictor([bundle], precision=precision, threshold=threshold)
    options = PredictOptions(batch_size=batch_size, precision=precision)
    return score(predictor, arrays, options)
