"""Training data: labelled scenes held at working resolution, cut into random windows."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from rasterio.windows import Window

from slidemap.data.augment import flip_rot90
from slidemap.data.channels import InputSpec, read_inputs, stack_channels
from slidemap.data.machine import MEMORY_SOURCES, physical_memory_mb
from slidemap.data.names import DatasetName, absolute_name, dataset_stem
from slidemap.data.normalization import BandStats, compute_stats, normalise
from slidemap.data.scene import IGNORE, Scene
from slidemap.data.windows import context_window, has_window, random_windows
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.schema.values import MIN_TRAIN_TILE

# Peak bytes of reading a whole scene, per working pixel and model channel: the channels, their
# float32 reads and the terrain descriptors' intermediates (measured 11 for RGB, 26 for RGB + DEM
# + slope and 28 for RGB + relief, slope, curvature and roughness on a 3072² px scene)
WHOLE_READ_BYTES_PER_CHANNEL = 32
TILE_STEP = 16  # training tiles that fitting_tile tries, from the largest down


def check_whole_read(scene: Scene, factor: int, spec: InputSpec) -> None:
    """Refuse, before anything is read, a scene whose whole read at the working resolution
    would take more than the memory this process may use: training holds its scenes whole, and
    a read of a mosaic of 100 000² px (or a VRT of a kilobyte declaring more) failed only after
    gigabytes were allocated, or was killed for memory."""
    machine = physical_memory_mb()
    height, width = -(-scene.height // factor), -(-scene.width // factor)
    need = height * width * len(spec.channels) * WHOLE_READ_BYTES_PER_CHANNEL
    if machine and need > machine * 2**20:
        raise SlidemapError(
            f"scene {scene.image_path} is {width:,} × {height:,} px at the working resolution: "
            f"training holds scenes whole, about {need / 2**30:,.0f} GB for its "
            f"{len(spec.channels)} channels, more than the {machine / 2**10:,.0f} GB this "
            f"process may use ({MEMORY_SOURCES}): "
            "crop it (gdal_translate -srcwin) or cut it into several scenes, or train at a "
            "coarser inputs.resolution_m")


def fitting_tile(image: DatasetName, mask: DatasetName, aoi: Path | None, spec: InputSpec,
                 largest: int, min_valid: float) -> int | None:
    """The largest training tile, ``largest`` or fewer px by steps of ``TILE_STEP``, of which a
    window can hold ``min_valid`` of labelled pixels (valid image inside the AOI, at the
    working resolution of ``spec``, DEM holes aside); None when not even the smallest can.
    A small labelled area (one box drawn in QGIS) fits no window of a whole scene's tile."""
    with Scene(image, mask=mask, aoi=aoi) as scene:
        factor = scene.decimation(spec.resolution_m)
        check_whole_read(scene, factor, spec)
        labelled = scene.labelled(factor)
    return next((tile for tile in range(largest, MIN_TRAIN_TILE - 1, -TILE_STEP)
                 if has_window(labelled, tile, min_valid)), None)


@dataclass
class SceneArrays:
    """One scene's model channels (C, H, W) raw values and labels (H, W) with 255 = ignore.

    ``x`` is NaN where the image or DEM has no data. ``inputs_valid`` (H, W), where given, is
    where training may read the channels although the labels are ignored: pseudo-labels leave
    uncertain ground unlabelled that is still the context of the windows around it. None: training
    reads the channels only where a pixel is labelled (imagery beyond an area of interest reads
    as the mean: reading it lowered the held-out F1 of the README's newsite example, 0.73 and
    0.75 against 0.70 and 0.68 over two seeds). Scoring reads all the imagery (``imagery``),
    as ``slidemap predict`` does.
    """

    name: str
    x: np.ndarray
    target: np.ndarray
    inputs_valid: np.ndarray | None = field(default=None, kw_only=True)
    # the dataset the item belongs to (``training.domain_batches``'s domain): a patch set's
    # folder, so that its patches are one domain, or a scene's image (its absolute name: two
    # scenes may share a name, ``2019/ortho.tif`` and ``2021/ortho.tif``); "": the item's name
    source: str = field(default="", kw_only=True)
    # whether the arrays' rows and columns run against north up, west left (``Scene.flips``):
    # their predictions are made north up, as ``slidemap predict`` makes a map of the scene
    flips: tuple[bool, bool] = field(default=(False, False), kw_only=True)

    @property
    def domain(self) -> str:
        """What ``training.domain_batches`` keeps together in a batch: the source, or the item."""
        return self.source or self.name

    @property
    def valid(self) -> np.ndarray:
        return self.target != IGNORE

    @property
    def imagery(self) -> np.ndarray:
        """Where the channels have data, labelled or not: what a prediction of the item reads."""
        return np.isfinite(self.x).all(axis=0)

    @property
    def readable(self) -> np.ndarray:
        """Where the channels are read (the network's input): ``inputs_valid`` or ``valid``."""
        return self.valid if self.inputs_valid is None else self.inputs_valid


