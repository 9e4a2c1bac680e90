"""Training recipes on random windows: mixup, colour jitter, random zoom, hard examples and
windows around landslides.

Each is a ``training:`` key that is off by default (see configs/README.md). ``RandomWindows`` calls
:class:`Recipes` with its generator seeded by (seed, epoch), and the hard-example error maps are
recomputed from the model at the start of every epoch, so a resumed run draws exactly the batches
of an uninterrupted one and the checkpoint needs no extra state.
"""

from __future__ import annotations

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from slidemap.data.dataset import SceneArrays, normalised
from slidemap.data.hard_examples import error_map, hard_windows
from slidemap.data.mixing import mixup
from slidemap.data.normalization import STD_FLOOR, BandStats
from slidemap.data.photometric import colour_jitter, random_scale, zoom_about_centre
from slidemap.data.windows import windows_around
from slidemap.infer.engine import network_runner, predict_array
from slidemap.schema.config import RunConfig


class Recipes:
    """The recipes switched on in a run config, applied to samples, batches and window draws.

    Samples hold ``x`` (C, T, T) normalised channels, optical bands first, and ``labels``
    (1, T, T) uint8 with 255 = ignore, as ``RandomWindows`` cuts them.
    """

    def __init__(self, config: RunConfig, scenes: list[SceneArrays], stats: BandStats) -> None:
        settings = config.train
        self.mixup = settings.mixup
        self.colour_jitter = settings.jitter
        self.rgb = config.colour_bands  # Landslide4Sense's B4, B3, B2 are not its first three
        self.random_scale = settings.random_scale
        self.zoom_context = settings.zoom_context
        self.landslide_count = round(settings.landslide_windows * settings.windows_per_epoch)
        # fractions that sum to 1 may both round up (0.3 and 0.7 of 5 windows: 2 + 4)
        self.hard_count = min(round(settings.hard_examples * settings.windows_per_epoch),
                              settings.windows_per_epoch - self.landslide_count)
        self.landslide_pixels = [np.flatnonzero(s.target == 1) for s in scenes] \
            if self.landslide_count else []
        # scenes share landslide windows by labelled pixels, as uniform windows; none if bare
        self.landslide_weights = np.array(
            [s.valid.sum() if p.size else 0 for s, p in
             zip(scenes, self.landslide_pixels, strict=True)] if self.landslide_count else [],
            dtype=np.float64)
        optical = len(config.inputs.image_bands)
        self.optical = optical
        self.mean = np.asarray(stats.mean[:optical], dtype=np.float32)[:, None, None]
        self.std = np.maximum(np.asarray(stats.std[:optical], dtype=np.float32),
                              STD_FLOOR)[:, None, None]
        self.config = config
        self.scenes = scenes
        self.inputs = [normalised(s, stats) for s in scenes] if self.hard_count else []
        self.error_maps: list[np.ndarray] | None = None

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Recompute the error maps from ``model`` from epoch 2 on (before, they are only noise).

        Prediction uses non-overlapping tiles: a rough map is enough to steer sampling.
        """
        if not self.hard_count or epoch < 2:
            self.error_maps = None
            return
        model.eval()
        predict = self.config.predict
        self.error_maps = [
            error_map(predict_array(network_runner(model, self.config.train.precision), x,
                                    scene.readable, predict.tile, 0, predict.batch_size),
                      scene.target)
            for x, scene in zip(self.inputs, self.scenes, strict=True)
        ]

    def steered_windows(self, rng: np.random.Generator) -> list[tuple[int, Window]]:
        """This epoch's windows placed by recipes rather than uniformly: around landslides,
        then hard examples; the landslide draws are skipped when off, so runs without them
        draw exactly as before."""
        return self._landslide_windows(rng) + self._hard_windows(rng)

    def _landslide_windows(self, rng: np.random.Generator) -> list[tuple[int, Window]]:
        """``landslide_windows`` of the epoch, shared among the scenes that hold a landslide by
        their labelled pixels as uniform windows are, so that a site where landslides are rare
        gets its share of them rather than one in proportion to its landslide pixels."""
        total = self.landslide_weights.sum()
        if not self.landslide_count or total == 0:
            return []
        counts = rng.multinomial(self.landslide_count, self.landslide_weights / total)
        settings = self.config.train
        return [(index, window) for index, count in enumerate(counts.tolist()) if count
                for window in windows_around(self.landslide_pixels[index],
                                             self.scenes[index].valid, settings.tile, count,
                                             settings.min_valid, rng)]

    def _hard_windows(self, rng: np.random.Generator) -> list[tuple[int, Window]]:
        """This epoch's hard-example windows; [] when off or before the first error maps."""
        if self.error_maps is None:
            return []
        settings = self.config.train
        return hard_windows([s.valid for s in self.scenes], self.error_maps, settings.tile,
                            self.hard_count, settings.min_valid, rng)

    def context_zoom(self, rng: np.random.Generator) -> float | None:
        """This window's zoom factor when zoom reads context (``zoom_context``), else None.

        Drawn before the window is cut, since the factor decides how much ground to read.
        """
        if self.random_scale is None or not self.zoom_context:
            return None
        return float(rng.uniform(*self.random_scale))

    def sample(self, arrays: dict[str, np.ndarray], rng: np.random.Generator,
               zoom: float | None = None) -> dict:
        """Colour jitter (optical channels only), then random zoom (all channels and labels).

        With ``zoom`` (from ``context_zoom``) the arrays were cut from a window ``1 / zoom`` times
        the tile's side and are resampled onto the tile; otherwise a zoom is drawn here and a
        zoom-out pads the tile with ignored border.
        """
        if self.colour_jitter:  # over the channels training reads (a pseudo-label's context too)
            arrays = {**arrays, "x": self._jitter(arrays["x"], arrays["readable"][0], rng)}
        spatial = {"image": arrays["x"], "mask": arrays["labels"]}
        if zoom is not None:
            tile = self.config.train.tile
            zoomed = zoom_about_centre(spatial, zoom, (tile, tile))
        elif self.random_scale is not None:
            zoomed = random_scale(spatial, rng, self.random_scale)
        else:
            return arrays
        return {**arrays, "x": zoomed["image"], "labels": zoomed["mask"]}

    def batch(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
        """Mixup of the collated batch: soft targets, valid where both partners are."""
        if self.mixup <= 0:
            return batch
        mixed = mixup({k: torch.from_numpy(v) for k, v in batch.items()}, self.mixup, rng)
        return {k: v.numpy() for k, v in mixed.items()}

    def _jitter(self, x: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Jitter in raw units (brightness is a gain on radiance, not on z-scores), renormalise.

        Invalid pixels go in as NaN, so they do not bias the contrast mean, and come back as 0.
        """
        k = self.optical
        raw = np.where(valid, x[:k] * self.std + self.mean, np.nan)
        jittered = colour_jitter({"image": raw}, rng, **(self.colour_jitter or {}),
                                 rgb=self.rgb)["image"]
        out = x.copy()
        out[:k] = np.nan_to_num((jittered - self.mean) / self.std, nan=0.0)
        return out


def build_recipes(config: RunConfig, scenes: list[SceneArrays],
                  stats: BandStats) -> Recipes | None:
    """The run's recipes, or None when all are off so that training stays exactly as before."""
    settings = config.train
    if not (settings.mixup > 0 or settings.jitter or settings.random_scale is not None
            or settings.hard_examples > 0 or settings.landslide_windows > 0):
        return None
    return Recipes(config, scenes, stats)
