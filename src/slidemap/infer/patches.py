"""Prediction and scoring of in-memory arrays and of whole patch sets with a Predictor.

Patches are up-sampled by the model's scale (scale promotion), predicted in blended windows, and
their probabilities averaged back onto the patch's own grid, where they are written and scored.
One confusion matrix over all pixels of all patches gives the figures, as for scenes.
"""

from __future__ import annotations

import numpy as np

from slidemap.data.dataset import SceneArrays
from slidemap.data.scaling import demote
from slidemap.data.sources import PatchArrays
from slidemap.data.windows import flipped
from slidemap.infer.engine import predict_array
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions


def predict_arrays(predictor: Predictor, x: np.ndarray, valid: np.ndarray,
                   options: PredictOptions, flips: tuple[bool, bool] = (False, False)
                   ) -> np.ndarray:
    """Probabilities (H, W) of raw channels (C, H, W) by the window engine, with the window
    size and overlap of ``options`` or else the model's. ``flips`` (``SceneArrays.flips``):
    the arrays are predicted north up, west left, their windows laid from the north-west
    corner, as ``slidemap predict`` maps the scene they were read from."""
    options = options.resolve(predictor.defaults)
    assert options.tile is not None and options.overlap is not None
    prob = predict_array(predictor, flipped(x, flips), flipped(valid, flips), options.tile,
                         options.overlap, options.batch_size)
    return np.ascontiguousarray(flipped(prob, flips))


def native_prob(predictor: Predictor, arrays: SceneArrays, options: PredictOptions
                ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and validity on the arrays' own grid: a patch's native grid, a scene's
    working grid. Invalid pixels are NaN."""
    return to_native(predict_arrays(predictor, arrays.x, arrays.imagery, options, arrays.flips),
                     arrays)


def to_native(prob: np.ndarray, arrays: SceneArrays) -> tuple[np.ndarray, np.ndarray]:
    """Bring probabilities on the arrays' model grid to their own grid (see :func:`native_prob`)."""
    valid = arrays.valid
    if isinstance(arrays, PatchArrays):
        valid = arrays.native_valid
        if prob.shape != valid.shape:
            prob = demote(prob, valid.shape)
    return np.where(valid, prob, np.nan).astype(np.float32), valid