def load_scene_arrays(image: DatasetName, mask: DatasetName | None, dem: DatasetName | None,
                      spec: InputSpec, aoi: Path | None = None) -> SceneArrays:
    """Read a whole scene at the spec's working resolution; nodata anywhere becomes ignore.

    ``mask`` is a label raster or a vector file of landslide polygons, ``aoi`` the polygons of
    the area labelled (``slidemap.data.vectors``)."""
    with Scene(image, dem=dem, mask=mask, aoi=aoi) as scene:
        scene.check_bands(spec.image_bands, "the model config")
        factor = scene.decimation(spec.resolution_m)
        check_whole_read(scene, factor, spec)
        coarse = scene.coarser_than(spec.resolution_m)
        if coarse:
            warnings.warn(coarse, SlidemapWarning, stacklevel=2)
        sample = read_inputs(scene, Window(0, 0, scene.width, scene.height), spec, factor)
        void = scene.dem_void() if not sample["valid"].any() else None
        flips = scene.flips
    if void:
        raise SlidemapError(void)
    x = stack_channels(sample, spec)
    target = sample.get("mask", np.zeros(sample["valid"].shape, dtype=np.uint8))
    if mask is not None:
        check_labels(target, mask)
    readable = sample["valid"] & np.isfinite(x).all(axis=0)
    x[:, ~readable] = np.nan  # an image's nodata reads 0: NaN keeps it out of every prediction
    target = np.where(readable, target, IGNORE)
    if not (target != IGNORE).any():
        where = f" and the area of interest {aoi}" if aoi is not None else ""
        raise SlidemapError(f"scene {image} has no valid labelled pixel: check its nodata, "
                            f"the labels {mask}{where}")
    return SceneArrays(dataset_stem(image), x, target.astype(np.uint8),
                       source=absolute_name(image), flips=flips)


def check_labels(labels: np.ndarray, path: DatasetName) -> None:
    """Labels must be 0 (background), 1 (landslide) or 255 (ignore)."""
    unexpected = np.setdiff1d(np.unique(labels), [0, 1, IGNORE])
    if unexpected.size:
        raise SlidemapError(
            f"label raster {path} has values {unexpected[:5].tolist()}: labels must be 0 "
            "(background), 1 (landslide) or 255 (ignore)"
        )


def scene_stats(scenes: list[SceneArrays]) -> BandStats:
    """Per-channel statistics over the pixels the network reads (``readable``) of all training
    scenes: the labelled ones, and a pseudo-labelled target's whole imagery. Over its confident
    pixels alone, which self-training picks by the model's own output (mostly landslide, say),
    the statistics shifted with the picks, and with them every input of the saved model."""
    return compute_stats([s.x for s in scenes], [s.readable for s in scenes])


def normalised(scene: SceneArrays, stats: BandStats) -> np.ndarray:
    """The scene's channels normalised, with pixels not readable set to 0 (the mean)."""
    return normalise(scene.x, stats, valid=scene.readable)


class WindowRecipes(Protocol):
    """What :class:`RandomWindows` asks of training recipes (``slidemap.train.recipes``), all
    drawing from the epoch's generator; a protocol, so the data layer needs no run config."""

    def steered_windows(self, rng: np.random.Generator) -> list[tuple[int, Window]]: ...

    def context_zoom(self, rng: np.random.Generator) -> float | None: ...

    def sample(self, arrays: dict[str, np.ndarray], rng: np.random.Generator,
               zoom: float | None = None) -> dict: ...

    def batch(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict: ...


class RandomWindows:
    """Each epoch, fresh random windows from every scene, drawn from a seed and the epoch number.

    Seeding by epoch (not by a running generator) makes an epoch's batches the same whether
    training ran straight through or was resumed from a checkpoint. Optional ``recipes`` (mixup,
    jitter, zoom, hard examples, landslide windows; see ``slidemap.train.recipes``) draw from that
    same generator.
    """

    def __init__(self, scenes: list[SceneArrays], stats: BandStats, tile: int,
                 windows_per_epoch: int, min_valid: float, augment: bool, seed: int,
                 recipes: WindowRecipes | None = None, domain_batches: bool = False) -> None:
        self.scenes = scenes
        self.inputs = [normalised(s, stats) for s in scenes]
        self.tile = tile
        self.windows_per_epoch = windows_per_epoch
        self.min_valid = min_valid
        self.augment = augment
        self.seed = seed
        self.recipes = recipes
        self.domain_batches = domain_batches
        self.domains = drawable_domains(scenes, tile, min_valid) if domain_batches else []
        # domain batches draw from drawable scenes alone, and warn of a domain left out
        self.scene_weights = drawable_weights(scenes, tile, min_valid, warn=not domain_batches)

    def epoch(self, epoch: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``x`` (B,C,T,T) float32, ``target`` (B,1,T,T) float32, ``valid`` bool."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = (self._domain_batches(rng, batch_size) if self.domain_batches
                   else self._mixed_batches(rng, batch_size))
        for picks in batches:
            samples = [self._sample(i, w, rng) for i, w in picks]
            batch = collate(samples)
            yield self.recipes.batch(batch, rng) if self.recipes else batch

    def _mixed_batches(self, rng: np.random.Generator,
                       batch_size: int) -> list[list[tuple[int, Window]]]:
        """The epoch's windows from every scene by its labelled pixels, shuffled together."""
        picks = self.recipes.steered_windows(rng) if self.recipes else []
        counts = rng.multinomial(self.windows_per_epoch - len(picks), self.scene_weights)
        for index, count in enumerate(counts):
            scene = self.scenes[index]
            for window in random_windows(scene.valid, self.tile, int(count), self.min_valid, rng):
                picks.append((index, window))
        self._check_drawn(picks)
        rng.shuffle(picks)
        return [picks[start:start + batch_size] for start in range(0, len(picks), batch_size)]

    def _domain_batches(self, rng: np.random.Generator,
                        batch_size: int) -> Iterator[list[tuple[int, Window]]]:
        """As many batches as mixed ones, each from one domain drawn by its labelled pixels (and
        within it, scenes by theirs), so batch statistics are one domain's. Only the scenes
        that have a window to draw take part (:func:`drawable_domains`)."""
        self._check_drawn(self.domains)
        weights = np.array([self.scene_weights[d].sum() for d in self.domains])
        total = self.windows_per_epoch
        for size in (min(batch_size, total - start) for start in range(0, total, batch_size)):
            members = self.domains[int(rng.choice(len(self.domains), p=weights / weights.sum()))]
            share = self.scene_weights[members]
            counts = rng.multinomial(size, share / share.sum())
            picks = [(index, window) for index, count in zip(members, counts.tolist(), strict=True)
                     if count  # a scene without a window this batch costs no integral image
                     for window in random_windows(self.scenes[index].valid, self.tile, count,
                                                  self.min_valid, rng)]
            yield picks

    def _check_drawn(self, picks: list) -> None:
        if not picks:
            raise SlidemapError(f"no training window of {self.tile} px has {self.min_valid:.0%} "
                                "of its pixels labelled (valid, inside the area of interest if "
                                "there is one): label a larger area, or lower "
                                "training.min_valid or training.tile")

    def _sample(self, index: int, window: Window, rng: np.random.Generator) -> dict:
        zoom = self.recipes.context_zoom(rng) if self.recipes else None
        if zoom is not None:
            side = math.ceil(self.tile / zoom)
            window = context_window(window, side, *self.scenes[index].target.shape)
        rows = slice(window.row_off, window.row_off + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        scene = self.scenes[index]
        arrays = {"x": self.inputs[index][:, rows, cols], "labels": scene.target[None, rows, cols],
                  "readable": scene.readable[None, rows, cols]}
        if self.augment:
            arrays = flip_rot90(arrays, rng)
        if self.recipes:
            arrays = self.recipes.sample(arrays, rng, zoom)
        labels = arrays["labels"]
        return {
            "x": arrays["x"],
            "target": (labels == 1).astype(np.float32),
            "valid": labels != IGNORE,
        }


def drawable_weights(scenes: list[SceneArrays], tile: int, min_valid: float,
                     warn: bool = True) -> np.ndarray:
    """Each scene's share of the uniform windows: its labelled pixels, or none where no window
    of ``tile`` px has ``min_valid`` of it labelled (with a warning). Such a scene's share was
    drawn and lost, so an epoch ran short of ``windows_per_epoch`` and of the steps the
    learning-rate schedule counts on, by a different number each epoch (a pseudo-labelled
    target whose confident pixels are scattered). With no scene drawable, the shares stay, and
    the epoch's draw says what to change."""
    weights = np.array([s.valid.sum() for s in scenes], dtype=np.float64)
    drawable = np.array([has_window(s.valid, tile, min_valid) for s in scenes])
    if not drawable.any() or drawable.all():
        return weights / weights.sum()
    if warn:
        names = ", ".join(s.name for s, ok in zip(scenes, drawable, strict=True) if not ok)
        warnings.warn(f"{names}: no window of {tile} px has {min_valid:.0%} of its pixels "
                      "labelled, so no training window is drawn there: lower training.min_valid "
                      "or training.tile to train on it", SlidemapWarning, stacklevel=3)
    weights[~drawable] = 0.0
    return weights / weights.sum()


def drawable_domains(scenes: list[SceneArrays], tile: int, min_valid: float) -> list[list[int]]:
    """The indexes of the scenes of each domain (in order of first appearance) that have a window
    of ``tile`` px with ``min_valid`` of it labelled. A domain of none is left out with a
    warning: drawn by its labelled pixels as the others, its batches would be empty and stop
    training at whichever epoch first picked it (a thin labelled strip, a scene that a
    cross-validation fold cut into slivers); a scene without one would shrink its domain's
    batches."""
    drawable = [has_window(s.valid, tile, min_valid) for s in scenes]
    domains = []
    for name in dict.fromkeys(s.domain for s in scenes):
        members = [i for i, s in enumerate(scenes) if s.domain == name and drawable[i]]
        if members:
            domains.append(members)
        else:
            warnings.warn(f"training.domain_batches: {name} has no window of {tile} px with "
                          f"{min_valid:.0%} of its pixels labelled, so it is left out of "
                          "training: lower training.min_valid or training.tile to train on it",
                          SlidemapWarning, stacklevel=3)
    return domains


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples into a batch; a window smaller than the largest (a patch under the tile
    size) is padded with zeros that are not valid, so the loss ignores them."""
    h = max(s["x"].shape[-2] for s in samples)
    w = max(s["x"].shape[-1] for s in samples)

    def padded(array: np.ndarray) -> np.ndarray:
        pad = [(0, 0)] * (array.ndim - 2) + [(0, h - array.shape[-2]), (0, w - array.shape[-1])]
        return np.pad(array, pad) if any(p[1] for p in pad) else array

    return {k: np.stack([padded(s[k]) for s in samples]) for k in samples[0]}
